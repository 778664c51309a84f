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

Failing receives are retried with capped backoff and logged once per outage,
and :meth:`~AsyncMessageDispatcher.start` waits up to ``startup_timeout`` for an
unreachable broker, as in the synchronous dispatcher.

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
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from melange._options import DispatcherOptions, positive_int
from melange._outage import StartupWait
from melange._schedule import Schedule
from melange.backends.base import MessagingBackend, ReceivedMessage
from melange.consumers import Consumer, is_async_consumer
from melange.dispatcher import DispatchStats, Outcome
from melange.exceptions import BackendClosed, BackendUnavailable, ConfigurationError
from melange.lease import LeaseKeeper, LeasePolicy
from melange.message import Message
from melange.observability import Hooks
from melange.retry import RetryPolicy
from melange.serializers import SerializerRegistry
from melange.settlement import CallResult, Delivery, exit_handling, log_extra

if TYPE_CHECKING:
    from melange.dedup import DedupCache
    from melange.topology import QueueSpec

__all__ = ["AsyncMessageDispatcher"]

logger = logging.getLogger("melange.dispatcher")

_T = TypeVar("_T")

_AWAITABLE_HINT = (
    " from a plain process(); declare it `async def process`"
    " (or subclass melange.aio.AsyncConsumer)"
)


class AsyncMessageDispatcher(DispatcherOptions):
    """Receives messages from one queue and hands them to consumers, as asyncio tasks.

    Examples:
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
            hence the most handlers running at once; default
            ``batch_size * concurrent_receives``, so that every receive can ask
            for a full batch.
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
        close_backend: Also close ``backend`` when the dispatcher stops. Off by
            default: the caller opened the backend, so the caller closes it (it
            may share it with publishers or another dispatcher).
        startup_timeout: Seconds :meth:`start` waits for a broker that cannot be
            reached (``BackendUnavailable``) before it raises; 0 raises at once.
        reconnect_backoff: Waits between attempts while receives fail, and while
            waiting for the broker at start-up; default 0.1 s doubling up to 5 s,
            with 20% jitter.

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
        concurrency: int | None = None,
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
            asynchronous=True,
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
        self.concurrency = (
            self.batch_size * self.concurrent_receives
            if concurrency is None
            else positive_int("concurrency", concurrency)
        )

        self._async_consumers = frozenset(
            candidate for candidate in self.consumers if is_async_consumer(candidate)
        )
        # Everything below is touched only from the event loop's thread.
        self._state: Literal["new", "starting", "running", "stopping", "stopped"] = "new"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._schedule = Schedule(self.concurrency, self.batch_size)
        self._ack_slots: asyncio.Semaphore | None = None
        self._ack_tasks: set[asyncio.Task[None]] = set()
        self._ack_timer: asyncio.TimerHandle | None = None
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
        return self._settlement.queue_extra

    # ------------------------------------------------------------- lifecycle
    @property
    def running(self) -> bool:
        """Whether the dispatcher has started and not begun to stop."""
        return self._state == "running"

    @property
    def in_flight(self) -> int:
        """Messages received and not finished yet (at most :attr:`concurrency`)."""
        return self._schedule.held

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

        While the broker cannot be reached (``BackendUnavailable``), waits for it
        up to ``startup_timeout`` seconds, retrying with ``reconnect_backoff``;
        :meth:`request_stop` (or a signal under :meth:`run`) ends the wait, and
        then this returns without starting. Calling it again while running does
        nothing.

        Raises:
            QueueNotFound: The queue does not exist (raised at once).
            BackendUnavailable: The broker could not be reached within
                ``startup_timeout``; the last attempt's error.
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
        # and the acknowledgements never wait for one another.
        self._pool = ThreadPoolExecutor(
            max_workers=2 * self.concurrent_receives + 2 * self.concurrency + 1,
            thread_name_prefix=f"melange-aio-{self.queue_name}",
        )
        try:
            spec = await self._wait_for_queue()
            if self._state == "starting":
                self._settlement.load(spec)
        except BaseException:
            if self._state == "starting":  # else stop() was called meanwhile and owns the pool
                self._state = "new"
                self._pool.shutdown(wait=False)
                self._pool = None
            raise
        if self._state != "starting":  # stop() was called meanwhile
            return
        self._keeper = self._settlement.lease_keeper(self.lease)
        self._schedule.acks = self._settlement.ack_buffer()
        self._receivers = [
            loop.create_task(self._receive_loop(), name=f"melange-receiver-{self.queue_name}-{i}")
            for i in range(self.concurrent_receives)
        ]
        self._schedule.last_activity = time.monotonic()
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
        graceful stop too (await :meth:`stop` to wait for it). The signals also
        end the wait for an unreachable broker at start-up (see :meth:`start`).

        Args:
            install_signal_handlers: Handle SIGTERM and SIGINT while running, with
                :meth:`asyncio.loop.add_signal_handler` (only in the main thread,
                on Unix); the previous handlers are restored on return.

        Raises:
            QueueNotFound: The queue does not exist.
            BackendUnavailable: The broker could not be reached within ``startup_timeout``.
            ConfigurationError: The dispatcher was stopped; create a new one.
        """
        loop = self._bind_loop()  # request_stop() needs the loop: a signal may come during start()
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
            await self.start()
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
        unstarted = self._schedule.cancel_unstarted()
        self._capacity_changed.set()
        if previous in ("new", "starting"):  # nothing runs (start() gives up its wait)
            shutdown = self._close_unstarted()
        else:
            shutdown = self._shutdown(unstarted)
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
            quiet_since = max(self._schedule.last_activity, began)
            idle = self._schedule.idle and now - quiet_since >= idle_seconds
            if idle or (deadline is not None and now >= deadline):
                break
            await asyncio.sleep(0.01)
        if stop:
            await self.stop()
        return self.stats.snapshot()

    async def _close_unstarted(self) -> None:
        """Stop a dispatcher that never started: only the backend to close."""
        try:
            await self._close_backend()
        finally:
            self._finish_shutdown()

    async def _shutdown(self, unstarted: list[Delivery]) -> None:
        deadline = time.monotonic() + self.grace_period
        try:
            logger.info(
                "stopping: %d message(s) handling, %d released",
                self._schedule.held - len(unstarted),
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
            self._flush_ack_buffer()  # abandoned handlers never settle: send what finished now
            pending = [*self._ack_tasks, *self._background]
            while pending:  # a release may start as the last acks go out
                _, left = await asyncio.wait(
                    pending, timeout=max(0.0, deadline - time.monotonic()) + 10.0
                )
                if left:
                    break
                pending = [t for t in (*self._ack_tasks, *self._background) if not t.done()]
            if self._keeper is not None:
                await self._io(self._keeper.stop, 1.0)
        except Exception:
            logger.exception("error while stopping the dispatcher", extra=self._queue_extra)
        finally:
            await self._close_backend()
            self._finish_shutdown()
            logger.info("stopped", extra=self._queue_extra)

    def _finish_shutdown(self) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        if self._pool is not None:
            self._pool.shutdown(wait=False)  # an abandoned synchronous handler keeps its thread
        self._state = "stopped"
        assert self._stopped is not None
        self._stopped.set()

    async def _close_backend(self) -> None:
        if not self.close_backend:
            return
        if self._pool is not None:
            await self._io(self._settlement.close_backend)
        else:
            await asyncio.to_thread(self._settlement.close_backend)

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

    async def _wait_for_queue(self) -> QueueSpec | None:
        """Look the queue up, waiting for an unreachable broker; ``None`` once stopping."""
        assert self._stop_requested is not None
        waiting = StartupWait(
            self.queue_name, self.startup_timeout, self.reconnect_backoff, self._queue_extra
        )
        while True:
            try:
                spec = await self._io(self.backend.get_queue, self.queue_name)
            except Exception as exc:
                if self._stop_requested.is_set():  # e.g. the stop closed the backend
                    return None
                delay = waiting.failed(exc) if isinstance(exc, BackendUnavailable) else None
                if delay is None:
                    raise
                await self._pause(delay)
                if self._stop_requested.is_set():  # the stop may have shut the pool down
                    return None
                continue
            waiting.succeeded()
            return spec

    # -------------------------------------------------------------- receiving
    async def _reserve(self) -> int:
        """Wait for free capacity and reserve up to ``batch_size`` of it; 0 when stopping."""
        assert self._stop_requested is not None and self._capacity_changed is not None
        fill_deadline: float | None = None
        while not self._stop_requested.is_set():
            count, wait, fill_deadline = self._schedule.reserve(time.monotonic(), fill_deadline)
            if count:
                return count
            self._capacity_changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._capacity_changed.wait(), wait)
        return 0

    def _unreserve(self, count: int) -> None:
        assert self._capacity_changed is not None
        self._schedule.unreserve(count)
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
                await self._pause(self._settlement.receive_failed(failures, exc))
                continue
            failures = 0
            self._settlement.receive_succeeded()
            await self._accept(received, count, received_at)

    async def _accept(
        self, received: list[ReceivedMessage], reserved: int, received_at: float
    ) -> None:
        """Take the messages of one receive call: start their handlers, or release them."""
        assert self._stop_requested is not None and self._capacity_changed is not None
        deliveries = self._settlement.deliveries(received, received_at)
        start, release = self._schedule.accept(
            deliveries, reserved, stopping=self._stop_requested.is_set(), now=time.monotonic()
        )
        self._capacity_changed.set()
        if release:
            await self._release(release, "released")
            return
        if not deliveries:
            return
        self.stats.peak("max_in_flight", self._schedule.held)
        if self._keeper is not None:
            self._keeper.track([d.lease for d in deliveries])
        for delivery in start:
            self._start(delivery)
        logger.debug("received %d message(s)", len(received), extra=self._queue_extra)

    def _start(self, delivery: Delivery) -> None:
        assert self._loop is not None
        task = self._loop.create_task(self._work(delivery))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    # --------------------------------------------------------------- handling
    async def _work(self, delivery: Delivery) -> None:
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
                extra=log_extra(delivery.received),
            )
        finally:
            self._finish(delivery, acked)

    def _finish(self, delivery: Delivery, acked: bool) -> None:
        """Free the delivery's capacity and start the next message of its group."""
        assert self._capacity_changed is not None
        following, behind, send = self._schedule.finish(delivery, acked, time.monotonic())
        self._send_all(send)
        if following is not None:
            self._start(following)
        self._capacity_changed.set()
        if self._keeper is not None:
            self._keeper.release(delivery.lease)
        if behind:
            self._spawn(self._release(behind, "released"))

    async def _release(self, deliveries: list[Delivery], counter: str) -> None:
        """Drop messages that were not handled and make them receivable again (nack, no delay)."""
        if not deliveries:
            return
        assert self._capacity_changed is not None
        self._send_all(self._schedule.release(deliveries, time.monotonic()))
        self._capacity_changed.set()
        if self._keeper is not None:
            for delivery in deliveries:
                self._keeper.release(delivery.lease)
        await self._io(self._settlement.release, deliveries, counter)

    async def _handle(self, delivery: Delivery) -> bool:
        """Decode and handle one message; settle it. Return whether to acknowledge it."""
        settlement = self._settlement
        received = delivery.received
        try:
            message = self.serializers.decode(received)
        except Exception as exc:  # SerializationError, or a serializer's own bug
            return await self._io(settlement.undecodable, received, self.on_undecodable, exc)
        accepting, failures = settlement.select(self.consumers, message)
        if not accepting and not failures:
            return await self._io(settlement.unhandled, received, self.on_unhandled, message)
        busy = False
        for candidate in accepting:
            if candidate in self._async_consumers:
                result = await self._call_async(candidate, message, received)
            else:
                result = await self._io(
                    settlement.call_sync, candidate, message, received, _AWAITABLE_HINT
                )
            if result == "busy":
                busy = True
            elif isinstance(result, BaseException):
                failures.append((candidate, result))
        if failures:
            await self._io(settlement.retry, received, message, failures)
            return False
        if busy:
            await self._io(settlement.busy, received)
            return False
        self.stats.add("handled")
        return True

    async def _call_async(
        self, candidate: Consumer, message: Message, received: ReceivedMessage
    ) -> CallResult | BaseException:
        """Run an asynchronous consumer on the event loop."""
        if self.dedup is not None:
            claim = await self._io(self._settlement.claim, candidate, received)
            if claim != "claimed":
                return "skipped" if claim == "done" else claim
        started = time.monotonic()
        # Entered and left in this task, so context-variable hooks (tracing) see the handler.
        context = self._settlement.enter_handling(message, candidate, received)
        try:
            result: Any = candidate.process(message)
            if inspect.isawaitable(result):
                await result
        except BaseException as exc:
            exit_handling(context, exc, received, candidate.name)
            if self.dedup is not None:
                if isinstance(exc, Exception):
                    await self._io(self._settlement.unclaim, candidate, received)
                else:  # cancelled (grace period over): no await left; release in the background
                    assert self._pool is not None
                    self._pool.submit(self._settlement.unclaim, candidate, received)
            if not isinstance(exc, Exception):
                raise
            return exc
        exit_handling(context, None, received, candidate.name)
        seconds = time.monotonic() - started
        if self.dedup is not None:
            await self._io(self._settlement.handled, candidate, message, received, seconds)
        else:
            self._settlement.handled(candidate, message, received, seconds)
        return "ok"

    # ----------------------------------------------------------------- acking
    def _send_all(self, batches: list[list[Delivery]]) -> None:
        """Start the acknowledgement calls, and a timer for acks left waiting."""
        assert self._loop is not None
        for batch in batches:
            self._send(batch)
        due = self._schedule.acks.overdue(time.monotonic())
        if due is not None and self._ack_timer is None:  # a slow neighbour must not hold it
            self._ack_timer = self._loop.call_later(max(0.0, due), self._on_ack_timer)

    def _on_ack_timer(self) -> None:
        assert self._loop is not None
        self._ack_timer = None
        acks = self._schedule.acks
        due = acks.overdue(time.monotonic())
        if due is not None and due <= 0:
            for batch in acks.take_overdue(time.monotonic()):
                self._send(batch)
            due = acks.overdue(time.monotonic())
        if due is not None:
            self._ack_timer = self._loop.call_later(max(0.0, due), self._on_ack_timer)

    def _flush_ack_buffer(self) -> None:
        """Send every waiting ack now."""
        for batch in self._schedule.acks.take_all():
            self._send(batch)

    def _send(self, batch: list[Delivery]) -> None:
        assert self._loop is not None
        if self._ack_slots is None:
            # As many ack calls at once as receives, plus one: deletes keep up with receives.
            self._ack_slots = asyncio.Semaphore(self.concurrent_receives + 1)
        task = self._loop.create_task(self._send_acks(batch, self._ack_slots))
        self._ack_tasks.add(task)
        task.add_done_callback(self._ack_tasks.discard)

    async def _send_acks(self, batch: list[Delivery], slots: asyncio.Semaphore) -> None:
        try:
            async with slots:
                await self._io(self._settlement.send_acks, batch)
        except Exception:  # send_acks logs the broker's errors; this is a bug
            logger.exception("acknowledging failed", extra=self._queue_extra)
        finally:
            self._schedule.acks_sent(len(batch), time.monotonic())
