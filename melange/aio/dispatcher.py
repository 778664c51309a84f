"""The consumer runtime on asyncio.

:class:`AsyncMessageDispatcher` drives the runtime of :mod:`melange._runtime`
as :class:`melange.dispatcher.MessageDispatcher` does with threads: the same
steps, options (:class:`~melange.dispatcher_config.DispatcherConfig`),
guarantees, logs and counters, with handlers as event-loop tasks. Asynchronous
consumers (``async def process``) run on the event loop; synchronous ones, and
every backend and deduplication-cache call (the contract is synchronous), in
the dispatcher's own thread pool, so neither a blocking handler nor a long poll
stalls the loop. Its own pool rather than the loop's default executor: long
polls and slow handlers cannot starve the application's ``to_thread`` calls, nor
be starved by them, and ``asyncio.run`` does not wait for a pending poll on exit;
its threads are daemon threads, so a handler abandoned after the grace period
does not keep the process alive (:mod:`melange.aio._daemon_pool`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import functools
import signal
import threading
import time
from collections.abc import Callable, Collection, Coroutine, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from melange._runtime import HANDOFF_DELAY, SLOW_HANDLER, Runtime, run_now
from melange.aio._daemon_pool import DaemonPool
from melange.backends.base import MessagingBackend, ReceivedMessage
from melange.consumers import Consumer
from melange.dispatcher_config import DispatcherConfig, DispatcherOptions, positive_int
from melange.exceptions import ConfigurationError
from melange.serializers import SerializerRegistry
from melange.settlement import Delivery, DispatchStats

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["AsyncMessageDispatcher"]

_T = TypeVar("_T")


class AsyncMessageDispatcher(Runtime):
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
        config: The options, as one :class:`~melange.dispatcher_config.DispatcherConfig`.
        concurrency: This driver's name for the ``workers`` option (the most
            messages held, hence handlers running, at once).
        **options: Or the options as keywords (see
            :class:`~melange.dispatcher_config.DispatcherConfig`). Hooks are
            called from the event loop and from the dispatcher's threads.

    Raises:
        ConfigurationError: An argument is invalid; nothing is started.
    """

    asynchronous = True
    _awaitable_hint = (
        " from a plain process(); declare it `async def process`"
        " (or subclass melange.aio.AsyncConsumer)"
    )

    def __init__(
        self,
        backend: MessagingBackend,
        queue_name: str,
        consumers: Sequence[Consumer],
        serializers: SerializerRegistry | None = None,
        *,
        config: DispatcherConfig | None = None,
        concurrency: int | None = None,
        **options: Unpack[DispatcherOptions],
    ) -> None:
        given = dict(options)
        if concurrency is not None:
            if given.get("workers") is not None:
                raise ConfigurationError("give concurrency or workers, not both (they are one)")
            given["workers"] = positive_int("concurrency", concurrency)
        super().__init__(backend, queue_name, consumers, serializers, config, given)
        # Everything below is touched only from the event loop's thread.
        self._lock = contextlib.nullcontext()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._pool: DaemonPool | None = None
        self._ack_slots: asyncio.Semaphore | None = None
        self._ack_tasks: set[asyncio.Task[None]] = set()
        self._ack_timer: asyncio.TimerHandle | None = None
        self._receivers: list[asyncio.Task[None]] = []
        self._handlers: set[asyncio.Task[None]] = set()
        self._runs: list[collections.deque[Delivery]] = []  # batches handled as one run
        # A backend in this process (memory) is called on the loop: no trip to the pool.
        self._on_loop = backend.calls_block is False
        self._background: set[asyncio.Task[None]] = set()
        self._capacity_waiters: list[asyncio.Future[None]] = []  # receive loops waiting
        self._state_changed = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._stopped = asyncio.Event()

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
    def concurrency(self) -> int:
        """The most messages held at once, hence the most handlers running at once."""
        return self.config.capacity

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._loop_thread = threading.get_ident()
        elif self._loop is not loop:
            raise ConfigurationError(
                f"this dispatcher for queue {self.queue_name!r} runs on another event loop; "
                "create one dispatcher per loop"
            )
        return loop

    # ------------------------------------------------------------ public API
    async def start(self) -> None:
        """Start receiving and handling in background tasks; return once running.

        As :meth:`melange.dispatcher.MessageDispatcher.start`, awaited;
        :meth:`request_stop` (or a signal under :meth:`run`) ends a wait for an
        unreachable broker.
        """
        self._bind_loop()
        await self._start()

    async def run(self, *, install_signal_handlers: bool = True) -> None:
        """Start, then wait until :meth:`stop`, SIGTERM or SIGINT has ended the dispatcher.

        As :meth:`melange.dispatcher.MessageDispatcher.run`, awaited; cancelling
        the call begins a graceful stop too (await :meth:`stop` to wait for it).

        Args:
            install_signal_handlers: Handle SIGTERM and SIGINT while running, with
                :meth:`asyncio.loop.add_signal_handler` (only in the main thread,
                on Unix); the previous handlers are restored on return.
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
            await self._start()
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
        self._stop_signal(signum)
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
        self._request_stop()

    async def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully; idempotent.

        As :meth:`melange.dispatcher.MessageDispatcher.stop`; handlers still
        running after the grace period are cancelled (a synchronous one cannot
        be; it is abandoned) and their messages will be delivered again.

        Args:
            timeout: Longest time to wait for the shutdown to complete; ``None``
                waits until it is done. Awaited from a handler, it never waits.
        """
        self._bind_loop()
        self.request_stop()
        if asyncio.current_task() in self._handlers:
            return  # waiting here would wait for this very handler
        # asyncio.wait, unlike wait_for, never cancels what it waits for.
        waiter = asyncio.ensure_future(self._stopped.wait())
        try:
            await asyncio.wait({waiter}, timeout=timeout)
        finally:
            waiter.cancel()

    async def run_until_idle(
        self, idle_seconds: float = 1.0, timeout: float | None = None, *, stop: bool = False
    ) -> DispatchStats:
        """Run until nothing was received or handled for ``idle_seconds``; for tests and scripts.

        As :meth:`melange.dispatcher.MessageDispatcher.run_until_idle`, awaited;
        without ``stop`` the dispatcher keeps running until :meth:`stop` or the
        end of an ``async with`` block.

        Returns:
            A snapshot of :attr:`stats`.
        """
        self._bind_loop()
        return await self._run_until_idle(idle_seconds, timeout, stop)

    # ----------------------------------------------------- driver primitives
    def _io(self, func: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
        """Run a blocking call in the dispatcher's pool, with the caller's context variables."""
        assert self._loop is not None
        context = contextvars.copy_context()
        return self._loop.run_in_executor(self._pool, functools.partial(context.run, func, *args))

    async def _receive_call(self, count: int) -> list[ReceivedMessage]:
        if self._on_loop:  # what is there, at once; a wait for more goes to the pool
            received = self.backend.receive(self.queue_name, count, 0.0)
            if received or not self.config.wait_seconds:
                return received
        return await self._io(
            self.backend.receive, self.queue_name, count, self.config.wait_seconds
        )

    async def _ack_call(self, batch: list[Delivery]) -> None:
        if self._on_loop:
            self._settlement.send_acks(batch)
        else:
            await self._io(self._settlement.send_acks, batch)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop_requested.wait(), seconds)

    def _sleep(self, seconds: float) -> Coroutine[Any, Any, None]:
        return asyncio.sleep(seconds)

    async def _wait_capacity(self, seconds: float | None) -> None:
        # A future and a timer, not wait_for(): that wraps the wait in a task, once a batch.
        assert self._loop is not None
        waiter = self._loop.create_future()
        self._capacity_waiters.append(waiter)
        timer = None if seconds is None else self._loop.call_later(seconds, _wake, waiter)
        try:
            await waiter
        finally:
            if timer is not None:
                timer.cancel()
                with contextlib.suppress(ValueError):  # woken by the timer: still listed
                    self._capacity_waiters.remove(waiter)

    async def _wait_state(self) -> None:
        self._state_changed.clear()
        await self._state_changed.wait()

    def _wait_stopped(self) -> Coroutine[Any, Any, None]:
        return self.stop()

    def _notify(self, *, state: bool = False) -> None:
        waiters, self._capacity_waiters = self._capacity_waiters, []
        for waiter in waiters:
            _wake(waiter)
        if state:
            self._state_changed.set()

    def _dispatch(self, deliveries: list[Delivery]) -> None:
        if self._slow_handlers or len(deliveries) < 2:
            for delivery in deliveries:
                self._task(self._handlers, self._work(delivery))
            return
        # Handlers fast so far: the batch is handled one message after another, by one
        # pool thread (synchronous consumers: one trip to the pool, not one per message)
        # or by one task (asynchronous ones: one task, not one per message).
        run = collections.deque(deliveries)
        for delivery in deliveries:  # taken from the run by exactly one side (see _handle_sync_run)
            delivery.started = True
        self._runs.append(run)
        self._task(self._handlers, self._work_run(run))

    async def _work_run(self, run: collections.deque[Delivery]) -> None:
        """Handle ``run`` (in this task, or in a pool thread); free the capacity on the loop.

        A handler still running after :data:`~melange._runtime.HANDOFF_DELAY` (it
        waits, or blocks its thread) makes a timer hand the rest of ``run`` out:
        the messages behind it must not wait as long.
        """
        assert self._loop is not None
        queued = list(run)
        finished: list[tuple[Delivery, bool]] = []
        reported = [0]  # finished[:reported[0]] had their capacity freed already
        handed: list[Delivery] = []  # given tasks of their own, which report them
        timer = self._loop.call_later(
            HANDOFF_DELAY, self._run_is_slow, run, finished, reported, handed
        )
        try:
            if self._async_consumers:
                self._slow_handlers = await self._handle_async_run(run, finished)
            else:
                self._slow_handlers = await self._io(self._handle_sync_run, run, finished)
        except BaseException:
            # Cancelled past the grace period: the handler that runs is cancelled (a
            # thread goes on with the message it holds), and it is not acknowledged.
            finished = list(finished)
            elsewhere = {id(delivery) for delivery in (*(d for d, _ in finished), *run, *handed)}
            finished += [(d, False) for d in queued if id(d) not in elsewhere]
            raise
        finally:
            timer.cancel()
            self._report(finished[reported[0] :])
            self._hand_out(run)  # a slow handler (or a failure) left some
            self._runs.remove(run)

    def _run_is_slow(
        self,
        run: collections.deque[Delivery],
        finished: list[tuple[Delivery, bool]],
        reported: list[int],
        handed: list[Delivery],
    ) -> None:
        """The timer of :meth:`_work_run`: hand out the rest, report what finished before."""
        self._slow_handlers = True
        handed += self._hand_out(run)
        reported[0] = len(finished)
        self._report(finished[: reported[0]])

    async def _handle_async_run(
        self, run: collections.deque[Delivery], finished: list[tuple[Delivery, bool]]
    ) -> bool:
        """:meth:`~melange._runtime.Runtime._handle_sync_run` on the loop, for ``async`` consumers.

        Stops after a handler took :data:`~melange._runtime.SLOW_HANDLER` or more; a
        handler still awaiting after :data:`~melange._runtime.HANDOFF_DELAY` gets the
        rest of ``run`` handed out (see :meth:`_work_run`).
        """
        while run:
            delivery = run.popleft()
            began = time.monotonic()
            finished.append((delivery, await self._handle(delivery)))
            if time.monotonic() - began >= SLOW_HANDLER:
                return True
        return False

    def _report(self, finished: list[tuple[Delivery, bool]]) -> None:
        """Free the capacity of handled messages and queue their acks."""
        if finished:
            behind = self._finished_all(finished)
            if behind:
                self._spawn(self._release(behind, "released"))

    def _hand_out(self, run: collections.deque[Delivery]) -> list[Delivery]:
        """Give each message left in ``run`` a task of its own; return them."""
        taken = _take_all(run)
        for delivery in taken:
            delivery.started = False  # _work takes it, unless a stop cancels it first
            self._task(self._handlers, self._work(delivery))
        return taken

    def _cancel_unstarted(self) -> list[Delivery]:
        cancelled = [delivery for run in self._runs for delivery in _take_all(run)]
        for delivery in cancelled:
            delivery.cancelled = True
        return cancelled + super()._cancel_unstarted()

    def _task(self, tasks: set[asyncio.Task[None]], step: Coroutine[Any, Any, None]) -> None:
        """Run ``step`` as a task kept in ``tasks`` while it runs."""
        assert self._loop is not None
        task = self._loop.create_task(step)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def _send(self, batches: list[list[Delivery]]) -> None:
        """Start the acknowledgement calls, and a timer for acks left waiting."""
        assert self._loop is not None
        for batch in batches:
            if self._on_loop:  # an in-process backend: acknowledged at once, without a task
                run_now(self._send_acks(batch))
                continue
            assert self._ack_slots is not None  # created by _launch, before any message
            self._task(self._ack_tasks, self._send_in_slot(batch, self._ack_slots))
        due = self._schedule.acks.overdue(time.monotonic())
        if due is not None and self._ack_timer is None:  # a slow neighbour must not hold it
            self._ack_timer = self._loop.call_later(max(0.0, due), self._on_ack_timer)

    async def _send_in_slot(self, batch: list[Delivery], slots: asyncio.Semaphore) -> None:
        async with slots:
            await self._send_acks(batch)

    def _on_ack_timer(self) -> None:
        self._ack_timer = None
        self._send(self._schedule.acks.take_overdue(time.monotonic()))

    def _spawn(self, step: Coroutine[Any, Any, None]) -> None:
        self._task(self._background, step)

    def _open(self) -> None:
        if self._pool is not None:
            return
        # Threads: receives, settlements of every held message, synchronous handlers
        # and the acknowledgements never wait for one another.
        config = self.config
        self._pool = DaemonPool(
            2 * config.concurrent_receives + 2 * config.capacity + 1,
            thread_name_prefix=f"melange-aio-{self.queue_name}",
        )

    def _launch(self) -> None:
        assert self._loop is not None
        # As many ack calls at once as receives, plus one: deletes keep up with receives.
        self._ack_slots = asyncio.Semaphore(self.config.concurrent_receives + 1)
        self._receivers = [
            self._loop.create_task(self._receive_loop(), name=f"melange-receiver-{self.queue_name}")
            for _ in range(self.config.concurrent_receives)
        ]

    async def _join_handlers(self, deadline: float) -> int:
        running = await _cancel_after(self._handlers, deadline)
        if running:  # a thread running a synchronous handler cannot be cancelled: abandoned
            await asyncio.wait(running, timeout=1.0)
        return len(running)

    async def _join_receivers(self, deadline: float) -> None:
        await _cancel_after(self._receivers, deadline)

    async def _join_ackers(self, deadline: float) -> None:
        current = asyncio.current_task()
        while True:  # a release may start as the last acks go out
            pending = [t for t in (*self._ack_tasks, *self._background) if t is not current]
            if not pending:
                return
            _, left = await asyncio.wait(pending, timeout=max(0.0, deadline - time.monotonic()))
            if left:
                return

    def _close(self) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        if self._pool is not None:
            # An abandoned synchronous handler keeps its (daemon) thread: it cannot hold up exit.
            self._pool.shutdown(wait=False)
            self._pool = None  # a later start (or the close of a stop after it failed) opens one


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _take_all(run: collections.deque[Delivery]) -> list[Delivery]:
    """Empty ``run`` with ``popleft``, as its pool thread takes from it: each goes to one side."""
    taken = []
    while True:
        try:
            taken.append(run.popleft())
        except IndexError:
            return taken


async def _cancel_after(tasks: Collection[asyncio.Task[None]], deadline: float) -> set[Any]:
    """Wait for ``tasks`` until ``deadline``; cancel and return those still running."""
    pending = {task for task in tasks if not task.done()}
    if pending:
        _, pending = await asyncio.wait(pending, timeout=max(0.0, deadline - time.monotonic()))
        for task in pending:
            task.cancel()
    return pending
