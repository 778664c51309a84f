"""Conformance tests under network faults: a backend's delivery guarantees, through a FaultProxy.

A networked backend opts in with one fixture, ``melange_fault_target``, a
:class:`~melange.testing.faults.FaultTarget` saying where its endpoint listens
and how to make a backend that reaches it through another address::

    class TestMyBackendFaults(FaultConformance):
        @pytest.fixture
        def melange_fault_target(self, server):
            return FaultTarget(
                address=("127.0.0.1", server.port),
                backend=lambda address: MyBackend(endpoint=f"http://{address}", timeout=2),
                restart=server.restart,
            )

Each test puts a :class:`~melange.testing.faults.FaultProxy` in front of the
endpoint and breaks the network while messages flow: the backend under test
(``melange_faulty_backend``) talks through the proxy; a second one
(``melange_backend``) talks to the endpoint directly, to set up queues and to
look at what the broker really holds. The guarantees checked are the
contract's: a message reported *accepted* is stored, one reported *refused* is
not, an *unknown* one may be (they are counted); a consumer with a
deduplication cache handles publisher-retry duplicates once; a dispatcher
loses nothing, acknowledges only what its handlers finished, resumes within
seconds of the network healing and survives a restart of the endpoint; every
call against a black-holed endpoint returns within the backend's timeouts.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import pytest

from melange.backends.base import (
    MessagingBackend,
    OutgoingMessage,
    PublishResult,
    PublishStatus,
    ReceivedMessage,
)
from melange.consumers import consumer
from melange.dedup import MemoryDedupCache
from melange.exceptions import BackendUnavailable, MelangeError
from melange.factory import MessagingBackendFactory
from melange.message import PRODUCER_ID_ATTRIBUTE, Message
from melange.observability import Hooks
from melange.publishers import QueuePublisher
from melange.testing.conformance._support import (
    POLL_INTERVAL,
    POLL_TIMEOUT,
    ConformanceBase,
    ResourceNames,
    in_range,
    receive_now,
)
from melange.testing.conformance.drivers import (
    Dispatcher,
    DriverName,
    drives_dispatcher,
    make_dispatcher,
)
from melange.testing.faults import FaultProxy, FaultProxyError, FaultTarget

__all__ = ["FaultConformance"]

SEED = 20_250_110
PROXY_LIFETIME = 180.0
"""Seconds a test's proxy lives at most (it stops by itself after)."""
CUT_SIZES = (0, 1, 64, 200)
"""Response bytes a cut lets through: none, one, part of the headers, into the body."""
SINGLES = 150
"""Messages published one call each in the single-publish test."""
BATCHES = 24
"""Publish calls of (up to) 10 messages in the batch-publish test."""
SPLIT_MESSAGES = 400
"""Messages at most in a publish call split in three native calls (more for two, if need be)."""
CONSUMED = 300
"""Messages consumed through faults."""
CHAOS_SECONDS = 5.0
"""Seconds of random faults while a dispatcher consumes."""
ASYNCIO_CONSUMED, ASYNCIO_CHAOS_SECONDS = 150, 3.0
"""The same for the asyncio dispatcher: its receive loop and acks are its own, its settlement
code is the threaded one's, so a shorter run of faults (then the same outage) keeps the point."""
OUTAGE_SECONDS = 2.0
"""Seconds the endpoint refuses connections before the recovery is timed."""
CONSUME_VISIBILITY = 2.0
"""Visibility timeout while consuming through faults: lost acks come back soon."""
HANDLING = 0.005
"""Seconds each handler runs while consuming through faults."""
RESTART_BEFORE, RESTART_AFTER = 50, 200
"""Messages handled before and after the endpoint restarts."""
RESTART_TIMEOUT = 60.0
"""Real seconds the restart test allows to set up again, and for the messages published after."""
QUIET = 1.0
"""Seconds without a new message after which a queue counts as drained."""
DRAIN_TIMEOUT = 60.0
"""Real seconds a drain may take in all."""

Fault = Literal["cut-once", "reset-once", "cut", "reset", "refuse"]
"""How a publish call is broken: ``-once`` hits one request (an SDK retry gets through)."""


@dataclass
class _Ledger:
    """What a publish test reported for each message number, and what the broker holds."""

    status: dict[int, PublishStatus] = field(default_factory=dict)
    copies: Counter[int] = field(default_factory=Counter)  # distinct broker ids per number
    producer_ids: dict[int, set[str]] = field(default_factory=lambda: defaultdict(set))
    handled: Counter[int] = field(default_factory=Counter)

    def record(self, numbers: Sequence[int], results: Sequence[PublishResult]) -> None:
        assert len(results) == len(numbers), f"{len(results)} results for {len(numbers)} messages"
        for n, result in zip(numbers, results, strict=True):
            self.status[n] = result.status

    def refuse_all(self, numbers: Sequence[int]) -> None:
        for n in numbers:  # raised before anything was sent: nothing can be stored
            self.status[n] = "refused"

    def numbers(self, status: PublishStatus) -> set[int]:
        return {n for n, reported in self.status.items() if reported == status}

    def check(self, label: str) -> str:
        """Assert the guarantees; return a one-line summary of the outcomes."""
        stored = {n for n, count in self.copies.items() if count}
        accepted, refused = self.numbers("accepted"), self.numbers("refused")
        unknown = self.numbers("unknown")
        missing = sorted(accepted - stored)
        assert not missing, f"{label}: accepted but not in the queue: {missing[:10]}"
        wrongly_stored = sorted(refused & stored)
        assert not wrongly_stored, (
            f"{label}: reported refused (not stored) but in the queue: {wrongly_stored[:10]}"
        )
        unpublished = sorted(stored - set(self.status))
        assert not unpublished, f"{label}: in the queue but never published: {unpublished[:10]}"
        without = sorted(n for n, ids in self.producer_ids.items() if "" in ids)
        assert not without, f"{label}: stored without a producer id: {without[:10]}"
        mixed = {n: ids for n, ids in self.producer_ids.items() if len(ids) != 1}
        assert not mixed, f"{label}: copies of one message with different producer ids: {mixed}"
        unhandled = sorted(stored - set(self.handled))
        assert not unhandled, f"{label}: in the queue, never handled: {unhandled[:10]}"
        twice = {n: count for n, count in self.handled.items() if count != 1}
        assert not twice, (
            f"{label}: handled more than once despite producer ids and a dedup cache "
            f"(number: times): {dict(list(twice.items())[:10])}"
        )
        duplicates = sum(count - 1 for count in self.copies.values() if count > 1)
        return (
            f"{label}: {len(accepted)} accepted, {len(refused)} refused, {len(unknown)} unknown "
            f"({len(unknown & stored)} of them stored); {duplicates} duplicate copies stored "
            f"by retries, each handled once"
        )


class _Receipts(Hooks):
    """Records every copy a dispatcher receives: its number, broker id and producer id."""

    def __init__(self, ledger: _Ledger) -> None:
        self.ledger = ledger
        self.lock = threading.Lock()
        self.seen: set[str] = set()

    def on_receive(self, queue_name: str, messages: Sequence[ReceivedMessage]) -> None:
        with self.lock:
            for received in messages:
                n = _number(received)
                if received.message_id not in self.seen:  # a redelivery is no new copy
                    self.seen.add(received.message_id)
                    self.ledger.copies[n] += 1
                self.ledger.producer_ids[n].add(received.attributes.get(PRODUCER_ID_ATTRIBUTE, ""))


def _number(received: ReceivedMessage) -> int:
    return int(json.loads(received.body)["n"])


def _until(condition: Callable[[], bool], timeout: float, describe: Callable[[], str]) -> float:
    """Poll ``condition`` for up to ``timeout`` real seconds; fail with ``describe()``.

    Returns:
        The seconds it took.
    """
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"not done within {timeout:g} s: {describe()}")
        time.sleep(POLL_INTERVAL)
    return time.monotonic() - started


def _collect(backend: MessagingBackend, queue: str) -> list[ReceivedMessage]:
    """Receive and ack everything in ``queue`` until nothing came for :data:`QUIET` seconds."""
    received: list[ReceivedMessage] = []
    started = last = time.monotonic()
    while time.monotonic() - last < QUIET:
        if time.monotonic() - started > DRAIN_TIMEOUT:
            pytest.fail(f"{queue!r} still yields messages after {DRAIN_TIMEOUT:g} s")
        batch = receive_now(backend, queue)
        if batch:
            received.extend(batch)
            backend.ack(batch)
            last = time.monotonic()
        else:
            time.sleep(POLL_INTERVAL)
    return received


def _break(proxy: FaultProxy, fault: Fault, rng: random.Random) -> None:
    if fault == "cut-once":
        proxy.cut(after_bytes=rng.choice(CUT_SIZES), times=1)
    elif fault == "reset-once":
        proxy.reset(times=1)
    elif fault == "cut":
        proxy.cut(after_bytes=rng.choice(CUT_SIZES))
    elif fault == "reset":
        proxy.reset()
    else:
        proxy.refuse()


def _plan(calls: int, faults: dict[Fault, int], rng: random.Random) -> list[Fault | None]:
    """``calls`` entries: each fault its number of times, the rest healthy, in random order."""
    plan: list[Fault | None] = [fault for fault, times in faults.items() for _ in range(times)]
    plan += [None] * (calls - len(plan))
    rng.shuffle(plan)
    return plan


@contextlib.contextmanager
def _running(dispatcher: Dispatcher) -> Iterator[Dispatcher]:
    dispatcher.start()
    try:
        yield dispatcher
    finally:
        dispatcher.stop(timeout=POLL_TIMEOUT)


class FaultConformance(ConformanceBase):
    """The backend's guarantees while the network resets, cuts and black-holes its calls.

    Provide ``melange_fault_target``; the other fixtures follow from it.
    """

    # ---------------------------------------------------------------- fixtures
    @pytest.fixture
    def melange_fault_target(self) -> FaultTarget:
        """Where the endpoint listens and how to reach it. Override it in your class."""
        pytest.fail(
            f"{type(self).__name__} runs the melange fault conformance tests but does not "
            "define the 'melange_fault_target' fixture: add a @pytest.fixture method named "
            "melange_fault_target that returns a melange.testing.faults.FaultTarget",
            pytrace=False,
        )

    @pytest.fixture
    def melange_backend(self, melange_fault_target: FaultTarget) -> Iterator[MessagingBackend]:
        """A backend reaching the endpoint directly: set-up, and what the broker really holds."""
        backend = melange_fault_target.backend(melange_fault_target.endpoint)
        yield backend
        backend.close()

    @pytest.fixture
    def melange_fault_proxy(self, melange_fault_target: FaultTarget) -> Iterator[FaultProxy]:
        """A healthy :class:`FaultProxy` in front of the endpoint, stopped after the test."""
        host, port = melange_fault_target.address
        with FaultProxy(host, port, lifetime=PROXY_LIFETIME) as proxy:
            yield proxy

    @pytest.fixture
    def melange_faulty_backend(
        self, melange_fault_target: FaultTarget, melange_fault_proxy: FaultProxy
    ) -> Iterator[MessagingBackend]:
        """The backend under test: it reaches the endpoint through the proxy."""
        backend = melange_fault_target.backend(melange_fault_proxy.address)
        yield backend
        with contextlib.suppress(FaultProxyError):  # closing may talk to the broker
            melange_fault_proxy.heal()
        backend.close()

    # ------------------------------------------------------------- publishing
    @pytest.mark.parametrize("mode", ["single", "batch"])
    def test_publish_outcomes_hold_through_resets_and_cuts(
        self,
        melange_backend: MessagingBackend,
        melange_faulty_backend: MessagingBackend,
        melange_fault_proxy: FaultProxy,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
        monkeypatch: pytest.MonkeyPatch,
        mode: str,
    ) -> None:
        """Publishing while connections reset and responses are cut mid-way.

        Every message reported accepted is in the queue, none reported refused
        is; unknown ones are counted. A dispatcher with a deduplication cache
        then handles each stored message exactly once, although retries stored
        some twice (same producer id, two broker ids).
        """
        queue = melange_names.queue()
        melange_factory.init_queue(queue)
        proxy, rng = melange_fault_proxy, random.Random(f"{SEED}-{mode}")
        publisher = QueuePublisher(melange_faulty_backend, hooks=Hooks())
        ledger = _Ledger()
        next_number = 0

        def numbers(count: int) -> list[int]:
            nonlocal next_number
            next_number += count
            return list(range(next_number - count, next_number))

        if mode == "single":
            plan = _plan(
                SINGLES,
                {"cut-once": 10, "reset-once": 8, "cut": 3, "reset": 2, "refuse": 3},
                rng,
            )
            for fault in plan:
                (n,) = numbers(1)
                if fault is not None:
                    _break(proxy, fault, rng)
                try:
                    publisher.publish(queue, {"n": n})
                    ledger.status[n] = "accepted"
                except MelangeError as error:
                    if error.results is None:
                        ledger.refuse_all([n])
                    else:
                        ledger.record([n], error.results)
                finally:
                    proxy.heal()
        else:
            size = min(10, melange_faulty_backend.capabilities.max_batch_size)
            plan = _plan(
                BATCHES,
                {"cut-once": 3, "reset-once": 3, "cut": 1, "reset": 1, "refuse": 1},
                rng,
            )
            # Calls of several native calls, broken after the first went through.
            split: list[Fault] = ["cut", "reset", "refuse"]
            after_first: list[Fault] = []
            native = melange_faulty_backend._publish_batch

            def first_then_break(
                queue_name: str, chunk: list[OutgoingMessage]
            ) -> list[PublishResult]:
                results = native(queue_name, chunk)
                if after_first:
                    _break(proxy, after_first.pop(), rng)
                return results

            monkeypatch.setattr(melange_faulty_backend, "_publish_batch", first_then_break)
            # Three native calls where that stays a few hundred messages, else two.
            native_size = melange_faulty_backend.capabilities.max_batch_size
            over = max(native_size + size, min(2 * native_size + size, SPLIT_MESSAGES))
            steps = [(size, fault, False) for fault in plan] + [(over, f, True) for f in split]
            for count, fault, split_call in steps:
                batch = numbers(count)
                if fault is not None and split_call:
                    after_first.append(fault)
                elif fault is not None:
                    _break(proxy, fault, rng)
                try:
                    results = publisher.publish_batch(queue, [{"n": n} for n in batch])
                    ledger.record(batch, results)
                except MelangeError:
                    ledger.refuse_all(batch)
                finally:
                    after_first.clear()
                    proxy.heal()
        assert proxy.stats.resets + proxy.stats.cuts > 0, f"no fault took effect: {proxy.stats}"
        assert ledger.numbers("unknown") | ledger.numbers("refused"), (
            "every message was accepted although calls were reset, cut and refused"
        )

        # Each mode drains with one driver: the publishing, not the drain, is what is slow.
        driver: DriverName = "threads" if mode == "single" else "asyncio"
        summary = self._drain_with_dedup(melange_backend, queue, ledger, mode, driver)
        print(summary)  # shown with -rP: the outcomes on this backend

    def _drain_with_dedup(
        self,
        backend: MessagingBackend,
        queue: str,
        ledger: _Ledger,
        label: str,
        driver: DriverName,
    ) -> str:
        """Handle the whole queue with a deduplication cache on ``driver``; check the ledger."""
        lock = threading.Lock()

        @consumer(name="fault-conformance-dedup")
        def count(message: Message) -> None:
            with lock:
                ledger.handled[int(message.body["n"])] += 1

        receipts = _Receipts(ledger)
        dispatcher = make_dispatcher(
            driver,
            backend,
            queue,
            [count],
            workers=8,
            wait_seconds=1.0,
            dedup=MemoryDedupCache(),
            hooks=receipts,
            close_backend=False,
        )
        with _running(dispatcher):
            dispatcher.run_until_idle(idle_seconds=2 * QUIET, timeout=DRAIN_TIMEOUT)
        assert receive_now(backend, queue) == [], "the dispatcher left messages in the queue"
        return ledger.check(label)

    def test_a_black_hole_during_a_batch_publish_reports_each_message(
        self,
        melange_backend: MessagingBackend,
        melange_faulty_backend: MessagingBackend,
        melange_fault_proxy: FaultProxy,
        melange_fault_target: FaultTarget,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The endpoint goes silent after the first native call of a publish call.

        The call returns within the backend's timeouts, without raising, with
        one result per message: the first native call's accepted, the rest
        unknown or refused; refused ones never reach the queue, even once the
        network heals.
        """
        queue = melange_names.queue()
        melange_factory.init_queue(queue)
        backend, proxy = melange_faulty_backend, melange_fault_proxy
        count = max(200, backend.capabilities.max_batch_size + 10)
        chunks: list[int] = []
        native = backend._publish_batch

        def stall_after_the_first(
            queue_name: str, chunk: list[OutgoingMessage]
        ) -> list[PublishResult]:
            results = native(queue_name, chunk)
            if not chunks:
                proxy.stall()
            chunks.append(len(chunk))
            return results

        monkeypatch.setattr(backend, "_publish_batch", stall_after_the_first)
        publisher = QueuePublisher(backend, hooks=Hooks())
        started = time.monotonic()
        results = publisher.publish_batch(queue, [{"n": n} for n in range(count)])
        took = time.monotonic() - started
        assert took <= melange_fault_target.call_limit, (
            f"the publish call blocked {took:.1f} s on a black-holed endpoint (call_limit "
            f"{melange_fault_target.call_limit:g} s)"
        )
        assert len(results) == count
        assert chunks, "publish never called the backend's _publish_batch hook"
        first = chunks[0]
        assert 0 < first < count, f"one native call took all {count} messages"
        statuses = [result.status for result in results]
        assert statuses[:first] == ["accepted"] * first, Counter(statuses[:first])
        assert "accepted" not in statuses[first:], (
            f"accepted after the endpoint went silent: {Counter(statuses[first:])}"
        )
        assert [result.index for result in results] == list(range(count))

        proxy.heal()  # what the stall held now reaches the broker: unknown ones may land
        time.sleep(QUIET)
        ledger = _Ledger()
        ledger.record(range(count), results)
        for received in _collect(melange_backend, queue):
            ledger.copies[_number(received)] += 1
        stored = {n for n, copies in ledger.copies.items() if copies}
        assert ledger.numbers("accepted") <= stored, sorted(ledger.numbers("accepted") - stored)
        wrongly_stored = sorted(ledger.numbers("refused") & stored)
        assert not wrongly_stored, f"reported refused but in the queue: {wrongly_stored[:10]}"
        unknown = ledger.numbers("unknown")
        print(  # shown with -rP
            f"stalled batch: {first} accepted, {len(unknown)} unknown "
            f"({len(unknown & stored)} stored after heal), {len(ledger.numbers('refused'))} "
            f"refused, in {took:.1f} s"
        )
        # Healed, the same backend publishes again.
        assert publisher.publish(queue, {"n": count}).status == "accepted"

    # -------------------------------------------------------------- consuming
    @drives_dispatcher
    def test_consuming_through_faults_loses_nothing_and_acks_only_handled_messages(
        self,
        melange_backend: MessagingBackend,
        melange_faulty_backend: MessagingBackend,
        melange_fault_proxy: FaultProxy,
        melange_fault_target: FaultTarget,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A dispatcher consumes while the proxy resets, cuts, stalls, refuses and heals.

        Every message is handled at least once, no message is acknowledged
        before a handler finished it, and after an outage handling resumes
        within ``recovery_limit`` seconds of the heal. Once idle, the queue is
        empty: acks lost to faults were made up by redeliveries.
        """
        queue = melange_names.queue()
        visibility = in_range(
            CONSUME_VISIBILITY, (0.0, melange_backend.capabilities.max_visibility_timeout)
        )
        melange_factory.init_queue(queue, visibility_timeout=visibility)
        backend, proxy = melange_faulty_backend, melange_fault_proxy
        lock = threading.Lock()
        finished: Counter[int] = Counter()
        handled_at: dict[int, float] = {}
        early: list[int] = []
        acked: Counter[int] = Counter()
        ack = backend.ack

        def watched_ack(messages: Sequence[ReceivedMessage]) -> None:
            with lock:
                for received in messages:
                    n = _number(received)
                    acked[n] += 1
                    if not finished[n]:
                        early.append(n)
            ack(messages)

        monkeypatch.setattr(backend, "ack", watched_ack)

        @consumer(name="fault-conformance-consumer")
        def handle(message: Message) -> None:
            time.sleep(HANDLING)
            n = int(message.body["n"])
            with lock:
                finished[n] += 1
                handled_at.setdefault(n, time.monotonic())

        publisher = QueuePublisher(melange_backend, hooks=Hooks())  # directly: never faulty
        consumed, chaos_seconds = (
            (CONSUMED, CHAOS_SECONDS)
            if self.melange_driver == "threads"
            else (ASYNCIO_CONSUMED, ASYNCIO_CHAOS_SECONDS)
        )
        waves = [list(range(start, start + 30)) for start in range(0, consumed - 30, 30)]
        last_wave = list(range(consumed - 30, consumed))
        producer_errors: list[BaseException] = []

        def produce() -> None:
            try:
                for wave in waves:
                    publisher.publish_batch(queue, [{"n": n} for n in wave])
                    time.sleep(chaos_seconds / len(waves))
            except BaseException as error:  # reported by the test
                producer_errors.append(error)

        def describe() -> str:
            with lock:
                missing = sorted(set(range(consumed)) - set(finished))
            return (
                f"{consumed - len(missing)}/{consumed} handled (missing e.g. {missing[:8]}); "
                f"{dispatcher.stats.snapshot()}; proxy {proxy.stats}; faults {proxy.timeline}"
            )

        dispatcher = self.melange_dispatcher(
            backend, queue, [handle], workers=4, wait_seconds=1.0, close_backend=False
        )
        producer = threading.Thread(target=produce, name="fault-producer", daemon=True)
        with _running(dispatcher):
            producer.start()
            proxy.chaos(
                chaos_seconds,
                fault_seconds=(0.3, 1.0),
                healthy_seconds=(0.3, 0.8),
                seed=SEED,
            )
            assert proxy.wait_chaos(chaos_seconds + POLL_TIMEOUT)
            producer.join(POLL_TIMEOUT)
            assert not producer_errors, producer_errors

            # An outage the dispatcher must notice, then a heal it must notice too.
            proxy.refuse()
            publisher.publish_batch(queue, [{"n": n} for n in last_wave])
            time.sleep(OUTAGE_SECONDS)
            with lock:
                assert not set(last_wave) & set(finished), "handled through a refusing endpoint"
            proxy.heal()
            healed = time.monotonic()
            _until(
                lambda: bool(set(last_wave) & set(handled_at)),
                melange_fault_target.recovery_limit + POLL_TIMEOUT,
                describe,
            )
            with lock:
                resumed = min(handled_at[n] for n in last_wave if n in handled_at) - healed
            assert resumed <= melange_fault_target.recovery_limit, (
                f"handling resumed {resumed:.1f} s after the network healed (recovery_limit "
                f"{melange_fault_target.recovery_limit:g} s)"
            )
            _until(lambda: len(finished) == consumed, POLL_TIMEOUT + visibility, describe)
            # Messages whose ack was lost come back after the visibility timeout.
            dispatcher.run_until_idle(idle_seconds=visibility + QUIET, timeout=DRAIN_TIMEOUT)

        with lock:
            assert not early, f"acknowledged before any handler finished them: {early[:10]}"
            assert set(finished) == set(range(consumed)), describe()
            unacked = sorted(set(range(consumed)) - set(acked))
            assert not unacked, f"never acknowledged through the backend's ack(): {unacked[:10]}"
            twice = sum(count > 1 for count in finished.values())
        assert receive_now(melange_backend, queue) == [], "messages left in the queue"
        print(  # shown with -rP
            f"consumed through {len(proxy.timeline)} fault events: {twice} messages handled "
            f"more than once, recovery {resumed:.2f} s, {dispatcher.stats.snapshot()}"
        )

    @drives_dispatcher
    def test_the_dispatcher_survives_an_endpoint_restart(
        self,
        melange_backend: MessagingBackend,
        melange_faulty_backend: MessagingBackend,
        melange_fault_target: FaultTarget,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
    ) -> None:
        """The endpoint restarts (losing its state) under a running dispatcher.

        Once the test declares the queue again and publishes, the same
        dispatcher handles the new messages.
        """
        restart = melange_fault_target.restart
        if restart is None:
            pytest.skip("the fault target cannot restart its endpoint (restart=None)")
        queue = melange_names.queue()
        melange_factory.init_queue(queue)
        publisher = QueuePublisher(melange_backend, hooks=Hooks())
        lock = threading.Lock()
        handled: set[int] = set()

        @consumer(name="fault-conformance-restart")
        def handle(message: Message) -> None:
            with lock:
                handled.add(int(message.body["n"]))

        def describe(expected: set[int]) -> Callable[[], str]:
            def text() -> str:
                with lock:
                    missing = sorted(expected - handled)
                return f"missing {len(missing)} (e.g. {missing[:8]}); {dispatcher.stats.snapshot()}"

            return text

        before = set(range(RESTART_BEFORE))
        after = set(range(RESTART_BEFORE, RESTART_BEFORE + RESTART_AFTER))
        dispatcher = self.melange_dispatcher(
            melange_faulty_backend,
            queue,
            [handle],
            workers=4,
            wait_seconds=1.0,
            close_backend=False,
        )
        with _running(dispatcher):
            publisher.publish_batch(queue, [{"n": n} for n in sorted(before)])
            _until(lambda: before <= handled, POLL_TIMEOUT, describe(before))
            restart()
            # A restarted endpoint may answer slowly at first: set up as an application would,
            # retrying what failed (the dispatcher's own recovery is what is tested here).
            _retrying(lambda: melange_factory.init_queue(queue))  # it may have forgotten it
            unsent = sorted(after)

            def publish_unsent() -> None:
                results = publisher.publish_batch(queue, [{"n": n} for n in unsent])
                unsent[:] = [n for n, result in zip(unsent, results, strict=True) if not result.ok]
                errors = [result.error for result in results if result.error is not None]
                if errors:
                    raise errors[0]

            _retrying(publish_unsent)
            _until(lambda: after <= handled, RESTART_TIMEOUT, describe(after))
            assert dispatcher.running, "the dispatcher stopped"

    # ----------------------------------------------------------------- bounds
    @pytest.mark.parametrize("call", ["publish", "receive", "ack"])
    def test_calls_to_a_black_holed_endpoint_return_within_the_backend_timeouts(
        self,
        melange_backend: MessagingBackend,
        melange_faulty_backend: MessagingBackend,
        melange_fault_proxy: FaultProxy,
        melange_fault_target: FaultTarget,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
        call: str,
    ) -> None:
        """A call on a connection that goes silent gives up within ``call_limit`` seconds.

        A publish reports its message unknown or refused (never accepted, and
        it does not raise once it sent something); a refused one is not stored
        even after the network heals. A receive (with a 1 s long poll) and an
        ack return or raise a MelangeError. Healed, the same backend works again.
        """
        queue = melange_names.queue()
        melange_factory.init_queue(queue)
        backend, proxy = melange_faulty_backend, melange_fault_proxy
        limit = melange_fault_target.call_limit
        publisher = QueuePublisher(backend, hooks=Hooks())
        publisher.publish(queue, {"n": 0})  # warm: the connection exists when it goes silent
        (held,) = _receive_some(backend, queue)
        proxy.stall()

        message = OutgoingMessage(json.dumps({"n": 1}).encode())
        actions: dict[str, Callable[[], object]] = {
            "publish": lambda: backend.publish(queue, [message]),
            "receive": lambda: backend.receive(queue, 10, 1.0),
            "ack": lambda: backend.ack([held]),
        }
        started = time.monotonic()
        try:
            outcome: object = actions[call]()
        except MelangeError as error:
            outcome = error
        took = time.monotonic() - started
        assert took <= limit, (
            f"{call} blocked {took:.1f} s on a black-holed endpoint (call_limit {limit:g} s)"
        )
        refused = False
        if call == "publish":
            assert isinstance(outcome, list), f"publish raised after sending: {outcome!r}"
            (result,) = outcome
            assert result.status in ("unknown", "refused"), result
            refused = result.status == "refused"
        elif call == "receive":
            assert not (isinstance(outcome, list) and outcome), "received through a black hole"

        proxy.heal()
        if refused:
            time.sleep(QUIET)  # what the stall held reaches the broker now
            stored = [_number(received) for received in _collect(melange_backend, queue)]
            assert 1 not in stored, "reported refused, yet stored"
        assert publisher.publish(queue, {"n": 2}).ok, "the backend did not recover"


def _retrying(call: Callable[[], object], timeout: float = RESTART_TIMEOUT) -> None:
    """Call ``call`` until it does not raise BackendUnavailable, for up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            call()
            return
        except BackendUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _receive_some(backend: MessagingBackend, queue: str) -> list[ReceivedMessage]:
    deadline = time.monotonic() + POLL_TIMEOUT
    while time.monotonic() < deadline:
        received = receive_now(backend, queue)
        if received:
            return received
        time.sleep(POLL_INTERVAL)
    pytest.fail(f"nothing to receive from {queue!r} within {POLL_TIMEOUT:g} s")
