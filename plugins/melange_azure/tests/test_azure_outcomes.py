"""Publish outcomes through network faults, and producer ids as Service Bus message ids.

The AMQP stand-in is reached through a FaultProxy; what the broker really
holds is read with a backend that goes direct. A message reported *accepted*
must be stored, one reported *refused* must not be (not even after the network
heals), and one whose answer was lost is *unknown*, never refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from melange_azure import AzureServiceBusBackend
from standin import ServiceBusStandIn

from melange.backends.base import OutgoingMessage
from melange.exceptions import BackendUnavailable, OutcomeUnknown
from melange.factory import MessagingBackendFactory
from melange.message import PRODUCER_ID_ATTRIBUTE
from melange.observability import Hooks
from melange.publishers import QueuePublisher
from melange.testing.conformance import ResourceNames, assert_empty, drain
from melange.testing.faults import FaultProxy


@pytest.fixture
def names(backend: AzureServiceBusBackend) -> Iterator[ResourceNames]:
    """Unique names, cleaned up after the test."""
    issued = ResourceNames()
    yield issued
    issued.cleanup(backend)


def _bodies(backend: AzureServiceBusBackend, queue: str, count: int) -> list[bytes]:
    return sorted(message.body for message in drain(backend, queue, count))


# ----------------------------------------------------------------- outcomes


def test_nothing_sent_raises_and_stores_nothing(
    backend: AzureServiceBusBackend,
    names: ResourceNames,
    amqp_proxy: FaultProxy,
    proxied: Callable[..., AzureServiceBusBackend],
) -> None:
    """The link cannot open (connection refused): the call raises, not unknown, not stored."""
    queue = names.queue()
    MessagingBackendFactory(backend).init_queue(queue)
    faulty = proxied()
    amqp_proxy.refuse()
    with pytest.raises(BackendUnavailable) as caught:
        faulty.publish(queue, [OutgoingMessage(b"never")])
    assert not isinstance(caught.value, OutcomeUnknown)
    amqp_proxy.heal()
    assert_empty(backend, queue)


def test_a_lost_answer_is_unknown_and_the_message_was_stored(
    backend: AzureServiceBusBackend,
    names: ResourceNames,
    amqp_proxy: FaultProxy,
    proxied: Callable[..., AzureServiceBusBackend],
) -> None:
    """The transfer reached the broker, its answer was cut: unknown, never refused.

    Before: the SDK's last error ("Failed to initiate the connection", from its
    retry) was raised as BackendUnavailable, as if nothing had been sent.
    """
    queue = names.queue()
    MessagingBackendFactory(backend).init_queue(queue)
    faulty = proxied()
    assert faulty.publish(queue, [OutgoingMessage(b"warm")])[0].ok
    amqp_proxy.cut(after_bytes=0)  # the broker stores; every answer is cut
    (result,) = faulty.publish(queue, [OutgoingMessage(b"cut")])
    assert result.status == "unknown", result
    assert isinstance(result.error, OutcomeUnknown)
    assert "may have been stored" in str(result.error)
    amqp_proxy.heal()
    assert b"cut" in _bodies(backend, queue, 2)
    assert faulty.publish(queue, [OutgoingMessage(b"healed")])[0].ok


def test_the_transfers_after_a_failed_one_are_refused_and_not_sent(
    backend: AzureServiceBusBackend,
    names: ResourceNames,
    amqp_proxy: FaultProxy,
    proxied: Callable[..., AzureServiceBusBackend],
) -> None:
    """Three transfers (150 KB each): the first confirmed, the second's answer cut.

    Before: each failed transfer was reported refused, the stored one included,
    and the call went on sending into the broken connection.
    """
    queue = names.queue()
    MessagingBackendFactory(backend).init_queue(queue)
    faulty = proxied()
    assert faulty.publish(queue, [OutgoingMessage(b"warm")])[0].ok
    bodies = [bytes([65 + index]) * 150_000 for index in range(3)]
    amqp_proxy.cut(after_bytes=0, after_requests=1)
    results = faulty.publish(queue, [OutgoingMessage(body) for body in bodies])
    assert [result.status for result in results] == ["accepted", "unknown", "refused"]
    assert "not sent" in str(results[2].error)
    amqp_proxy.heal()
    stored = [message.body for message in drain(backend, queue, 3)]
    assert bodies[0] in stored and bodies[1] in stored  # accepted, and the unknown one
    assert bodies[2] not in stored
    assert_empty(backend, queue)


def test_a_publisher_raises_the_unknown_outcome_with_the_results(
    backend: AzureServiceBusBackend,
    names: ResourceNames,
    amqp_proxy: FaultProxy,
    proxied: Callable[..., AzureServiceBusBackend],
) -> None:
    queue = names.queue()
    MessagingBackendFactory(backend).init_queue(queue)
    publisher = QueuePublisher(proxied(), hooks=Hooks())
    publisher.publish(queue, {"n": 0})
    amqp_proxy.stall()
    with pytest.raises(OutcomeUnknown) as caught:
        publisher.publish(queue, {"n": 1})
    assert caught.value.results is not None
    assert [result.status for result in caught.value.results] == ["unknown"]


# ------------------------------------------------------------ producer ids


def test_the_message_id_is_the_producer_id(
    backend: AzureServiceBusBackend, names: ResourceNames
) -> None:
    """Before: a random id per send, so a retry made a message Service Bus could not tell apart."""
    queue = names.queue()
    MessagingBackendFactory(backend).init_queue(queue)
    result = QueuePublisher(backend, hooks=Hooks()).publish(queue, {"n": 1})
    (received,) = drain(backend, queue, 1)
    producer_id = received.attributes[PRODUCER_ID_ATTRIBUTE]
    assert received.message_id == producer_id == result.message_id


def test_a_dedup_id_still_wins_over_the_producer_id(
    backend: AzureServiceBusBackend, names: ResourceNames
) -> None:
    queue = names.fifo_queue()
    MessagingBackendFactory(backend).init_queue(queue)
    QueuePublisher(backend, hooks=Hooks()).publish(queue, {"n": 1}, dedup_id="order-1")
    (received,) = drain(backend, queue, 1)
    assert received.message_id == "order-1"
    assert received.attributes[PRODUCER_ID_ATTRIBUTE] != "order-1"


def test_duplicate_detection_drops_a_publisher_retry(
    backend: AzureServiceBusBackend, names: ResourceNames
) -> None:
    """The same producer id twice on a FIFO queue (duplicate detection on): one copy."""
    queue = names.fifo_queue()
    MessagingBackendFactory(backend).init_queue(queue)
    publisher = QueuePublisher(backend, hooks=Hooks())
    publisher.publish(queue, {"n": 1}, producer_id="producer-id-1")
    publisher.publish(queue, {"n": 1}, producer_id="producer-id-1")
    publisher.publish(queue, {"n": 2}, producer_id="producer-id-2")
    received = drain(backend, queue, 2)
    assert [message.attributes[PRODUCER_ID_ATTRIBUTE] for message in received] == [
        "producer-id-1",
        "producer-id-2",
    ]
    assert_empty(backend, queue)


def test_a_retry_after_an_unknown_outcome_is_stored_once(
    backend: AzureServiceBusBackend,
    names: ResourceNames,
    amqp_proxy: FaultProxy,
    proxied: Callable[..., AzureServiceBusBackend],
) -> None:
    """The SDK retries a cut send, the caller retries the unknown one: one copy in all.

    Before: every attempt had its own random message id, and each stored copy was
    another message to Service Bus.
    """
    queue = names.fifo_queue()
    MessagingBackendFactory(backend).init_queue(queue)
    publisher = QueuePublisher(proxied(), hooks=Hooks())
    publisher.publish(queue, {"n": 0})
    amqp_proxy.cut(after_bytes=0)
    with pytest.raises(OutcomeUnknown) as caught:
        publisher.publish(queue, {"n": 1}, producer_id="retried-1")
    assert caught.value.results is not None
    amqp_proxy.heal()
    assert publisher.publish(queue, {"n": 1}, producer_id="retried-1").ok
    received = drain(backend, queue, 2)
    assert sorted(message.attributes[PRODUCER_ID_ATTRIBUTE] for message in received)[-1] == (
        "retried-1"
    )
    assert_empty(backend, queue)


def test_a_producer_id_too_long_for_a_message_id_does_not_refuse_the_message(
    backend: AzureServiceBusBackend, names: ResourceNames, service_bus: ServiceBusStandIn
) -> None:
    queue = names.queue()
    MessagingBackendFactory(backend).init_queue(queue)
    long_id = "p" * 200
    result = QueuePublisher(backend, hooks=Hooks()).publish(queue, {"n": 1}, producer_id=long_id)
    assert result.ok and result.message_id != long_id
    (received,) = drain(backend, queue, 1)
    assert received.attributes[PRODUCER_ID_ATTRIBUTE] == long_id
