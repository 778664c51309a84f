"""The embedded ``memory`` backend: every capability, in-process, nothing to install or run.

Queues, topics and messages live in the memory of one Python process and are
lost when the backend is closed or the process ends. The semantics follow
Amazon SQS/SNS, melange's reference broker: visibility timeouts and receive
counts, dead-letter queues after a maximum receive count, FIFO queues with
per-group order, deduplication ids within a window, per-queue and
per-message delay, retention, and fan-out from topics with attribute filters.

All timing reads an injectable :class:`~melange.clock.Clock`, so tests can
drive timeouts with a :class:`~melange.clock.ManualClock` instead of sleeping.
The only real-time wait is a long-polling :meth:`~MemoryBackend.receive`,
which re-checks the clock every few hundredths of a second.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import threading
import time
from collections import deque
from operator import attrgetter
from random import getrandbits
from typing import Any, NamedTuple

from melange.backends.base import (
    Capabilities,
    MessagingBackend,
    OutgoingMessage,
    PublishResult,
    ReceivedMessage,
)
from melange.clock import Clock, SystemClock
from melange.exceptions import (
    BackendClosed,
    ConfigurationError,
    ImmutableSettingError,
    InvalidMessage,
    LeaseLost,
    QueueNotFound,
    TopicNotFound,
    did_you_mean,
)
from melange.topology import QueueSpec, SubscriptionSpec, TopicSpec

__all__ = ["MemoryBackend", "QueueDepth"]

_POLL_INTERVAL = 0.05
"""Longest real-time sleep of a waiting receive, so a ManualClock advance is seen quickly."""

_SEQ = attrgetter("seq")

# Bits that make a random 128-bit number a version-4 UUID (RFC 4122 version and variant).
_UUID4_MASK = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_UUID4_BITS = (0x4000 << 64) | (0x8000 << 48)


def _new_id() -> str:
    """Return a random UUID4 as 32 hex digits, several times faster than ``_new_id()``."""
    return f"{getrandbits(128) & _UUID4_MASK | _UUID4_BITS:032x}"


class QueueDepth(NamedTuple):
    """How many messages a queue holds, by state (see :meth:`MemoryBackend.queue_depth`).

    Attributes:
        visible: Messages a receive would return now.
        in_flight: Received messages not yet acked whose lease has not expired
            (including messages nacked with a delay).
        delayed: Messages never received that are still waiting for their delay.
    """

    visible: int
    in_flight: int
    delayed: int


class _Receipt(NamedTuple):
    """Identifies one delivery; a later delivery of the same message makes it stale."""

    queue_name: str
    message_id: str
    delivery: int
    owner: object  # the backend's token: a receipt of another MemoryBackend is refused


class _Stored:
    """A message in a queue, with its delivery state."""

    __slots__ = (
        "attributes",
        "body",
        "delivery",
        "group_id",
        "message_id",
        "receive_count",
        "sent_at",
        "seq",
        "version",
        "visible_at",
    )

    def __init__(
        self,
        message_id: str,
        body: bytes,
        attributes: dict[str, str],
        group_id: str | None,
        seq: int,
        sent_at: float,
        visible_at: float,
    ) -> None:
        self.message_id = message_id
        self.body = body
        self.attributes = attributes
        self.group_id = group_id
        self.seq = seq  # publish order within the backend
        self.sent_at = sent_at  # retention counts from here
        self.visible_at = visible_at
        self.receive_count = 0
        self.delivery = 0  # the current delivery's token; 0 = never delivered
        self.version = 0  # bumped on every reschedule, so stale heap entries can be told apart


class _DedupWindow:
    """Deduplication ids seen recently, each remembered until its expiry time."""

    __slots__ = ("_expiries", "_seen")

    def __init__(self) -> None:
        self._seen: dict[str, tuple[str, float]] = {}
        # Expiry order equals insertion order (constant window, monotonic clock),
        # so a deque expires entries from the left in O(1) each.
        self._expiries: deque[tuple[float, str]] = deque()

    def lookup(self, dedup_id: str, now: float) -> str | None:
        """Return the message id first published with ``dedup_id``, if still in the window."""
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            del self._seen[expiries.popleft()[1]]
        entry = self._seen.get(dedup_id)
        return None if entry is None else entry[0]

    def remember(self, dedup_id: str, message_id: str, expires_at: float) -> None:
        self._seen[dedup_id] = (message_id, expires_at)
        self._expiries.append((expires_at, dedup_id))


class _Queue:
    """Messages of one queue. Subclasses decide the order in which they are handed out."""

    def __init__(self, spec: QueueSpec) -> None:
        self.spec = spec
        self.messages: dict[str, _Stored] = {}
        self.dedup = _DedupWindow()

    def expired(self, stored: _Stored, now: float) -> bool:
        return now - stored.sent_at >= self.spec.message_retention_period

    def add(self, stored: _Stored, now: float) -> None:
        self.messages[stored.message_id] = stored

    def remove(self, stored: _Stored) -> None:
        del self.messages[stored.message_id]

    def reschedule(self, stored: _Stored, now: float) -> None:
        """Take note that ``stored.visible_at`` changed (or put back a candidate of take)."""

    def take(self, now: float, limit: int) -> list[_Stored]:
        """Return up to ``limit`` receivable messages in delivery order; drop expired ones.

        The caller must deliver (:meth:`reschedule`) or :meth:`remove` each returned message.
        """
        raise NotImplementedError


class _StandardQueue(_Queue):
    """Visible messages in publish order, from two heaps with lazy deletion.

    ``_ready`` holds visible messages by publish order; ``_waiting`` holds
    invisible ones (delayed or in flight) by the time they become visible. A
    heap entry is valid only while its message exists with the same version.
    """

    def __init__(self, spec: QueueSpec) -> None:
        super().__init__(spec)
        self._ready: list[tuple[int, int, str]] = []
        self._waiting: list[tuple[float, int, int, str]] = []

    def add(self, stored: _Stored, now: float) -> None:
        self.messages[stored.message_id] = stored
        self._schedule(stored, now)

    def reschedule(self, stored: _Stored, now: float) -> None:
        # Every delivery reschedules, and acked or rescheduled messages leave stale
        # entries behind: rebuild the heaps here when stale entries dominate, so
        # memory stays proportional to the queue.
        if len(self._ready) + len(self._waiting) > 2 * len(self.messages) + 64:
            self._compact()
        stored.version += 1
        self._schedule(stored, now)

    def _schedule(self, stored: _Stored, now: float) -> None:
        if stored.visible_at <= now:
            heapq.heappush(self._ready, (stored.seq, stored.version, stored.message_id))
        else:
            entry = (stored.visible_at, stored.seq, stored.version, stored.message_id)
            heapq.heappush(self._waiting, entry)

    def _valid(self, version: int, message_id: str) -> bool:
        stored = self.messages.get(message_id)
        return stored is not None and stored.version == version

    def _compact(self) -> None:
        self._ready = [e for e in self._ready if self._valid(e[1], e[2])]
        self._waiting = [e for e in self._waiting if self._valid(e[2], e[3])]
        heapq.heapify(self._ready)
        heapq.heapify(self._waiting)

    def take(self, now: float, limit: int) -> list[_Stored]:
        messages, ready, waiting = self.messages, self._ready, self._waiting
        while waiting and waiting[0][0] <= now:
            _, seq, version, message_id = heapq.heappop(waiting)
            if self._valid(version, message_id):
                heapq.heappush(ready, (seq, version, message_id))
        taken: list[_Stored] = []
        while ready and len(taken) < limit:
            _, version, message_id = heapq.heappop(ready)
            stored = messages.get(message_id)
            if stored is None or stored.version != version:
                continue
            if self.expired(stored, now):
                del messages[message_id]
                continue
            taken.append(stored)
        return taken


class _FifoQueue(_Queue):
    """Messages by group, each group in publish order (SQS FIFO semantics).

    A group hands out its messages from the head, in order, and only while
    none of its messages is in flight. Delivered messages always form a prefix
    of their group, so in-flight messages are found near the head.
    """

    def __init__(self, spec: QueueSpec) -> None:
        super().__init__(spec)
        self._groups: dict[str | None, deque[_Stored]] = {}

    def add(self, stored: _Stored, now: float) -> None:
        super().add(stored, now)
        group = self._groups.get(stored.group_id)
        if group is None:
            group = self._groups[stored.group_id] = deque()
        group.append(stored)

    def remove(self, stored: _Stored) -> None:
        super().remove(stored)
        group = self._groups[stored.group_id]
        group.remove(stored)  # near the head: acks, expiry and dead-lettering hit the prefix
        if not group:
            del self._groups[stored.group_id]

    def take(self, now: float, limit: int) -> list[_Stored]:
        picks: list[list[_Stored]] = []
        expired: list[_Stored] = []
        for group in self._groups.values():
            picked: list[_Stored] = []
            for stored in group:
                if self.expired(stored, now):
                    expired.append(stored)
                    continue
                if stored.visible_at > now:
                    if stored.receive_count:
                        picked = []  # in flight: the whole group waits for it
                    break  # a delayed message holds back the ones after it
                if len(picked) < limit:
                    picked.append(stored)
                elif not stored.receive_count:
                    break  # past the delivered prefix: nothing further can be in flight
            if picked:
                picks.append(picked)
        for stored in expired:
            self.remove(stored)
        return list(itertools.islice(heapq.merge(*picks, key=_SEQ), limit))


class _Topic:
    def __init__(self, spec: TopicSpec) -> None:
        self.spec = spec
        self.subscriptions: dict[str, SubscriptionSpec] = {}  # by queue name
        self.dedup = _DedupWindow()


class MemoryBackend(MessagingBackend):
    """An in-process broker with every capability; the default backend.

    Thread-safe: one lock guards all state, and a waiting :meth:`receive` is
    woken by publishes, nacks and acks. Nothing is persisted; :meth:`close`
    drops every queue, topic and message.

    Args:
        clock: Where time comes from; defaults to :class:`~melange.clock.SystemClock`.
            Pass a :class:`~melange.clock.ManualClock` to control timeouts in tests.
        max_message_size: Largest message (body plus attribute names and values)
            in bytes; 256 KiB by default, like SQS.
        dedup_window: Seconds during which a repeated ``dedup_id`` on the same queue
            (or topic) is accepted but not delivered again; 5 minutes by default, like SQS.

    Raises:
        ConfigurationError: An option has the wrong type or is not positive.
    """

    name = "memory"
    calls_block = False  # in this process: a receive that does not wait and an ack return at once
    capabilities = Capabilities(
        topics=True,
        dead_letter=True,
        fifo=True,
        dedup=True,
        delay=True,
        batch=True,
        lease_extension=True,
        nack_delay=True,
        filters=True,
        max_message_size=256 * 1024,
        max_batch_size=1000,  # no broker limit; chunks only bound the time the lock is held
        max_attributes=None,
        max_wait_seconds=20.0,
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A subclass that replaces a call may wait in it (tests add latency and faults that
        # way): it counts as blocking unless it says otherwise.
        replaced = any(name in cls.__dict__ for name in ("receive", "_receive", "ack", "_ack"))
        if replaced and "calls_block" not in cls.__dict__:
            cls.calls_block = True

    def __init__(
        self,
        clock: Clock | None = None,
        max_message_size: int = 262144,
        dedup_window: float = 300.0,
    ) -> None:
        if clock is not None and not isinstance(clock, Clock):
            raise ConfigurationError(
                f"clock must be an object with a now() method returning seconds, got "
                f"{type(clock).__name__}; use melange.clock.SystemClock() or ManualClock()"
            )
        if (
            isinstance(max_message_size, bool)
            or not isinstance(max_message_size, int)
            or max_message_size <= 0
        ):
            raise ConfigurationError(
                f"max_message_size must be a positive whole number of bytes, got "
                f"{max_message_size!r}; the default is 262144 (256 KiB)"
            )
        if (
            isinstance(dedup_window, bool)
            or not isinstance(dedup_window, (int, float))
            or not dedup_window > 0
        ):
            raise ConfigurationError(
                f"dedup_window must be a positive number of seconds, got {dedup_window!r}; "
                "the default is 300.0 (5 minutes)"
            )
        super().__init__()
        self._clock: Clock = clock if clock is not None else SystemClock()
        if max_message_size != type(self).capabilities.max_message_size:
            self.capabilities = dataclasses.replace(
                type(self).capabilities, max_message_size=max_message_size
            )
        self._dedup_window = float(dedup_window)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)  # waits of long-polling receives
        self._waiting_receivers = 0
        self._queues: dict[str, _Queue] = {}
        self._topics: dict[str, _Topic] = {}
        self._seq = itertools.count(1)
        self._last_delivery = 0
        self._token = object()  # marks this backend's receipts

    def _wake(self) -> None:
        """Wake waiting receivers; call with the lock held after anything became receivable."""
        if self._waiting_receivers:  # notify_all costs more than this check on the hot path
            self._cond.notify_all()

    @property
    def clock(self) -> Clock:
        """The clock every timeout, delay and window of this backend is measured with."""
        return self._clock

    def queue_depth(self, queue_name: str) -> QueueDepth:
        """Count a queue's messages by state, without changing anything.

        Messages past their retention period are not counted.

        Args:
            queue_name: The queue to inspect.

        Returns:
            ``(visible, in_flight, delayed)`` counts.

        Raises:
            QueueNotFound: The queue does not exist.
            BackendClosed: The backend was closed.
        """
        if self.closed:
            raise BackendClosed(self.name, "count messages")
        with self._lock:
            queue = self._require_queue(queue_name)
            now = self._clock.now()
            visible = in_flight = delayed = 0
            for stored in queue.messages.values():
                if queue.expired(stored, now):
                    continue
                if stored.visible_at <= now:
                    visible += 1
                elif stored.receive_count:
                    in_flight += 1
                else:
                    delayed += 1
            return QueueDepth(visible, in_flight, delayed)

    # --------------------------------------------------------------- topology
    def _require_queue(self, name: str) -> _Queue:
        queue = self._queues.get(name)
        if queue is None:
            hint = f"create it first with MessagingBackendFactory.init_queue({name!r})"
            raise QueueNotFound(name, hint + did_you_mean(name, self._queues))
        return queue

    def _require_topic(self, name: str) -> _Topic:
        topic = self._topics.get(name)
        if topic is None:
            hint = f"create it first with MessagingBackendFactory.init_topic({name!r})"
            raise TopicNotFound(name, hint + did_you_mean(name, self._topics))
        return topic

    def _get_queue(self, name: str) -> QueueSpec | None:
        with self._lock:
            queue = self._queues.get(name)
            return None if queue is None else queue.spec

    def _declare_queue(self, spec: QueueSpec) -> None:
        with self._lock:
            queue = self._queues.get(spec.name)
            if queue is None:
                self._queues[spec.name] = _FifoQueue(spec) if spec.fifo else _StandardQueue(spec)
            elif queue.spec.fifo != spec.fifo:
                raise ImmutableSettingError(spec.name, "fifo", queue.spec.fifo, spec.fifo)
            else:
                queue.spec = spec  # mutable settings apply to later publishes and receives

    def _delete_queue(self, name: str) -> None:
        with self._lock:
            if self._queues.pop(name, None) is None:
                hint = "nothing was deleted; check the name" + did_you_mean(name, self._queues)
                raise QueueNotFound(name, hint)
            for topic in self._topics.values():
                topic.subscriptions.pop(name, None)
            self._wake()  # waiting receivers report the queue as gone

    def _get_topic(self, name: str) -> TopicSpec | None:
        with self._lock:
            topic = self._topics.get(name)
            return None if topic is None else topic.spec

    def _declare_topic(self, spec: TopicSpec) -> None:
        with self._lock:
            topic = self._topics.get(spec.name)
            if topic is None:
                self._topics[spec.name] = _Topic(spec)
            elif topic.spec.fifo != spec.fifo:
                raise ImmutableSettingError(spec.name, "fifo", topic.spec.fifo, spec.fifo)

    def _delete_topic(self, name: str) -> None:
        with self._lock:
            if self._topics.pop(name, None) is None:
                hint = "nothing was deleted; check the name" + did_you_mean(name, self._topics)
                raise TopicNotFound(name, hint)

    def _get_subscription(self, topic_name: str, queue_name: str) -> SubscriptionSpec | None:
        with self._lock:
            topic = self._topics.get(topic_name)
            return None if topic is None else topic.subscriptions.get(queue_name)

    def _subscribe(self, spec: SubscriptionSpec) -> None:
        with self._lock:
            topic = self._require_topic(spec.topic_name)
            self._require_queue(spec.queue_name)
            topic.subscriptions[spec.queue_name] = spec

    # ---------------------------------------------------------------- publish
    def _enqueue(self, queue: _Queue, message: OutgoingMessage, now: float) -> str:
        dedup_id = message.dedup_id
        if dedup_id is not None:
            original = queue.dedup.lookup(dedup_id, now)
            if original is not None:
                return original  # accepted, as SQS does, but delivered only once
        message_id = _new_id()
        delay = message.delay_seconds if message.delay_seconds > 0 else queue.spec.delay_seconds
        stored = _Stored(
            message_id,
            body if type(body := message.body) is bytes else bytes(body),  # copy a bytearray
            dict(message.attributes) if message.attributes else {},
            message.group_id,
            next(self._seq),
            now,
            now + delay,
        )
        queue.add(stored, now)
        if dedup_id is not None:
            queue.dedup.remember(dedup_id, message_id, now + self._dedup_window)
        return message_id

    def _publish_batch(self, queue_name: str, batch: list[OutgoingMessage]) -> list[PublishResult]:
        with self._lock:
            queue = self._require_queue(queue_name)
            now = self._clock.now()
            results = [
                PublishResult(index, self._enqueue(queue, message, now))
                for index, message in enumerate(batch)
            ]
            self._wake()
            return results

    def _publish_topic_batch(
        self, topic_name: str, batch: list[OutgoingMessage]
    ) -> list[PublishResult]:
        with self._lock:
            topic = self._require_topic(topic_name)
            now = self._clock.now()
            results: list[PublishResult] = []
            for index, message in enumerate(batch):
                # Like an SNS FIFO topic, the topic itself deduplicates before fan-out.
                original = (
                    None if message.dedup_id is None else topic.dedup.lookup(message.dedup_id, now)
                )
                if original is not None:
                    results.append(PublishResult(index, original))
                    continue
                topic_message_id = _new_id()
                for subscription in topic.subscriptions.values():
                    if subscription.matches(message.attributes):
                        self._enqueue(self._queues[subscription.queue_name], message, now)
                if message.dedup_id is not None:
                    expires_at = now + self._dedup_window
                    topic.dedup.remember(message.dedup_id, topic_message_id, expires_at)
                results.append(PublishResult(index, topic_message_id))
            self._wake()
            return results

    # ---------------------------------------------------------------- receive
    def _receive(
        self, queue_name: str, max_messages: int, wait_seconds: float
    ) -> list[ReceivedMessage]:
        deadline = time.monotonic() + wait_seconds  # the wait is real time, whatever the clock
        with self._lock:
            while True:
                if self.closed:
                    raise BackendClosed(self.name, "receive")
                received = self._deliver(queue_name, self._require_queue(queue_name), max_messages)
                if received:
                    return received
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._waiting_receivers += 1
                try:
                    self._cond.wait(min(remaining, _POLL_INTERVAL))
                finally:
                    self._waiting_receivers -= 1

    def _deliver(self, queue_name: str, queue: _Queue, limit: int) -> list[ReceivedMessage]:
        now = self._clock.now()
        spec = queue.spec
        visible_at = now + spec.visibility_timeout
        max_receives = spec.dead_letter.max_receive_count if spec.dead_letter else None
        first_delivery = self._last_delivery + 1
        received: list[ReceivedMessage] = []
        while len(received) < limit:
            moved = False
            for stored in queue.take(now, limit - len(received)):
                if stored.delivery >= first_delivery:
                    # Delivered earlier in this call and visible again (visibility_timeout=0):
                    # put it back rather than hand it out twice in one batch.
                    queue.reschedule(stored, now)
                    continue
                if (
                    max_receives is not None
                    and stored.receive_count >= max_receives
                    and self._dead_letter(queue, stored, now)
                ):
                    moved = True
                    continue
                self._last_delivery = delivery = self._last_delivery + 1
                stored.delivery = delivery
                stored.receive_count += 1
                stored.visible_at = visible_at
                queue.reschedule(stored, now)
                message_id = stored.message_id
                received.append(
                    ReceivedMessage(
                        queue_name,
                        stored.body,
                        dict(stored.attributes),
                        message_id,
                        stored.receive_count,
                        stored.group_id,
                        _Receipt(queue_name, message_id, delivery, self._token),
                    )
                )
            if not moved:
                break  # take() returned everything receivable; ask again only after moves
            self._wake()  # the dead-letter queue has new messages
        return received

    def _dead_letter(self, queue: _Queue, stored: _Stored, now: float) -> bool:
        """Move ``stored``, received too often, to the queue's dead-letter queue.

        Returns whether it moved. When the dead-letter queue no longer exists the
        message stays and is delivered again: a message is never dropped here.
        """
        policy = queue.spec.dead_letter
        if policy is None:
            return False
        target = self._queues.get(policy.queue_name)
        if target is None or target is queue:
            return False
        queue.remove(stored)
        # Retention restarts in the dead-letter queue so a message is not dropped
        # the moment it arrives there (SQS keeps the original time on standard queues).
        moved = _Stored(
            stored.message_id,
            stored.body,
            stored.attributes,
            stored.group_id,
            next(self._seq),
            now,
            now,
        )
        target.add(moved, now)
        return True

    # ------------------------------------------------------------------ settle
    def _current(self, message: ReceivedMessage) -> tuple[_Queue, _Stored] | None:
        """Return the queue and message ``message`` was received as, if that delivery is current."""
        receipt = message.receipt
        if not isinstance(receipt, _Receipt):
            raise InvalidMessage(
                f"message {message.message_id!r} carries no receipt of a memory backend; "
                "ack, nack or extend messages with the backend that received them"
            )
        if receipt.owner is not self._token:
            # Delivery numbers and message ids mean nothing on another backend: acting on
            # them would settle nothing (or a message of the same id) and hide the mistake.
            raise InvalidMessage(
                f"message {message.message_id!r} was received by another memory backend; "
                "ack, nack or extend messages with the backend that received them"
            )
        queue = self._queues.get(receipt.queue_name)
        if queue is None:
            return None
        stored = queue.messages.get(receipt.message_id)
        if stored is None or stored.delivery != receipt.delivery:
            return None
        return queue, stored

    def _ack(self, messages: list[ReceivedMessage]) -> None:
        with self._lock:
            found = [self._current(message) for message in messages]  # may raise: change nothing
            for current in found:
                if current is not None:  # a stale receipt (redelivered since) is a no-op
                    queue, stored = current
                    queue.remove(stored)
            self._wake()  # an ack can unblock a FIFO group

    def _nack(self, messages: list[ReceivedMessage], delay_seconds: float) -> None:
        with self._lock:
            found = [self._current(message) for message in messages]
            now = self._clock.now()
            for current in found:
                if current is not None:
                    queue, stored = current
                    stored.visible_at = now + delay_seconds
                    queue.reschedule(stored, now)
            self._wake()

    def _extend_lease(self, messages: list[ReceivedMessage], seconds: float) -> None:
        with self._lock:
            found = [self._current(message) for message in messages]
            now = self._clock.now()
            lost: LeaseLost | None = None
            for message, current in zip(messages, found, strict=True):
                if current is None:
                    # Keep extending the others; report the first lost one afterwards.
                    if lost is None:
                        lost = LeaseLost(message.message_id, message.queue_name)
                    continue
                queue, stored = current
                stored.visible_at = now + seconds
                queue.reschedule(stored, now)
            self._wake()  # seconds=0 releases the message
            if lost is not None:
                raise lost

    def _close(self) -> None:
        with self._lock:
            self._queues.clear()
            self._topics.clear()
            self._wake()  # waiting receivers raise BackendClosed
