"""Both dispatchers through broker outages: receives failing, a queue vanishing, start-up waits.

A memory backend whose ``receive``, ``get_queue`` and ``ack`` fail on demand
stands in for an unreachable broker. Each test runs the threaded
``MessageDispatcher`` and the asyncio ``AsyncMessageDispatcher`` alike, with
short backoffs so that it takes well under a second or two.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from melange.aio import AsyncMessageDispatcher
from melange.backends.base import ReceivedMessage
from melange.backends.memory import MemoryBackend
from melange.clock import ManualClock
from melange.consumers import Consumer, consumer
from melange.dedup import MemoryDedupCache
from melange.dispatcher import DispatchStats, MessageDispatcher, RetryPolicy
from melange.exceptions import BackendUnavailable, ConfigurationError, QueueNotFound
from melange.factory import MessagingBackendFactory
from melange.observability import Hooks
from melange.publishers import QueuePublisher
from melange.serializers import SerializerRegistry
from melange.topology import QueueSpec

QUEUE = "orders"
KINDS = ["threads", "asyncio"]
FAST_BACKOFF = RetryPolicy(base=0.01, factor=2.0, max_delay=0.1, jitter=0.0)
"""Waits between attempts in tests: 10 ms doubling, at most 100 ms."""
SLOW_BACKOFF = RetryPolicy(base=30.0, factor=1.0, max_delay=30.0, jitter=0.0)
"""30 s after the first failure: only a stop can end the wait within a test."""

Dispatcher = MessageDispatcher | AsyncMessageDispatcher


@dataclass(frozen=True)
class Paid:
    order: str


@pytest.fixture
def registry() -> SerializerRegistry:
    registry = SerializerRegistry()
    registry.bind(Paid, "paid.v1")
    return registry


class FaultyBackend(MemoryBackend):
    """A memory backend whose receive, get_queue and ack raise on demand.

    Attributes:
        receive_error: Raised (a new instance each time) by every receive while set.
        ack_error: Raised by every ack while set.
        lookup_failures: How many more get_queue calls raise ``BackendUnavailable``
            (-1: all of them).
    """

    def __init__(self, clock: ManualClock | None = None) -> None:
        super().__init__(clock=clock)
        self.lock = threading.Lock()
        self.receive_error: Callable[[], Exception] | None = None
        self.ack_error: Callable[[], Exception] | None = None
        self.lookup_failures = 0
        self.failed_receives: list[float] = []  # monotonic times
        self.good_receives: list[float] = []
        self.failed_acks = 0
        self.lookups: list[float] = []
        self.lookup_errors: list[Exception] = []

    def fail(self, error: Callable[[], Exception] | None, *, acks: bool = False) -> None:
        """Make receives (and acks, with ``acks``) raise ``error()``; ``None`` heals."""
        with self.lock:
            self.receive_error = error
            self.ack_error = error if acks else None

    def _receive(self, queue_name: str, max_messages: int, wait: float) -> list[ReceivedMessage]:
        with self.lock:
            if self.receive_error is not None:
                self.failed_receives.append(time.monotonic())
                raise self.receive_error()
        received = super()._receive(queue_name, max_messages, wait)
        with self.lock:
            self.good_receives.append(time.monotonic())
        return received

    def _ack(self, messages: list[ReceivedMessage]) -> None:
        with self.lock:
            if self.ack_error is not None:
                self.failed_acks += 1
                raise self.ack_error()
        super()._ack(messages)

    def _get_queue(self, name: str) -> QueueSpec | None:
        with self.lock:
            self.lookups.append(time.monotonic())
            if self.lookup_failures:
                self.lookup_failures -= 1
                error = BackendUnavailable(f"nothing answers (lookup {len(self.lookups)})")
                self.lookup_errors.append(error)
                raise error
        return super()._get_queue(name)


def unreachable() -> Exception:
    return BackendUnavailable("broker unreachable")


def make_backend(clock: ManualClock | None = None) -> FaultyBackend:
    backend = FaultyBackend(clock)
    MessagingBackendFactory(backend).init_queue(QUEUE, visibility_timeout=30.0)
    backend.lookups.clear()  # the factory's own
    return backend


def publish(backend: MemoryBackend, registry: SerializerRegistry, *orders: str) -> None:
    publisher = QueuePublisher(backend, registry, hooks=Hooks())
    for order in orders:
        publisher.publish(QUEUE, Paid(order))


def make_dispatcher(
    kind: str,
    backend: MemoryBackend,
    consumers: Sequence[Consumer],
    registry: SerializerRegistry,
    **options: Any,
) -> Dispatcher:
    options = {"wait_seconds": 0.05, "close_backend": False, "grace_period": 1.0, **options}
    if kind == "threads":
        return MessageDispatcher(backend, QUEUE, consumers, registry, **options)
    return AsyncMessageDispatcher(backend, QUEUE, consumers, registry, **options)


class Running:
    """A dispatcher's ``run()`` in a background thread (an asyncio one on its own loop)."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.error: BaseException | None = None
        self.returned = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            if isinstance(self.dispatcher, MessageDispatcher):
                self.dispatcher.run(install_signal_handlers=False)
            else:
                asyncio.run(self.dispatcher.run(install_signal_handlers=False))
        except BaseException as exc:
            self.error = exc
        finally:
            self.returned.set()

    def stop(self, timeout: float = 5.0) -> float:
        """Stop the dispatcher; return how long ``run()`` took to return. It must not raise."""
        began = time.monotonic()
        if isinstance(self.dispatcher, MessageDispatcher):
            self.dispatcher.stop(timeout)
        else:
            self.dispatcher.request_stop()  # thread-safe
        assert self.returned.wait(timeout), "run() did not return after stop"
        took = time.monotonic() - began
        assert self.error is None, f"run() raised {self.error!r}"
        return took

    @property
    def stats(self) -> DispatchStats:
        return self.dispatcher.stats.snapshot()


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the condition"
        time.sleep(0.005)


def records(
    caplog: pytest.LogCaptureFixture, level: int, text: str = ""
) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "melange.dispatcher" and r.levelno == level and text in r.getMessage()
    ]


# --------------------------------------------------------- receive outages
@pytest.mark.parametrize("kind", KINDS)
def test_a_run_of_failed_receives_logs_one_warning_then_one_info_when_they_work_again(
    kind: str, registry: SerializerRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    backend = make_backend()
    handled: list[Paid] = []
    backend.fail(unreachable)
    with caplog.at_level(logging.DEBUG, "melange.dispatcher"):
        running = Running(
            make_dispatcher(
                kind,
                backend,
                [consumer(handled.append)],
                registry,
                concurrent_receives=2,  # two receivers, one outage
                reconnect_backoff=FAST_BACKOFF,
            )
        )
        wait_until(lambda: len(backend.failed_receives) >= 12)
        publish(backend, registry, "o1")
        backend.fail(None)
        wait_until(lambda: handled == [Paid("o1")])
        running.stop()

    failed = len(backend.failed_receives)
    warnings = records(caplog, logging.WARNING)
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "receiving from queue orders fails (BackendUnavailable: broker unreachable)" in (
        warnings[0].getMessage()
    )
    assert getattr(warnings[0], "queue", None) == QUEUE
    assert records(caplog, logging.ERROR) == []
    assert len(records(caplog, logging.DEBUG, "failed again")) == failed - 1
    recovered = records(caplog, logging.INFO, "works again")
    assert len(recovered) == 1
    assert f"({failed} failed attempts)" in recovered[0].getMessage()
    assert caplog.records.index(recovered[0]) > caplog.records.index(warnings[0])
    stats = running.stats
    assert stats.receive_errors == failed
    assert stats.handled == stats.acked == 1


@pytest.mark.parametrize("kind", KINDS)
def test_receive_backoff_grows_up_to_its_cap_and_receiving_resumes_within_it_after_healing(
    kind: str, registry: SerializerRegistry
) -> None:
    cap = 0.2
    backoff = RetryPolicy(base=0.02, factor=2.0, max_delay=cap, jitter=0.0)
    backend = make_backend()
    handled: list[float] = []
    backend.fail(unreachable)
    running = Running(
        make_dispatcher(
            kind,
            backend,
            [consumer(lambda p: handled.append(time.monotonic()), name="record")],
            registry,
            reconnect_backoff=backoff,
        )
    )
    wait_until(lambda: len(backend.failed_receives) >= 8)
    publish(backend, registry, "o1")
    healed = time.monotonic()
    backend.fail(None)
    wait_until(lambda: bool(handled))
    running.stop()

    times = backend.failed_receives[:8]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    expected = [min(0.02 * 2**n, cap) for n in range(len(gaps))]  # 0.02 0.04 ... 0.2 0.2
    for gap, wanted in zip(gaps, expected, strict=True):
        assert wanted - 0.005 <= gap <= wanted + 0.15, (gaps, expected)
    assert handled[0] - healed <= cap + 0.3  # back within one capped wait of the heal


@pytest.mark.parametrize("kind", KINDS)
def test_a_copy_waits_while_the_first_runs_longer_than_its_claim(
    kind: str, registry: SerializerRegistry
) -> None:
    """docs/deduplication.md: a publisher's retry (two broker copies, one producer id) is
    handled once. The claim lives a visibility timeout; a handler that runs longer keeps its
    message by lease extension, and keeps its claim the same way, so the copy stays "busy"."""
    backend = MemoryBackend()
    MessagingBackendFactory(backend).init_queue(QUEUE, visibility_timeout=1.0)
    publisher = QueuePublisher(backend, registry, hooks=Hooks())
    for _ in range(2):
        publisher.publish(QUEUE, Paid("o1"), producer_id="order-42")
    lock = threading.Lock()
    running, peak, runs = [0], [0], [0]

    @consumer
    def charge(event: Paid) -> None:
        with lock:
            runs[0] += 1
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(2.5)  # over two visibility timeouts: the lease (and claim) are extended
        with lock:
            running[0] -= 1

    dispatcher = make_dispatcher(
        kind,
        backend,
        [charge],
        registry,
        dedup=MemoryDedupCache(),
        retry=RetryPolicy(base=0.5, factor=1.0, max_delay=0.5, jitter=0.0),
    )
    running_dispatcher = Running(dispatcher)
    try:
        # Both copies settled: one handled, the other acknowledged as its duplicate (or not).
        wait_until(lambda: backend.queue_depth(QUEUE) == (0, 0, 0) and not running[0], 15)
    finally:
        running_dispatcher.stop(timeout=10)
    stats = dispatcher.stats.snapshot()
    assert (runs[0], peak[0]) == (1, 1), stats
    assert stats.busy >= 1 and stats.lease_extended >= 2, stats
    assert backend.queue_depth(QUEUE) == (0, 0, 0)


class DownCache(MemoryDedupCache):
    """A deduplication cache whose server is down."""

    def claim(self, key: str, ttl: float) -> Any:
        raise BackendUnavailable("Redis at localhost:6379 is unavailable")


class HandlerErrors(Hooks):
    def __init__(self) -> None:
        self.errors: list[tuple[str, BaseException]] = []

    def on_handler_error(
        self, queue_name: str, message: Any, consumer: str, error: BaseException, retry_in: Any
    ) -> None:
        self.errors.append((consumer, error))


@pytest.mark.parametrize("kind", KINDS)
def test_a_cache_that_cannot_claim_is_reported_as_the_cache_not_the_consumer(
    kind: str, registry: SerializerRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    """No consumer ran: not a handler error, not a failed call; the message is retried."""
    backend = make_backend()
    publish(backend, registry, "o1")
    ran: list[Paid] = []
    hooks = HandlerErrors()
    dispatcher = make_dispatcher(
        kind,
        backend,
        [consumer(ran.append, name="billing")],
        registry,
        dedup=DownCache(),
        hooks=hooks,
        retry=SLOW_BACKOFF,
    )
    with caplog.at_level(logging.WARNING, "melange"):
        running = Running(dispatcher)
        try:
            wait_until(lambda: dispatcher.stats.retried == 1)
        finally:
            running.stop()
    stats = dispatcher.stats.snapshot()
    assert (ran, stats.failed, stats.acked, hooks.errors) == ([], 0, 0, []), stats
    (record,) = [r for r in caplog.records if "could not claim" in r.getMessage()]
    assert record.levelname == "ERROR" and "billing" in record.getMessage()
    assert "BackendUnavailable" in record.getMessage()
    assert not [r for r in caplog.records if "consumer billing failed" in r.getMessage()]


class HangingBackend(FaultyBackend):
    """Its receives hang, once ``hang`` is set, until ``unhang`` is set: a silent connection."""

    calls_block = True

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock)
        self.hang, self.hanging, self.unhang = (
            threading.Event(),
            threading.Event(),
            threading.Event(),
        )

    def _receive(self, queue_name: str, max_messages: int, wait: float) -> list[ReceivedMessage]:
        if self.hang.is_set():
            self.hanging.set()
            self.unhang.wait(30)
        return super()._receive(queue_name, max_messages, wait)


@pytest.mark.parametrize("kind", KINDS)
def test_a_receive_that_hangs_is_given_up_on_after_grace_and_wait_and_loses_nothing(
    kind: str, registry: SerializerRegistry
) -> None:
    """docs/consuming.md: the shutdown waits for a hung receive until the grace period,
    ``wait_seconds`` and one more second have passed; what it returns later is not handled."""
    clock = ManualClock()
    backend = HangingBackend(clock)
    MessagingBackendFactory(backend).init_queue(QUEUE, visibility_timeout=30.0)
    handled: list[Paid] = []
    backend.hang.set()
    running = Running(
        make_dispatcher(
            kind, backend, [consumer(handled.append)], registry, grace_period=0.2, wait_seconds=0.05
        )
    )
    try:
        assert backend.hanging.wait(5), "no receive started"
        publish(backend, registry, "o1")  # what the hung receive will return
        took = running.stop(timeout=10.0)
    finally:
        backend.unhang.set()
    assert 0.2 + 0.05 + 1.0 - 0.1 <= took <= 0.2 + 0.05 + 1.0 + 1.0, took
    time.sleep(0.3)  # the receive returns now, to a stopped dispatcher
    assert handled == []
    clock.advance(31.0)  # released at once, or left to its visibility timeout: back either way
    assert [r.body for r in backend.receive(QUEUE, 10, 0.0)] == [registry.encode(Paid("o1")).body]


@pytest.mark.parametrize("kind", KINDS)
def test_the_default_backoff_waits_at_most_five_seconds(
    kind: str, registry: SerializerRegistry
) -> None:
    dispatcher = make_dispatcher(kind, make_backend(), [consumer(lambda p: None)], registry)
    assert dispatcher.config.reconnect_backoff.max_delay == 5.0
    assert dispatcher.config.startup_timeout == 60.0
    # What the receivers wait after the n-th failure in a row.
    delays = [
        dispatcher._settlement.receive_failed(n, BackendUnavailable("down")) for n in range(1, 41)
    ]
    assert 0.05 <= delays[0] <= 0.15  # the first retry comes quickly
    assert max(delays) <= 5.0
    assert min(delays[-10:]) >= 4.0  # capped, with jitter below the cap


@pytest.mark.parametrize("kind", KINDS)
def test_a_vanished_queue_does_not_stop_the_dispatcher_and_it_resumes_once_recreated(
    kind: str, registry: SerializerRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    backend = make_backend()
    handled: list[Paid] = []
    publish(backend, registry, "o1")
    with caplog.at_level(logging.INFO, "melange.dispatcher"):
        running = Running(
            make_dispatcher(
                kind, backend, [consumer(handled.append)], registry, reconnect_backoff=FAST_BACKOFF
            )
        )
        wait_until(lambda: running.stats.acked == 1)
        backend.delete_queue(QUEUE)  # the broker restarted and lost its state
        wait_until(lambda: running.stats.receive_errors >= 5)
        assert running.dispatcher.running and not running.returned.is_set()
        MessagingBackendFactory(backend).init_queue(QUEUE, visibility_timeout=30.0)
        publish(backend, registry, "o2")
        wait_until(lambda: len(handled) == 2)
        running.stop()

    assert handled == [Paid("o1"), Paid("o2")]
    warnings = records(caplog, logging.WARNING)
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "QueueNotFound" in warnings[0].getMessage()
    assert "resumes once the queue exists again" in warnings[0].getMessage()
    assert records(caplog, logging.ERROR) == []
    assert len(records(caplog, logging.INFO, "works again")) == 1
    assert running.stats.acked == 2


@pytest.mark.parametrize("kind", KINDS)
def test_acks_failing_in_an_outage_are_logged_not_counted_and_the_message_comes_back(
    kind: str, registry: SerializerRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    backend = make_backend(clock)
    handled: list[Paid] = []

    @consumer
    def record(event: Paid) -> None:
        handled.append(event)
        if len(handled) == 1:  # the broker goes away while the handler runs
            backend.fail(unreachable, acks=True)

    publish(backend, registry, "o1")
    with caplog.at_level(logging.INFO, "melange.dispatcher"):
        running = Running(
            make_dispatcher(kind, backend, [record], registry, reconnect_backoff=FAST_BACKOFF)
        )
        wait_until(lambda: backend.failed_acks == 1 and len(backend.failed_receives) >= 3)
        assert running.stats.acked == 0
        backend.fail(None)
        clock.advance(31.0)  # the visibility timeout passes: the broker delivers it again
        wait_until(lambda: running.stats.acked == 1)
        running.stop()

    assert handled == [Paid("o1"), Paid("o1")]  # at least once
    stats = running.stats
    assert stats.handled == 2 and stats.acked == 1
    assert len(records(caplog, logging.ERROR, "could not acknowledge 1 message(s)")) == 1
    assert len(records(caplog, logging.WARNING)) == 1  # the receive outage, once
    assert len(records(caplog, logging.INFO, "works again")) == 1
    assert backend.queue_depth(QUEUE) == (0, 0, 0)


@pytest.mark.parametrize("kind", KINDS)
def test_stop_ends_a_receive_backoff_at_once(kind: str, registry: SerializerRegistry) -> None:
    backend = make_backend()
    backend.fail(unreachable)
    running = Running(
        make_dispatcher(
            kind, backend, [consumer(lambda p: None)], registry, reconnect_backoff=SLOW_BACKOFF
        )
    )
    wait_until(lambda: len(backend.failed_receives) == 1)
    time.sleep(0.05)  # now waiting 30 s before the next attempt
    assert running.stop() < 1.0
    assert len(backend.failed_receives) == 1


# ----------------------------------------------------------------- start-up
@pytest.mark.parametrize("kind", KINDS)
def test_start_waits_for_an_unreachable_broker_then_runs(
    kind: str, registry: SerializerRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    backend = make_backend()
    backend.lookup_failures = 4
    handled: list[Paid] = []
    publish(backend, registry, "o1")
    with caplog.at_level(logging.INFO, "melange.dispatcher"):
        running = Running(
            make_dispatcher(
                kind,
                backend,
                [consumer(handled.append)],
                registry,
                startup_timeout=5.0,
                reconnect_backoff=FAST_BACKOFF,
            )
        )
        wait_until(lambda: handled == [Paid("o1")])
        running.stop()

    assert len(backend.lookups) == 5
    warnings = records(caplog, logging.WARNING)
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    assert "looking up queue orders at start-up fails (BackendUnavailable: nothing answers" in (
        message
    )
    assert "waiting up to 5s (startup_timeout)" in message
    recovered = records(caplog, logging.INFO, "works again")
    assert len(recovered) == 1 and "(4 failed attempts)" in recovered[0].getMessage()
    assert records(caplog, logging.INFO, "dispatching queue orders")


@pytest.mark.parametrize("kind", KINDS)
def test_start_raises_the_last_error_once_startup_timeout_has_passed(
    kind: str, registry: SerializerRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    backend = make_backend()
    backend.lookup_failures = -1
    dispatcher = make_dispatcher(
        kind,
        backend,
        [consumer(lambda p: None)],
        registry,
        startup_timeout=0.4,
        reconnect_backoff=FAST_BACKOFF,
    )
    began = time.monotonic()
    with (
        caplog.at_level(logging.INFO, "melange.dispatcher"),
        pytest.raises(BackendUnavailable) as raised,
    ):
        start(dispatcher)
    took = time.monotonic() - began

    assert 0.4 <= took <= 0.4 + FAST_BACKOFF.max_delay + 0.4
    assert len(backend.lookups) >= 5
    assert raised.value is backend.lookup_errors[-1]
    assert len(records(caplog, logging.WARNING)) == 1
    assert not dispatcher.running


@pytest.mark.parametrize("kind", KINDS)
def test_a_startup_timeout_of_zero_raises_at_the_first_failure(
    kind: str, registry: SerializerRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    backend = make_backend()
    backend.lookup_failures = -1
    dispatcher = make_dispatcher(
        kind, backend, [consumer(lambda p: None)], registry, startup_timeout=0
    )
    with (
        caplog.at_level(logging.INFO, "melange.dispatcher"),
        pytest.raises(BackendUnavailable),
    ):
        start(dispatcher)
    assert len(backend.lookups) == 1
    assert records(caplog, logging.WARNING) == []


@pytest.mark.parametrize("kind", KINDS)
def test_start_waits_for_the_broker_but_not_for_a_missing_queue(
    kind: str, registry: SerializerRegistry
) -> None:
    backend = FaultyBackend()  # reachable after two failures, but the queue was never created
    backend.lookup_failures = 2
    dispatcher = make_dispatcher(
        kind,
        backend,
        [consumer(lambda p: None)],
        registry,
        startup_timeout=30.0,
        reconnect_backoff=FAST_BACKOFF,
    )
    began = time.monotonic()
    with pytest.raises(QueueNotFound, match="orders"):
        start(dispatcher)
    assert time.monotonic() - began < 1.0
    assert len(backend.lookups) == 3


@pytest.mark.parametrize("kind", KINDS)
def test_stop_ends_the_startup_wait_at_once_and_run_returns(
    kind: str, registry: SerializerRegistry
) -> None:
    backend = make_backend()
    backend.lookup_failures = -1
    running = Running(
        make_dispatcher(
            kind,
            backend,
            [consumer(lambda p: None)],
            registry,
            startup_timeout=60.0,
            reconnect_backoff=SLOW_BACKOFF,
        )
    )
    wait_until(lambda: len(backend.lookups) == 1)
    time.sleep(0.05)  # now waiting 30 s before the next attempt
    assert running.stop() < 1.0
    assert len(backend.lookups) == 1
    assert not running.dispatcher.running


@pytest.mark.parametrize("kind", KINDS)
def test_sigterm_ends_the_startup_wait_and_run_returns(
    kind: str, registry: SerializerRegistry
) -> None:
    backend = make_backend()
    backend.lookup_failures = -1
    dispatcher = make_dispatcher(
        kind,
        backend,
        [consumer(lambda p: None)],
        registry,
        startup_timeout=60.0,
        reconnect_backoff=SLOW_BACKOFF,
    )
    received_by_test: list[int] = []

    def send_sigterm() -> None:
        wait_until(lambda: len(backend.lookups) == 1)
        time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    def safety_net() -> None:  # if run() did not handle SIGTERM, do not hang the test run
        time.sleep(10)
        if isinstance(dispatcher, MessageDispatcher):
            dispatcher.stop(0)
        else:
            dispatcher.request_stop()

    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received_by_test.append(signum))
    try:
        threading.Thread(target=send_sigterm, daemon=True).start()
        threading.Thread(target=safety_net, daemon=True).start()
        began = time.monotonic()
        if isinstance(dispatcher, MessageDispatcher):
            dispatcher.run()
        else:
            asyncio.run(dispatcher.run())
        assert time.monotonic() - began < 5
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert received_by_test == []  # run() handled it
    assert len(backend.lookups) == 1
    assert not dispatcher.running


# ------------------------------------------------------------------ options
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"startup_timeout": -1}, "startup_timeout"),
        ({"startup_timeout": "60"}, "startup_timeout"),
        ({"startup_timeout": float("inf")}, "startup_timeout"),
        ({"startup_timeout": True}, "startup_timeout"),
        ({"reconnect_backoff": 5.0}, "reconnect_backoff"),
    ],
)
def test_invalid_outage_options_are_refused(
    kind: str, registry: SerializerRegistry, options: dict[str, Any], named: str
) -> None:
    with pytest.raises(ConfigurationError, match=named):
        make_dispatcher(kind, make_backend(), [consumer(lambda p: None)], registry, **options)


def start(dispatcher: Dispatcher) -> None:
    """Call ``start()`` in this thread, on a new event loop for an asyncio dispatcher."""
    if isinstance(dispatcher, MessageDispatcher):
        dispatcher.start()
    else:
        asyncio.run(dispatcher.start())
