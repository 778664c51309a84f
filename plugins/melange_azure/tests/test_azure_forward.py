"""Forwarding a received message (dead-lettering) is byte-exact on Service Bus.

Foreign messages are sent with the raw SDK twice: to the queue melange reads
(and forwards from) and to a reference queue. The forwarded copy, read back
with the raw SDK, must be what the reference holds: the same body sections,
every application property with its type, the producer's message properties;
plus the extra attributes where they fit, never in place of the original's.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from azure.servicebus import (
    NEXT_AVAILABLE_SESSION,
    ServiceBusClient,
    ServiceBusMessage,
    ServiceBusReceivedMessage,
)
from azure.servicebus.amqp import AmqpAnnotatedMessage
from azure.servicebus.exceptions import MessageSizeExceededError
from melange_azure import AzureServiceBusBackend
from melange_azure.wire import DEFAULT_GROUP_ID

from melange.backends.base import OutgoingMessage
from melange.exceptions import QueueNotFound
from melange.factory import MessagingBackendFactory
from melange.message import DEAD_LETTER_REASON_ATTRIBUTE, DEAD_LETTER_SOURCE_ATTRIBUTE
from melange.testing.conformance import ResourceNames, assert_empty, drain
from melange.topology import is_fifo_name

EXTRAS = {DEAD_LETTER_REASON_ATTRIBUTE: "undecodable", DEAD_LETTER_SOURCE_ATTRIBUTE: "orders"}


@pytest.fixture
def names(backend: AzureServiceBusBackend) -> Iterator[ResourceNames]:
    """Unique names, cleaned up after the test."""
    issued = ResourceNames()
    yield issued
    issued.cleanup(backend)


@pytest.fixture
def raw(backend: AzureServiceBusBackend) -> Iterator[ServiceBusClient]:
    """The raw SDK on the same namespace: another producer, and an unbiased reader."""
    client = backend.settings.data_client()
    yield client
    client.close()


def _send(client: ServiceBusClient, queue: str, *messages: Any) -> None:
    with client.get_queue_sender(queue) as sender:
        for message in messages:
            sender.send_messages(message)


def _read(client: ServiceBusClient, queue: str, count: int) -> list[ServiceBusReceivedMessage]:
    """Receive and complete ``count`` messages (session by session on a FIFO queue)."""
    received: list[ServiceBusReceivedMessage] = []
    session = {"session_id": NEXT_AVAILABLE_SESSION} if is_fifo_name(queue) else {}
    while len(received) < count:
        before = len(received)
        with client.get_queue_receiver(queue, max_wait_time=5, **session) as receiver:
            while len(received) < count:
                batch = receiver.receive_messages(max_message_count=count, max_wait_time=2)
                if not batch:
                    break
                for message in batch:
                    receiver.complete_message(message)
                received += batch
        if len(received) == before:
            break
    assert len(received) == count, f"{len(received)} of {count} in {queue!r}"
    return received


def _shape(message: ServiceBusReceivedMessage) -> dict[str, Any]:
    """What the raw SDK reads of a message: body sections, properties with their types."""
    amqp = message.raw_amqp_message
    body = amqp.body if amqp.body_type.value == "value" else list(amqp.body)
    properties = amqp.properties
    return {
        "body_type": amqp.body_type,
        "body": body,
        "application_properties": dict(amqp.application_properties or {}),
        "message_id": message.message_id,
        "correlation_id": properties.correlation_id if properties else None,
        "content_type": properties.content_type if properties else None,
        "subject": properties.subject if properties else None,
        "session_id": message.session_id,
    }


def _without_extras(shape: dict[str, Any]) -> dict[str, Any]:
    properties = {
        key: value
        for key, value in shape["application_properties"].items()
        if key.decode() not in EXTRAS
    }
    return {**shape, "application_properties": properties}


def _extras_of(shape: dict[str, Any]) -> dict[str, Any]:
    return {
        key.decode(): value.decode()
        for key, value in shape["application_properties"].items()
        if key.decode() in EXTRAS
    }


def _largest_single_message(client: ServiceBusClient, queue: str) -> bytes:
    """The largest body the raw SDK sends as one message (with one small property)."""
    low, high = 200_000, 262_144
    with client.get_queue_sender(queue) as sender:
        while low < high:
            size = (low + high + 1) // 2
            try:
                sender.send_messages(_at_limit(b"L" * size))
            except MessageSizeExceededError:
                high = size - 1
            else:
                low = size
    return b"L" * low


def _at_limit(body: bytes) -> ServiceBusMessage:
    return ServiceBusMessage(
        body, application_properties={"kind": "at the limit"}, message_id="foreign-limit"
    )


def _foreign(queue_size_body: bytes) -> list[Any]:
    typed = {
        "count": 3,
        "ok": True,
        "ratio": 1.5,
        "id": uuid.UUID(int=7),
        "name": "x",
        # Named like melange's reserved attributes and Service Bus's dead-letter ones.
        "melange.serializer": "junk",
        "melange.id": "not-melange",
        "melange.manifest": "?",
        "DeadLetterReason": "theirs",
    }
    return [
        ServiceBusMessage(
            b"\x00\xffjunk",
            application_properties=typed,
            message_id="foreign-typed",
            content_type="application/x-junk",
            correlation_id="corr-1",
            subject="subject-1",
        ),
        AmqpAnnotatedMessage(
            value_body={"a": 1, "b": [1, 2]},
            application_properties={"n": 5},
            properties={"message_id": "foreign-value"},
        ),
        ServiceBusMessage(
            b"many",
            application_properties={f"p{i:03d}": f"v{i}" for i in range(300)},
            message_id="foreign-many",
        ),
        _at_limit(queue_size_body),
    ]


def test_foreign_messages_are_forwarded_as_received(
    backend: AzureServiceBusBackend, names: ResourceNames, raw: ServiceBusClient
) -> None:
    """Typed and reserved-named properties, a value body, 300 properties, a body at the limit.

    Before: the copy was rebuilt from melange's view (properties as text, the
    body as bytes, ``DeadLetterReason`` dropped).
    """
    source, reference, dead = names.queue("source"), names.queue("ref"), names.queue("dead")
    scratch = names.queue("scratch")
    factory = MessagingBackendFactory(backend)
    for queue in (source, reference, dead, scratch):
        factory.init_queue(queue, visibility_timeout=30.0)
    largest = _largest_single_message(raw, scratch)
    foreign = _foreign(largest)
    _send(raw, source, *_foreign(largest))
    _send(raw, reference, *foreign)

    received = drain(backend, source, len(foreign), ack=False)
    results = [backend.forward(message, dead, extra_attributes=EXTRAS) for message in received]
    assert all(result.ok for result in results), results
    backend.ack(received)

    expected = {_key(m): _shape(m) for m in _read(raw, reference, len(foreign))}
    copies = {_key(m): _shape(m) for m in _read(raw, dead, len(foreign))}
    assert set(copies) == set(expected)
    for key, copy in copies.items():
        assert _without_extras(copy) == expected[key], key
    # Extras where there was room; none on the message at the size limit.
    assert _extras_of(copies["foreign-typed"]) == EXTRAS
    assert _extras_of(copies["foreign-many"]) == EXTRAS
    assert _extras_of(copies["at the limit"]) == {}
    assert len(copies["at the limit"]["body"][0]) == len(largest)


def _key(message: ServiceBusReceivedMessage) -> str:
    properties = message.application_properties or {}
    kind = properties.get(b"kind")
    return kind.decode() if isinstance(kind, bytes) else str(message.message_id)


def test_an_extra_never_replaces_an_original_property(
    backend: AzureServiceBusBackend, names: ResourceNames, raw: ServiceBusClient
) -> None:
    source, dead = names.queue("source"), names.queue("dead")
    factory = MessagingBackendFactory(backend)
    factory.init_queue(source)
    factory.init_queue(dead)
    _send(raw, source, ServiceBusMessage(b"x", application_properties={"reason": "original"}))
    (received,) = drain(backend, source, 1, ack=False)
    result = backend.forward(received, dead, extra_attributes={"reason": "mine", "added": "yes"})
    assert result.ok
    (copy,) = _read(raw, dead, 1)
    assert copy.application_properties == {b"reason": b"original", b"added": b"yes"}


def test_melange_messages_keep_their_group_and_id_in_a_fifo_dead_letter_queue(
    backend: AzureServiceBusBackend, names: ResourceNames, raw: ServiceBusClient
) -> None:
    source, dead = names.fifo_queue("source"), names.fifo_queue("dead")
    factory = MessagingBackendFactory(backend)
    factory.init_queue(dead)
    factory.init_queue(source, visibility_timeout=30.0)
    published = backend.publish(
        source,
        [
            OutgoingMessage(b"grouped", {"a": "1"}, group_id="g-1", dedup_id="d-1"),
            OutgoingMessage(b"ungrouped", {"b": "2"}, dedup_id="d-2"),
        ],
    )
    assert all(result.ok for result in published)
    received = drain(backend, source, 2, ack=False)
    for message in received:
        assert backend.forward(message, dead, extra_attributes=EXTRAS).ok
    copies = {m.message_id: m for m in drain(backend, dead, 2)}
    assert (copies["d-1"].body, copies["d-1"].group_id) == (b"grouped", "g-1")
    assert dict(copies["d-1"].attributes) == {"a": "1", **EXTRAS}
    assert (copies["d-2"].body, copies["d-2"].group_id) == (b"ungrouped", None)
    assert copies["d-2"].receipt.message.session_id == DEFAULT_GROUP_ID
    # Forwarded again (a crash before the ack): duplicate detection drops the second copies.
    for message in received:
        assert backend.forward(message, dead, extra_attributes=EXTRAS).ok
    backend.ack(received)
    assert_empty(backend, dead)


def test_forwarding_to_a_missing_queue_is_queue_not_found(
    backend: AzureServiceBusBackend, names: ResourceNames
) -> None:
    source = names.queue()
    MessagingBackendFactory(backend).init_queue(source)
    backend.publish(source, [OutgoingMessage(b"x")])
    (received,) = drain(backend, source, 1, ack=False)
    with pytest.raises(QueueNotFound):
        backend.forward(received, "no-such-queue")
