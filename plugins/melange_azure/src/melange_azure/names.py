"""Service Bus naming rules, checked before any call, and the subscription name of a queue.

Queue and topic names: 1 to 260 characters of letters, digits, periods,
hyphens, underscores and forward slashes, starting and ending with a letter or
a digit, with no empty segment (``//``); Service Bus compares them
case-insensitively. Subscription names: 1 to 50 characters of letters, digits,
periods, hyphens and underscores, starting and ending with a letter or a digit.
See docs/backends/azure.md for the sources.
"""

from __future__ import annotations

import hashlib
import re

from melange.topology import NameRule

ENTITY_MAX_LENGTH = 260
SUBSCRIPTION_MAX_LENGTH = 50

# No "//": Service Bus refuses a path with an empty segment.
_ENTITY_PATTERN = r"(?!.*//)[A-Za-z0-9](?:[A-Za-z0-9._/-]*[A-Za-z0-9])?"
_SUBSCRIPTION = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")

ENTITY_RULE_TEXT = (
    "1 to 260 characters: letters, digits, periods, hyphens, underscores and forward slashes, "
    "starting and ending with a letter or a digit, with no empty segment (no '//')"
)

QUEUE_NAME_RULE = NameRule(
    pattern=_ENTITY_PATTERN, max_length=ENTITY_MAX_LENGTH, description=ENTITY_RULE_TEXT
)
TOPIC_NAME_RULE = NameRule(
    pattern=_ENTITY_PATTERN, max_length=ENTITY_MAX_LENGTH, description=ENTITY_RULE_TEXT
)


def subscription_name(queue_name: str) -> str:
    """Return the name of the subscription that forwards a topic's messages to ``queue_name``.

    The queue's own name when it is a valid subscription name; otherwise (too long,
    or with a ``/``) a readable prefix of it plus a hash of the whole name, so each
    queue keeps one stable subscription per topic.
    """
    if len(queue_name) <= SUBSCRIPTION_MAX_LENGTH and _SUBSCRIPTION.fullmatch(queue_name):
        return queue_name
    digest = hashlib.sha256(queue_name.lower().encode()).hexdigest()[:16]
    readable = re.sub(r"[^A-Za-z0-9._-]", "-", queue_name)[: SUBSCRIPTION_MAX_LENGTH - 18]
    readable = readable.strip("._-") or "q"
    return f"{readable}-{digest}"


def same_entity(left: str, right: str) -> bool:
    """Whether two names denote one entity (Service Bus names are case-insensitive)."""
    return left.lower() == right.lower()


def entity_from_address(address: str | None) -> str | None:
    """Return the entity name of a ``ForwardTo`` value as Service Bus reports it.

    The service reports ``sb://<namespace>/<entity>`` (or the bare name); the
    result is the path without the leading slash, or ``None`` for no target.
    """
    if not address:
        return None
    if "://" in address:
        rest = address.split("://", 1)[1]
        address = rest.split("/", 1)[1] if "/" in rest else ""
    return address.strip("/") or None
