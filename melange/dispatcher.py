"""The consumer runtime: receive, decode, handle, acknowledge, on every backend alike.

A :class:`MessageDispatcher` runs the loop an application uses every day::

    dispatcher = MessageDispatcher(backend, "payment-updates", [record_payment, Payments()])
    dispatcher.run()            # until SIGTERM/SIGINT or dispatcher.stop()

* ``concurrent_receives`` receiver threads receive in batches, never more
  messages than there are free workers (no prefetch): at most ``workers``
  messages are received and not yet finished at any time. A receiver waits
  briefly for a full batch of free workers rather than ask for a few (each
  receive costs a round trip); ``workers`` defaults to
  ``batch_size * concurrent_receives`` so that every receive can ask for a
  full batch.
* Each message is decoded with the :class:`~melange.serializers.SerializerRegistry`
  and handed to every consumer that accepts it, on a pool of ``workers``
  threads. Messages of one FIFO group are handled one after another, in the
  order they were received; other messages and groups in parallel.
* A message is acknowledged only after every accepting consumer succeeded.
  Acks go out in calls of the backend's native batch size, once a batch is full
  or every message of a received batch is settled, from ``concurrent_receives + 1``
  threads, so deletes keep up with the receives.
* A consumer that raises makes the message come back after a
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
* When receives fail (the broker is unreachable, the queue vanished), the
  receivers retry with capped exponential backoff (``reconnect_backoff``),
  logging one WARNING when the failures begin and one INFO when receives work
  again. At start-up, an unreachable broker is waited for up to
  ``startup_timeout`` seconds.
* :meth:`~MessageDispatcher.stop` (or SIGTERM/SIGINT under
  :meth:`~MessageDispatcher.run`) stops receiving, lets running handlers finish
  within ``grace_period``, releases messages that were received but not
  started, and acknowledges what finished; with ``close_backend=True`` it also
  closes the backend (by default the caller, who opened it, closes it).

Logging goes to the ``melange.dispatcher`` logger with ``extra`` fields
``queue``, ``message_id`` and ``consumer``; message bodies are never logged.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from collections.abc import Sequence
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, Literal

from melange._options import DispatcherOptions, positive_int
from melange._outage import StartupWait
from melange._schedule import Schedule
from melange.backends.base import MessagingBackend, ReceivedMessage
from melange.consumers import Consumer
from melange.exceptions import BackendClosed, BackendUnavailable, ConfigurationError
from melange.lease import LeaseKeeper, LeasePolicy
from melange.observability import Hooks
from melange.retry import RetryPolicy
from melange.serializers import SerializerRegistry
from melange.settlement import Delivery, DispatchStats, Outcome, log_extra

if TYPE_CHECKING:
    from melange.dedup import DedupCache
    from melange.topology import QueueSpec

__all__ = [
    "DispatchStats",
    "LeasePolicy",
    "MessageDispatcher",
    "Outcome",
    "RetryPolicy",
    "SimpleMessageDispatcher",
]

logger = logging.getLogger("melange.dispatcher")

_SYNC_AWAITABLE_HINT = "; async consumers need melange.aio.AsyncMessageDispatcher"


class MessageDispatcher(DispatcherOptions):
    """Receives messages from one queue and hands them to consumers, on a pool of threads.

    Examples:
        >>> dispatcher = MessageDispatcher(backend, "payment-updates", [record_payment])
        >>> dispatcher.run()  # blocks until SIGTERM/SIGINT or stop()

    Args:
        backend: Where messages come from.
        queue_name: The queue to consume; it must exist when the dispatcher starts.
        consumers: Every consumer that accepts a message is called with it.
        serializers: Decodes bodies; defaults to a new :class:`SerializerRegistry` (JSON).
        workers: Threads running handlers, and the most messages held at once;
            default ``batch_size * concurrent_receives``, so that every receive
            can ask for a full batch.
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
        close_backend: Also close ``backend`` when the dispatcher stops. Off by
            default: the caller opened the backend, so the caller closes it (it
            may share it with publishers or another dispatcher).
        startup_timeout: Seconds :meth:`start` waits for a broker that cannot be
            reached (``BackendUnavailable``) before it raises; 0 raises at once.
        reconnect_backoff: Waits between attempts while receives fail, and while
            waiting for the broker at start-up; default 0.1 s doubling up to 5 s,
            with 20% jitter (``RetryPolicy(0.1, 2.0, 5.0, 0.2)``). The cap bounds
            how long the dispatcher stays idle once the broker is back.

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
        workers: int | None = None,
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
        close_backend: bool = False,
        startup_timeout: float = 60.0,
        reconnect_backoff: RetryPolicy | None = None,
    ) -> None:
        self._configure(
            backend,
            queue_name,
            consumers,
            serializers,
            asynchronous=False,
            concurrent_receives=concurrent_receives,
            batch_size=batch_size,
            wait_seconds=wait_seconds,
            retry=retry,
            on_undecodable=on_undecodable,
            on_unhandled=on_unhandled,
            dedup=dedup,
            dedup_ttl=dedup_ttl,
            dedup_claim_ttl=dedup_claim_ttl,
            hooks=hooks,
            lease=lease,
            grace_period=grace_period,
            close_backend=close_backend,
            startup_timeout=startup_timeout,
            reconnect_backoff=reconnect_backoff,
        )
        self.workers = (
            self.batch_size * self.concurrent_receives
            if workers is None
            else positive_int("workers", workers)
        )

        self._lock = threading.Lock()
        self._capacity = threading.Condition(self._lock)
        self._state: Literal["new", "starting", "running", "stopping", "stopped"] = "new"
        self._signalled = False  # run() stopped by a signal
        self._schedule = Schedule(self.workers, self.batch_size)  # guarded by _lock
        self._work: queue.SimpleQueue[Delivery | None] = queue.SimpleQueue()
        self._acks: queue.SimpleQueue[list[Delivery] | None] = queue.SimpleQueue()
        self._stop_requested = threading.Event()
        self._stopped = threading.Event()
        self._receivers: list[threading.Thread] = []
        self._worker_threads: list[threading.Thread] = []
        self._ackers: list[threading.Thread] = []
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
        return self._settlement.queue_extra

    # ------------------------------------------------------------- lifecycle
    @property
    def running(self) -> bool:
        """Whether the dispatcher has started and not begun to stop."""
        return self._state == "running"

    @property
    def in_flight(self) -> int:
        """Messages received and not finished yet (at most :attr:`workers`)."""
        with self._lock:
            return self._schedule.held

    def start(self) -> None:
        """Start receiving and handling in background threads; return once running.

        While the broker cannot be reached (``BackendUnavailable``), waits for it
        up to ``startup_timeout`` seconds, retrying with ``reconnect_backoff``;
        :meth:`stop` from another thread (or a signal under :meth:`run`) ends
        the wait, and then this returns without starting. Calling it again while
        running does nothing.

        Raises:
            QueueNotFound: The queue does not exist (raised at once).
            BackendUnavailable: The broker could not be reached within
                ``startup_timeout``; the last attempt's error.
            ConfigurationError: The dispatcher was stopped; create a new one.
        """
        with self._capacity:
            while self._state == "starting":  # another thread is starting it: wait for it
                self._capacity.wait()
            if self._state == "running":
                return
            if self._state != "new":
                raise ConfigurationError(
                    f"this dispatcher for queue {self.queue_name!r} was stopped and cannot "
                    "start again; create a new MessageDispatcher"
                )
            self._state = "starting"
        try:
            spec = self._wait_for_queue()
            with self._capacity:
                if self._state != "starting":  # stop() was called meanwhile
                    return
                self._settlement.load(spec)
                self._start_threads()
                self._state = "running"
        finally:
            with self._capacity:
                if self._state == "starting":  # it failed: a later start() may try again
                    self._state = "new"
                self._capacity.notify_all()
        logger.info(
            "dispatching queue %s to %s with %d worker(s)",
            self.queue_name,
            ", ".join(c.name for c in self.consumers),
            self.workers,
            extra=self._queue_extra,
        )

    def _wait_for_queue(self) -> QueueSpec | None:
        """Look the queue up, waiting for an unreachable broker; ``None`` once stopping."""
        waiting = StartupWait(
            self.queue_name, self.startup_timeout, self.reconnect_backoff, self._queue_extra
        )
        while True:
            try:
                spec = self.backend.get_queue(self.queue_name)
            except Exception as exc:
                if self._stop_requested.is_set():  # e.g. the stop closed the backend
                    return None
                delay = waiting.failed(exc) if isinstance(exc, BackendUnavailable) else None
                if delay is None:
                    raise
                if self._stop_requested.wait(delay):
                    return None
                continue
            waiting.succeeded()
            return spec

    def _start_threads(self) -> None:
        """Start the heartbeat, workers, receivers and ackers; call with the lock held."""
        self._keeper = self._settlement.lease_keeper(self.lease)
        self._schedule.acks = self._settlement.ack_buffer()
        name = self.queue_name
        self._worker_threads = [
            _thread(self._work_loop, f"melange-worker-{name}-{i}") for i in range(self.workers)
        ]
        self._receivers = [
            _thread(self._receive_loop, f"melange-receiver-{name}-{i}")
            for i in range(self.concurrent_receives)
        ]
        # One more acker than receivers: a slow ack call never holds up the next batch.
        self._ackers = [
            _thread(self._ack_loop, f"melange-acker-{name}-{i}")
            for i in range(self.concurrent_receives + 1)
        ]
        self._schedule.last_activity = time.monotonic()

    def run(self, *, install_signal_handlers: bool = True) -> None:
        """Start, then block until :meth:`stop`, SIGTERM or SIGINT ends the dispatcher.

        Returns normally after a graceful shutdown, so a process whose main
        function calls it exits with status 0. A second SIGINT while shutting
        down raises :class:`KeyboardInterrupt`. The signals also end the wait
        for an unreachable broker at start-up (see :meth:`start`).

        Args:
            install_signal_handlers: Handle SIGTERM and SIGINT while running
                (only possible in the main thread; the previous handlers are
                restored on return).

        Raises:
            QueueNotFound: The queue does not exist.
            BackendUnavailable: The broker could not be reached within ``startup_timeout``.
            ConfigurationError: The dispatcher was stopped; create a new one.
        """
        previous: dict[signal.Signals, Any] = {}
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous[signum] = signal.signal(signum, self._on_signal)
        try:
            try:
                self.start()
            except ConfigurationError:
                if not self._signalled:  # else a signal came before start(): nothing to do
                    raise
            while not self._stopped.wait(0.5):
                pass
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._stop_requested.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait
        self._signalled = True
        logger.info(
            "received %s: stopping (grace period %gs)",
            signal.Signals(signum).name,
            self.grace_period,
            extra=self._queue_extra,
        )
        # From another thread: the signal may have interrupted this one inside a locked section.
        _thread(self._request_stop, f"melange-signal-{self.queue_name}")

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
                quiet_since = max(self._schedule.last_activity, began)
                idle = self._schedule.idle and now - quiet_since >= idle_seconds
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
            never_started = previous in ("new", "starting")
            self._state = "stopped" if never_started else "stopping"
            self._stop_requested.set()
            unstarted = self._schedule.cancel_unstarted()
            self._capacity.notify_all()
        if never_started:  # nothing runs (start() gives up its wait): only the backend to close
            self._close_backend()
            self._stopped.set()
            return
        self._shutdown_thread = _thread(
            lambda: self._shutdown(unstarted), f"melange-shutdown-{self.queue_name}"
        )

    def _shutdown(self, unstarted: list[Delivery]) -> None:
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
            with self._lock:  # abandoned handlers never settle: send what finished now
                rest = self._schedule.acks.take_all()
            for batch in rest:
                self._acks.put(batch)
            for _ in self._ackers:
                self._acks.put(None)
            ack_deadline = max(0.0, deadline - time.monotonic()) + 10.0 + time.monotonic()
            for thread in self._ackers:
                thread.join(max(0.0, ack_deadline - time.monotonic()))
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
        if self.close_backend:
            self._settlement.close_backend()

    # -------------------------------------------------------------- receiving
    def _reserve(self) -> int:
        """Wait for free workers and reserve up to ``batch_size`` of them; 0 when stopping."""
        fill_deadline: float | None = None
        with self._capacity:
            while not self._stop_requested.is_set():
                count, wait, fill_deadline = self._schedule.reserve(time.monotonic(), fill_deadline)
                if count:
                    return count
                self._capacity.wait(wait)
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
                self._stop_requested.wait(self._settlement.receive_failed(failures, exc))
                continue
            failures = 0
            self._settlement.receive_succeeded()
            self._accept(received, count, received_at)

    def _unreserve(self, count: int) -> None:
        with self._capacity:
            self._schedule.unreserve(count)
            self._capacity.notify_all()

    def _accept(self, received: list[ReceivedMessage], reserved: int, received_at: float) -> None:
        """Take the messages of one receive call: queue them for the workers, or release them."""
        deliveries = self._settlement.deliveries(received, received_at)
        with self._capacity:
            start, release = self._schedule.accept(
                deliveries, reserved, stopping=self._stop_requested.is_set(), now=time.monotonic()
            )
            if deliveries and not release and self._keeper is not None:
                # Before a worker can finish (and untrack) one.
                self._keeper.track([d.lease for d in deliveries])
            for delivery in start:
                self._work.put(delivery)
            held = self._schedule.held
            self._capacity.notify_all()
        if not received:
            return
        if release:
            self._release(release, "released")
            return
        self.stats.peak("max_in_flight", held)
        logger.debug("received %d message(s)", len(received), extra=self._queue_extra)

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
                    extra=log_extra(delivery.received),
                )
            finally:
                self._finish(delivery, acked)

    def _finish(self, delivery: Delivery, acked: bool) -> None:
        """Free the delivery's worker slot and start the next message of its group."""
        with self._capacity:
            following, behind, send = self._schedule.finish(delivery, acked, time.monotonic())
            self._send(send)
            if following is not None:
                self._work.put(following)
            self._capacity.notify_all()
        if self._keeper is not None:
            self._keeper.release(delivery.lease)
        self._release(behind, "released")

    def _release(self, deliveries: list[Delivery], counter: str) -> None:
        """Drop messages that were not handled and make them receivable again (nack, no delay)."""
        if not deliveries:
            return
        with self._capacity:
            self._send(self._schedule.release(deliveries, time.monotonic()))
            self._capacity.notify_all()
        if self._keeper is not None:
            for delivery in deliveries:
                self._keeper.release(delivery.lease)
        self._settlement.release(deliveries, counter)

    def _handle(self, delivery: Delivery) -> bool:
        """Decode and handle one message; settle it. Return whether to acknowledge it."""
        settlement = self._settlement
        received = delivery.received
        try:
            message = self.serializers.decode(received)
        except Exception as exc:  # SerializationError, or a serializer's own bug
            return settlement.undecodable(received, self.on_undecodable, exc)
        accepting, failures = settlement.select(self.consumers, message)
        if not accepting and not failures:
            return settlement.unhandled(received, self.on_unhandled, message)
        busy = False
        for candidate in accepting:
            result = settlement.call_sync(candidate, message, received, _SYNC_AWAITABLE_HINT)
            if result == "busy":
                busy = True
            elif isinstance(result, BaseException):
                failures.append((candidate, result))
        if failures:
            settlement.retry(received, message, failures)
            return False
        if busy:
            settlement.busy(received)
            return False
        self.stats.add("handled")
        return True

    # ----------------------------------------------------------------- acking
    def _send(self, batches: list[list[Delivery]]) -> None:
        """Hand acknowledgement calls to the ackers; lock held."""
        for batch in batches:
            self._acks.put(batch)

    def _ack_loop(self) -> None:
        while True:
            try:
                batch = self._acks.get(timeout=self._schedule.acks.max_wait)
            except queue.Empty:
                with self._lock:  # a slow handler holds back its batch: send the rest anyway
                    self._send(self._schedule.acks.take_overdue(time.monotonic()))
                continue
            if batch is None:
                return
            self._send_acks(batch)

    def _send_acks(self, batch: list[Delivery]) -> None:
        try:
            self._settlement.send_acks(batch)
        except Exception:  # send_acks logs the broker's errors; this is a bug
            logger.exception("acknowledging failed", extra=self._queue_extra)
        finally:
            with self._lock:
                self._schedule.acks_sent(len(batch), time.monotonic())


class SimpleMessageDispatcher(MessageDispatcher):
    """A :class:`MessageDispatcher` for exactly one consumer (the original melange's form).

    Examples:
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
