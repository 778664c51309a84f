"""The consumer runtime: receive, decode, handle, acknowledge, on every backend alike.

A :class:`MessageDispatcher` runs the loop an application uses every day::

    dispatcher = MessageDispatcher(backend, "payment-updates", [record_payment, Payments()])
    dispatcher.run()            # until SIGTERM/SIGINT or dispatcher.stop()

* ``concurrent_receives`` receiver threads receive in batches, never more
  messages than there are free workers (no prefetch): at most ``workers``
  messages are received and not yet finished at any time.
* Each message is decoded with the :class:`~melange.serializers.SerializerRegistry`
  and handed to every consumer that accepts it, on a pool of ``workers``
  threads. Messages of one FIFO group are handled one after another, in the
  order they were received; other messages and groups in parallel.
* A message is acknowledged (in batches) only after every accepting consumer
  succeeded. A consumer that raises makes the message come back after a
  :class:`~melange.retry.RetryPolicy` delay (a nack with delay where the backend
  can, else the visibility timeout) until the queue's maximum receive count
  sends it to the dead-letter queue.
* A message that cannot be decoded, or that no consumer accepts, follows the
  ``on_undecodable`` / ``on_unhandled`` outcome: ``"dead_letter"`` (publish it
  unchanged to the queue's dead-letter queue, then ack it), ``"ack"`` (drop it
  with a warning) or ``"leave"`` (let the broker redeliver and eventually
  dead-letter it).
* A heartbeat extends the lease of messages whose handlers run long
  (:class:`~melange.lease.LeasePolicy`), on backends that can.
* :meth:`~MessageDispatcher.stop` (or SIGTERM/SIGINT under
  :meth:`~MessageDispatcher.run`) stops receiving, lets running handlers finish
  within ``grace_period``, releases messages that were received but not
  started, acknowledges what finished and closes the backend.

Logging goes to the ``melange.dispatcher`` logger with ``extra`` fields
``queue``, ``message_id`` and ``consumer``; message bodies are never logged.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, Literal

from melange.backends.base import MessagingBackend, OutgoingMessage, ReceivedMessage
from melange.consumers import Consumer, is_async_consumer
from melange.exceptions import BackendClosed, ConfigurationError, QueueNotFound
from melange.lease import Lease, LeaseKeeper, LeasePolicy
from melange.message import Message
from melange.observability import Hooks, safe
from melange.retry import RetryPolicy
from melange.serializers import SerializerRegistry

if TYPE_CHECKING:
    from melange.dedup import DedupCache

__all__ = [
    "DispatchStats",
    "LeasePolicy",
    "MessageDispatcher",
    "Outcome",
    "RetryPolicy",
    "SimpleMessageDispatcher",
]

logger = logging.getLogger("melange.dispatcher")

Outcome = Literal["dead_letter", "ack", "leave"]
"""What happens to a message that cannot be decoded or that no consumer accepts."""

_OUTCOMES: tuple[Outcome, ...] = ("dead_letter", "ack", "leave")

_ACK_BATCH = 100
"""Most acknowledgements sent in one call; the backend splits them into its own limits."""

_RECEIVE_BACKOFF = RetryPolicy(base=0.1, factor=2.0, max_delay=10.0, jitter=0.2)
"""Waits between receive attempts while the backend fails."""


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
            setattr(self, counter, getattr(self, counter) + count)

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


class _Delivery:
    """One received message while the dispatcher holds it."""

    __slots__ = ("cancelled", "lease", "received", "started")

    def __init__(self, received: ReceivedMessage, lease: Lease) -> None:
        self.received = received
        self.lease = lease
        self.started = False
        self.cancelled = False  # released before it started (shutdown, failed group predecessor)


def _extra(received: ReceivedMessage, consumer: str | None = None) -> dict[str, Any]:
    return {
        "queue": received.queue_name,
        "message_id": received.message_id,
        "consumer": consumer,
    }


class MessageDispatcher:
    """Receives messages from one queue and hands them to consumers, on a pool of threads.

    Example:
        >>> dispatcher = MessageDispatcher(backend, "payment-updates", [record_payment])
        >>> dispatcher.run()  # blocks until SIGTERM/SIGINT or stop()

    Args:
        backend: Where messages come from.
        queue_name: The queue to consume; it must exist when the dispatcher starts.
        consumers: Every consumer that accepts a message is called with it.
        serializers: Decodes bodies; defaults to a new :class:`SerializerRegistry` (JSON).
        workers: Threads running handlers, and the most messages held at once.
        concurrent_receives: Threads receiving at the same time (more hide the
            broker's round trip).
        batch_size: Most messages asked for by one receive call.
        wait_seconds: Long-poll wait of one receive call; also bounds how long a
            receiver takes to notice :meth:`stop`.
        retry: Delays before failed messages come back; default :class:`RetryPolicy`.
        on_undecodable: Outcome for bodies the serializers cannot decode.
        on_unhandled: Outcome for messages no consumer accepts.
        dedup: A deduplication cache, so each consumer handles a message id once.
        dedup_ttl: Seconds a consumer's "done" mark is kept; defaults to the
            queue's message retention period.
        dedup_claim_ttl: Seconds a claim lives if its worker dies without
            releasing it; defaults to the queue's visibility timeout, after which
            the broker delivers the message again anyway. A longer claim keeps a
            crashed worker's messages "busy" (and counting receives towards the
            dead-letter queue) for longer.
        hooks: Observability hooks; exceptions in them are logged and ignored.
            Defaults to :func:`melange.tracing.default_hooks` (OpenTelemetry
            trace context when ``opentelemetry-api`` is installed).
        lease: When to extend leases of long-running handlers; default
            :class:`LeasePolicy`. Used only when the backend supports lease extension.
        grace_period: Seconds :meth:`stop` lets running handlers finish.
        close_backend: Close the backend when the dispatcher stops.

    Raises:
        ConfigurationError: An argument is invalid (no consumers, two consumers
            with the same name, an ``async`` consumer, an unknown outcome, a
            non-positive count, ...). Nothing is started.
    """

    def __init__(
        self,
        backend: MessagingBackend,
        queue_name: str,
        consumers: Sequence[Consumer],
        serializers: SerializerRegistry | None = None,
        *,
        workers: int = 4,
        concurrent_receives: int = 1,
        batch_size: int = 10,
        wait_seconds: float = 5.0,
        retry: RetryPolicy | None = None,
        on_undecodable: Outcome = "dead_letter",
        on_unhandled: Outcome = "dead_letter",
        dedup: DedupCache | None = None,
        dedup_ttl: float | None = None,
        dedup_claim_ttl: float | None = None,
        hooks: Hooks | None = None,
        lease: LeasePolicy | None = None,
        grace_period: float = 30.0,
        close_backend: bool = True,
    ) -> None:
        if not isinstance(backend, MessagingBackend):
            raise ConfigurationError(
                f"backend must be a melange MessagingBackend, got {type(backend).__name__}; "
                "create one with melange.backends.load_backend(...)"
            )
        if not isinstance(queue_name, str) or not queue_name:
            raise ConfigurationError(f"queue_name must be a non-empty string, got {queue_name!r}")
        self.backend = backend
        self.queue_name = queue_name
        self.consumers = _check_consumers(consumers)
        if serializers is not None and not isinstance(serializers, SerializerRegistry):
            raise ConfigurationError(
                f"serializers must be a melange.serializers.SerializerRegistry, "
                f"got {type(serializers).__name__}"
            )
        self.serializers = serializers if serializers is not None else SerializerRegistry()
        self.workers = _positive_int("workers", workers)
        self.concurrent_receives = _positive_int("concurrent_receives", concurrent_receives)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.wait_seconds = _seconds("wait_seconds", wait_seconds)
        self.grace_period = _seconds("grace_period", grace_period)
        if dedup_ttl is not None and not (_seconds("dedup_ttl", dedup_ttl) > 0):
            raise ConfigurationError(f"dedup_ttl must be a positive number, got {dedup_ttl!r}")
        self.dedup_ttl = dedup_ttl
        if dedup_claim_ttl is not None and not (_seconds("dedup_claim_ttl", dedup_claim_ttl) > 0):
            raise ConfigurationError(
                f"dedup_claim_ttl must be a positive number, got {dedup_claim_ttl!r}"
            )
        self.dedup_claim_ttl = dedup_claim_ttl
        for label, outcome in (("on_undecodable", on_undecodable), ("on_unhandled", on_unhandled)):
            if outcome not in _OUTCOMES:
                raise ConfigurationError(
                    f"{label} must be one of {', '.join(map(repr, _OUTCOMES))}, got {outcome!r}"
                )
        self.on_undecodable: Outcome = on_undecodable
        self.on_unhandled: Outcome = on_unhandled
        for label, value, kind in (("retry", retry, RetryPolicy), ("lease", lease, LeasePolicy)):
            if value is not None and not isinstance(value, kind):
                raise ConfigurationError(
                    f"{label} must be a melange {kind.__name__}, got {type(value).__name__}"
                )
        self.retry = retry if retry is not None else RetryPolicy()
        self.lease = lease if lease is not None else LeasePolicy()
        self.dedup = dedup
        if hooks is None:
            from melange.tracing import default_hooks  # OpenTelemetry only when installed

            hooks = default_hooks()
        elif not isinstance(hooks, Hooks):
            raise ConfigurationError(
                f"hooks must be a melange.observability.Hooks, got {type(hooks).__name__}"
            )
        self.hooks = hooks
        self._hooks = safe(hooks)  # a failing hook is logged, never changes a message's fate
        self.close_backend = bool(close_backend)
        self.stats = DispatchStats()
        """What the dispatcher did so far; live counters."""

        self._can_nack = backend.capabilities.nack_delay
        self._max_delay = backend.capabilities.max_visibility_timeout
        # Set by start() from one get_queue() call.
        self._visibility_timeout = 30.0
        self._retention = 4 * 24 * 3600.0
        self._dead_letter_queue: str | None = None
        self._max_receives: int | None = None
        self._fifo = False

        self._lock = threading.Lock()
        self._capacity = threading.Condition(self._lock)
        self._state: Literal["new", "running", "stopping", "stopped"] = "new"
        self._held = 0  # received, not finished
        self._reserved = 0  # asked for by receive calls in progress
        self._pending_acks = 0
        self._deliveries: set[_Delivery] = set()
        self._active_groups: set[str] = set()
        self._waiting: dict[str, deque[_Delivery]] = {}  # behind the running message of a group
        self._last_activity = time.monotonic()
        self._work: queue.SimpleQueue[_Delivery | None] = queue.SimpleQueue()
        self._acks: queue.SimpleQueue[_Delivery | None] = queue.SimpleQueue()
        self._stop_requested = threading.Event()
        self._stopped = threading.Event()
        self._receivers: list[threading.Thread] = []
        self._worker_threads: list[threading.Thread] = []
        self._acker: threading.Thread | None = None
        self._keeper: LeaseKeeper | None = None
        self._shutdown_thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} queue={self.queue_name!r} backend={self.backend.name!r} "
            f"{self._state}>"
        )

    def __enter__(self) -> MessageDispatcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def _queue_extra(self) -> dict[str, Any]:
        return {"queue": self.queue_name, "message_id": None, "consumer": None}

    # ------------------------------------------------------------- lifecycle
    @property
    def running(self) -> bool:
        """Whether the dispatcher has started and not begun to stop."""
        return self._state == "running"

    @property
    def in_flight(self) -> int:
        """Messages received and not finished yet (at most :attr:`workers`)."""
        with self._lock:
            return self._held

    def start(self) -> None:
        """Start receiving and handling in background threads; return at once.

        Calling it again while running does nothing.

        Raises:
            QueueNotFound: The queue does not exist.
            ConfigurationError: The dispatcher was stopped; create a new one.
        """
        with self._lock:
            if self._state == "running":
                return
            if self._state != "new":
                raise ConfigurationError(
                    f"this dispatcher for queue {self.queue_name!r} was stopped and cannot "
                    "start again; create a new MessageDispatcher"
                )
            spec = self.backend.get_queue(self.queue_name)
            if spec is None:
                raise QueueNotFound(self.queue_name)
            self._visibility_timeout = spec.visibility_timeout
            self._retention = spec.message_retention_period
            self._fifo = spec.fifo
            if spec.dead_letter is not None:
                self._dead_letter_queue = spec.dead_letter.queue_name
                self._max_receives = spec.dead_letter.max_receive_count
            if self.backend.capabilities.lease_extension and self._visibility_timeout > 0:
                self._keeper = LeaseKeeper(
                    self.backend,
                    self.queue_name,
                    self._visibility_timeout,
                    self.lease,
                    self._hooks,
                    on_extended=lambda count: self.stats.add("lease_extended", count),
                    on_lost=lambda _lease: self.stats.add("lease_lost"),
                )
                self._keeper.start()
            name = self.queue_name
            self._worker_threads = [
                _thread(self._work_loop, f"melange-worker-{name}-{i}") for i in range(self.workers)
            ]
            self._receivers = [
                _thread(self._receive_loop, f"melange-receiver-{name}-{i}")
                for i in range(self.concurrent_receives)
            ]
            self._acker = _thread(self._ack_loop, f"melange-acker-{name}")
            self._last_activity = time.monotonic()
            self._state = "running"
        logger.info(
            "dispatching queue %s to %s with %d worker(s)",
            self.queue_name,
            ", ".join(c.name for c in self.consumers),
            self.workers,
            extra=self._queue_extra,
        )

    def run(self, *, install_signal_handlers: bool = True) -> None:
        """Start, then block until :meth:`stop`, SIGTERM or SIGINT ends the dispatcher.

        Returns normally after a graceful shutdown, so a process whose main
        function calls it exits with status 0. A second SIGINT while shutting
        down raises :class:`KeyboardInterrupt`.

        Args:
            install_signal_handlers: Handle SIGTERM and SIGINT while running
                (only possible in the main thread; the previous handlers are
                restored on return).

        Raises:
            QueueNotFound: The queue does not exist.
            ConfigurationError: The dispatcher was stopped; create a new one.
        """
        self.start()
        previous: dict[signal.Signals, Any] = {}
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous[signum] = signal.signal(signum, self._on_signal)
        try:
            while not self._stopped.wait(0.5):
                pass
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._stop_requested.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait
        logger.info(
            "received %s: stopping (grace period %gs)",
            signal.Signals(signum).name,
            self.grace_period,
            extra=self._queue_extra,
        )
        self._request_stop()

    def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully; idempotent.

        Stops receiving, releases messages received but not started (nack with
        no delay, where the backend can), lets running handlers finish within
        :attr:`grace_period`, acknowledges what finished, and closes the backend
        when ``close_backend`` is set.

        Args:
            timeout: Longest time to wait for the shutdown to complete; ``None``
                waits until it is done. Called from a handler, it never waits.
        """
        self._request_stop()
        if threading.current_thread() in self._worker_threads:
            return  # waiting here would wait for this very handler
        self._stopped.wait(timeout)

    def run_until_idle(
        self, idle_seconds: float = 1.0, timeout: float | None = None, *, stop: bool = False
    ) -> DispatchStats:
        """Run until nothing was received or handled for ``idle_seconds``; for tests and scripts.

        Starts the dispatcher if needed. Messages waiting for a retry delay do
        not count as work: the call returns while they wait (on a
        :class:`~melange.clock.ManualClock` backend, advance the clock and call
        again).

        Args:
            idle_seconds: Real seconds without activity that count as idle.
            timeout: Return after this many seconds even if still busy.
            stop: Stop the dispatcher before returning (see :meth:`stop`);
                otherwise it keeps running until :meth:`stop` or the end of a
                ``with`` block.

        Returns:
            A snapshot of :attr:`stats`.
        """
        self.start()
        began = time.monotonic()
        deadline = None if timeout is None else began + timeout
        while not self._stopped.is_set():
            now = time.monotonic()
            with self._lock:
                # Idle time counts from this call at the earliest: what came before is done.
                quiet_since = max(self._last_activity, began)
                idle = (
                    self._held == 0
                    and self._pending_acks == 0
                    and now - quiet_since >= idle_seconds
                )
            if idle or (deadline is not None and now >= deadline):
                break
            time.sleep(0.01)
        if stop:
            self.stop()
        return self.stats.snapshot()

    def _request_stop(self) -> None:
        with self._lock:
            previous = self._state
            if previous in ("stopping", "stopped"):
                return
            self._state = "stopped" if previous == "new" else "stopping"
            self._stop_requested.set()
            unstarted = self._cancel_unstarted()
            self._capacity.notify_all()
        if previous == "new":  # never started: nothing runs, only the backend to close
            self._close_backend()
            self._stopped.set()
            return
        self._shutdown_thread = _thread(
            lambda: self._shutdown(unstarted), f"melange-shutdown-{self.queue_name}"
        )

    def _cancel_unstarted(self) -> list[_Delivery]:
        """Mark every held message that has not started as cancelled; call with the lock held."""
        unstarted = [d for d in self._deliveries if not d.started and not d.cancelled]
        for delivery in unstarted:
            delivery.cancelled = True
        self._waiting.clear()
        return unstarted

    def _shutdown(self, unstarted: list[_Delivery]) -> None:
        deadline = time.monotonic() + self.grace_period
        try:
            logger.info(
                "stopping: %d message(s) handling, %d released",
                self.in_flight - len(unstarted),
                len(unstarted),
                extra=self._queue_extra,
            )
            self._release(unstarted, "released")
            for _ in self._worker_threads:
                self._work.put(None)
            for thread in self._worker_threads:
                thread.join(max(0.0, deadline - time.monotonic()))
            still_running = sum(thread.is_alive() for thread in self._worker_threads)
            if still_running:
                logger.warning(
                    "%d handler(s) still running after the %gs grace period; their messages "
                    "are not acknowledged and will be delivered again",
                    still_running,
                    self.grace_period,
                    extra=self._queue_extra,
                )
            # A receive in progress returns within wait_seconds; its messages are released.
            receive_deadline = max(deadline, time.monotonic()) + self.wait_seconds + 1.0
            for thread in self._receivers:
                thread.join(max(0.0, receive_deadline - time.monotonic()))
            self._acks.put(None)
            if self._acker is not None:
                self._acker.join(max(0.0, deadline - time.monotonic()) + 10.0)
            if self._keeper is not None:
                self._keeper.stop(1.0)
        except Exception:
            logger.exception(
                "error while stopping the dispatcher",
                extra=self._queue_extra,
            )
        finally:
            self._close_backend()
            with self._lock:
                self._state = "stopped"
            self._stopped.set()
            logger.info(
                "stopped",
                extra=self._queue_extra,
            )

    def _close_backend(self) -> None:
        if not self.close_backend:
            return
        try:
            self.backend.close()
        except Exception:
            logger.exception(
                "closing the backend failed",
                extra=self._queue_extra,
            )

    # -------------------------------------------------------------- receiving
    def _reserve(self) -> int:
        """Wait for free workers and reserve up to ``batch_size`` of them; 0 when stopping."""
        with self._capacity:
            while not self._stop_requested.is_set():
                free = self.workers - self._held - self._reserved
                if free > 0:
                    count = min(free, self.batch_size)
                    self._reserved += count
                    return count
                self._capacity.wait()
            return 0

    def _receive_loop(self) -> None:
        failures = 0
        while True:
            count = self._reserve()
            if not count:
                return
            received_at = time.monotonic()
            try:
                received = self.backend.receive(self.queue_name, count, self.wait_seconds)
            except BackendClosed:
                self._unreserve(count)
                if not self._stop_requested.is_set():
                    logger.error(
                        "the backend was closed while the dispatcher was running; stopping",
                        extra=self._queue_extra,
                    )
                    self._request_stop()
                return
            except Exception as exc:
                self._unreserve(count)
                failures += 1
                self.stats.add("receive_errors")
                delay = _RECEIVE_BACKOFF.delay(failures)
                logger.error(
                    "receiving from queue %s failed (%s: %s); retrying in %.1fs",
                    self.queue_name,
                    type(exc).__name__,
                    exc,
                    delay,
                    extra=self._queue_extra,
                )
                self._stop_requested.wait(delay)
                continue
            failures = 0
            self._accept(received, count, received_at)

    def _unreserve(self, count: int) -> None:
        with self._capacity:
            self._reserved -= count
            self._capacity.notify_all()

    def _accept(self, received: list[ReceivedMessage], reserved: int, received_at: float) -> None:
        """Take the messages of one receive call: queue them for the workers, or release them."""
        expires_at = received_at + self._visibility_timeout
        deliveries = [
            _Delivery(message, Lease(message, received_at, expires_at)) for message in received
        ]
        if received:  # before any handler can start, so hooks see the steps in order
            self.stats.add("received", len(received))
            self._hooks.on_receive(self.queue_name, received)
        release: list[_Delivery] = []
        held = 0
        with self._capacity:
            self._reserved -= reserved
            if self._stop_requested.is_set():
                release = deliveries
            elif deliveries:
                self._held += len(deliveries)
                self._deliveries.update(deliveries)
                self._last_activity = time.monotonic()
                if self._keeper is not None:  # before a worker can finish (and untrack) one
                    self._keeper.track([d.lease for d in deliveries])
                for delivery in deliveries:
                    self._schedule(delivery)
                held = self._held
            self._capacity.notify_all()
        if not received:
            return
        if release:
            for delivery in release:
                delivery.cancelled = True
            self._release(release, "released")
            return
        self.stats.peak("max_in_flight", held)
        logger.debug(
            "received %d message(s)",
            len(received),
            extra=self._queue_extra,
        )

    def _schedule(self, delivery: _Delivery) -> None:
        """Queue a delivery for a worker, behind a running message of its group; lock held."""
        group = delivery.received.group_id
        if group is not None:
            if group in self._active_groups:
                self._waiting.setdefault(group, deque()).append(delivery)
                return
            self._active_groups.add(group)
        self._work.put(delivery)

    # ---------------------------------------------------------------- workers
    def _work_loop(self) -> None:
        while True:
            delivery = self._work.get()
            if delivery is None:
                return
            with self._lock:
                if delivery.cancelled:
                    continue
                delivery.started = True
            acked = False
            try:
                acked = self._handle(delivery)
            except Exception:  # a bug here must not kill the worker or lose the slot
                logger.exception(
                    "internal error while handling message %s; it will be delivered again",
                    delivery.received.message_id,
                    extra=_extra(delivery.received),
                )
            finally:
                self._finish(delivery, acked)

    def _finish(self, delivery: _Delivery, acked: bool) -> None:
        """Free the delivery's worker slot and start the next message of its group."""
        group = delivery.received.group_id
        behind: list[_Delivery] = []
        with self._capacity:
            self._deliveries.discard(delivery)
            self._held -= 1
            self._last_activity = time.monotonic()
            if group is not None:
                waiting = self._waiting.pop(group, None)
                if waiting and not acked:
                    # Keep the group's order: the messages behind a failed one go back
                    # to the broker, which hands them out again after it.
                    behind = list(waiting)
                    for other in behind:
                        other.cancelled = True
                elif waiting:
                    self._work.put(waiting.popleft())
                    if waiting:
                        self._waiting[group] = waiting
                if not waiting or behind:
                    self._active_groups.discard(group)
            self._capacity.notify_all()
        if self._keeper is not None:
            self._keeper.release(delivery.lease)
        self._release(behind, "released")

    def _release(self, deliveries: list[_Delivery], counter: str) -> None:
        """Drop messages that were not handled and make them receivable again (nack, no delay)."""
        if not deliveries:
            return
        with self._capacity:
            for delivery in deliveries:
                if delivery in self._deliveries:
                    self._deliveries.discard(delivery)
                    self._held -= 1
            self._capacity.notify_all()
        if self._keeper is not None:
            for delivery in deliveries:
                self._keeper.release(delivery.lease)
        self.stats.add(counter, len(deliveries))
        if not self._can_nack:
            return  # they come back after the visibility timeout
        try:
            self.backend.nack([d.received for d in deliveries], 0.0)
        except Exception as exc:
            logger.warning(
                "could not release %d message(s) (%s); they come back after the visibility timeout",
                len(deliveries),
                type(exc).__name__,
                extra=self._queue_extra,
            )

    def _handle(self, delivery: _Delivery) -> bool:
        """Decode and handle one message; settle it. Return whether it is being acknowledged."""
        received = delivery.received
        try:
            message = self.serializers.decode(received)
        except Exception as exc:  # SerializationError, or a serializer's own bug
            self.stats.add("undecodable")
            outcome = self._apply_outcome(delivery, self.on_undecodable, "undecodable", exc)
            self._hooks.on_undecodable(self.queue_name, received, exc, outcome)
            return outcome in ("ack", "dead_letter")
        failures: list[tuple[Consumer, BaseException]] = []
        accepting: list[Consumer] = []
        for candidate in self.consumers:
            try:
                if candidate.accepts(message):
                    accepting.append(candidate)
            except Exception as exc:
                failures.append((candidate, exc))
        if not accepting and not failures:
            self.stats.add("unhandled")
            outcome = self._apply_outcome(delivery, self.on_unhandled, "unhandled", None)
            self._hooks.on_unhandled(self.queue_name, message, outcome)
            return outcome in ("ack", "dead_letter")
        busy = False
        for candidate in accepting:
            result = self._call(candidate, message, received)
            if result == "busy":
                busy = True
            elif isinstance(result, BaseException):
                failures.append((candidate, result))
        if failures:
            self._retry(delivery, message, failures)
            return False
        if busy:
            self._busy(delivery)
            return False
        self.stats.add("handled")
        self._queue_ack(delivery)
        return True

    def _call(
        self, candidate: Consumer, message: Message, received: ReceivedMessage
    ) -> Literal["ok", "skipped", "busy"] | BaseException:
        """Run one consumer on one message under the deduplication cache."""
        key = f"{candidate.name}:{received.message_id}"
        if self.dedup is not None:
            try:
                claim = self.dedup.claim(
                    key, self.dedup_claim_ttl or max(self._visibility_timeout, 1.0)
                )
            except Exception as exc:
                return exc
            if claim == "done":
                self.stats.add("duplicates")
                logger.debug(
                    "skipped message %s: consumer %s handled it already",
                    received.message_id,
                    candidate.name,
                    extra=_extra(received, candidate.name),
                )
                return "skipped"
            if claim == "busy":
                return "busy"
        started = time.monotonic()
        context = self._enter_handling(message, candidate, received)
        try:
            result = candidate.process(message)
            if inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()  # never awaited: close it to avoid a RuntimeWarning
                raise ConfigurationError(
                    f"consumer {candidate.name!r} returned an awaitable; async consumers need "
                    "melange.aio.AsyncMessageDispatcher"
                )
        except BaseException as exc:  # SystemExit in a handler thread is a failure too
            _exit_handling(context, exc, received, candidate.name)
            if self.dedup is not None:
                try:
                    self.dedup.release(key)
                except Exception as release_error:
                    logger.warning(
                        "could not release the deduplication claim %s (%s)",
                        key,
                        type(release_error).__name__,
                        extra=_extra(received, candidate.name),
                    )
            return exc
        _exit_handling(context, None, received, candidate.name)
        seconds = time.monotonic() - started
        if self.dedup is not None:
            try:
                self.dedup.complete(key, self.dedup_ttl or self._retention)
            except Exception as exc:
                logger.error(
                    "could not mark %s done in the deduplication cache (%s); the message may "
                    "be handled again if it is delivered again",
                    key,
                    type(exc).__name__,
                    extra=_extra(received, candidate.name),
                )
        self._hooks.on_handled(self.queue_name, message, candidate.name, seconds)
        logger.debug(
            "consumer %s handled message %s in %.3fs",
            candidate.name,
            received.message_id,
            seconds,
            extra=_extra(received, candidate.name),
        )
        return "ok"

    def _enter_handling(
        self, message: Message, candidate: Consumer, received: ReceivedMessage
    ) -> contextlib.AbstractContextManager[None] | None:
        try:
            context = self._hooks.handling(self.queue_name, message, candidate.name)
            context.__enter__()
        except Exception:
            logger.exception(
                "hooks.handling failed; handling without it", extra=_extra(received, candidate.name)
            )
            return None
        return context

    # ------------------------------------------------------------- settling
    def _retry_delay(self, received: ReceivedMessage) -> float:
        return min(self.retry.delay(received.receive_count), self._max_delay)

    def _retry(
        self,
        delivery: _Delivery,
        message: Message,
        failures: list[tuple[Consumer, BaseException]],
    ) -> None:
        received = delivery.received
        delay = self._retry_delay(received) if self._can_nack else None
        last = self._max_receives is not None and received.receive_count >= self._max_receives
        for failed, error in failures:
            self.stats.add("failed")
            if last:
                what = (
                    f"that was delivery {received.receive_count} of {self._max_receives}: the "
                    f"broker moves it to {self._dead_letter_queue!r}"
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
                extra=_extra(received, failed.name),
            )
            self._hooks.on_handler_error(self.queue_name, message, failed.name, error, delay)
        self.stats.add("retried")
        if delay is not None:
            self._nack(received, delay)

    def _busy(self, delivery: _Delivery) -> None:
        received = delivery.received
        self.stats.add("busy")
        logger.info(
            "message %s is being handled by another worker; leaving it for redelivery",
            received.message_id,
            extra=_extra(received),
        )
        if self._can_nack:
            self._nack(received, self._retry_delay(received))

    def _nack(self, received: ReceivedMessage, delay: float) -> None:
        try:
            self.backend.nack([received], delay)
        except Exception as exc:
            logger.warning(
                "could not release message %s (%s); it comes back after the visibility timeout",
                received.message_id,
                type(exc).__name__,
                extra=_extra(received),
            )

    def _apply_outcome(
        self, delivery: _Delivery, outcome: Outcome, reason: str, error: Exception | None
    ) -> Outcome:
        """Apply the undecodable/unhandled policy; return the outcome actually applied."""
        received = delivery.received
        extra = _extra(received)
        detail = f": {error}" if error is not None else ""
        if outcome == "dead_letter":
            if self._dead_letter_queue is None:
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
            elif self._dead_letter(received, reason):
                self._queue_ack(delivery)
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
            self._queue_ack(delivery)
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

    def _dead_letter(self, received: ReceivedMessage, reason: str) -> bool:
        """Publish the message unchanged to the dead-letter queue; return whether it worked."""
        target = self._dead_letter_queue
        assert target is not None
        outgoing = OutgoingMessage(
            body=received.body,
            attributes=dict(received.attributes),
            group_id=received.group_id,
            # A FIFO dead-letter queue drops a second copy if we crash before the ack below.
            dedup_id=received.message_id if self._fifo else None,
        )
        try:
            results = self.backend.publish(target, [outgoing])
            error: BaseException | None = results[0].error if results else None
        except Exception as exc:
            error = exc
        if error is not None:
            logger.error(
                "could not move message %s (%s) to dead-letter queue %s (%s: %s); leaving it",
                received.message_id,
                reason,
                target,
                type(error).__name__,
                error,
                extra=_extra(received),
            )
            return False
        self.stats.add("dead_lettered")
        logger.warning(
            "moved message %s (%s) to dead-letter queue %s",
            received.message_id,
            reason,
            target,
            extra=_extra(received),
        )
        self._hooks.on_dead_lettered(self.queue_name, received, reason)
        return True

    # ----------------------------------------------------------------- acking
    def _queue_ack(self, delivery: _Delivery) -> None:
        with self._lock:
            self._pending_acks += 1
        self._acks.put(delivery)

    def _ack_loop(self) -> None:
        done = False
        while not done:
            batch: list[_Delivery] = []
            item = self._acks.get()
            while True:
                if item is None:
                    done = True
                else:
                    batch.append(item)
                if len(batch) >= _ACK_BATCH:
                    break
                try:
                    item = self._acks.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._send_acks(batch)

    def _send_acks(self, batch: list[_Delivery]) -> None:
        # A lost lease means a stale receipt: ack those one by one so they cannot
        # fail the others (the broker ignores or refuses a stale receipt).
        current = [d.received for d in batch if not d.lease.lost]
        stale = [d.received for d in batch if d.lease.lost]
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
                    extra=self._queue_extra,
                )
            else:
                acked.extend(group)
        if acked:
            self.stats.add("acked", len(acked))
            self._hooks.on_acked(self.queue_name, acked)
        with self._lock:
            self._pending_acks -= len(batch)
            self._last_activity = time.monotonic()


class SimpleMessageDispatcher(MessageDispatcher):
    """A :class:`MessageDispatcher` for exactly one consumer (the original melange's form).

    Example:
        >>> SimpleMessageDispatcher(record_payment, backend, "payment-updates").run()

    Args:
        consumer: The consumer.
        backend: Where messages come from.
        queue_name: The queue to consume.
        serializers: Decodes bodies; defaults to a new registry (JSON).
        **options: Every keyword argument of :class:`MessageDispatcher`.
    """

    def __init__(
        self,
        consumer: Consumer,
        backend: MessagingBackend,
        queue_name: str,
        serializers: SerializerRegistry | None = None,
        **options: Any,
    ) -> None:
        super().__init__(backend, queue_name, [consumer], serializers, **options)

    @property
    def consumer(self) -> Consumer:
        """The one consumer."""
        return self.consumers[0]


# ------------------------------------------------------------------ helpers
def _thread(target: Any, name: str) -> threading.Thread:
    # Daemon threads: a handler stuck past the grace period must not keep the process alive.
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


def _exit_handling(
    context: contextlib.AbstractContextManager[None] | None,
    error: BaseException | None,
    received: ReceivedMessage,
    consumer: str,
) -> None:
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
                extra=_extra(received, consumer),
            )


def _check_consumers(consumers: Sequence[Consumer]) -> tuple[Consumer, ...]:
    if isinstance(consumers, (Consumer, str, bytes)) or not isinstance(consumers, Sequence):
        raise ConfigurationError(
            "consumers must be a list of Consumer objects, e.g. [record_payment]; "
            "for one consumer use SimpleMessageDispatcher(consumer, backend, queue_name)"
        )
    if not consumers:
        raise ConfigurationError("a dispatcher needs at least one consumer")
    names: dict[str, Consumer] = {}
    for candidate in consumers:
        if not isinstance(candidate, Consumer):
            hint = (
                " (decorate the function with @melange.consumers.consumer)"
                if callable(candidate)
                else ""
            )
            raise ConfigurationError(f"{candidate!r} is not a melange Consumer{hint}")
        if is_async_consumer(candidate):
            raise ConfigurationError(
                f"consumer {candidate.name!r} is asynchronous (async def); run it with "
                "melange.aio.AsyncMessageDispatcher, or make it a plain function"
            )
        candidate.validate()
        other = names.get(candidate.name)
        if other is not None:
            raise ConfigurationError(
                f"two consumers are named {candidate.name!r} ({other!r} and {candidate!r}); "
                "names key the deduplication cache and logs, so give each a distinct one "
                "with name=..."
            )
        names[candidate.name] = candidate
    return tuple(consumers)


def _positive_int(label: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{label} must be a whole number >= 1, got {value!r}")
    return value


def _seconds(label: str, value: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0 <= value < float("inf")
    ):
        raise ConfigurationError(f"{label} must be a number of seconds >= 0, got {value!r}")
    return float(value)
