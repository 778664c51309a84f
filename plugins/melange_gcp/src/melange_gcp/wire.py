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


def _varint_bytes(value: int) -> int:
    """Bytes of ``value`` as a protobuf varint (a length prefix)."""
    return 1 if value < 0x80 else (value.bit_length() + 6) // 7


def _field_bytes(length: int) -> int:
    """Bytes of a length-delimited protobuf field of ``length`` bytes (tag, length, content).

    Every field counted here has a field number below 16, so a one-byte tag.
    """
    return 1 + _varint_bytes(length) + length


def body_only_bytes(body_bytes: int) -> int:
    """What a message of only a body adds to a Publish request (see :func:`request_bytes`)."""
    if not body_bytes:  # travels with the EMPTY_BODY marker attribute
        return _field_bytes(_field_bytes(_field_bytes(len(EMPTY_BODY)) + _field_bytes(1)))
    return _field_bytes(_field_bytes(body_bytes))


def request_bytes(body_bytes: int, attribute_bytes: list[tuple[int, int]], group_bytes: int) -> int:
    """Return exactly what a message adds to a serialized Publish request.

    A ``PubsubMessage`` in the request's repeated ``messages`` field: its data,
    one map entry per attribute (key and value fields within an entry field),
    its ordering key, each with its tag and varint length, as :func:`to_pubsub`
    builds it (an empty body without attributes gets the EMPTY_BODY marker).

    Args:
        body_bytes: Length of the body.
        attribute_bytes: ``(key, value)`` lengths in UTF-8 bytes, one per attribute.
        group_bytes: Length of the ordering key (0 for none).
    """
    if not attribute_bytes and not body_bytes:
        attribute_bytes = [(len(EMPTY_BODY), 1)]
    inner = _field_bytes(body_bytes) if body_bytes else 0
    for key, value in attribute_bytes:
        inner += _field_bytes(_field_bytes(key) + _field_bytes(value))
    if group_bytes:
        inner += _field_bytes(group_bytes)
    return _field_bytes(inner)


def check_message(message: OutgoingMessage, size: int) -> int:
    """Raise InvalidMessage for what Pub/Sub refuses; return the message's size on the wire.

    The size returned is exactly what the message adds to a serialized Publish
    request (:func:`request_bytes`), which Pub/Sub limits to 10,000,000 bytes. The
    base class has already checked types, the attribute count and ``max_message_size``
    (``size``: body plus attribute names and values).
    """
    attributes = message.attributes
    group = message.group_id
    if not attributes and group is None:  # the common case: nothing more to check
        return body_only_bytes(len(message.body))
    lengths: list[tuple[int, int]] = []
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
        lengths.append((key_bytes, value_bytes))
    group_bytes = 0
    if group is not None:
        group_bytes = len(group.encode())
        if not group or group_bytes > MAX_ORDERING_KEY_BYTES:
            raise InvalidMessage(
                f"group_id of {group_bytes} bytes: Pub/Sub ordering keys are 1 to "
                f"{MAX_ORDERING_KEY_BYTES} bytes"
            )
    return request_bytes(len(message.body), lengths, group_bytes)


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
