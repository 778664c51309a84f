"""The consumer runtime, written once: what both dispatchers do, whatever runs it.

:class:`Runtime` holds a dispatcher's configuration, state and scheduling core
(:class:`~melange._schedule.Schedule`), and implements the whole runtime:

* receives ask for batches, never for more messages than there is capacity
  for (``workers``, no prefetch), waiting briefly for a full batch of free
  capacity rather than paying a round trip for a few;
* each message is decoded with the :class:`~melange.serializers.SerializerRegistry`
  and handed to every consumer that accepts it; messages of one FIFO group one
  after another, in order, other messages in parallel;
* a message is acknowledged only after every accepting consumer succeeded, in
  calls of the backend's native batch size; a consumer that raises makes it
  come back after a :class:`~melange.retry.RetryPolicy` delay until the
  queue's maximum receive count sends it to the dead-letter queue
  (:class:`~melange.settlement.Settlement` decides each message's fate);
* undecodable and unhandled messages follow ``on_undecodable`` / ``on_unhandled``;
* a heartbeat extends the lease of long-running handlers
  (:class:`~melange.lease.LeasePolicy`), where the backend can;
* failing receives are retried with capped backoff, logged once per outage,
  and a start waits up to ``startup_timeout`` for an unreachable broker;
* a stop (or SIGTERM/SIGINT) stops receiving, lets running handlers finish
  within ``grace_period``, releases what did not start and acknowledges what
  finished.

Its steps are coroutines that reach the outside world only through a few
driver primitives (:meth:`Runtime._io` for a blocking call, :meth:`Runtime._pause`,
:meth:`Runtime._dispatch` to start handlers, ...):

* the threaded driver (:class:`melange.dispatcher.MessageDispatcher`) runs each
  step in one of its threads with :func:`run_now`: its primitives block and
  return a value that is already there, so a step never suspends;
* the asyncio driver (:class:`melange.aio.AsyncMessageDispatcher`) runs the
  same steps as tasks: its primitives are futures of a thread pool and events.

``_lock`` guards the state: a real lock in the threaded driver, a no-op on the
event loop, where only the loop's thread touches it.
"""

from __future__ import annotations

import collections
import inspect
import logging
import signal
import time
import warnings
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from contextlib import AbstractContextManager
from types import CoroutineType
from typing import Any, ClassVar, Literal, NamedTuple, TypeVar

from melange._outage import StartupWait
from melange._schedule import Schedule
from melange.backends.base import MessagingBackend, ReceivedMessage
from melange.consumers import Consumer, is_async_consumer
from melange.dispatcher_config import DISPATCHER_OPTIONS, DispatcherConfig
from melange.exceptions import BackendClosed, BackendUnavailable, ConfigurationError
from melange.lease import LeaseKeeper
from melange.message import Message
from melange.serializers import SerializerRegistry
from melange.settlement import (
    CallResult,
    Delivery,
    DispatchStats,
    Settlement,
    exit_handling,
    log_extra,
)
from melange.topology import QueueSpec

logger = logging.getLogger("melange.dispatcher")

SLOW_HANDLER = 0.0005
"""Seconds a handler (or an ack or receive call) takes that make a driver hand work over:
it waited for I/O, most likely, and the messages behind it should not wait as long."""
HANDOFF_DELAY = 0.002
"""Seconds work waits for the busy thread that holds it before another thread takes it."""
SHORT_POLL_PAUSE = 0.05
"""Seconds between receives that found the queue empty with ``wait_seconds=0`` (short polls):
asking again at once would spin a thread, or starve the event loop on an in-process backend."""

_T = TypeVar("_T")

State = Literal["new", "starting", "running", "stopping", "stopped"]


class Now:
    """An awaitable whose value is already known: what the threaded driver's primitives return."""

    __slots__ = ("value",)

    def __init__(self, value: Any = None) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, Any]:
        return self.value
        yield  # a generator that never suspends


def run_now(step: Coroutine[Any, Any, _T]) -> _T:
    """Run a runtime step whose every await is a :class:`Now`; return its result."""
    try:
        step.send(None)
    except StopIteration as done:
        result: _T = done.value
        return result
    step.close()
    raise RuntimeError("a runtime step suspended in the threaded driver")


class Runtime:
    """The state and steps of one dispatcher; see the module docstring.

    Args:
        backend: Where messages come from.
        queue_name: The queue to consume.
        consumers: The consumers.
        serializers: Decodes bodies; ``None`` for a new JSON registry.
        config: The options; ``None`` builds one from ``options``.
        options: Keywords of :class:`DispatcherConfig`, when ``config`` is not given.
    """

    asynchronous: ClassVar[bool] = False
    """Whether ``async def`` consumers are accepted (they run on the event loop)."""

    _awaitable_hint: ClassVar[str] = ""
    _lock: AbstractContextManager[Any]
    _stop_requested: Any  # threading.Event or asyncio.Event: is_set(), set()
    _stopped: Any

    def __init__(
        self,
        backend: MessagingBackend,
        queue_name: str,
        consumers: Sequence[Consumer],
        serializers: SerializerRegistry | None,
        config: DispatcherConfig | None,
        options: dict[str, Any],
    ) -> None:
        if config is None:
            config = DispatcherConfig(**options)
        elif not isinstance(config, DispatcherConfig):
            raise ConfigurationError(
                f"config must be a melange DispatcherConfig, got {type(config).__name__}"
            )
        elif options:
            raise ConfigurationError(
                f"pass options either in config or as keywords, not both (got config and "
                f"{', '.join(sorted(options))}); use config.replace({next(iter(options))}=...)"
            )
        if not isinstance(backend, MessagingBackend):
            raise ConfigurationError(
                f"backend must be a melange MessagingBackend, got {type(backend).__name__}; "
                "create one with melange.backends.load_backend(...)"
            )
        if not isinstance(queue_name, str) or not queue_name:
            raise ConfigurationError(f"queue_name must be a non-empty string, got {queue_name!r}")
        if serializers is not None and not isinstance(serializers, SerializerRegistry):
            raise ConfigurationError(
                f"serializers must be a melange.serializers.SerializerRegistry, "
                f"got {type(serializers).__name__}"
            )
        self.config = config
        """The options, validated (:class:`~melange.dispatcher_config.DispatcherConfig`)."""
        self.backend = backend
        self.queue_name = queue_name
        self.consumers = check_consumers(consumers, asynchronous=self.asynchronous)
        self.serializers = serializers if serializers is not None else SerializerRegistry()
        self.hooks = config.hooks
        self.stats = DispatchStats()
        """What the dispatcher did so far; live counters."""
        self._async_consumers = frozenset(c for c in self.consumers if is_async_consumer(c))
        self._settlement = Settlement(
            backend,
            queue_name,
            hooks=config.hooks,
            stats=self.stats,
            retry=config.retry,
            dedup=config.dedup,
            dedup_ttl=config.dedup_ttl,
            dedup_claim_ttl=config.dedup_claim_ttl,
            reconnect_backoff=config.reconnect_backoff,
        )
        self._settlement.accepting_all = frozenset(
            c for c in self.consumers if c.accepts_every_message()
        )
        self._every_consumer_accepts = len(self._settlement.accepting_all) == len(self.consumers)
        # The last handler took SLOW_HANDLER or more: drivers hand the next messages out
        # one by one (read and written without a lock: a stale value costs one hand-off).
        self._slow_handlers = False
        self._queue_extra = self._settlement.queue_extra
        self._schedule = Schedule(config.capacity, config.batch_size)
        self._state: State = "new"
        self._keeper: LeaseKeeper | None = None
        # The shutdown's grace period is over: a handler that returns now was abandoned, and
        # its message is left to come back (neither settled nor acknowledged).
        self._grace_over = False

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} queue={self.queue_name!r} backend={self.backend.name!r} "
            f"{self._state}>"
        )

    @property
    def running(self) -> bool:
        """Whether the dispatcher has started and not begun to stop."""
        return self._state == "running"

    @property
    def workers(self) -> int:
        """The most messages held (received, not finished), hence handlers running, at once."""
        return self.config.capacity

    @property
    def in_flight(self) -> int:
        """Messages received and not finished yet (at most ``config.capacity``)."""
        with self._lock:
            return self._schedule.held

    # ------------------------------------------------------ driver primitives
    def _io(self, func: Callable[..., _T], *args: Any) -> Awaitable[_T]:
        """Run a blocking call (backend, cache, settlement) and give its result."""
        raise NotImplementedError

    def _pause(self, seconds: float) -> Awaitable[Any]:
        """Wait ``seconds``, or less when a stop is requested."""
        raise NotImplementedError

    def _sleep(self, seconds: float) -> Awaitable[Any]:
        """Wait ``seconds``."""
        raise NotImplementedError

    def _wait_capacity(self, seconds: float | None) -> Awaitable[Any]:
        """Wait up to ``seconds`` (``None``: no limit) for capacity to change (:meth:`_reserve`)."""
        raise NotImplementedError

    def _wait_state(self) -> Awaitable[Any]:
        """Wait for another caller's start to end; lock held."""
        raise NotImplementedError

    def _notify(self, *, state: bool = False) -> None:
        """Capacity changed: wake a waiting receiver (``state``: start waiters too); lock held."""
        raise NotImplementedError

    def _dispatch(self, deliveries: list[Delivery]) -> None:
        """Start handling ``deliveries`` (threads or tasks); lock held."""
        raise NotImplementedError

    def _send(self, batches: list[list[Delivery]]) -> None:
        """Start these acknowledgement calls; lock held."""
        raise NotImplementedError

    def _spawn(self, step: Coroutine[Any, Any, None]) -> None:
        """Run ``step`` in the background (the shutdown waits for it)."""
        raise NotImplementedError

    def _cancel_unstarted(self) -> list[Delivery]:
        """Cancel every held message no handler has taken, and return them; lock held."""
        return self._schedule.cancel_unstarted()

    def _open(self) -> None:
        """Acquire what a start needs (the asyncio driver's thread pool), unless held already."""

    def _launch(self) -> None:
        """Start the receivers, workers and ackers; lock held."""
        raise NotImplementedError

    def _join_handlers(self, deadline: float) -> Awaitable[int]:
        """Wait for running handlers until ``deadline``; give how many still run."""
        raise NotImplementedError

    def _join_receivers(self, deadline: float) -> Awaitable[Any]:
        """Wait for the receivers to end until ``deadline``."""
        raise NotImplementedError

    def _join_ackers(self, deadline: float) -> Awaitable[Any]:
        """Wait for the acknowledgements under way to end, until ``deadline``."""
        raise NotImplementedError

    def _wait_stopped(self) -> Awaitable[Any]:
        """Wait for the shutdown to end (``stop()``)."""
        raise NotImplementedError

    def _close(self) -> None:
        """Release the driver's resources at the end of the shutdown."""

    # -------------------------------------------------------------- lifecycle
    async def _start(self) -> None:
        with self._lock:
            while self._state == "starting":  # another caller is starting it: wait for it
                await self._wait_state()
            if self._state == "running":
                return
            if self._state != "new":
                raise ConfigurationError(
                    f"this dispatcher for queue {self.queue_name!r} was stopped and cannot "
                    f"start again; create a new {type(self).__name__}"
                )
            self._state = "starting"
        try:
            self._open()
            spec = await self._wait_for_queue()
            with self._lock:
                if self._state != "starting":  # stop() was called meanwhile
                    return
                self._settlement.load(spec)
                self._keeper = self._settlement.lease_keeper(self.config.lease, self._held)
                self._schedule.acks = self._settlement.ack_buffer()
                self._schedule.last_activity = time.monotonic()
                self._launch()
                self._state = "running"
        finally:
            with self._lock:
                if self._state == "starting":  # it failed: a later start() may try again
                    self._state = "new"
                    self._close()
                self._notify(state=True)
        logger.info(
            "dispatching queue %s to %s with capacity %d (%s)",
            self.queue_name,
            ", ".join(c.name for c in self.consumers),
            self.config.capacity,
            "asyncio" if self.asynchronous else "threads",
            extra=self._queue_extra,
        )

    def _held(self) -> list[Delivery]:
        """The messages held now: what the lease keeper's heartbeat (its own thread) extends."""
        with self._lock:
            # On the event loop the lock does nothing: list() copies the set in C, without
            # letting the loop's thread run and change it meanwhile (the GIL).
            return list(self._schedule.deliveries)

    async def _wait_for_queue(self) -> QueueSpec | None:
        """Look the queue up, waiting for an unreachable broker; ``None`` once stopping."""
        config = self.config
        waiting = StartupWait(
            self.queue_name, config.startup_timeout, config.reconnect_backoff, self._queue_extra
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
                if self._stop_requested.is_set():
                    return None
                continue
            waiting.succeeded()
            return spec

    async def _run_until_idle(
        self, idle_seconds: float, timeout: float | None, stop: bool
    ) -> DispatchStats:
        await self._start()
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
            await self._sleep(0.01)
        if stop:
            await self._wait_stopped()
        return self.stats.snapshot()

    def _stop_signal(self, signum: int) -> None:
        """A stop signal arrived: log it; a second SIGINT raises ``KeyboardInterrupt``."""
        if self._stop_requested.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait
        logger.info(
            "received %s: stopping (grace period %gs)",
            signal.Signals(signum).name,
            self.config.grace_period,
            extra=self._queue_extra,
        )

    def _request_stop(self) -> None:
        """Begin the graceful shutdown (in the background); idempotent."""
        with self._lock:
            previous = self._state
            if previous in ("stopping", "stopped"):
                return
            self._state = "stopping"
            self._stop_requested.set()
            unstarted = self._cancel_unstarted()
            self._notify(state=True)
        if previous in ("new", "starting"):  # nothing runs (start() gives up its wait)
            self._spawn(self._close_unstarted())
        else:
            self._spawn(self._shutdown(unstarted))

    async def _close_unstarted(self) -> None:
        try:
            if self.config.close_backend:
                self._open()  # a start that failed released what _close_backend runs in
                await self._close_backend()
        finally:
            self._finish_shutdown()

    async def _shutdown(self, unstarted: list[Delivery]) -> None:
        config = self.config
        deadline = time.monotonic() + config.grace_period
        try:
            logger.info(
                "stopping: %d message(s) handling, %d released",
                self.in_flight - len(unstarted),
                len(unstarted),
                extra=self._queue_extra,
            )
            await self._release(unstarted, "released")
            still_running = await self._join_handlers(deadline)
            with self._lock:
                self._grace_over = True
            if still_running:
                logger.warning(
                    "%d handler(s) still running after the %gs grace period; their messages "
                    "are not acknowledged and will be delivered again",
                    still_running,
                    config.grace_period,
                    extra=self._queue_extra,
                )
            # A receive in progress returns within wait_seconds; its messages are released.
            await self._join_receivers(max(deadline, time.monotonic()) + config.wait_seconds + 1)
            with self._lock:  # abandoned handlers never settle: send what finished now
                self._send(self._schedule.acks.take_all())
            await self._join_ackers(max(deadline, time.monotonic()) + 10.0)
            if self._keeper is not None:
                await self._io(self._keeper.stop, 1.0)
        except Exception:
            logger.exception("error while stopping the dispatcher", extra=self._queue_extra)
        finally:
            await self._close_backend()
            self._finish_shutdown()
            logger.info("stopped", extra=self._queue_extra)

    def _finish_shutdown(self) -> None:
        with self._lock:
            self._state = "stopped"
        self._close()
        self._stopped.set()

    async def _close_backend(self) -> None:
        if self.config.close_backend:
            await self._io(self._settlement.close_backend)

    # -------------------------------------------------------------- receiving
    async def _receive_loop(self) -> None:
        """Receive for as long as the dispatcher runs (one per concurrent receive).

        The asyncio driver runs it as tasks; the threaded driver's pool takes
        each receive as a task of its own instead (:meth:`_receive_once`).
        """
        failures: int | None = 0
        while failures is not None:
            count = await self._reserve()
            if not count:
                return
            failures = await self._receive_once(count, failures)

    async def _reserve(self) -> int:
        """Wait for free capacity and reserve up to ``batch_size`` of it; 0 when stopping."""
        fill_deadline: float | None = None
        while not self._stop_requested.is_set():
            with self._lock:
                count, wait, fill_deadline = self._schedule.reserve(time.monotonic(), fill_deadline)
            if count:
                return count
            await self._wait_capacity(wait)
        return 0

    async def _receive_once(self, count: int, failures: int) -> int | None:
        """Receive up to ``count`` reserved messages and take them.

        Args:
            count: The capacity reserved for this call.
            failures: Receives that failed in a row before this one.

        Returns:
            The failures in a row after this one, or ``None`` when receiving
            must end (the backend was closed).
        """
        received_at = time.monotonic()
        try:
            received = await self._receive_call(count)
        except BackendClosed:
            self._unreserve(count)
            if not self._stop_requested.is_set():
                logger.error(
                    "the backend was closed while the dispatcher was running; stopping",
                    extra=self._queue_extra,
                )
                self._request_stop()
            return None
        except Exception as exc:
            self._unreserve(count)
            await self._pause(self._settlement.receive_failed(failures + 1, exc))
            return failures + 1
        self._settlement.receive_succeeded()
        await self._accept(received, count, received_at)
        if not received and not self.config.wait_seconds:
            await self._pause(SHORT_POLL_PAUSE)
        return 0

    def _receive_call(self, count: int) -> Awaitable[list[ReceivedMessage]]:
        """The backend's receive of up to ``count`` messages, as a blocking call (:meth:`_io`)."""
        return self._io(self.backend.receive, self.queue_name, count, self.config.wait_seconds)

    def _ack_call(self, batch: list[Delivery]) -> Awaitable[None]:
        """Acknowledge ``batch`` (:meth:`Settlement.send_acks`), as a blocking call."""
        return self._io(self._settlement.send_acks, batch)

    def _unreserve(self, count: int) -> None:
        with self._lock:
            self._schedule.unreserve(count)
            self._notify()

    async def _accept(
        self, received: list[ReceivedMessage], reserved: int, received_at: float
    ) -> None:
        """Take the messages of one receive call: start their handlers, or release them."""
        deliveries = self._settlement.deliveries(received, received_at)
        with self._lock:
            start, release = self._schedule.accept(
                deliveries,
                reserved,
                stopping=self._stop_requested.is_set(),
                now=time.monotonic(),
            )
            self._dispatch(start)
            held = self._schedule.held
            if len(received) < reserved:
                self._notify()
        if release:
            await self._release(release, "released")
        elif received:
            self.stats.peak("max_in_flight", held)
            logger.debug("received %d message(s)", len(received), extra=self._queue_extra)

    # --------------------------------------------------------------- handling
    async def _work(self, delivery: Delivery) -> None:
        """Handle one delivery and free its capacity, whatever happens."""
        if delivery.cancelled:  # released before it started
            return
        delivery.started = True
        acked = False
        try:
            if self._async_consumers:
                began = time.monotonic()
                try:
                    acked = await self._handle(delivery)
                finally:
                    self._slow_handlers = time.monotonic() - began >= SLOW_HANDLER
            else:  # timed in the thread: waiting for one, or for the loop, is not handling
                acked = await self._io(self._handle_timed, delivery)
        finally:
            with self._lock:
                behind = self._finished(delivery, acked)
            if behind:
                self._spawn(self._release(behind, "released"))

    async def _handle(self, delivery: Delivery) -> bool:
        """Decode and handle one message; settle it. Return whether to acknowledge it.

        The asyncio driver's handling step: ``async`` consumers run on the event
        loop, the others in its thread pool (see :meth:`_handle_now` for threads).
        An error of melange's own is logged, not raised: the message keeps no
        capacity and is delivered again.
        """
        settlement, hint = self._settlement, self._awaitable_hint
        try:
            received = delivery.received
            begun = self._begin(received)
            if not isinstance(begun, _Begun):  # undecodable or unhandled
                return await self._io(begun[0], *begun[1]) is True
            message, accepting, failures = begun
            busy = False
            for candidate in accepting:
                if candidate in self._async_consumers:
                    result = await self._call_async(candidate, message, received)
                else:
                    result = await self._io(
                        settlement.call_sync, candidate, message, received, hint
                    )
                failures, busy = _tally(candidate, result, failures, busy)
            decided = self._outcome(delivery, message, failures, busy)
            return decided is True or await self._io(decided[0], *decided[1]) is True
        except Exception:  # a bug here must not lose the capacity it holds
            return self._internal_error(delivery)

    def _handle_now(self, delivery: Delivery) -> bool:
        """:meth:`_handle` in the calling thread, none of the consumers ``async``.

        Runs for every message the threaded driver handles: no coroutine, and the
        consumers are called right here.
        """
        try:
            received = delivery.received
            begun = self._begin(received)
            if isinstance(begun, _Begun):
                message, accepting, failures = begun
                busy = False
                call, hint = self._settlement.call_sync, self._awaitable_hint
                for candidate in accepting:
                    result = call(candidate, message, received, hint)
                    if result != "ok":
                        failures, busy = _tally(candidate, result, failures, busy)
                step = self._outcome(delivery, message, failures, busy)
                if step is True:
                    return True
            else:
                step = begun
            if self._grace_over:  # abandoned: no settlement, the message comes back
                return False
            settle, args = step
            return settle(*args) is True
        except Exception:  # a bug here must not lose the capacity it holds
            return self._internal_error(delivery)

    def _handle_timed(self, delivery: Delivery) -> bool:
        """:meth:`_handle_now`, noting whether the handling took :data:`SLOW_HANDLER` or more."""
        began = time.monotonic()
        try:
            return self._handle_now(delivery)
        finally:
            self._slow_handlers = time.monotonic() - began >= SLOW_HANDLER

    def _handle_sync_run(
        self, run: collections.deque[Delivery], finished: list[tuple[Delivery, bool]]
    ) -> bool:
        """Handle the messages of ``run`` one after another, in the calling thread.

        For consumers that are all synchronous. Each message is taken from ``run``
        with ``popleft``, so a driver cancelling what has not started (draining
        ``run`` the same way) gets every other one. Stops after a handler took
        :data:`SLOW_HANDLER` or more: the rest may wait as long, and go elsewhere.

        Args:
            run: The messages to handle, marked started when queued.
            finished: Receives each handled message with whether to ack it.

        Returns:
            Whether it stopped at a slow handler (``run`` may hold more).
        """
        while True:
            try:
                delivery = run.popleft()
            except IndexError:
                return False
            began = time.monotonic()
            self._handle_into(delivery, finished)
            if time.monotonic() - began >= SLOW_HANDLER:
                return True

    def _handle_into(self, delivery: Delivery, finished: list[tuple[Delivery, bool]]) -> None:
        """:meth:`_handle_now`, adding the message to ``finished`` (not acked if it raises)."""
        try:
            acked = self._handle_now(delivery)
        except BaseException:
            finished.append((delivery, False))
            raise
        finished.append((delivery, acked))

    def _internal_error(self, delivery: Delivery) -> bool:
        logger.exception(
            "internal error while handling message %s; it will be delivered again",
            delivery.received.message_id,
            extra=log_extra(delivery.received),
        )
        return False

    def _begin(self, received: ReceivedMessage) -> _Begun | Settle:
        """Decode ``received`` and choose its consumers; or the settlement step that ends it."""
        settlement = self._settlement
        try:
            message = self.serializers.decode(received)
        except Exception as exc:  # SerializationError, or a serializer's own bug
            return settlement.undecodable, (received, self.config.on_undecodable, exc)
        if self._every_consumer_accepts:
            # tuple.__new__ directly: a NamedTuple's own __new__ is a Python function.
            return tuple.__new__(_Begun, (message, self.consumers, _NO_FAILURES))
        accepting, failures = settlement.select(self.consumers, message)
        if not accepting and not failures:  # no consumer wants it
            return settlement.unhandled, (received, self.config.on_unhandled, message)
        return _Begun(message, accepting, failures)

    def _outcome(
        self, delivery: Delivery, message: Message, failures: Failures, busy: bool
    ) -> Literal[True] | Settle:
        """Acknowledge a message every consumer handled; else the step that settles it."""
        if failures:
            return self._settlement.retry, (delivery.received, message, failures)
        if busy:
            return self._settlement.busy, (delivery.received,)
        delivery.handled = True  # counted with the others when their capacity is freed
        return True

    def _finished(self, delivery: Delivery, acked: bool) -> list[Delivery]:
        """Free the delivery's capacity, start the next of its group; lock held.

        Returns:
            The messages that waited behind it in its FIFO group, when it failed:
            release them (:meth:`_release`) once the lock is let go.
        """
        return self._finished_all([(delivery, acked)])

    def _finished_all(self, finished: list[tuple[Delivery, bool]]) -> list[Delivery]:
        """:meth:`_finished` for several messages (each with whether to ack it); lock held."""
        if self._grace_over:  # abandoned handlers: their messages come back unacknowledged
            return []
        start, behind, send, handled = self._schedule.finish_all(finished, time.monotonic())
        if handled:
            self.stats.add("handled", handled)  # once per run: a lock round per message cost 3 %
        self._send(send)
        self._dispatch(start)
        if self._schedule.receivable():
            self._notify()
        return behind

    async def _release(self, deliveries: list[Delivery], counter: str) -> None:
        """Drop messages that were not handled and make them receivable again (nack, no delay)."""
        if not deliveries:
            return
        with self._lock:
            self._send(self._schedule.release(deliveries, time.monotonic()))
            self._notify()
        await self._io(self._settlement.release, deliveries, counter)

    async def _call_async(
        self, candidate: Consumer, message: Message, received: ReceivedMessage
    ) -> CallResult | BaseException:
        """Run an ``async def`` consumer in the calling task (only the asyncio driver has any)."""
        settlement, dedup = self._settlement, self.config.dedup is not None
        if dedup and (ended := await self._io(settlement.claim, candidate, received)) is not None:
            return ended
        started = time.monotonic()
        # Entered and left in this task, so context-variable hooks (tracing) see the handler.
        context = settlement.enter_handling(message, candidate, received)
        try:
            result: Any = candidate.process(message)
            # An async def's coroutine, checked at C speed first: this runs for every message.
            if type(result) is CoroutineType or inspect.isawaitable(result):
                await result
        except BaseException as exc:
            exit_handling(context, exc, received, candidate.name)
            if dedup:
                if isinstance(exc, Exception):
                    await self._io(settlement.unclaim, candidate, received)
                else:  # cancelled (grace period over): it cannot await; the call runs anyway
                    self._io(settlement.unclaim, candidate, received)
            if not isinstance(exc, Exception):
                raise
            return exc
        if context is not None:
            exit_handling(context, None, received, candidate.name)
        seconds = time.monotonic() - started
        if dedup:
            await self._io(settlement.handled, candidate, message, received, seconds)
        else:
            settlement.handled(candidate, message, received, seconds)
        return "ok"

    # ----------------------------------------------------------------- acking
    async def _send_acks(self, batch: list[Delivery]) -> None:
        try:
            await self._ack_call(batch)
        except Exception:  # send_acks logs the broker's errors; this is a bug
            logger.exception("acknowledging failed", extra=self._queue_extra)
        finally:
            with self._lock:
                self._schedule.acks_sent(len(batch), time.monotonic())


Failures = list[tuple[Consumer, BaseException]]
"""Consumers that failed on a message, with their errors."""

Settle = tuple[Callable[..., object], tuple[Any, ...]]
"""A settlement step with I/O and its arguments; it decides the message's fate (``True``: ack)."""


class _Begun(NamedTuple):
    """A decoded message, the consumers to call, and those whose ``accepts`` failed."""

    message: Message
    accepting: Sequence[Consumer]
    failures: Failures


_NO_FAILURES: Failures = []
"""Shared by every message that has no failure yet: never appended to (a new list is made)."""


def _tally(
    candidate: Consumer, result: object, failures: Failures, busy: bool
) -> tuple[Failures, bool]:
    """Count a consumer call that did not end with ``"ok"``: a failure, or busy (dedup claim).

    ``"ok"`` leaves both as they are.
    """
    if result == "busy":
        return failures, True
    if isinstance(result, BaseException):
        return [*failures, (candidate, result)], busy
    return failures, busy


def _option_alias(name: str) -> property:
    def read(self: Runtime) -> Any:
        warnings.warn(
            f"dispatcher.{name} is deprecated; read dispatcher.config.{name}",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(self.config, name)

    return property(read, doc=f"Deprecated: ``config.{name}``.")


# 8.0 dispatchers had their options as attributes: keep them readable, with a warning.
for _name in set(DISPATCHER_OPTIONS) - {"workers", "hooks"}:  # those two are attributes still
    setattr(Runtime, _name, _option_alias(_name))


def check_consumers(consumers: Sequence[Consumer], *, asynchronous: bool) -> tuple[Consumer, ...]:
    """Return ``consumers`` as a tuple once each is a valid, distinctly named :class:`Consumer`.

    Args:
        consumers: What the application passed.
        asynchronous: For the asyncio driver, which accepts ``async def`` consumers.
    """
    if isinstance(consumers, (Consumer, str, bytes)) or not isinstance(consumers, Sequence):
        hint = (
            ""
            if asynchronous
            else "; for one consumer use SimpleMessageDispatcher(consumer, backend, queue_name)"
        )
        raise ConfigurationError(
            f"consumers must be a list of Consumer objects, e.g. [record_payment]{hint}"
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
        if not asynchronous and is_async_consumer(candidate):
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
