"""The dispatchers' scheduling core: what to receive, run, release and acknowledge next.

Both dispatchers hold messages the same way: a bounded capacity shared by
receive calls in progress (reserved) and messages received and not finished
(held), FIFO groups that run one message at a time, and acknowledgements sent
in batches (:class:`~melange.settlement.AckBuffer`). :class:`Schedule` keeps
that state and answers each event (a receive may start, a batch arrived, a
handler finished, messages are released, acks went out) with the steps to take.
It does no I/O, starts nothing and takes no lock: the threaded dispatcher calls
it under its lock, the asyncio one on its event loop, and each performs the
steps with threads or tasks.
"""

from __future__ import annotations

import time
from collections import deque
from typing import NamedTuple

from melange.settlement import FILL_WAIT, AckBuffer, Delivery


class Reservation(NamedTuple):
    """The answer to "may a receive call start?".

    Attributes:
        size: Messages the call may ask for (reserved); 0 when it must wait.
        wait: Seconds to wait before asking again, or ``None`` for "until
            capacity changes" (meaningful when ``size`` is 0).
        fill_deadline: Pass it back on the next attempt of the same call.
    """

    size: int
    wait: float | None
    fill_deadline: float | None


class Finished(NamedTuple):
    """The steps after a handler finished.

    Attributes:
        start: The next message of its FIFO group, to start now.
        release: Messages that waited behind it, when it failed: their group's
            order is kept by giving them back to the broker (nack, no delay).
        send: Acknowledgement calls to make now.
    """

    start: Delivery | None
    release: list[Delivery]
    send: list[list[Delivery]]


class FinishedAll(NamedTuple):
    """The steps after handlers finished several messages (see :meth:`Schedule.finish_all`).

    Attributes:
        start: The next messages of their FIFO groups, to start now.
        release: Messages that waited behind a failed one of their group.
        send: Acknowledgement calls to make now.
        handled: How many of them every consumer handled (``Delivery.handled``).
    """

    start: list[Delivery]
    release: list[Delivery]
    send: list[list[Delivery]]
    handled: int


class Schedule:
    """Capacity, FIFO group holds and acknowledgement batching of one dispatcher.

    Args:
        capacity: The most messages held at once (received, not finished),
            counting those asked for by receive calls in progress.
        batch_size: The most messages one receive call asks for.

    Attributes:
        held: Messages received and not finished.
        reserved: Messages asked for by receive calls in progress.
        pending_acks: Acknowledgements decided and not sent yet.
        deliveries: The held messages.
        last_activity: When something was last received, finished or acknowledged
            (``time.monotonic()``).
        acks: The acknowledgements waiting to go out; sized for the backend by
            the dispatcher at start-up.
    """

    def __init__(self, capacity: int, batch_size: int) -> None:
        self.capacity = capacity
        self.batch_size = batch_size
        # Less capacity than a batch: no receive can be full, so waiting for one would idle it.
        self._full = batch_size if capacity >= batch_size else 1
        self.held = 0
        self.reserved = 0
        self.pending_acks = 0
        self.deliveries: set[Delivery] = set()
        self.last_activity = time.monotonic()
        self.acks = AckBuffer(1)
        self._active_groups: set[str] = set()
        self._waiting: dict[str, deque[Delivery]] = {}  # behind the running message of a group

    @property
    def idle(self) -> bool:
        """Nothing held and no acknowledgement outstanding."""
        return self.held == 0 and self.pending_acks == 0

    # -------------------------------------------------------------- receiving
    def reserve(self, now: float, fill_deadline: float | None = None) -> Reservation:
        """Reserve capacity for one receive call, or say how long to wait for it.

        With capacity free but less than a full batch while handlers run, a
        receive waits up to :data:`~melange.settlement.FILL_WAIT` for more:
        asking for fewer costs a round trip of its own.
        """
        free = self.capacity - self.held - self.reserved
        if free <= 0:
            return Reservation(0, None, fill_deadline)
        if fill_deadline is None:
            fill_deadline = now + FILL_WAIT
        # Only running handlers free capacity soon; a reservation may last a long poll.
        if free >= self._full or self.held == 0 or now >= fill_deadline:
            count = min(free, self.batch_size)
            self.reserved += count
            return Reservation(count, 0.0, fill_deadline)
        return Reservation(0, fill_deadline - now, fill_deadline)

    def receivable(self) -> bool:
        """Whether a waiting receive may start now: a full batch is free, or nothing is held.

        Drivers wake waiting receivers only then; a receive that waits for a
        full batch wakes by itself at its fill deadline.
        """
        free = self.capacity - self.held - self.reserved
        return free >= self._full or (free > 0 and self.held == 0)

    def unreserve(self, count: int) -> None:
        """Give back a reservation whose receive call failed."""
        self.reserved -= count

    def accept(
        self, deliveries: list[Delivery], reserved: int, *, stopping: bool, now: float
    ) -> tuple[list[Delivery], list[Delivery]]:
        """Take one receive call's messages; return (to start now, to release).

        Messages of a FIFO group that has one running wait behind it. While
        stopping, every message is released unstarted.
        """
        self.reserved -= reserved
        if stopping:
            for delivery in deliveries:
                delivery.cancelled = True
            return [], deliveries
        if deliveries:
            self.held += len(deliveries)
            self.deliveries.update(deliveries)
            self.last_activity = now
        # Most messages have no group: only those of a group are looked at further.
        return [d for d in deliveries if d.received.group_id is None or self._admit(d)], []

    def _admit(self, delivery: Delivery) -> bool:
        """Whether a message of a FIFO group starts now; else it waits behind its group's."""
        group = delivery.received.group_id
        assert group is not None  # accept() admits the others at once
        if group in self._active_groups:
            self._waiting.setdefault(group, deque()).append(delivery)
            return False
        self._active_groups.add(group)
        return True

    # --------------------------------------------------------------- finishing
    def finish(self, delivery: Delivery, acked: bool, now: float) -> Finished:
        """A handler finished ``delivery``; free its capacity and say what follows."""
        start, release, send, _ = self.finish_all([(delivery, acked)], now)
        return Finished(start[0] if start else None, release, send)

    def finish_all(self, finished: list[tuple[Delivery, bool]], now: float) -> FinishedAll:
        """Handlers finished these messages (each with whether to ack it); say what follows."""
        deliveries, acks = self.deliveries, self.acks
        start: list[Delivery] = []
        release: list[Delivery] = []
        handled = 0
        for delivery, acked in finished:
            deliveries.discard(delivery)
            handled += delivery.handled
            if acked and not delivery.settled:
                self.pending_acks += 1
            group = delivery.received.group_id
            if group is not None:
                self._next_of_group(group, acked, start, release)
        self.held -= len(finished)
        self.last_activity = now
        return FinishedAll(start, release, acks.settle_all(finished, now), handled)

    def _next_of_group(
        self, group: str, acked: bool, start: list[Delivery], release: list[Delivery]
    ) -> None:
        """After a message of ``group`` finished, add its next to ``start`` (or all to ``release``).

        When the message failed, every message waiting behind it is released instead.
        """
        waiting = self._waiting.pop(group, None)
        if waiting and acked:
            # The group stays active while its next message runs, so one that arrives
            # meanwhile waits behind it.
            start.append(waiting.popleft())
            if waiting:
                self._waiting[group] = waiting
            return
        self._active_groups.discard(group)
        for other in waiting or ():
            other.cancelled = True
            release.append(other)

    def release(self, deliveries: list[Delivery], now: float) -> list[list[Delivery]]:
        """Stop holding messages that were not handled; return the ack calls now complete."""
        send: list[list[Delivery]] = []
        for delivery in deliveries:
            if delivery in self.deliveries:
                self.deliveries.discard(delivery)
                self.held -= 1
            send += self.settle(delivery, False, now)
        return send

    def cancel_unstarted(self) -> list[Delivery]:
        """Mark every held message that has not started as cancelled, and return them."""
        unstarted = [d for d in self.deliveries if not d.started and not d.cancelled]
        for delivery in unstarted:
            delivery.cancelled = True
        self._waiting.clear()
        return unstarted

    # ----------------------------------------------------------------- acking
    def settle(self, delivery: Delivery, ack: bool, now: float) -> list[list[Delivery]]:
        """Count ``delivery`` as settled, buffering its ack; return the ack calls to make now."""
        if ack and not delivery.settled:
            self.pending_acks += 1
        return self.acks.settle(delivery, ack, now)

    def acks_sent(self, count: int, now: float) -> None:
        """An acknowledgement call for ``count`` messages ended (whatever its outcome)."""
        self.pending_acks -= count
        self.last_activity = now
