"""The consumer runtime on threads: receive, decode, handle, acknowledge, on every backend alike.

A :class:`MessageDispatcher` runs the loop an application uses every day::

    dispatcher = MessageDispatcher(backend, "payment-updates", [record_payment, Payments()])
    dispatcher.run()            # until SIGTERM/SIGINT or dispatcher.stop()

It is the threaded driver of the runtime in :mod:`melange._runtime` (which says
what it guarantees); :class:`melange.aio.AsyncMessageDispatcher` is the asyncio
one. One pool of ``workers + 2 * concurrent_receives + 1`` threads does every
task: handle a message (at most ``workers`` at once), send an ack call, receive.

Logging goes to the ``melange.dispatcher`` logger with ``extra`` fields
``queue``, ``message_id`` and ``consumer``; message bodies are never logged.
"""

from __future__ import annotations

import collections
import logging
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast

from melange._runtime import HANDOFF_DELAY, SLOW_HANDLER, Now, Runtime, run_now
from melange.backends.base import MessagingBackend
from melange.consumers import Consumer
from melange.dispatcher_config import DispatcherConfig, DispatcherOptions
from melange.exceptions import ConfigurationError
from melange.lease import LeasePolicy
from melange.retry import RetryPolicy
from melange.serializers import SerializerRegistry
from melange.settlement import Delivery, DispatchStats, Outcome

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "DispatchStats",
    "DispatcherConfig",
    "LeasePolicy",
    "MessageDispatcher",
    "Outcome",
    "RetryPolicy",
    "SimpleMessageDispatcher",
]

logger = logging.getLogger("melange.dispatcher")

REPORT_AFTER = 0.002
"""Seconds a thread handling one message after another goes before freeing their capacity."""
WATCH_MAX = 0.02
"""The watcher's longest poll, while busy threads keep taking work or no work waits."""

_D = TypeVar("_D", bound="MessageDispatcher")


class MessageDispatcher(Runtime):
    """Receives messages from one queue and hands them to consumers, on a pool of threads.

    Examples:
        >>> dispatcher = MessageDispatcher(backend, "payment-updates", [record_payment])
        >>> dispatcher.run()  # blocks until SIGTERM/SIGINT or stop()

    Args:
        backend: Where messages come from.
        queue_name: The queue to consume; it must exist when the dispatcher starts.
        consumers: Every consumer that accepts a message is called with it, in order.
        serializers: Decodes bodies; defaults to a new :class:`SerializerRegistry` (JSON).
        config: The options, as one :class:`DispatcherConfig`.
        **options: Or the same options as keywords (``workers``, ``batch_size``,
            ``wait_seconds``, ``retry``, ``grace_period``, ...; see
            :class:`DispatcherConfig`). ``workers`` is the most messages handled at once.

    Raises:
        ConfigurationError: An argument is invalid (no consumers, two consumers
            with the same name, an ``async`` consumer, an unknown option or
            outcome, a non-positive count, ...). Nothing is started.
    """

    _awaitable_hint = "; async consumers need melange.aio.AsyncMessageDispatcher"

    def __new__(cls: type[_D], *args: Any, **kwargs: Any) -> _D:
        """Create the dispatcher; a melange 7.x-form call makes a 7.x-form dispatcher."""
        # melange 7.x took (serializer_registry, cache, backend, always_ack) and a queue only
        # in consume_loop(): a registry where the backend goes is that form, handled by
        # melange.compat (loaded only then).
        if _called_7x_way(cls, args, kwargs):
            from melange.compat.calls_dispatcher import dispatcher_7x

            # Not a MessageDispatcher (it has no queue yet), so Python skips __init__.
            return cast(_D, dispatcher_7x(cls, args, kwargs))
        return super().__new__(cls)

    def __init__(
        self,
        backend: MessagingBackend,
        queue_name: str,
        consumers: Sequence[Consumer],
        serializers: SerializerRegistry | None = None,
        *,
        config: DispatcherConfig | None = None,
        **options: Unpack[DispatcherOptions],
    ) -> None:
        super().__init__(backend, queue_name, consumers, serializers, config, dict(options))
        self._lock = threading.Lock()
        self._work_ready = threading.Condition(self._lock)  # idle threads wait on it
        self._changed = threading.Condition(self._lock)  # start() and the shutdown wait on it
        self._ready: collections.deque[Delivery] = collections.deque()  # to handle
        self._ack_queue: collections.deque[list[Delivery]] = collections.deque()  # to send
        self._idle = 0  # threads waiting for a task
        self._waking = False  # an idle thread was woken and has not run yet
        self._watcher = False  # an idle thread polls for work that busy threads left waiting
        self._taken = 0  # tasks taken (and messages taken by a thread handling a run)
        self._slow_calls = {"ack": False, "receive": False}  # the last call took SLOW_HANDLER+
        self._handoff = False  # the next thread looking for work takes it, even the watcher
        self._busy = {"handle": 0, "ack": 0, "receive": 0}  # threads doing each task
        self._receive_failures = 0  # receives that failed in a row
        self._fill_deadline: float | None = None  # of the next receive (Schedule.reserve)
        self._done = False  # the threads exit once nothing is left to do
        self._signalled = False  # run() stopped by a signal
        self._stop_requested = threading.Event()
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self._spawned: list[threading.Thread] = []

    def __enter__(self) -> MessageDispatcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------ public API
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
        run_now(self._start())

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
        self._stop_signal(signum)
        self._signalled = True
        # From another thread: the signal may have interrupted this one inside a locked section.
        _thread(self._request_stop, f"melange-signal-{self.queue_name}")

    def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully; idempotent.

        Stops receiving, releases messages received but not started (nack with
        no delay, where the backend can), lets running handlers finish within
        ``grace_period``, acknowledges what finished, and closes the backend
        when ``close_backend`` is set.

        Args:
            timeout: Longest time to wait for the shutdown to complete; ``None``
                waits until it is done. Called from a handler, it never waits.
        """
        self._request_stop()
        if threading.current_thread() in self._threads:
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

        Raises:
            QueueNotFound: As :meth:`start`; ``timeout`` does not shorten its wait.
            BackendUnavailable: As :meth:`start`, after up to ``startup_timeout``.
        """
        return run_now(self._run_until_idle(idle_seconds, timeout, stop))

    # ----------------------------------------------------- driver primitives
    def _io(self, func: Callable[..., Any], *args: Any) -> Now:
        return Now(func(*args))

    def _pause(self, seconds: float) -> Now:
        return Now(self._stop_requested.wait(seconds))

    def _sleep(self, seconds: float) -> Now:
        time.sleep(seconds)
        return Now()

    def _wait_state(self) -> Now:
        return Now(self._changed.wait())

    def _wait_stopped(self) -> Now:
        self.stop()
        return Now()

    def _notify(self, *, state: bool = False) -> None:
        if state:
            self._changed.notify_all()
            self._work_ready.notify_all()
        elif self._schedule.receivable():
            self._wake()

    def _dispatch(self, deliveries: list[Delivery]) -> None:
        if deliveries:
            for delivery in deliveries:  # a worker thread takes it without the lock
                delivery.started = True
            self._ready.extend(deliveries)
            if self._slow_handlers:  # the last handler waited: do not make these wait behind it
                self._hand_over()
            else:
                self._wake()

    def _send(self, batches: list[list[Delivery]]) -> None:
        if batches:
            self._ack_queue.extend(batches)
            self._wake()

    def _wake(self) -> None:
        """Make sure an idle thread will see new work; lock held (see :meth:`_next_task`)."""
        if self._idle and not self._watcher and not self._waking:
            self._waking = True
            self._work_ready.notify()

    def _spawn(self, step: Coroutine[Any, Any, None]) -> None:
        self._spawned.append(_thread(lambda: run_now(step), f"melange-stop-{self.queue_name}"))

    def _launch(self) -> None:
        # Enough threads for every message held, every receive and every ack call at once.
        config = self.config
        count = config.capacity + 2 * config.concurrent_receives + 1
        self._threads = [
            _thread(self._thread_loop, f"melange-{self.queue_name}-{i}") for i in range(count)
        ]

    def _join_handlers(self, deadline: float) -> Now:
        return Now(self._wait_quiet(lambda: self._busy["handle"], deadline))

    def _join_receivers(self, deadline: float) -> Now:
        return Now(self._wait_quiet(lambda: self._busy["receive"], deadline))

    def _join_ackers(self, deadline: float) -> Now:
        self._wait_quiet(lambda: len(self._ack_queue) + self._busy["ack"], deadline)
        with self._lock:  # nothing is left to do: the threads end
            self._done = True
            self._work_ready.notify_all()
        for thread in self._spawned:  # releases behind failed FIFO messages
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        return Now()

    def _wait_quiet(self, busy: Callable[[], int], deadline: float) -> int:
        """Wait until ``busy()`` is 0 or ``deadline`` passed; return ``busy()``."""
        with self._changed:
            self._changed.wait_for(lambda: not busy(), max(0.0, deadline - time.monotonic()))
            return busy()

    # ---------------------------------------------------------------- threads
    def _thread_loop(self) -> None:
        """Do the next task (handle, acknowledge, receive) until the dispatcher is done."""
        done: str | None = None  # the task just finished, counted under the next lock round
        finished: list[tuple[Delivery, bool]] = []  # handled, capacity not freed yet
        item: Any = None
        while True:
            behind: list[Delivery] = []
            with self._lock:
                if done is not None:
                    self._busy[done] -= 1
                    if finished:
                        behind = self._finished_all(finished)
                        finished.clear()
                    if self._stop_requested.is_set():
                        self._changed.notify_all()  # the shutdown waits for these counts
                task = None if behind else self._next_task()
            if behind:  # a failed FIFO message: give back the rest of its group first
                self._spawn(self._release(behind, "released"))
                done = None
                continue
            if task is None:
                return
            done, item = task
            try:
                if done == "handle":
                    self._handle_run(item, finished)
                else:
                    began = time.monotonic()
                    if done == "ack":
                        run_now(self._send_acks(item))
                    else:  # None: the backend was closed, and the dispatcher is stopping
                        failures = run_now(self._receive_once(item, self._receive_failures))
                        self._receive_failures = failures or 0
                    self._slow_calls[done] = time.monotonic() - began >= SLOW_HANDLER
            except BaseException:  # the thread dies: free what it held
                with self._lock:
                    self._busy[done] -= 1
                    behind = self._finished_all(finished)
                    finished.clear()
                self._spawn(self._release(behind, "released"))
                raise

    def _handle_run(self, delivery: Delivery, finished: list[tuple[Delivery, bool]]) -> None:
        """Handle ``delivery``, then the next ready messages, until none is ready.

        Messages are taken from the ready queue without the lock (``popleft`` is
        atomic); what finished is reported in one lock round at the end, or every
        :data:`REPORT_AFTER` seconds, so a slow handler does not hold back the
        capacity and acks of the messages handled before it. A handler that took
        :data:`SLOW_HANDLER` or more (it waited for I/O, most likely) hands the
        other ready messages to idle threads: the next ones may wait as long.
        """
        ready = self._ready
        since = began = time.monotonic()
        while True:
            self._handle_into(delivery, finished)
            now = time.monotonic()
            slow = now - began >= SLOW_HANDLER
            self._slow_handlers = slow  # read without the lock: a stale value costs a wake
            if not ready:
                return
            began = now
            if slow or now - since >= REPORT_AFTER:
                since = now
                with self._lock:
                    behind = self._finished_all(finished)
                    if slow:
                        self._hand_over()
                finished.clear()
                if behind:
                    self._spawn(self._release(behind, "released"))
            try:
                delivery = ready.popleft()
            except IndexError:  # another thread took the last one
                return
            self._taken += 1  # not under the lock: a lost count only lets the watcher look

    def _hand_over(self) -> None:
        """Wake an idle thread for each ready message but one (this thread's next); lock held."""
        count = min(len(self._ready) - 1, self._idle)
        if count > 0:
            self._waking = True
            self._work_ready.notify(count)

    def _cancel_unstarted(self) -> list[Delivery]:
        # Messages are taken from the ready queue without the lock: draining it here gives
        # each one to exactly one side (started when dispatched, see _dispatch).
        queued = list(self._ready)
        self._ready.clear()
        for delivery in queued:
            delivery.cancelled = True
        return queued + self._schedule.cancel_unstarted()

    def _next_task(self) -> tuple[str, Any] | None:
        """Wait for the next task and count it; lock held. ``None``: the thread ends.

        A thread that posts work (a received batch, an ack call, free capacity)
        takes it itself once its task is done, so fast work costs no hand-off.
        While threads are busy, one idle thread watches: it takes work that waited
        a whole poll with no thread taking anything, so a handler that blocks, a
        second receive or an ack still find a thread: within :data:`HANDOFF_DELAY`
        of the watch's start, and :data:`WATCH_MAX` at most while work flows.
        Handlers known to be slow hand their ready messages over at once instead
        (see :meth:`_handle_run`), and so does a thread taking an ack call or a
        receive whose last one took :data:`SLOW_HANDLER` or more (a round trip):
        the next receive does not wait behind an ack.
        """
        schedule = self._schedule
        watching = False  # this thread is the watcher
        seen = 0  # tasks taken when the watcher's poll began
        interval = HANDOFF_DELAY
        while True:
            # The watcher leaves work alone while busy threads are still taking tasks.
            may_take = not watching or self._taken == seen or self._handoff
            task = self._take_task() if may_take else None
            if task is None and self._done:
                return None
            timeout: float | None = None
            if task is None and may_take and self._may_receive():
                now = time.monotonic()
                count, timeout, self._fill_deadline = schedule.reserve(now, self._fill_deadline)
                if count:
                    self._fill_deadline = None
                    self._busy["receive"] += 1
                    task = "receive", count
            if task is not None:
                self._taken += 1
                self._handoff = False
                if watching:
                    self._watcher = False
                if task[0] != "handle" and self._slow_calls[task[0]] and self._pending():
                    # A network round trip: the work left waiting goes to another thread now.
                    self._handoff = self._waking = True
                    self._work_ready.notify()
                elif self._idle and not self._watcher and not self._waking:
                    self._waking = True  # busy now: an idle thread must watch
                    self._work_ready.notify()
                return task
            due = schedule.acks.overdue(time.monotonic())
            if due is not None:
                if due <= 0:  # a slow handler holds back its batch: send the rest anyway
                    self._send(schedule.acks.take_overdue(time.monotonic()))
                    continue
                timeout = due if timeout is None else min(timeout, due)
            if watching or not self._watcher:
                if any(self._busy.values()):
                    # Each poll takes the GIL from the busy threads: poll less while they
                    # keep taking tasks or nothing waits.
                    if watching and (self._taken != seen or not self._pending()):
                        interval = min(2 * interval, WATCH_MAX)
                    timeout = interval if timeout is None else min(timeout, interval)
                    self._watcher = watching = True
                    seen = self._taken
                elif watching:  # nothing runs: work can only come with a notify
                    self._watcher = watching = False
            self._idle += 1
            self._work_ready.wait(timeout)
            self._idle -= 1
            self._waking = False

    def _pending(self) -> bool:
        """Whether work waits for a thread: a message, an ack call or a receive; lock held."""
        return bool(
            self._ready
            or self._ack_ready()
            or (self._may_receive() and self._schedule.receivable())
        )

    def _take_task(self) -> tuple[str, Any] | None:
        """An ack to send, else a message to handle; lock held."""
        if self._ack_ready():
            self._busy["ack"] += 1
            return "ack", self._ack_queue.popleft()
        while self._ready:
            delivery = self._ready.popleft()
            if not delivery.cancelled:
                self._busy["handle"] += 1
                return "handle", delivery
        return None

    def _ack_ready(self) -> bool:
        # At most concurrent_receives + 1 ack calls at once: deletes keep up with receives.
        return bool(self._ack_queue) and self._busy["ack"] <= self.config.concurrent_receives

    def _may_receive(self) -> bool:
        return (
            self._busy["receive"] < self.config.concurrent_receives
            and not self._stop_requested.is_set()
        )


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
def _called_7x_way(cls: type, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether ``cls(*args, **kwargs)`` is melange 7.x's form (the registry before the backend)."""
    if "serializer_registry" in kwargs and cls in (MessageDispatcher, SimpleMessageDispatcher):
        return True
    position = 1 if cls is SimpleMessageDispatcher else 0 if cls is MessageDispatcher else -1
    return 0 <= position < len(args) and isinstance(args[position], SerializerRegistry)


def _thread(target: Callable[[], object], name: str) -> threading.Thread:
    # Daemon threads: a handler stuck past the grace period must not keep the process alive.
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread
