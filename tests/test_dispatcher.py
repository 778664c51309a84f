"""The consumer runtime on the memory backend: dispatch, failures, leases, concurrency, shutdown."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from melange.backends.base import OutgoingMessage, ReceivedMessage
from melange.backends.memory import MemoryBackend
from melange.clock import ManualClock
from melange.consumers import Consumer, SingleDispatchConsumer, consumer, handler
from melange.dedup import ClaimResult, DedupCache, MemoryDedupCache
from melange.dispatcher import (
    DispatchStats,
    LeasePolicy,
    MessageDispatcher,
    RetryPolicy,
    SimpleMessageDispatcher,
)
from melange.exceptions import BackendUnavailable, ConfigurationError, LeaseLost, QueueNotFound
from melange.factory import MessagingBackendFactory
from melange.lease import Lease, LeaseKeeper
from melange.message import Message
from melange.observability import Hooks
from melange.serializers import SerializerRegistry
from tests.short_polls import CountedReceives

QUEUE = "orders"
DLQ = "orders-dlq"
FIFO_QUEUE = "orders.fifo"
FIFO_DLQ = "orders-dlq.fifo"


@dataclass(frozen=True)
class Paid:
    order: str


@dataclass(frozen=True)
class Shipped:
    order: str


class RecordingBackend(MemoryBackend):
    """A memory backend that records receive sizes, nacks and acks."""

    def __init__(self, clock: ManualClock | None = None) -> None:
        super().__init__(clock=clock)
        self.lock = threading.Lock()
        self.asked: list[int] = []
        self.nacks: list[tuple[str, int, float]] = []  # (message id, receive count, delay)
        self.acked: list[str] = []

    def _receive(self, queue_name: str, max_messages: int, wait: float) -> list[ReceivedMessage]:
        with self.lock:
            self.asked.append(max_messages)
        return super()._receive(queue_name, max_messages, wait)

    def _nack(self, messages: list[ReceivedMessage], delay_seconds: float) -> None:
        with self.lock:
            self.nacks.extend((m.message_id, m.receive_count, delay_seconds) for m in messages)
        super()._nack(messages, delay_seconds)

    def _ack(self, messages: list[ReceivedMessage]) -> None:
        with self.lock:
            self.acked.extend(m.message_id for m in messages)
        super()._ack(messages)


@pytest.fixture
def registry() -> SerializerRegistry:
    registry = SerializerRegistry()
    registry.bind(Paid, "paid.v1")
    registry.bind(Shipped, "shipped.v1")
    return registry


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def make_backend(
    clock: ManualClock | None = None,
    *,
    fifo: bool = False,
    dead_letter: bool = True,
    max_receive_count: int = 3,
    visibility_timeout: float = 30.0,
) -> RecordingBackend:
    backend = RecordingBackend(clock)
    name, dlq = (FIFO_QUEUE, FIFO_DLQ) if fifo else (QUEUE, DLQ)
    settings: dict[str, Any] = {"visibility_timeout": visibility_timeout}
    if dead_letter:
        settings.update(dead_letter_queue_name=dlq, max_receive_count=max_receive_count)
    MessagingBackendFactory(backend).init_queue(name, **settings)
    return backend


def publish(
    backend: MemoryBackend,
    registry: SerializerRegistry,
    *payloads: Any,
    queue: str = QUEUE,
    group_id: str | None = None,
    **attributes: str,
) -> list[str]:
    outgoing = [
        # No producer id: the dedup tests below key on the broker's id, as for foreign messages.
        registry.encode(Message(p, attributes=attributes, group_id=group_id), producer_id=False)
        for p in payloads
    ]
    results = backend.publish(queue, outgoing)
    return [r.message_id for r in results if r.message_id is not None]


def dispatcher(
    backend: MemoryBackend,
    consumers: Sequence[Consumer],
    registry: SerializerRegistry,
    queue: str = QUEUE,
    **options: Any,
) -> MessageDispatcher:
    options.setdefault("wait_seconds", 0.05)
    options.setdefault("close_backend", False)
    options.setdefault("retry", RetryPolicy(base=2.0, factor=3.0, max_delay=100.0, jitter=0.0))
    return MessageDispatcher(backend, queue, consumers, registry, **options)


def drain(backend: MemoryBackend, queue: str) -> list[ReceivedMessage]:
    """Receive (and ack) everything currently visible in ``queue``."""
    found: list[ReceivedMessage] = []
    while batch := backend.receive(queue, 10):
        found.extend(batch)
        backend.ack(batch)
    return found


IDLE = 0.15


# ------------------------------------------------------------------ dispatch
def test_every_accepting_consumer_gets_the_message_chosen_by_type_or_manifest(
    registry: SerializerRegistry,
) -> None:
    backend = make_backend()
    seen: list[tuple[str, Any]] = []

    @consumer
    def on_paid(event: Paid) -> None:
        seen.append(("on_paid", event))

    @consumer("shipped.v1")
    def on_shipped_manifest(message: Message) -> None:
        seen.append(("manifest", message.body))

    class Orders(SingleDispatchConsumer):
        @handler
        def paid(self, event: Paid) -> None:
            seen.append(("orders.paid", event))

    with dispatcher(backend, [on_paid, on_shipped_manifest, Orders()], registry) as d:
        publish(backend, registry, Paid("o1"), Shipped("o2"))
        stats = d.run_until_idle(IDLE)

    assert sorted(seen, key=repr) == sorted(
        [("on_paid", Paid("o1")), ("orders.paid", Paid("o1")), ("manifest", Shipped("o2"))],
        key=repr,
    )
    assert stats.received == 2 and stats.handled == 2 and stats.acked == 2
    assert backend.queue_depth(QUEUE) == (0, 0, 0)


def test_ack_only_after_every_accepting_consumer_succeeded(
    registry: SerializerRegistry, clock: ManualClock
) -> None:
    backend = make_backend(clock, max_receive_count=5)
    calls: list[str] = []
    fail = {"flaky": True}

    @consumer
    def steady(event: Paid) -> None:
        calls.append("steady")

    @consumer
    def flaky(event: Paid) -> None:
        calls.append("flaky")
        if fail["flaky"]:
            raise RuntimeError("database down")

    (message_id,) = publish(backend, registry, Paid("o1"))
    with dispatcher(backend, [steady, flaky], registry) as d:
        stats = d.run_until_idle(IDLE)
        assert stats.acked == 0 and stats.failed == 1 and stats.retried == 1
        assert backend.acked == []
        assert backend.queue_depth(QUEUE).in_flight == 1  # nacked with a delay, not acked

        fail["flaky"] = False
        clock.advance(2.0)  # the first retry delay
        stats = d.run_until_idle(IDLE)

    assert backend.acked == [message_id]
    assert stats.acked == 1 and stats.handled == 1
    assert calls.count("flaky") == 2 and calls.count("steady") == 2  # no dedup: both ran again


def test_retries_back_off_exponentially_then_the_dead_letter_queue_takes_the_message(
    registry: SerializerRegistry, clock: ManualClock
) -> None:
    backend = make_backend(clock, max_receive_count=3)
    attempts: list[int] = []

    @consumer
    def always_fails(message: Message) -> None:
        attempts.append(1)
        raise ValueError("cannot handle")

    outgoing = registry.encode(Message(Paid("o1"), attributes={"region": "eu", "ü": "ß"}))
    backend.publish(QUEUE, [outgoing])
    with dispatcher(backend, [always_fails], registry) as d:
        for delay in (2.0, 6.0, 18.0):
            d.run_until_idle(IDLE)
            clock.advance(delay)
        stats = d.run_until_idle(IDLE)

    assert [delay for _, _, delay in backend.nacks] == [2.0, 6.0, 18.0]
    assert [count for _, count, _ in backend.nacks] == [1, 2, 3]
    assert len(attempts) == 3 and stats.failed == 3 and stats.acked == 0
    (dead,) = drain(backend, DLQ)
    assert dead.body == outgoing.body
    assert dict(dead.attributes) == dict(outgoing.attributes)
    assert backend.queue_depth(QUEUE) == (0, 0, 0)


def test_without_nack_a_failed_message_waits_for_its_visibility_timeout(
    registry: SerializerRegistry, clock: ManualClock
) -> None:
    backend = make_backend(clock, visibility_timeout=30.0, max_receive_count=5)
    backend.capabilities = dataclasses.replace(backend.capabilities, nack_delay=False)
    hooks = RecordingHooks()
    attempts: list[int] = []

    @consumer
    def fails_once(event: Paid) -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("transient")

    publish(backend, registry, Paid("o1"))
    with dispatcher(backend, [fails_once], registry, hooks=hooks) as d:
        d.run_until_idle(IDLE)
        assert ("error", fails_once.name, "RuntimeError", None) in hooks.events
        clock.advance(29.0)
        d.run_until_idle(IDLE)
        assert len(attempts) == 1  # still invisible: no nack, so the full timeout
        clock.advance(1.0)
        stats = d.run_until_idle(IDLE)

    assert backend.nacks == [] and len(attempts) == 2 and stats.acked == 1


def test_retry_delay_is_capped_by_the_policy() -> None:
    policy = RetryPolicy(base=1.0, factor=10.0, max_delay=50.0, jitter=0.0)
    assert [policy.delay(n) for n in (1, 2, 3, 4, 500)] == [1.0, 10.0, 50.0, 50.0, 50.0]


def test_retry_jitter_stays_within_its_fraction() -> None:
    policy = RetryPolicy(base=10.0, factor=1.0, max_delay=100.0, jitter=0.2)
    delays = {policy.delay(1) for _ in range(200)}
    assert all(8.0 <= delay <= 12.0 for delay in delays)
    assert len(delays) > 1  # actually randomized


@pytest.mark.parametrize(
    "options",
    [{"base": -1}, {"factor": 0.5}, {"jitter": 1.5}, {"max_delay": float("inf")}, {"base": True}],
)
def test_invalid_retry_policies_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="RetryPolicy"):
        RetryPolicy(**options)


@pytest.mark.parametrize("options", [{"extend_at": 0}, {"extend_at": 1}, {"max_lease": 0}])
def test_invalid_lease_policies_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="LeasePolicy"):
        LeasePolicy(**options)


# -------------------------------------------------------- poison messages
def publish_undecodable(backend: MemoryBackend) -> OutgoingMessage:
    poison = OutgoingMessage(
        b'{"order": "o1", "amou', attributes={"melange.serializer": "json", "trace": "t-1"}
    )
    backend.publish(QUEUE, [poison])
    return poison


def publish_unhandled(backend: MemoryBackend, registry: SerializerRegistry) -> OutgoingMessage:
    outgoing = registry.encode(Message(Shipped("o9"), attributes={"trace": "t-2"}))
    backend.publish(QUEUE, [outgoing])
    return outgoing


@pytest.mark.parametrize("kind", ["undecodable", "unhandled"])
@pytest.mark.parametrize("outcome", ["dead_letter", "ack", "leave"])
def test_undecodable_and_unhandled_messages_follow_their_outcome_and_the_loop_goes_on(
    registry: SerializerRegistry,
    clock: ManualClock,
    kind: str,
    outcome: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = make_backend(clock)
    handled: list[Paid] = []

    @consumer
    def on_paid(event: Paid) -> None:
        handled.append(event)

    poison = (
        publish_undecodable(backend)
        if kind == "undecodable"
        else publish_unhandled(backend, registry)
    )
    publish(backend, registry, Paid("good"))
    options = {f"on_{kind}": outcome}
    with (
        caplog.at_level(logging.INFO, "melange.dispatcher"),
        dispatcher(backend, [on_paid], registry, **options) as d,
    ):
        stats = d.run_until_idle(IDLE)

    assert handled == [Paid("good")]  # the loop went on
    assert getattr(stats, kind) == 1
    dead = drain(backend, DLQ)
    depth = backend.queue_depth(QUEUE)
    if outcome == "dead_letter":
        reason = {"melange.dead-letter-reason": kind, "melange.dead-letter-source": QUEUE}
        assert [(m.body, dict(m.attributes)) for m in dead] == [
            (poison.body, {**poison.attributes, **reason})
        ]
        assert depth == (0, 0, 0) and stats.dead_lettered == 1 and stats.acked == 2
    elif outcome == "ack":
        assert dead == [] and depth == (0, 0, 0) and stats.acked == 2
        assert "acknowledging it" in caplog.text
    else:
        assert dead == [] and depth.in_flight == 1 and stats.left == 1 and stats.acked == 1
    assert '"amou' not in caplog.text  # never the body


def test_dead_letter_outcome_without_a_dead_letter_queue_logs_an_error_and_leaves_it(
    registry: SerializerRegistry, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    backend = make_backend(clock, dead_letter=False)
    publish_undecodable(backend)
    with (
        caplog.at_level(logging.ERROR, "melange.dispatcher"),
        dispatcher(backend, [consumer(lambda payload: None)], registry) as d,
    ):
        stats = d.run_until_idle(IDLE)
    assert stats.left == 1 and stats.acked == 0 and stats.dead_lettered == 0
    assert backend.queue_depth(QUEUE).in_flight == 1
    assert "has no dead-letter queue" in caplog.text


def test_dead_lettering_keeps_the_fifo_group(registry: SerializerRegistry) -> None:
    backend = make_backend(fifo=True)
    backend.publish(FIFO_QUEUE, [OutgoingMessage(b"\xff\xfe", {"k": "v"}, group_id="g-7")])
    with dispatcher(backend, [consumer(lambda p: None)], registry, queue=FIFO_QUEUE) as d:
        stats = d.run_until_idle(IDLE)
    (dead,) = drain(backend, FIFO_DLQ)
    assert stats.dead_lettered == 1
    reason = {"melange.dead-letter-reason": "undecodable", "melange.dead-letter-source": FIFO_QUEUE}
    assert (dead.body, dict(dead.attributes), dead.group_id) == (
        b"\xff\xfe",
        {"k": "v", **reason},
        "g-7",
    )


# --------------------------------------------------------------- concurrency
def test_never_more_messages_received_and_unfinished_than_workers(
    registry: SerializerRegistry,
) -> None:
    backend = make_backend()
    workers = 3
    outstanding = {"now": 0, "max": 0}
    lock = threading.Lock()

    original_receive = backend._receive

    def counting_receive(queue_name: str, max_messages: int, wait: float) -> Any:
        got = original_receive(queue_name, max_messages, wait)
        with lock:
            outstanding["now"] += len(got)
            outstanding["max"] = max(outstanding["max"], outstanding["now"])
        return got

    backend._receive = counting_receive  # type: ignore[method-assign]

    @consumer
    def slow(event: Paid) -> None:
        time.sleep(random.uniform(0.001, 0.01))
        with lock:
            outstanding["now"] -= 1  # before the dispatcher frees the slot: never undercounts

    publish(backend, registry, *(Paid(f"o{i}") for i in range(40)))
    with dispatcher(
        backend, [slow], registry, workers=workers, concurrent_receives=2, batch_size=10
    ) as d:
        stats = d.run_until_idle(IDLE)

    assert stats.handled == 40 and stats.acked == 40
    assert outstanding["max"] <= workers
    assert outstanding["max"] == workers  # the bound is reached, so the check means something
    assert max(backend.asked) <= workers
    assert stats.max_in_flight <= workers


def test_slow_handlers_of_one_received_batch_spread_over_the_pool(
    registry: SerializerRegistry,
) -> None:
    """The thread that receives a batch handles it, but wakes others while messages wait."""
    backend = make_backend()
    running = {"now": 0, "max": 0}
    threads: set[int] = set()
    lock = threading.Lock()

    @consumer
    def slow(event: Paid) -> None:
        with lock:
            running["now"] += 1
            running["max"] = max(running["max"], running["now"])
            threads.add(threading.get_ident())
        time.sleep(0.3)
        with lock:
            running["now"] -= 1

    publish(backend, registry, *(Paid(f"o{i}") for i in range(10)))
    began = time.monotonic()
    with dispatcher(backend, [slow], registry, workers=10, batch_size=10) as d:
        stats = d.run_until_idle(IDLE)
    handling = time.monotonic() - began - IDLE

    assert stats.handled == 10 and stats.acked == 10
    assert backend.asked[0] == 10  # one receive brought the whole batch
    assert running["max"] == 10 and len(threads) == 10
    assert handling < 1.5  # in parallel: one handler's time, not ten


def test_handlers_a_few_milliseconds_long_still_run_in_parallel(
    registry: SerializerRegistry,
) -> None:
    """Busy threads taking one short sleeping handler after another do not keep the rest.

    Each handler waits 0 to 4 ms (an I/O call), about as long as the watcher's shortest
    poll: a watcher that stepped in only when no thread took anything for a whole poll
    would, once work flows steadily, leave the messages to the threads that received them,
    one after another.
    """
    backend = make_backend()
    busy = {"seconds": 0.0}
    lock = threading.Lock()

    @consumer
    def io_bound(event: Paid) -> None:
        began = time.monotonic()
        time.sleep(random.uniform(0.0, 0.004))
        with lock:
            busy["seconds"] += time.monotonic() - began

    publish(backend, registry, *(Paid(f"o{i}") for i in range(300)))
    with dispatcher(backend, [io_bound], registry, workers=4, batch_size=4) as d:
        began = time.monotonic()
        stats = d.run_until_idle(IDLE)
        handling = time.monotonic() - began - IDLE

    assert stats.handled == 300
    # One thread after another: about 0.9. In parallel about 1.8: a batch of four takes as
    # long as its slowest handler (3.2 ms on average, against 8 ms for the four in a row).
    assert busy["seconds"] / handling > 1.4, (busy, handling)


class RemoteBackend(MemoryBackend):
    """A memory backend whose receive and ack calls take a network round trip (20 ms)."""

    RTT = 0.02

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, float, float]] = []  # (kind, start, end)

    def _receive(self, queue_name: str, max_messages: int, wait: float) -> list[ReceivedMessage]:
        began = time.monotonic()
        time.sleep(self.RTT)
        received = super()._receive(queue_name, max_messages, 0.0)
        self.calls.append(("receive", began, time.monotonic()))
        return received

    def _ack(self, messages: list[ReceivedMessage]) -> None:
        began = time.monotonic()
        time.sleep(self.RTT)
        super()._ack(messages)
        self.calls.append(("ack", began, time.monotonic()))


def test_the_next_receive_does_not_wait_for_an_ack_round_trip(
    registry: SerializerRegistry,
) -> None:
    """The thread that sends a batch's acks leaves the next receive to another thread.

    Against a remote broker both calls are round trips: done one after the other by the
    thread that freed the capacity, receives would be in flight about half of the time.
    """
    backend = RemoteBackend()
    MessagingBackendFactory(backend).init_queue(QUEUE)
    publish(backend, registry, *(Paid(f"o{i}") for i in range(200)))
    with dispatcher(backend, [_noop_paid], registry, workers=10, batch_size=10) as d:
        stats = d.run_until_idle(IDLE)

    assert stats.handled == 200
    receives = [(start, end) for kind, start, end in backend.calls if kind == "receive"]
    receiving = sum(end - start for start, end in receives)
    duty = receiving / (receives[-1][1] - receives[0][0])
    assert duty > 0.8, duty  # one receive in flight nearly all the time (about 0.5 in a row)


@consumer
def _noop_paid(event: Paid) -> None:
    """Handles a payment instantly."""


def test_fifo_groups_keep_their_order_and_run_in_parallel(registry: SerializerRegistry) -> None:
    backend = make_backend(fifo=True)
    groups = [f"g{i}" for i in range(4)]
    per_group = 12
    handled: dict[str, list[int]] = {g: [] for g in groups}
    running: set[str] = set()
    overlap = {"max": 0}
    lock = threading.Lock()

    @consumer
    def record(message: Message) -> None:
        group = message.group_id
        assert group is not None
        with lock:
            assert group not in running, "two messages of one group ran at once"
            running.add(group)
            overlap["max"] = max(overlap["max"], len(running))
        time.sleep(random.uniform(0.0, 0.004))
        with lock:
            running.discard(group)
            handled[group].append(message.body["seq"])

    for seq in range(per_group):  # interleaved publishing: groups mix in every batch
        for group in groups:
            publish(backend, registry, {"seq": seq}, queue=FIFO_QUEUE, group_id=group)
    with dispatcher(
        backend, [record], registry, queue=FIFO_QUEUE, workers=4, concurrent_receives=2
    ) as d:
        stats = d.run_until_idle(IDLE)

    assert stats.handled == len(groups) * per_group
    assert all(handled[g] == list(range(per_group)) for g in groups), handled
    assert overlap["max"] > 1  # different groups were handled at the same time


class GroupingBackend(RecordingBackend):
    """A broker that does not hold a FIFO group back while one of its messages is in flight.

    Every message of the standard queue comes out as group "g", so a message of
    the group can arrive while the dispatcher still runs an earlier one: only
    the dispatcher keeps the group's messages one after another.
    """

    def _receive(self, queue_name: str, max_messages: int, wait: float) -> list[ReceivedMessage]:
        received = super()._receive(queue_name, max_messages, wait)
        return [dataclasses.replace(m, group_id="g") for m in received]


def test_a_group_message_received_while_its_predecessor_runs_waits_for_it(
    registry: SerializerRegistry,
) -> None:
    # The last waiting message of a group (second) is handed to a worker when
    # the first finishes; third arrives while second runs and must wait for it.
    backend = GroupingBackend()
    MessagingBackendFactory(backend).init_queue(QUEUE)
    running: list[str] = []
    overlapped: list[tuple[str, str]] = []
    order: list[str] = []
    third_started = threading.Event()
    lock = threading.Lock()

    @consumer
    def record(message: Message) -> None:
        order_id = message.body.order
        with lock:
            overlapped.extend((other, order_id) for other in running)
            running.append(order_id)
            order.append(order_id)
        if order_id == "third":
            third_started.set()
        if order_id == "second":
            publish(backend, registry, Paid("third"))
            third_started.wait(1.0)  # gives a concurrent start every chance to happen
        with lock:
            running.remove(order_id)

    publish(backend, registry, Paid("first"), Paid("second"))
    with dispatcher(backend, [record], registry, workers=3, batch_size=2) as d:
        stats = d.run_until_idle(IDLE, timeout=10.0)

    assert backend.asked[0] == 2  # first and second came in one receive call
    assert order == ["first", "second", "third"]
    assert overlapped == []
    assert stats.handled == 3


def test_a_failed_fifo_message_holds_back_the_rest_of_its_group(
    registry: SerializerRegistry, clock: ManualClock
) -> None:
    backend = make_backend(clock, fifo=True, max_receive_count=5)
    attempts: list[int] = []
    succeeded: list[int] = []
    failed_once: set[int] = set()

    @consumer
    def record(payload: dict[str, int]) -> None:
        seq = payload["seq"]
        attempts.append(seq)
        if seq == 1 and seq not in failed_once:
            failed_once.add(seq)
            raise RuntimeError("transient")
        succeeded.append(seq)

    for seq in range(4):
        publish(backend, registry, {"seq": seq}, queue=FIFO_QUEUE, group_id="g")
    with dispatcher(backend, [record], registry, queue=FIFO_QUEUE, workers=4) as d:
        stats = d.run_until_idle(IDLE)
        assert succeeded == [0] and attempts == [0, 1]  # 2 and 3 never started
        assert stats.released == 2
        clock.advance(2.0)
        stats = d.run_until_idle(IDLE)

    assert succeeded == [0, 1, 2, 3]
    assert attempts == [0, 1, 1, 2, 3]
    assert stats.acked == 4


# -------------------------------------------------------------------- leases
def test_lease_extension_keeps_a_long_handler_from_being_redelivered(
    registry: SerializerRegistry,
) -> None:
    backend = make_backend(visibility_timeout=1.0)
    calls: list[str] = []

    @consumer
    def slow(event: Paid) -> None:
        calls.append(event.order)
        # Three visibility timeouts; "quick" is held for a few heartbeats, then settled.
        time.sleep(3.0 if event.order == "o1" else 0.7)

    publish(backend, registry, Paid("o1"), Paid("quick"))
    with dispatcher(backend, [slow], registry, workers=2) as d:
        stats = d.run_until_idle(IDLE)

    assert sorted(calls) == ["o1", "quick"]
    # Only the running message is extended: extending the acked one would lose its lease.
    assert stats.acked == 2 and stats.lease_extended >= 3 and stats.lease_lost == 0


def test_without_lease_extension_the_same_handler_sees_its_message_again(
    registry: SerializerRegistry,
) -> None:
    backend = make_backend(visibility_timeout=1.0)
    backend.capabilities = dataclasses.replace(backend.capabilities, lease_extension=False)
    redelivered = threading.Event()
    calls: list[int] = []

    @consumer
    def slow(message: Message) -> None:
        calls.append(1)
        if len(calls) == 1:
            redelivered.wait(3.0)  # the control: the message comes back while this runs
        else:
            redelivered.set()

    publish(backend, registry, Paid("o1"))
    with dispatcher(backend, [slow], registry, workers=2) as d:
        d.run_until_idle(IDLE)

    assert redelivered.is_set() and len(calls) == 2


class LeaseHooks(Hooks):
    def __init__(self) -> None:
        self.extended: list[tuple[str, float]] = []
        self.lost: list[tuple[str, Exception]] = []

    def on_lease_extended(self, queue_name: str, received: ReceivedMessage, seconds: float) -> None:
        self.extended.append((received.message_id, seconds))

    def on_lease_lost(self, queue_name: str, received: ReceivedMessage, error: Exception) -> None:
        self.lost.append((received.message_id, error))


def keeper_for(
    backend: MemoryBackend, hooks: Hooks, policy: LeasePolicy, lost: list[Lease], held: list[Lease]
) -> LeaseKeeper:
    """A keeper of the leases in ``held``, a list the test changes as a dispatcher would."""
    return LeaseKeeper(
        backend,
        QUEUE,
        10.0,
        policy,
        hooks,
        on_extended=lambda leases: None,
        on_lost=lost.append,
        held=lambda: list(held),
    )


def test_lease_keeper_extends_when_due_up_to_max_lease(
    registry: SerializerRegistry, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    backend = make_backend(clock, visibility_timeout=10.0)
    publish(backend, registry, Paid("o1"))
    (received,) = backend.receive(QUEUE, 1)
    hooks, lost = LeaseHooks(), []  # type: tuple[LeaseHooks, list[Lease]]
    lease = Lease(received, received_at=0.0, expires_at=10.0)
    keeper = keeper_for(backend, hooks, LeasePolicy(extend_at=0.5, max_lease=22.0), lost, [lease])

    def beat(at: float) -> None:  # the keeper and the backend see the same time
        clock.advance(at - clock.now())
        keeper.extend_due(at)

    beat(4.0)  # 6 s left of 10: not yet
    assert hooks.extended == []
    beat(5.5)
    assert hooks.extended == [(received.message_id, 10.0)] and lease.expires_at == 15.5
    clock.advance(12.0 - 5.5)  # past the original timeout, still invisible: it was extended
    assert backend.receive(QUEUE, 1) == []

    beat(12.0)  # 3.5 s left: extend again
    assert hooks.extended[-1] == (received.message_id, 10.0) and lease.expires_at == 22.0
    beat(17.0)
    assert hooks.extended[-1] == (received.message_id, 5.0)  # what max_lease (22 s) still allows
    with caplog.at_level(logging.WARNING, "melange.dispatcher"):
        beat(21.9995)
    assert lease.capped and "reached max_lease" in caplog.text
    assert len(hooks.extended) == 3 and lost == []
    clock.advance(1.0)  # the lease ends at max_lease: the message is delivered again
    assert [m.message_id for m in backend.receive(QUEUE, 1)] == [received.message_id]


def test_lease_keeper_extends_only_the_leases_held_at_each_beat(
    registry: SerializerRegistry, clock: ManualClock
) -> None:
    backend = make_backend(clock, visibility_timeout=10.0)
    for order in ("o1", "o2"):
        publish(backend, registry, Paid(order))
    first, second = backend.receive(QUEUE, 2)
    hooks = LeaseHooks()
    settled = Lease(first, received_at=0.0, expires_at=10.0)
    running = Lease(second, received_at=0.0, expires_at=10.0)
    held = [settled, running]
    keeper = keeper_for(backend, hooks, LeasePolicy(extend_at=0.5, max_lease=60.0), [], held)
    held.remove(settled)  # its message was settled: the dispatcher holds it no more
    clock.advance(6.0)
    keeper.extend_due(6.0)
    assert hooks.extended == [(second.message_id, 10.0)]
    held.append(settled)  # what the dispatcher holds is read at every beat, never cached
    keeper.extend_due(6.0)
    assert hooks.extended[-1] == (first.message_id, 10.0) and len(hooks.extended) == 2


def test_lease_keeper_warns_once_per_outage_and_says_when_it_is_over(
    registry: SerializerRegistry, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    backend = make_backend(clock, visibility_timeout=10.0)
    publish(backend, registry, Paid("o1"))
    (received,) = backend.receive(QUEUE, 1)
    hooks, lost = LeaseHooks(), []  # type: tuple[LeaseHooks, list[Lease]]
    lease = Lease(received, received_at=0.0, expires_at=10.0)
    keeper = keeper_for(backend, hooks, LeasePolicy(extend_at=0.5, max_lease=600.0), lost, [lease])
    real_extend = backend.extend_lease

    def unreachable(messages: object, seconds: float) -> None:
        raise BackendUnavailable("connection reset by peer")

    backend.extend_lease = unreachable  # type: ignore[method-assign]
    with caplog.at_level(logging.DEBUG, "melange.dispatcher"):
        for at in (5.5, 6.0, 6.5, 7.0, 7.5):  # every beat of the outage fails
            keeper.extend_due(at)
        backend.extend_lease = real_extend  # type: ignore[method-assign]
        keeper.extend_due(8.0)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "connection reset by peer" in warnings[0].getMessage()
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(infos) == 1 and "5 failed attempts" in infos[0]
    assert hooks.extended == [(received.message_id, 10.0)] and lost == []


def test_lease_keeper_reports_a_lost_lease_and_keeps_the_others(
    registry: SerializerRegistry, clock: ManualClock
) -> None:
    backend = make_backend(clock, visibility_timeout=10.0)
    publish(backend, registry, Paid("o1"), Paid("o2"))
    first, second = backend.receive(QUEUE, 2)
    backend.ack([first])  # its receipt is now stale
    hooks, lost = LeaseHooks(), []  # type: tuple[LeaseHooks, list[Lease]]
    leases = [Lease(m, 0.0, 10.0) for m in (first, second)]
    keeper = keeper_for(backend, hooks, LeasePolicy(), lost, leases)

    keeper.extend_due(6.0)
    assert [lease.received.message_id for lease in lost] == [first.message_id]
    assert leases[0].lost and not leases[1].lost
    assert [mid for mid, _ in hooks.lost] == [first.message_id]
    assert isinstance(hooks.lost[0][1], LeaseLost)
    assert [mid for mid, _ in hooks.extended] == [second.message_id]
    keeper.extend_due(12.0)  # a lost lease is not tried again
    assert len(hooks.lost) == 1


# ------------------------------------------------------------------ shutdown
def test_stop_releases_unstarted_messages_and_lets_the_running_handler_finish(
    registry: SerializerRegistry,
) -> None:
    backend = make_backend(fifo=True)
    started, release = threading.Event(), threading.Event()
    calls: list[int] = []

    @consumer
    def blocking(payload: dict[str, int]) -> None:
        calls.append(payload["seq"])
        started.set()
        assert release.wait(5)

    for seq in range(4):  # one group: 1..3 wait behind 0 in the dispatcher
        publish(backend, registry, {"seq": seq}, queue=FIFO_QUEUE, group_id="g")
    d = dispatcher(backend, [blocking], registry, queue=FIFO_QUEUE, workers=4)
    d.start()
    assert started.wait(5)
    stopper = threading.Thread(target=d.stop)
    stopper.start()
    deadline = time.monotonic() + 5
    while backend.queue_depth(FIFO_QUEUE).visible < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stopper.is_alive()  # still waiting for the running handler
    release.set()
    stopper.join(5)

    assert calls == [0]
    assert d.stats.released == 3 and d.stats.acked == 1 and d.stats.handled == 1
    assert backend.queue_depth(FIFO_QUEUE) == (3, 0, 0)
    assert not backend.closed  # close_backend=False
    remaining = [registry.decode(m).body["seq"] for m in drain(backend, FIFO_QUEUE)]
    assert remaining == [1, 2, 3]  # released in order, for the next consumer


def test_stop_gives_up_on_handlers_after_the_grace_period(
    registry: SerializerRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    backend = make_backend()
    started, release = threading.Event(), threading.Event()

    @consumer
    def stuck(event: Paid) -> None:
        started.set()
        release.wait(10)

    publish(backend, registry, Paid("o1"))
    d = dispatcher(backend, [stuck], registry, grace_period=0.2)
    d.start()
    assert started.wait(5)
    began = time.monotonic()
    with caplog.at_level(logging.WARNING, "melange.dispatcher"):
        d.stop()
    took = time.monotonic() - began
    release.set()
    assert took < 2.0
    assert "still running after the 0.2s grace period" in caplog.text
    assert d.stats.acked == 0
    assert backend.queue_depth(QUEUE).in_flight == 1  # not acked: it comes back


def test_a_handler_that_fails_after_being_abandoned_settles_nothing(
    registry: SerializerRegistry,
) -> None:
    """Past the grace period the dispatcher is done with the message: a handler that raises
    later schedules no retry (no nack, no count): the message comes back on its own."""
    backend = make_backend()
    started, release = threading.Event(), threading.Event()
    raised = threading.Event()

    @consumer
    def fails_late(event: Paid) -> None:
        started.set()
        release.wait(10)
        raised.set()
        raise RuntimeError("too late")

    publish(backend, registry, Paid("o1"))
    d = dispatcher(backend, [fails_late], registry, grace_period=0.1)
    d.start()
    assert started.wait(5)
    d.stop()
    release.set()
    assert raised.wait(5)
    time.sleep(0.2)  # what the handler's thread does after the raise, it does now
    assert (d.stats.retried, d.stats.acked) == (0, 0), d.stats.snapshot()
    assert backend.queue_depth(QUEUE).in_flight == 1  # left to its visibility timeout


def test_stop_is_idempotent_and_closes_the_backend(registry: SerializerRegistry) -> None:
    backend = make_backend()
    d = dispatcher(backend, [consumer(lambda p: None)], registry, close_backend=True)
    d.start()
    d.stop()
    d.stop()
    assert backend.closed and not d.running
    with pytest.raises(ConfigurationError, match="cannot start again"):
        d.start()


def test_stop_before_start_closes_the_backend_without_running(
    registry: SerializerRegistry,
) -> None:
    backend = make_backend()
    d = dispatcher(backend, [consumer(lambda p: None)], registry, close_backend=True)
    d.stop()
    assert backend.closed
    with pytest.raises(ConfigurationError):
        d.run_until_idle(IDLE)


def test_a_handler_may_stop_its_own_dispatcher(registry: SerializerRegistry) -> None:
    backend = make_backend()
    holder: list[MessageDispatcher] = []

    @consumer
    def last_one(event: Paid) -> None:
        holder[0].stop()  # must not wait for itself

    d = dispatcher(backend, [last_one], registry)
    holder.append(d)
    publish(backend, registry, Paid("o1"))
    thread = threading.Thread(target=d.run, kwargs={"install_signal_handlers": False})
    thread.start()
    thread.join(5)
    assert not thread.is_alive()
    assert d.stats.acked == 1


def test_sigterm_finishes_the_running_handler_and_run_returns(
    registry: SerializerRegistry,
) -> None:
    backend = make_backend()
    started = threading.Event()
    calls: list[str] = []

    @consumer
    def slow(event: Paid) -> None:
        calls.append(event.order)
        started.set()
        # Long enough for the signal's stop to arrive first even on a loaded machine (with
        # 0.3 s, o2 started once in a CI run under load).
        time.sleep(1.0)

    received_by_test: list[int] = []

    def test_handler(signum: int, frame: Any) -> None:
        received_by_test.append(signum)

    publish(backend, registry, Paid("o1"), Paid("o2"), Paid("o3"))
    d = dispatcher(backend, [slow], registry, workers=1)

    def send_sigterm() -> None:
        assert started.wait(5)
        os.kill(os.getpid(), signal.SIGTERM)

    def safety_net() -> None:  # if run() did not handle SIGTERM, do not hang the test run
        time.sleep(10)
        d.stop(0)

    previous = signal.signal(signal.SIGTERM, test_handler)
    try:
        threading.Thread(target=send_sigterm, daemon=True).start()
        threading.Thread(target=safety_net, daemon=True).start()
        began = time.monotonic()
        d.run()
        assert time.monotonic() - began < 5
        assert signal.getsignal(signal.SIGTERM) is test_handler  # restored
    finally:
        signal.signal(signal.SIGTERM, previous)

    assert received_by_test == []  # run() handled it
    assert calls == ["o1"]  # the running handler finished, nothing new started
    assert d.stats.acked == 1
    assert backend.queue_depth(QUEUE).visible == 2


# --------------------------------------------------------------------- dedup
class RecordingDedup(DedupCache):
    """A test double: a dict of states, recording every call."""

    def __init__(self) -> None:
        self.state: dict[str, str] = {}
        self.calls: list[tuple[str, str, float | None]] = []
        self.lock = threading.Lock()

    def claim(self, key: str, ttl: float) -> ClaimResult:
        with self.lock:
            self.calls.append(("claim", key, ttl))
            current = self.state.get(key)
            if current == "done":
                return "done"
            if current == "claimed":
                return "busy"
            self.state[key] = "claimed"
            return "claimed"

    def complete(self, key: str, ttl: float) -> None:
        with self.lock:
            self.calls.append(("complete", key, ttl))
            self.state[key] = "done"

    def release(self, key: str) -> None:
        with self.lock:
            self.calls.append(("release", key, None))
            if self.state.get(key) == "claimed":
                del self.state[key]

    def close(self) -> None:
        pass


def test_dedup_done_skips_the_consumer_and_acks(
    registry: SerializerRegistry, clock: ManualClock
) -> None:
    backend = make_backend(clock)
    dedup = RecordingDedup()
    calls: list[str] = []
    first = consumer(lambda p: calls.append("first"), name="first")
    second = consumer(lambda p: calls.append("second"), name="second")
    (message_id,) = publish(backend, registry, Paid("o1"))
    dedup.state[f"first:{message_id}"] = "done"

    with dispatcher(backend, [first, second], registry, dedup=dedup, dedup_ttl=600.0) as d:
        stats = d.run_until_idle(IDLE)

    assert calls == ["second"]
    assert stats.duplicates == 1 and stats.acked == 1
    assert ("complete", f"second:{message_id}", 600.0) in dedup.calls
    claims = [c for c in dedup.calls if c[0] == "claim"]
    assert all(ttl == 30.0 for _, _, ttl in claims)  # the visibility timeout


def test_dedup_busy_leaves_the_message_for_later(
    registry: SerializerRegistry, clock: ManualClock
) -> None:
    backend = make_backend(clock, max_receive_count=5)
    dedup = RecordingDedup()
    calls: list[str] = []
    first = consumer(lambda p: calls.append("first"), name="first")
    second = consumer(lambda p: calls.append("second"), name="second")
    (message_id,) = publish(backend, registry, Paid("o1"))
    dedup.state[f"first:{message_id}"] = "claimed"  # another worker holds it

    with dispatcher(backend, [first, second], registry, dedup=dedup) as d:
        stats = d.run_until_idle(IDLE)
        assert calls == ["second"] and stats.busy == 1 and stats.acked == 0
        assert backend.nacks == [(message_id, 1, 2.0)]

        del dedup.state[f"first:{message_id}"]  # the other worker gave up
        clock.advance(2.0)
        stats = d.run_until_idle(IDLE)

    assert calls == ["second", "first"]  # second was done already: not run again
    assert stats.acked == 1 and stats.duplicates == 1


def test_dedup_failure_releases_the_claim_for_the_retry(
    registry: SerializerRegistry, clock: ManualClock
) -> None:
    backend = make_backend(clock)
    dedup = RecordingDedup()
    outcomes = iter([RuntimeError("first try fails"), None])

    @consumer(name="flaky")
    def flaky(event: Paid) -> None:
        error = next(outcomes)
        if error is not None:
            raise error

    (message_id,) = publish(backend, registry, Paid("o1"))
    key = f"flaky:{message_id}"
    with dispatcher(backend, [flaky], registry, dedup=dedup) as d:
        d.run_until_idle(IDLE)
        assert [c[0] for c in dedup.calls] == ["claim", "release"]
        clock.advance(2.0)
        stats = d.run_until_idle(IDLE)

    assert [c[0] for c in dedup.calls] == ["claim", "release", "claim", "complete"]
    assert dedup.state == {key: "done"}
    assert stats.acked == 1
    # the default completion ttl is the queue's retention period
    assert dedup.calls[-1][2] == backend.get_queue(QUEUE).message_retention_period  # type: ignore[union-attr]


def test_dedup_handles_a_redelivered_message_once_per_consumer(
    registry: SerializerRegistry, clock: ManualClock
) -> None:
    class AckFailsOnce(RecordingBackend):
        failed = False

        def _ack(self, messages: list[ReceivedMessage]) -> None:
            if not self.failed:
                self.failed = True
                raise BackendUnavailable("connection reset")
            super()._ack(messages)

    backend = AckFailsOnce(clock)
    MessagingBackendFactory(backend).init_queue(QUEUE, visibility_timeout=30.0)
    calls: list[str] = []
    publish(backend, registry, Paid("o1"))
    cache = MemoryDedupCache()
    with dispatcher(
        backend, [consumer(lambda p: calls.append("x"), name="c")], registry, dedup=cache
    ) as d:
        d.run_until_idle(IDLE)
        clock.advance(31.0)  # the unacked message comes back
        stats = d.run_until_idle(IDLE)

    assert calls == ["x"]
    assert stats.received == 2 and stats.duplicates == 1 and stats.acked == 1
    assert backend.queue_depth(QUEUE) == (0, 0, 0)


# ------------------------------------------------------- errors and hooks
def test_receive_errors_are_logged_and_retried(
    registry: SerializerRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    class Flaky(RecordingBackend):
        failures = 2

        def _receive(self, queue_name: str, max_messages: int, wait: float) -> Any:
            if self.failures:
                self.failures -= 1
                raise BackendUnavailable("broker unreachable")
            return super()._receive(queue_name, max_messages, wait)

    backend = Flaky()
    MessagingBackendFactory(backend).init_queue(QUEUE)
    calls: list[Paid] = []
    publish(backend, registry, Paid("o1"))
    with (
        caplog.at_level(logging.WARNING, "melange.dispatcher"),
        dispatcher(backend, [consumer(calls.append)], registry) as d,
    ):
        stats = d.run_until_idle(0.5)
    assert calls == [Paid("o1")]
    assert stats.receive_errors == 2
    assert caplog.text.count("broker unreachable") == 1  # one warning for the run of failures


def test_a_backend_closed_under_the_dispatcher_stops_it(registry: SerializerRegistry) -> None:
    backend = make_backend()
    d = dispatcher(backend, [consumer(lambda p: None)], registry)
    d.start()
    backend.close()
    deadline = time.monotonic() + 5
    while d.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not d.running
    d.stop(5)


def test_missing_queue_fails_at_start(registry: SerializerRegistry) -> None:
    d = MessageDispatcher(MemoryBackend(), "nope", [consumer(lambda p: None)], registry)
    with pytest.raises(QueueNotFound, match="nope"):
        d.start()


class RecordingHooks(Hooks):
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def on_receive(self, queue_name: str, messages: Sequence[ReceivedMessage]) -> None:
        self.events.append(("receive", len(messages)))

    @contextlib.contextmanager
    def handling(self, queue_name: str, message: Message, consumer: str) -> Iterator[None]:
        self.events.append(("enter", consumer))
        try:
            yield
        except Exception as exc:
            self.events.append(("raised", type(exc).__name__))
            raise
        self.events.append(("exit", consumer))

    def on_handled(self, queue_name: str, message: Message, consumer: str, seconds: float) -> None:
        self.events.append(("handled", consumer))

    def on_handler_error(
        self,
        queue_name: str,
        message: Message,
        consumer: str,
        error: BaseException,
        retry_in: float | None,
    ) -> None:
        self.events.append(("error", consumer, type(error).__name__, retry_in))

    def on_undecodable(
        self, queue_name: str, received: ReceivedMessage, error: Exception, outcome: str
    ) -> None:
        self.events.append(("undecodable", outcome))

    def on_dead_lettered(self, queue_name: str, received: ReceivedMessage, reason: str) -> None:
        self.events.append(("dead_lettered", reason))

    def on_acked(self, queue_name: str, messages: Sequence[ReceivedMessage]) -> None:
        self.events.append(("acked", len(messages)))


class BrokenHooks(Hooks):
    def on_handled(self, queue_name: str, message: Message, consumer: str, seconds: float) -> None:
        raise RuntimeError("metrics backend down")

    @contextlib.contextmanager
    def handling(self, queue_name: str, message: Message, consumer: str) -> Iterator[None]:
        raise RuntimeError("tracer down")
        yield  # pragma: no cover


def test_hooks_see_each_step(registry: SerializerRegistry, clock: ManualClock) -> None:
    backend = make_backend(clock)
    hooks = RecordingHooks()

    @consumer(name="fails")
    def fails(event: Paid) -> None:
        raise KeyError("missing")

    publish(backend, registry, Paid("o1"))
    with dispatcher(backend, [fails], registry, hooks=hooks) as d:
        d.run_until_idle(IDLE)
    assert hooks.events == [
        ("receive", 1),
        ("enter", "fails"),
        ("raised", "KeyError"),
        ("error", "fails", "KeyError", 2.0),
    ]

    hooks.events.clear()
    publish_undecodable(backend)
    with dispatcher(backend, [fails], registry, hooks=hooks) as d:
        d.run_until_idle(IDLE)
    assert hooks.events == [
        ("receive", 1),
        ("dead_lettered", "undecodable"),
        ("undecodable", "dead_letter"),
        ("acked", 1),
    ]


def test_failing_hooks_never_change_what_happens_to_a_message(
    registry: SerializerRegistry,
) -> None:
    backend = make_backend()
    calls: list[Paid] = []
    publish(backend, registry, Paid("o1"))
    with dispatcher(backend, [consumer(calls.append)], registry, hooks=BrokenHooks()) as d:
        stats = d.run_until_idle(IDLE)
    assert calls == [Paid("o1")] and stats.acked == 1 and stats.failed == 0


def test_logs_carry_ids_as_extra_fields_and_never_the_body(
    registry: SerializerRegistry, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    backend = make_backend(clock)

    @consumer(name="billing")
    def billing(event: Paid) -> None:
        raise RuntimeError("billing failed")

    (message_id,) = publish(backend, registry, Paid("secret-card-4111"))
    with (
        caplog.at_level(logging.DEBUG, "melange.dispatcher"),
        dispatcher(backend, [billing], registry) as d,
    ):
        d.run_until_idle(IDLE)

    failure = next(r for r in caplog.records if "failed on message" in r.getMessage())
    assert failure.levelno == logging.WARNING
    assert (failure.queue, failure.message_id, failure.consumer) == (  # type: ignore[attr-defined]
        QUEUE,
        message_id,
        "billing",
    )
    assert "secret-card-4111" not in caplog.text


# ------------------------------------------------------------- configuration
def test_simple_dispatcher_runs_one_consumer(registry: SerializerRegistry) -> None:
    backend = make_backend()
    calls: list[Paid] = []
    publish(backend, registry, Paid("o1"))
    with SimpleMessageDispatcher(
        consumer(calls.append), backend, QUEUE, registry, wait_seconds=0.05
    ) as d:
        stats = d.run_until_idle(IDLE)
    assert calls == [Paid("o1")] and stats.acked == 1
    assert not backend.closed  # the caller opened it: the caller closes it


def test_a_callers_backend_stays_open_for_the_next_dispatcher(
    registry: SerializerRegistry,
) -> None:
    # Two dispatchers in turn on one backend, as a service does between deploy phases:
    # the first must not close what it did not open (close_backend's default).
    backend = make_backend()
    calls: list[Paid] = []
    for order in ("o1", "o2"):
        publish(backend, registry, Paid(order))
        with MessageDispatcher(
            backend, QUEUE, [consumer(calls.append)], registry, wait_seconds=0.05
        ) as d:
            d.run_until_idle(IDLE)
    assert calls == [Paid("o1"), Paid("o2")]
    assert not backend.closed


@pytest.mark.parametrize(
    ("consumers", "options", "match"),
    [
        ([], {}, "at least one consumer"),
        ([lambda p: None], {}, "decorate the function"),
        ("not-a-list", {}, "list of Consumer"),
        ([consumer(lambda p: None, name="a"), consumer(lambda p: None, name="a")], {}, "named 'a'"),
        ([consumer(lambda p: None)], {"workers": 0}, "workers"),
        ([consumer(lambda p: None)], {"batch_size": True}, "batch_size"),
        ([consumer(lambda p: None)], {"on_unhandled": "drop"}, "on_unhandled"),
        ([consumer(lambda p: None)], {"wait_seconds": -1}, "wait_seconds"),
        ([consumer(lambda p: None)], {"retry": 3}, "RetryPolicy"),
    ],
)
def test_invalid_arguments_are_refused_before_anything_starts(
    registry: SerializerRegistry, consumers: Any, options: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match):
        MessageDispatcher(MemoryBackend(), QUEUE, consumers, registry, **options)


def test_async_consumers_are_refused(registry: SerializerRegistry) -> None:
    @consumer
    async def on_paid(event: Paid) -> None: ...

    with pytest.raises(ConfigurationError, match="AsyncMessageDispatcher"):
        MessageDispatcher(MemoryBackend(), QUEUE, [on_paid], registry)


def test_stats_snapshot_is_a_copy() -> None:
    stats = DispatchStats()
    stats.add("acked", 2)
    snapshot = stats.snapshot()
    stats.add("acked")
    assert snapshot.acked == 2 and stats.acked == 3
    assert stats.as_dict()["acked"] == 3


# ------------------------------------------------------------------ throughput
class RoundTripBackend(RecordingBackend):
    """A broker far away: receives and acks take ``rtt`` seconds and acks take 10 at most.

    Records every ack call's size and the most ack calls in progress at once.
    """

    capabilities = dataclasses.replace(MemoryBackend.capabilities, max_batch_size=10)

    def __init__(self, rtt: float) -> None:
        super().__init__()
        self.rtt = rtt
        self.ack_sizes: list[int] = []
        self.acks_in_flight = 0
        self.peak_acks_in_flight = 0

    def _receive(self, queue_name: str, max_messages: int, wait: float) -> list[ReceivedMessage]:
        time.sleep(self.rtt)
        return super()._receive(queue_name, max_messages, wait)

    def _ack(self, messages: list[ReceivedMessage]) -> None:
        with self.lock:
            self.ack_sizes.append(len(messages))
            self.acks_in_flight += 1
            self.peak_acks_in_flight = max(self.peak_acks_in_flight, self.acks_in_flight)
        try:
            time.sleep(self.rtt)
            super()._ack(messages)
        finally:
            with self.lock:
                self.acks_in_flight -= 1


def round_trip_backend(rtt: float = 0.03) -> RoundTripBackend:
    backend = RoundTripBackend(rtt)
    MessagingBackendFactory(backend).init_queue(QUEUE)
    return backend


def test_acks_keep_up_with_concurrent_receives_in_native_batches(
    registry: SerializerRegistry,
) -> None:
    backend = round_trip_backend()
    handled: list[str] = []
    publish(backend, registry, *(Paid(f"o{i}") for i in range(160)))

    @consumer
    def record(event: Paid) -> None:
        handled.append(event.order)

    with dispatcher(
        backend, [record], registry, workers=40, concurrent_receives=4, batch_size=10
    ) as d:
        stats = d.run_until_idle(IDLE, timeout=20)

    assert stats.handled == 160 and stats.acked == 160 and len(backend.acked) == 160
    # One call per backend batch, never more than the backend takes at once...
    assert max(backend.ack_sizes) <= 10
    assert sum(backend.ack_sizes) == 160 and len(backend.ack_sizes) <= 20
    # ...and several in flight at once, as the receives are: deletes are not serialized.
    assert backend.peak_acks_in_flight >= 2


def test_the_acks_of_one_received_batch_travel_together(registry: SerializerRegistry) -> None:
    backend = round_trip_backend(rtt=0.02)
    publish(backend, registry, *(Paid(f"o{i}") for i in range(50)))

    @consumer
    def uneven(event: Paid) -> None:
        time.sleep(random.uniform(0.0, 0.01))  # handlers of one batch finish one by one

    with dispatcher(backend, [uneven], registry, workers=10, batch_size=10) as d:
        stats = d.run_until_idle(IDLE, timeout=20)

    assert stats.acked == 50
    # Every receive returned 10; their acks were not sent piecemeal as handlers finished.
    assert backend.ack_sizes == [10] * 5


def test_a_slow_handler_does_not_hold_back_its_neighbours_acks(
    registry: SerializerRegistry,
) -> None:
    backend = make_backend(visibility_timeout=0.4)  # an ack waits at most a quarter of that
    ids = publish(backend, registry, *(Paid(f"o{i}") for i in range(5)))
    release = threading.Event()

    @consumer
    def one_slow(event: Paid) -> None:
        if event.order == "o0":
            release.wait(5)

    with dispatcher(backend, [one_slow], registry, workers=5, batch_size=5) as d:
        d.start()
        deadline = time.monotonic() + 3
        while len(backend.acked) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        acked_while_slow_ran = set(backend.acked)
        release.set()
        stats = d.run_until_idle(IDLE, timeout=5)

    assert acked_while_slow_ran == set(ids[1:])
    assert stats.acked == 5


def test_stop_sends_the_acks_still_waiting_for_an_abandoned_neighbour(
    registry: SerializerRegistry,
) -> None:
    backend = make_backend()  # visibility timeout 30 s: the acks would wait a second
    ids = publish(backend, registry, *(Paid(f"o{i}") for i in range(5)))
    release = threading.Event()
    finished: list[str] = []

    @consumer
    def one_stuck(event: Paid) -> None:
        if event.order == "o0":
            release.wait(5)
        else:
            finished.append(event.order)

    d = dispatcher(backend, [one_stuck], registry, workers=5, batch_size=5, grace_period=0.1)
    try:
        d.start()
        deadline = time.monotonic() + 3
        while len(finished) < 4 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert backend.acked == []  # waiting for the rest of their batch
        d.stop(timeout=5)
    finally:
        release.set()
    assert sorted(backend.acked) == sorted(ids[1:])


@pytest.mark.parametrize("workers", [None, 20])
def test_receives_ask_for_full_batches_when_capacity_allows(
    registry: SerializerRegistry, workers: int | None
) -> None:
    backend = make_backend()
    publish(backend, registry, *(Paid(f"o{i}") for i in range(200)))

    @consumer
    def quick(event: Paid) -> None:
        time.sleep(random.uniform(0.0, 0.003))  # workers come free one by one

    with dispatcher(
        backend, [quick], registry, workers=workers, concurrent_receives=2, batch_size=10
    ) as d:
        assert d.workers == 20  # the default: a full batch for every receive
        stats = d.run_until_idle(IDLE, timeout=20)

    assert stats.acked == 200
    assert set(backend.asked) == {10}


def test_short_polls_of_an_empty_queue_pause_between_receives() -> None:
    # wait_seconds=0 asks the broker without waiting: on an empty queue the next receive must
    # not follow at once, or a receive thread spins (CPU, and API calls on a paid broker).
    polls = CountedReceives()
    backend = polls.backend
    handled: list[Any] = []
    note = consumer(handled.append)
    began = time.monotonic()
    with MessageDispatcher(backend, polls.queue, [note], wait_seconds=0) as dispatcher:
        stats = dispatcher.run_until_idle(idle_seconds=0.3, timeout=5.0)
    seconds = time.monotonic() - began
    assert stats.handled == 1 and handled == [{"n": 1}]
    assert polls.at_most_one_receive_per(seconds, 0.02), (polls.receives, seconds)
