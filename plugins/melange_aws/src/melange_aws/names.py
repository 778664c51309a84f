"""What SQS and SNS accept as names and identifiers, checked before any call.

Each rule here mirrors the AWS documentation, so a request AWS would refuse is
refused by melange first, with a message saying what to change, and nothing
is created or sent.
"""

from __future__ import annotations

import hashlib
import re

from melange.exceptions import InvalidMessage
from melange.topology import NameRule

QUEUE_NAME_RULE = NameRule(
    pattern=r"[A-Za-z0-9_-]+",
    max_length=80,
    description="1 to 80 characters (SQS): letters, digits, hyphens and underscores",
)
"""SQS queue names: up to 80 characters, ``.fifo`` included for FIFO queues."""

TOPIC_NAME_RULE = NameRule(
    pattern=r"[A-Za-z0-9_-]+",
    max_length=256,
    description="1 to 256 characters (SNS): letters, digits, hyphens and underscores",
)
"""SNS topic names: up to 256 characters, ``.fifo`` included for FIFO topics."""

_ATTRIBUTE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,256}")
_RESERVED_ATTRIBUTE_PREFIXES = ("aws.", "amazon.")

# MessageGroupId and MessageDeduplicationId: 1 to 128 letters, digits and ASCII punctuation.
_MESSAGE_TOKEN = re.compile(r"[A-Za-z0-9!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~]{1,128}")


def check_attribute_name(name: str) -> None:
    """Raise :class:`InvalidMessage` unless SQS and SNS accept ``name`` as an attribute name.

    The rule (both services): 1 to 256 letters, digits, ``_``, ``-`` and ``.``;
    no leading, trailing or doubled period; no ``AWS.`` or ``Amazon.`` prefix in
    any case.
    """
    problem = None
    if not _ATTRIBUTE_NAME.fullmatch(name):
        problem = "use 1 to 256 letters, digits, hyphens, underscores and periods"
    elif name.startswith(".") or name.endswith(".") or ".." in name:
        problem = "a period may not start or end the name or follow another period"
    elif name.lower().startswith(_RESERVED_ATTRIBUTE_PREFIXES):
        problem = "names starting with 'AWS.' or 'Amazon.' are reserved by AWS"
    if problem is not None:
        raise InvalidMessage(f"attribute name {name!r} is not accepted by SQS/SNS: {problem}")


def check_message_token(label: str, value: str) -> None:
    """Raise :class:`InvalidMessage` unless ``value`` is a valid group or deduplication id.

    Args:
        label: ``"group_id"`` or ``"dedup_id"``, for the message.
        value: The id.
    """
    if not isinstance(value, str) or not _MESSAGE_TOKEN.fullmatch(value):
        raise InvalidMessage(
            f"{label} {value!r} is not accepted by SQS/SNS: use 1 to 128 ASCII letters, "
            "digits and punctuation (no spaces)"
        )


def is_message_token(value: object) -> bool:
    """Return whether SQS/SNS accept ``value`` as a group or deduplication id."""
    return isinstance(value, str) and _MESSAGE_TOKEN.fullmatch(value) is not None


def deduplication_id(value: str) -> str:
    """Return ``value`` as a MessageDeduplicationId: itself if SQS accepts it, else its SHA-256.

    The hash is as stable as the value, so a message sent again with the same
    value is still recognised as a duplicate.
    """
    if is_message_token(value):
        return value
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def is_attribute_name(name: object) -> bool:
    """Return whether SQS/SNS accept ``name`` as an attribute name."""
    if not isinstance(name, str):
        return False
    try:
        check_attribute_name(name)
    except InvalidMessage:
        return False
    return True


def name_from_arn(arn: str) -> str:
    """Return the resource name at the end of an SQS queue or SNS topic ARN."""
    return arn.rsplit(":", 1)[-1]


def arn_prefix(arn: str) -> str:
    """Return ``arn:partition:service:region:account:`` of a queue or topic ARN."""
    return arn[: len(arn) - len(name_from_arn(arn))]
