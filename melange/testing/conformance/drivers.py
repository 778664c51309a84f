"""The dispatcher drivers the runtime conformance tests run on: threads and asyncio.

melange has two dispatchers with the same semantics over the same backend
contract: :class:`~melange.dispatcher.MessageDispatcher` (a pool of threads)
and :class:`~melange.aio.AsyncMessageDispatcher` (event-loop tasks). The
conformance tests that drive a dispatcher are written once and run with each,
as ``test_...[threads]`` and ``test_...[asyncio]``:

* ``threads`` is :class:`~melange.dispatcher.MessageDispatcher` itself;
* ``asyncio`` is :class:`AsyncioDispatcher`, a synchronous facade running an
  :class:`~melange.aio.AsyncMessageDispatcher` on an event loop of its own, in
  a background thread, with the surface the tests use (``start``,
  ``stop(timeout)``, ``run_until_idle``, ``with``, ``stats``, ``in_flight``,
  ``running``). It takes the same arguments as ``MessageDispatcher``.

The tests' consumers stay plain synchronous ones: the asyncio dispatcher runs
them in its thread pool, as it runs an application's blocking consumers.

A test opts in with :func:`drives_dispatcher` and builds its dispatchers with
:meth:`~melange.testing.conformance.ConformanceBase.melange_dispatcher`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, TypeVar, get_args

import pytest

from melange.aio import AsyncMessageDispatcher
from melange.dispatcher import DispatchStats, MessageDispatcher

if TYPE_CHECKING:
    from melange.backends.base import MessagingBackend
    from melange.consumers import Consumer
    from melange.serializers import SerializerRegistry

__all__ = [
    "DRIVERS",
    "DRIVER_FIXTURE",
    "AsyncioDispatcher",
    "Dispatcher",
    "DriverName",
    "drives_dispatcher",
    "is_driven",
    "known_deviation",
    "make_dispatcher",
]

DriverName = Literal["threads", "asyncio"]
"""Which dispatcher runs a test: ``"threads"`` or ``"asyncio"``."""

DRIVERS: Final[tuple[DriverName, ...]] = get_args(DriverName)
"""Every driver, in the order their test variants are collected."""

DRIVER_FIXTURE = "melange_dispatcher_driver"
"""The fixture the tests are parametrized over; its value is the driver's name."""

_DRIVEN_ATTRIBUTE = "_melange_drives_dispatcher"

_T = TypeVar("_T")
_F = TypeVar("_F", bound=Callable[..., Any])


class Dispatcher(Protocol):
    """What the conformance tests use of a dispatcher, whichever the driver."""

    @property
    def stats(self) -> DispatchStats:
        """Live counters of what the dispatcher did."""
        ...

    @property
    def running(self) -> bool:
        """Whether it has started and not begun to stop."""
        ...

    @property
    def in_flight(self) -> int:
        """Messages received and not finished yet."""
        ...

    def start(self) -> None:
        """Start receiving and handling; return once running."""
        ...

    def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully, waiting up to ``timeout`` seconds for the shutdown."""
        ...

    def run_until_idle(
        self, idle_seconds: float = 1.0, timeout: float | None = None, *, stop: bool = False
    ) -> DispatchStats:
        """Start if needed; return once nothing happened for ``idle_seconds``."""
        ...


class AsyncioDispatcher:
    """An :class:`~melange.aio.AsyncMessageDispatcher` behind a synchronous surface.

    The dispatcher runs on an event loop of its own, in a daemon thread started
    here; every method hands a coroutine to that loop and waits for its result.
    Once the dispatcher has stopped, the loop ends and its thread exits.

    Args:
        *args: The positional arguments of :class:`~melange.aio.AsyncMessageDispatcher`
            (backend, queue name, consumers, serializers).
        **options: Its keywords: a ``config``, or the options of
            :class:`~melange.dispatcher_config.DispatcherConfig`.
    """

    def __init__(self, *args: Any, **options: Any) -> None:
        # Built here, outside the loop: a bad argument raises in the caller, as with threads.
        self.dispatcher = AsyncMessageDispatcher(*args, **options)
        queue_name = self.dispatcher.queue_name
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._serve, name=f"melange-conformance-loop-{queue_name}", daemon=True
        )
        self._lock = threading.Lock()
        self._stopping: concurrent.futures.Future[None] | None = None
        self._thread.start()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.dispatcher!r}>"

    def __enter__(self) -> AsyncioDispatcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _serve(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            # What a stopped dispatcher left (an abandoned handler's task) ends with the loop.
            leftovers = asyncio.all_tasks(loop)
            for task in leftovers:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _call(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coroutine`` on the dispatcher's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    @property
    def stats(self) -> DispatchStats:
        """The dispatcher's live counters (thread-safe)."""
        return self.dispatcher.stats

    @property
    def running(self) -> bool:
        """Whether the dispatcher has started and not begun to stop."""
        return self.dispatcher.running

    @property
    def in_flight(self) -> int:
        """Messages received and not finished yet."""
        return self.dispatcher.in_flight

    def start(self) -> None:
        """Start the dispatcher; return once it runs (or raise what ``start()`` raised)."""
        self._call(self.dispatcher.start())

    def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully; idempotent. Waits up to ``timeout`` seconds (``None``: until done).

        The shutdown goes on after a timeout; a later call waits for the same one.
        """
        began = time.monotonic()
        with self._lock:
            if self._stopping is None:
                self._stopping = asyncio.run_coroutine_threadsafe(
                    self.dispatcher.stop(), self._loop
                )
                # Once stopped, nothing is left for the loop to do: end it and its thread.
                self._stopping.add_done_callback(
                    lambda _: self._loop.call_soon_threadsafe(self._loop.stop)
                )
        concurrent.futures.wait([self._stopping], timeout)
        if self._stopping.done():
            self._stopping.result()  # what the shutdown raised, if anything
            left = None if timeout is None else max(0.0, timeout - (time.monotonic() - began))
            self._thread.join(left)

    def run_until_idle(
        self, idle_seconds: float = 1.0, timeout: float | None = None, *, stop: bool = False
    ) -> DispatchStats:
        """Start if needed; return once nothing was received or handled for ``idle_seconds``.

        Args:
            idle_seconds: Real seconds without activity that count as idle.
            timeout: Return after this many seconds even if still busy.
            stop: Stop the dispatcher (waiting for the shutdown) before returning.

        Returns:
            A snapshot of :attr:`stats`.
        """
        snapshot = self._call(self.dispatcher.run_until_idle(idle_seconds, timeout))
        if stop:
            self.stop()
            snapshot = self.stats.snapshot()
        return snapshot


def make_dispatcher(
    driver: DriverName,
    backend: MessagingBackend,
    queue_name: str,
    consumers: Sequence[Consumer],
    serializers: SerializerRegistry | None = None,
    **options: Any,
) -> Dispatcher:
    """Build a dispatcher of ``driver`` with ``MessageDispatcher``'s arguments.

    Args:
        driver: ``"threads"`` or ``"asyncio"``.
        backend: Where messages come from.
        queue_name: The queue to consume.
        consumers: The consumers (synchronous ones work with both drivers).
        serializers: Decodes bodies.
        **options: Keywords of :class:`~melange.dispatcher.MessageDispatcher`.

    Returns:
        The dispatcher, not started.

    Raises:
        ValueError: ``driver`` is not one of :data:`DRIVERS`.
    """
    if driver == "threads":
        return MessageDispatcher(backend, queue_name, consumers, serializers, **options)
    if driver == "asyncio":
        return AsyncioDispatcher(backend, queue_name, consumers, serializers, **options)
    raise ValueError(f"unknown dispatcher driver {driver!r}; choose from {list(DRIVERS)!r}")


def drives_dispatcher(test: _F) -> _F:
    """Mark a conformance test as driving a dispatcher: it runs once per driver.

    The test builds its dispatchers with ``self.melange_dispatcher(...)``. Its
    variants are ``test_...[threads]`` and ``test_...[asyncio]`` (after any
    other parameters: ``test_...[dedup-asyncio]``). A subclass overriding the
    test (to mark a deviation, say) keeps both variants without repeating this.
    """
    setattr(test, _DRIVEN_ATTRIBUTE, True)
    # A mark puts the driver's id last; overrides, which lose marks, are
    # parametrized by ConformanceBase.pytest_generate_tests instead.
    mark = pytest.mark.parametrize(DRIVER_FIXTURE, DRIVERS, indirect=True)
    return mark(test)  # type: ignore[no-any-return]


def is_driven(cls: type, name: str) -> bool:
    """Whether ``name`` is, in ``cls`` or a base class, a test marked :func:`drives_dispatcher`."""
    return any(getattr(klass.__dict__.get(name), _DRIVEN_ATTRIBUTE, False) for klass in cls.__mro__)


def known_deviation(deviations: Mapping[str, str], name: str) -> str | None:
    """The reason ``deviations`` gives for the test named ``name``, if any.

    ``name`` is a test's node name (``request.node.name``). A key naming a test
    without its driver id applies to both drivers' variants: the key
    ``test_x`` matches ``test_x[threads]`` and ``test_x[asyncio]``, the key
    ``test_x[ack]`` matches ``test_x[ack-threads]`` and ``test_x[ack-asyncio]``.
    A key with the driver id matches that variant alone.

    Examples:
        >>> known_deviation({"test_x": "why"}, "test_x[asyncio]")
        'why'

    Args:
        deviations: Known deviations, by test name, each with its reason.
        name: The test's node name.

    Returns:
        The reason, or ``None`` when the test is not a known deviation.
    """
    if name in deviations:
        return deviations[name]
    base, bracket, ids = name.partition("[")
    ids = ids.removesuffix("]")
    for driver in DRIVERS if bracket else ():
        # Last as drives_dispatcher puts it; first where an override was parametrized.
        if ids == driver:
            return deviations.get(base)
        for others in (ids.removesuffix(f"-{driver}"), ids.removeprefix(f"{driver}-")):
            if others != ids:
                return deviations.get(f"{base}[{others}]")
    return None
