"""Memory-specific behaviour of the embedded backend, driven by a ManualClock.

The generic contract is covered by the shared conformance suite; these tests
pin down the SQS-like timing rules, FIFO group blocking, receipts and the
thread-safety of this implementation.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
import typing
from collections.abc import Iterator

import pytest

from melange.backends.base import OutgoingMessage, ReceivedMessage
from melange.backends.memory import MemoryBackend, QueueDepth
from melange.clock import Clock, ManualClock, SystemClock
from melange.exceptions import (
    BackendClosed,
    ConfigurationError,
    ImmutableSettingError,
    InvalidMessage,
    LeaseLost,
    MessageTooLarge,
    QueueNotFound,
    TopicNotFound,
)
from melange.topology import DeadLetterPolicy, QueueSpec, SubscriptionSpec, TopicSpec

VT = 30.0  # visibility timeout of the queues below


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1000.0)


@pytest.fixture
def backend(clock: ManualClock) -> Iterator[MemoryBackend]:
    with MemoryBackend(clock=clock) as memory:
        yield memory


def queue(backend: MemoryBackend, name: str = "q", **settings: typing.Any) -> QueueSpec:
    spec = QueueSpec(name, fifo=name.endswith(".fifo"), visibility_timeout=VT, **settings)
    backend.declare_queue(spec)
    return spec


def send(backend: MemoryBackend, queue_name: str, *bodies: str, **fields: typing.Any) -> list[str]:
    results = backend.publish(queue_name, [OutgoingMessage(b.encode(), **fields) for b in bodies])
    assert all(r.ok for r in results)
    return [typing.cast(str, r.message_id) for r in results]


def bodies(messages: list[ReceivedMessage]) -> list[str]:
    return [m.body.decode() for m in messages]


# ------------------------------------------------------------------ clock
def test_manual_clock_moves_only_when_advanced() -> None:
    clock = ManualClock(5)
    assert clock.now() == 5.0
    clock.advance(2.5)
    clock.advance(0)
    assert clock.now() == 7.5
    with pytest.raises(ValueError, match="cannot go back"):
        clock.advance(-1)
    assert clock.now() == 7.5


def test_clocks_satisfy_the_protocol() -> None:
    assert isinstance(ManualClock(), Clock)
    assert isinstance(SystemClock(), Clock)
    system = SystemClock()
    first = system.now()
    assert system.now() >= first


def test_manual_clock_is_thread_safe() -> None:
    clock = ManualClock()
    threads = [
        threading.Thread(target=lambda: [clock.advance(1) for _ in range(1000)]) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert clock.now() == 4000.0


# ------------------------------------------------------------ construction
def test_capabilities_declare_every_feature() -> None:
    backend = MemoryBackend()
    assert backend.name == "memory"
    assert backend.capabilities.supported() == list(backend.capabilities.FEATURES)
    assert backend.capabilities.max_attributes is None
    assert backend.capabilities.max_message_size == 256 * 1024
    assert isinstance(backend.clock, SystemClock)


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"max_message_size": 0}, "max_message_size"),
        ({"max_message_size": -5}, "max_message_size"),
        ({"max_message_size": True}, "max_message_size"),
        ({"max_message_size": 10.5}, "max_message_size"),
        ({"dedup_window": 0}, "dedup_window"),
        ({"dedup_window": -1.0}, "dedup_window"),
        ({"dedup_window": math.nan}, "dedup_window"),
        ({"dedup_window": "300"}, "dedup_window"),
        ({"clock": "fast"}, "clock"),
    ],
)
def test_bad_options_are_refused(options: dict[str, typing.Any], fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        MemoryBackend(**options)


def test_max_message_size_narrows_the_instance_only(clock: ManualClock) -> None:
    small = MemoryBackend(clock=clock, max_message_size=10)
    assert small.capabilities.max_message_size == 10
    assert MemoryBackend.capabilities.max_message_size == 256 * 1024
    assert small.capabilities == dataclasses.replace(
        MemoryBackend.capabilities, max_message_size=10
    )
    small.declare_queue(QueueSpec("q"))
    send(small, "q", "x" * 10)
    with pytest.raises(MessageTooLarge):
        send(small, "q", "x" * 11)
    assert small.queue_depth("q") == QueueDepth(visible=1, in_flight=0, delayed=0)


def test_constructor_hints_resolve_for_string_configuration() -> None:
    # melange.config converts string options by these hints.
    hints = typing.get_type_hints(MemoryBackend.__init__)
    assert hints["max_message_size"] is int
    assert hints["dedup_window"] is float


# ---------------------------------------------------------------- topology
def test_declare_queue_is_idempotent_and_updates_mutable_settings(backend: MemoryBackend) -> None:
    spec = queue(backend)
    send(backend, "q", "kept")
    changed = dataclasses.replace(spec, visibility_timeout=5.0, delay_seconds=2.0)
    backend.declare_queue(changed)
    backend.declare_queue(changed)
    assert backend.get_queue("q") == changed
    assert backend.queue_depth("q").visible == 1  # re-declaring keeps the messages


def test_new_visibility_timeout_applies_to_the_next_receive(
    backend: MemoryBackend, clock: ManualClock
) -> None:
    spec = queue(backend)
    send(backend, "q", "a")
    backend.declare_queue(dataclasses.replace(spec, visibility_timeout=5.0))
    assert len(backend.receive("q")) == 1
    clock.advance(5.0)
    assert bodies(backend.receive("q")) == ["a"]


def test_queue_fifo_cannot_change(backend: MemoryBackend) -> None:
    spec = queue(backend, "orders")
    with pytest.raises(ImmutableSettingError, match="fifo=False") as caught:
        # Through the hook: the contract's name rule would refuse a FIFO queue named so.
        backend._declare_queue(dataclasses.replace(spec, fifo=True, visibility_timeout=1.0))
    assert (caught.value.current, caught.value.declared) == (False, True)
    assert backend.get_queue("orders") == spec


def test_topic_fifo_cannot_change(backend: MemoryBackend) -> None:
    backend.declare_topic(TopicSpec("t"))
    backend.declare_topic(TopicSpec("t"))
    with pytest.raises(ImmutableSettingError):
        backend._declare_topic(TopicSpec("t", fifo=True))  # past the name rule, as by hand
    assert backend.get_topic("t") == TopicSpec("t")


def test_missing_resources(backend: MemoryBackend) -> None:
    queue(backend, "orders")
    assert backend.get_queue("nope") is None
    assert backend.get_topic("nope") is None
    assert backend.get_subscription("nope", "orders") is None
    with pytest.raises(QueueNotFound, match="did you mean 'orders'"):
        backend.publish("order", [OutgoingMessage(b"x")])
    with pytest.raises(QueueNotFound):
        backend.receive("nope")
    with pytest.raises(QueueNotFound, match="nothing was deleted"):
        backend.delete_queue("nope")
    with pytest.raises(TopicNotFound):
        backend.delete_topic("nope")
    with pytest.raises(TopicNotFound):
        backend.publish_to_topic("nope", [OutgoingMessage(b"x")])
    with pytest.raises(TopicNotFound):
        backend.subscribe(SubscriptionSpec("nope", "orders"))
    backend.declare_topic(TopicSpec("t"))
    with pytest.raises(QueueNotFound):
        backend.subscribe(SubscriptionSpec("t", "nope"))
    assert backend.get_subscription("t", "nope") is None


def test_publish_to_missing_queue_enqueues_nothing_anywhere(backend: MemoryBackend) -> None:
    queue(backend, "other")
    with pytest.raises(QueueNotFound):
        send(backend, "missing", "a", "b")
    assert backend.queue_depth("other") == (0, 0, 0)


def test_delete_queue_drops_messages_and_subscriptions(backend: MemoryBackend) -> None:
    queue(backend)
    backend.declare_topic(TopicSpec("t"))
    backend.subscribe(SubscriptionSpec("t", "q"))
    send(backend, "q", "old")
    backend.delete_queue("q")
    assert backend.get_queue("q") is None
    assert backend.get_subscription("t", "q") is None
    queue(backend)
    assert backend.receive("q") == []
    backend.publish_to_topic("t", [OutgoingMessage(b"after")])
    assert backend.receive("q") == []  # the old subscription did not come back


def test_delete_topic_drops_its_subscriptions(backend: MemoryBackend) -> None:
    queue(backend)
    backend.declare_topic(TopicSpec("t"))
    backend.subscribe(SubscriptionSpec("t", "q"))
    backend.delete_topic("t")
    assert backend.get_topic("t") is None
    backend.declare_topic(TopicSpec("t"))
    assert backend.get_subscription("t", "q") is None


def test_subscribing_again_replaces_the_filter_without_duplicates(backend: MemoryBackend) -> None:
    queue(backend)
    backend.declare_topic(TopicSpec("t"))
    backend.subscribe(SubscriptionSpec("t", "q"))
    only_eu = SubscriptionSpec("t", "q", SubscriptionSpec.normalize_filter({"region": ["eu"]}))
    backend.subscribe(only_eu)
    backend.subscribe(only_eu)
    assert backend.get_subscription("t", "q") == only_eu
    backend.publish_to_topic(
        "t",
        [
            OutgoingMessage(b"eu", {"region": "eu"}),
            OutgoingMessage(b"us", {"region": "us"}),
            OutgoingMessage(b"none"),
        ],
    )
    assert bodies(backend.receive("q")) == ["eu"]


# ----------------------------------------------------------------- fan-out
def test_topic_copies_keep_fields_and_get_their_own_ids(
    backend: MemoryBackend, clock: ManualClock
) -> None:
    queue(backend, "a.fifo")
    queue(backend, "b.fifo")
    backend.declare_topic(TopicSpec("t.fifo", fifo=True))
    backend.subscribe(SubscriptionSpec("t.fifo", "a.fifo"))
    backend.subscribe(SubscriptionSpec("t.fifo", "b.fifo"))
    message = OutgoingMessage(b"hi", {"k": "v"}, group_id="g", dedup_id="d", delay_seconds=5)
    [result] = backend.publish_to_topic("t.fifo", [message])
    assert backend.receive("a.fifo") == []  # the delay travels with the copy
    clock.advance(5)
    [a] = backend.receive("a.fifo")
    [b] = backend.receive("b.fifo")
    assert (a.body, dict(a.attributes), a.group_id) == (b"hi", {"k": "v"}, "g")
    assert (b.body, dict(b.attributes), b.group_id) == (b"hi", {"k": "v"}, "g")
    assert len({result.message_id, a.message_id, b.message_id}) == 3


def test_topic_deduplicates_before_fan_out(backend: MemoryBackend, clock: ManualClock) -> None:
    queue(backend)
    backend.declare_topic(TopicSpec("t"))
    backend.subscribe(SubscriptionSpec("t", "q"))
    first = backend.publish_to_topic("t", [OutgoingMessage(b"1", dedup_id="x")])
    again = backend.publish_to_topic("t", [OutgoingMessage(b"2", dedup_id="x")])
    assert again[0].message_id == first[0].message_id
    received = backend.receive("q")
    assert bodies(received) == ["1"]
    backend.ack(received)
    clock.advance(300)
    later = backend.publish_to_topic("t", [OutgoingMessage(b"3", dedup_id="x")])
    assert later[0].message_id != first[0].message_id
    # The queue's own window (same length) has expired too, so the copy arrives.
    assert bodies(backend.receive("q")) == ["3"]


# --------------------------------------------------------- visibility / DLQ
def test_unacked_message_is_redelivered_after_the_timeout(
    backend: MemoryBackend, clock: ManualClock
) -> None:
    queue(backend)
    [message_id] = send(backend, "q", "m")
    first = backend.receive("q")
    assert [(m.message_id, m.receive_count) for m in first] == [(message_id, 1)]
    clock.advance(VT - 0.001)
    assert backend.receive("q") == []
    clock.advance(0.001)
    second = backend.receive("q")
    assert [(m.message_id, m.receive_count) for m in second] == [(message_id, 2)]
    assert second[0].receipt != first[0].receipt
    clock.advance(VT)
    assert backend.receive("q")[0].receive_count == 3


def test_redelivered_message_keeps_its_place_in_publish_order(
    backend: MemoryBackend, clock: ManualClock
) -> None:
    queue(backend)
    send(backend, "q", "first")
    backend.receive("q")
    clock.advance(10)
    send(backend, "q", "second", "third")
    clock.advance(VT)
    assert bodies(backend.receive("q", max_messages=3)) == ["first", "second", "third"]


def test_receive_respects_max_messages(backend: MemoryBackend) -> None:
    queue(backend)
    send(backend, "q", *"abcde")
    assert bodies(backend.receive("q", max_messages=2)) == ["a", "b"]
    assert bodies(backend.receive("q", max_messages=10)) == ["c", "d", "e"]
    assert backend.queue_depth("q") == QueueDepth(visible=0, in_flight=5, delayed=0)


def test_dead_letter_after_max_receive_count(backend: MemoryBackend, clock: ManualClock) -> None:
    queue(backend, "dlq")
    queue(backend, "q", dead_letter=DeadLetterPolicy("dlq", max_receive_count=2))
    [message_id] = send(backend, "q", "poison", attributes={"kind": "bad"})
    for expected_count in (1, 2):
        [message] = backend.receive("q")
        assert message.receive_count == expected_count
        clock.advance(VT)
    assert backend.receive("q") == []  # the third receive moves it instead
    assert backend.queue_depth("q") == (0, 0, 0)
    [dead] = backend.receive("dlq")
    assert (dead.message_id, dead.body, dict(dead.attributes)) == (
        message_id,
        b"poison",
        {"kind": "bad"},
    )
    assert dead.receive_count == 1  # counting starts again in the dead-letter queue


def test_dead_letter_move_does_not_block_other_messages(
    backend: MemoryBackend, clock: ManualClock
) -> None:
    queue(backend, "dlq")
    queue(backend, "q", dead_letter=DeadLetterPolicy("dlq", max_receive_count=1))
    send(backend, "q", "poison")
    backend.receive("q")
    clock.advance(VT)
    send(backend, "q", "ok1", "ok2")
    assert bodies(backend.receive("q", max_messages=2)) == ["ok1", "ok2"]
    assert bodies(backend.receive("dlq")) == ["poison"]


def test_dead_letter_keeps_fifo_group(backend: MemoryBackend, clock: ManualClock) -> None:
    queue(backend, "dlq.fifo")
    queue(backend, "q.fifo", dead_letter=DeadLetterPolicy("dlq.fifo", max_receive_count=1))
    send(backend, "q.fifo", "a", group_id="g1")
    backend.receive("q.fifo")
    clock.advance(VT)
    assert backend.receive("q.fifo") == []
    [dead] = backend.receive("dlq.fifo")
    assert (dead.body, dead.group_id) == (b"a", "g1")


def test_missing_dead_letter_queue_keeps_the_message(
    backend: MemoryBackend, clock: ManualClock
) -> None:
    queue(backend, "q", dead_letter=DeadLetterPolicy("gone", max_receive_count=1))
    send(backend, "q", "m")
    backend.receive("q")
    clock.advance(VT)
    [again] = backend.receive("q")
    assert again.receive_count == 2


def test_retention_restarts_in_the_dead_letter_queue(
    backend: MemoryBackend, clock: ManualClock
) -> None:
    queue(backend, "dlq", message_retention_period=100.0)
    queue(
        backend,
        "q",
        message_retention_period=1000.0,
        dead_letter=DeadLetterPolicy("dlq", max_receive_count=1),
    )
    send(backend, "q", "m")
    backend.receive("q")
    clock.advance(500)  # older than the DLQ's retention, but it only just got there
    assert backend.receive("q") == []
    assert bodies(backend.receive("dlq")) == ["m"]


def test_zero_visibility_timeout_never_returns_a_message_twice_in_one_call(
    backend: MemoryBackend,
) -> None:
    backend.declare_queue(QueueSpec("dlq"))
    backend.declare_queue(
        QueueSpec("q", visibility_timeout=0.0, dead_letter=DeadLetterPolicy("dlq", 2))
    )
    send(backend, "q", "poison")
    backend.receive("q")  # visible again at once
    backend.receive("q")  # now due for the DLQ
    send(backend, "q", "fresh")
    # The DLQ move makes the call look for more; "fresh" is visible again by then.
    [fresh] = backend.receive("q", max_messages=10)
    assert (fresh.body, fresh.receive_count) == (b"fresh", 1)
    [again] = backend.receive("q", max_messages=10)
    assert (again.body, again.receive_count) == (b"fresh", 2)
    assert bodies(backend.receive("dlq")) == ["poison"]


# -------------------------------------------------------------------- FIFO
def test_fifo_groups_keep_order_and_block_while_in_flight(backend: MemoryBackend) -> None:
    queue(backend, "q.fifo")
    send(backend, "q.fifo", "a1", "a2", "a3", group_id="A")
    send(backend, "q.fifo", "b1", group_id="B")
    [a1] = backend.receive("q.fifo", max_messages=1)
    assert a1.body == b"a1"
    assert bodies(backend.receive("q.fifo")) == ["b1"]  # group A waits for a1
    assert backend.receive("q.fifo") == []
    backend.ack([a1])
    assert bodies(backend.receive("q.fifo")) == ["a2", "a3"]


def test_fifo_group_waits_for_a_later_message_still_in_flight(
    backend: MemoryBackend, clock: ManualClock
) -> None:
    queue(backend, "q.fifo")
    send(backend, "q.fifo", "a1", "a2", "a3", group_id="A")
    _, _, a3 = backend.receive("q.fifo")
    backend.extend_lease([a3], 100)
    clock.advance(VT)  # the leases of a1 and a2 are over, a3 is still held
    assert backend.receive("q.fifo", max_messages=1) == []
    backend.ack([a3])
    again = backend.receive("q.fifo")
    assert [(m.body, m.receive_count) for m in again] == [(b"a1", 2), (b"a2", 2)]


def test_fifo_nack_with_delay_keeps_the_group_blocked(
    backend: MemoryBackend, clock: ManualClock
) -> None:
    queue(backend, "q.fifo")
    send(backend, "q.fifo", "a1", "a2", group_id="A")
    [a1] = backend.receive("q.fifo", max_messages=1)
    backend.nack([a1], delay_seconds=10)
    assert backend.receive("q.fifo") == []
    clock.advance(10)
    assert bodies(backend.receive("q.fifo", max_messages=1)) == ["a1"]


def test_fifo_messages_without_group_form_one_group(backend: MemoryBackend) -> None:
    queue(backend, "q.fifo")
    send(backend, "q.fifo", "x1", "x2")
    [x1] = backend.receive("q.fifo", max_messages=1)
    assert x1.group_id is None
    assert backend.receive("q.fifo") == []
    backend.ack([x1])
    assert bodies(backend.receive("q.fifo")) == ["x2"]


def test_fifo_delayed_head_holds_back_its_group(backend: MemoryBackend, clock: ManualClock) -> None:
    queue(backend, "q.fifo")
    send(backend, "q.fifo", "late", group_id="A", delay_seconds=5)
    send(backend, "q.fifo", "next", group_id="A")
    send(backend, "q.fifo", "other", group_id="B")
    assert bodies(backend.receive("q.fifo")) == ["other"]
    clock.advance(5)
    assert bodies(backend.receive("q.fifo")) == ["late", "next"]


def test_fifo_receive_interleaves_groups_in_publish_order(backend: MemoryBackend) -> None:
    queue(backend, "q.fifo")
    for body, group in [("a1", "A"), ("b1", "B"), ("a2", "A"), ("c1", "C"), ("b2", "B")]:
        send(backend, "q.fifo", body, group_id=group)
    assert bodies(backend.receive("q.fifo", max_messages=4)) == ["a1", "b1", "a2", "c1"]


# ------------------------------------------------------ dedup, delay, retention
def test_dedup_within_the_window_only(clock: ManualClock) -> None:
    backend = MemoryBackend(clock=clock, dedup_window=60)
    queue(backend, "q.fifo")
    queue(backend, "other.fifo")
    [first] = send(backend, "q.fifo", "1", dedup_id="d")
    clock.advance(59.9)
    [duplicate] = send(backend, "q.fifo", "2", dedup_id="d")
    assert duplicate == first
    [elsewhere] = send(backend, "other.fifo", "3", dedup_id="d")  # windows are per queue
    assert elsewhere != first
    assert bodies(backend.receive("q.fifo")) == ["1"]
    clock.advance(0.1)
    [after] = send(backend, "q.fifo", "4", dedup_id="d")
    assert after != first
    assert backend.queue_depth("q.fifo").visible == 1


def test_dedup_inside_one_batch(backend: MemoryBackend) -> None:
    queue(backend)
    ids = send(backend, "q", "a", "b", dedup_id="same")
    assert ids[0] == ids[1]
    assert bodies(backend.receive("q")) == ["a"]


def test_delay_per_queue_and_per_message(backend: MemoryBackend, clock: ManualClock) -> None:
    queue(backend, delay_seconds=10)
    send(backend, "q", "queue-delay")
    send(backend, "q", "own-delay", delay_seconds=3)
    assert backend.queue_depth("q") == QueueDepth(visible=0, in_flight=0, delayed=2)
    clock.advance(3)
    assert bodies(backend.receive("q")) == ["own-delay"]
    clock.advance(6.9)
    assert backend.receive("q") == []
    clock.advance(0.1)
    assert bodies(backend.receive("q")) == ["queue-delay"]


def test_retention_drops_old_messages(backend: MemoryBackend, clock: ManualClock) -> None:
    queue(backend, message_retention_period=60.0)
    send(backend, "q", "old")
    clock.advance(30)
    send(backend, "q", "young")
    clock.advance(30)
    assert backend.queue_depth("q").visible == 1
    assert bodies(backend.receive("q")) == ["young"]


def test_retention_drops_old_fifo_messages(backend: MemoryBackend, clock: ManualClock) -> None:
    queue(backend, "q.fifo", message_retention_period=60.0)
    send(backend, "q.fifo", "old", group_id="A")
    clock.advance(30)
    send(backend, "q.fifo", "young", group_id="A")
    clock.advance(30)
    assert bodies(backend.receive("q.fifo")) == ["young"]


# ------------------------------------------------------------------ settle
def test_stale_receipt_is_a_no_op(backend: MemoryBackend, clock: ManualClock) -> None:
    queue(backend)
    send(backend, "q", "m")
    [old] = backend.receive("q")
    clock.advance(VT)
    [current] = backend.receive("q")
    backend.ack([old])
    backend.nack([old])
    assert backend.queue_depth("q") == QueueDepth(visible=0, in_flight=1, delayed=0)
    backend.ack([current])
    assert backend.queue_depth("q") == (0, 0, 0)
    clock.advance(VT)
    assert backend.receive("q") == []


def test_ack_after_expiry_but_before_redelivery_still_works(
    backend: MemoryBackend, clock: ManualClock
) -> None:
    queue(backend)
    send(backend, "q", "m")
    [message] = backend.receive("q")
    clock.advance(VT + 1)
    backend.ack([message])
    assert backend.receive("q") == []


def test_nack_releases_after_the_delay(backend: MemoryBackend, clock: ManualClock) -> None:
    queue(backend)
    send(backend, "q", "later", "now")
    later, now = backend.receive("q")
    backend.nack([later], delay_seconds=5)
    backend.nack([now])
    [again] = backend.receive("q")
    assert (again.body, again.receive_count) == (b"now", 2)
    clock.advance(5)
    assert bodies(backend.receive("q")) == ["later"]


def test_settling_on_a_deleted_queue_is_a_no_op(backend: MemoryBackend) -> None:
    queue(backend)
    send(backend, "q", "m")
    [message] = backend.receive("q")
    backend.delete_queue("q")
    backend.ack([message])
    backend.nack([message])


def test_foreign_receipt_is_refused_before_anything_changes(backend: MemoryBackend) -> None:
    queue(backend)
    send(backend, "q", "m")
    [message] = backend.receive("q")
    forged = ReceivedMessage("q", b"m", {}, message.message_id, 1, receipt="not-a-receipt")
    with pytest.raises(InvalidMessage, match="receipt"):
        backend.ack([message, forged])
    assert backend.queue_depth("q").in_flight == 1  # the valid one was not acked either


def test_a_receipt_of_another_memory_backend_is_refused(backend: MemoryBackend) -> None:
    other = MemoryBackend()
    for memory in (backend, other):
        queue(memory)
        send(memory, "q", "m")
    [mine] = backend.receive("q")
    [theirs] = other.receive("q")
    for call in (
        lambda: backend.ack([mine, theirs]),
        lambda: backend.nack([mine, theirs]),
        lambda: backend.extend_lease([mine, theirs], 60),
    ):
        with pytest.raises(InvalidMessage, match="another memory backend"):
            call()
    assert backend.queue_depth("q").in_flight == 1  # nothing settled, neither here
    assert other.queue_depth("q").in_flight == 1  # nor on the backend that received it
    other.close()


def test_extend_lease_keeps_the_message_invisible(
    backend: MemoryBackend, clock: ManualClock
) -> None:
    queue(backend)
    send(backend, "q", "m")
    [message] = backend.receive("q")
    clock.advance(VT - 1)
    backend.extend_lease([message], 60)
    clock.advance(59)
    assert backend.receive("q") == []
    clock.advance(1)
    assert backend.receive("q")[0].receive_count == 2


def test_extend_lease_after_redelivery_raises_lease_lost(
    backend: MemoryBackend, clock: ManualClock
) -> None:
    queue(backend)
    send(backend, "q", "m")
    [old] = backend.receive("q")
    clock.advance(VT)
    [current] = backend.receive("q")
    with pytest.raises(LeaseLost) as caught:
        backend.extend_lease([old], 60)
    assert (caught.value.message_id, caught.value.queue_name) == (old.message_id, "q")
    backend.extend_lease([current], 60)  # the current delivery is unaffected


def test_extend_lease_after_ack_raises_lease_lost(backend: MemoryBackend) -> None:
    queue(backend)
    send(backend, "q", "m")
    [message] = backend.receive("q")
    backend.ack([message])
    with pytest.raises(LeaseLost):
        backend.extend_lease([message], 10)


def test_extend_lease_extends_the_others_when_one_is_lost(
    backend: MemoryBackend, clock: ManualClock
) -> None:
    queue(backend)
    send(backend, "q", "acked", "held")
    acked, held = backend.receive("q")
    backend.ack([acked])
    with pytest.raises(LeaseLost) as caught:
        backend.extend_lease([acked, held], 100)
    assert caught.value.message_id == acked.message_id
    clock.advance(VT)
    assert backend.receive("q") == []  # "held" was extended all the same


# ------------------------------------------------------------- long polling
def test_long_poll_is_woken_by_a_publish(backend: MemoryBackend) -> None:
    queue(backend)
    timer = threading.Timer(0.1, lambda: send(backend, "q", "wake"))
    start = time.monotonic()
    timer.start()
    try:
        received = backend.receive("q", wait_seconds=5)
    finally:
        timer.cancel()
    assert bodies(received) == ["wake"]
    assert time.monotonic() - start < 2


def test_long_poll_sees_a_manual_clock_advance(backend: MemoryBackend, clock: ManualClock) -> None:
    queue(backend)
    send(backend, "q", "delayed", delay_seconds=60)
    timer = threading.Timer(0.1, clock.advance, args=(60,))
    timer.start()
    try:
        assert bodies(backend.receive("q", wait_seconds=5)) == ["delayed"]
    finally:
        timer.cancel()


def test_long_poll_gives_up_after_the_wait(backend: MemoryBackend) -> None:
    queue(backend)
    start = time.monotonic()
    assert backend.receive("q", wait_seconds=0.15) == []
    assert 0.15 <= time.monotonic() - start < 1.5


@pytest.mark.parametrize(
    ("action", "error"),
    [
        (lambda b: b.close(), BackendClosed),
        (lambda b: b.delete_queue("q"), QueueNotFound),
    ],
    ids=["close", "delete"],
)
def test_long_poll_ends_when_the_queue_goes_away(
    backend: MemoryBackend,
    action: typing.Callable[[MemoryBackend], None],
    error: type[Exception],
) -> None:
    queue(backend)
    timer = threading.Timer(0.1, action, args=(backend,))
    start = time.monotonic()
    timer.start()
    try:
        with pytest.raises(error):
            backend.receive("q", wait_seconds=5)
    finally:
        timer.cancel()
    assert time.monotonic() - start < 2


# ---------------------------------------------------------------- threads
def test_concurrent_publishers_and_consumers_lose_nothing() -> None:
    backend = MemoryBackend()  # real clock: the default visibility timeout never expires here
    backend.declare_queue(QueueSpec("q"))
    publishers, per_publisher = 4, 250
    total = publishers * per_publisher
    seen: list[bytes] = []
    seen_lock = threading.Lock()
    done = threading.Event()

    def publish(worker: int) -> None:
        for start in range(0, per_publisher, 5):
            batch = [OutgoingMessage(f"{worker}-{n}".encode()) for n in range(start, start + 5)]
            backend.publish("q", batch)

    def consume() -> None:
        while not done.is_set():
            messages = backend.receive("q", max_messages=7, wait_seconds=0.05)
            backend.ack(messages)
            with seen_lock:
                seen.extend(m.body for m in messages)
                if len(seen) >= total:
                    done.set()

    threads = [threading.Thread(target=publish, args=(w,)) for w in range(publishers)]
    threads += [threading.Thread(target=consume) for _ in range(4)]
    for thread in threads:
        thread.start()
    done.wait(timeout=10)
    done.set()
    for thread in threads:
        thread.join(timeout=5)
    expected = {f"{w}-{n}".encode() for w in range(publishers) for n in range(per_publisher)}
    assert len(seen) == total
    assert set(seen) == expected
    assert backend.queue_depth("q") == (0, 0, 0)
    backend.close()


def test_concurrent_fifo_consumers_keep_group_order() -> None:
    backend = MemoryBackend()
    backend.declare_queue(QueueSpec("q.fifo", fifo=True))
    groups, per_group = 5, 40
    for n in range(per_group):
        backend.publish(
            "q.fifo", [OutgoingMessage(f"{n}".encode(), group_id=f"g{g}") for g in range(groups)]
        )
    order: dict[str | None, list[int]] = {}
    lock = threading.Lock()

    def consume() -> None:
        while True:
            messages = backend.receive("q.fifo", max_messages=3)
            if not messages:
                if backend.queue_depth("q.fifo") == (0, 0, 0):
                    return
                time.sleep(0.001)
                continue
            with lock:  # record before acking: the group stays blocked until then
                for message in messages:
                    order.setdefault(message.group_id, []).append(int(message.body))
            backend.ack(messages)

    threads = [threading.Thread(target=consume) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert order == {f"g{g}": list(range(per_group)) for g in range(groups)}
    backend.close()


# -------------------------------------------------------------- lifecycle
def test_close_is_idempotent_and_later_use_fails(clock: ManualClock) -> None:
    backend = MemoryBackend(clock=clock)
    queue(backend)
    send(backend, "q", "m")
    backend.close()
    backend.close()
    assert backend.closed
    for call in (
        lambda: backend.publish("q", [OutgoingMessage(b"x")]),
        lambda: backend.receive("q"),
        lambda: backend.declare_queue(QueueSpec("q")),
        lambda: backend.get_queue("q"),
        lambda: backend.queue_depth("q"),
        lambda: backend.ack([]),
        lambda: backend.nack([]),
        lambda: backend.extend_lease([], 1),
    ):
        with pytest.raises(BackendClosed, match="memory"):
            call()


def test_stored_message_is_a_copy_of_what_was_published(backend: MemoryBackend) -> None:
    queue(backend)
    attributes = {"k": "v"}
    body = bytearray(b"abc")
    backend.publish("q", [OutgoingMessage(body, attributes)])  # type: ignore[arg-type]
    attributes["k"] = "changed"
    body[0] = ord("X")
    [message] = backend.receive("q")
    assert message.body == b"abc"
    assert isinstance(message.body, bytes)
    assert dict(message.attributes) == {"k": "v"}


def test_deep_backlog_comes_out_in_order(backend: MemoryBackend) -> None:
    queue(backend)
    for n in range(2000):
        send(backend, "q", str(n))
    received: list[str] = []
    while messages := backend.receive("q", max_messages=10):
        received += bodies(messages)
        backend.ack(messages)
    assert received == [str(n) for n in range(2000)]
