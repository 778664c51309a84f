"""Messages on the wire: Pub/Sub's message limits, and melange messages as Pub/Sub messages.

Limits (https://cloud.google.com/pubsub/quotas#resource_limits): a publish
request of at most 10 MB (10,000,000 bytes, serialized) and 1,000 messages;
at most 100 attributes per message, keys of at most 256 bytes, values of at
most 1,024 bytes, no key starting with ``goog``; ordering keys of at most 1,024
bytes. Pub/Sub refuses a message with neither data nor attributes, so an empty
body without attributes travels with one marker attribute, removed on receipt.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.pubsub_v1 import types

from melange.backends.base import OutgoingMessage
from melange.exceptions import InvalidMessage

_MessagePb: Any = types.PubsubMessage.pb()
_PublishRequestPb: Any = types.PublishRequest.pb()

MAX_REQUEST_BYTES = 10_000_000
"""Serialized bytes of one Publish request."""

MAX_BATCH_SIZE = 1_000
"""Messages of one Publish request."""

REQUEST_OVERHEAD = 10_000
"""Bytes kept free in a request for the topic path and protobuf framing (2.5 KB at most)."""

MAX_MESSAGE_SIZE = MAX_REQUEST_BYTES - REQUEST_OVERHEAD
"""Body plus attribute names and values of one message: one message alone must fit a request."""

MAX_ATTRIBUTES = 100
MAX_ATTRIBUTE_KEY_BYTES = 256
MAX_ATTRIBUTE_VALUE_BYTES = 1_024
MAX_ORDERING_KEY_BYTES = 1_024

RESERVED_PREFIX = "goog"
"""Attribute keys Pub/Sub reserves for itself."""

DEAD_LETTER_PREFIX = "CloudPubSubDeadLetter"
"""Attributes Pub/Sub adds to a dead-lettered message (source subscription, delivery count,
https://cloud.google.com/pubsub/docs/handling-failures); removed on receipt, so a
dead-lettered message keeps exactly the attributes it was published with."""

EMPTY_BODY = "melange-empty-body"
"""The attribute that stands in for an empty body with no attributes (Pub/Sub refuses those)."""

FRAMING_PER_MESSAGE = 16
"""Bytes counted for a message's protobuf framing in a Publish request (a bound)."""
_FRAMING_PER_ATTRIBUTE = 8


def check_message(message: OutgoingMessage, size: int) -> int:
    """Raise InvalidMessage for what Pub/Sub refuses; return the message's size on the wire.

    The size returned is what the message adds to a Publish request: ``size``
    (body and attributes), the ordering key and a bound on protobuf framing. The
    base class has already checked types, the attribute count and ``max_message_size``.
    """
    attributes = message.attributes
    group = message.group_id
    if not attributes and group is None:  # the common case: nothing more to check
        return size + FRAMING_PER_MESSAGE
    for key, value in attributes.items():
        key_bytes = len(key.encode())
        if key_bytes > MAX_ATTRIBUTE_KEY_BYTES:
            raise InvalidMessage(
                f"attribute name {key[:40]!r}... is {key_bytes} bytes; Pub/Sub allows at most "
                f"{MAX_ATTRIBUTE_KEY_BYTES}. Use a shorter name"
            )
        value_bytes = len(value.encode())
        if value_bytes > MAX_ATTRIBUTE_VALUE_BYTES:
            raise InvalidMessage(
                f"attribute {key!r} has a value of {value_bytes} bytes; Pub/Sub allows at most "
                f"{MAX_ATTRIBUTE_VALUE_BYTES}. Put large values in the body"
            )
        if key.startswith(RESERVED_PREFIX):
            raise InvalidMessage(
                f"attribute name {key!r} starts with {RESERVED_PREFIX!r}, which Pub/Sub "
                "reserves; rename the attribute"
            )
        if key.startswith(DEAD_LETTER_PREFIX):
            raise InvalidMessage(
                f"attribute name {key!r} starts with {DEAD_LETTER_PREFIX!r}, which Pub/Sub uses "
                "for dead-lettered messages (melange removes those on receipt); rename it"
            )
        if key == EMPTY_BODY:
            raise InvalidMessage(
                f"attribute name {key!r} is reserved by melange's gcp backend (it marks an "
                "empty body); rename the attribute"
            )
    group_bytes = 0
    if group is not None:
        group_bytes = len(group.encode())
        if not group or group_bytes > MAX_ORDERING_KEY_BYTES:
            raise InvalidMessage(
                f"group_id of {group_bytes} bytes: Pub/Sub ordering keys are 1 to "
                f"{MAX_ORDERING_KEY_BYTES} bytes"
            )
    return size + group_bytes + FRAMING_PER_MESSAGE + _FRAMING_PER_ATTRIBUTE * len(attributes)


def to_pubsub(message: OutgoingMessage) -> Any:
    """Return the protobuf ``PubsubMessage`` for ``message``.

    Built as the raw protobuf message under the GAPIC type: the proto-plus
    conversion of a dict costs more than the rest of a publish on a fast link.
    """
    body, attributes, group = message.body, message.attributes, message.group_id
    if not attributes:
        if group is None:
            return _MessagePb(data=body) if body else _MessagePb(attributes={EMPTY_BODY: "1"})
        if not body:
            attributes = {EMPTY_BODY: "1"}
    return _MessagePb(data=body, attributes=attributes, ordering_key=group or "")


def publish_request(topic: str, messages: list[Any]) -> types.PublishRequest:
    """Return a PublishRequest of protobuf messages from :func:`to_pubsub`."""
    request: types.PublishRequest = types.PublishRequest.wrap(
        _PublishRequestPb(topic=topic, messages=messages)
    )
    return request


def from_pubsub(
    data: bytes, attributes: Mapping[str, str]
) -> tuple[bytes, dict[str, str], dict[str, str] | None]:
    """Return body and attributes of a pulled message, without what Pub/Sub or melange added.

    The third value holds the attributes left out (``None`` when none were), so
    that :mod:`~melange_gcp.forwarding` can send the message on exactly as it
    came, whoever published it.
    """
    result = dict(attributes)
    hidden: dict[str, str] | None = None
    for key in result:
        if key.startswith(DEAD_LETTER_PREFIX):
            hidden = {k: v for k, v in result.items() if k.startswith(DEAD_LETTER_PREFIX)}
            result = {k: v for k, v in result.items() if not k.startswith(DEAD_LETTER_PREFIX)}
            break
    if not data and EMPTY_BODY in result:
        hidden = {**(hidden or {}), EMPTY_BODY: result.pop(EMPTY_BODY)}
    return data, result, hidden
