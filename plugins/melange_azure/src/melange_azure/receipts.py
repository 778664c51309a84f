"""Receivers per queue, and the receipt a received message carries back to settle it.

A message received in peek-lock mode is settled (completed, abandoned, its lock
renewed) over the receiver link that delivered it, and azure-servicebus's
receivers are not thread-safe: each :class:`Receiver` pairs one SDK receiver
with the lock that serializes its use. A :class:`ReceiverPool` per queue lends a
free receiver to each ``receive`` call (making one when all are busy), so
concurrent consumers do not wait for each other, and takes it back afterwards.

FIFO queues are session-enabled: a session receiver holds one session (one
melange group) at a time, so another consumer cannot take that group's
messages out of order. The pool hands its session receivers out like the
others; a session receiver with nothing left to deliver and nothing unsettled
is closed, which frees the session and lets the next receive accept another.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from azure.servicebus import ServiceBusReceivedMessage

logger = logging.getLogger("melange.azure.receipts")


class Receiver:
    """One SDK receiver, the lock that serializes its use, and its unsettled count.

    Args:
        handle: The SDK's ``ServiceBusReceiver``.
        queue_name: The queue it receives from.
        sessions: Whether it is a session receiver (FIFO queue).
    """

    def __init__(self, handle: Any, queue_name: str, sessions: bool) -> None:
        self.handle = handle
        self.queue_name = queue_name
        self.sessions = sessions
        self.lock = threading.RLock()
        self.unsettled = 0
        self._waiting = 0
        self._waiting_lock = threading.Lock()
        self.broken = False
        self.closed = False
        self.alive_at = time.monotonic()

    def alive(self) -> None:
        """Note a sign of life: a delivery, a confirmed settlement, an answer."""
        self.alive_at = time.monotonic()

    def silent_for(self) -> float:
        """Seconds since the last sign of life."""
        return time.monotonic() - self.alive_at

    def __repr__(self) -> str:
        kind = "session receiver" if self.sessions else "receiver"
        return f"<{kind} of {self.queue_name!r} unsettled={self.unsettled}>"

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        """Hold :attr:`lock` for a settlement or renewal, ahead of the next receive slice.

        Python's locks are not fair: a thread receiving in slices would take the
        lock straight back. Receivers yield while someone waits here
        (:meth:`yield_to_settlements`).
        """
        with self._waiting_lock:
            self._waiting += 1
        try:
            with self.lock:
                yield
        finally:
            with self._waiting_lock:
                self._waiting -= 1

    def yield_to_settlements(self, limit: float = 1.0) -> None:
        """Wait (without the lock) while settlements wait for it, at most ``limit`` seconds."""
        deadline = time.monotonic() + limit
        while self._waiting and time.monotonic() < deadline:
            time.sleep(0.002)

    def settled(self, count: int = 1) -> None:
        """Count ``count`` of its messages as settled (call with :attr:`lock` held)."""
        self.unsettled = max(0, self.unsettled - count)

    def close(self) -> None:
        """Close the SDK receiver; errors are logged, not raised (call with :attr:`lock` held)."""
        if self.closed:
            return
        self.closed = True
        try:
            self.handle.close()
        except Exception:  # closing must not fail the caller; the link dies with it anyway
            logger.debug("closing a receiver of %r failed", self.queue_name, exc_info=True)


def close_in_background(receiver: Receiver) -> None:
    """Close a receiver in a daemon thread: the SDK takes up to a second to close a link."""

    def close() -> None:
        with receiver.lock:
            receiver.close()

    threading.Thread(target=close, name="melange-azure-close", daemon=True).start()


@dataclass(eq=False)
class AzureReceipt:
    """What the backend needs to settle one delivery.

    Attributes:
        receiver: The receiver that delivered it (settlement goes over its link).
        message: The SDK's received message.
        settled: Whether melange completed or abandoned it already.
        lock_seconds: The queue's lock duration, when known.
        lock_ends: When the current lock ends by the local monotonic clock
            (``None`` for session messages, whose session holds the lock).
        renewed_at: When the lock was last renewed (monotonic), 0 if never.
    """

    receiver: Receiver
    message: ServiceBusReceivedMessage = field(repr=False)
    settled: bool = False
    lock_seconds: float | None = None
    lock_ends: float | None = None
    renewed_at: float = 0.0

    def lock_started(self, started: float, reported: datetime.datetime | None = None) -> None:
        """Note a message lock taken or renewed at ``started`` (monotonic).

        The lock lasts the queue's lock duration from then, by the local clock:
        the expiry Service Bus reports is read on its clock, which may be
        minutes off the local one. For a delivery, a reported expiry sooner
        than that (it waited in a buffer) is believed, a past one is not (the
        caller asks Service Bus instead); a renewal passes ``reported=None``.
        The SDK refuses to settle a message whose expiry has passed by the
        local clock, so it is given the local view of the lock too.
        """
        if self.receiver.sessions or self.lock_seconds is None:
            return
        length = self.lock_seconds
        now = time.monotonic()
        utc_now = datetime.datetime.now(datetime.timezone.utc)
        if reported is not None:
            left_at_start = (reported - utc_now).total_seconds() + (now - started)
            if left_at_start > 0:
                length = min(length, left_at_start)
        self.lock_ends = started + length
        self.message._expiry = utc_now + datetime.timedelta(seconds=self.lock_ends - now)

    @property
    def lock_token(self) -> str:
        """The message's lock token, as text."""
        return str(self.message.lock_token)

    @property
    def locked_until(self) -> datetime.datetime | None:
        """When Service Bus lets the lock go (UTC), as last reported."""
        if self.receiver.sessions:
            session = getattr(self.receiver.handle, "session", None)
            value = getattr(session, "locked_until_utc", None)
        else:
            value = self.message.locked_until_utc
        return value if isinstance(value, datetime.datetime) else None


class ReceiverPool:
    """The receivers of one queue, lent out one per concurrent ``receive`` call.

    Args:
        queue_name: The queue.
        sessions: Whether the queue is session-enabled (FIFO).
        make: Makes a new, open SDK receiver for the queue: ``make(wait, budget)``
            waits at most ``wait`` seconds for a session (a session receiver)
            and takes at most ``budget`` seconds in all.
    """

    def __init__(
        self, queue_name: str, sessions: bool, make: Callable[[float, float], Any]
    ) -> None:
        self.queue_name = queue_name
        self.sessions = sessions
        self._make = make
        self._lock = threading.Lock()
        self._free: list[Receiver] = []
        self._all: list[Receiver] = []
        self.closed = False

    def borrow(self, wait: float, budget: float) -> Receiver:
        """Return a free receiver (oldest first), or a new one when none is free."""
        broken: list[Receiver] = []
        with self._lock:
            while self._free:
                receiver = self._free.pop(0)
                if receiver.broken:  # its connection failed since it was given back
                    broken.append(receiver)
                elif not receiver.closed:
                    break
            else:
                receiver = None
        for dead in broken:
            self.discard(dead)
        if receiver is not None:
            return receiver
        return self.new_receiver(wait, budget)

    def new_receiver(self, wait: float, budget: float) -> Receiver:
        """Return a newly made receiver, lent out (a session receiver accepts a new session)."""
        receiver = Receiver(self._make(wait, budget), self.queue_name, self.sessions)
        with self._lock:
            self._all.append(receiver)
        return receiver

    def free_receivers(self) -> list[Receiver]:
        """Take every free receiver out of the pool (to try each in turn)."""
        with self._lock:
            taken, self._free = [r for r in self._free if not r.closed], []
            return taken

    def give_back(self, receiver: Receiver) -> None:
        """Return a receiver after use; a broken or closed one is dropped."""
        with self._lock:
            if receiver.broken or receiver.closed or self.closed:
                if receiver in self._all:
                    self._all.remove(receiver)
                drop = True
            else:
                self._free.append(receiver)
                drop = False
        if drop:
            close_in_background(receiver)

    def discard(self, receiver: Receiver) -> None:
        """Close a receiver that is done (a drained session) and forget it."""
        with self._lock:
            if receiver in self._all:
                self._all.remove(receiver)
            if receiver in self._free:
                self._free.remove(receiver)
        close_in_background(receiver)

    def close(self) -> list[Receiver]:
        """Mark the pool closed and hand over its receivers, for the caller to close."""
        with self._lock:
            self.closed = True
            receivers, self._all, self._free = self._all, [], []
        return receivers
