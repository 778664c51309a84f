"""Publishing a batch on the real node: pipelined confirms, and each message's own outcome.

A publish call of many messages sends them all, then waits for their confirms
(one round trip for the batch, not one per message). What the broker says of
each message still decides its result: a ``basic.nack`` (a full queue with
``overflow: reject-publish``) fails that message alone; a ``basic.return``
(no queue to route to) refuses it. The counts are read with raw pika.
"""

from __future__ import annotations

import statistics
import time

import pika
import pytest
from melange_rabbitmq import RabbitMQBackend
from melange_rabbitmq.confirms import Confirmations, ConfirmChannel
from melange_rabbitmq.link import LINGER, TICK
from melange_rabbitmq.testing import RabbitMQNode

from melange.backends.base import OutgoingMessage
from melange.exceptions import BrokerError, OutcomeUnknown, QueueNotFound
from melange.testing.faults import FaultProxy


def ready_count(node: RabbitMQNode, queue: str) -> int:
    """The queue's ready messages, as the broker reports them to a raw pika client."""
    connection = pika.BlockingConnection(pika.URLParameters(node.url))
    try:
        return int(connection.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        connection.close()


def test_a_batch_is_sent_whole_before_its_confirms_are_awaited(
    rabbitmq_node: RabbitMQNode, node_proxy: FaultProxy, queue: str
) -> None:
    with RabbitMQBackend(f"amqp://guest:guest@{node_proxy.address}/%2F") as through_proxy:
        assert through_proxy.publish(queue, [OutgoingMessage(b"warm-up")])[0].ok  # connected
        before = node_proxy.stats.requests
        results = through_proxy.publish(queue, [OutgoingMessage(b"m%d" % i) for i in range(100)])
        exchanges = node_proxy.stats.requests - before
    assert [result.ok for result in results] == [True] * 100
    assert len({result.message_id for result in results}) == 100
    assert ready_count(rabbitmq_node, queue) == 101
    # Waiting for each confirm before the next publish makes one exchange per message (100,
    # measured). Sent whole, the batch makes a few: more when the proxy, sharing this
    # process's GIL, reads the client's writes in pieces while early confirms come back.
    assert exchanges <= 50, f"{exchanges} request/response exchanges for one batch of 100"


def test_a_batch_is_handed_to_the_socket_in_one_write(
    backend: RabbitMQBackend, rabbitmq_node: RabbitMQNode, queue: str
) -> None:
    # pika's transport sends each chunk it is given with a send call of its own; a message
    # is three frames, so a batch of 100 framed one chunk each took 300 calls.
    link = backend._link
    assert backend.publish(queue, [OutgoingMessage(b"warm-up")])[0].ok  # connected
    transport = link.call(lambda: link.publisher().channel._impl.connection._transport)
    chunks: list[bytes] = []
    plain_write = transport.write

    def counted(data: bytes) -> None:
        chunks.append(bytes(data))
        plain_write(data)

    transport.write = counted
    try:
        bodies = [b"m%d" % i for i in range(100)]
        results = backend.publish(queue, [OutgoingMessage(body) for body in bodies])
    finally:
        del transport.write
    assert [result.ok for result in results] == [True] * 100
    assert ready_count(rabbitmq_node, queue) == 101
    published = [chunk for chunk in chunks if b"m99" in chunk or b"m0" in chunk]
    assert len(published) == 1, f"the batch went to the socket in {len(chunks)} writes"
    assert all(body in published[0] for body in bodies)


def test_a_full_queue_nacks_only_the_messages_beyond_its_room(
    rabbitmq_node: RabbitMQNode, backend: RabbitMQBackend, unique: str
) -> None:
    # A classic queue: its length limit is exact. A quorum queue applies it after the
    # enqueue that crosses it (one message more is accepted: 4 of 5 measured here).
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_node.url))
    try:
        connection.channel().queue_declare(
            unique, durable=True, arguments={"x-max-length": 3, "x-overflow": "reject-publish"}
        )
        results = backend.publish(unique, [OutgoingMessage(b"m%d" % i) for i in range(5)])
        assert [result.ok for result in results] == [True, True, True, False, False]
        assert [result.index for result in results] == [0, 1, 2, 3, 4]
        for result in results[3:]:
            assert isinstance(result.error, BrokerError)
            assert result.error.broker_code == "nack"
            assert "reject-publish" in str(result.error)
        assert ready_count(rabbitmq_node, unique) == 3
        # The channel stays usable: the next publish after the queue has room is confirmed.
        connection.channel().queue_purge(unique)
        assert backend.publish(unique, [OutgoingMessage(b"later")])[0].ok
    finally:
        connection.channel().queue_delete(unique)
        connection.close()


def test_a_batch_to_a_missing_queue_is_refused_whole(backend: RabbitMQBackend, unique: str) -> None:
    with pytest.raises(QueueNotFound):
        backend.publish(f"{unique}-none", [OutgoingMessage(b"a"), OutgoingMessage(b"b")])


def test_a_publish_ended_by_a_channel_error_does_not_say_the_connection_was_lost(
    backend: RabbitMQBackend, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only a lost connection may be called one: this error leaves the connection as it was.
    def channel_gone(self: ConfirmChannel, *args: object, **kwargs: object) -> Confirmations:
        return Confirmations([None], pika.exceptions.ChannelWrongStateError("Channel is closed."))

    monkeypatch.setattr(ConfirmChannel, "publish_all", channel_gone)
    [result] = backend.publish(queue, [OutgoingMessage(b"{}")])
    assert isinstance(result.error, OutcomeUnknown)  # reported, as every unknown outcome is
    text = str(result.error)
    assert "connection" not in text and "ChannelWrongStateError" in text, text
    assert f"publishing to {queue!r} failed before RabbitMQ confirmed it" in text
    assert backend._link.connects == 1  # the connection was kept: no reconnection


def test_a_publish_after_the_io_thread_went_back_to_the_socket_starts_at_once(
    backend: RabbitMQBackend, rabbitmq_node: RabbitMQNode, queue: str
) -> None:
    # After a call the I/O thread waits LINGER for the next on its condition, and a job queued
    # meanwhile wakes it through that condition alone; back in process_data_events (for up to
    # TICK) only pika's pipe wakes it. A call made then must not wait for the TICK to end.
    took = []
    for _ in range(20):
        time.sleep(LINGER * 4)
        began = time.monotonic()
        (result,) = backend.publish(queue, [OutgoingMessage(b"x")])
        took.append(time.monotonic() - began)
        assert result.ok, result.error
    assert statistics.median(took) < TICK / 2, took
    assert ready_count(rabbitmq_node, queue) == 20
