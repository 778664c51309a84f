"""Receipts of received messages, and how SQS answers when one no longer settles anything.

A received message carries an :class:`AWSReceipt`: the queue's URL and the
receipt handle of that delivery, and the message as ReceiveMessage returned it
(its wire form, which a byte-exact copy to a dead-letter queue sends back).
Settling (delete, change visibility) goes to SQS in batches of up to 10 per
queue. SQS refuses a handle whose delivery is over (the message was deleted,
or received again since); melange treats that as a lost lease, not as a
failure of the whole call.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from melange.backends.base import ReceivedMessage
from melange.exceptions import InvalidArgument, InvalidMessage
from melange_aws.errors import RECEIPT_INVALID

SETTLE_BATCH = 10
"""Entries per DeleteMessageBatch / ChangeMessageVisibilityBatch call."""


class AWSReceipt(NamedTuple):
    """What settling one delivery needs, and what copying it byte for byte needs.

    Attributes:
        queue_url: The queue's URL.
        handle: The delivery's receipt handle.
        wire: The element of ReceiveMessage's ``Messages`` the delivery came as
            (body text, MessageAttributes with their data types and Binary
            bytes, system attributes); ``None`` when unknown.
    """

    queue_url: str
    handle: str
    wire: Mapping[str, Any] | None = None

    def __repr__(self) -> str:
        # The wire form holds the whole body: keep it out of logs and reprs.
        return f"AWSReceipt(queue_url={self.queue_url!r}, handle={self.handle[:16]!r}...)"


Delivery = tuple[ReceivedMessage, str]
"""A received message and its receipt handle."""


def by_queue(messages: list[ReceivedMessage]) -> dict[str, list[Delivery]]:
    """Group deliveries by queue URL, each receipt handle once.

    Raises:
        InvalidArgument: An item is not a ReceivedMessage; nothing is settled.
        InvalidMessage: A message was not received through an SQS backend; nothing
            is settled.
    """
    grouped: dict[str, list[Delivery]] = {}
    seen: set[str] = set()
    for message in messages:
        if not isinstance(message, ReceivedMessage):
            hint = "pass the messages receive() returned"
            raise InvalidArgument("each message", "a ReceivedMessage", message, hint)
        receipt = message.receipt
        if not isinstance(receipt, AWSReceipt):
            raise InvalidMessage(
                f"message {message.message_id!r} carries no receipt of an SQS backend; "
                "ack, nack or extend messages with the backend that received them"
            )
        if receipt.handle not in seen:
            seen.add(receipt.handle)
            grouped.setdefault(receipt.queue_url, []).append((message, receipt.handle))
    return grouped


def chunks(deliveries: list[Delivery]) -> Iterator[list[Delivery]]:
    """Split one queue's deliveries into batches SQS accepts."""
    for start in range(0, len(deliveries), SETTLE_BATCH):
        yield deliveries[start : start + SETTLE_BATCH]


def receipt_refused(code: str, message: str) -> bool:
    """Whether a failed batch entry means the receipt no longer settles anything.

    ``ReceiptHandleIsInvalid`` and ``MessageNotInflight`` say so by code; SQS
    reports an expired handle as ``InvalidParameterValue`` naming the receipt handle.
    """
    return code in RECEIPT_INVALID or "receipt" in message.lower()
