"""RabbitMQ throughput: melange's ``rabbitmq`` backend against raw pika and kombu's amqp transport.

One private RabbitMQ node (``melange_rabbitmq.testing.RabbitMQNode``, the installed server on
free ports) serves every side; every queue is a durable quorum queue made by melange's factory
outside the timing, so all sides move the same persistent messages through the same queues:

* ``publish (confirmed)``: one message per call, confirmed by the broker before the call
  returns. melange ``backend.publish(queue, [message])``; raw pika ``basic_publish`` on a
  ``BlockingChannel`` in confirm mode (persistent, ``mandatory``, as melange sends); kombu
  ``Producer.publish`` on the ``amqp`` transport (py-amqp) with ``confirm_publish``.
* ``publish batch (confirmed)``: the same messages in calls of 100, each call returning once
  every message of it is confirmed. melange ``backend.publish(queue, [100 messages])`` (sent
  whole, confirms awaited together); raw pika on its asynchronous adapter
  (``SelectConnection``, the one pika offers for pipelined confirms: publish the 100, wait for
  their ``basic.ack``, next 100); kombu has no batch publish, so its producer publishes the 100
  one by one, each confirmed.
* ``consume + ack``: from a queue filled beforehand (not timed), each message acked once
  handled. melange ``backend.receive(queue, 100)`` + ``backend.ack(batch)`` in a loop; raw pika
  ``basic_consume`` with a prefetch of 100 and ``basic_ack`` per message; kombu a ``Consumer``
  with a prefetch of 100, ``drain_events`` and ``message.ack()``.
* ``dispatcher``: a queue filled with melange messages (``QueuePublisher``) consumed by
  ``MessageDispatcher`` (default options, a trivial consumer), timed from ``start()`` until the
  last message is handled and acked, compared with the same raw pika and kombu loops doing the
  same work: each parses every JSON body before acknowledging it. ``dispatcher after start()``
  is the same run timed from ``start()``'s return: without the queue lookup (three management
  API requests) and the threads' start, which the raw loops do not do.

The one-message publish is also timed with ``_amqp_floor.BareConfirmPublisher``: a bare
blocking socket speaking AMQP with pika's frame classes, no I/O loop. It bounds from below what
any Python client can do for that call, so it says whether a goal is within reach at all.

Each repetition runs every side on a fresh queue, checked afterwards (every message arrived
once, the queue is empty); the ratios printed (melange throughput over the other's; goals:
>= 0.9x raw pika, >= 1.5x kombu) are the medians of the per-repetition ratios.

Usage: ``.venv/bin/python benchmarks/rabbitmq_throughput.py [--messages 2000] [--repeat 3]
[--body-size 256] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

import kombu
import pika
from _amqp_floor import BareConfirmPublisher
from _bench import dump_json, machine, print_machine, summary
from melange_rabbitmq import RabbitMQBackend
from melange_rabbitmq.testing import RabbitMQNode

from melange import MessageDispatcher, MessagingBackendFactory
from melange.backends.base import OutgoingMessage
from melange.consumers import Consumer
from melange.publishers import QueuePublisher
from melange.serializers import SerializerRegistry

PREFETCH = 100
GOALS = {"pika": 0.9, "kombu": 1.5}
PUBLISH = "publish (confirmed)"
PUBLISH_BATCH = "publish batch (confirmed)"
CONSUME = "consume + ack"
DISPATCH = "dispatcher"
DISPATCH_STARTED = "dispatcher after start()"
WORKLOADS = (PUBLISH, PUBLISH_BATCH, CONSUME, DISPATCH, DISPATCH_STARTED)
BATCH = 100
"""Messages per publish call in the batch workload (melange's rabbitmq max_batch_size)."""
SIDES = ("melange", "pika", "kombu")
BARE = "bare socket"
"""The floor side of the one-message publish (see _amqp_floor)."""


class Sides:
    """The three clients, connected once and reused by every repetition."""

    def __init__(self, node: RabbitMQNode) -> None:
        self.node = node
        self.backend = RabbitMQBackend(node.url, management_url=node.management_url)
        self.factory = MessagingBackendFactory(self.backend)
        self.pika = pika.BlockingConnection(pika.URLParameters(node.url))
        self.pika_channel = self.pika.channel()
        self.pika_channel.confirm_delivery()
        url = f"amqp://guest:guest@{node.host}:{node.port}//"
        self.kombu = kombu.Connection(url, transport_options={"confirm_publish": True})
        self.kombu.connect()
        self.pipelined = PipelinedPika(node.url)
        self.bare = BareConfirmPublisher(node.host, node.port)

    def queue(self) -> str:
        name = f"bench-{uuid.uuid4().hex[:10]}"
        self.factory.init_queue(name)
        return name

    def fill(self, queue: str, count: int, body: bytes) -> None:
        self.backend.publish(queue, [OutgoingMessage(body)] * count)

    def fill_for_dispatcher(self, queue: str, count: int, body: bytes) -> None:
        publisher = QueuePublisher(self.backend)
        for _ in range(count):
            publisher.publish(queue, {"pad": body.decode()})

    def depth(self, queue: str) -> int:
        return int(self.pika_channel.queue_declare(queue, passive=True).method.message_count)

    def depth_unacked(self, queue: str) -> int:
        """Messages of ``queue`` still held by the backend: leased, not acked yet."""
        return len(self.backend.link.leases)

    def close(self) -> None:
        self.bare.close()
        self.pipelined.close()
        self.kombu.release()
        self.pika.close()
        self.backend.close()


# ------------------------------------------------------------------ publish
def publish_melange(sides: Sides, queue: str, count: int, body: bytes) -> None:
    message = [OutgoingMessage(body)]
    for _ in range(count):
        (result,) = sides.backend.publish(queue, message)
        assert result.ok, result.error


def publish_pika(sides: Sides, queue: str, count: int, body: bytes) -> None:
    channel = sides.pika_channel
    for _ in range(count):
        properties = pika.BasicProperties(delivery_mode=2, message_id=uuid.uuid4().hex)
        channel.basic_publish("", queue, body, properties, mandatory=True)


def publish_bare(sides: Sides, queue: str, count: int, body: bytes) -> None:
    for _ in range(count):
        sides.bare.publish(queue, body)


class PipelinedPika:
    """Raw pika publishing batches with pipelined confirms: its ``SelectConnection`` adapter.

    The connection and its channel in confirm mode open once, outside the timing; each
    :meth:`publish` runs the adapter's I/O loop until every message it sent is confirmed.
    """

    def __init__(self, url: str) -> None:
        self.channel: Any = None
        self.pending: set[int] = set()
        self.next_tag = 1
        self.nacked = 0
        self.connection = pika.SelectConnection(
            pika.URLParameters(url),
            on_open_callback=self._opened,
            on_close_callback=lambda _connection, _reason: self.connection.ioloop.stop(),
        )
        self.connection.ioloop.start()  # stopped once the channel is in confirm mode

    def _opened(self, connection: Any) -> None:
        connection.channel(on_open_callback=self._channel_opened)

    def _channel_opened(self, channel: Any) -> None:
        self.channel = channel
        channel.confirm_delivery(
            ack_nack_callback=self._confirmed, callback=lambda _frame: self.connection.ioloop.stop()
        )

    def _confirmed(self, frame: Any) -> None:
        method = frame.method
        if isinstance(method, pika.spec.Basic.Nack):
            self.nacked += 1
        tags = (
            [t for t in self.pending if t <= method.delivery_tag]
            if method.multiple
            else [method.delivery_tag]
        )
        self.pending.difference_update(tags)
        if not self.pending:
            self.connection.ioloop.stop()

    def publish(self, queue: str, count: int, body: bytes) -> None:
        for _ in range(count):
            properties = pika.BasicProperties(delivery_mode=2, message_id=uuid.uuid4().hex)
            self.channel.basic_publish("", queue, body, properties, mandatory=True)
            self.pending.add(self.next_tag)
            self.next_tag += 1
        self.connection.ioloop.start()  # until the confirms of all of them came
        assert not self.nacked

    def close(self) -> None:
        self.connection.close()
        self.connection.ioloop.start()  # until closed (on_close_callback stops the loop)


def publish_batch_melange(sides: Sides, queue: str, count: int, body: bytes) -> None:
    for start in range(0, count, BATCH):
        batch = [OutgoingMessage(body)] * min(BATCH, count - start)
        results = sides.backend.publish(queue, batch)
        assert all(result.ok for result in results), [r.error for r in results if not r.ok]


def publish_batch_pika(sides: Sides, queue: str, count: int, body: bytes) -> None:
    for start in range(0, count, BATCH):
        sides.pipelined.publish(queue, min(BATCH, count - start), body)


def publish_kombu(sides: Sides, queue: str, count: int, body: bytes) -> None:
    producer = kombu.Producer(sides.kombu.default_channel)
    for _ in range(count):
        producer.publish(
            body,
            routing_key=queue,
            exchange="",
            delivery_mode=2,
            mandatory=True,
            content_type="application/octet-stream",
            content_encoding="binary",
        )


# ------------------------------------------------------------------ consume
def consume_melange(sides: Sides, queue: str, count: int) -> None:
    backend, seen = sides.backend, 0
    while seen < count:
        batch = backend.receive(queue, PREFETCH, wait_seconds=5.0)
        assert batch, f"melange: only {seen} of {count}"
        backend.ack(batch)
        seen += len(batch)


def consume_pika(sides: Sides, queue: str, count: int, *, decode: bool = False) -> None:
    """Consume ``count`` messages; with ``decode``, parse each JSON body as the dispatcher does."""
    channel = sides.pika.channel()
    channel.basic_qos(prefetch_count=PREFETCH)
    seen = 0

    def handle(ch: Any, method: Any, _properties: Any, body: bytes) -> None:
        nonlocal seen
        if decode:
            json.loads(body)
        ch.basic_ack(method.delivery_tag)
        seen += 1
        if seen >= count:
            ch.stop_consuming()

    channel.basic_consume(queue, handle)
    channel.start_consuming()
    channel.close()


def consume_kombu(sides: Sides, queue: str, count: int, *, decode: bool = False) -> None:
    """Consume ``count`` messages; with ``decode``, parse each JSON body as the dispatcher does."""
    seen = 0

    def handle(_body: Any, message: Any) -> None:
        nonlocal seen
        if decode:
            json.loads(message.body)
        message.ack()
        seen += 1

    channel = sides.kombu.channel()
    with kombu.Consumer(
        channel,
        queues=[kombu.Queue(queue, no_declare=True)],
        callbacks=[handle],
        prefetch_count=PREFETCH,
        accept=["application/octet-stream", "application/json"],
    ):
        while seen < count:
            sides.kombu.drain_events(timeout=5)
    channel.close()


class _Counting(Consumer):
    def __init__(self, count: int) -> None:
        super().__init__()
        self.count = count
        self.handled = 0
        self.done = threading.Event()

    def process(self, message: Any) -> None:
        self.handled += 1  # one handler thread at a time is not guaranteed: only a progress mark
        if self.handled >= self.count:
            self.done.set()


def dispatch_melange(sides: Sides, queue: str, count: int) -> tuple[float, float]:
    """Consume ``count`` messages with a dispatcher; msgs/s from ``start()`` and from its return.

    Both end when the last message is handled and acked. ``start()`` looks the queue up (with
    ``management_url``, three requests to the management API) and starts the threads; the raw
    loops' own start-up is a channel and a ``basic.consume``, which melange's first receive
    does too. The stop is not timed: it waits for the receive's long poll to end.
    """
    consumer = _Counting(count)
    dispatcher = MessageDispatcher(sides.backend, queue, [consumer], SerializerRegistry())
    began = time.perf_counter()
    dispatcher.start()
    started = time.perf_counter()
    assert consumer.done.wait(300), f"dispatcher: only {consumer.handled} of {count}"
    deadline = time.monotonic() + 30
    while sides.depth_unacked(queue) and time.monotonic() < deadline:
        time.sleep(0.0005)  # its acks are sent after the handlers return
    ended = time.perf_counter()
    dispatcher.stop(timeout=30)
    return count / (ended - began), count / (ended - started)


# --------------------------------------------------------------------- runs
def timed(work: Callable[[], object], count: int) -> float:
    """Messages per second of ``work``."""
    start = time.perf_counter()
    work()
    return count / (time.perf_counter() - start)


def run(sides: Sides, count: int, body: bytes) -> dict[str, dict[str, float]]:
    rates: dict[str, dict[str, float]] = {workload: {} for workload in WORKLOADS}
    publishers = {
        "melange": publish_melange,
        "pika": publish_pika,
        "kombu": publish_kombu,
        BARE: publish_bare,
    }
    consumers = {"melange": consume_melange, "pika": consume_pika, "kombu": consume_kombu}
    batch_publishers = {
        "melange": publish_batch_melange,
        "pika": publish_batch_pika,
        "kombu": publish_kombu,  # kombu publishes a batch one confirmed message at a time
    }
    for workload, sides_of in ((PUBLISH, publishers), (PUBLISH_BATCH, batch_publishers)):
        for side, publish in sides_of.items():
            queue = sides.queue()
            rates[workload][side] = timed(partial(publish, sides, queue, count, body), count)
            assert sides.depth(queue) == count, (side, sides.depth(queue))
            sides.backend.delete_queue(queue)
    for side, consume in consumers.items():
        queue = sides.queue()
        sides.fill(queue, count, body)
        rates[CONSUME][side] = timed(partial(consume, sides, queue, count), count)
        sides.backend.delete_queue(queue)
    # The same work as the dispatcher: every JSON body parsed, then acknowledged.
    raw_loops = {
        "pika": partial(consume_pika, decode=True),
        "kombu": partial(consume_kombu, decode=True),
    }
    for side in SIDES:
        queue = sides.queue()
        sides.fill_for_dispatcher(queue, count, body[:64])
        if side == "melange":
            rates[DISPATCH][side], rates[DISPATCH_STARTED][side] = dispatch_melange(
                sides, queue, count
            )
        else:
            rate = timed(partial(raw_loops[side], sides, queue, count), count)
            rates[DISPATCH][side] = rates[DISPATCH_STARTED][side] = rate
        assert sides.depth(queue) == 0, (side, sides.depth(queue))
        sides.backend.delete_queue(queue)
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--body-size", type=int, default=256)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    body = b"x" * args.body_size
    info = machine()
    with RabbitMQNode() as node:
        sides = Sides(node)
        try:
            run(sides, min(200, args.messages), body)  # warm-up: connections, channels, JIT
            runs = [run(sides, args.messages, body) for _ in range(args.repeat)]
        finally:
            sides.close()
    result: dict[str, Any] = {"machine": info, "messages": args.messages, "workloads": {}}
    if not args.json:
        print_machine(info)
        print(f"{args.messages} messages of {args.body_size} B, {args.repeat} repetitions")
        print(
            f"{'workload':26} {'melange/s':>10} {'pika/s':>10} {'kombu/s':>10} "
            f"{'vs pika':>8} {'vs kombu':>9}"
        )
    for workload in WORKLOADS:
        rates = {side: summary([r[workload][side] for r in runs]) for side in SIDES}
        ratios = {
            other: statistics.median(r[workload]["melange"] / r[workload][other] for r in runs)
            for other in ("pika", "kombu")
        }
        result["workloads"][workload] = {"rates": rates, "ratios": ratios}
        if not args.json:
            marks = {o: "" if ratios[o] >= GOALS[o] else " (below goal)" for o in ratios}
            print(
                f"{workload:26} {rates['melange']['median']:10.0f} {rates['pika']['median']:10.0f} "
                f"{rates['kombu']['median']:10.0f} {ratios['pika']:7.2f}x{marks['pika']} "
                f"{ratios['kombu']:8.2f}x{marks['kombu']}"
            )
    floor = summary([r[PUBLISH][BARE] for r in runs])
    floor_vs_kombu = statistics.median(r[PUBLISH][BARE] / r[PUBLISH]["kombu"] for r in runs)
    result["workloads"][PUBLISH]["floor"] = {"rates": floor, "vs kombu": floor_vs_kombu}
    if args.json:
        dump_json(result)
    else:
        print(
            f"{PUBLISH} by a bare socket client (_amqp_floor), the least a Python client "
            f"spends: {floor['median']:.0f}/s, {floor_vs_kombu:.2f}x kombu"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
