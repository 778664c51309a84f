"""Receipts of received messages, and how SQS answers when one no longer settles anything.

A received message carries an :class:`AWSReceipt`: the queue's URL and the
receipt handle of that delivery. Settling (delete, change visibility) goes to
SQS in batches of up to 10 per queue. SQS refuses a handle whose delivery is
over (the message was deleted, or received again since); melange treats that
as a lost lease, not as a failure of the whole call.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from melange.backends.base import ReceivedMessage
from melange.exceptions import InvalidMessage
from melange_aws.errors import RECEIPT_INVALID

SETTLE_BATCH = 10
"""Entries per DeleteMessageBatch / ChangeMessageVisibilityBatch call."""


class AWSReceipt(NamedTuple):
    """What settling one delivery needs: the queue's URL and the delivery's receipt handle."""

    queue_url: str
    handle: str


Delivery = tuple[ReceivedMessage, str]
"""A received message and its receipt handle."""


def by_queue(messages: list[ReceivedMessage]) -> dict[str, list[Delivery]]:
    """Group deliveries by queue URL, each receipt handle once.

    Raises:
        InvalidMessage: A message was not received through an SQS backend; nothing
            is settled.
    """
    grouped: dict[str, list[Delivery]] = {}
    seen: set[str] = set()
    for message in messages:
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
