"""How melange messages travel through Service Bus, and how received ones are read back.

Outgoing: the body is the AMQP data section, byte for byte; attributes are
application properties (string to string); the message id is the ``dedup_id``
(duplicate detection works on message ids), else the producer id (the
``melange.id`` attribute, assigned once before the first attempt, so that
duplicate detection drops what a publisher's retry sends again), else a random
one, so each publish result names its message; the ``group_id`` is the session
id (sessions are Service Bus's FIFO groups); a delay is a scheduled enqueue time.

Incoming: application properties come back with ``bytes`` keys and values
(azure-servicebus's pure-Python transport); they are decoded to ``str``. The
AMQP header's ``delivery-count`` counts *earlier* deliveries (Service Bus puts
the delivery count minus one there), so the receive count is it plus one.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from azure.servicebus import ServiceBusMessage, ServiceBusReceivedMessage

from melange.backends.base import OutgoingMessage
from melange.message import PRODUCER_ID_ATTRIBUTE

MESSAGE_LIMIT = 262_144
"""Bytes of one message (body, properties and headers) on the Standard tier: 256 KB."""

HEADER_LIMIT = 65_536
"""Bytes of a message's properties (user and system) Service Bus accepts: 64 KB."""

RESERVED_BYTES = 8_192
"""Room kept within MESSAGE_LIMIT for system properties and the AMQP encoding of attributes."""

MAX_MESSAGE_SIZE = MESSAGE_LIMIT - RESERVED_BYTES
"""The largest message in melange's measure (body plus attribute names and values)."""

MAX_ATTRIBUTES = 256
"""Attributes per message: bounds their AMQP encoding overhead to the reserved room."""

MAX_ATTRIBUTE_BYTES = HEADER_LIMIT - RESERVED_BYTES
"""Bytes of attribute names and values per message, within the 64 KB header limit."""

MAX_ID_LENGTH = 128
"""Characters of a MessageId or SessionId."""

DEFAULT_GROUP_ID = "melange-default"
"""SessionId of messages sent to a FIFO queue or topic without a ``group_id``.

They form one group (one session), as on the memory backend, and arrive with
``group_id=None``."""


def to_service_bus(
    message: OutgoingMessage, fifo: bool, queue_delay: float = 0.0
) -> ServiceBusMessage:
    """Return the ServiceBusMessage for ``message``.

    Args:
        message: The melange message.
        fifo: Whether it goes to a FIFO (session-enabled) queue or topic.
        queue_delay: The destination queue's own delay, applied when the
            message has none of its own.
    """
    session_id = message.group_id
    if fifo and session_id is None:
        session_id = DEFAULT_GROUP_ID
    properties: dict[str | bytes, Any] = {key: value for key, value in message.attributes.items()}
    outgoing = ServiceBusMessage(
        bytes(message.body),
        application_properties=properties or None,
        message_id=message_id_of(message),
        session_id=session_id,
    )
    delay = message.delay_seconds or queue_delay
    if delay:
        outgoing.scheduled_enqueue_time_utc = datetime.datetime.now(
            datetime.timezone.utc
        ) + datetime.timedelta(seconds=delay)
    return outgoing


def message_id_of(message: OutgoingMessage) -> str:
    """The Service Bus message id: the dedup id, else the producer id, else a new one.

    A producer id longer than a message id may be (:data:`MAX_ID_LENGTH`) is
    not used: Service Bus would refuse the message.
    """
    if message.dedup_id:
        return message.dedup_id
    producer_id = message.attributes.get(PRODUCER_ID_ATTRIBUTE)
    if producer_id and len(producer_id) <= MAX_ID_LENGTH:
        return producer_id
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Decoded:
    """What melange reads from a received Service Bus message."""

    body: bytes
    attributes: dict[str, str]
    message_id: str
    receive_count: int
    group_id: str | None


def _text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def body_bytes(message: ServiceBusReceivedMessage) -> bytes:
    """The body of a data-section message as one ``bytes`` (other producers may split it)."""
    body = message.body
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    if isinstance(body, str):  # a value body holding text, from another producer
        return body.encode()
    try:
        return b"".join(bytes(part) for part in body)
    except TypeError:
        return _text(body).encode()


DEAD_LETTER_PROPERTIES = frozenset({"DeadLetterReason", "DeadLetterErrorDescription"})
"""Application properties Service Bus adds when it dead-letters a message; not attributes."""


def attributes_of(properties: Mapping[Any, Any] | None) -> dict[str, str]:
    """Application properties as ``str`` to ``str``; other producers' values become text.

    The properties Service Bus adds to a dead-lettered message (its reason and
    description) are left out, so a message reaches the dead-letter queue with
    the attributes it was sent with.
    """
    attributes = {_text(key): _text(value) for key, value in (properties or {}).items()}
    for name in DEAD_LETTER_PROPERTIES:
        attributes.pop(name, None)
    return attributes


def from_service_bus(message: ServiceBusReceivedMessage) -> Decoded:
    """Read a received message back into melange's terms."""
    group_id = message.session_id
    if group_id == DEFAULT_GROUP_ID:
        group_id = None
    return Decoded(
        body_bytes(message),
        attributes_of(message.application_properties),
        _text(message.message_id) if message.message_id is not None else "",
        (message.delivery_count or 0) + 1,
        group_id,
    )
