"""Receiving on Pub/Sub: several subscriptions per queue, short deadlines, counts, receipts."""

from __future__ import annotations

import time

import pytest
from melange_gcp import GCPPubSubBackend, GCPReceipt

from melange import MessagingBackendFactory
from melange.backends.base import OutgoingMessage, ReceivedMessage
from melange.exceptions import InvalidMessage, QueueNotFound


def _drain(backend: GCPPubSubBackend, queue: str, expected: int) -> list[ReceivedMessage]:
    received: list[ReceivedMessage] = []
    deadline = time.monotonic() + 10
    while len(received) < expected and time.monotonic() < deadline:
        received += backend.receive(queue, max_messages=expected - len(received))
    return received


def test_a_queue_receives_from_its_own_and_its_fan_out_subscriptions(
    backend: GCPPubSubBackend, unique: str
) -> None:
    queue, first, second = f"{unique}-q", f"{unique}-t1", f"{unique}-t2"
    MessagingBackendFactory(backend).init_queue(queue, [first, second])
    backend.publish(queue, [OutgoingMessage(b"direct")])
    backend.publish_to_topic(first, [OutgoingMessage(b"from t1")])
    backend.publish_to_topic(second, [OutgoingMessage(b"from t2")])
    received = _drain(backend, queue, 3)
    assert sorted(m.body for m in received) == [b"direct", b"from t1", b"from t2"]
    subscriptions = {m.receipt.subscription.rsplit("/", 1)[-1] for m in received}
    assert subscriptions == {queue, f"{queue}~{first}", f"{queue}~{second}"}
    backend.ack(received)
    assert backend.receive(queue) == []


def test_a_fifo_topic_keeps_group_order_in_a_fifo_queue(
    backend: GCPPubSubBackend, unique: str
) -> None:
    queue, topic = f"{unique}-q.fifo", f"{unique}-t.fifo"
    MessagingBackendFactory(backend).init_queue(queue, [topic])
    outgoing = [
        OutgoingMessage(f"{group}:{index}".encode(), group_id=group)
        for index in range(5)
        for group in ("a", "b")
    ]
    assert all(result.ok for result in backend.publish_to_topic(topic, outgoing))
    received = _drain(backend, queue, len(outgoing))
    backend.ack(received)
    for group in ("a", "b"):
        assert [m.body for m in received if m.group_id == group] == [
            f"{group}:{index}".encode() for index in range(5)
        ]


def test_waiting_receive_returns_when_a_message_arrives_or_the_wait_ends(
    backend: GCPPubSubBackend, unique: str
) -> None:
    queue = f"{unique}-q"
    MessagingBackendFactory(backend).init_queue(queue)
    started = time.monotonic()
    assert backend.receive(queue, wait_seconds=1.0) == []
    assert 0.8 <= time.monotonic() - started < 5
    backend.publish(queue, [OutgoingMessage(b"waited for")])
    (received,) = backend.receive(queue, wait_seconds=5.0)
    assert received.body == b"waited for"
    backend.ack([received])


def test_a_visibility_timeout_below_ten_seconds_is_applied_after_each_pull(
    backend: GCPPubSubBackend, unique: str
) -> None:
    queue = f"{unique}-q"
    MessagingBackendFactory(backend).init_queue(queue, visibility_timeout=1.0)
    backend.publish(queue, [OutgoingMessage(b"short lease")])
    (first,) = _drain(backend, queue, 1)
    assert backend.receive(queue) == []
    time.sleep(1.5)  # far less than Pub/Sub's 10 s minimum ack deadline
    (again,) = _drain(backend, queue, 1)
    assert (again.message_id, again.receive_count) == (first.message_id, 2)
    backend.ack([again])


def test_with_a_dead_letter_policy_the_count_is_pubsubs_delivery_attempt(
    emulator_host: str, gcp_project: str, unique: str
) -> None:
    queue, dlq = f"{unique}-q", f"{unique}-dlq"
    with GCPPubSubBackend(project=gcp_project, emulator_host=emulator_host) as first:
        MessagingBackendFactory(first).init_queue(queue, dead_letter_queue_name=dlq)
        first.publish(queue, [OutgoingMessage(b"counted by Pub/Sub")])
        (delivery,) = _drain(first, queue, 1)
        first.nack([delivery])
    # Another backend object (as another process would) sees Pub/Sub's count.
    with GCPPubSubBackend(project=gcp_project, emulator_host=emulator_host) as second:
        (again,) = _drain(second, queue, 1)
        assert again.receive_count == 2
        second.ack([again])


def test_settling_a_message_from_elsewhere_is_invalid(
    backend: GCPPubSubBackend,
) -> None:
    foreign = ReceivedMessage("q", b"x", {}, "1", 1, None, receipt="an SQS receipt")
    with pytest.raises(InvalidMessage, match="gcp backend"):
        backend.ack([foreign])


def test_receiving_from_a_missing_queue(backend: GCPPubSubBackend, unique: str) -> None:
    with pytest.raises(QueueNotFound):
        backend.receive(f"{unique}-missing")
    with pytest.raises(QueueNotFound):
        backend.publish(f"{unique}-missing", [OutgoingMessage(b"x")])


def test_receipts_hide_nothing_secret_and_compare_by_value() -> None:
    receipt = GCPReceipt("projects/p/subscriptions/q", "ack-1")
    assert receipt == GCPReceipt("projects/p/subscriptions/q", "ack-1")
