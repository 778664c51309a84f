"""What both dispatchers do to a message once it is received: the one place of that logic.

:class:`Settlement` holds a dispatcher's view of its queue (dead-letter queue,
maximum receive count, visibility timeout and retention, looked up once at
start), its hooks, counters, retry policy and deduplication cache, and settles
messages the same way for :class:`melange.dispatcher.MessageDispatcher` (from
its worker threads) and :class:`melange.aio.AsyncMessageDispatcher` (from its
thread pool): retries, the ``on_undecodable`` / ``on_unhandled`` outcomes,
dead-lettering, the deduplication steps around a synchronous handler and
acknowledgement batches. Every method may block on the backend or the cache;
none keeps a dispatcher's scheduling state, which each runtime owns.

Logging goes to the ``melange.dispatcher`` logger with ``extra`` fields
``queue``, ``message_id`` and ``consumer``; message bodies are never logged.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

from melange._outage import RECONNECT_BACKOFF, Outage
from melange.backends.base import MessagingBackend, ReceivedMessage
from melange.consumers import Consumer
from melange.exceptions import ConfigurationError, QueueNotFound
from melange.lease import Lease, LeaseKeeper, LeasePolicy
from melange.message import (
    DEAD_LETTER_REASON_ATTRIBUTE,
    DEAD_LETTER_SOURCE_ATTRIBUTE,
    PRODUCER_ID_ATTRIBUTE,
    Message,
)
from melange.observability import NO_CONTEXT, Hooks, safe
from melange.retry import RetryPolicy
from melange.topology import QueueSpec

if TYPE_CHECKING:
    from melange.dedup import ClaimResult, DedupCache

__all__ = [
    "ACK_BATCH",
    "FILL_WAIT",
    "AckBuffer",
    "CallResult",
    "Delivery",
    "DispatchStats",
    "Outcome",
    "ReceiveBatch",
    "Settlement",
]

logger = logging.getLogger("melange.dispatcher")

Outcome = Literal["dead_letter", "ack", "leave"]
"""What happens to a message that cannot be decoded or that no consumer accepts."""

OUTCOMES: tuple[Outcome, ...] = ("dead_letter", "ack", "leave")

CallResult = Literal["ok", "skipped", "busy"]
"""How one consumer call ended, when it did not raise."""

ACK_BATCH = 100
"""Most acknowledgements sent in one call, on backends whose native batch is larger."""

ACK_MAX_WAIT = 1.0
"""Longest a finished message's ack waits for the rest of its batch (a slow neighbour)."""

FILL_WAIT = 0.05
"""Longest a receiver waits for a full batch of free workers while handlers are running.

Asking for fewer costs a whole extra round trip to the broker, which is longer than this.
"""


@dataclass
class DispatchStats:
    """Counters of what a dispatcher did; thread-safe. Read a consistent copy with :meth:`snapshot`.

    Attributes:
        received: Messages returned by the backend.
        handled: Messages every accepting consumer succeeded with (or had already
            handled, according to the deduplication cache).
        failed: Consumer calls that raised.
        retried: Messages released for another delivery because a consumer failed.
        acked: Messages acknowledged.
        undecodable: Messages that could not be decoded.
        unhandled: Messages no consumer accepted.
        dead_lettered: Messages the dispatcher itself published to the dead-letter queue.
        left: Messages left to the broker's visibility timeout by the ``"leave"`` outcome
            (or because there was no dead-letter queue to move them to).
        duplicates: Consumer calls skipped because the deduplication cache said "done".
        busy: Messages released because another worker held a deduplication claim.
        released: Messages received but not started, released at shutdown or
            behind a failed message of their FIFO group.
        lease_extended: Lease extensions (one per message per extension).
        lease_lost: Leases the broker refused to extend.
        receive_errors: Receive calls that failed (and were retried).
        max_in_flight: The most messages held (received, not finished) at once.
    """

    received: int = 0
    handled: int = 0
    failed: int = 0
    retried: int = 0
    acked: int = 0
    undecodable: int = 0
    unhandled: int = 0
    dead_lettered: int = 0
    left: int = 0
    duplicates: int = 0
    busy: int = 0
    released: int = 0
    lease_extended: int = 0
    lease_lost: int = 0
    receive_errors: int = 0
    max_in_flight: int = 0
    _lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    def add(self, counter: str, count: int = 1) -> None:
        """Add ``count`` to the counter named ``counter``."""
        with self._lock:
            self.__dict__[counter] += count  # runs for every message: no getattr/setattr

    def peak(self, counter: str, value: int) -> None:
        """Raise the counter named ``counter`` to ``value`` if it is lower (a high-water mark)."""
        with self._lock:
            if value > getattr(self, counter):
                setattr(self, counter, value)

    def snapshot(self) -> DispatchStats:
        """Return a copy of the counters taken at one instant."""
        with self._lock:
            return DispatchStats(**self._values())

    def as_dict(self) -> dict[str, int]:
        """Return the counters as a dict, taken at one instant."""
        with self._lock:
            return self._values()

    def _values(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}


class ReceiveBatch:
    """The messages of one receive call: how many are unsettled, and the acks waiting for them."""

    __slots__ = ("acks", "since", "unsettled")

    def __init__(self, size: int) -> None:
        self.unsettled = size
        self.acks: list[Delivery] = []
        self.since = 0.0  # when the first waiting ack was added


class Delivery(Lease):
    """One received message while a dispatcher holds it, and its lease (one object per message).

    Args:
        received: The message.
        received_at: Monotonic time just before the receive call that returned it.
        expires_at: Monotonic time its lease ends (the visibility timeout after ``received_at``).
        batch: The messages of the same receive call, whose acks go out together.
    """

    __slots__ = ("batch", "cancelled", "handled", "settled", "started")

    def __init__(
        self,
        received: ReceivedMessage,
        received_at: float,
        expires_at: float,
        batch: ReceiveBatch | None = None,
    ) -> None:
        # The Lease fields set here rather than by Lease.__init__: this runs for every message.
        self.received = received
        self.received_at = received_at
        self.expires_at = expires_at
        self.lost = self.capped = False
        self.batch = batch
        self.started = False
        self.cancelled = False  # released before it started (shutdown, failed group predecessor)
        self.settled = False  # acked, retried, left or released: its batch no longer waits for it
        self.handled = False  # every consumer handled it (counted when its capacity is freed)


class AckBuffer:
    """Groups acknowledgements by received batch, in calls of at most the backend's batch size.

    The acks of one receive call go out together, in one call, once every message
    of it is settled (acked, retried, left or released), or as soon as ``limit``
    of them are waiting: nothing waits for messages that are not coming, and a
    received batch is not split into small calls as its handlers finish one by
    one. An ack never waits longer than ``max_wait`` seconds (see
    :meth:`take_overdue`), so one slow handler does not hold back its finished
    neighbours' acks until their visibility timeout.

    Not thread-safe: the dispatcher calls it under its own lock (or on its loop).

    Args:
        limit: Most acks per call.
        max_wait: Longest an ack waits for the rest of its received batch.
    """

    def __init__(self, limit: int, max_wait: float = ACK_MAX_WAIT) -> None:
        self.limit = limit
        self.max_wait = max_wait
        self._waiting: dict[ReceiveBatch, None] = {}  # batches with acks waiting, oldest first

    def __len__(self) -> int:
        return sum(len(batch.acks) for batch in self._waiting)

    def settle(self, delivery: Delivery, ack: bool, now: float) -> list[list[Delivery]]:
        """Record that ``delivery`` is settled (acked when ``ack``); return the calls to send now.

        Settling a delivery twice does nothing the second time.
        """
        return self.settle_all(((delivery, ack),), now)

    def settle_all(
        self, settled: Iterable[tuple[Delivery, bool]], now: float
    ) -> list[list[Delivery]]:
        """:meth:`settle` for several deliveries, each with whether to ack it."""
        ready: list[list[Delivery]] = []
        for delivery, ack in settled:
            if delivery.settled:
                continue
            delivery.settled = True
            batch = delivery.batch if delivery.batch is not None else ReceiveBatch(1)
            acks = batch.acks
            if ack:
                if not acks:
                    batch.since = now
                    self._waiting[batch] = None
                acks.append(delivery)
                if len(acks) >= self.limit:
                    ready.append(self._take(batch))
                    acks = batch.acks
            batch.unsettled -= 1
            if batch.unsettled <= 0 and acks:
                ready.append(self._take(batch))
        return ready

    def overdue(self, now: float) -> float | None:
        """Seconds until the oldest waiting ack must go (<= 0: now); ``None`` when none waits."""
        if not self._waiting:
            return None
        return next(iter(self._waiting)).since + self.max_wait - now

    def take_overdue(self, now: float) -> list[list[Delivery]]:
        """Remove and return the acks that waited ``max_wait`` seconds, one call per batch."""
        return [self._take(b) for b in list(self._waiting) if b.since + self.max_wait <= now]

    def take_all(self) -> list[list[Delivery]]:
        """Remove and return every waiting ack, one call per received batch."""
        return [self._take(batch) for batch in list(self._waiting)]

    def _take(self, batch: ReceiveBatch) -> list[Delivery]:
        taken, batch.acks = batch.acks, []
        self._waiting.pop(batch, None)
        return taken


def log_extra(received: ReceivedMessage, consumer: str | None = None) -> dict[str, Any]:
    """The ``extra`` fields of a log record about one message (and consumer)."""
    return {"queue": received.queue_name, "message_id": received.message_id, "consumer": consumer}


class Settlement:
    """Settles the messages of one queue for a dispatcher; see the module docstring.

    Args:
        backend: The dispatcher's backend.
        queue_name: The queue consumed.
        hooks: The dispatcher's hooks; a failing one is logged and never changes a
            message's fate (see :func:`melange.observability.safe`).
        stats: The dispatcher's counters.
        retry: Delays before failed messages come back.
        dedup: The deduplication cache, if any.
        dedup_ttl: Seconds a "done" mark is kept; ``None``: the queue's retention period.
        dedup_claim_ttl: Seconds a claim lives; ``None``: the queue's visibility timeout.
        reconnect_backoff: Waits between receives while they fail; ``None``:
            :data:`melange._outage.RECONNECT_BACKOFF`.
    """

    def __init__(
        self,
        backend: MessagingBackend,
        queue_name: str,
        *,
        hooks: Hooks,
        stats: DispatchStats,
        retry: RetryPolicy,
        dedup: DedupCache | None,
        dedup_ttl: float | None,
        dedup_claim_ttl: float | None,
        reconnect_backoff: RetryPolicy | None = None,
    ) -> None:
        self.backend = backend
        self.queue_name = queue_name
        self.hooks = safe(hooks)
        # enter_handling() guards the handling hook itself: called unwrapped, one call less.
        self._handling_hooks = hooks
        self.stats = stats
        self.retry_policy = retry
        self.dedup = dedup
        self.dedup_ttl = dedup_ttl
        self.dedup_claim_ttl = dedup_claim_ttl
        # The claims held now, by key, with their message: renewed with its lease.
        self._claims: dict[str, ReceivedMessage] = {}
        self.accepting_all: frozenset[Consumer] = frozenset()  # whose accepts() is always true
        self.can_nack = backend.capabilities.nack_delay
        self._max_delay = backend.capabilities.max_visibility_timeout
        # Set by load() from the dispatcher's one get_queue() call.
        self.visibility_timeout = 30.0
        self.retention = 4 * 24 * 3600.0
        self.dead_letter_queue: str | None = None
        self.max_receives: int | None = None
        self.fifo = False
        self._refused_copies = _RecentIds()  # dead-letter copies refused, to log each once
        self.queue_extra: dict[str, Any] = {
            "queue": queue_name,
            "message_id": None,
            "consumer": None,
        }
        self.receive_outage = Outage(
            f"receiving from queue {queue_name}",
            RECONNECT_BACKOFF if reconnect_backoff is None else reconnect_backoff,
            self.queue_extra,
        )

    # ----------------------------------------------------------------- setup
    def load(self, spec: QueueSpec | None) -> None:
        """Take the queue's settings from ``backend.get_queue(queue_name)``.

        Raises:
            QueueNotFound: ``spec`` is ``None``: the queue does not exist.
        """
        if spec is None:
            raise QueueNotFound(self.queue_name)
        self.visibility_timeout = spec.visibility_timeout
        self.retention = spec.message_retention_period
        self.fifo = spec.fifo
        if spec.dead_letter is not None:
            self.dead_letter_queue = spec.dead_letter.queue_name
            self.max_receives = spec.dead_letter.max_receive_count

    def lease_keeper(
        self, policy: LeasePolicy, held: Callable[[], Iterable[Lease]]
    ) -> LeaseKeeper | None:
        """Start a heartbeat for the dispatcher's leases, where the backend can extend them.

        Args:
            policy: When to extend, and the cap.
            held: Returns the messages the dispatcher holds now (see :class:`LeaseKeeper`).
        """
        if not (self.backend.capabilities.lease_extension and self.visibility_timeout > 0):
            return None
        keeper = LeaseKeeper(
            self.backend,
            self.queue_name,
            self.visibility_timeout,
            policy,
            self.hooks,
            on_extended=self._leases_extended,
            on_lost=lambda _lease: self.stats.add("lease_lost"),
            held=held,
        )
        keeper.start()
        return keeper

    def _leases_extended(self, leases: Sequence[Lease]) -> None:
        """The heartbeat extended these leases: renew their handlers' claims likewise."""
        self.stats.add("lease_extended", len(leases))
        if self.dedup is None or not self._claims:
            return
        extended = {id(lease.received) for lease in leases}
        ttl = self._claim_ttl()
        for key, received in list(self._claims.items()):  # a copy: handlers change it
            if id(received) not in extended:
                continue
            try:
                self.dedup.renew(key, ttl)
            except Exception as exc:
                logger.warning(
                    "could not renew the deduplication claim %s (%s); a copy of the message "
                    "may be handled meanwhile once the claim expires",
                    key,
                    type(exc).__name__,
                    extra=log_extra(received),
                )

    def _claim_ttl(self) -> float:
        return self.dedup_claim_ttl or max(self.visibility_timeout, 1.0)

    def deliveries(self, received: list[ReceivedMessage], received_at: float) -> list[Delivery]:
        """Wrap the messages of one receive call, counting them and telling the hooks."""
        expires_at = received_at + self.visibility_timeout
        batch = ReceiveBatch(len(received))
        deliveries = [Delivery(m, received_at, expires_at, batch) for m in received]
        if received:  # before any handler can start, so hooks see the steps in order
            self.stats.add("received", len(received))
            self.hooks.on_receive(self.queue_name, received)
        return deliveries

    def ack_buffer(self) -> AckBuffer:
        """A buffer sending acks in the backend's native batch size (at most :data:`ACK_BATCH`)."""
        limit = max(1, min(self.backend.capabilities.max_batch_size, ACK_BATCH))
        max_wait = ACK_MAX_WAIT
        if self.visibility_timeout > 0:  # well before a finished message could come back
            max_wait = max(0.01, min(max_wait, self.visibility_timeout / 4))
        return AckBuffer(limit, max_wait)

    def receive_failed(self, failures: int, error: Exception) -> float:
        """Count a failed receive, logged once per outage; return the seconds to wait.

        Args:
            failures: Receives of the calling receiver that failed in a row, this one included.
            error: Why it failed.
        """
        self.stats.add("receive_errors")
        note = ""
        if isinstance(error, QueueNotFound):  # e.g. the broker restarted and lost its state
            note = "; receiving resumes once the queue exists again"
        return self.receive_outage.failed(failures, error, note)

    def receive_succeeded(self) -> None:
        """Record a successful receive: ends an outage with one INFO (cheap otherwise)."""
        self.receive_outage.recovered()

    def close_backend(self) -> None:
        """Close the backend, logging (not raising) a failure."""
        try:
            self.backend.close()
        except Exception:
            logger.exception("closing the backend failed", extra=self.queue_extra)

    # ------------------------------------------------------------- decoding
    def select(
        self, consumers: Sequence[Consumer], message: Message
    ) -> tuple[list[Consumer], list[tuple[Consumer, BaseException]]]:
        """Return the consumers accepting ``message``, and those whose ``accepts`` raised."""
        accepting: list[Consumer] = []
        failures: list[tuple[Consumer, BaseException]] = []
        for candidate in consumers:
            if candidate in self.accepting_all:
                accepting.append(candidate)
                continue
            try:
                if candidate.accepts(message):
                    accepting.append(candidate)
            except Exception as exc:
                failures.append((candidate, exc))
        return accepting, failures

    def undecodable(self, received: ReceivedMessage, policy: Outcome, error: Exception) -> bool:
        """Apply ``policy`` to a message that could not be decoded; return whether to ack it."""
        self.stats.add("undecodable")
        outcome = self.apply_outcome(received, policy, "undecodable", error)
        self.hooks.on_undecodable(self.queue_name, received, error, outcome)
        return outcome in ("ack", "dead_letter")

    def unhandled(self, received: ReceivedMessage, policy: Outcome, message: Message) -> bool:
        """Apply ``policy`` to a message no consumer accepts; return whether to ack it."""
        self.stats.add("unhandled")
        outcome = self.apply_outcome(received, policy, "unhandled", None)
        self.hooks.on_unhandled(self.queue_name, message, outcome)
        return outcome in ("ack", "dead_letter")

    # -------------------------------------------------------------- handling
    def claim(
        self, candidate: Consumer, received: ReceivedMessage
    ) -> CallResult | BaseException | None:
        """Claim the message for ``candidate`` in the deduplication cache (which must be set).

        Returns:
            ``None`` when claimed: call the consumer. Otherwise how the call
            ends without it: ``"skipped"`` (handled already), ``"busy"``
            (another worker holds the claim) or the cache's error.
        """
        assert self.dedup is not None
        key = _dedup_key(candidate, received)
        try:
            claim: ClaimResult = self.dedup.claim(key, self._claim_ttl())
        except Exception as exc:
            return ClaimFailed(exc)  # retried as a failure, reported as the cache's
        if claim == "claimed":
            self._claims[key] = received
            return None
        if claim == "done":
            self.stats.add("duplicates")
            logger.debug(
                "skipped message %s: consumer %s handled it already",
                received.message_id,
                candidate.name,
                extra=log_extra(received, candidate.name),
            )
            return "skipped"
        return claim

    def handled(
        self, candidate: Consumer, message: Message, received: ReceivedMessage, seconds: float
    ) -> None:
        """Record that ``candidate`` succeeded: mark it done in the cache, tell the hooks."""
        if self.dedup is not None:
            key = _dedup_key(candidate, received)
            self._claims.pop(key, None)
            try:
                self.dedup.complete(key, self.dedup_ttl or self.retention)
            except Exception as exc:
                logger.error(
                    "could not mark %s done in the deduplication cache (%s); the message may "
                    "be handled again if it is delivered again",
                    key,
                    type(exc).__name__,
                    extra=log_extra(received, candidate.name),
                )
        self.hooks.on_handled(self.queue_name, message, candidate.name, seconds)
        if logger.isEnabledFor(logging.DEBUG):  # runs for every message: skip building extra
            logger.debug(
                "consumer %s handled message %s in %.3fs",
                candidate.name,
                received.message_id,
                seconds,
                extra=log_extra(received, candidate.name),
            )

    def unclaim(self, candidate: Consumer, received: ReceivedMessage) -> None:
        """Drop ``candidate``'s claim after it failed, so a redelivery can handle the message."""
        if self.dedup is None:
            return
        key = _dedup_key(candidate, received)
        self._claims.pop(key, None)
        try:
            self.dedup.release(key)
        except Exception as exc:
            logger.warning(
                "could not release the deduplication claim %s (%s)",
                key,
                type(exc).__name__,
                extra=log_extra(received, candidate.name),
            )

    def call_sync(
        self, candidate: Consumer, message: Message, received: ReceivedMessage, async_hint: str
    ) -> CallResult | BaseException:
        """Run a synchronous consumer under the deduplication cache; return how it ended.

        Args:
            candidate: The consumer.
            message: The decoded message.
            received: The message as the backend returned it.
            async_hint: Completes the error when ``process`` returns an awaitable.
        """
        if self.dedup is not None and (ended := self.claim(candidate, received)) is not None:
            return ended
        started = time.monotonic()
        context = self.enter_handling(message, candidate, received)
        try:
            result: object = candidate.process(message)
            if result is not None and inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()  # never awaited: close it to avoid a RuntimeWarning
                raise ConfigurationError(
                    f"consumer {candidate.name!r} returned an awaitable{async_hint}"
                )
        except BaseException as exc:  # SystemExit in a handler thread is a failure too
            exit_handling(context, exc, received, candidate.name)
            self.unclaim(candidate, received)
            return exc
        if context is not None:
            exit_handling(context, None, received, candidate.name)
        self.handled(candidate, message, received, time.monotonic() - started)
        return "ok"

    def enter_handling(
        self, message: Message, candidate: Consumer, received: ReceivedMessage
    ) -> contextlib.AbstractContextManager[None] | None:
        """Enter ``hooks.handling``; ``None`` when there is nothing to leave (no-op or failed)."""
        try:
            context = self._handling_hooks.handling(self.queue_name, message, candidate.name)
            if context is NO_CONTEXT:  # the usual case: nothing to enter or leave
                return None
            context.__enter__()
        except Exception:
            logger.exception(
                "hooks.handling failed; handling without it",
                extra=log_extra(received, candidate.name),
            )
            return None
        return context

    # ------------------------------------------------------------- settling
    def retry_delay(self, received: ReceivedMessage) -> float:
        """Seconds before a failed message comes back, capped by the backend's limit."""
        return min(self.retry_policy.delay(received.receive_count), self._max_delay)

    def retry(
        self,
        received: ReceivedMessage,
        message: Message,
        failures: list[tuple[Consumer, BaseException]],
    ) -> None:
        """Log and count the failures, then release the message after the retry delay."""
        delay = self.retry_delay(received) if self.can_nack else None
        last = self.max_receives is not None and received.receive_count >= self.max_receives
        for failed, error in failures:
            if isinstance(error, ClaimFailed):  # the consumer did not run: nothing of its own
                logger.error(
                    "the deduplication cache could not claim message %s for consumer %s "
                    "(%s: %s); %s",
                    received.message_id,
                    failed.name,
                    type(error.error).__name__,
                    error.error,
                    "retrying" if delay is None else f"retrying in {delay:.1f}s",
                    extra=log_extra(received, failed.name),
                )
                continue
            self.stats.add("failed")
            if last:
                what = (
                    f"that was delivery {received.receive_count} of {self.max_receives}: the "
                    f"broker moves it to {self.dead_letter_queue!r}"
                )
            elif delay is not None:
                what = f"retrying in {delay:.1f}s"
            else:
                what = "retrying after the visibility timeout"
            logger.warning(
                "consumer %s failed on message %s (delivery %d): %s: %s; %s",
                failed.name,
                received.message_id,
                received.receive_count,
                type(error).__name__,
                error,
                what,
                exc_info=error,
                extra=log_extra(received, failed.name),
            )
            self.hooks.on_handler_error(self.queue_name, message, failed.name, error, delay)
        self.stats.add("retried")
        if delay is not None:
            self.nack(received, delay)

    def busy(self, received: ReceivedMessage) -> None:
        """Leave a message another worker holds a deduplication claim on for redelivery."""
        self.stats.add("busy")
        logger.info(
            "message %s is being handled by another worker; leaving it for redelivery",
            received.message_id,
            extra=log_extra(received),
        )
        if self.can_nack:
            self.nack(received, self.retry_delay(received))

    def nack(self, received: ReceivedMessage, delay: float) -> None:
        """Release one message for redelivery after ``delay``, logging a failure."""
        try:
            self.backend.nack([received], delay)
        except Exception as exc:
            logger.warning(
                "could not release message %s (%s); it comes back after the visibility timeout",
                received.message_id,
                type(exc).__name__,
                extra=log_extra(received),
            )

    def release(self, deliveries: Sequence[Delivery], counter: str) -> None:
        """Count messages that were not handled and make them receivable again (nack, no delay)."""
        self.stats.add(counter, len(deliveries))
        if not self.can_nack:
            return  # they come back after the visibility timeout
        try:
            self.backend.nack([d.received for d in deliveries], 0.0)
        except Exception as exc:
            logger.warning(
                "could not release %d message(s) (%s); they come back after the visibility timeout",
                len(deliveries),
                type(exc).__name__,
                extra=self.queue_extra,
            )

    def apply_outcome(
        self, received: ReceivedMessage, outcome: Outcome, reason: str, error: Exception | None
    ) -> Outcome:
        """Apply the undecodable/unhandled policy; return the outcome actually applied.

        The caller acknowledges the message when the result is ``"ack"`` or ``"dead_letter"``.
        """
        extra = log_extra(received)
        detail = f": {error}" if error is not None else ""
        if outcome == "dead_letter":
            if self.dead_letter_queue is None:
                logger.error(
                    "message %s is %s%s, and queue %s has no dead-letter queue to move it to; "
                    "leaving it (declare one with init_queue(..., dead_letter_queue_name=...))",
                    received.message_id,
                    reason,
                    detail,
                    self.queue_name,
                    extra=extra,
                )
                outcome = "leave"
            elif self.dead_letter(received, reason):
                return "dead_letter"
            else:
                outcome = "leave"
        if outcome == "ack":
            logger.warning(
                "message %s is %s%s; acknowledging it (on_%s='ack'): it is dropped",
                received.message_id,
                reason,
                detail,
                reason,
                extra=extra,
            )
            return "ack"
        self.stats.add("left")
        logger.warning(
            "message %s is %s%s; leaving it for redelivery",
            received.message_id,
            reason,
            detail,
            extra=extra,
        )
        return "leave"

    def dead_letter(self, received: ReceivedMessage, reason: str) -> bool:
        """Copy the message as received to the dead-letter queue; return whether that worked.

        The copy is made with :meth:`MessagingBackend.forward`: the original body
        bytes and attributes, with the reason added only where the broker has
        room. When the copy is refused or its outcome is unknown, the message is
        left for redelivery, and so for the broker's own redrive after the
        queue's maximum receive count; that is logged once per message.
        """
        target = self.dead_letter_queue
        assert target is not None
        extras = {
            DEAD_LETTER_REASON_ATTRIBUTE: reason,
            DEAD_LETTER_SOURCE_ATTRIBUTE: self.queue_name,
        }
        try:
            error: BaseException | None = self.backend.forward(
                received, target, extra_attributes=extras
            ).error
        except Exception as exc:
            error = exc
        if error is not None:
            first = self._refused_copies.add(received.message_id)
            logger.log(
                logging.ERROR if first else logging.DEBUG,
                "could not copy message %s (%s) to dead-letter queue %s (%s: %s); leaving it to "
                "the broker, which moves it there after %s receives",
                received.message_id,
                reason,
                target,
                type(error).__name__,
                error,
                self.max_receives if self.max_receives is not None else "the maximum",
                extra=log_extra(received),
            )
            return False
        self.stats.add("dead_lettered")
        logger.warning(
            "moved message %s (%s) to dead-letter queue %s",
            received.message_id,
            reason,
            target,
            extra=log_extra(received),
        )
        self.hooks.on_dead_lettered(self.queue_name, received, reason)
        return True

    def send_acks(self, batch: Sequence[Delivery]) -> None:
        """Acknowledge a batch (at most :data:`ACK_BATCH`), logging what the broker refused."""
        # A lost lease means a stale receipt: ack those one by one so they cannot
        # fail the others (the broker ignores or refuses a stale receipt).
        current = [d.received for d in batch if not d.lost]
        stale = [d.received for d in batch if d.lost]
        acked: list[ReceivedMessage] = []
        for group in ([current] if current else []) + [[m] for m in stale]:
            try:
                self.backend.ack(group)
            except Exception as exc:
                logger.error(
                    "could not acknowledge %d message(s) (%s: %s); they will be delivered again",
                    len(group),
                    type(exc).__name__,
                    exc,
                    extra=self.queue_extra,
                )
            else:
                acked.extend(group)
        if acked:
            self.stats.add("acked", len(acked))
            self.hooks.on_acked(self.queue_name, acked)


def exit_handling(
    context: contextlib.AbstractContextManager[None] | None,
    error: BaseException | None,
    received: ReceivedMessage,
    consumer: str,
) -> None:
    """Leave a ``hooks.handling`` context entered by :meth:`Settlement.enter_handling`."""
    if context is None:
        return
    try:
        if error is None:
            context.__exit__(None, None, None)
        else:
            context.__exit__(type(error), error, error.__traceback__)
    except BaseException as exc:
        if exc is not error:
            logger.warning(
                "hooks.handling failed on exit (%s); ignored",
                type(exc).__name__,
                extra=log_extra(received, consumer),
            )


class _RecentIds:
    """The most recent ids seen (bounded), thread-safe: "have we logged this one already?"."""

    def __init__(self, limit: int = 10_000) -> None:
        self._ids: dict[str, None] = {}
        self._limit = limit
        self._lock = threading.Lock()

    def add(self, message_id: str) -> bool:
        """Remember ``message_id``; return whether it is new."""
        with self._lock:
            if message_id in self._ids:
                return False
            if len(self._ids) >= self._limit:
                del self._ids[next(iter(self._ids))]  # the oldest
            self._ids[message_id] = None
            return True


def _dedup_key(candidate: Consumer, received: ReceivedMessage) -> str:
    # The producer id survives publisher retries that made the broker store two
    # copies under two broker ids; a foreign message has only the broker's id.
    producer_id = received.attributes.get(PRODUCER_ID_ATTRIBUTE)
    return f"{candidate.name}:{producer_id or received.message_id}"


class ClaimFailed(Exception):
    """The deduplication cache failed to claim a message for a consumer, which did not run.

    Attributes:
        error: The cache's error.
    """

    def __init__(self, error: Exception) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.error = error
