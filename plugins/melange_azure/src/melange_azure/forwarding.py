"""Copies of received messages as Service Bus delivered them, for dead-letter queues and redrive.

melange's received view of a message is lossy for messages of other
producers: a body of several sections or in an AMQP value section becomes one
``bytes``, typed application properties (numbers, booleans, ids) become text,
and the properties Service Bus sets when it dead-letters (``DeadLetterReason``)
are left out. A copy built from that view would differ from the original, so
:func:`copy_of` builds it from the SDK's raw AMQP message instead:

- the body: the same body type and sections (data sections, an AMQP value, or
  AMQP sequences), as received;
- the application properties: every one, with its type;
- the message properties a producer sets: message id (so a FIFO target's
  duplicate detection drops a second copy of the same message), correlation
  id, content type and encoding, subject, to, reply-to and its session, and
  the session id (a FIFO target without one gets melange's default group);
- not the header (time to live, priority) and not the message annotations:
  those are the broker's (sequence number, enqueue time, lock) or would make
  the copy expire or wait.

The SDK reads AMQP strings and AMQP binaries alike as ``bytes`` (property
names, string values, strings inside a value or sequence body). The copy sends
such bytes as text when they are UTF-8, which is what producers send almost
always (property names must be strings; the SDK itself sends bytes property
values as text), and as binary otherwise: what the raw SDK reads back is
identical either way.

Extra attributes (why a message is dead-lettered) are added as application
properties only where there is room: a name the original has keeps the
original's value, each must be within Service Bus's per-property limit, all
properties within melange's share of the 64 KB header limit, and the whole
copy within the sender link's size (measured by the SDK itself).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from azure.servicebus import ServiceBusReceivedMessage
from azure.servicebus.amqp import AmqpAnnotatedMessage, AmqpMessageBodyType, AmqpMessageProperties

from melange_azure.validation import MAX_PROPERTY_BYTES
from melange_azure.wire import DEFAULT_GROUP_ID, MAX_ATTRIBUTE_BYTES

TEXT_PROPERTIES = (
    "message_id",
    "to",
    "subject",
    "reply_to",
    "correlation_id",
    "content_type",
    "content_encoding",
    "group_id",
    "reply_to_group_id",
)
"""Message properties copied; the SDK reads their strings as bytes, they are sent as text."""

OTHER_PROPERTY_BYTES = 16
"""What a property value that is not text is counted as (AMQP encodes numbers in 1 to 9 bytes)."""


def _text(value: Any) -> Any:
    """``bytes`` the SDK read from an AMQP string, back to ``str``; anything else as it is."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw  # AMQP binary: sent as it came (the SDK refuses it; see copy_of)
    return value


def _texts(value: Any) -> Any:
    """:func:`_text` through the maps and lists of an AMQP value or sequence body."""
    if isinstance(value, dict):
        return {_texts(key): _texts(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_texts(item) for item in value]
    return _text(value)


def _size(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    return OTHER_PROPERTY_BYTES


def application_properties(received: ServiceBusReceivedMessage) -> dict[str, Any]:
    """Every application property of ``received``, names as text, values with their types."""
    raw = received.raw_amqp_message.application_properties or {}
    return {str(_text(key)): _text(value) for key, value in raw.items()}


def session_of(received: ServiceBusReceivedMessage, fifo: bool) -> Any:
    """The copy's session id: the original's; melange's default group for a FIFO target."""
    properties = received.raw_amqp_message.properties
    session = _text(properties.group_id) if properties is not None else None
    if fifo and not session:
        return DEFAULT_GROUP_ID
    return session


def copy_of(
    received: ServiceBusReceivedMessage, *, fifo: bool, extras: Mapping[str, str] | None = None
) -> AmqpAnnotatedMessage:
    """A new message with ``received``'s body, application and producer properties.

    Args:
        received: The message as the SDK received it.
        fifo: Whether the copy goes to a FIFO (session-enabled) queue.
        extras: Application properties to add (chosen by :func:`with_room`).
    """
    raw = received.raw_amqp_message
    source = raw.properties
    properties = AmqpMessageProperties(
        **{name: _text(getattr(source, name, None)) for name in TEXT_PROPERTIES},
        user_id=getattr(source, "user_id", None),
    )
    properties.group_id = session_of(received, fifo)
    values = application_properties(received)
    values.update(extras or {})
    body_type = raw.body_type
    common: dict[str, Any] = {
        "properties": properties,
        "application_properties": values or None,
    }
    if body_type == AmqpMessageBodyType.VALUE:
        return AmqpAnnotatedMessage(value_body=_texts(raw.body), **common)
    if body_type == AmqpMessageBodyType.SEQUENCE:
        return AmqpAnnotatedMessage(
            sequence_body=[_texts(list(part)) for part in raw.body], **common
        )
    return AmqpAnnotatedMessage(data_body=[bytes(part) for part in raw.body], **common)


def with_room(
    received: ServiceBusReceivedMessage,
    extras: Mapping[str, str],
    fifo: bool,
    fits: Callable[[AmqpAnnotatedMessage], bool],
) -> dict[str, str]:
    """The ``extras`` the copy has room for, never in place of an original property.

    Args:
        received: The original.
        extras: Attributes to add if they fit, in order of preference.
        fifo: Whether the copy goes to a FIFO queue.
        fits: Whether a candidate copy fits the sender link (the SDK's measure).
    """
    original = application_properties(received)
    used = sum(_size(key) + _size(value) for key, value in original.items())
    chosen: dict[str, str] = {}
    for key, value in extras.items():
        size = _size(key) + _size(value)
        if key in original or key in chosen or size > MAX_PROPERTY_BYTES:
            continue
        if used + size > MAX_ATTRIBUTE_BYTES:
            continue  # a shorter one may still fit
        if not fits(copy_of(received, fifo=fifo, extras={**chosen, key: value})):
            continue
        chosen[key] = value
        used += size
    return chosen


def copy_id(copy: AmqpAnnotatedMessage) -> str | None:
    """The copy's message id as text (``None`` when the original had none)."""
    message_id = copy.properties.message_id if copy.properties is not None else None
    return None if message_id is None else str(message_id)
