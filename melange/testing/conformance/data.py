"""Conformance tests for moving messages: publish, fan-out, receive, settle, dead-letter.

Timing-sensitive tests use a visibility timeout of
:data:`~melange.testing.conformance._support.VISIBILITY_TIMEOUT` and let broker
time pass only through the ``melange_wait`` fixture, waiting just beyond each
timeout, so a run against a real broker stays short.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable

import pytest

from melange import deadletter
from melange.backends.base import MessagingBackend, OutgoingMessage, ReceivedMessage
from melange.exceptions import BackendClosed, InvalidMessage, LeaseLost, MessageTooLarge
from melange.factory import MessagingBackendFactory
from melange.testing.conformance._support import (
    MARGIN,
    POLL_INTERVAL,
    POLL_TIMEOUT,
    VISIBILITY_TIMEOUT,
    ConformanceBase,
    DeliveryGuarantee,
    ResourceNames,
    Wait,
    assert_empty,
    drain,
    drain_bodies,
    in_range,
    messages,
    receive_now,
    release,
    requires,
    without_dead_letter_reason,
)
from melange.topology import QueueSpec, SubscriptionSpec, TopicSpec

CONSUMERS = 4
LOAD = 1000
LOAD_TIMEOUT = 120.0
"""Real seconds the concurrent-consumer test may take before it fails."""

POISON = (b"\xff\xfe not json", b'{"truncated": ')

DELAY = 3.0
"""Seconds of the delay tests: long enough that a backend which opens a link per queue (about
0.5 s each on Service Bus's SDK) can publish to two queues and look into both before it ends."""

LONG_POLL = 5.0
"""Seconds a long-polling receive waits in the waiting tests (or the backend's maximum)."""

PUBLISH_AFTER = 0.5
"""Real seconds after which the waiting test publishes: its receive is waiting by then."""

WAIT_SLACK = 4.0
"""Real seconds a waiting receive may take beyond its ``wait_seconds`` (network, a slow poll)."""


class _ForeignReceipt:
    """A receipt no backend issued: stands for the receipt of another backend's delivery."""

    def __repr__(self) -> str:
        return "<receipt of another backend>"


def _max_receives(backend: MessagingBackend) -> int:
    """The smallest useful ``max_receive_count`` the backend accepts (2, or its minimum)."""
    return int(in_range(2, backend.capabilities.max_receive_count_range))


def _is_json(body: bytes) -> bool:
    try:
        json.loads(body)
    except ValueError:  # UnicodeDecodeError is a ValueError too
        return False
    return True


class DataConformance(ConformanceBase):
    """Publishing, receiving and settling messages."""

    # ------------------------------------------------------------ round trip
    def test_round_trip_of_body_and_attributes(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
    ) -> None:
        """Body, attributes and message id arrive as published."""
        queue = melange_names.queue()
        melange_factory.init_queue(queue)
        attributes = {"event": "payment.created", "trace-id": "abc-123", "note": "café ✓"}
        (result,) = melange_backend.publish(queue, [OutgoingMessage(b'{"amount": 42}', attributes)])
        assert result.ok and result.index == 0 and result.message_id
        (received,) = drain(melange_backend, queue, 1, ack=False)
        assert received.body == b'{"amount": 42}'
        assert dict(received.attributes) == attributes
        assert received.message_id == result.message_id
        assert received.queue_name == queue
        assert received.receive_count == 1
        assert received.group_id is None
        melange_backend.ack([received])

    @pytest.mark.parametrize(
        "body",
        [
            pytest.param(b"", id="empty"),
            pytest.param("Grüße, 世界 ✓ 🎉".encode(), id="unicode"),
            pytest.param(bytes(range(256)) + b"\x00\xff" * 8, id="binary"),
        ],
    )
    def test_body_round_trips_byte_for_byte(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
        body: bytes,
    ) -> None:
        """Empty, unicode and binary bodies arrive byte for byte."""
        queue = melange_names.queue()
        melange_factory.init_queue(queue)
        melange_backend.publish(queue, [OutgoingMessage(body)])
        assert drain_bodies(melange_backend, queue, 1) == [body]

    def test_receive_returns_at_most_max_messages(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
    ) -> None:
        """``receive`` never returns more than ``max_messages``."""
        queue = melange_names.queue()
        melange_factory.init_queue(queue, visibility_timeout=30.0)
        bodies = [f"m-{index}".encode() for index in range(5)]
        melange_backend.publish(queue, messages(*bodies))
        first: list[ReceivedMessage] = []
        deadline = time.monotonic() + 10
        while not first and time.monotonic() < deadline:
            first = melange_backend.receive(queue, max_messages=2)
            if not first:
                time.sleep(POLL_INTERVAL)
        assert 1 <= len(first) <= 2
        melange_backend.ack(first)
        rest = drain_bodies(melange_backend, queue, 5 - len(first))
        assert sorted([message.body for message in first] + rest) == sorted(bodies)

    # --------------------------------------------------------------- fan-out
    @requires("topics")
    def test_topic_fans_out_to_every_subscribed_queue_and_no_other(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
    ) -> None:
        """Every subscribed queue gets one copy; other queues get none."""
        topic, other_topic = melange_names.topic(), melange_names.topic("other")
        subscribed = [melange_names.queue("a"), melange_names.queue("b")]
        elsewhere, unsubscribed = melange_names.queue("elsewhere"), melange_names.queue("none")
        for queue in subscribed:
            melange_factory.init_queue(queue, [topic])
        melange_factory.init_queue(elsewhere, [other_topic])
        melange_factory.init_queue(unsubscribed)

        results = melange_backend.publish_to_topic(
            topic, messages(b"first", b"second", source="fan-out")
        )
        assert [(result.index, result.ok) for result in results] == [(0, True), (1, True)]
        for queue in subscribed:
            received = drain(melange_backend, queue, 2)
            assert sorted(message.body for message in received) == [b"first", b"second"]
            assert all(dict(m.attributes) == {"source": "fan-out"} for m in received)
            assert_empty(melange_backend, queue)
        assert_empty(melange_backend, elsewhere)
        assert_empty(melange_backend, unsubscribed)

    @requires("topics", "filters")
    def test_subscription_filters_select_messages(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
    ) -> None:
        """A filtered subscription lets through only matching attributes."""
        topic = melange_names.topic()
        paid, closed, everything = (
            melange_names.queue("paid"),
            melange_names.queue("closed"),
            melange_names.queue("all"),
        )
        melange_factory.init_queue(paid, [topic], subscription_filter={"event": ["paid"]})
        melange_factory.init_queue(
            closed, [topic], subscription_filter={"event": ["refunded", "cancelled"]}
        )
        melange_factory.init_queue(everything, [topic])
        melange_backend.publish_to_topic(
            topic,
            [
                OutgoingMessage(b"paid", {"event": "paid"}),
                OutgoingMessage(b"refunded", {"event": "refunded"}),
                OutgoingMessage(b"no event", {"other": "paid"}),
            ],
        )
        assert sorted(drain_bodies(melange_backend, everything, 3)) == [
            b"no event",
            b"paid",
            b"refunded",
        ]
        assert drain_bodies(melange_backend, paid, 1) == [b"paid"]
        assert drain_bodies(melange_backend, closed, 1) == [b"refunded"]
        for queue in (paid, closed, everything):
            assert_empty(melange_backend, queue)

    # ------------------------------------------------------------ settlement
    def test_ack_removes_the_message(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
        melange_wait: Wait,
    ) -> None:
        """An acked message never comes back; an unacked one does."""
        queue = melange_names.queue()
        melange_factory.init_queue(queue, visibility_timeout=VISIBILITY_TIMEOUT)
        melange_backend.publish(queue, messages(b"acked", b"kept"))
        received = drain(melange_backend, queue, 2, ack=False)
        acked = [message for message in received if message.body == b"acked"]
        assert len(acked) == 1
        melange_backend.ack(acked)
        melange_wait(VISIBILITY_TIMEOUT + MARGIN)
        # Only the unacked one comes back.
        again = drain(melange_backend, queue, 1)
        assert [(m.body, m.receive_count) for m in again] == [(b"kept", 2)]
        assert_empty(melange_backend, queue)

    def test_unacked_message_is_redelivered_after_the_visibility_timeout(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
        melange_wait: Wait,
    ) -> None:
        """Unacked messages return after the visibility timeout, counting receives."""
        queue = melange_names.queue()
        melange_factory.init_queue(queue, visibility_timeout=VISIBILITY_TIMEOUT)
        melange_backend.publish(queue, [OutgoingMessage(b"again", {"k": "v"})])
        (first,) = drain(melange_backend, queue, 1, ack=False)
        assert first.receive_count == 1
        assert_empty(melange_backend, queue)  # invisible while leased
        for expected_count in (2, 3):
            melange_wait(VISIBILITY_TIMEOUT + MARGIN)
            (again,) = drain(melange_backend, queue, 1, ack=False)
            assert (again.message_id, again.body, dict(again.attributes)) == (
                first.message_id,
                b"again",
                {"k": "v"},
            )
            assert again.receive_count == expected_count
        melange_backend.ack([again])  # the latest delivery's receipt settles it
        assert_empty(melange_backend, queue)

    def test_a_stale_receipt_settles_nothing_and_its_lease_is_lost(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
        melange_wait: Wait,
    ) -> None:
        """Once a message was received again, the earlier delivery's receipt is stale.

        Acking or nacking with it is a no-op: the current holder settles the message.
        Extending its lease raises LeaseLost.
        """
        queue = melange_names.queue()
        caps = melange_backend.capabilities
        melange_factory.init_queue(queue, visibility_timeout=VISIBILITY_TIMEOUT)
        melange_backend.publish(queue, messages(b"redelivered"))
        (stale,) = drain(melange_backend, queue, 1, ack=False)
        melange_wait(VISIBILITY_TIMEOUT + MARGIN)
        (current,) = drain(melange_backend, queue, 1, ack=False)  # another receiver's delivery
        assert (current.message_id, current.receive_count) == (stale.message_id, 2)

        melange_backend.ack([stale])
        if caps.nack_delay:
            melange_backend.nack([stale])
        assert_empty(melange_backend, queue)  # the stale nack did not release it
        if caps.lease_extension:
            with pytest.raises(LeaseLost) as caught:
                melange_backend.extend_lease([stale], VISIBILITY_TIMEOUT)
            assert stale.message_id in str(caught.value)

        # The stale ack removed nothing: the message comes back after its current lease.
        melange_wait(VISIBILITY_TIMEOUT + MARGIN)
        again = drain(melange_backend, queue, 1, ack=False)
        assert [(m.message_id, m.receive_count) for m in again] == [(stale.message_id, 3)], (
            "acking with a stale receipt removed the message its current holder was working on"
        )
        melange_backend.ack(again)
        assert_empty(melange_backend, queue)

    def test_a_receipt_of_another_backend_is_refused(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
        melange_wait: Wait,
    ) -> None:
        """Settling a message whose receipt this backend did not issue raises InvalidMessage.

        The message keeps its own delivery: nothing was settled.
        """
        queue = melange_names.queue()
        caps = melange_backend.capabilities
        melange_factory.init_queue(queue, visibility_timeout=VISIBILITY_TIMEOUT)
        melange_backend.publish(queue, messages(b"mine"))
        (received,) = drain(melange_backend, queue, 1, ack=False)
        foreign = dataclasses.replace(received, receipt=_ForeignReceipt())
        calls: dict[str, Callable[[], object]] = {"ack": lambda: melange_backend.ack([foreign])}
        if caps.nack_delay:
            calls["nack"] = lambda: melange_backend.nack([foreign], delay_seconds=1.0)
        if caps.lease_extension:
            calls["extend_lease"] = lambda: melange_backend.extend_lease([foreign], 5.0)
        for operation, call in calls.items():
            with pytest.raises(InvalidMessage):
                call()
                pytest.fail(f"{operation} accepted a receipt this backend never issued")
        release(melange_backend, [received], melange_wait)
        again = drain(melange_backend, queue, 1)
        assert [(m.message_id, m.body) for m in again] == [(received.message_id, b"mine")], (
            "the message is gone: a receipt of another backend settled it"
        )

    @requires("nack_delay")
    def test_nack_releases_the_message_at_once(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
    ) -> None:
        """A nack without delay makes the message receivable again at once."""
        queue = melange_names.queue()
        melange_factory.init_queue(queue, visibility_timeout=30.0)
        melange_backend.publish(queue, messages(b"nacked"))
        (first,) = drain(melange_backend, queue, 1, ack=False)
        melange_backend.nack([first])
        (again,) = drain(melange_backend, queue, 1)
        assert (again.message_id, again.body, again.receive_count) == (
            first.message_id,
            b"nacked",
            2,
        )

    @requires("nack_delay")
    def test_nack_with_delay(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
        melange_wait: Wait,
    ) -> None:
        """A nacked message stays invisible for the delay, then returns."""
        queue = melange_names.queue()
        # A long visibility timeout: only the nack can bring the message back this soon.
        melange_factory.init_queue(queue, visibility_timeout=30.0)
        melange_backend.publish(queue, messages(b"later"))
        (first,) = drain(melange_backend, queue, 1, ack=False)
        melange_backend.nack([first], delay_seconds=1.0)
        assert_empty(melange_backend, queue)
        melange_wait(0.5)
        assert_empty(melange_backend, queue)
        melange_wait(0.5 + MARGIN)
        (again,) = drain(melange_backend, queue, 1)
        assert (again.message_id, again.receive_count) == (first.message_id, 2)

    @requires("delay")
    def test_delayed_messages_wait_for_their_delay(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
        melange_wait: Wait,
    ) -> None:
        """Per-message and per-queue delays hold messages back."""
        per_message, per_queue = melange_names.queue("message"), melange_names.queue("queue")
        melange_factory.init_queue(per_message)
        melange_factory.init_queue(per_queue, delay_seconds=DELAY)
        melange_backend.publish(per_message, [OutgoingMessage(b"late", delay_seconds=DELAY)])
        melange_backend.publish(per_queue, messages(b"late too"))
        assert_empty(melange_backend, per_message)
        assert_empty(melange_backend, per_queue)
        melange_wait(DELAY + MARGIN)
        assert drain_bodies(melange_backend, per_message, 1) == [b"late"]
        assert drain_bodies(melange_backend, per_queue, 1) == [b"late too"]

    @requires("lease_extension")
    def test_lease_extension_defers_redelivery(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
        melange_wait: Wait,
    ) -> None:
        """An extended lease outlasts the visibility timeout, and only until it ends."""
        queue = melange_names.queue()
        melange_factory.init_queue(queue, visibility_timeout=VISIBILITY_TIMEOUT)
        melange_backend.publish(queue, messages(b"acked", b"abandoned"))
        received = drain(melange_backend, queue, 2, ack=False)
        melange_backend.extend_lease(received, 2.0)
        melange_wait(VISIBILITY_TIMEOUT + MARGIN)  # beyond the original timeout
        assert_empty(melange_backend, queue)
        # An ack after an extension still settles the message ...
        melange_backend.ack([m for m in received if m.body == b"acked"])
        melange_wait(1.0)  # ... and beyond the extension the other one comes back.
        again = drain(melange_backend, queue, 1)
        assert [(m.body, m.receive_count) for m in again] == [(b"abandoned", 2)]
        assert_empty(melange_backend, queue)

    # ----------------------------------------------------------- dead letter
    @requires("dead_letter")
    def test_dead_letter_after_max_receives_keeps_body_and_attributes(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
        melange_wait: Wait,
    ) -> None:
        """After ``max_receive_count`` receives a message moves, intact, to the DLQ."""
        queue, dlq = melange_names.queue(), melange_names.queue("dlq")
        max_receives = _max_receives(melange_backend)
        melange_factory.init_queue(
            queue,
            dead_letter_queue_name=dlq,
            max_receive_count=max_receives,
            visibility_timeout=VISIBILITY_TIMEOUT,
        )
        attributes = {"event": "payment.failed", "trace-id": "t-1"}
        melange_backend.publish(queue, [OutgoingMessage(b"\x00 fails \xff", attributes)])
        for attempt in range(1, max_receives + 1):
            (received,) = drain(melange_backend, queue, 1, ack=False)
            assert received.receive_count == attempt
            release(melange_backend, [received], melange_wait)
        assert_empty(melange_backend, queue)  # the next receive moves it
        (dead,) = drain(melange_backend, dlq, 1)
        assert dead.body == b"\x00 fails \xff"
        assert dict(dead.attributes) == attributes
        assert dead.queue_name == dlq
        assert_empty(melange_backend, queue)

    @requires("dead_letter")
    def test_a_dead_letter_queue_that_is_gone_swallows_nothing(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
        melange_wait: Wait,
    ) -> None:
        """With its dead-letter queue deleted, a message received too often stays in its queue."""
        queue, dlq = melange_names.queue(), melange_names.queue("dlq")
        max_receives = _max_receives(melange_backend)
        melange_factory.init_queue(
            queue,
            dead_letter_queue_name=dlq,
            max_receive_count=max_receives,
            visibility_timeout=VISIBILITY_TIMEOUT,
        )
        melange_backend.delete_queue(dlq)
        melange_backend.publish(queue, [OutgoingMessage(b"kept", {"k": "v"})])
        for _ in range(max_receives):
            (received,) = drain(melange_backend, queue, 1, ack=False)
            release(melange_backend, [received], melange_wait)
        # The receive that would move it to the dead-letter queue finds none: it stays.
        again = drain(melange_backend, queue, 1)
        assert [(m.body, dict(m.attributes)) for m in again] == [(b"kept", {"k": "v"})], (
            "a message due for a dead-letter queue that no longer exists was lost"
        )

    @requires("dead_letter")
    def test_a_dead_letter_queue_is_peeked_redriven_and_purged(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
    ) -> None:
        """melange.deadletter on this backend: peek leaves, redrive moves byte for byte, purge.

        A redrive cut short (``max_messages``) and run again ends with every
        message back in the queue, none lost and none left behind.
        """
        backend = melange_backend
        queue, dlq = melange_names.queue(), melange_names.queue("dlq")
        melange_factory.init_queue(queue, dead_letter_queue_name=dlq)
        dead = [
            OutgoingMessage(b'{"order": 1}', {"event": "paid", "melange.serializer": "json"}),
            OutgoingMessage(b"\x00\xff binary \xe9", {"n": "2"}),
            OutgoingMessage("ünïcode ✓".encode(), {}),
        ]
        assert all(r.ok for r in backend.publish(dlq, dead))
        expected = sorted((m.body, sorted(m.attributes.items())) for m in dead)

        def seen(messages: list[ReceivedMessage]) -> list[tuple[bytes, list[tuple[str, str]]]]:
            return sorted((m.body, sorted(m.attributes.items())) for m in messages)

        wait = 0.5  # per receive; each call ends with one that finds nothing
        for _ in range(2):  # a peek leaves every message where it was
            peeked = deadletter.peek(backend, queue, max_messages=10, wait_seconds=wait)
            assert seen(peeked) == expected
        assert len(deadletter.peek(backend, queue, max_messages=2, wait_seconds=wait)) == 2

        first = deadletter.redrive(backend, queue, max_messages=1, wait_seconds=wait)  # cut short
        assert (first.moved, first.failed) == (1, [])
        rest = deadletter.redrive(backend, queue, wait_seconds=wait)
        assert (rest.moved, rest.failed, rest.source, rest.target) == (2, [], dlq, queue)
        assert seen(drain(backend, queue, len(dead))) == expected  # byte for byte, once each
        assert_empty(backend, dlq)
        assert_empty(backend, queue)

        assert all(r.ok for r in backend.publish(dlq, dead))
        assert deadletter.purge(backend, queue, wait_seconds=wait) == len(dead)
        assert_empty(backend, dlq)

    def test_forward_copies_a_received_message_exactly(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
    ) -> None:
        """``forward`` sends body and attributes as received; extras only where they fit.

        Messages that fill the backend's attribute count or size limit keep every
        original attribute and their whole body; the extra attributes are what
        gives way. The original stays in its queue until acknowledged.
        """
        source, target = melange_names.queue("source"), melange_names.queue("target")
        melange_factory.init_queue(source)
        melange_factory.init_queue(target)
        caps = melange_backend.capabilities
        roomy = OutgoingMessage(b"\x00\xff binary \xe9", {"event": "failed", "n": "1"})
        full_count = caps.max_attributes or 10
        crowded = OutgoingMessage(b"crowded", {f"a{i}": str(i) for i in range(full_count)})
        filler = caps.max_message_size - OutgoingMessage(b"", {"n": "3"}).size
        largest = OutgoingMessage(b"x" * filler, {"n": "3"})
        originals = [roomy, crowded, largest]
        assert all(r.ok for r in melange_backend.publish(source, originals))
        received = drain(melange_backend, source, len(originals), ack=False)
        extras = {"melange.dead-letter-reason": "test", "melange.dead-letter-source": source}
        for message in received:
            result = melange_backend.forward(message, target, extra_attributes=extras)
            assert result.status == "accepted", result.error
        copies = {m.body: m for m in drain(melange_backend, target, len(originals))}
        for original in originals:
            copy = copies[original.body]  # the whole body, byte for byte
            assert without_dead_letter_reason(copy.attributes) == dict(original.attributes)
            added = set(copy.attributes) - set(original.attributes)
            assert added <= set(extras)
            assert all(copy.attributes[name] == extras[name] for name in added)
        # Where the extras go beyond the broker's own limits is the broker's business
        # (melange's declared limits may keep a margin); the original always wins.
        assert set(copies[roomy.body].attributes) >= set(extras), "room, but no reason added"
        if caps.nack_delay:  # forward copies: the originals wait for their ack
            melange_backend.nack(received)
            assert len(drain(melange_backend, source, len(originals))) == len(originals)

    def test_forward_never_replaces_an_original_attribute(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
    ) -> None:
        """An extra attribute named like one of the original's does not replace it."""
        source, target = melange_names.queue("source"), melange_names.queue("target")
        melange_factory.init_queue(source)
        melange_factory.init_queue(target)
        original = {"event": "failed", "reason": "the original's own"}
        melange_backend.publish(source, [OutgoingMessage(b"original", original)])
        (received,) = drain(melange_backend, source, 1, ack=False)
        extras = {"reason": "an extra", "melange.dead-letter-source": source}
        result = melange_backend.forward(received, target, extra_attributes=extras)
        assert result.status == "accepted", result.error
        (copy,) = drain(melange_backend, target, 1)
        assert copy.attributes["reason"] == "the original's own"
        assert without_dead_letter_reason(copy.attributes) == original
        melange_backend.ack([received])

    @requires("fifo")
    def test_forward_keeps_the_message_group(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
    ) -> None:
        """A copy forwarded from a FIFO queue to another keeps its group id."""
        source, target = melange_names.fifo_queue("source"), melange_names.fifo_queue("target")
        melange_factory.init_queue(source)
        melange_factory.init_queue(target)
        melange_backend.publish(source, [OutgoingMessage(b"grouped", {"k": "v"}, group_id="g-7")])
        (received,) = drain(melange_backend, source, 1, ack=False)
        assert received.group_id == "g-7"
        result = melange_backend.forward(received, target)
        assert result.status == "accepted", result.error
        copies = drain(melange_backend, target, 1)
        assert [(m.body, m.group_id, dict(m.attributes)) for m in copies] == [
            (b"grouped", "g-7", {"k": "v"})
        ]
        melange_backend.ack([received])

    @requires("dead_letter")
    def test_poison_messages_reach_the_dead_letter_queue_while_the_consumer_goes_on(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
        melange_wait: Wait,
    ) -> None:
        """Undecodable messages end in the DLQ; every good message is processed."""
        queue, dlq = melange_names.queue(), melange_names.queue("dlq")
        max_receives = _max_receives(melange_backend)
        melange_factory.init_queue(
            queue,
            dead_letter_queue_name=dlq,
            max_receive_count=max_receives,
            visibility_timeout=VISIBILITY_TIMEOUT,
        )
        good = [json.dumps({"n": index}).encode() for index in range(20)]
        outgoing = [OutgoingMessage(body) for body in good]
        outgoing.insert(5, OutgoingMessage(POISON[0], {"kind": "poison"}))
        outgoing.insert(15, OutgoingMessage(POISON[1], {"kind": "poison"}))
        melange_backend.publish(queue, outgoing)

        processed: list[bytes] = []
        poison_receives: Counter[bytes] = Counter()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            batch = receive_now(melange_backend, queue)
            if not batch:
                if len(set(processed)) == len(good) and all(
                    poison_receives[body] >= max_receives for body in POISON
                ):
                    break
                if melange_backend.capabilities.nack_delay:
                    time.sleep(POLL_INTERVAL)  # nacked poison is back at once
                else:
                    melange_wait(VISIBILITY_TIMEOUT + MARGIN)
                continue
            decodable = [message for message in batch if _is_json(message.body)]
            undecodable = [message for message in batch if not _is_json(message.body)]
            melange_backend.ack(decodable)
            processed.extend(message.body for message in decodable)
            poison_receives.update(message.body for message in undecodable)
            if undecodable and melange_backend.capabilities.nack_delay:
                melange_backend.nack(undecodable)
        else:
            pytest.fail(
                f"consumer did not finish: processed {len(set(processed))}/{len(good)} good "
                f"messages, poison received {dict(poison_receives)}"
            )

        assert sorted(set(processed)) == sorted(good)
        assert dict(poison_receives) == {body: max_receives for body in POISON}
        if not melange_backend.capabilities.nack_delay:
            melange_wait(VISIBILITY_TIMEOUT + MARGIN)
        assert_empty(melange_backend, queue)  # moves the poison on
        dead = drain(melange_backend, dlq, 2)
        assert sorted(message.body for message in dead) == sorted(POISON)
        assert all(dict(message.attributes) == {"kind": "poison"} for message in dead)

    # ------------------------------------------------------------------ FIFO
    @requires("fifo")
    def test_fifo_keeps_order_within_each_group(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
    ) -> None:
        """A FIFO queue delivers each group's messages in publish order."""
        queue = melange_names.fifo_queue()
        melange_factory.init_queue(queue, visibility_timeout=30.0)
        groups = ("g-a", "g-b", "g-c")
        per_group = 6
        outgoing = [
            OutgoingMessage(f"{group}:{index}".encode(), group_id=group)
            for index in range(per_group)
            for group in groups
        ]
        results = melange_backend.publish(queue, outgoing)
        assert all(result.ok for result in results)

        seen: dict[str, list[bytes]] = defaultdict(list)
        for message in drain(melange_backend, queue, len(outgoing)):
            assert message.group_id is not None
            seen[message.group_id].append(message.body)
        assert dict(seen) == {
            group: [f"{group}:{index}".encode() for index in range(per_group)] for group in groups
        }
        assert_empty(melange_backend, queue)

    @requires("fifo", "dedup")
    def test_fifo_deduplicates_by_dedup_id(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
    ) -> None:
        """A repeated dedup id is accepted but delivered once."""
        queue = melange_names.fifo_queue()
        melange_factory.init_queue(queue)
        for body, dedup_id in ((b"first", "d-1"), (b"first again", "d-1"), (b"second", "d-2")):
            (result,) = melange_backend.publish(
                queue, [OutgoingMessage(body, group_id="g", dedup_id=dedup_id)]
            )
            assert result.ok, "a duplicate is accepted (and dropped), not refused"
        assert drain_bodies(melange_backend, queue, 2) == [b"first", b"second"]
        assert_empty(melange_backend, queue)

    @requires("fifo")
    def test_fifo_holds_a_group_while_one_of_its_messages_is_in_flight(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
        melange_wait: Wait,
    ) -> None:
        """No message of a group is delivered while an earlier one of it may come back."""
        queue = melange_names.fifo_queue()
        melange_factory.init_queue(queue, visibility_timeout=VISIBILITY_TIMEOUT)
        outgoing = [OutgoingMessage(f"g:{index}".encode(), group_id="g") for index in range(3)]
        assert all(result.ok for result in melange_backend.publish(queue, outgoing))
        first = drain(melange_backend, queue, 1, ack=False)
        assert [message.body for message in first] == [b"g:0"]
        assert_empty(melange_backend, queue)  # g:1 waits until g:0 is settled
        release(melange_backend, first, melange_wait)
        again = drain(melange_backend, queue, 1, ack=False)
        assert [(m.body, m.receive_count) for m in again] == [(b"g:0", 2)], (
            "a later message of the group overtook one that was released"
        )
        melange_backend.ack(again)
        assert drain_bodies(melange_backend, queue, 2) == [b"g:1", b"g:2"]

    @requires("fifo", "dedup")
    def test_a_dedup_id_repeats_only_within_its_own_queue(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
    ) -> None:
        """One dedup id on two queues is a first message on each."""
        queues = [melange_names.fifo_queue("a"), melange_names.fifo_queue("b")]
        for queue in queues:
            melange_factory.init_queue(queue)
        for queue in queues:
            (result,) = melange_backend.publish(
                queue, [OutgoingMessage(queue.encode(), group_id="g", dedup_id="d-same")]
            )
            assert result.ok
        for queue in queues:
            assert drain_bodies(melange_backend, queue, 1) == [queue.encode()], (
                f"{queue!r} dropped a message whose dedup id was used on another queue"
            )

    def test_alike_messages_without_a_dedup_id_are_each_delivered(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
    ) -> None:
        """Only a repeated dedup id makes a duplicate: identical messages without one all arrive."""
        queues: list[tuple[str, str | None]] = [(melange_names.queue(), None)]
        if melange_backend.capabilities.fifo:
            queues.append((melange_names.fifo_queue(), "g"))
        for queue, group in queues:
            melange_factory.init_queue(queue)
            twin = OutgoingMessage(b"twin", {"k": "v"}, group_id=group)
            results = melange_backend.publish(queue, [twin, twin])
            results += melange_backend.publish(queue, [twin])
            assert [result.ok for result in results] == [True] * 3
            received = drain(melange_backend, queue, 3)
            assert [m.body for m in received] == [b"twin"] * 3, (
                f"{queue!r} delivered {len(received)} of 3 identical messages without a dedup id"
            )
            assert len({message.message_id for message in received}) == 3

    # ---------------------------------------------------------------- limits
    def test_batch_publish_beyond_the_batch_limit(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
    ) -> None:
        """A batch larger than the broker's limit gets one result per message, in order."""
        queue = melange_names.queue()
        melange_factory.init_queue(queue, visibility_timeout=60.0)
        count = max(25, math.ceil(2.5 * melange_backend.capabilities.max_batch_size))
        bodies = [f"batch-{index}".encode() for index in range(count)]
        results = melange_backend.publish(queue, messages(*bodies))
        assert [result.index for result in results] == list(range(count))
        assert all(result.ok for result in results), [r.error for r in results if not r.ok][:3]
        assert len({result.message_id for result in results}) == count
        received = drain(melange_backend, queue, count)
        assert sorted(message.body for message in received) == sorted(bodies)
        # Results are in input order: the id of result i is the id of body i.
        id_of_body = {message.body: message.message_id for message in received}
        assert [id_of_body[body] for body in bodies] == [r.message_id for r in results]

    def test_maximum_size_message_is_accepted_and_one_byte_more_is_refused(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
    ) -> None:
        """A message at the size limit round-trips; one byte more is refused unsent."""
        queue = melange_names.queue()
        melange_factory.init_queue(queue)
        limit = melange_backend.capabilities.max_message_size
        attributes = {"kind": "largest"}
        attribute_bytes = sum(len(k.encode()) + len(v.encode()) for k, v in attributes.items())
        pattern = bytes(range(32, 127))
        body = (pattern * (limit // len(pattern) + 1))[: limit - attribute_bytes]
        largest = OutgoingMessage(body, attributes)
        assert largest.size == limit

        (result,) = melange_backend.publish(queue, [largest])
        assert result.ok
        (received,) = drain(melange_backend, queue, 1)
        assert received.body == body and dict(received.attributes) == attributes

        too_large = OutgoingMessage(body + b"x", attributes)
        with pytest.raises(MessageTooLarge) as caught:
            melange_backend.publish(queue, [too_large])
        assert (caught.value.size, caught.value.limit) == (limit + 1, limit)
        assert str(limit) in str(caught.value)
        # The whole batch is checked first: the small message before it is not sent either.
        with pytest.raises(MessageTooLarge):
            melange_backend.publish(queue, [OutgoingMessage(b"small"), too_large])
        assert_empty(melange_backend, queue)

    # --------------------------------------------------------------- waiting
    def _receive_in_thread(
        self, backend: MessagingBackend, queue: str, wait_seconds: float
    ) -> tuple[threading.Thread, dict[str, object]]:
        """Start ``receive(queue, 1, wait_seconds)`` in a thread; its outcome fills the dict."""
        outcome: dict[str, object] = {}

        def receive() -> None:
            started = time.monotonic()
            try:
                outcome["received"] = backend.receive(
                    queue, max_messages=1, wait_seconds=wait_seconds
                )
            except BaseException as error:  # reported by the test
                outcome["error"] = error
            outcome["seconds"] = time.monotonic() - started

        thread = threading.Thread(target=receive, daemon=True)
        thread.start()
        return thread, outcome

    def test_a_waiting_receive_returns_a_message_published_meanwhile(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
    ) -> None:
        """A receive waiting on an empty queue returns a message published during its wait.

        It returns when the message arrives, not when the wait is over.
        """
        queue = melange_names.queue()
        melange_factory.init_queue(queue, visibility_timeout=30.0)
        wait = min(LONG_POLL, melange_backend.capabilities.max_wait_seconds)
        thread, outcome = self._receive_in_thread(melange_backend, queue, wait)
        time.sleep(PUBLISH_AFTER)
        melange_backend.publish(queue, messages(b"while waiting"))
        thread.join(wait + POLL_TIMEOUT)
        assert not thread.is_alive(), f"receive(wait_seconds={wait}) did not return"
        assert "error" not in outcome, outcome
        received = outcome["received"]
        assert isinstance(received, list)
        assert [message.body for message in received] == [b"while waiting"], (
            f"receive(wait_seconds={wait}) returned {received!r} although a message was "
            f"published {PUBLISH_AFTER} s into its wait"
        )
        melange_backend.ack(received)
        seconds = outcome["seconds"]
        assert isinstance(seconds, float)
        if wait >= 3.0:
            assert seconds < wait - 1.0, (
                f"receive(wait_seconds={wait}) returned after {seconds:.1f} s: it waited out "
                "the wait instead of returning once the message arrived"
            )

    def test_a_receive_on_an_empty_queue_returns_within_its_wait(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
    ) -> None:
        """On an empty queue, a receive with ``wait_seconds=1`` returns (empty) about then."""
        queue = melange_names.queue()
        melange_factory.init_queue(queue)
        thread, outcome = self._receive_in_thread(melange_backend, queue, 1.0)
        thread.join(1.0 + WAIT_SLACK)
        assert not thread.is_alive(), (
            "receive(wait_seconds=1) on an empty queue was still waiting after "
            f"{1 + WAIT_SLACK:g} s"
        )
        assert "error" not in outcome, outcome
        assert outcome["received"] == []

    # ----------------------------------------------------------- concurrency
    def test_concurrent_consumers_process_every_message(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
        melange_delivery: DeliveryGuarantee,
    ) -> None:
        """Concurrent consumers process every message; none is lost."""
        queue = melange_names.queue()
        visibility = in_range(60.0, (0.0, melange_backend.capabilities.max_visibility_timeout))
        melange_factory.init_queue(queue, visibility_timeout=visibility)
        bodies = [f"load-{index}".encode() for index in range(LOAD)]
        results = melange_backend.publish(queue, messages(*bodies))
        assert all(result.ok for result in results)

        processed: Counter[bytes] = Counter()
        errors: list[BaseException] = []
        lock = threading.Lock()
        done = threading.Event()
        deadline = time.monotonic() + LOAD_TIMEOUT

        def consume() -> None:
            try:
                while not done.is_set() and time.monotonic() < deadline:
                    batch = receive_now(melange_backend, queue)
                    if not batch:
                        time.sleep(POLL_INTERVAL)
                        continue
                    with lock:
                        processed.update(message.body for message in batch)
                        if len(processed) == LOAD:
                            done.set()
                    melange_backend.ack(batch)
            except BaseException as error:  # reported by the test
                errors.append(error)
                done.set()

        consumers = [threading.Thread(target=consume) for _ in range(CONSUMERS)]
        for consumer in consumers:
            consumer.start()
        for consumer in consumers:
            consumer.join(timeout=LOAD_TIMEOUT + 10)
        assert not any(consumer.is_alive() for consumer in consumers), "a consumer hung"
        assert errors == []
        missing = set(bodies) - set(processed)
        assert not missing, f"{len(missing)} message(s) lost, e.g. {sorted(missing)[:3]}"
        assert set(processed) == set(bodies)
        if melange_delivery == "exactly-once":
            duplicates = {body: n for body, n in processed.items() if n > 1}
            assert not duplicates, f"processed more than once: {list(duplicates.items())[:3]}"
        assert_empty(melange_backend, queue)

    # ----------------------------------------------------------------- close
    def test_close_is_idempotent_and_use_after_close_is_a_clear_error(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
    ) -> None:
        """``close`` twice is fine; any use afterwards raises BackendClosed."""
        queue = melange_names.queue()
        melange_factory.init_queue(queue)
        melange_backend.publish(queue, messages(b"in hand"))
        (in_hand,) = drain(melange_backend, queue, 1, ack=False)
        melange_backend.delete_queue(queue)  # leave nothing behind on a shared broker

        melange_backend.close()
        melange_backend.close()
        assert melange_backend.closed
        calls: dict[str, Callable[[], object]] = {
            "get_queue": lambda: melange_backend.get_queue(queue),
            "declare_queue": lambda: melange_backend.declare_queue(QueueSpec(queue)),
            "delete_queue": lambda: melange_backend.delete_queue(queue),
            "publish": lambda: melange_backend.publish(queue, messages(b"x")),
            "receive": lambda: melange_backend.receive(queue),
            "ack": lambda: melange_backend.ack([in_hand]),
            "ack of nothing": lambda: melange_backend.ack([]),
            "forward": lambda: melange_backend.forward(in_hand, queue),
            "init_queue": lambda: melange_factory.init_queue(queue),
        }
        caps = melange_backend.capabilities
        if caps.nack_delay:
            calls["nack"] = lambda: melange_backend.nack([in_hand])
            calls["nack of nothing"] = lambda: melange_backend.nack([])
        if caps.lease_extension:
            calls["extend_lease"] = lambda: melange_backend.extend_lease([in_hand], 1.0)
            calls["extend_lease of nothing"] = lambda: melange_backend.extend_lease([], 1.0)
        if caps.topics:
            topic = melange_names.topic()
            calls.update(
                {
                    "get_topic": lambda: melange_backend.get_topic(topic),
                    "declare_topic": lambda: melange_backend.declare_topic(TopicSpec(topic)),
                    "delete_topic": lambda: melange_backend.delete_topic(topic),
                    "publish_to_topic": lambda: melange_backend.publish_to_topic(
                        topic, messages(b"x")
                    ),
                    "get_subscription": lambda: melange_backend.get_subscription(topic, queue),
                    "subscribe": lambda: melange_backend.subscribe(SubscriptionSpec(topic, queue)),
                }
            )
        for operation, call in calls.items():
            with pytest.raises(BackendClosed) as caught:
                call()
            message = str(caught.value)
            assert melange_backend.name in message and "closed" in message, (operation, message)
