"""Byte-exact forward (dead-lettering) of foreign messages, at Pub/Sub's own limits.

Each message is published with Google's raw client (not melange), received
with melange, forwarded with ``backend.forward``, and read back from the target
with the raw client again: data bytes, every attribute and the ordering key
must be exactly the original's, with melange's extra attributes only where
Pub/Sub has room for them (100 attributes, keys of 256 bytes, values of 1,024
bytes, a 10,000,000-byte Publish request). The emulator enforces none of these
limits, so the test checks them itself.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from google.pubsub_v1 import types
from melange_gcp import GCPPubSubBackend, wire
from melange_gcp.names import subscription_path, topic_path

from melange import MessagingBackendFactory
from melange.backends.base import OutgoingMessage, ReceivedMessage
from melange.message import DEAD_LETTER_REASON_ATTRIBUTE, DEAD_LETTER_SOURCE_ATTRIBUTE

EXTRAS = {DEAD_LETTER_REASON_ATTRIBUTE: "undecodable", DEAD_LETTER_SOURCE_ATTRIBUTE: "orders"}


@dataclass(frozen=True)
class Raw:
    """A message as Google's raw client sees it."""

    data: bytes
    attributes: dict[str, str]
    ordering_key: str = ""


@pytest.fixture
def queues(backend: GCPPubSubBackend, unique: str) -> Iterator[tuple[str, str]]:
    """A source queue and a target queue whose names have the same length."""
    source, target = f"{unique}-src", f"{unique}-dlq"
    factory = MessagingBackendFactory(backend)
    factory.init_queue(source)
    factory.init_queue(target)
    yield source, target
    backend.delete_queue(source)
    backend.delete_queue(target)


@pytest.fixture
def fifo_queues(backend: GCPPubSubBackend, unique: str) -> Iterator[tuple[str, str]]:
    source, target = f"{unique}-src.fifo", f"{unique}-dlq.fifo"
    factory = MessagingBackendFactory(backend)
    factory.init_queue(source)
    factory.init_queue(target)
    yield source, target
    backend.delete_queue(source)
    backend.delete_queue(target)


def publish_raw(backend: GCPPubSubBackend, queue: str, message: Raw) -> None:
    backend.publisher_client.publish(
        request={
            "topic": topic_path(backend.project, queue),
            "messages": [
                {
                    "data": message.data,
                    "attributes": message.attributes,
                    "ordering_key": message.ordering_key,
                }
            ],
        },
        timeout=60,
    )


def pull_raw(backend: GCPPubSubBackend, queue: str) -> Raw:
    """Pull and acknowledge the one message of ``queue`` with the raw client."""
    path = subscription_path(backend.project, queue)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        response: Any = backend.subscriber_client.pull(
            request={"subscription": path, "max_messages": 10}, timeout=5, retry=None
        )
        items = types.PullResponse.pb(response).received_messages
        if items:
            assert len(items) == 1, f"{len(items)} copies in {queue!r}"
            backend.subscriber_client.acknowledge(
                request={"subscription": path, "ack_ids": [items[0].ack_id]}, timeout=10
            )
            message = items[0].message
            return Raw(bytes(message.data), dict(message.attributes), message.ordering_key)
    pytest.fail(f"nothing in {queue!r} within 30 s")


def receive_one(backend: GCPPubSubBackend, queue: str) -> ReceivedMessage:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        received = backend.receive(queue, max_messages=10, wait_seconds=2)
        if received:
            (message,) = received
            return message
    pytest.fail(f"melange received nothing from {queue!r} within 30 s")


def forward_raw(
    backend: GCPPubSubBackend,
    source: str,
    target: str,
    original: Raw,
    extras: dict[str, str] = EXTRAS,
) -> Raw:
    """Publish ``original`` raw, receive it with melange, forward it, read the copy raw."""
    publish_raw(backend, source, original)
    received = receive_one(backend, source)
    result = backend.forward(received, target, extra_attributes=extras)
    assert result.status == "accepted", result.error
    backend.ack([received])
    return pull_raw(backend, target)


def request_bytes(topic: str, message: Raw) -> int:
    request = types.PublishRequest(
        topic=topic,
        messages=[
            types.PubsubMessage(
                data=message.data,
                attributes=message.attributes,
                ordering_key=message.ordering_key,
            )
        ],
    )
    size: int = types.PublishRequest.pb(request).ByteSize()
    return size


def test_a_message_with_100_attributes_at_the_size_limits_is_forwarded_without_extras(
    backend: GCPPubSubBackend, queues: tuple[str, str]
) -> None:
    attributes = {
        f"k{i:03d}".ljust(wire.MAX_ATTRIBUTE_KEY_BYTES, "k"): "v" * 1024 for i in range(100)
    }
    original = Raw(b"\x00\xffbinary\r\n", attributes)
    copy = forward_raw(backend, *queues, original)
    assert copy == original  # no room for a 101st attribute: no extras


def test_what_melange_hides_on_receipt_is_forwarded_as_it_came(
    backend: GCPPubSubBackend, queues: tuple[str, str]
) -> None:
    # melange's received form drops these two; a foreign publisher may send them anyway.
    original = Raw(
        b"",
        {
            wire.EMPTY_BODY: "foreign value",
            "CloudPubSubDeadLetterSourceSubscription": "projects/x/subscriptions/elsewhere",
            "melange.id": "not-melange's",
        },
    )
    copy = forward_raw(backend, *queues, original)
    assert copy == Raw(original.data, {**original.attributes, **EXTRAS})


def test_a_body_filling_the_publish_request_is_forwarded_whole_without_extras(
    backend: GCPPubSubBackend, queues: tuple[str, str]
) -> None:
    source, target = queues
    topic = topic_path(backend.project, target)  # as long as the source's
    base = Raw(b"", {"kind": "big"})
    filler = wire.MAX_REQUEST_BYTES - request_bytes(topic, base) - 8  # framing of the data
    original = Raw(b"x" * filler, base.attributes)
    size = request_bytes(topic, original)
    original = Raw(b"x" * (filler + wire.MAX_REQUEST_BYTES - size), base.attributes)
    assert request_bytes(topic, original) == wire.MAX_REQUEST_BYTES
    copy = forward_raw(backend, source, target, original)
    assert copy == original
    # With 20 bytes of room, the extras that fit go in, in order.
    smaller = Raw(original.data[:-40], base.attributes)
    copy = forward_raw(backend, source, target, smaller, {"r": "1", "too-long": "x" * 30, "s": "2"})
    assert copy == Raw(smaller.data, {**base.attributes, "r": "1", "s": "2"})


def test_extras_go_in_only_where_pub_sub_takes_them_and_never_replace_an_original(
    backend: GCPPubSubBackend, queues: tuple[str, str]
) -> None:
    attributes = {f"a{i}": "v" for i in range(97)}
    original = Raw(b"payload", attributes)
    extras = {
        "a0": "replaced?",  # the original's value wins
        "k" * 257: "key too long",
        "value-too-long": "v" * 1025,
        "goog-reserved": "Pub/Sub refuses goog* names",
        DEAD_LETTER_REASON_ATTRIBUTE: "undecodable",
        "second": "fits",
        "third": "fits: the 100th",
        "fourth": "no room left",
    }
    copy = forward_raw(backend, *queues, original, extras)
    assert copy == Raw(
        original.data,
        {
            **attributes,
            DEAD_LETTER_REASON_ATTRIBUTE: "undecodable",
            "second": "fits",
            "third": "fits: the 100th",
        },
    )


def test_the_ordering_key_is_kept_between_fifo_queues(
    backend: GCPPubSubBackend, fifo_queues: tuple[str, str]
) -> None:
    original = Raw(b"ordered", {"k": "v"}, ordering_key="customer-42")
    copy = forward_raw(backend, *fifo_queues, original)
    assert copy == Raw(original.data, {"k": "v", **EXTRAS}, "customer-42")


def test_melange_reads_a_forwarded_empty_message_as_it_was_published(
    backend: GCPPubSubBackend, queues: tuple[str, str]
) -> None:
    source, target = queues
    backend.publish(source, [OutgoingMessage(b"")])
    received = receive_one(backend, source)
    assert (received.body, received.attributes) == (b"", {})
    assert backend.forward(received, target).ok
    backend.ack([received])
    copy = receive_one(backend, target)
    assert (copy.body, copy.attributes) == (b"", {})
    backend.ack([copy])
