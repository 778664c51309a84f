"""Receipts of pulled messages, and receive counts where Pub/Sub gives none.

Pub/Sub reports ``delivery_attempt`` only on subscriptions with a dead-letter
policy (https://cloud.google.com/pubsub/docs/handling-failures). Elsewhere the
backend counts the deliveries it pulled itself, per subscription and message
id: exact within one backend object, a lower bound across processes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from melange.backends.base import ReceivedMessage
from melange.exceptions import InvalidMessage

MAX_ACK_IDS = 1_000
"""Ack ids per Acknowledge / ModifyAckDeadline call (requests stay far below 512 KiB)."""


@dataclass(frozen=True, slots=True)
class GCPReceipt:
    """Settles one delivery: the subscription it was pulled from and its ack id.

    Attributes:
        subscription: The subscription's path.
        ack_id: The delivery's ack id.
        hidden: Attributes the message carried on the wire that its received
            form leaves out (``CloudPubSubDeadLetter*``, melange's empty-body
            marker), for a byte-exact forward; ``None`` when there were none.
    """

    subscription: str
    ack_id: str
    hidden: Mapping[str, str] | None = field(default=None, compare=False)


def by_subscription(messages: Sequence[ReceivedMessage]) -> dict[str, list[str]]:
    """Group the ack ids of ``messages`` by subscription path, in order.

    Raises:
        InvalidMessage: A message was not received through a gcp backend.
    """
    grouped: dict[str, list[str]] = defaultdict(list)
    for message in messages:
        receipt = message.receipt
        if not isinstance(receipt, GCPReceipt):
            raise InvalidMessage(
                f"message {message.message_id!r} was not received through the gcp backend "
                "(its receipt is not a Pub/Sub ack id); settle it with the backend it came from"
            )
        grouped[receipt.subscription].append(receipt.ack_id)
    return grouped


def chunks(ack_ids: list[str]) -> Iterator[list[str]]:
    """Split ack ids into requests of at most :data:`MAX_ACK_IDS`."""
    for start in range(0, len(ack_ids), MAX_ACK_IDS):
        yield ack_ids[start : start + MAX_ACK_IDS]


class DeliveryCounter:
    """Counts deliveries per (subscription, message id), bounded, oldest forgotten first."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._counts: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def delivered_many(self, subscription: str, message_ids: list[str]) -> dict[str, int]:
        """Count one more delivery of each message; return the counts, this one included."""
        if not message_ids:
            return {}
        counts: dict[str, int] = {}
        with self._lock:
            for message_id in message_ids:
                key = (subscription, message_id)
                count = self._counts.pop(key, 0) + 1
                self._counts[key] = count
                counts[message_id] = count
            while len(self._counts) > self._capacity:
                self._counts.popitem(last=False)
        return counts

    def settled_many(self, messages: Sequence[ReceivedMessage]) -> None:
        """Forget messages that were acknowledged."""
        with self._lock:
            if not self._counts:
                return
            for message in messages:
                self._counts.pop((message.receipt.subscription, message.message_id), None)
