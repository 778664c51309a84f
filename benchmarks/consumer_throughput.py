"""Consumer throughput: melange's consumer runtime against hand-written loops; latency.

Two measurements in one run. Every message is the same small JSON object encoded by melange's
``SerializerRegistry`` (so it carries the ``melange.serializer`` attribute); every handler is
the same trivial function (it notes the message's number, which lets each run check that every
message was handled, and handled once).

1. **Against a hand-written loop on the same endpoint.** Dispatchers empty pre-filled queues,
   and so does a plain loop that receives 10, parses each body with ``json.loads``, calls the
   handler and deletes the 10 in one call. Sides run in rotating, alternating order, and each
   ratio is the median of the per-repetition ratios side/loop in msgs/s.

   * ``memory`` (part ``memory``): the headline sides are the two drivers built with their
     **default options**, ``MessageDispatcher(backend, queue, [consumer], serializers)`` and
     ``melange.aio.AsyncMessageDispatcher(backend, queue, [consumer], serializers)`` (run with
     ``asyncio.run`` and ``await run_until_idle(idle_seconds=..., stop=True)``); the asyncio
     driver runs twice, with the same ``def process`` consumer (in its thread pool) and with an
     ``AsyncConsumer`` whose ``async def process`` runs on the event loop. Extra lines: the
     threaded dispatcher tuned for memory (``workers=10, concurrent_receives=1,
     batch_size=10, wait_seconds=0.05``) and with ``workers=4``. The loop uses the backend's
     ``receive``/``ack``.
   * ``localsqs`` (part ``localsqs``): the threaded dispatcher (``workers=10,
     concurrent_receives=1, batch_size=10, wait_seconds=0``, and an extra line with
     ``workers=4``) against raw boto3 ``receive_message`` + ``delete_message_batch``, asking for
     what melange asks for, on a moto server over HTTP started by the script. moto slows down
     as a queue grows, so these runs spread ``--messages`` over fresh queues of
     ``--per-queue``, filled before the timing, and the sides interleave queue by queue.

2. **Under latency** (part ``latency``). A :class:`~latency_proxy.LatencyProxy` in front of the
   endpoint adds a fixed round-trip time (``--rtts``) to every HTTP exchange. For each
   ``concurrent_receives`` (``--concurrency``; ``workers``/``concurrency`` is 10 per receive,
   so every receive may ask for 10) each driver (threads with the ``def process`` consumer,
   asyncio with the ``async def process`` one) consumes a fresh queue that a feeder thread
   (talking to the endpoint directly, not through the proxy) keeps stocked, so that receives
   return 10 messages while the queue stays shallow. Its steady throughput (messages deleted,
   over the middle 80 % of the deletes) is compared with the limit ``concurrent_receives x 10 /
   RTT``: **goal at least 0.9**. A hand-written boto3 consumer with as many receiving threads,
   which hands each batch's delete to a thread pool and receives again at once, runs under the
   same conditions: it shows what the endpoint allows (moto's own time per receive grows with
   the queue's depth and adds to the RTT). The call logs (every receive and delete: thread,
   start, end, size) show whether receives stay in flight, whether they return 10, and whether
   deletes keep up.

With ``--localstack URL`` (default: ``$MELANGE_LOCALSTACK_ENDPOINT``, which
``plugins/melange_localsqs/scripts/localstack.sh run`` sets) the ``localsqs`` and ``latency``
parts also run against that LocalStack, whose receive costs about 2 ms whatever the queue's
depth. ``--parts memory`` runs part 1 on ``memory`` alone, without starting moto.

Part 1 times each run from the start of its first receive to the end of its last delete: the
dispatcher's start-up (threads or event loop, the queue lookup of ``start()``) and its idle wait
and shutdown are not timed. They are in the ``wall`` column (construction to the return of
``run_until_idle(stop=True)``): with the default ``wait_seconds=5``, ``stop()`` waits for the
long poll in progress once the queue is empty, so a default run takes about 5 s longer than
its messages. Part 2 measures a steady state, and its end-to-end figure (from the dispatcher's
start) is in the JSON output.

Usage: ``.venv/bin/python benchmarks/consumer_throughput.py [--parts memory,localsqs,latency]
[--messages 500] [--per-queue 50] [--memory-messages 10000] [--repeat 5] [--rtts 50,100]
[--concurrency 1,2,4] [--rounds 20] [--localstack URL] [--json]``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import os
import statistics
import sys
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from _bench import dump_json, machine, print_machine, summary
from latency_proxy import LatencyProxy

BATCH = 10
GOAL_FRACTION = 0.9
REGION = "us-east-1"
ACCESS_KEY = SECRET_KEY = "test"  # local endpoints accept any credentials
LOCALSTACK_ENV = "MELANGE_LOCALSTACK_ENDPOINT"
# What melange's receive asks SQS for; the raw boto3 loops ask the same.
RECEIVE_OPTIONS: dict[str, Any] = {
    "MessageAttributeNames": ["All"],
    "MessageSystemAttributeNames": ["ApproximateReceiveCount", "MessageGroupId"],
}
# workers=10: a receive asks for no more messages than the dispatcher has free workers, so with
# fewer it could not receive 10 at a time as the hand-written loop does. (10 is also the
# constructor's default now: batch_size x concurrent_receives.)
DISPATCHER_OPTIONS: dict[str, Any] = {"workers": 10, "concurrent_receives": 1, "batch_size": BATCH}
# An extra line: fewer workers than a batch (the constructor's default before 8.0.0.dev0).
WORKERS4_OPTIONS: dict[str, Any] = {"workers": 4, "concurrent_receives": 1, "batch_size": BATCH}
MEMORY_WAIT, MEMORY_IDLE = 0.05, 0.3  # the tuned receive wait on memory; idle time of every run
# Part 1 on SQS: no long polling, as the hand-written loop (the queues are filled beforehand).
SQS_WAIT, SQS_IDLE = 0.0, 0.5
# Part 2: long polling (whole seconds on SQS); a stocked queue answers at once anyway.
LATENCY_WAIT, LATENCY_IDLE = 1.0, 1.0
STEADY = (0.1, 0.9)  # the part of the deletes that makes the steady throughput
PAYLOAD = {"order_id": "ord-000000", "amount_cents": 1250, "currency": "EUR", "n": 0}
PARTS = ("memory", "localsqs", "latency")

THREADS, ASYNCIO, LOOP = "threads", "asyncio", "loop"  # who consumes: the two drivers, or a loop
HAND_LOOP = "hand loop"
BOTO3_LOOP = "boto3 loop"
BOTO3_PIPELINED = "boto3 pipelined"
# Part 1 on memory.
THREADS_DEFAULTS = "threads, defaults"
ASYNCIO_DEFAULTS = "asyncio, defaults"
ASYNCIO_ASYNC_DEF = "asyncio, defaults, async def"
THREADS_TUNED = "threads, tuned"
THREADS_WORKERS4 = "threads, workers=4"
# Part 1 on SQS, and part 2.
DISPATCHER = "dispatcher"
DISPATCHER_DEFAULTS = "dispatcher workers=4"  # the constructor default before 8.0.0.dev0 tuning
ASYNCIO_DISPATCHER = "asyncio dispatcher"
SQS_SIDES = {DISPATCHER: DISPATCHER_OPTIONS, DISPATCHER_DEFAULTS: WORKERS4_OPTIONS}


@dataclass(frozen=True)
class Side:
    """Who consumes in one side of part 1 on memory, and with which constructor options."""

    driver: str  # THREADS, ASYNCIO or LOOP
    options: dict[str, Any] = field(default_factory=dict)  # beyond the four positional ones
    async_consumer: bool = False  # an AsyncConsumer (async def process) instead of a Consumer
    headline: bool = False


MEMORY_SIDES: dict[str, Side] = {
    HAND_LOOP: Side(LOOP),
    THREADS_DEFAULTS: Side(THREADS, headline=True),
    ASYNCIO_DEFAULTS: Side(ASYNCIO, headline=True),
    ASYNCIO_ASYNC_DEF: Side(ASYNCIO, async_consumer=True, headline=True),
    THREADS_TUNED: Side(THREADS, {**DISPATCHER_OPTIONS, "wait_seconds": MEMORY_WAIT}),
    THREADS_WORKERS4: Side(THREADS, {**WORKERS4_OPTIONS, "wait_seconds": MEMORY_WAIT}),
}


# ------------------------------------------------------------- messages
def encoded_messages(count: int) -> list[Any]:
    """``count`` messages as melange publishes them (JSON body, ``melange.serializer``)."""
    from melange.serializers import SerializerRegistry

    registry = SerializerRegistry()
    return [registry.encode({**PAYLOAD, "n": index}) for index in range(count)]


class Handled:
    """The trivial handler every side calls: notes the payload's number.

    ``list.append`` and ``set.add`` are atomic, so threads need no lock; the numbers let a run
    check that every message was handled, and count those handled twice.
    """

    def __init__(self) -> None:
        self.numbers: list[int] = []
        self.seen: set[int] = set()
        self._note, self._see = self.numbers.append, self.seen.add

    def __call__(self, payload: dict[str, Any]) -> None:
        self._note(payload["n"])
        self._see(payload["n"])

    @property
    def count(self) -> int:
        return len(self.numbers)

    @property
    def duplicates(self) -> int:
        return len(self.numbers) - len(self.seen)


def counting_consumer(handled: Handled, *, asynchronous: bool = False) -> Any:
    """A melange consumer whose ``process`` is the trivial handler.

    A plain :class:`~melange.consumers.Consumer` (``def process``: the threaded dispatcher calls
    it on a worker thread, the asyncio one in its thread pool), or with ``asynchronous`` an
    :class:`~melange.aio.AsyncConsumer` (``async def process``, run on the event loop).
    """
    from melange.aio import AsyncConsumer
    from melange.consumers import Consumer

    class CountingConsumer(Consumer):
        def process(self, message: Any) -> None:
            handled(message.body)

    class AsyncCountingConsumer(AsyncConsumer):
        async def process(self, message: Any) -> None:
            handled(message.body)

    return AsyncCountingConsumer() if asynchronous else CountingConsumer()


# ------------------------------------------------------------ call logs
@dataclass(slots=True)
class Call:
    """One receive or delete call: its thread, when it started and ended, how many messages."""

    thread: int
    start: float
    end: float
    count: int
    asked: int = 0  # receives: the most messages asked for


@dataclass
class CallLog:
    """Every receive and ack/delete call of one run, in completion order."""

    receives: list[Call] = field(default_factory=list)
    acks: list[Call] = field(default_factory=list)
    received: int = 0
    acked: int = 0
    changed: threading.Condition = field(default_factory=threading.Condition)

    def receive_done(self, start: float, count: int, asked: int = BATCH) -> None:
        end = time.perf_counter()
        with self.changed:
            self.receives.append(Call(threading.get_ident(), start, end, count, asked))
            self.received += count
            self.changed.notify_all()

    def ack_done(self, start: float, count: int) -> None:
        end = time.perf_counter()
        with self.changed:
            self.acks.append(Call(threading.get_ident(), start, end, count))
            self.acked += count
            self.changed.notify_all()


class Instrumented:
    """Wraps a backend instance's ``receive`` and ``ack`` so each call goes to :attr:`log`."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.log = CallLog()
        receive, ack = backend.receive, backend.ack

        def logged_receive(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            messages = receive(*args, **kwargs)
            asked = args[1] if len(args) > 1 else kwargs.get("max_messages", BATCH)
            self.log.receive_done(start, len(messages), asked)
            return messages

        def logged_ack(messages: Sequence[Any]) -> None:
            start = time.perf_counter()
            ack(messages)
            self.log.ack_done(start, len(messages))

        backend.receive, backend.ack = logged_receive, logged_ack

    def new_log(self) -> CallLog:
        self.log = CallLog()
        return self.log


def run_dispatcher(
    driver: str,
    backend: Any,
    queue_name: str,
    handled: Handled,
    idle: float,
    *,
    async_consumer: bool = False,
    **options: Any,
) -> tuple[Any, dict[str, Any]]:
    """Run a dispatcher until the queue stays empty for ``idle`` seconds and stop it.

    ``driver`` is :data:`THREADS` (``MessageDispatcher``) or :data:`ASYNCIO`
    (``AsyncMessageDispatcher`` under ``asyncio.run``); ``options`` are passed to the
    constructor as they are, so none given means the constructor's defaults. Returns the
    dispatcher's stats and the options it ran with (defaults resolved).
    """
    from melange.serializers import SerializerRegistry

    consumers = [counting_consumer(handled, asynchronous=async_consumer)]
    serializers = SerializerRegistry()
    if driver == THREADS:
        from melange.dispatcher import MessageDispatcher

        dispatcher = MessageDispatcher(backend, queue_name, consumers, serializers, **options)
        stats = dispatcher.run_until_idle(idle_seconds=idle, timeout=600.0, stop=True)
        return stats, effective_options(dispatcher, options)

    import asyncio

    from melange.aio import AsyncMessageDispatcher

    async def run() -> tuple[Any, dict[str, Any]]:
        dispatcher = AsyncMessageDispatcher(backend, queue_name, consumers, serializers, **options)
        stats = await dispatcher.run_until_idle(idle_seconds=idle, timeout=600.0, stop=True)
        return stats, effective_options(dispatcher, options)

    return asyncio.run(run())


def effective_options(dispatcher: Any, given: dict[str, Any]) -> dict[str, Any]:
    """The sizing options a dispatcher runs with, after the constructor filled in defaults.

    Each is read from the dispatcher's ``config``, else from what was passed; one found
    nowhere is left out. The capacity is named as the driver names it.
    """
    sources = [dispatcher.config, given]
    resolved = {}
    capacity = "concurrency" if hasattr(dispatcher, "concurrency") else "workers"
    resolved[capacity] = dispatcher.config.capacity
    for name in ("concurrent_receives", "batch_size", "wait_seconds"):
        for source in sources:
            value = source.get(name) if isinstance(source, dict) else getattr(source, name, None)
            if value is not None:
                resolved[name] = value
                break
    return resolved


def busy_time(log: CallLog) -> float:
    """Seconds from the start of the first receive to the end of the last delete.

    The dispatcher's start-up (its threads, and the queue lookup of ``start()``, an HTTP call
    on SQS) and its idle wait and shutdown are left out: they happen once per process, and the
    short runs on fresh queues would otherwise count them many times.
    """
    return max(call.end for call in log.acks) - min(call.start for call in log.receives)


def check_run(
    side: str,
    expected: int,
    handled: Handled,
    log: CallLog,
    stats: Any,
    *,
    duplicates_allowed: bool = False,
) -> None:
    """Every message handled and acknowledged (once, unless duplicates are allowed)."""
    problems = []
    if len(handled.seen) != expected:
        problems.append(f"{len(handled.seen)} distinct handled")
    if handled.duplicates and not duplicates_allowed:
        problems.append(f"{handled.duplicates} handled twice")
    if log.acked != handled.count:
        problems.append(f"{log.acked} acknowledged for {handled.count} handled")
    if stats is not None and stats.handled != handled.count:
        problems.append(f"stats.handled {stats.handled} for {handled.count} handled")
    if problems:
        raise SystemExit(f"{side}: expected {expected} messages: {', '.join(problems)}")


# ------------------------------------------------------- part 1: memory
@dataclass
class PartOneResult:
    """Part 1 on one endpoint: per side, msgs/s (and on memory wall seconds) per repetition."""

    rates: dict[str, list[float]]
    walls: dict[str, list[float]]
    options: dict[str, dict[str, Any]]  # per dispatcher side, as it ran (defaults resolved)


def memory_side(
    name: str, messages: list[Any], *, warm_up: bool = False
) -> tuple[float, float, dict[str, Any]]:
    """One run on a fresh memory backend; returns msgs/s, wall seconds and the options used.

    msgs/s counts from the first receive's start to the last ack's end; wall seconds from the
    dispatcher's construction to the return of ``run_until_idle(stop=True)``. A warm-up run
    uses the tuned wait, so that a default dispatcher's final long poll does not make it
    last 5 s for nothing.
    """
    from melange.backends.memory import MemoryBackend
    from melange.topology import QueueSpec

    side = MEMORY_SIDES[name]
    backend = MemoryBackend()
    queue = "bench-memory"
    backend.declare_queue(QueueSpec(queue))
    for start in range(0, len(messages), BATCH):
        backend.publish(queue, messages[start : start + BATCH])
    log = Instrumented(backend).log
    handled = Handled()
    stats = None
    options: dict[str, Any] = {}
    gc.collect()
    began = time.perf_counter()
    if side.driver == LOOP:
        receive, ack, loads = backend.receive, backend.ack, json.loads
        while batch := receive(queue, BATCH, 0.0):
            for message in batch:
                handled(loads(message.body))
            ack(batch)
    else:
        chosen = {**side.options, "wait_seconds": MEMORY_WAIT} if warm_up else side.options
        stats, options = run_dispatcher(
            side.driver,
            backend,
            queue,
            handled,
            MEMORY_IDLE,
            async_consumer=side.async_consumer,
            **chosen,
        )
    wall = time.perf_counter() - began
    check_run(f"memory {name}", len(messages), handled, log, stats)
    if backend.queue_depth(queue) != (0, 0, 0):
        raise SystemExit(f"memory {name}: queue not empty: {backend.queue_depth(queue)}")
    backend.close()
    return len(messages) / busy_time(log), wall, options


def measure_memory(count: int, repeat: int) -> PartOneResult:
    messages = encoded_messages(count)
    sides = list(MEMORY_SIDES)
    result = PartOneResult({side: [] for side in sides}, {side: [] for side in sides}, {})
    for side in sides:  # warm-up, not recorded
        memory_side(side, messages[: min(count, 1000)], warm_up=True)
    for rep in range(repeat):
        order = sides[rep % len(sides) :] + sides[: rep % len(sides)]
        for side in reversed(order) if rep % 2 else order:
            rate, wall, options = memory_side(side, messages)
            result.rates[side].append(rate)
            result.walls[side].append(wall)
            if options:
                result.options[side] = options
    return result


# --------------------------------------------------- SQS-like endpoints
def boto3_client(endpoint_url: str, pool: int = 10) -> Any:
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name=REGION
    )
    config = Config(max_pool_connections=pool)
    return session.client("sqs", endpoint_url=endpoint_url, config=config)


def localsqs_backend(endpoint_url: str) -> Any:
    from melange_localsqs import LocalSQSBackend

    backend = LocalSQSBackend(endpoint_url=endpoint_url)
    backend.capabilities  # noqa: B018 - its one-time SNS probe, outside any timing
    return backend


@dataclass
class Endpoint:
    """An SQS endpoint (moto server or LocalStack) and the clients the runs share."""

    label: str
    url: str
    admin: Any  # boto3 client for set-up and checks; never timed
    filler: Any  # LocalSQSBackend that fills queues, direct; never timed
    backend: Instrumented  # the LocalSQSBackend under test, direct
    client: Any  # the raw boto3 client under test, direct

    @classmethod
    def open(cls, label: str, url: str) -> Endpoint:
        return cls(
            label,
            url,
            boto3_client(url),
            localsqs_backend(url),
            Instrumented(localsqs_backend(url)),
            boto3_client(url),
        )

    def close(self) -> None:
        for closable in (self.backend.backend, self.filler, self.admin, self.client):
            closable.close()

    @property
    def host_port(self) -> tuple[str, int]:
        parts = urllib.parse.urlsplit(self.url)
        return parts.hostname or "127.0.0.1", parts.port or 80

    def new_queue(self, label: str) -> tuple[str, str]:
        name = f"bench-{label}-{uuid.uuid4().hex[:10]}"
        return name, self.admin.create_queue(QueueName=name)["QueueUrl"]

    def fill(self, name: str, messages: Sequence[Any]) -> None:
        for start in range(0, len(messages), BATCH):
            results = self.filler.publish(name, messages[start : start + BATCH])
            if not all(result.ok for result in results):
                raise SystemExit(f"filling {name}: {results}")

    def depth(self, url: str) -> tuple[int, int]:
        """Visible and in-flight messages."""
        attributes = self.admin.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return (
            int(attributes["ApproximateNumberOfMessages"]),
            int(attributes["ApproximateNumberOfMessagesNotVisible"]),
        )

    def check_empty(self, side: str, name: str, url: str) -> None:
        depth = self.depth(url)
        if depth != (0, 0):
            raise SystemExit(f"{self.label} {side}: queue {name} not empty: {depth}")


@contextlib.contextmanager
def opened_endpoints(localstack: str | None) -> Iterator[list[Endpoint]]:
    """Start the moto server; yield it (and LocalStack when given) as endpoints; stop after."""
    from melange_localsqs.testing import MotoServer

    with MotoServer() as server, contextlib.ExitStack() as stack:
        endpoints = [Endpoint.open("moto", server.endpoint_url)]
        stack.callback(endpoints[0].close)
        if localstack:
            endpoints.append(Endpoint.open("localstack", localstack))
            stack.callback(endpoints[1].close)
        yield endpoints


# ----------------------------------------------------- part 1: localsqs
def boto3_loop(client: Any, url: str, handled: Handled, log: CallLog, expected: int) -> None:
    """The hand-written consumer: receive 10, parse and handle each, delete the 10 in one call."""
    receive, delete_batch, loads = client.receive_message, client.delete_message_batch, json.loads
    empty = 0
    while log.acked < expected and empty < 3:
        start = time.perf_counter()
        messages = receive(
            QueueUrl=url, MaxNumberOfMessages=BATCH, WaitTimeSeconds=0, **RECEIVE_OPTIONS
        ).get("Messages", [])
        log.receive_done(start, len(messages))
        if not messages:
            empty += 1
            continue
        for message in messages:
            handled(loads(message["Body"]))
        start = time.perf_counter()
        entries = [
            {"Id": str(index), "ReceiptHandle": message["ReceiptHandle"]}
            for index, message in enumerate(messages)
        ]
        response = delete_batch(QueueUrl=url, Entries=entries)
        if response.get("Failed"):
            raise SystemExit(f"boto3: delete_message_batch failed: {response['Failed']}")
        log.ack_done(start, len(messages))


def sqs_queue_run(endpoint: Endpoint, side: str, name: str, url: str, count: int) -> float:
    """Empty one pre-filled queue; return the seconds from start to the last delete."""
    handled = Handled()
    stats = None
    if side == BOTO3_LOOP:
        log = CallLog()
        gc.collect()
        boto3_loop(endpoint.client, url, handled, log, count)
    else:
        log = endpoint.backend.new_log()
        endpoint.backend.backend.get_queue(name)  # the backend caches the URL: not timed
        gc.collect()
        stats, _ = run_dispatcher(
            THREADS,
            endpoint.backend.backend,
            name,
            handled,
            SQS_IDLE,
            **SQS_SIDES[side],
            wait_seconds=SQS_WAIT,
            close_backend=False,  # the benchmark reuses the backend
        )
    elapsed = busy_time(log)
    check_run(f"{endpoint.label} {side}", count, handled, log, stats)
    endpoint.check_empty(side, name, url)
    return elapsed


def measure_sqs(
    endpoint: Endpoint, messages: list[Any], per_queue: int, repeat: int
) -> PartOneResult:
    sides = [DISPATCHER, BOTO3_LOOP, DISPATCHER_DEFAULTS]
    queue_count = len(messages) // per_queue
    rates: dict[str, list[float]] = {side: [] for side in sides}
    for rep in range(-1, repeat):  # repetition -1 warms every side up on one queue
        queues = queue_count if rep >= 0 else 1
        elapsed = dict.fromkeys(sides, 0.0)
        for index in range(queues):
            chunk = messages[index * per_queue : (index + 1) * per_queue]
            prepared = {side: endpoint.new_queue(f"c{index}") for side in sides}
            for name, _ in prepared.values():
                endpoint.fill(name, chunk)
            turn = (index + max(rep, 0)) % len(sides)
            order = sides[turn:] + sides[:turn]
            for side in reversed(order) if rep % 2 else order:
                name, url = prepared[side]
                elapsed[side] += sqs_queue_run(endpoint, side, name, url, per_queue)
                endpoint.admin.delete_queue(QueueUrl=url)
        if rep >= 0:
            for side in sides:
                rates[side].append(queues * per_queue / elapsed[side])
    options = {
        side: {**SQS_SIDES[side], "wait_seconds": SQS_WAIT}
        for side in (DISPATCHER, DISPATCHER_DEFAULTS)
    }
    return PartOneResult(rates, {}, options)


# ------------------------------------------------------ part 2: latency
class Feeder:
    """Keeps a queue stocked from a thread, talking to the endpoint directly (not via the proxy).

    It sends a batch of 10 whenever fewer than ``low`` messages are estimated visible (sent
    minus received, from the run's call log), until every message was sent.
    """

    def __init__(
        self, endpoint: Endpoint, name: str, messages: list[Any], low: int, log: CallLog
    ) -> None:
        self.endpoint, self.name, self.messages, self.low, self.log = (
            endpoint,
            name,
            messages,
            low,
            log,
        )
        self.sent = 0
        self.done_at: float | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    def prefill(self) -> None:
        while self.sent < min(self.low, len(self.messages)):
            self._send()

    def _send(self) -> None:
        batch = self.messages[self.sent : self.sent + BATCH]
        results = self.endpoint.filler.publish(self.name, batch)
        if not all(result.ok for result in results):
            raise SystemExit(f"feeding {self.name}: {results}")
        self.sent += len(batch)

    def _run(self) -> None:
        log = self.log
        while self.sent < len(self.messages) and not self._stop:
            with log.changed:
                log.changed.wait_for(
                    lambda: self._stop or self.sent - log.received < self.low, timeout=1.0
                )
            if not self._stop and self.sent - log.received < self.low:
                self._send()
        self.done_at = time.perf_counter()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop = True
        with self.log.changed:
            self.log.changed.notify_all()
        self._thread.join(30)


def pipelined_boto3(
    client: Any, url: str, receivers: int, handled: Handled, log: CallLog, expected: int
) -> None:
    """The hand-written reference under latency.

    ``receivers`` threads each receive 10, handle them, hand the delete to a thread pool and
    receive again at once; they stop once every message was handled.
    """
    loads = json.loads
    deleting = ThreadPoolExecutor(max_workers=2 * receivers, thread_name_prefix="delete")

    def delete(messages: list[dict[str, Any]]) -> None:
        start = time.perf_counter()
        entries = [
            {"Id": str(index), "ReceiptHandle": message["ReceiptHandle"]}
            for index, message in enumerate(messages)
        ]
        response = client.delete_message_batch(QueueUrl=url, Entries=entries)
        if response.get("Failed"):
            raise SystemExit(f"boto3: delete_message_batch failed: {response['Failed']}")
        log.ack_done(start, len(messages))

    def receive_loop() -> None:
        while len(handled.seen) < expected:
            start = time.perf_counter()
            messages = client.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=BATCH,
                WaitTimeSeconds=int(LATENCY_WAIT),
                **RECEIVE_OPTIONS,
            ).get("Messages", [])
            log.receive_done(start, len(messages))
            for message in messages:
                handled(loads(message["Body"]))
            if messages:
                deleting.submit(delete, messages)

    threads = [
        threading.Thread(target=receive_loop, name=f"receive-{index}") for index in range(receivers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    deleting.shutdown(wait=True)


def latency_run(
    endpoint: Endpoint,
    via_proxy: Instrumented,
    client: Any,
    side: str,
    rtt: float,
    receivers: int,
    messages: list[Any],
) -> dict[str, Any]:
    """One run under latency on a fresh, continuously stocked queue; the numbers of the run."""
    name, url = endpoint.new_queue(f"rtt{rtt * 1000:g}-c{receivers}")
    via_proxy.backend.get_queue(name)  # the URL lookup (one RTT) before the timing
    dispatched = side in (DISPATCHER, ASYNCIO_DISPATCHER)
    log = via_proxy.new_log() if dispatched else CallLog()
    # Enough visible messages that every receive in flight gets 10, even before the feeder
    # hears of the ones just taken; no more, since moto's receive slows down with depth.
    feeder = Feeder(endpoint, name, messages, low=2 * receivers * BATCH + BATCH, log=log)
    feeder.prefill()
    handled = Handled()
    stats = None
    gc.collect()
    feeder.start()
    start = time.perf_counter()
    try:
        if dispatched:
            # Enough capacity (workers / concurrency) for every receive to ask for 10.
            capacity = "workers" if side == DISPATCHER else "concurrency"
            stats, _ = run_dispatcher(
                THREADS if side == DISPATCHER else ASYNCIO,
                via_proxy.backend,
                name,
                handled,
                LATENCY_IDLE,
                async_consumer=side == ASYNCIO_DISPATCHER,
                **{capacity: receivers * BATCH},
                concurrent_receives=receivers,
                batch_size=BATCH,
                wait_seconds=LATENCY_WAIT,
                close_backend=False,  # the benchmark reuses the backend
            )
        else:
            pipelined_boto3(client, url, receivers, handled, log, len(messages))
    finally:
        feeder.stop()
    # Concurrent receives on moto can hand out one message twice: counted, not fatal.
    check_run(
        f"{endpoint.label} latency {side}",
        len(messages),
        handled,
        log,
        stats,
        duplicates_allowed=True,
    )
    endpoint.check_empty(side, name, url)
    endpoint.admin.delete_queue(QueueUrl=url)
    # The asyncio driver's receives hop between the threads of its pool: no per-thread figures.
    per_thread = side != ASYNCIO_DISPATCHER
    result = analyse(log, start, rtt, receivers, len(messages), feeder.done_at, per_thread)
    result.update(endpoint=endpoint.label, side=side, duplicates=handled.duplicates)
    return result


def middle(calls: list[Call], total: int) -> tuple[list[Call], float, float, int]:
    """The calls of the steady part: by end time, from 10 % to 90 % of ``total`` messages.

    Returns the calls ending in it, its start and end, and how many messages they moved.
    """
    ordered = sorted(calls, key=lambda call: call.end)
    done = list(itertools.accumulate(call.count for call in ordered))
    first = next(i for i, value in enumerate(done) if value >= STEADY[0] * total)
    last = next(i for i, value in enumerate(done) if value >= STEADY[1] * total)
    return (
        ordered[first + 1 : last + 1],
        ordered[first].end,
        ordered[last].end,
        done[last] - done[first],
    )


def analyse(
    log: CallLog,
    start: float,
    rtt: float,
    receivers: int,
    total: int,
    feeder_done: float | None,
    per_thread: bool = True,
) -> dict[str, Any]:
    """Throughput and what the receive/delete calls did, from one run's call log.

    Deletes and receives each get their own steady window (10 % to 90 % of the messages):
    when deletes fall behind, the receives are long done by the time the deletes are counted.
    Without ``per_thread`` (receives made on whichever thread of a pool is free) the figures
    that follow one receiving thread (the number of threads, the gaps between one thread's
    receives) are left out.
    """
    _, low, high, deleted = middle(log.acks, total)
    steady = deleted / (high - low)
    limit = receivers * BATCH / rtt
    window, r_low, r_high, received = middle([c for c in log.receives if c.count], total)
    in_window = [call for call in log.receives if call.start < r_high and call.end > r_low]
    busy = sum(min(call.end, r_high) - max(call.start, r_low) for call in in_window)
    # Receives made while the feeder was still sending: each should return 10.
    stocked = [call for call in log.receives if feeder_done is None or call.end <= feeder_done]
    by_thread: dict[int, list[Call]] = {}
    for call in sorted(log.receives, key=lambda call: call.start) if per_thread else ():
        by_thread.setdefault(call.thread, []).append(call)
    gaps = [
        later.start - earlier.end
        for calls in by_thread.values()
        for earlier, later in itertools.pairwise(calls)
        if r_low <= later.start <= r_high
    ]
    delete_sizes = [call.count for call in log.acks]
    return {
        "rtt_ms": rtt * 1000,
        "concurrent_receives": receivers,
        "messages": total,
        "limit_msgs_per_second": limit,
        "steady_msgs_per_second": steady,
        "end_to_end_msgs_per_second": total / (max(c.end for c in log.acks) - start),
        "fraction_of_limit": steady / limit,
        "met": steady / limit >= GOAL_FRACTION,
        "received_msgs_per_second": received / (r_high - r_low),
        "received_fraction_of_limit": received / (r_high - r_low) / limit,
        # The share of the receive window during which `receivers` receives were in flight.
        "receive_duty": busy / (receivers * (r_high - r_low)),
        "peak_receives_in_flight": peak_overlap(log.receives),
        "receive_threads": len(by_thread) if per_thread else None,
        "receive_call_ms_median": 1000 * statistics.median(c.end - c.start for c in window),
        "receive_gap_ms_median": 1000 * statistics.median(gaps) if gaps else None,
        "receive_gap_ms_max": 1000 * max(gaps) if gaps else None,
        "receives_asking_10": sum(call.asked >= BATCH for call in stocked),
        "receives_with_10": sum(call.count == BATCH for call in stocked),
        "receives_while_stocked": len(stocked),
        "receive_sizes": dict(Counter(call.count for call in log.receives)),
        "receive_asked": dict(Counter(call.asked for call in log.receives)),
        "delete_calls": len(delete_sizes),
        "delete_size_median": statistics.median(delete_sizes),
        "delete_size_max": max(delete_sizes),
        "delete_call_ms_median": 1000 * statistics.median(c.end - c.start for c in log.acks),
        "peak_deletes_in_flight": peak_overlap(log.acks),
    }


def peak_overlap(calls: Sequence[Call]) -> int:
    """The largest number of calls in flight at the same moment."""
    events = sorted([(call.start, 1) for call in calls] + [(call.end, -1) for call in calls])
    peak = current = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


def measure_latency(
    endpoint: Endpoint, rtts: list[float], concurrency: list[int], rounds: int
) -> list[dict[str, Any]]:
    results = []
    host, port = endpoint.host_port
    for rtt in rtts:
        with LatencyProxy(host, port, rtt=rtt, lifetime=1800.0) as proxy:
            via_proxy = Instrumented(localsqs_backend(proxy.endpoint_url))
            client = boto3_client(proxy.endpoint_url, pool=4 * max(concurrency))
            try:
                for receivers in concurrency:
                    messages = encoded_messages(rounds * receivers * BATCH)
                    for side in (DISPATCHER, ASYNCIO_DISPATCHER, BOTO3_PIPELINED):
                        results.append(
                            latency_run(endpoint, via_proxy, client, side, rtt, receivers, messages)
                        )
            finally:
                via_proxy.backend.close()
                client.close()
        if proxy.stats.refused:
            raise SystemExit(f"the latency proxy refused {proxy.stats.refused} connections")
    return results


# ------------------------------------------------------------- reporting
def compare(rates: dict[str, list[float]], ours: str, theirs: str) -> dict[str, Any]:
    paired = [mine / other for mine, other in zip(rates[ours], rates[theirs], strict=True)]
    return {
        "ours": ours,
        "theirs": theirs,
        "ratio": statistics.median(paired),
        "paired_ratios": paired,
        "ratio_of_medians": statistics.median(rates[ours]) / statistics.median(rates[theirs]),
    }


def part_one(result: PartOneResult, loop: str, headline: list[str]) -> dict[str, Any]:
    """Part 1 on one endpoint, for the JSON output: summaries, samples, ratios to the loop."""
    comparisons = {side: compare(result.rates, side, loop) for side in result.rates if side != loop}
    return {
        "loop": loop,
        "headline": headline,
        "msgs_per_second": {side: summary(values) for side, values in result.rates.items()},
        "samples": result.rates,
        "wall_seconds": {side: summary(values) for side, values in result.walls.items()},
        "wall_samples": result.walls,
        "options": result.options,
        "comparisons": comparisons,
        "comparison": comparisons[headline[0]],
    }


def with_reference(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give each run under latency the difference between its fraction and the reference's."""
    reference = {
        (run["endpoint"], run["rtt_ms"], run["concurrent_receives"]): run["fraction_of_limit"]
        for run in runs
        if run["side"] == BOTO3_PIPELINED
    }
    for run in runs:
        key = (run["endpoint"], run["rtt_ms"], run["concurrent_receives"])
        ref = reference.get(key)
        run["fraction_minus_reference"] = None if ref is None else run["fraction_of_limit"] - ref
    return runs


OPTION_ORDER = ("workers", "concurrency", "concurrent_receives", "batch_size", "wait_seconds")
ENDPOINT_ORDER = ("memory", "moto", "localstack")
SIDE_ORDER = (*MEMORY_SIDES, BOTO3_LOOP, DISPATCHER, DISPATCHER_DEFAULTS)


def options_text(options: dict[str, Any]) -> str:
    """``key=value, ...`` in a fixed order (the JSON output sorts keys)."""
    known = [key for key in OPTION_ORDER if key in options]
    rest = sorted(key for key in options if key not in OPTION_ORDER)
    return ", ".join(f"{key}={options[key]}" for key in known + rest)


def ordered_endpoints(part1: dict[str, Any]) -> list[tuple[str, Any]]:
    """Part 1's endpoints in running order, whether the payload is fresh or read from JSON."""
    rank = {label: index for index, label in enumerate(ENDPOINT_ORDER)}
    return sorted(part1.items(), key=lambda item: rank.get(item[0], len(rank)))


def ordered_sides(result: dict[str, Any]) -> list[str]:
    """An endpoint's sides: the loop, the headline sides, then the extra lines."""
    rank = {side: index for index, side in enumerate(SIDE_ORDER)}
    extra = sorted(
        (side for side in result["msgs_per_second"] if side not in result["headline"]),
        key=lambda side: (side != result["loop"], rank.get(side, len(rank))),
    )
    return [extra[0], *result["headline"], *extra[1:]]


# What each side of part 1 is, for the report (the options it ran with are printed beside).
SIDE_NOTES = {
    HAND_LOOP: "backend.receive(queue, 10), json.loads + handler, backend.ack(the 10)",
    BOTO3_LOOP: "boto3 receive_message(10) + handler + delete_message_batch",
    THREADS_DEFAULTS: "MessageDispatcher(backend, queue, [consumer], serializers)",
    ASYNCIO_DEFAULTS: "AsyncMessageDispatcher(backend, queue, [consumer], serializers), "
    "def process consumer (runs in the dispatcher's thread pool)",
    ASYNCIO_ASYNC_DEF: "the same with an AsyncConsumer (async def process, on the event loop)",
    THREADS_TUNED: "MessageDispatcher tuned for memory",
    THREADS_WORKERS4: "MessageDispatcher with fewer workers than a batch",
    DISPATCHER: "MessageDispatcher",
    DISPATCHER_DEFAULTS: "MessageDispatcher with fewer workers than a batch",
}


def report_part_one(payload: dict[str, Any]) -> None:
    print(
        "1. consumer runtime against a hand-written loop on the same endpoint, trivial handler, "
        f"{payload['repeat']} repetitions, sides in rotating, alternating order"
    )
    endpoints = []
    if "memory" in payload["part1"]:
        endpoints.append(f"memory: {payload['memory_messages']} messages in one pre-filled queue")
    if len(payload["part1"]) > ("memory" in payload["part1"]):
        endpoints.append(
            f"SQS over HTTP: {payload['messages']} messages, {payload['per_queue']} per fresh queue"
        )
    print(f"   per run: {'; '.join(endpoints)}")
    print(
        "   msgs/s: messages / (first receive start to last ack end), median (min-max); ratio: "
        "median of the\n   per-repetition ratios side/loop (min-max); wall: whole run, "
        "construction to the return of\n   run_until_idle(stop=True) (loop: its own time), median. "
        "* = headline"
    )
    print(
        f"  {'endpoint':<10}   {'side':<28} {'msgs/s':>9} {'(min-max)':<19} "
        f"{'ratio to loop':<18} {'wall s':>6}"
    )
    for label, result in ordered_endpoints(payload["part1"]):
        for side in ordered_sides(result):
            stats = result["msgs_per_second"][side]
            mark = "*" if side in result["headline"] else " "
            spread = f"({stats['min']:,.0f}-{stats['max']:,.0f})"
            ratio = ""
            if side in result["comparisons"]:
                compared = result["comparisons"][side]
                paired = compared["paired_ratios"]
                ratio = f"{compared['ratio']:.2f}x ({min(paired):.2f}-{max(paired):.2f})"
            wall = result["wall_seconds"].get(side)
            walls = f"{wall['median']:>6.2f}" if wall else f"{'-':>6}"
            print(
                f"  {label:<10} {mark} {side:<28} {stats['median']:>9,.0f} {spread:<19} "
                f"{ratio:<18} {walls}"
            )
    print("  sides (options as run, the constructor's defaults filled in):")
    described: dict[tuple[str, str], list[str]] = {}  # one line for the endpoints alike
    for label, result in ordered_endpoints(payload["part1"]):
        for side in ordered_sides(result):
            options = result["options"].get(side)
            key = (side, options_text(options) if options else "")
            described.setdefault(key, []).append(label)
    for (side, options), labels in described.items():
        print(f"    {', '.join(labels)} {side}: {SIDE_NOTES.get(side, '')}")
        if options:
            print(f"        {options}")
    if "memory" in payload["part1"]:
        print(
            "  wall: a dispatcher with the default wait_seconds=5 ends with a long poll on the "
            f"empty queue; after {MEMORY_IDLE} s idle,\n  stop() waits for that receive (up to "
            "wait_seconds), which is why those runs take about 5 s more than their messages."
        )


def report_latency(runs: list[dict[str, Any]]) -> None:
    print(
        "2. under latency (TCP proxy in front of the endpoint): steady = msgs deleted per second "
        f"over the middle {round((STEADY[1] - STEADY[0]) * 100)}% of the deletes; limit = "
        f"concurrent receives x 10 / RTT; goal >= {GOAL_FRACTION}"
    )
    print(
        "  receives (own steady window): msgs/s, share of the time the c receives were in "
        "flight,\n  median call ms; while stocked: calls asking 10 / returning 10 / all. "
        "deletes: calls, size median/max,\n  most in flight at once, median call ms. dup: "
        "messages handled twice (moto hands one out twice under concurrent receives).\n"
        "  -ref: fraction minus the boto3 pipelined reference's, same endpoint, RTT and c.\n"
        f"  dispatcher: MessageDispatcher, workers=c x 10, def process consumer; asyncio "
        f"dispatcher: AsyncMessageDispatcher,\n  concurrency=c x 10, async def process "
        f"consumer; both concurrent_receives=c, batch_size=10, wait_seconds={LATENCY_WAIT:g}"
    )
    print(
        f"  {'endpoint':<10} {'RTT':>3} {'c':>2}  {'side':<18} {'deleted/s':>9} {'limit':>5} "
        f"{'fraction':>8} {'-ref':>5} | {'recv/s':>6} {'duty':>4} {'ms':>6} "
        f"{'ask/got/all':>11} | {'calls':>5} {'size':>7} {'peak':>4} {'ms':>5} | dup"
    )
    for run in runs:
        dispatched = run["side"] in (DISPATCHER, ASYNCIO_DISPATCHER)
        verdict = ("met" if run["met"] else "NOT met") if dispatched else ""
        asked = (
            f"{run['receives_asking_10']}/{run['receives_with_10']}/{run['receives_while_stocked']}"
        )
        sizes = f"{run['delete_size_median']:g}/{run['delete_size_max']}"
        gap = run.get("fraction_minus_reference")
        gap_text = f"{gap:>+5.2f}" if dispatched and gap is not None else f"{'':>5}"
        print(
            f"  {run['endpoint']:<10} {run['rtt_ms']:>3.0f} {run['concurrent_receives']:>2}  "
            f"{run['side']:<18} {run['steady_msgs_per_second']:>9.1f} "
            f"{run['limit_msgs_per_second']:>5.0f} {run['fraction_of_limit']:>8.2f} {gap_text} | "
            f"{run['received_msgs_per_second']:>6.1f} {run['receive_duty']:>4.2f} "
            f"{run['receive_call_ms_median']:>6.1f} {asked:>11} | "
            f"{run['delete_calls']:>5} {sizes:>7} {run['peak_deletes_in_flight']:>4} "
            f"{run['delete_call_ms_median']:>5.0f} | {run['duplicates']:>3}  {verdict}"
        )


def report(payload: dict[str, Any]) -> None:
    print_machine(payload["machine"])
    if payload["part1"]:
        report_part_one(payload)
    if payload["latency"]:
        report_latency(payload["latency"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"comma-separated parts to run, of {', '.join(PARTS)} (all); memory alone starts "
        "no moto server",
    )
    parser.add_argument("--messages", type=int, default=500, help="SQS messages per run (500)")
    parser.add_argument("--per-queue", type=int, default=50, help="messages per fresh queue (50)")
    parser.add_argument(
        "--memory-messages", type=int, default=10000, help="memory messages per run (10000)"
    )
    parser.add_argument("--repeat", type=int, default=5, help="repetitions of part 1 (5)")
    parser.add_argument("--rtts", default="50,100", help="injected round trips, ms (50,100)")
    parser.add_argument("--concurrency", default="1,2,4", help="concurrent_receives (1,2,4)")
    parser.add_argument(
        "--rounds", type=int, default=20, help="batches of 10 per receiver under latency (20)"
    )
    parser.add_argument(
        "--localstack",
        default=os.environ.get(LOCALSTACK_ENV),
        help=f"also run against this LocalStack (default: ${LOCALSTACK_ENV})",
    )
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    args = parser.parse_args()
    parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    if not parts or any(part not in PARTS for part in parts):
        parser.error(f"--parts takes a comma-separated list of {', '.join(PARTS)}")
    if args.per_queue < BATCH or args.per_queue % BATCH or args.messages % args.per_queue:
        parser.error("--per-queue must be a multiple of 10 and divide --messages")
    if min(args.messages, args.memory_messages, args.repeat, args.rounds) < 1:
        parser.error("--messages, --memory-messages, --repeat and --rounds must be >= 1")
    try:
        rtts = [float(value) / 1000 for value in args.rtts.split(",") if value]
        concurrency = [int(value) for value in args.concurrency.split(",") if value]
    except ValueError:
        parser.error("--rtts and --concurrency take comma-separated numbers")
    if any(rtt <= 0 for rtt in rtts) or any(value < 1 for value in concurrency):
        parser.error("RTTs must be > 0 ms and concurrency >= 1")

    part1: dict[str, Any] = {}
    if "memory" in parts:
        memory = measure_memory(args.memory_messages, args.repeat)
        headline = [side for side, spec in MEMORY_SIDES.items() if spec.headline]
        part1["memory"] = part_one(memory, HAND_LOOP, headline)
    latency: list[dict[str, Any]] = []
    if "localsqs" in parts or "latency" in parts:
        with opened_endpoints(args.localstack) as endpoints:
            messages = encoded_messages(args.messages)
            for endpoint in endpoints if "localsqs" in parts else ():
                rates = measure_sqs(endpoint, messages, args.per_queue, args.repeat)
                part1[endpoint.label] = part_one(rates, BOTO3_LOOP, [DISPATCHER])
            for endpoint in endpoints if "latency" in parts else ():
                latency.extend(measure_latency(endpoint, rtts, concurrency, args.rounds))
    payload = {
        "benchmark": "consumer_throughput",
        "machine": machine(),
        "parts": parts,
        "memory_sides": {
            name: {
                "driver": side.driver,
                "options": side.options,
                "async_consumer": side.async_consumer,
                "headline": side.headline,
            }
            for name, side in MEMORY_SIDES.items()
        },
        "dispatcher_options": DISPATCHER_OPTIONS,
        "workers4_options": WORKERS4_OPTIONS,
        "memory_wait_seconds": MEMORY_WAIT,
        "memory_idle_seconds": MEMORY_IDLE,
        "sqs_wait_seconds": SQS_WAIT,
        "latency_wait_seconds": LATENCY_WAIT,
        "messages": args.messages,
        "per_queue": args.per_queue,
        "memory_messages": args.memory_messages,
        "repeat": args.repeat,
        "rounds": args.rounds,
        "rtts_ms": [rtt * 1000 for rtt in rtts],
        "concurrency": concurrency,
        "endpoints": {"moto": "moto server started by the script", "localstack": args.localstack},
        "part1": part1,
        "latency": with_reference(latency),
        "goal_fraction_of_limit": GOAL_FRACTION,
    }
    if args.json:
        dump_json(payload)
    else:
        report(payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
