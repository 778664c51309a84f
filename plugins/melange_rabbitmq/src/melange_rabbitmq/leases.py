"""Visibility timeouts kept by the client: RabbitMQ 3.10 has no per-message lease.

A message a consumer received stays unacknowledged on its channel until the
consumer settles it or the channel closes. melange's visibility timeout is a
lease on top: each delivery handed out is held here until a deadline, and the
I/O thread returns (``basic.nack`` with requeue) every delivery whose deadline
passed, so the broker delivers it again and counts the return
(``x-delivery-count`` on quorum queues). Once returned, the old receipt is
stale: an ack or nack with it settles nothing, and extending it raises
:class:`~melange.exceptions.LeaseLost`.

A lease can only be shortened by a fault, never lengthened: when the channel or
the connection closes, the broker returns every unacknowledged delivery at once.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

__all__ = ["DeliveryKey", "Lease", "LeaseTable"]

DeliveryKey = tuple[int, int, int]
"""``(connection generation, channel number, delivery tag)``: one delivery, unique per link."""


@dataclass(slots=True)
class Lease:
    """One delivery handed to a receiver and not settled yet.

    Attributes:
        queue: The queue it came from.
        message_id: The message's id, for errors.
        deadline: ``time.monotonic()`` at which it goes back to the queue.
        released: Nacked with a delay: it goes back at ``deadline`` and its receipt
            settles nothing any more.
    """

    queue: str
    message_id: str
    deadline: float
    released: bool = False


class LeaseTable:
    """The leases of one link's deliveries; thread-safe."""

    def __init__(self) -> None:
        self._leases: dict[DeliveryKey, Lease] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._leases)

    def hold(self, key: DeliveryKey, queue: str, message_id: str, seconds: float) -> None:
        """Lease a delivery for ``seconds`` from now."""
        lease = Lease(queue, message_id, time.monotonic() + seconds)
        with self._lock:
            self._leases[key] = lease

    def settle(self, key: DeliveryKey) -> bool:
        """Forget a delivery being acked; return whether its receipt was still current."""
        with self._lock:
            lease = self._leases.get(key)
            if lease is None or lease.released:
                return False
            del self._leases[key]
            return True

    def release(self, key: DeliveryKey, delay: float) -> bool:
        """Mark a delivery for return after ``delay`` seconds.

        Returns:
            Whether the caller must return it now: ``delay`` is 0 and the receipt
            was current. With a delay the I/O thread returns it when it is due.
        """
        with self._lock:
            lease = self._leases.get(key)
            if lease is None or lease.released:
                return False
            if delay <= 0:
                del self._leases[key]
                return True
            lease.deadline = time.monotonic() + delay
            lease.released = True
            return False

    def extend(self, key: DeliveryKey, seconds: float) -> Lease | None:
        """Move a current lease's deadline to ``seconds`` from now; ``None`` if it is stale."""
        with self._lock:
            lease = self._leases.get(key)
            if lease is None or lease.released:
                return None
            lease.deadline = time.monotonic() + seconds
            return lease

    def due(self, now: float) -> list[DeliveryKey]:
        """Remove and return the deliveries whose deadline has passed."""
        with self._lock:
            keys = [key for key, lease in self._leases.items() if lease.deadline <= now]
            for key in keys:
                del self._leases[key]
        return keys

    def drop(self, generation: int, channel: int | None = None) -> None:
        """Forget the deliveries of a closed connection (or one of its channels).

        The broker has returned them already; their receipts are stale.
        """
        with self._lock:
            stale = [
                key
                for key in self._leases
                if key[0] == generation and (channel is None or key[1] == channel)
            ]
            for key in stale:
                del self._leases[key]
