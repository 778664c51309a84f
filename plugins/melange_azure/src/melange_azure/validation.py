"""What Service Bus refuses, checked before any call.

Queue settings within Service Bus's ranges (visibility timeout up to the 5-minute lock,
max delivery count, time to live), dead-letter queues of the right kind, and
messages (ids, property sizes, deduplication only where duplicate detection is on).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from melange.backends.base import OutgoingMessage
from melange.exceptions import InvalidMessage, InvalidTopology
from melange.topology import QueueSpec, SubscriptionSpec, TopicSpec, is_fifo_name
from melange_azure.wire import DEAD_LETTER_PROPERTIES, MAX_ATTRIBUTE_BYTES, MAX_ID_LENGTH

MAX_PROPERTY_BYTES = 32_768
"""Bytes of one message property (name and value) Service Bus accepts: 32 KB."""

MIN_LOCK_DURATION = 5.0
"""Shortest lock duration Service Bus accepts, in seconds (a shorter visibility timeout
gets this lock, and melange abandons the delivery when the timeout ends)."""

MAX_LOCK_DURATION = 300.0
"""Longest lock duration Service Bus accepts: 5 minutes."""

MAX_DELIVERY_COUNT_RANGE = (1, 2000)
"""``max_receive_count`` values melange declares (Service Bus's MaxDeliveryCount)."""

RETENTION_RANGE = (1.0, 10_675_199 * 86_400.0)
"""Time to live in seconds: at least one second, at most TimeSpan.MaxValue's whole days."""

MAX_DELAY = 7 * 24 * 3600.0
"""Longest per-message or per-queue delay melange schedules, in seconds."""


def check_queue(spec: QueueSpec) -> None:
    """Raise :class:`InvalidTopology` if Service Bus would refuse ``spec``'s settings."""
    where = f"queue {spec.name!r}"
    if not 0 <= spec.visibility_timeout <= MAX_LOCK_DURATION:
        raise InvalidTopology(
            f"{where}: visibility_timeout={spec.visibility_timeout!r} must be between 0 and "
            f"{MAX_LOCK_DURATION:g} seconds, Service Bus's longest lock duration; "
            "extend_lease renews locks for longer work"
        )
    low, high = RETENTION_RANGE
    if not low <= spec.message_retention_period <= high:
        raise InvalidTopology(
            f"{where}: message_retention_period={spec.message_retention_period!r} is outside "
            f"{low:g} to {high:g} seconds (Service Bus's default message time to live)"
        )
    if not 0 <= spec.delay_seconds <= MAX_DELAY:
        raise InvalidTopology(
            f"{where}: delay_seconds={spec.delay_seconds!r} must be between 0 and {MAX_DELAY:g}"
        )
    # The name, own-queue and max_receive_count checks are the backend's check_dead_letter.
    if spec.dead_letter is not None:
        target = spec.dead_letter.queue_name
        if is_fifo_name(target) and not spec.fifo:
            raise InvalidTopology(
                f"standard {where} cannot dead-letter into FIFO queue {target!r}: its messages "
                "have no session id, which a session-enabled queue requires. Use a standard "
                "dead-letter queue"
            )


def check_subscription(topic: TopicSpec, queue: QueueSpec, subscription: SubscriptionSpec) -> None:
    """Raise :class:`InvalidTopology` if Service Bus could not forward ``topic`` to ``queue``."""
    if queue.fifo and not topic.fifo:
        raise InvalidTopology(
            f"FIFO queue {queue.name!r} cannot subscribe to standard topic {topic.name!r}: a "
            "session-enabled queue refuses messages without a session id, and a standard topic's "
            f"messages have none. Subscribe it to a FIFO topic (e.g. {topic.name + '.fifo'!r}) "
            "or use a standard queue"
        )


def _check_id(label: str, value: str) -> None:
    if not value or len(value) > MAX_ID_LENGTH:
        raise InvalidMessage(
            f"{label} must be 1 to {MAX_ID_LENGTH} characters (Service Bus's limit), got "
            f"{len(value)}"
        )


def check_message(message: OutgoingMessage) -> None:
    """Raise :class:`InvalidMessage` if Service Bus would refuse ``message``'s ids or properties."""
    if message.group_id is not None:
        _check_id("group_id (the session id)", message.group_id)
    if message.dedup_id is not None:
        _check_id("dedup_id (the message id)", message.dedup_id)
    reserved = DEAD_LETTER_PROPERTIES.intersection(message.attributes)
    if reserved:
        raise InvalidMessage(
            f"attribute {sorted(reserved)[0]!r} is reserved: Service Bus sets it on messages it "
            "dead-letters, so melange does not deliver it as an attribute. Rename it"
        )
    for key, value in message.attributes.items():
        if len(key.encode()) + len(value.encode()) > MAX_PROPERTY_BYTES:
            raise InvalidMessage(
                f"attribute {key!r} takes more than {MAX_PROPERTY_BYTES} bytes, Service Bus's "
                "limit for one message property. Move large values into the body"
            )
    attribute_bytes = sum(len(k.encode()) + len(v.encode()) for k, v in message.attributes.items())
    if attribute_bytes > MAX_ATTRIBUTE_BYTES:
        raise InvalidMessage(
            f"message attributes take {attribute_bytes} bytes; Service Bus limits a message's "
            f"properties to 64 KB and melange to {MAX_ATTRIBUTE_BYTES} bytes of attribute names "
            "and values. Move large values into the body"
        )


def check_destination(
    destination: Literal["queue", "topic"], name: str, batch: Sequence[OutgoingMessage]
) -> None:
    """Refuse a ``dedup_id`` where duplicate detection is off (standard queues and topics)."""
    if is_fifo_name(name):
        return
    for index, message in enumerate(batch):
        if message.dedup_id is not None:
            raise InvalidMessage(
                f"message {index} to {destination} {name!r} has a dedup_id, but melange turns "
                "on Service Bus duplicate detection only for FIFO queues and topics (.fifo "
                f"names). Drop dedup_id or publish to a FIFO {destination}; nothing was sent"
            )
