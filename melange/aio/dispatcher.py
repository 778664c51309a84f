"""The consumer runtime for asyncio applications.

:class:`AsyncMessageDispatcher` keeps the semantics of
:class:`melange.dispatcher.MessageDispatcher` (acknowledge only after every
accepting consumer succeeded, retry through a nack with the
:class:`~melange.retry.RetryPolicy` delay, the ``on_undecodable`` /
``on_unhandled`` outcomes, the deduplication protocol, lease extension,
graceful shutdown) with handlers as event-loop tasks:

* asynchronous consumers (``async def process``) run on the event loop, at most
  ``concurrency`` messages at a time;
* synchronous consumers run in a thread, so a blocking handler stalls nothing
  else;
* every backend and deduplication-cache call (the contract is synchronous) runs
  in the dispatcher's own thread pool, so a long-polling receive never blocks
  the event loop. Its own pool rather than the loop's default executor: long
  polls and slow handlers cannot starve the application's ``to_thread`` calls,
  nor be starved by them, and ``asyncio.run`` does not wait for a pending poll
  on exit.

Lease extension is the synchronous runtime's :class:`~melange.lease.LeaseKeeper`
(a heartbeat thread), and the counters are a :class:`~melange.dispatcher.DispatchStats`.
Logging goes to the ``melange.dispatcher`` logger, with the same records and
``extra`` fields (``queue``, ``message_id``, ``consumer``) as the synchronous
dispatcher; message bodies are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from melange.backends.base import MessagingBackend, OutgoingMessage, ReceivedMessage
from melange.consumers import Consumer, is_async_consumer
from melange.dispatcher import DispatchStats, Outcome
from melange.exceptions import BackendClosed, ConfigurationError, QueueNotFound
from melange.lease import Lease, LeaseKeeper, LeasePolicy
from melange.message import Message
from melange.observability import Hooks, safe
from melange.retry import RetryPolicy
from melange.serializers import SerializerRegistry

if TYPE_CHECKING:
    from melange.dedup import ClaimResult, DedupCache

__all__ = ["AsyncMessageDispatcher"]

logger = logging.getLogger("melange.dispatcher")

_T = TypeVar("_T")

_OUTCOMES: tuple[Outcome, ...] = ("dead_letter", "ack", "leave")

_ACK_BATCH = 100
"""Most acknowledgements sent in one call; the backend splits them into its own limits."""

_RECEIVE_BACKOFF = RetryPolicy(base=0.1, factor=2.0, max_delay=10.0, jitter=0.2)
"""Waits between receive attempts while the backend fails."""

_CallResult = Literal["ok", "skipped", "busy"]


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


class AsyncMessageDispatcher:
    """Receives messages from one queue and hands them to consumers, as asyncio tasks.

    Example:
        >>> async def main():
        ...     dispatcher = AsyncMessageDispatcher(backend, "payment-updates", [record])
        ...     await dispatcher.run()  # until SIGTERM/SIGINT or stop()

    Args:
        backend: Where messages come from.
        queue_name: The queue to consume; it must exist when the dispatcher starts.
        consumers: Every consumer that accepts a message is called with it, in
            order. Asynchronous ones (``async def process``) run on the event
            loop; synchronous ones in a thread.
        serializers: Decodes bodies; defaults to a new :class:`SerializerRegistry` (JSON).
        concurrency: The most messages held (received and not finished) at once,
            hence the most handlers running at once.
        concurrent_receives: Receive calls in progress at the same time (more hide
            the broker's round trip).
        batch_size: Most messages asked for by one receive call.
        wait_seconds: Long-poll wait of one receive call; also bounds how long
                :meth:`stop` waits for a receive in progress.
        retry: Delays before failed messages come back; default :class:`RetryPolicy`.
        on_undecodable: Outcome for bodies the serializers cannot decode.
        on_unhandled: Outcome for messages no consumer accepts.
        dedup: A deduplication cache, so each consumer handles a message id once.
        dedup_ttl: Seconds a consumer's "done" mark is kept; defaults to the
            queue's message retention period.
        dedup_claim_ttl: Seconds a claim lives if its handler dies without
            releasing it; defaults to the queue's visibility timeout.
        hooks: Observability hooks; exceptions in them are logged and ignored.
            Defaults to :func:`melange.tracing.default_hooks` (OpenTelemetry
            trace context when ``opentelemetry-api`` is installed). They are
            called from the event loop and from the dispatcher's threads.
        lease: When to extend leases of long-running handlers; default
            :class:`LeasePolicy`. Used only when the backend supports lease extension.
        grace_period: Seconds :meth:`stop` lets running handlers finish.
        close_backend: Close the backend when the dispatcher stops.

    Raises:
        ConfigurationError: An argument is invalid (no consumers, two consumers
            with the same name, an unknown outcome, a non-positive count, ...).
    """

    def __init__(
        self,
        backend: MessagingBackend,
        queue_name: str,
        consumers: Sequence[Consumer],
        serializers: SerializerRegistry | None = None,
        *,
        concurrency: int = 4,
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
        self.concurrency = _positive_int("concurrency", concurrency)
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

        self._async_consumers = frozenset(
            candidate for candidate in self.consumers if is_async_consumer(candidate)
        )
        self._can_nack = backend.capabilities.nack_delay
        self._max_delay = backend.capabilities.max_visibility_timeout
        # Set by start() from one get_queue() call.
        self._visibility_timeout = 30.0
        self._retention = 4 * 24 * 3600.0
        self._dead_letter_queue: str | None = None
        self._max_receives: int | None = None
        self._fifo = False

        # Everything below is touched only from the event loop's thread.
        self._state: Literal["new", "starting", "running", "stopping", "stopped"] = "new"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._held = 0  # received, not finished
        self._reserved = 0  # asked for by receive calls in progress
        self._pending_acks = 0
        self._deliveries: set[_Delivery] = set()
        self._active_groups: set[str] = set()
        self._waiting: dict[str, deque[_Delivery]] = {}  # behind the running message of a group
        self._last_activity = time.monotonic()
        self._ack_queue: deque[_Delivery] = deque()
        self._ack_task: asyncio.Task[None] | None = None
        self._receivers: list[asyncio.Task[None]] = []
        self._handlers: set[asyncio.Task[None]] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._capacity_changed: asyncio.Event | None = None
        self._stop_requested: asyncio.Event | None = None
        self._stopped: asyncio.Event | None = None
        self._start_ended: asyncio.Event | None = None
        self._shutdown_task: asyncio.Task[None] | None = None
        self._keeper: LeaseKeeper | None = None

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} queue={self.queue_name!r} backend={self.backend.name!r} "
            f"{self._state}>"
        )

    async def __aenter__(self) -> AsyncMessageDispatcher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

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
        """Messages received and not finished yet (at most :attr:`concurrency`)."""
        return self._held

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._loop_thread = threading.get_ident()
            self._capacity_changed = asyncio.Event()
            self._stop_requested = asyncio.Event()
            self._stopped = asyncio.Event()
        elif self._loop is not loop:
            raise ConfigurationError(
                f"this dispatcher for queue {self.queue_name!r} runs on another event loop; "
                "create one dispatcher per loop"
            )
        return loop

    async def start(self) -> None:
        """Start receiving and handling in background tasks; return once running.

        Calling it again while running does nothing.

        Raises:
            QueueNotFound: The queue does not exist.
            ConfigurationError: The dispatcher was stopped; create a new one.
        """
        loop = self._bind_loop()
        while self._state == "starting":  # another caller is starting it: wait for the result
            assert self._start_ended is not None
            await self._start_ended.wait()
        if self._state == "running":
            return
        if self._state != "new":
            raise ConfigurationError(
                f"this dispatcher for queue {self.queue_name!r} was stopped and cannot "
                "start again; create a new AsyncMessageDispatcher"
            )
        self._state = "starting"
        self._start_ended = asyncio.Event()
        try:
            await self._start_running(loop)
        finally:
            self._start_ended.set()

    async def _start_running(self, loop: asyncio.AbstractEventLoop) -> None:
        # Threads: receives, settlements of every held message, synchronous handlers
        # and the acknowledger never wait for one another.
        self._pool = ThreadPoolExecutor(
            max_workers=self.concurrent_receives + 2 * self.concurrency + 1,
            thread_name_prefix=f"melange-aio-{self.queue_name}",
        )
        try:
            spec = await self._io(self.backend.get_queue, self.queue_name)
            if spec is None:
                raise QueueNotFound(self.queue_name)
        except BaseException:
            if self._state == "starting":  # else stop() was called meanwhile and owns the pool
                self._state = "new"
                self._pool.shutdown(wait=False)
                self._pool = None
            raise
        self._visibility_timeout = spec.visibility_timeout
        self._retention = spec.message_retention_period
        self._fifo = spec.fifo
        if spec.dead_letter is not None:
            self._dead_letter_queue = spec.dead_letter.queue_name
            self._max_receives = spec.dead_letter.max_receive_count
        if self._state != "starting":  # stop() was called meanwhile
            return
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
        self._receivers = [
            loop.create_task(self._receive_loop(), name=f"melange-receiver-{self.queue_name}-{i}")
            for i in range(self.concurrent_receives)
        ]
        self._last_activity = time.monotonic()
        self._state = "running"
        logger.info(
            "dispatching queue %s to %s with concurrency %d (asyncio)",
            self.queue_name,
            ", ".join(c.name for c in self.consumers),
            self.concurrency,
            extra=self._queue_extra,
        )

    async def run(self, *, install_signal_handlers: bool = True) -> None:
        """Start, then wait until :meth:`stop`, SIGTERM or SIGINT has ended the dispatcher.

        Returns normally after a graceful shutdown, so a process whose main
        coroutine awaits it exits with status 0. A second SIGINT while shutting
        down raises :class:`KeyboardInterrupt`. Cancelling the call begins a
        graceful stop too (await :meth:`stop` to wait for it).

        Args:
            install_signal_handlers: Handle SIGTERM and SIGINT while running, with
                :meth:`asyncio.loop.add_signal_handler` (only in the main thread,
                on Unix); the previous handlers are restored on return.

        Raises:
            QueueNotFound: The queue does not exist.
            ConfigurationError: The dispatcher was stopped; create a new one.
        """
        await self.start()
        loop = asyncio.get_running_loop()
        installed: list[tuple[signal.Signals, Any]] = []
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous = signal.getsignal(signum)
                try:
                    loop.add_signal_handler(signum, self._on_signal, signum)
                except (NotImplementedError, RuntimeError):  # not on this platform / loop
                    continue
                installed.append((signum, previous))
        try:
            assert self._stopped is not None
            await self._stopped.wait()
        except asyncio.CancelledError:
            self.request_stop()  # the shutdown goes on in the background; stop() waits for it
            raise
        finally:
            for signum, previous in installed:
                loop.remove_signal_handler(signum)
                if previous is not None:  # None: installed outside Python; leave the default
                    signal.signal(signum, previous)

    def _on_signal(self, signum: signal.Signals) -> None:
        assert self._stop_requested is not None
        if self._stop_requested.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait
        logger.info(
            "received %s: stopping (grace period %gs)",
            signum.name,
            self.grace_period,
            extra=self._queue_extra,
        )
        self.request_stop()

    def request_stop(self) -> None:
        """Begin a graceful stop without waiting for it; idempotent.

        Safe to call from any thread (e.g. a synchronous consumer) and from
        signal handlers. Await :meth:`stop` to wait for the shutdown to finish.
        """
        loop = self._loop
        if loop is None:
            raise ConfigurationError(
                "this dispatcher has not started; await stop() from the event loop instead"
            )
        if threading.get_ident() != self._loop_thread:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing runs
                loop.call_soon_threadsafe(self.request_stop)
            return
        if self._state in ("stopping", "stopped"):
            return
        assert self._stop_requested is not None and self._capacity_changed is not None
        previous = self._state
        self._state = "stopping"
        self._stop_requested.set()
        unstarted = self._cancel_unstarted()
        self._capacity_changed.set()
        shutdown = self._shutdown(unstarted) if previous != "new" else self._close_unstarted()
        self._shutdown_task = loop.create_task(shutdown, name=f"melange-stop-{self.queue_name}")

    async def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully; idempotent.

        Stops receiving, releases messages received but not started (nack with
        no delay, where the backend can), lets running handlers finish within
        :attr:`grace_period`, acknowledges what finished, and closes the backend
        when ``close_backend`` is set. Handlers still running after the grace
        period are cancelled (a synchronous one cannot be; it is abandoned) and
        their messages are not acknowledged: they will be delivered again.

        Args:
            timeout: Longest time to wait for the shutdown to complete; ``None``
                waits until it is done. Awaited from a handler, it never waits.
        """
        self._bind_loop()
        self.request_stop()
        if asyncio.current_task() in self._handlers:
            return  # waiting here would wait for this very handler
        assert self._shutdown_task is not None
        # asyncio.wait, unlike wait_for, never cancels the shutdown on timeout.
        await asyncio.wait({self._shutdown_task}, timeout=timeout)

    async def run_until_idle(
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
                otherwise it keeps running until :meth:`stop` or the end of an
                ``async with`` block.

        Returns:
            A snapshot of :attr:`stats`.
        """
        await self.start()
        began = time.monotonic()
        deadline = None if timeout is None else began + timeout
        assert self._stopped is not None
        while not self._stopped.is_set():
            now = time.monotonic()
            # Idle time counts from this call at the earliest: what came before is done.
            quiet_since = max(self._last_activity, began)
            idle = self._held == 0 and self._pending_acks == 0 and now - quiet_since >= idle_seconds
            if idle or (deadline is not None and now >= deadline):
                break
            await asyncio.sleep(0.01)
        if stop:
            await self.stop()
        return self.stats.snapshot()

    def _cancel_unstarted(self) -> list[_Delivery]:
        """Mark every held message that has not started as cancelled."""
        unstarted = [d for d in self._deliveries if not d.started and not d.cancelled]
        for delivery in unstarted:
            delivery.cancelled = True
        self._waiting.clear()
        return unstarted

    async def _close_unstarted(self) -> None:
        """Stop a dispatcher that never started: only the backend to close."""
        try:
            await self._close_backend()
        finally:
            self._finish_shutdown()

    async def _shutdown(self, unstarted: list[_Delivery]) -> None:
        deadline = time.monotonic() + self.grace_period
        try:
            logger.info(
                "stopping: %d message(s) handling, %d released",
                self._held - len(unstarted),
                len(unstarted),
                extra=self._queue_extra,
            )
            await self._release(unstarted, "released")
            if self._handlers:
                _, running = await asyncio.wait(
                    set(self._handlers), timeout=max(0.0, deadline - time.monotonic())
                )
                if running:
                    logger.warning(
                        "%d handler(s) still running after the %gs grace period; their messages "
                        "are not acknowledged and will be delivered again",
                        len(running),
                        self.grace_period,
                        extra=self._queue_extra,
                    )
                    for task in running:
                        task.cancel()  # a thread running a synchronous handler is abandoned
                    await asyncio.wait(running, timeout=1.0)
            # A receive in progress returns within wait_seconds; its messages are released.
            receive_deadline = max(deadline, time.monotonic()) + self.wait_seconds + 1.0
            receivers = [task for task in self._receivers if not task.done()]
            if receivers:
                _, stuck = await asyncio.wait(
                    receivers, timeout=max(0.0, receive_deadline - time.monotonic())
                )
                for task in stuck:
                    task.cancel()
            pending = [t for t in (self._ack_task, *self._background) if t is not None]
            while pending:  # a release may start as the last acks go out
                _, left = await asyncio.wait(
                    pending, timeout=max(0.0, deadline - time.monotonic()) + 10.0
                )
                if left:
                    break
                pending = [t for t in (self._ack_task, *self._background) if t and not t.done()]
            if self._keeper is not None:
                await self._io(self._keeper.stop, 1.0)
        except Exception:
            logger.exception("error while stopping the dispatcher", extra=self._queue_extra)
        finally:
            await self._close_backend()
            self._finish_shutdown()
            logger.info("stopped", extra=self._queue_extra)

    def _finish_shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)  # an abandoned synchronous handler keeps its thread
        self._state = "stopped"
        assert self._stopped is not None
        self._stopped.set()

    async def _close_backend(self) -> None:
        if not self.close_backend:
            return
        try:
            if self._pool is not None:
                await self._io(self.backend.close)
            else:
                await asyncio.to_thread(self.backend.close)
        except Exception:
            logger.exception("closing the backend failed", extra=self._queue_extra)

    # ---------------------------------------------------------------- threads
    def _io(self, func: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
        """Run a blocking call in the dispatcher's pool, with the caller's context variables."""
        assert self._loop is not None and self._pool is not None
        context = contextvars.copy_context()
        return self._loop.run_in_executor(self._pool, functools.partial(context.run, func, *args))

    def _spawn(self, work: Awaitable[None]) -> None:
        """Run a settlement in the background; the shutdown waits for it."""
        assert self._loop is not None

        async def wrapped() -> None:
            await work

        task = self._loop.create_task(wrapped())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _pause(self, seconds: float) -> None:
        """Sleep for ``seconds``, or less when a stop is requested."""
        assert self._stop_requested is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop_requested.wait(), seconds)

    # -------------------------------------------------------------- receiving
    async def _reserve(self) -> int:
        """Wait for free capacity and reserve up to ``batch_size`` of it; 0 when stopping."""
        assert self._stop_requested is not None and self._capacity_changed is not None
        while not self._stop_requested.is_set():
            free = self.concurrency - self._held - self._reserved
            if free > 0:
                count = min(free, self.batch_size)
                self._reserved += count
                return count
            self._capacity_changed.clear()
            await self._capacity_changed.wait()
        return 0

    def _unreserve(self, count: int) -> None:
        assert self._capacity_changed is not None
        self._reserved -= count
        self._capacity_changed.set()

    async def _receive_loop(self) -> None:
        assert self._stop_requested is not None
        failures = 0
        while True:
            count = await self._reserve()
            if not count:
                return
            received_at = time.monotonic()
            try:
                received = await self._io(
                    self.backend.receive, self.queue_name, count, self.wait_seconds
                )
            except BackendClosed:
                self._unreserve(count)
                if not self._stop_requested.is_set():
                    logger.error(
                        "the backend was closed while the dispatcher was running; stopping",
                        extra=self._queue_extra,
                    )
                    self.request_stop()
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
                await self._pause(delay)
                continue
            failures = 0
            await self._accept(received, count, received_at)

    async def _accept(
        self, received: list[ReceivedMessage], reserved: int, received_at: float
    ) -> None:
        """Take the messages of one receive call: start their handlers, or release them."""
        assert self._stop_requested is not None and self._capacity_changed is not None
        expires_at = received_at + self._visibility_timeout
        deliveries = [
            _Delivery(message, Lease(message, received_at, expires_at)) for message in received
        ]
        self._reserved -= reserved
        self._capacity_changed.set()
        if not received:
            return
        self.stats.add("received", len(received))
        self._hooks.on_receive(self.queue_name, received)
        if self._stop_requested.is_set():
            for delivery in deliveries:
                delivery.cancelled = True
            await self._release(deliveries, "released")
            return
        self._held += len(deliveries)
        self._deliveries.update(deliveries)
        self._last_activity = time.monotonic()
        self.stats.peak("max_in_flight", self._held)
        if self._keeper is not None:
            self._keeper.track([d.lease for d in deliveries])
        for delivery in deliveries:
            self._schedule(delivery)
        logger.debug("received %d message(s)", len(received), extra=self._queue_extra)

    def _schedule(self, delivery: _Delivery) -> None:
        """Start a delivery's handler, or queue it behind the running message of its group."""
        group = delivery.received.group_id
        if group is not None:
            if group in self._active_groups:
                self._waiting.setdefault(group, deque()).append(delivery)
                return
            self._active_groups.add(group)
        self._start(delivery)

    def _start(self, delivery: _Delivery) -> None:
        assert self._loop is not None
        task = self._loop.create_task(self._work(delivery))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    # --------------------------------------------------------------- handling
    async def _work(self, delivery: _Delivery) -> None:
        if delivery.cancelled:
            return
        delivery.started = True
        acked = False
        try:
            acked = await self._handle(delivery)
        except Exception:  # a bug here must not lose the capacity it holds
            logger.exception(
                "internal error while handling message %s; it will be delivered again",
                delivery.received.message_id,
                extra=_extra(delivery.received),
            )
        finally:
            self._finish(delivery, acked)

    def _finish(self, delivery: _Delivery, acked: bool) -> None:
        """Free the delivery's capacity and start the next message of its group."""
        assert self._capacity_changed is not None
        group = delivery.received.group_id
        behind: list[_Delivery] = []
        self._deliveries.discard(delivery)
        self._held -= 1
        self._last_activity = time.monotonic()
        if group is not None:
            waiting = self._waiting.pop(group, None)
            if waiting and acked:
                self._start(waiting.popleft())  # the group stays active
                if waiting:
                    self._waiting[group] = waiting
            else:
                self._active_groups.discard(group)
                if waiting:
                    # Keep the group's order: the messages behind a failed one go back
                    # to the broker, which hands them out again after it.
                    behind = list(waiting)
                    for other in behind:
                        other.cancelled = True
        self._capacity_changed.set()
        if self._keeper is not None:
            self._keeper.release(delivery.lease)
        if behind:
            self._spawn(self._release(behind, "released"))

    async def _release(self, deliveries: list[_Delivery], counter: str) -> None:
        """Drop messages that were not handled and make them receivable again (nack, no delay)."""
        if not deliveries:
            return
        assert self._capacity_changed is not None
        for delivery in deliveries:
            if delivery in self._deliveries:
                self._deliveries.discard(delivery)
                self._held -= 1
        self._capacity_changed.set()
        if self._keeper is not None:
            for delivery in deliveries:
                self._keeper.release(delivery.lease)
        self.stats.add(counter, len(deliveries))
        if not self._can_nack:
            return  # they come back after the visibility timeout
        try:
            await self._io(self.backend.nack, [d.received for d in deliveries], 0.0)
        except Exception as exc:
            logger.warning(
                "could not release %d message(s) (%s); they come back after the visibility timeout",
                len(deliveries),
                type(exc).__name__,
                extra=self._queue_extra,
            )

    async def _handle(self, delivery: _Delivery) -> bool:
        """Decode and handle one message; settle it. Return whether it is being acknowledged."""
        received = delivery.received
        try:
            message = self.serializers.decode(received)
        except Exception as exc:  # SerializationError, or a serializer's own bug
            self.stats.add("undecodable")
            outcome = await self._io(
                self._apply_outcome, received, self.on_undecodable, "undecodable", exc
            )
            self._hooks.on_undecodable(self.queue_name, received, exc, outcome)
            return self._settle_outcome(delivery, outcome)
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
            outcome = await self._io(
                self._apply_outcome, received, self.on_unhandled, "unhandled", None
            )
            self._hooks.on_unhandled(self.queue_name, message, outcome)
            return self._settle_outcome(delivery, outcome)
        busy = False
        for candidate in accepting:
            if candidate in self._async_consumers:
                result = await self._call_async(candidate, message, received)
            else:
                result = await self._io(self._call_sync, candidate, message, received)
            if result == "busy":
                busy = True
            elif isinstance(result, BaseException):
                failures.append((candidate, result))
        if failures:
            await self._io(self._retry, received, message, failures)
            return False
        if busy:
            await self._io(self._busy, received)
            return False
        self.stats.add("handled")
        self._queue_ack(delivery)
        return True

    def _settle_outcome(self, delivery: _Delivery, outcome: Outcome) -> bool:
        if outcome in ("ack", "dead_letter"):
            self._queue_ack(delivery)
            return True
        return False

    # One consumer on one message under the deduplication cache: the steps around
    # process() are synchronous, so both kinds of consumer share them.
    def _claim(self, candidate: Consumer, received: ReceivedMessage) -> ClaimResult | BaseException:
        assert self.dedup is not None
        key = f"{candidate.name}:{received.message_id}"
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
        return claim

    def _handled(
        self, candidate: Consumer, message: Message, received: ReceivedMessage, seconds: float
    ) -> None:
        if self.dedup is not None:
            key = f"{candidate.name}:{received.message_id}"
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

    def _unclaim(self, candidate: Consumer, received: ReceivedMessage) -> None:
        if self.dedup is None:
            return
        key = f"{candidate.name}:{received.message_id}"
        try:
            self.dedup.release(key)
        except Exception as exc:
            logger.warning(
                "could not release the deduplication claim %s (%s)",
                key,
                type(exc).__name__,
                extra=_extra(received, candidate.name),
            )

    def _call_sync(
        self, candidate: Consumer, message: Message, received: ReceivedMessage
    ) -> _CallResult | BaseException:
        """Run a synchronous consumer; in a pool thread."""
        if self.dedup is not None:
            claim = self._claim(candidate, received)
            if claim != "claimed":
                return "skipped" if claim == "done" else claim
        started = time.monotonic()
        context = self._enter_handling(message, candidate, received)
        try:
            result = candidate.process(message)
            if inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()  # never awaited: close it to avoid a RuntimeWarning
                raise ConfigurationError(
                    f"consumer {candidate.name!r} returned an awaitable from a plain process(); "
                    "declare it `async def process` (or subclass melange.aio.AsyncConsumer)"
                )
        except BaseException as exc:  # SystemExit in a handler thread is a failure too
            _exit_handling(context, exc, received, candidate.name)
            self._unclaim(candidate, received)
            return exc
        _exit_handling(context, None, received, candidate.name)
        self._handled(candidate, message, received, time.monotonic() - started)
        return "ok"

    async def _call_async(
        self, candidate: Consumer, message: Message, received: ReceivedMessage
    ) -> _CallResult | BaseException:
        """Run an asynchronous consumer on the event loop."""
        if self.dedup is not None:
            claim = await self._io(self._claim, candidate, received)
            if claim != "claimed":
                return "skipped" if claim == "done" else claim
        started = time.monotonic()
        # Entered and left in this task, so context-variable hooks (tracing) see the handler.
        context = self._enter_handling(message, candidate, received)
        try:
            result: Any = candidate.process(message)
            if inspect.isawaitable(result):
                await result
        except BaseException as exc:
            _exit_handling(context, exc, received, candidate.name)
            if self.dedup is not None:
                if isinstance(exc, Exception):
                    await self._io(self._unclaim, candidate, received)
                else:  # cancelled (grace period over): no await left; release in the background
                    assert self._pool is not None
                    self._pool.submit(self._unclaim, candidate, received)
            if not isinstance(exc, Exception):
                raise
            return exc
        _exit_handling(context, None, received, candidate.name)
        seconds = time.monotonic() - started
        if self.dedup is not None:
            await self._io(self._handled, candidate, message, received, seconds)
        else:
            self._handled(candidate, message, received, seconds)
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
    # These run in a pool thread: they call the backend.
    def _retry_delay(self, received: ReceivedMessage) -> float:
        return min(self.retry.delay(received.receive_count), self._max_delay)

    def _retry(
        self,
        received: ReceivedMessage,
        message: Message,
        failures: list[tuple[Consumer, BaseException]],
    ) -> None:
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

    def _busy(self, received: ReceivedMessage) -> None:
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
        self, received: ReceivedMessage, outcome: Outcome, reason: str, error: Exception | None
    ) -> Outcome:
        """Apply the undecodable/unhandled policy; return the outcome actually applied.

        The caller acknowledges the message when the result is ``"ack"`` or ``"dead_letter"``.
        """
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

    def _dead_letter(self, received: ReceivedMessage, reason: str) -> bool:
        """Publish the message unchanged to the dead-letter queue; return whether it worked."""
        target = self._dead_letter_queue
        assert target is not None
        outgoing = OutgoingMessage(
            body=received.body,
            attributes=dict(received.attributes),
            group_id=received.group_id,
            # A FIFO dead-letter queue drops a second copy if we crash before the ack.
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
        """Acknowledge in the background; acks that arrive while one call runs share the next."""
        assert self._loop is not None
        self._pending_acks += 1
        self._ack_queue.append(delivery)
        if self._ack_task is None or self._ack_task.done():
            self._ack_task = self._loop.create_task(self._flush_acks())

    async def _flush_acks(self) -> None:
        while self._ack_queue:
            count = min(len(self._ack_queue), _ACK_BATCH)
            batch = [self._ack_queue.popleft() for _ in range(count)]
            try:
                await self._io(self._send_acks, batch)
            except Exception:  # _send_acks logs the broker's errors; this is a bug
                logger.exception("acknowledging failed", extra=self._queue_extra)
            finally:
                self._pending_acks -= len(batch)
                self._last_activity = time.monotonic()

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


# ------------------------------------------------------------------ helpers
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
    if isinstance(consumers, Consumer) or not isinstance(consumers, Sequence):
        raise ConfigurationError(
            "consumers must be a list of Consumer objects, e.g. [record_payment]"
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
