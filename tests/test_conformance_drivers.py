"""The dispatcher drivers of the conformance suite: threads and asyncio.

The runtime and fault tests that drive a dispatcher run once per driver
(``[threads]``, ``[asyncio]``); these tests check the asyncio driver's
synchronous facade, the parametrization (also of overridden tests), that a
deviation declared for a test covers both variants, that the JSON report
counts both, and that the ``[asyncio]`` variant really runs the asyncio
dispatcher (a broken one fails it, and only it).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from melange.backends.memory import MemoryBackend
from melange.consumers import consumer
from melange.dispatcher import MessageDispatcher
from melange.exceptions import ConfigurationError, QueueNotFound
from melange.factory import MessagingBackendFactory
from melange.message import Message
from melange.observability import Hooks
from melange.publishers import QueuePublisher
from melange.testing.conformance.drivers import (
    DRIVERS,
    AsyncioDispatcher,
    known_deviation,
    make_dispatcher,
)

pytest_plugins = ["pytester"]

QUEUE = "orders"


@pytest.fixture
def backend() -> MemoryBackend:
    backend = MemoryBackend()
    MessagingBackendFactory(backend).init_queue(QUEUE)
    return backend


def _publish(backend: MemoryBackend, count: int) -> None:
    QueuePublisher(backend, hooks=Hooks()).publish_batch(QUEUE, [{"n": n} for n in range(count)])


# ------------------------------------------------------------------ the facade
def test_make_dispatcher_builds_each_driver(backend: MemoryBackend) -> None:
    @consumer(name="noop")
    def noop(message: Message) -> None:
        pass

    assert DRIVERS == ("threads", "asyncio")
    threads = make_dispatcher("threads", backend, QUEUE, [noop], workers=3, close_backend=False)
    assert type(threads) is MessageDispatcher and threads.workers == 3
    facade = make_dispatcher("asyncio", backend, QUEUE, [noop], workers=3, close_backend=False)
    assert isinstance(facade, AsyncioDispatcher)
    assert facade.dispatcher.concurrency == 3  # workers= is the asyncio dispatcher's concurrency
    facade.stop()
    with pytest.raises(ValueError, match="unknown dispatcher driver 'fibers'"):
        make_dispatcher("fibers", backend, QUEUE, [noop])  # type: ignore[arg-type]


def test_the_asyncio_facade_runs_sync_consumers_to_idle_and_stops(backend: MemoryBackend) -> None:
    _publish(backend, 20)
    seen: list[int] = []
    threads: set[str] = set()

    @consumer(name="record")
    def record(message: Message) -> None:
        threads.add(threading.current_thread().name)
        seen.append(int(message.body["n"]))

    with AsyncioDispatcher(
        backend, QUEUE, [record], workers=4, wait_seconds=0.05, close_backend=False
    ) as dispatcher:
        assert not dispatcher.running
        stats = dispatcher.run_until_idle(idle_seconds=0.1, timeout=10)
        assert dispatcher.running and dispatcher.in_flight == 0
        assert stats.acked == 20 and dispatcher.stats.handled == 20
    assert not dispatcher.running
    assert sorted(seen) == list(range(20))
    # Sync consumers ran in the asyncio dispatcher's pool, not on the test's thread.
    assert threads and all(name.startswith("melange-aio-") for name in threads), threads
    assert not dispatcher._thread.is_alive(), "the event loop's thread outlived the stop"
    assert dispatcher._loop.is_closed()


def test_the_asyncio_facade_stops_within_its_timeout_and_finishes_later(
    backend: MemoryBackend,
) -> None:
    _publish(backend, 1)
    started, release = threading.Event(), threading.Event()

    @consumer(name="slow")
    def slow(message: Message) -> None:
        started.set()
        release.wait(10)

    dispatcher = AsyncioDispatcher(backend, QUEUE, [slow], wait_seconds=0.05, close_backend=False)
    dispatcher.start()
    assert started.wait(5)
    began = time.monotonic()
    dispatcher.stop(timeout=0.2)  # the handler still runs: the shutdown goes on
    assert time.monotonic() - began < 2
    assert not dispatcher.running and dispatcher._thread.is_alive()
    release.set()
    dispatcher.stop(timeout=10)  # waits for the same shutdown
    assert not dispatcher._thread.is_alive()
    assert dispatcher.stats.acked == 1
    assert backend.receive(QUEUE, 10, 0.0) == []


def test_the_asyncio_facade_raises_what_start_raises() -> None:
    @consumer(name="noop")
    def noop(message: Message) -> None:
        pass

    backend = MemoryBackend()
    dispatcher = AsyncioDispatcher(backend, "missing", [noop], close_backend=False)
    with pytest.raises(QueueNotFound):
        dispatcher.start()
    dispatcher.stop(timeout=5)
    assert not dispatcher._thread.is_alive()
    with pytest.raises(ConfigurationError):  # built in the caller's thread, errors included
        AsyncioDispatcher(backend, QUEUE, [])


# ---------------------------------------------------------- known deviations
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("test_x", "plain"),
        ("test_x[threads]", "plain"),
        ("test_x[asyncio]", "asyncio only"),
        ("test_y[ack-threads]", "ack"),
        ("test_y[ack-asyncio]", "ack"),
        ("test_y[no-dedup-asyncio]", "no-dedup"),
        ("test_y[asyncio-no-dedup]", "no-dedup"),  # an override parametrized by the hook
        ("test_y[leave-asyncio]", None),
        ("test_z[threads]", None),
        ("test_y[ack]", "ack"),
        ("test_y[threadsafe]", None),
    ],
)
def test_a_deviation_without_the_driver_id_covers_both_variants(
    name: str, expected: str | None
) -> None:
    deviations = {
        "test_x": "plain",
        "test_x[asyncio]": "asyncio only",
        "test_y[ack]": "ack",
        "test_y[no-dedup]": "no-dedup",
    }
    assert known_deviation(deviations, name) == expected


# ------------------------------------------------------ the suite, both drivers
_SUITE = '''
import dataclasses

import pytest

from melange.aio.dispatcher import AsyncMessageDispatcher
from melange.backends.memory import MemoryBackend
from melange.clock import ManualClock
from melange.testing.conformance import RuntimeConformance, runtime
from melange.testing.conformance.drivers import known_deviation

RUNTIME = "test_without_a_dead_letter_queue_the_dead_letter_outcome_leaves_the_message"
KNOWN_DEVIATIONS = {RUNTIME: "declared once, for both drivers"}


class TestMemory(RuntimeConformance):
    @pytest.fixture(autouse=True)
    def _fail_fast(self, monkeypatch):
        monkeypatch.setattr(runtime, "STALL_TIMEOUT", 1.0)  # a broken run fails in 1 s, not 10

    @pytest.fixture
    def clock(self):
        return ManualClock()

    @pytest.fixture
    def melange_backend(self, clock):
        backend = MemoryBackend(clock=clock)
        yield backend
        backend.close()

    @pytest.fixture
    def melange_wait(self, clock):
        return clock.advance


class TestTable(TestMemory):
    """A deviation table keyed by the test's name, as the plugins keep theirs."""

    @pytest.fixture(autouse=True)
    def _known_deviation(self, request):
        reason = known_deviation(KNOWN_DEVIATIONS, request.node.name)
        if reason is not None:
            request.applymarker(pytest.mark.xfail(reason=reason, strict=True))

    @pytest.fixture(autouse=True)
    def _break_it(self, monkeypatch):
        async def forget(self, delivery):  # acknowledges without handling
            return True

        monkeypatch.setattr(AsyncMessageDispatcher, "_handle", forget)
        # Both drivers handle runs of messages for plain consumers without a coroutine.
        monkeypatch.setattr("melange.dispatcher.MessageDispatcher._handle_now", lambda s, d: True)
        monkeypatch.setattr(AsyncMessageDispatcher, "_handle_now", lambda s, d: True)


class TestOverride(TestMemory):
    """A deviation declared by overriding the test: both variants stay, both marked."""

    @pytest.mark.xfail(reason="overridden", strict=True)
    def test_without_a_dead_letter_queue_the_dead_letter_outcome_leaves_the_message(
        self, melange_backend, melange_factory, melange_names, melange_wait
    ):
        super().test_without_a_dead_letter_queue_the_dead_letter_outcome_leaves_the_message(
            melange_backend, melange_factory, melange_names, melange_wait
        )
        raise AssertionError("passes on memory: the mark would XPASS without this")


class NoDeadLetters(MemoryBackend):
    name = "no-dead-letters"
    capabilities = dataclasses.replace(MemoryBackend.capabilities, dead_letter=False)


class TestNoDeadLetters(TestMemory):
    """A capability the test requires is missing: both variants skip."""

    @pytest.fixture
    def melange_backend(self, clock):
        backend = NoDeadLetters(clock=clock)
        yield backend
        backend.close()


class TestBrokenAsyncio(TestMemory):
    """An asyncio dispatcher that acknowledges without handling: only [asyncio] fails."""

    @pytest.fixture(autouse=True)
    def _break_it(self, monkeypatch):
        async def forget(self, delivery):
            return True

        monkeypatch.setattr(AsyncMessageDispatcher, "_handle", forget)
        # Runs of messages for plain consumers are handled in a pool thread, without it.
        monkeypatch.setattr(AsyncMessageDispatcher, "_handle_now", lambda s, d: True)
'''


def _outcomes(path: Path) -> dict[str, str]:
    report = json.loads(path.read_text())
    return {test["nodeid"].split("::", 1)[1]: test["outcome"] for test in report["tests"]}


def test_driven_tests_run_per_driver_with_deviations_and_report(pytester: pytest.Pytester) -> None:
    # Under xdist: the report is written from what the workers send (see report.py).
    pytester.makepyfile(test_suite=_SUITE)
    out = pytester.path / "report"
    result = pytester.runpytest_subprocess(
        "-p",
        "melange.testing.conformance.report",
        f"--melange-report={out}",
        "-k",
        "without_a_dead_letter_queue or oversized",
        "-rfx",
        "-n",
        "2",
    )
    runtime = "test_without_a_dead_letter_queue_the_dead_letter_outcome_leaves_the_message"
    oversized = "test_oversized_messages_are_refused_at_publish_and_nothing_is_sent"
    expected: dict[str, Any] = {}
    for cls, threads, asyncio in (
        ("TestMemory", "passed", "passed"),
        ("TestTable", "xfailed", "xfailed"),
        ("TestOverride", "xfailed", "xfailed"),
        ("TestBrokenAsyncio", "passed", "failed"),
    ):
        expected[f"{cls}::{runtime}[threads]"] = threads
        expected[f"{cls}::{runtime}[asyncio]"] = asyncio
        expected[f"{cls}::{oversized}"] = "passed"  # drives no dispatcher: one variant
    assert _outcomes(out / "memory.json") == expected
    assert _outcomes(out / "no-dead-letters.json") == {
        f"TestNoDeadLetters::{runtime}[threads]": "skipped",
        f"TestNoDeadLetters::{runtime}[asyncio]": "skipped",
        f"TestNoDeadLetters::{oversized}": "passed",
    }
    result.assert_outcomes(passed=8, failed=1, skipped=2, xfailed=4)
    for line in (
        "XFAIL *TestTable::*leaves_the_message[[]threads] - declared once, for both drivers",
        "XFAIL *TestTable::*leaves_the_message[[]asyncio] - declared once, for both drivers",
        "FAILED *TestBrokenAsyncio::*leaves_the_message[[]asyncio]*",
    ):
        result.stdout.fnmatch_lines([line])
    report = json.loads((out / "memory.json").read_text())
    assert report["totals"] == {
        "passed": 7,
        "failed": 1,
        "skipped": 0,
        "xfailed": 4,
        "xpassed": 0,
        "total": 12,
    }
    # Both variants carry the test's own name and requirements.
    names = {t["name"] for t in report["tests"] if t["nodeid"].endswith("[asyncio]")}
    assert names == {runtime}
    requires = [t["requires"] for t in report["tests"] if "TestMemory::test_without" in t["nodeid"]]
    assert requires == [["dead_letter"], ["dead_letter"]]
