"""Data-plane behaviour specific to Service Bus, on the AMQP stand-in through the real SDK."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from melange_azure import AzureServiceBusBackend
from standin import ServiceBusStandIn

from melange.backends.base import OutgoingMessage
from melange.exceptions import InvalidMessage, LeaseLost
from melange.factory import MessagingBackendFactory
from melange.testing.conformance import ResourceNames, assert_empty, drain


@pytest.fixture
def names(backend: AzureServiceBusBackend) -> Iterator[ResourceNames]:
    """Unique names, cleaned up after the test."""
    issued = ResourceNames()
    yield issued
    issued.cleanup(backend)


def test_a_batch_over_the_size_limit_is_split_and_keeps_its_order(
    backend: AzureServiceBusBackend, names: ResourceNames
) -> None:
    queue = names.queue()
    MessagingBackendFactory(backend).init_queue(queue, visibility_timeout=60.0)
    bodies = [bytes([65 + index]) * 100_000 for index in range(6)]  # ~600 KB: three batches
    results = backend.publish(queue, [OutgoingMessage(body) for body in bodies])
    assert [r.index for r in results] == list(range(6)) and all(r.ok for r in results)
    received = drain(backend, queue, 6)
    by_id = {message.message_id: message.body for message in received}
    assert [by_id[str(result.message_id)] for result in results] == bodies


def test_dedup_ids_are_message_ids_on_fifo_queues_only(
    backend: AzureServiceBusBackend, names: ResourceNames
) -> None:
    fifo, standard = names.fifo_queue(), names.queue()
    factory = MessagingBackendFactory(backend)
    factory.init_queue(fifo)
    factory.init_queue(standard)
    (result,) = backend.publish(fifo, [OutgoingMessage(b"x", group_id="g", dedup_id="order-7")])
    assert result.message_id == "order-7"
    (received,) = drain(backend, fifo, 1)
    assert (received.message_id, received.group_id) == ("order-7", "g")
    with pytest.raises(InvalidMessage, match="dedup_id"):
        backend.publish(standard, [OutgoingMessage(b"x", dedup_id="order-7")])
    with pytest.raises(InvalidMessage, match="128"):
        backend.publish(fifo, [OutgoingMessage(b"x", group_id="g" * 129)])


def test_messages_without_a_group_form_one_group_on_a_fifo_queue(
    backend: AzureServiceBusBackend, names: ResourceNames
) -> None:
    queue = names.fifo_queue()
    MessagingBackendFactory(backend).init_queue(queue)
    backend.publish(queue, [OutgoingMessage(f"m{i}".encode()) for i in range(5)])
    received = drain(backend, queue, 5)
    assert [m.body for m in received] == [f"m{i}".encode() for i in range(5)]
    assert {m.group_id for m in received} == {None}


def test_two_consumers_of_a_fifo_queue_hold_different_groups(
    backend: AzureServiceBusBackend, names: ResourceNames, service_bus: ServiceBusStandIn
) -> None:
    queue = names.fifo_queue()
    MessagingBackendFactory(backend).init_queue(queue, visibility_timeout=30.0)
    backend.publish(
        queue, [OutgoingMessage(f"{g}{i}".encode(), group_id=g) for i in range(2) for g in "ab"]
    )
    other = AzureServiceBusBackend(
        connection_string=service_bus.connection_string, management_url=service_bus.management_url
    )
    try:
        first = backend.receive(queue, 10, wait_seconds=2.0)
        second = other.receive(queue, 10, wait_seconds=2.0)
        groups = ({m.group_id for m in first}, {m.group_id for m in second})
        assert len(groups[0]) == 1 and len(groups[1]) == 1 and groups[0] != groups[1], groups
        assert [m.body[1:] for m in first] == [b"0", b"1"]  # in order within the group
        backend.ack(first)
        other.ack(second)
    finally:
        other.close()


def test_reserved_dead_letter_attributes_are_refused(
    backend: AzureServiceBusBackend, names: ResourceNames
) -> None:
    queue = names.queue()
    MessagingBackendFactory(backend).init_queue(queue)
    with pytest.raises(InvalidMessage, match="DeadLetterReason"):
        backend.publish(queue, [OutgoingMessage(b"x", {"DeadLetterReason": "mine"})])


def test_a_nack_delay_longer_than_the_lock_renews_it(
    backend: AzureServiceBusBackend, names: ResourceNames
) -> None:
    queue = names.queue()
    MessagingBackendFactory(backend).init_queue(queue, visibility_timeout=5.0)
    backend.publish(queue, [OutgoingMessage(b"later")])
    (first,) = drain(backend, queue, 1, ack=False)
    started = time.monotonic()
    backend.nack([first], delay_seconds=6.5)
    time.sleep(5.6 - (time.monotonic() - started))  # beyond the 5 s lock
    assert_empty(backend, queue)
    (again,) = drain(backend, queue, 1)
    assert 6.0 < time.monotonic() - started < 9.0
    assert (again.message_id, again.receive_count) == (first.message_id, 2)


def test_extending_a_settled_or_released_lease_is_lease_lost(
    backend: AzureServiceBusBackend, names: ResourceNames
) -> None:
    queue = names.queue()
    MessagingBackendFactory(backend).init_queue(queue, visibility_timeout=30.0)
    backend.publish(queue, [OutgoingMessage(b"a"), OutgoingMessage(b"b")])
    first, second = drain(backend, queue, 2, ack=False)
    backend.ack([first])
    with pytest.raises(LeaseLost):
        backend.extend_lease([first], 10.0)
    backend.nack([second])
    with pytest.raises(LeaseLost):
        backend.extend_lease([second], 10.0)
    backend.ack([second])  # a stale receipt settles nothing, and does not fail
    (again,) = drain(backend, queue, 1)
    assert again.body == second.body and again.receive_count == 2


def test_delays_hold_messages_back(backend: AzureServiceBusBackend, names: ResourceNames) -> None:
    delay = 3.0  # seconds every message is held back
    per_message, per_queue = names.queue("message"), names.queue("queue")
    factory = MessagingBackendFactory(backend)
    factory.init_queue(per_message)
    factory.init_queue(per_queue, delay_seconds=delay)
    assert_empty(backend, per_message)  # links open before the clock starts
    assert_empty(backend, per_queue)
    started = time.monotonic()
    backend.publish(per_message, [OutgoingMessage(b"late", delay_seconds=delay)])
    backend.publish(per_queue, [OutgoingMessage(b"late too")])
    assert_empty(backend, per_message)
    assert_empty(backend, per_queue)
    # The empty reads count only if they came well before the delay was over: 1 s of slack
    # for two publishes and two reads on a loaded machine.
    assert time.monotonic() - started < delay - 1.0, "too slow to tell a delay from none"
    assert [m.body for m in drain(backend, per_message, 1)] == [b"late"]
    assert [m.body for m in drain(backend, per_queue, 1)] == [b"late too"]
    assert time.monotonic() - started >= delay - 0.1
