"""Conformance tests of the runtime: publishers and the dispatcher over the backend contract.

The runtime (:mod:`melange.publishers`, :mod:`melange.dispatcher`,
:mod:`melange.aio`) is written once against the contract, so these tests hold
on every backend that passes the rest of the suite: many messages through
failing handlers, a consumer process killed or stopped mid-batch, a handler
that outlives the visibility timeout, and messages no consumer can take. Each
test that drives a dispatcher runs twice, with the threaded and with the
asyncio dispatcher (``[threads]``, ``[asyncio]``; see
:mod:`melange.testing.conformance.drivers`).

Broker time passes only through ``melange_wait``. Where the runtime itself
measures time (the lease heartbeat, retry backoff), the tests let real time
pass as well (:func:`_pass_time`), so a backend on a manual clock keeps both
clocks in step. The two cross-process tests need a backend another process
can reach; a test class describes it with the ``melange_backend_spec``
fixture, and the tests skip without it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from melange.backends import load_backend
from melange.backends.base import MessagingBackend, OutgoingMessage, ReceivedMessage
from melange.consumers import consumer
from melange.dedup import MemoryDedupCache
from melange.dispatcher import Outcome, RetryPolicy
from melange.exceptions import MessageTooLarge
from melange.factory import MessagingBackendFactory
from melange.message import (
    MANIFEST_ATTRIBUTE,
    PRODUCER_ID_ATTRIBUTE,
    SERIALIZER_ATTRIBUTE,
    Message,
)
from melange.observability import Hooks
from melange.publishers import QueuePublisher
from melange.serializers import SerializerRegistry
from melange.testing.conformance._support import (
    MARGIN,
    POLL_INTERVAL,
    POLL_TIMEOUT,
    VISIBILITY_TIMEOUT,
    ConformanceBase,
    ResourceNames,
    Wait,
    assert_empty,
    drain,
    in_range,
    receive_now,
    requires,
    without_dead_letter_reason,
)
from melange.testing.conformance.drivers import Dispatcher, DriverName, drives_dispatcher

BackendSpec = tuple[str, Mapping[str, Any]]
"""``(backend name, options)``: ``load_backend(name, **options)`` reaches the broker from
another process."""

LOAD = 1000
ASYNCIO_LOAD = 300
"""Messages of the load test's asyncio variant: the dispatchers share the settlement code, so
fewer messages show the event-loop scheduling at a third of the time."""
BACKLOG = 20
"""Messages published ahead of the consumers in the load test."""
WORKERS = 4
FAILURE_RATE = 0.2
"""Share of messages the flaky handler fails on before it succeeds (see _failure_plan)."""
PERMANENT_RATE = 0.02
"""Share of messages whose handler always fails; they end in the dead-letter queue."""
SEED = 20_240_605
LOAD_VISIBILITY = 10.0
"""Visibility timeout of the load test where failed messages are nacked: long enough that no
message comes back while it is being handled, whatever the broker's speed."""
RUNTIME_TIMEOUT = 100.0
"""Real seconds a runtime test may run before it fails, however steady its progress."""
STALL_TIMEOUT = POLL_TIMEOUT
"""Real seconds without progress after which a runtime test fails."""
STEP = 0.05
"""Seconds (broker time, and at least as much real time) between two checks of a waiting test."""
LEASE_CHECK_EVERY = 5
"""Steps between two receives of the lease test: one receive per half visibility timeout."""
TINY_RETRY = RetryPolicy(base=0.001, factor=2.0, max_delay=0.05, jitter=0.5)
"""Retries after a few milliseconds (brokers with whole-second delays round up to 1 s)."""
CHILD_TIMEOUT = 30.0
"""Real seconds a consumer process may take to start and pick up its messages."""
CHILD_MODULE = "melange.testing.conformance._consumer_process"
"""The consumer process's entry point (``python -m``); not imported here, runpy would warn."""
PROGRESS_FILE = "progress.log"
RELEASE_FILE = "release"
CHILD_WORKERS = 4
STUCK_GRACE_PERIOD = 0.5
"""Grace period of the consumer process whose handlers never return."""
ABANDON_GRACE_PERIOD = 0.3
"""Grace period of the dispatcher that abandons a handler."""
CHILD_MESSAGES = 12
SKIP_WITHOUT_SPEC = "backend lives in this process; provide melange_backend_spec"

ORDER_MANIFEST = "melange.conformance.order.v1"


@dataclass(frozen=True)
class Order:
    """The payload the runtime tests publish, bound to :data:`ORDER_MANIFEST`."""

    n: int
    label: str


def _registry() -> SerializerRegistry:
    registry = SerializerRegistry()
    registry.bind(Order, ORDER_MANIFEST)
    return registry


def _pass_time(wait: Wait, seconds: float) -> None:
    """Let ``seconds`` of broker time pass, and at least as much real time.

    The dispatcher's lease heartbeat runs on real time: on a manual clock,
    advancing the clock alone would expire leases the heartbeat never saw age.
    """
    started = time.monotonic()
    wait(seconds)
    left = seconds - (time.monotonic() - started)
    if left > 0:
        time.sleep(left)


def _wait_for(
    done: Callable[[], bool],
    wait: Wait,
    progress: Callable[[], object],
    describe: Callable[[], str],
    *,
    step: float = STEP,
) -> None:
    """Let time pass in steps until ``done()``; fail once ``progress()`` stalls.

    Args:
        done: The condition to reach.
        wait: Lets broker time pass (``melange_wait``).
        progress: Any value that changes while the runtime makes progress.
        describe: The state, for the failure message.
        step: Broker seconds per step.
    """
    started = last_change = time.monotonic()
    last = progress()
    while not done():
        now = time.monotonic()
        current = progress()
        if current != last:
            last, last_change = current, now
        if now - last_change > STALL_TIMEOUT:
            pytest.fail(f"no progress for {now - last_change:.0f} s: {describe()}")
        if now - started > RUNTIME_TIMEOUT:
            pytest.fail(f"not done after {now - started:.0f} s: {describe()}")
        _pass_time(wait, step)


def _stop_while_time_passes(dispatcher: Dispatcher, wait: Wait, seconds: float) -> None:
    """Stop the dispatcher while ``seconds`` of broker time pass; return once it has stopped.

    Its last long poll ends meanwhile, so the stop costs no extra time.
    """
    dispatcher.stop(timeout=0)
    wait(seconds)
    dispatcher.stop(timeout=RUNTIME_TIMEOUT)


class _Recorder(Hooks):
    """Remembers what the dispatcher reported, by message id; thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.receive_counts: dict[str, list[int]] = {}
        self.bodies: dict[str, bytes] = {}
        self.undecodable: Counter[str] = Counter()
        self.unhandled: Counter[str] = Counter()
        self.dead_lettered: Counter[str] = Counter()

    def on_receive(self, queue_name: str, messages: Sequence[ReceivedMessage]) -> None:
        with self.lock:
            for received in messages:
                self.receive_counts.setdefault(received.message_id, []).append(
                    received.receive_count
                )
                self.bodies[received.message_id] = received.body

    def on_undecodable(
        self, queue_name: str, received: ReceivedMessage, error: Exception, outcome: str
    ) -> None:
        with self.lock:
            self.undecodable[received.message_id] += 1

    def on_unhandled(self, queue_name: str, message: Message, outcome: str) -> None:
        with self.lock:
            self.unhandled[str(message.id)] += 1

    def on_dead_lettered(self, queue_name: str, received: ReceivedMessage, reason: str) -> None:
        with self.lock:
            self.dead_lettered[received.message_id] += 1

    def refused(self) -> set[str]:
        """Ids of messages reported undecodable or unhandled."""
        with self.lock:
            return set(self.undecodable) | set(self.unhandled)


def _failure_plan(count: int, max_receives: int) -> dict[int, int | None]:
    """How many times the flaky handler fails each message before it succeeds.

    ``None`` means always. Transient failures stop at least one delivery short
    of ``max_receives``, so every such message succeeds before the broker gives up.
    """
    rng = random.Random(SEED)
    most = max(0, min(2, max_receives - 2))
    plan: dict[int, int | None] = {}
    for n in range(count):
        if rng.random() < PERMANENT_RATE:
            plan[n] = None
            continue
        failures = 0
        while failures < most and rng.random() < FAILURE_RATE:
            failures += 1
        plan[n] = failures
    return plan


# ---------------------------------------------------------------- processes
@contextlib.contextmanager
def _backend_from_spec(spec: BackendSpec) -> Iterator[tuple[MessagingBackend, ResourceNames]]:
    """A backend in this process reaching the same broker as the consumer process."""
    backend = load_backend(spec[0], **dict(spec[1]))
    names = ResourceNames()
    try:
        yield backend, names
    finally:
        names.cleanup(backend)
        backend.close()


class _ConsumerProcess:
    """A dispatcher of ``driver`` in another process whose handlers block until released."""

    def __init__(
        self,
        spec: BackendSpec,
        queue: str,
        directory: Path,
        driver: DriverName,
        grace_period: float = CHILD_TIMEOUT,
    ) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config = directory / "config.json"
        self.log = directory / "consumer.log"
        self.config.write_text(
            json.dumps(
                {
                    "backend": spec[0],
                    "options": dict(spec[1]),
                    "queue": queue,
                    "driver": driver,
                    "progress_file": str(directory / PROGRESS_FILE),
                    "release_file": str(directory / RELEASE_FILE),
                    "workers": CHILD_WORKERS,
                    "wait_seconds": 1.0,
                    "grace_period": grace_period,
                }
            )
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", CHILD_MODULE, str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def events(self, kind: str) -> list[int]:
        """The message numbers of the ``started`` or ``finished`` lines, in order."""
        path = self.directory / PROGRESS_FILE
        if not path.exists():
            return []
        numbers = []
        for line in path.read_text(encoding="utf-8").splitlines():
            event, _, number = line.partition(" ")
            if event == kind and number.isdigit():
                numbers.append(int(number))
        return numbers

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""

    def wait_until(
        self, condition: Callable[[], bool], what: str, timeout: float = CHILD_TIMEOUT
    ) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(
                    f"the consumer process exited with code {self.process.returncode} before "
                    f"{what}; its output:\n{self.output()}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting until {what}; its output:\n{self.output()}")
            time.sleep(POLL_INTERVAL)

    def release(self) -> None:
        (self.directory / RELEASE_FILE).touch()

    def signal(self, signum: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"the consumer process did not exit within {timeout:g} s; its output:\n"
                f"{self.output()}"
            )

    def kill(self) -> None:
        """Stop the process for good (cleanup); harmless when it already exited."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def _order_numbers(received: Sequence[ReceivedMessage]) -> list[int]:
    return [int(json.loads(message.body)["n"]) for message in received]


class RuntimeConformance(ConformanceBase):
    """Publishers and the dispatcher on the backend under test."""

    @pytest.fixture
    def melange_backend_spec(self) -> BackendSpec | None:
        """How another process reaches the broker: ``(backend name, options)``, or ``None``.

        ``None`` (the default) skips the tests that kill or stop a consumer
        process. The tests load a backend from the spec in the test process too.
        """
        return None

    # ------------------------------------------------------------------ load
    @drives_dispatcher
    @requires("dead_letter")
    @pytest.mark.parametrize(
        "dedup", [pytest.param(True, id="dedup"), pytest.param(False, id="no-dedup")]
    )
    def test_every_message_is_handled_despite_failing_handlers(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
        melange_wait: Wait,
        dedup: bool,
    ) -> None:
        """1,000 messages, 4 workers, a handler failing 20% of the time and on a fixed few always.

        Every message is handled to success by both consumers, exactly once per
        consumer with a deduplication cache, at least once without; the ones that
        always fail reach the dead-letter queue with body and attributes intact.
        The asyncio variant sends 300 messages.
        """
        backend = melange_backend
        queue, dlq = melange_names.queue(), melange_names.queue("dlq")
        max_receives = int(in_range(3, backend.capabilities.max_receive_count_range))
        # Failed messages are nacked where the backend can, else they wait out the timeout.
        visibility = LOAD_VISIBILITY if backend.capabilities.nack_delay else VISIBILITY_TIMEOUT
        visibility = in_range(visibility, (0.0, backend.capabilities.max_visibility_timeout))
        melange_factory.init_queue(
            queue,
            dead_letter_queue_name=dlq,
            max_receive_count=max_receives,
            visibility_timeout=visibility,
        )
        load = LOAD if self.melange_driver == "threads" else ASYNCIO_LOAD
        plan = _failure_plan(load, max_receives)
        permanent = {n for n, failures in plan.items() if failures is None}
        good = set(plan) - permanent
        registry = _registry()
        orders = [
            Message(Order(n, f"order-{n}"), attributes={"n": str(n), "kind": "load"})
            for n in range(load)
        ]
        publisher = QueuePublisher(backend, registry, hooks=Hooks())
        assert permanent and len(good) > load / 2
        # The few that always fail go first: their retries overlap the rest of the run.
        sequence = [orders[n] for n in sorted(permanent)] + [orders[n] for n in sorted(good)]

        lock = threading.Lock()
        stopping = threading.Event()
        producer_errors: list[BaseException] = []
        calls: Counter[int] = Counter()
        flaky_done: Counter[int] = Counter()
        steady_done: Counter[int] = Counter()

        @consumer(Order, name="conformance-flaky")
        def flaky(order: Order) -> None:
            with lock:
                calls[order.n] += 1
                attempt = calls[order.n]
            failures = plan[order.n]
            if failures is None or attempt <= failures:
                raise RuntimeError(f"planned failure of order {order.n}, attempt {attempt}")
            with lock:
                flaky_done[order.n] += 1

        @consumer(Order, name="conformance-steady")
        def steady(order: Order) -> None:
            with lock:
                steady_done[order.n] += 1

        def produce() -> None:
            # Publish while the dispatcher consumes, keeping a bounded backlog as a steady
            # producer does: some brokers (moto) slow down with every message queued.
            try:
                for start in range(0, load, BACKLOG):
                    while not stopping.is_set():
                        with lock:
                            if len(steady_done) >= start - BACKLOG:
                                break
                        time.sleep(POLL_INTERVAL)
                    if stopping.is_set():
                        return
                    results = publisher.publish_batch(queue, sequence[start : start + BACKLOG])
                    failed = [result.error for result in results if not result.ok]
                    assert not failed, f"publishing failed: {failed[:3]}"
            except BaseException as error:  # reported by the test
                producer_errors.append(error)

        dead: dict[int, ReceivedMessage] = {}
        dispatcher = self.melange_dispatcher(
            backend,
            queue,
            [flaky, steady],
            registry,
            workers=WORKERS,
            # Short: a receive that only moves messages to the DLQ returns nothing, and
            # would otherwise hold the receiver for a whole long poll.
            wait_seconds=0.5,
            retry=TINY_RETRY,
            dedup=MemoryDedupCache() if dedup else None,
            hooks=Hooks(),
            close_backend=False,
        )

        def finished() -> bool:
            if producer_errors:
                raise producer_errors[0]
            for message in receive_now(backend, dlq):
                dead[_order_numbers([message])[0]] = message
                backend.ack([message])
            stats = dispatcher.stats.snapshot()
            if stats.undecodable or stats.unhandled:
                pytest.fail(f"messages the publisher sent were refused by the dispatcher: {stats}")
            wrongly_dead = sorted(set(dead) - permanent)
            if wrongly_dead:
                pytest.fail(
                    f"messages that succeed on a retry reached the dead-letter queue: "
                    f"{wrongly_dead[:10]} (handled {[calls[n] for n in wrongly_dead[:10]]} times)"
                )
            with lock:
                return len(flaky_done) == len(good) and len(dead) == len(permanent)

        def progress() -> tuple[int, int, int]:
            with lock:
                return (len(flaky_done), sum(steady_done.values()), len(dead))

        def describe() -> str:
            with lock:
                missing = sorted(good - set(flaky_done))
            return (
                f"{len(good) - len(missing)}/{len(good)} messages handled (missing e.g. "
                f"{missing[:5]}), {len(dead)}/{len(permanent)} in the dead-letter queue; "
                f"{dispatcher.stats.snapshot()}"
            )

        producer = threading.Thread(target=produce, name="conformance-producer", daemon=True)
        dispatcher.start()
        producer.start()
        try:
            # Checks, each with a receive from the DLQ, sparingly: they compete with the dispatcher.
            _wait_for(finished, melange_wait, progress, describe, step=0.25)
        finally:
            stopping.set()
            producer.join(POLL_TIMEOUT)
            dispatcher.stop(timeout=RUNTIME_TIMEOUT)

        assert set(flaky_done) == good
        assert set(steady_done) == set(plan)
        if dedup:
            repeated = {n: count for n, count in flaky_done.items() if count != 1}
            assert not repeated, f"handled to success more than once: {list(repeated.items())[:5]}"
            repeated = {n: count for n, count in steady_done.items() if count != 1}
            assert not repeated, (
                f"a consumer that succeeded ran again: {list(repeated.items())[:5]}"
            )
        else:
            # Without a cache the consumer that succeeded runs on every redelivery.
            for n, failures in plan.items():
                deliveries = max_receives if failures is None else failures + 1
                assert steady_done[n] >= deliveries, (n, failures, steady_done[n])
        assert dispatcher.stats.dead_lettered == 0, "the broker dead-letters, not the dispatcher"

        assert set(dead) == permanent
        for n, message in dead.items():
            expected = registry.encode(orders[n], producer_id=False)
            attributes = dict(message.attributes)
            assert attributes.pop(PRODUCER_ID_ATTRIBUTE), "the producer id was lost"
            assert (message.body, attributes) == (expected.body, dict(expected.attributes))
            assert registry.decode(message).body == Order(n, f"order-{n}")
        assert_empty(backend, queue)

    # ------------------------------------------------------- crash and stop
    @drives_dispatcher
    def test_messages_of_a_killed_consumer_process_are_redelivered(
        self, melange_backend_spec: BackendSpec | None, tmp_path: Path
    ) -> None:
        """SIGKILL mid-batch: the messages the process held come back to another consumer."""
        if melange_backend_spec is None:
            pytest.skip(SKIP_WITHOUT_SPEC)
        with _backend_from_spec(melange_backend_spec) as (backend, names):
            queue, numbers, process = _child_mid_batch(
                melange_backend_spec, backend, names, tmp_path / "killed", self.melange_driver
            )
            try:
                process.signal(signal.SIGKILL)
                assert process.wait(CHILD_TIMEOUT) == -signal.SIGKILL
            finally:
                process.kill()
            in_hand = set(process.events("started"))
            assert len(in_hand) == CHILD_WORKERS, "no prefetch: one message per worker"
            assert process.events("finished") == []

            handled: Counter[int] = Counter()
            lock = threading.Lock()

            @consumer(name="conformance-second")
            def second(message: Message) -> None:
                with lock:
                    handled[int(message.body["n"])] += 1

            recorder = _Recorder()
            dispatcher = self.melange_dispatcher(
                backend,
                queue,
                [second],
                workers=WORKERS,
                wait_seconds=1.0,
                hooks=recorder,
                close_backend=False,
            )
            dispatcher.start()
            try:
                deadline = time.monotonic() + VISIBILITY_TIMEOUT + POLL_TIMEOUT
                while set(handled) != numbers and time.monotonic() < deadline:
                    time.sleep(POLL_INTERVAL)
            finally:
                dispatcher.stop(timeout=CHILD_TIMEOUT)
            assert set(handled) == numbers, f"lost: {sorted(numbers - set(handled))}"
            with recorder.lock:
                counts = {
                    int(json.loads(body)["n"]): max(recorder.receive_counts[message_id])
                    for message_id, body in recorder.bodies.items()
                }
            assert all(counts[n] >= 2 for n in in_hand), (
                f"the killed process's messages {sorted(in_hand)} should be redeliveries: {counts}"
            )
            assert_empty(backend, queue)

    @drives_dispatcher
    def test_sigterm_lets_running_handlers_finish_and_starts_nothing_new(
        self, melange_backend_spec: BackendSpec | None, tmp_path: Path
    ) -> None:
        """SIGTERM mid-batch: running handlers finish and are acked; the process exits 0."""
        if melange_backend_spec is None:
            pytest.skip(SKIP_WITHOUT_SPEC)
        with _backend_from_spec(melange_backend_spec) as (backend, names):
            queue, numbers, process = _child_mid_batch(
                melange_backend_spec, backend, names, tmp_path / "stopped", self.melange_driver
            )
            try:
                process.signal(signal.SIGTERM)
                # Release the handlers only once the signal was seen: released earlier,
                # they could finish before it and free workers for new messages.
                with contextlib.suppress(pytest.fail.Exception):
                    process.wait_until(
                        lambda: "SIGTERM" in process.output(), "it logged SIGTERM", 5.0
                    )
                process.release()
                code = process.wait(CHILD_TIMEOUT)
            finally:
                process.kill()
            output = process.output()
            assert code == 0, f"exit code {code}; output:\n{output}"
            assert "Traceback" not in output, output
            started, finished = process.events("started"), process.events("finished")
            assert len(started) == CHILD_WORKERS, f"started after SIGTERM: {started}"
            assert sorted(finished) == sorted(started), "a running handler did not finish"

            # What finished was acknowledged: after the visibility timeout only the
            # messages the process never took are there.
            time.sleep(VISIBILITY_TIMEOUT + MARGIN)
            never_taken = numbers - set(finished)
            rest = drain(backend, queue, len(never_taken))
            assert sorted(_order_numbers(rest)) == sorted(never_taken)
            assert_empty(backend, queue)

    @drives_dispatcher
    def test_handlers_stuck_past_the_grace_period_do_not_keep_the_process_alive(
        self, melange_backend_spec: BackendSpec | None, tmp_path: Path
    ) -> None:
        """SIGTERM while every handler blocks for good: the process exits 0 after the grace period.

        No message is acknowledged: the stuck ones come back, and the others at once.
        """
        if melange_backend_spec is None:
            pytest.skip(SKIP_WITHOUT_SPEC)
        with _backend_from_spec(melange_backend_spec) as (backend, names):
            queue, numbers, process = _child_mid_batch(
                melange_backend_spec,
                backend,
                names,
                tmp_path / "stuck",
                self.melange_driver,
                grace_period=STUCK_GRACE_PERIOD,
            )
            try:
                process.signal(signal.SIGTERM)
                code = process.wait(CHILD_TIMEOUT)  # never released: only an exit ends it
            finally:
                process.kill()
            output = process.output()
            assert code == 0, f"exit code {code}; output:\n{output}"
            assert f"still running after the {STUCK_GRACE_PERIOD:g}s grace period" in output
            assert process.events("finished") == []
            timeout = VISIBILITY_TIMEOUT + POLL_TIMEOUT
            returned = drain(backend, queue, len(numbers), timeout=timeout)
            assert sorted(_order_numbers(returned)) == sorted(numbers), "a message was lost"
            assert_empty(backend, queue)

    # ----------------------------------------------------------------- lease
    @drives_dispatcher
    @requires("lease_extension")
    def test_a_handler_running_three_visibility_timeouts_keeps_its_message(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
        melange_wait: Wait,
    ) -> None:
        """The dispatcher extends the lease: no redelivery while the handler runs."""
        backend = melange_backend
        queue = melange_names.queue()
        melange_factory.init_queue(queue, visibility_timeout=VISIBILITY_TIMEOUT)
        QueuePublisher(backend, hooks=Hooks()).publish(queue, {"n": 1})
        started, release = threading.Event(), threading.Event()
        calls: list[int] = []

        @consumer(name="conformance-slow")
        def slow(message: Message) -> None:
            calls.append(int(message.body["n"]))
            started.set()
            release.wait(RUNTIME_TIMEOUT)

        dispatcher = self.melange_dispatcher(
            backend, queue, [slow], workers=2, wait_seconds=1.0, close_backend=False
        )
        dispatcher.start()
        try:
            assert started.wait(POLL_TIMEOUT), "the handler never started"
            # Small steps of time, so a manual clock never runs ahead of the heartbeat; a
            # receive every few of them (a receive may take a while on a real broker).
            steps = round(3 * VISIBILITY_TIMEOUT / (2 * STEP))
            for step in range(1, steps + 1):
                _pass_time(melange_wait, 2 * STEP)
                running = step * 2 * STEP
                if step % LEASE_CHECK_EVERY == 0 or step == steps:
                    assert_empty(backend, queue)  # nobody else could take it
                assert calls == [1], f"redelivered after {running:.1f} s of handling"
            release.set()
            deadline = time.monotonic() + POLL_TIMEOUT
            while dispatcher.stats.acked < 1 and time.monotonic() < deadline:
                time.sleep(POLL_INTERVAL)
        except BaseException:
            release.set()
            dispatcher.stop(timeout=RUNTIME_TIMEOUT)
            raise
        _stop_while_time_passes(dispatcher, melange_wait, VISIBILITY_TIMEOUT + MARGIN)
        stats = dispatcher.stats.snapshot()
        assert (stats.acked, stats.lease_lost) == (1, 0), stats
        assert stats.lease_extended >= 2, stats
        assert calls == [1]
        assert_empty(backend, queue)  # acknowledged, not merely still leased

    @drives_dispatcher
    def test_a_handler_abandoned_after_the_grace_period_leaves_its_message_to_come_back(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
        melange_wait: Wait,
    ) -> None:
        """A handler still running when the grace period ends is abandoned, and its message too.

        The message is not acknowledged even once the handler returns: it comes back. Every
        message is counted once.
        """
        backend = melange_backend
        queue = melange_names.queue()
        melange_factory.init_queue(queue, visibility_timeout=VISIBILITY_TIMEOUT)
        QueuePublisher(backend, hooks=Hooks()).publish_batch(queue, [{"n": n} for n in range(3)])
        started, release, returned = threading.Event(), threading.Event(), threading.Event()

        @consumer(name="conformance-one-stuck")
        def one_stuck(message: Message) -> None:
            if int(message.body["n"]) == 0:
                started.set()
                release.wait(RUNTIME_TIMEOUT)
                returned.set()

        dispatcher = self.melange_dispatcher(
            backend,
            queue,
            [one_stuck],
            workers=4,
            wait_seconds=1.0,
            grace_period=ABANDON_GRACE_PERIOD,
            close_backend=False,
        )
        dispatcher.start()
        try:
            assert started.wait(POLL_TIMEOUT), "the handler of message 0 never started"
            deadline = time.monotonic() + POLL_TIMEOUT
            while dispatcher.stats.acked < 2 and time.monotonic() < deadline:
                time.sleep(POLL_INTERVAL)
            assert dispatcher.stats.acked == 2, dispatcher.stats.snapshot()
            dispatcher.stop(timeout=RUNTIME_TIMEOUT)
        finally:
            release.set()
        # The abandoned handler returns now: whatever its driver does after that, it does soon.
        assert returned.wait(POLL_TIMEOUT)
        time.sleep(ABANDON_GRACE_PERIOD)
        stats = dispatcher.stats.snapshot()
        assert (stats.received, stats.handled, stats.acked) == (3, 2, 2), stats
        _pass_time(melange_wait, VISIBILITY_TIMEOUT + MARGIN)
        back = drain(backend, queue, 1)
        assert _order_numbers(back) == [0], "the abandoned message did not come back"
        assert_empty(backend, queue)

    # ------------------------------------------------------- bad messages
    @drives_dispatcher
    @requires("dead_letter")
    @pytest.mark.parametrize("outcome", ["dead_letter", "ack", "leave"])
    def test_messages_no_consumer_can_take_get_the_configured_outcome(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
        melange_wait: Wait,
        caplog: pytest.LogCaptureFixture,
        outcome: Outcome,
    ) -> None:
        """Undecodable, unknown-manifest and foreign messages get the outcome; the loop goes on."""
        caplog.set_level(logging.DEBUG, logger="melange")
        backend = melange_backend
        queue, dlq = melange_names.queue(), melange_names.queue("dlq")
        # Messages left behind must not reach the broker's own dead-letter queue here.
        max_receives = int(in_range(20, backend.capabilities.max_receive_count_range))
        melange_factory.init_queue(
            queue,
            dead_letter_queue_name=dlq,
            max_receive_count=max_receives,
            visibility_timeout=VISIBILITY_TIMEOUT,
        )
        registry = _registry()
        publisher = QueuePublisher(backend, registry, hooks=Hooks())
        secret = f"s3cr3t-{melange_names.token}"  # in every bad body: bodies are never logged
        melange = {SERIALIZER_ATTRIBUTE: "json", MANIFEST_ATTRIBUTE: ORDER_MANIFEST}
        undecodable = {
            "truncated JSON": OutgoingMessage(f'{{"n": 1, "label": "{secret}"'.encode(), melange),
            "not UTF-8": OutgoingMessage(b"\xff\xfe" + secret.encode(), melange),
            "wrong shape": OutgoingMessage(json.dumps({"label": secret}).encode(), melange),
            "unknown serializer": OutgoingMessage(
                json.dumps({"n": 2, "label": secret}).encode(), {SERIALIZER_ATTRIBUTE: "avro"}
            ),
            "pickle refused": OutgoingMessage(
                pickle.dumps({"label": secret}), {SERIALIZER_ATTRIBUTE: "pickle"}
            ),
            "foreign text": OutgoingMessage(f"plain {secret}".encode(), {"source": "legacy"}),
            "foreign empty": OutgoingMessage(b"", {"source": "legacy"}),
        }
        unhandled = {
            "unknown manifest": OutgoingMessage(
                json.dumps({"n": 3, "label": secret}).encode(),
                {SERIALIZER_ATTRIBUTE: "json", MANIFEST_ATTRIBUTE: "conformance.unknown.v9"},
            ),
            "foreign JSON": OutgoingMessage(json.dumps({"legacy": secret}).encode()),
        }
        bad = {**undecodable, **unhandled}
        publisher.publish_batch(queue, [Order(n, "before") for n in range(5)])
        results = backend.publish(queue, list(bad.values()))
        bad_ids = {
            str(result.message_id): label for result, label in zip(results, bad, strict=True)
        }
        publisher.publish_batch(queue, [Order(n, "after") for n in range(5, 10)])

        handled: list[int] = []

        @consumer(Order, name="conformance-orders")
        def orders(order: Order) -> None:
            handled.append(order.n)

        recorder = _Recorder()
        dispatcher = self.melange_dispatcher(
            backend,
            queue,
            [orders],
            registry,
            workers=WORKERS,
            wait_seconds=1.0,
            on_undecodable=outcome,
            on_unhandled=outcome,
            hooks=recorder,
            close_backend=False,
        )

        def finished() -> bool:
            refused = recorder.refused()
            unexpected = refused - set(bad_ids)
            if unexpected:
                pytest.fail(
                    f"well-formed orders were refused: undecodable {dict(recorder.undecodable)}, "
                    f"unhandled {dict(recorder.unhandled)}; the bad ones are {bad_ids}"
                )
            return len(handled) >= 10 and refused == set(bad_ids)

        dispatcher.start()
        try:
            _wait_for(
                finished,
                melange_wait,
                lambda: (len(handled), len(recorder.refused())),
                lambda: (
                    f"handled {sorted(handled)}, not yet refused: "
                    f"{sorted(bad_ids[i] for i in set(bad_ids) - recorder.refused())}"
                ),
            )
        except BaseException:
            dispatcher.stop(timeout=RUNTIME_TIMEOUT)
            raise
        _stop_while_time_passes(dispatcher, melange_wait, VISIBILITY_TIMEOUT + MARGIN)

        assert sorted(handled) == list(range(10))
        kinds = {"undecodable": recorder.undecodable, "unhandled": recorder.unhandled}
        for label, expected in (("undecodable", undecodable), ("unhandled", unhandled)):
            reported = sorted(bad_ids[message_id] for message_id in kinds[label])
            assert reported == sorted(expected), (label, reported)
        if outcome != "leave":  # each is settled at its first delivery
            assert all(count == 1 for count in recorder.undecodable.values())
            assert all(count == 1 for count in recorder.unhandled.values())
        assert secret not in caplog.text, "a message body was logged"

        if outcome == "dead_letter":
            assert sorted(recorder.dead_lettered) == sorted(bad_ids)
            dead = drain(backend, dlq, len(bad))
            copies = [
                (m.body, sorted(without_dead_letter_reason(m.attributes).items())) for m in dead
            ]
            assert sorted(copies) == sorted(
                (m.body, sorted(m.attributes.items())) for m in bad.values()
            )
            assert_empty(backend, queue)
        elif outcome == "ack":
            assert_empty(backend, queue)
        else:
            back = drain(backend, queue, len(bad))
            assert sorted(m.body for m in back) == sorted(m.body for m in bad.values())
            assert all(m.receive_count >= 2 for m in back)
            assert_empty(backend, queue)
        assert_empty(backend, dlq)

    @drives_dispatcher
    @requires("dead_letter")
    def test_without_a_dead_letter_queue_the_dead_letter_outcome_leaves_the_message(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
        melange_wait: Wait,
    ) -> None:
        """With nowhere to move it, an undecodable message is left for redelivery, not lost."""
        backend = melange_backend
        queue = melange_names.queue()
        melange_factory.init_queue(queue, visibility_timeout=VISIBILITY_TIMEOUT)
        backend.publish(queue, [OutgoingMessage(b"\xff not json", {"kind": "poison"})])
        QueuePublisher(backend, _registry(), hooks=Hooks()).publish(queue, Order(1, "good"))
        handled: list[int] = []

        @consumer(Order, name="conformance-orders")
        def orders(order: Order) -> None:
            handled.append(order.n)

        dispatcher = self.melange_dispatcher(
            backend, queue, [orders], _registry(), wait_seconds=1.0, close_backend=False
        )

        def finished() -> bool:
            stats = dispatcher.stats.snapshot()
            if stats.unhandled:
                pytest.fail(f"the well-formed order was not handled: {stats}")
            return handled == [1] and stats.undecodable >= 1

        dispatcher.start()
        try:
            _wait_for(
                finished,
                melange_wait,
                lambda: (len(handled), dispatcher.stats.undecodable > 0),
                lambda: f"handled {handled}; {dispatcher.stats.snapshot()}",
            )
        except BaseException:
            dispatcher.stop(timeout=RUNTIME_TIMEOUT)
            raise
        _stop_while_time_passes(dispatcher, melange_wait, VISIBILITY_TIMEOUT + MARGIN)
        stats = dispatcher.stats.snapshot()
        assert (stats.dead_lettered, stats.acked) == (0, 1), stats
        assert stats.left >= 1, stats
        (back,) = drain(backend, queue, 1)
        assert (back.body, dict(back.attributes)) == (b"\xff not json", {"kind": "poison"})
        assert_empty(backend, queue)

    def test_oversized_messages_are_refused_at_publish_and_nothing_is_sent(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
    ) -> None:
        """A message over the size limit raises MessageTooLarge; nothing of the call is sent."""
        backend = melange_backend
        queue = melange_names.queue()
        melange_factory.init_queue(queue)
        registry = _registry()
        publisher = QueuePublisher(backend, registry, hooks=Hooks())
        limit = backend.capabilities.max_message_size
        # One producer id for all: a new one per encode may be a digit longer (9 -> 10).
        producer_id = f"mlg-{melange_names.token}"
        fits = Message(Order(1, "x"), producer_id=producer_id)
        overhead = registry.encode(fits).size - len("x")
        largest, too_large = (
            Message(Order(1, "x" * (limit - overhead)), producer_id=producer_id),
            Message(Order(2, "x" * (limit - overhead + 1)), producer_id=producer_id),
        )
        assert registry.encode(largest).size == limit

        with pytest.raises(MessageTooLarge) as caught:
            publisher.publish(queue, too_large)
        assert (caught.value.size, caught.value.limit) == (limit + 1, limit)
        with pytest.raises(MessageTooLarge):
            publisher.publish_batch(queue, [Order(3, "small"), too_large])
        assert_empty(backend, queue)

        publisher.publish(queue, largest)
        (received,) = drain(backend, queue, 1)
        assert registry.decode(received).body == largest.body
        assert_empty(backend, queue)


__all__ = ["ORDER_MANIFEST", "BackendSpec", "Order", "RuntimeConformance"]


def _child_mid_batch(
    spec: BackendSpec,
    backend: MessagingBackend,
    names: ResourceNames,
    directory: Path,
    driver: DriverName,
    grace_period: float = CHILD_TIMEOUT,
) -> tuple[str, set[int], _ConsumerProcess]:
    """Fill a fresh queue and start a consumer process; return once its handlers all block."""
    queue = names.queue()
    MessagingBackendFactory(backend).init_queue(queue, visibility_timeout=VISIBILITY_TIMEOUT)
    numbers = set(range(CHILD_MESSAGES))
    QueuePublisher(backend, hooks=Hooks()).publish_batch(queue, [{"n": n} for n in sorted(numbers)])
    process = _ConsumerProcess(spec, queue, directory, driver, grace_period)
    try:
        process.start()
        process.wait_until(
            lambda: len(process.events("started")) >= CHILD_WORKERS,
            f"{CHILD_WORKERS} handlers were running",
        )
    except BaseException:
        process.kill()
        raise
    return queue, numbers, process
