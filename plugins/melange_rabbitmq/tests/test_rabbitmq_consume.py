"""Receiving and settling on the real node without needless waits on the I/O thread.

- A receive that may wait, while the queue's consumer has room under its
  prefetch, waits for the broker's push instead of asking with ``basic.get``
  (a round trip on the I/O thread, which returned one message at a time to the
  dispatcher and halved its rate). With the prefetch used up, it still asks.
- ``ack`` and ``nack`` hand their frames to the I/O thread and return: AMQP
  answers neither, so waiting told the caller nothing. ``close`` still sends
  every one queued before it.
- A batch that settles every unsettled delivery of its channel up to its
  highest tag goes in one frame (``multiple``); any other batch, a frame per
  delivery, so that what it does not name stays unsettled.

Queue state is read with raw pika; bytes on the wire are counted by a fault proxy.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pika
import pytest
from melange_rabbitmq import RabbitMQBackend
from melange_rabbitmq.link import Delivery
from melange_rabbitmq.testing import RabbitMQNode

from melange.backends.base import OutgoingMessage, ReceivedMessage
from melange.testing.faults import FaultProxy


class RawClient:
    """A plain pika connection: publishes, and reads what the broker holds."""

    def __init__(self, node: RabbitMQNode) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(node.url))
        self.channel = self.connection.channel()
        # publish() returns once the queue has the message: it comes over another connection,
        # in no order with the backend's basic.get.
        self.channel.confirm_delivery()

    def publish(self, queue: str, body: bytes) -> None:
        self.channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))

    def ready(self, queue: str) -> int:
        return int(self.channel.queue_declare(queue, passive=True).method.message_count)

    def close(self) -> None:
        self.connection.close()


@pytest.fixture
def raw(rabbitmq_node: RabbitMQNode) -> Iterator[RawClient]:
    client = RawClient(rabbitmq_node)
    yield client
    client.close()


def count_gets(backend: RabbitMQBackend) -> list[str]:
    """Record each ``basic.get`` the backend's link makes."""
    calls: list[str] = []
    get = backend.link.get

    def counted(queue: str) -> Delivery | None:
        calls.append(queue)
        return get(queue)

    backend.link.get = counted  # type: ignore[method-assign]
    return calls


def receive_all(backend: RabbitMQBackend, queue: str, count: int) -> list[Any]:
    """Receive ``count`` messages (within 10 s), in as many calls as it takes."""
    received: list[Any] = []
    deadline = time.monotonic() + 10
    while len(received) < count and time.monotonic() < deadline:
        received += backend.receive(queue, count - len(received), wait_seconds=1)
    assert len(received) == count
    return received


def fill_prefetch(backend: RabbitMQBackend, raw: RawClient, queue: str) -> list[object]:
    """Publish as many messages as the backend's prefetch and receive them all (held, unacked)."""
    count = backend.link.prefetch
    for n in range(count):
        raw.publish(queue, b"held %d" % n)
    return receive_all(backend, queue, count)


def test_a_waiting_receive_with_prefetch_room_waits_for_the_push_without_asking(
    backend: RabbitMQBackend, raw: RawClient, queue: str
) -> None:
    assert backend.receive(queue, 10, wait_seconds=0) == []  # starts the queue's consumer
    gets = count_gets(backend)
    threading.Timer(0.3, raw.publish, (queue, b"pushed")).start()
    started = time.monotonic()
    received = backend.receive(queue, 10, wait_seconds=5)
    took = time.monotonic() - started
    assert [message.body for message in received] == [b"pushed"]
    assert took < 3, took
    assert gets == []  # before: one basic.get, a round trip on the I/O thread, per empty look
    backend.ack(received)


def test_with_the_prefetch_used_up_a_receive_asks_the_queue_at_once(
    rabbitmq_node: RabbitMQNode, raw: RawClient, queue: str
) -> None:
    with RabbitMQBackend(rabbitmq_node.url, prefetch=5) as small:
        held = fill_prefetch(small, raw, queue)  # unacked: the broker pushes no more
        raw.publish(queue, b"beyond the prefetch")
        gets = count_gets(small)
        started = time.monotonic()
        received = small.receive(queue, 5, wait_seconds=5)
        took = time.monotonic() - started
        assert [message.body for message in received] == [b"beyond the prefetch"]
        assert took < 2, f"waited {took:.1f} s for a push that the prefetch forbids"
        assert gets == [queue]
        small.ack([*held, *received])  # type: ignore[list-item]


def test_with_the_prefetch_used_up_a_message_published_during_the_wait_is_received(
    rabbitmq_node: RabbitMQNode, raw: RawClient, queue: str
) -> None:
    # No push can come past the prefetch: a receive that waited for one after an empty
    # basic.get slept its whole wait and left the new message in the queue (seen in CI, where
    # the raw publish had not reached the queue yet when basic.get asked).
    with RabbitMQBackend(rabbitmq_node.url, prefetch=2) as small:
        held = fill_prefetch(small, raw, queue)
        later = RawClient(rabbitmq_node)  # pika connections are not shared between threads
        timer = threading.Timer(0.3, later.publish, (queue, b"published while waiting"))
        timer.start()
        started = time.monotonic()
        received = small.receive(queue, 2, wait_seconds=5)
        took = time.monotonic() - started
        timer.join()
        later.close()
        assert [message.body for message in received] == [b"published while waiting"]
        assert took < 1.5, f"took {took:.1f} s to see a message published 0.3 s in"
        small.ack([*held, *received])  # type: ignore[list-item]


def test_an_ack_does_not_wait_for_a_busy_io_thread_and_still_lands(
    rabbitmq_node: RabbitMQNode, raw: RawClient, queue: str
) -> None:
    backend = RabbitMQBackend(rabbitmq_node.url)
    backend.publish(queue, [OutgoingMessage(b"a"), OutgoingMessage(b"b")])
    received: list[object] = []
    deadline = time.monotonic() + 10
    while len(received) < 2 and time.monotonic() < deadline:
        received += backend.receive(queue, 2, wait_seconds=1)
    busy = threading.Thread(target=backend.link.call, args=(lambda: time.sleep(1.0),))
    busy.start()
    time.sleep(0.1)  # the I/O thread is in the sleeping job
    started = time.monotonic()
    backend.ack(received)  # type: ignore[arg-type]
    took = time.monotonic() - started
    busy.join()
    assert took < 0.5, f"ack waited {took:.2f} s for the I/O thread"
    backend.close()  # the connection closes: unacked messages would come back as ready
    deadline = time.monotonic() + 10
    while raw.ready(queue) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert raw.ready(queue) == 0


def test_acks_queued_just_before_close_are_sent(
    rabbitmq_node: RabbitMQNode, raw: RawClient, queue: str
) -> None:
    publish_numbered(raw, queue, 20)
    backend = RabbitMQBackend(rabbitmq_node.url)
    received = receive_all(backend, queue, 20)
    for message in received:
        backend.ack([message])
    backend.close()  # at once: the 20 acks may still be queued for the I/O thread
    time.sleep(0.5)  # had an ack been dropped, its message would be ready again by now
    assert raw.ready(queue) == 0


EXITS_WITHOUT_CLOSING = """
import sys, time
from melange_rabbitmq import RabbitMQBackend
from melange_rabbitmq.link import Delivery

backend = RabbitMQBackend(sys.argv[1])
received = []
while len(received) < 20:
    received += backend.receive(sys.argv[2], 10, wait_seconds=1)
backend.link.submit(lambda: time.sleep(0.5))  # the I/O thread is busy when the acks queue up
for message in received:
    backend.ack([message])
# no backend.close(): the process ends, as one whose dispatcher returned from main() does
"""


def test_acks_queued_when_the_process_exits_without_closing_are_sent(
    rabbitmq_node: RabbitMQNode, raw: RawClient, queue: str
) -> None:
    publish_numbered(raw, queue, 20)
    subprocess.run(
        [sys.executable, "-c", EXITS_WITHOUT_CLOSING, rabbitmq_node.url, queue],
        check=True,
        timeout=60,
    )
    time.sleep(0.5)  # the broker requeues what a closed connection left unacked at once
    assert raw.ready(queue) == 0


# --------------------------------------------------- one frame for a batch
ACK_FRAME = 21
"""Bytes of one ``basic.ack`` frame: 7 of header, 4 of class and method, 8 of tag, 1 of flags, 1
of end."""


def wait_settled(backend: RabbitMQBackend) -> None:
    """Return once the I/O thread has run the settlements queued before (its jobs run in order)."""
    backend.link.call(lambda: None)


def publish_numbered(raw: RawClient, queue: str, count: int) -> None:
    """Publish ``count`` messages, m0 to m<count - 1>, with raw pika."""
    for n in range(count):
        raw.publish(queue, b"m%d" % n)


@contextlib.contextmanager
def ten_received(
    node: RabbitMQNode, raw: RawClient, queue: str
) -> Iterator[tuple[RabbitMQBackend, list[ReceivedMessage]]]:
    """Publish m0 to m9 with raw pika; a backend that received all ten, closed afterwards."""
    publish_numbered(raw, queue, 10)
    backend = RabbitMQBackend(node.url)
    try:
        yield backend, receive_all(backend, queue, 10)
    finally:
        backend.close()


def wait_ready(raw: RawClient, queue: str, count: int) -> None:
    """Wait up to 10 s for ``queue`` to hold ``count`` ready messages (the broker requeues)."""
    deadline = time.monotonic() + 10
    while raw.ready(queue) < count and time.monotonic() < deadline:
        time.sleep(0.1)


@pytest.mark.parametrize("calls", ["one call", "a call each, behind a busy I/O thread"])
def test_acking_every_unsettled_delivery_up_to_the_last_sends_one_frame(
    node_proxy: FaultProxy, raw: RawClient, queue: str, calls: str
) -> None:
    # Acks queued one by one for a busy I/O thread (a dispatcher acks every few messages while
    # the thread reads deliveries) join the one queued last: one flush, one frame, as one call.
    publish_numbered(raw, queue, 100)
    backend = RabbitMQBackend(f"amqp://guest:guest@{node_proxy.address}/%2F")
    try:
        received = receive_all(backend, queue, 100)
        before = node_proxy.stats.bytes_up
        if calls == "one call":
            backend.ack(received)
        else:
            backend.link.submit(lambda: time.sleep(0.3))
            for message in received:
                backend.ack([message])
        wait_settled(backend)
        time.sleep(0.2)  # the proxy forwards what the I/O thread wrote
        sent = node_proxy.stats.bytes_up - before
    finally:
        backend.close()
    # A frame per message is 100 x 21 bytes; one frame with multiple is 21 (and the proxy
    # may have counted a heartbeat).
    assert sent < 10 * ACK_FRAME, f"{sent} bytes sent to ack 100 deliveries ({calls})"
    time.sleep(0.5)  # had a delivery been left unacked, the close made it ready again
    assert raw.ready(queue) == 0


@pytest.mark.parametrize(
    "acked",
    [range(5, 10), range(0, 10, 2), range(0, 5)],
    ids=["the later half", "every other one", "the earlier half"],
)
def test_acking_part_of_what_was_received_settles_that_part_only(
    rabbitmq_node: RabbitMQNode, raw: RawClient, queue: str, acked: range
) -> None:
    with ten_received(rabbitmq_node, raw, queue) as (backend, received):
        assert [m.body for m in received] == [b"m%d" % n for n in range(10)]
        backend.ack([received[n] for n in acked])
        wait_settled(backend)
    # closed: the deliveries left unsettled went back to the queue
    wait_ready(raw, queue, 10 - len(acked))
    time.sleep(0.3)  # no more than those
    assert raw.ready(queue) == 10 - len(acked)


@pytest.mark.parametrize("order", ["acks then nacks", "alternating"])
def test_queued_acks_and_nacks_do_not_join_each_other(
    rabbitmq_node: RabbitMQNode, raw: RawClient, queue: str, order: str
) -> None:
    nacked = set(range(5, 10)) if order == "acks then nacks" else set(range(1, 10, 2))
    with ten_received(rabbitmq_node, raw, queue) as (backend, received):
        backend.link.submit(lambda: time.sleep(0.3))  # every settlement below waits in line
        for n, message in enumerate(received):
            if n in nacked:
                backend.nack([message])
            else:
                backend.ack([message])
        wait_settled(backend)
        wait_ready(raw, queue, len(nacked))
        again = receive_all(backend, queue, len(nacked))  # the nacked ones, and only those
        assert sorted(m.body for m in again) == sorted(b"m%d" % n for n in nacked)
        backend.ack(again)
        wait_settled(backend)
    time.sleep(0.5)  # had an acked one been requeued instead, it would be ready now
    assert raw.ready(queue) == 0
