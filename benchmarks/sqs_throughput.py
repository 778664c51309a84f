"""SQS throughput over real HTTP: melange's ``localsqs`` backend against raw boto3 and kombu.

One moto server (``python -m moto.server``, started by this script on a free port) serves every
side. Three workloads move the same number of messages with the same body:

* ``publish single``: one message per call. melange ``backend.publish(name, [message])``;
  boto3 ``send_message``; kombu ``Producer.publish``.
* ``publish batch x10``: ten messages per call. melange ``backend.publish(name, ten)``; boto3
  ``send_message_batch`` with ten entries. kombu has no batch publish: its line is the
  one-per-call publish, reported for information.
* ``receive + delete``: from a queue filled beforehand (not timed), receive up to ten per call
  and delete them. melange ``backend.receive(name, max_messages=10)`` + ``backend.ack(...)``;
  boto3 ``receive_message`` + ``delete_message_batch``; kombu a ``Consumer`` with
  ``prefetch_count=10`` driven by ``drain_events`` (``ReceiveMessage`` of up to ten) and
  ``Message.ack`` (kombu deletes one message per call).

melange publishes a single message with ``SendMessageBatch`` (one entry); an extra line, boto3
``send_message_batch`` with one entry, compares that operation like with like.

moto gets slower as a queue grows, so every run spreads its messages over fresh queues of
``--per-queue`` messages (created, filled for receive runs, checked and deleted outside the
timing): after each run the script checks that every message arrived (publish) or that the
queues are empty (receive). Runs interleave queue by queue in rotating, alternating order within
one process, so each repetition's figures of every side cover the same stretch of time; the
headline ratios are the medians of the per-repetition ratios. The client's CPU time (this
process; moto is another) is reported next to the throughput.

Before timing, an untimed pass records the API calls of every run (botocore's
``BaseClient._make_api_call``): melange making more calls than raw boto3 for the same work (a
per-call ``GetQueueUrl``, say) makes the script exit with status 1; melange's URL cache is
filled, and its one-time SNS probe made, before any timed part.

Usage: ``.venv/bin/python benchmarks/sqs_throughput.py [--messages 500] [--per-queue 50]
[--repeat 5] [--body-size 256] [--json]``. ``--no-network`` measures the client's cost alone
(melange against boto3, both answered by canned responses from a botocore ``before-send``
hook); ``--profile`` prints a cProfile of melange's workloads on those canned responses.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from _bench import dump_json, machine, print_machine, summary

REGION = "us-east-1"
ACCESS_KEY = SECRET_KEY = "test"  # moto accepts any credentials
BATCH = 10
GOAL_BOTO3 = 0.95
GOAL_KOMBU = 2.0
KOMBU_WAIT = 0  # no long polling on any side: the queues are filled before receiving
# What melange's receive asks SQS for (it needs them to build a ReceivedMessage); raw boto3
# asks the same, so both make the same request. The untimed check pass compares them.
RECEIVE_OPTIONS: dict[str, Any] = {
    "MessageAttributeNames": ["All"],
    "MessageSystemAttributeNames": ["ApproximateReceiveCount", "MessageGroupId"],
}
CHECK_QUEUES, CHECK_PER_QUEUE = 2, 20  # size of the untimed pass that counts API calls

PUBLISH_SINGLE = "publish single"
PUBLISH_BATCH = "publish batch x10"
RECEIVE = "receive + delete"
WORKLOAD_NAMES = (PUBLISH_SINGLE, PUBLISH_BATCH, RECEIVE)


@dataclass
class BenchQueue:
    """A fresh SQS queue for one run."""

    name: str
    url: str


@dataclass
class Bench:
    """What every run shares: the endpoint, the clients and the backend under test."""

    endpoint_url: str
    admin: Any  # boto3 SQS client for set-up and checks; never timed
    client: Any  # the raw boto3 SQS client being measured
    backend: Any  # melange's LocalSQSBackend being measured
    kombu_wire_body_size: int = 0  # what kombu's producer sends for the benchmark body


@dataclass
class Job:
    """One prepared run: ``go`` is the timed part and returns how many messages it moved."""

    go: Callable[[], int]
    close: Callable[[], None] = lambda: None
    fill: str | None = None  # the body to fill each queue with before timing (receive runs)


# A run moves ``per_queue`` messages through each of ``queues``, one queue after the other.
Prepare = Callable[[Bench, list[BenchQueue], int, bytes], Job]


# ---------------------------------------------------------------- melange
def _melange_knows(bench: Bench, queues: list[BenchQueue]) -> None:
    """Let the backend look each queue up now (it caches the URL), not in the timed part."""
    for queue in queues:
        if bench.backend.get_queue(queue.name) is None:
            raise SystemExit(f"melange does not see queue {queue.name!r}")


def melange_publish_single(
    bench: Bench, queues: list[BenchQueue], per_queue: int, body: bytes
) -> Job:
    from melange.backends.base import OutgoingMessage

    publish = bench.backend.publish

    _melange_knows(bench, queues)

    def go() -> int:
        sent = 0
        for queue in queues:
            for _ in range(per_queue):
                results = publish(queue.name, [OutgoingMessage(body=body)])
                sent += results[0].ok
        return sent

    return Job(go)


def melange_publish_batch(
    bench: Bench, queues: list[BenchQueue], per_queue: int, body: bytes
) -> Job:
    from melange.backends.base import OutgoingMessage

    publish = bench.backend.publish

    _melange_knows(bench, queues)

    def go() -> int:
        sent = 0
        for queue in queues:
            for _ in range(per_queue // BATCH):
                results = publish(queue.name, [OutgoingMessage(body=body) for _ in range(BATCH)])
                sent += sum(result.ok for result in results)
        return sent

    return Job(go)


def melange_receive(bench: Bench, queues: list[BenchQueue], per_queue: int, body: bytes) -> Job:
    receive, ack = bench.backend.receive, bench.backend.ack

    _melange_knows(bench, queues)

    def go() -> int:
        total = 0
        for queue in queues:
            received = empty = 0
            while received < per_queue and empty < 3:
                messages = receive(queue.name, max_messages=BATCH, wait_seconds=0.0)
                if not messages:
                    empty += 1
                    continue
                ack(messages)
                received += len(messages)
            total += received
        return total

    return Job(go, fill=body.decode())


# ------------------------------------------------------------------ boto3
def boto3_publish_single(
    bench: Bench, queues: list[BenchQueue], per_queue: int, body: bytes
) -> Job:
    send = bench.client.send_message

    def go() -> int:
        sent = 0
        for queue in queues:
            for _ in range(per_queue):
                text = body.decode()  # melange decodes each message's bytes body too
                response = send(QueueUrl=queue.url, MessageBody=text)
                sent += "MessageId" in response
        return sent

    return Job(go)


def boto3_publish_single_batch_call(
    bench: Bench, queues: list[BenchQueue], per_queue: int, body: bytes
) -> Job:
    send_batch = bench.client.send_message_batch

    def go() -> int:
        sent = 0
        for queue in queues:
            for _ in range(per_queue):
                entries = [{"Id": "0", "MessageBody": body.decode()}]
                response = send_batch(QueueUrl=queue.url, Entries=entries)
                sent += len(response.get("Successful", ()))
        return sent

    return Job(go)


def boto3_publish_batch(bench: Bench, queues: list[BenchQueue], per_queue: int, body: bytes) -> Job:
    send_batch = bench.client.send_message_batch

    def go() -> int:
        sent = 0
        for queue in queues:
            for _ in range(per_queue // BATCH):
                entries = [
                    {"Id": str(index), "MessageBody": body.decode()} for index in range(BATCH)
                ]
                response = send_batch(QueueUrl=queue.url, Entries=entries)
                sent += len(response.get("Successful", ()))
        return sent

    return Job(go)


def boto3_receive(bench: Bench, queues: list[BenchQueue], per_queue: int, body: bytes) -> Job:
    receive, delete_batch = bench.client.receive_message, bench.client.delete_message_batch

    def go() -> int:
        total = 0
        for queue in queues:
            received = empty = 0
            while received < per_queue and empty < 3:
                response = receive(
                    QueueUrl=queue.url,
                    MaxNumberOfMessages=BATCH,
                    WaitTimeSeconds=0,
                    **RECEIVE_OPTIONS,
                )
                messages = response.get("Messages")
                if not messages:
                    empty += 1
                    continue
                entries = [
                    {"Id": str(index), "ReceiptHandle": message["ReceiptHandle"]}
                    for index, message in enumerate(messages)
                ]
                response = delete_batch(QueueUrl=queue.url, Entries=entries)
                if response.get("Failed"):
                    raise SystemExit(f"boto3: delete_message_batch failed: {response['Failed']}")
                received += len(messages)
            total += received
        return total

    return Job(go, fill=body.decode())


# ------------------------------------------------------------------ kombu
def _kombu_connection(bench: Bench, queues: list[BenchQueue]) -> tuple[Any, Any, list[Any]]:
    """A kombu SQS connection that knows ``queues`` (``predefined_queues``: no ListQueues)."""
    from kombu import Connection, Exchange, Queue

    host_port = bench.endpoint_url.split("://", 1)[1]
    connection = Connection(
        f"sqs://{ACCESS_KEY}:{SECRET_KEY}@{host_port}",
        transport_options={
            "region": REGION,
            "is_secure": False,  # plain http to the local server
            "wait_time_seconds": KOMBU_WAIT,
            "predefined_queues": {queue.name: {"url": queue.url} for queue in queues},
        },
    )
    channel = connection.channel()
    kombu_queues = []
    for queue in queues:
        bound = Queue(queue.name, Exchange(queue.name, type="direct"), routing_key=queue.name)
        bound = bound(channel)
        bound.declare()  # binds the queue to its exchange; no SQS call for a predefined queue
        channel.sqs(queue=queue.name)  # build the boto3 client now, not in the timed part
        kombu_queues.append(bound)
    return connection, channel, kombu_queues


def kombu_publish_single(
    bench: Bench, queues: list[BenchQueue], per_queue: int, body: bytes
) -> Job:
    from kombu import Producer

    connection, channel, kombu_queues = _kombu_connection(bench, queues)
    producers = [Producer(channel, exchange=bound.exchange) for bound in kombu_queues]

    def go() -> int:
        for queue, producer in zip(queues, producers, strict=True):
            for _ in range(per_queue):
                producer.publish(body, routing_key=queue.name)
        return per_queue * len(queues)  # kombu returns nothing; the queues are counted after

    return Job(go, close=connection.release)


def kombu_receive(bench: Bench, queues: list[BenchQueue], per_queue: int, body: bytes) -> Job:
    from kombu import Consumer, Producer

    connection, channel, kombu_queues = _kombu_connection(bench, queues)
    # Fill with what kombu's producer sends (its envelope names the queue): publish one, keep it.
    first, bound = queues[0], kombu_queues[0]
    Producer(channel, exchange=bound.exchange).publish(body, routing_key=first.name)
    probe = bench.admin.receive_message(QueueUrl=first.url, WaitTimeSeconds=0)["Messages"][0]
    bench.admin.delete_message(QueueUrl=first.url, ReceiptHandle=probe["ReceiptHandle"])
    bench.kombu_wire_body_size = len(probe["Body"])
    received = [0]

    def on_message(_body: Any, message: Any) -> None:
        message.ack()
        received[0] += 1

    def go() -> int:
        drain = connection.drain_events
        total = 0
        for bound in kombu_queues:  # one queue at a time, like the other sides
            received[0] = 0
            consumer = Consumer(
                channel, [bound], callbacks=[on_message], prefetch_count=BATCH, auto_declare=False
            )
            with consumer:
                while received[0] < per_queue:
                    try:
                        drain(timeout=5)
                    except TimeoutError:
                        break
            total += received[0]
        return total

    return Job(go, close=connection.release, fill=probe["Body"])


# Every (side, workload) pair that runs; kombu has no batch publish.
RUNS: dict[tuple[str, str], Prepare] = {
    ("melange", PUBLISH_SINGLE): melange_publish_single,
    ("boto3", PUBLISH_SINGLE): boto3_publish_single,
    ("kombu", PUBLISH_SINGLE): kombu_publish_single,
    ("boto3 batch-of-1", PUBLISH_SINGLE): boto3_publish_single_batch_call,
    ("melange", PUBLISH_BATCH): melange_publish_batch,
    ("boto3", PUBLISH_BATCH): boto3_publish_batch,
    ("melange", RECEIVE): melange_receive,
    ("boto3", RECEIVE): boto3_receive,
    ("kombu", RECEIVE): kombu_receive,
}


# ----------------------------------------------------------------- harness
@dataclass
class CallLog:
    """The botocore API calls made in a block."""

    counts: Counter[str] = field(default_factory=Counter)
    # Last parameters of each operation, without the URL, bodies and entries.
    params: dict[str, dict[str, Any]] = field(default_factory=dict)


@contextlib.contextmanager
def counting_calls() -> Iterator[CallLog]:
    """Record every botocore API call made in the block, on any client, by operation name."""
    from botocore.client import BaseClient

    original = BaseClient._make_api_call
    log = CallLog()

    def counted(self: Any, operation_name: str, api_params: dict[str, Any]) -> Any:
        log.counts[operation_name] += 1
        log.params[operation_name] = {
            key: value
            for key, value in api_params.items()
            if key not in ("QueueUrl", "MessageBody", "Entries")
        }
        return original(self, operation_name, api_params)

    BaseClient._make_api_call = counted  # type: ignore[method-assign]
    try:
        yield log
    finally:
        BaseClient._make_api_call = original  # type: ignore[method-assign]


def new_queue(bench: Bench, label: str) -> BenchQueue:
    name = f"bench-{label.replace(' ', '-').replace('+', 'and')}-{uuid.uuid4().hex[:10]}"
    return BenchQueue(name, bench.admin.create_queue(QueueName=name)["QueueUrl"])


def fill(bench: Bench, queue: BenchQueue, count: int, text: str) -> None:
    entries = [{"Id": str(index), "MessageBody": text} for index in range(BATCH)]
    for start in range(0, count, BATCH):
        bench.admin.send_message_batch(QueueUrl=queue.url, Entries=entries[: count - start])


def queue_depth(bench: Bench, queue: BenchQueue) -> tuple[int, int]:
    """Visible and in-flight messages (exact on moto)."""
    attributes = bench.admin.get_queue_attributes(
        QueueUrl=queue.url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (
        int(attributes["ApproximateNumberOfMessages"]),
        int(attributes["ApproximateNumberOfMessagesNotVisible"]),
    )


def run_once(
    bench: Bench,
    side: str,
    workload: str,
    queue_count: int,
    per_queue: int,
    body: bytes,
    calls: CallLog | None = None,
) -> tuple[float, float]:
    """Time one run over fresh queues; check every message went through.

    ``calls`` (when given) receives the API calls the timed part made.

    Returns:
        Wall-clock seconds of the timed part, and the CPU seconds this process spent in it
        (the client's work; the moto server is another process).
    """
    queues = [new_queue(bench, f"{side}-{workload}") for _ in range(queue_count)]
    try:
        job = RUNS[side, workload](bench, queues, per_queue, body)
        try:
            if job.fill is not None:
                for queue in queues:
                    fill(bench, queue, per_queue, job.fill)
            gc.collect()
            with counting_calls() if calls is not None else contextlib.nullcontext() as counted:
                start, start_cpu = time.perf_counter(), time.process_time()
                moved = job.go()
                elapsed = time.perf_counter() - start
                cpu = time.process_time() - start_cpu
            if calls is not None and counted is not None:
                calls.counts.update(counted.counts)
                calls.params.update(counted.params)
        finally:
            job.close()
        expected = queue_count * per_queue
        depths = [queue_depth(bench, queue) for queue in queues]
        if workload == RECEIVE:
            left = sum(visible + in_flight for visible, in_flight in depths)
            if moved != expected or left:
                raise SystemExit(
                    f"{side} {workload}: received {moved} of {expected}, {left} left in the queues"
                )
        elif moved != expected or any(visible != per_queue for visible, _ in depths):
            raise SystemExit(
                f"{side} {workload}: {moved} of {expected} reported sent; messages in the "
                f"queues: {[visible for visible, _ in depths]}, {per_queue} expected in each"
            )
    finally:
        for queue in queues:
            bench.admin.delete_queue(QueueUrl=queue.url)
    return elapsed, cpu


def check_calls(bench: Bench, body: bytes) -> dict[str, Any]:
    """Record the API calls of every run on 2 queues of 20 messages (untimed), and compare.

    melange making more calls than raw boto3 for the same work is an error; the same number
    of calls with other operations or parameters is reported as a difference.
    """
    calls: dict[str, dict[str, dict[str, int]]] = {}
    receive_parameters: dict[str, dict[str, Any]] = {}
    for side, workload in RUNS:
        log = CallLog()
        run_once(bench, side, workload, CHECK_QUEUES, CHECK_PER_QUEUE, body, calls=log)
        calls.setdefault(workload, {})[side] = dict(sorted(log.counts.items()))
        if workload == RECEIVE:
            receive_parameters[side] = log.params.get("ReceiveMessage", {})
    extra, differences = [], []
    for workload, sides in calls.items():
        ours, theirs = sides["melange"], sides["boto3"]
        if sum(ours.values()) > sum(theirs.values()):
            extra.append(f"{workload}: melange {ours}, boto3 {theirs}")
        elif ours != theirs:
            differences.append(f"{workload}: melange {ours}, boto3 {theirs}")
    if receive_parameters["melange"] != receive_parameters["boto3"]:
        differences.append(
            f"ReceiveMessage parameters: melange {receive_parameters['melange']}, "
            f"boto3 {receive_parameters['boto3']}"
        )
    return {
        "queues": CHECK_QUEUES,
        "per_queue": CHECK_PER_QUEUE,
        "calls": calls,
        "receive_parameters": receive_parameters,
        "melange_extra_calls": extra,
        "differences": differences,
    }


@dataclass
class Samples:
    """One value per repetition for every run name (``"<side> <workload>"``)."""

    msgs_per_second: dict[str, list[float]]
    client_cpu_us_per_msg: dict[str, list[float]]


def measure(bench: Bench, queue_count: int, per_queue: int, repeat: int, body: bytes) -> Samples:
    """Throughput and client CPU of every run, ``repeat`` times.

    Within a repetition the runs interleave queue by queue: every (side, workload) moves one
    fresh queue's messages in rotating, alternating order, then the next queue. Each side's
    figures for a repetition so cover the same stretch of time, and the per-repetition ratios
    pair measurements taken under the same load.
    """
    names = list(RUNS)
    labels = [f"{side} {workload}" for side, workload in names]
    samples = Samples({label: [] for label in labels}, {label: [] for label in labels})
    step = 0
    for _ in range(repeat):
        wall = dict.fromkeys(labels, 0.0)
        cpu = dict.fromkeys(labels, 0.0)
        for _ in range(queue_count):
            shift = step % len(names)
            order = names[shift:] + names[:shift]
            if step % 2:
                order.reverse()
            step += 1
            for side, workload in order:
                elapsed, spent = run_once(bench, side, workload, 1, per_queue, body)
                wall[f"{side} {workload}"] += elapsed
                cpu[f"{side} {workload}"] += spent
        moved = queue_count * per_queue
        for label in labels:
            samples.msgs_per_second[label].append(moved / wall[label])
            samples.client_cpu_us_per_msg[label].append(cpu[label] / moved * 1e6)
    return samples


def profile(messages: int, body: bytes) -> None:
    """Print where melange's workloads spend the client's time (canned responses, no network).

    Over HTTP the profile is mostly waiting on sockets; without the network, what is left is
    melange's code and botocore's, and melange's own functions are listed apart.
    """
    import cProfile
    import pstats

    bench = canned_bench()
    for workload in WORKLOAD_NAMES:
        job = RUNS["melange", workload](bench, [NO_NETWORK_QUEUE], messages, body)
        job.go()  # warm-up
        profiler = cProfile.Profile()
        profiler.runcall(job.go)
        print(f"==== melange {workload}, {messages} messages, canned responses")
        stats = pstats.Stats(profiler, stream=sys.stdout)
        stats.sort_stats("tottime").print_stats(12)
        stats.sort_stats("cumulative").print_stats(r"melange", 25)
    bench.backend.close()


# -------------------------------------------------------------- no network
NO_NETWORK_URL = "http://127.0.0.1:9"  # never contacted: botocore's before-send answers
NO_NETWORK_QUEUE = BenchQueue("canned", f"{NO_NETWORK_URL}/123456789012/canned")


class _CannedBody:
    """The raw body of a canned HTTP response, as botocore reads it."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_options: Any) -> Iterator[bytes]:
        yield self._data

    def read(self, *_args: Any, **_kwargs: Any) -> bytes:
        return self._data


def canned_response(request: Any, **_kwargs: Any) -> Any:
    """Answer an SQS request the way SQS would, without sending it (a ``before-send`` hook)."""
    import json

    from botocore.awsrequest import AWSResponse

    target = request.headers.get("X-Amz-Target", b"")
    operation = (target.decode() if isinstance(target, bytes) else target).rsplit(".", 1)[-1]
    params = json.loads(request.body or b"{}")
    answers: dict[str, Callable[[], dict[str, Any]]] = {
        "GetQueueUrl": lambda: {"QueueUrl": NO_NETWORK_QUEUE.url},
        "GetQueueAttributes": lambda: {"Attributes": {"VisibilityTimeout": "30"}},
        "SendMessage": lambda: {"MessageId": uuid.uuid4().hex},
        "SendMessageBatch": lambda: {
            "Successful": [
                {"Id": entry["Id"], "MessageId": uuid.uuid4().hex} for entry in params["Entries"]
            ]
        },
        "DeleteMessageBatch": lambda: {
            "Successful": [{"Id": entry["Id"]} for entry in params["Entries"]]
        },
        "ReceiveMessage": lambda: {
            "Messages": [
                {
                    "MessageId": uuid.uuid4().hex,
                    "ReceiptHandle": uuid.uuid4().hex,
                    "Body": "x" * 256,
                    "Attributes": {"ApproximateReceiveCount": "1"},
                }
                for _ in range(params.get("MaxNumberOfMessages", 1))
            ]
        },
    }
    body = json.dumps(answers[operation]()).encode()
    headers = {"Content-Type": "application/x-amz-json-1.0"}
    return AWSResponse(request.url, 200, headers, _CannedBody(body))


def canned_bench() -> Bench:
    """melange and a raw boto3 client, both answered by :func:`canned_response`."""
    import boto3
    from melange_localsqs import LocalSQSBackend

    backend = LocalSQSBackend(endpoint_url=NO_NETWORK_URL, sns=True)
    client = boto3.session.Session(
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name=REGION
    ).client("sqs", endpoint_url=NO_NETWORK_URL)
    for events in (backend.sqs_client.meta.events, client.meta.events):
        events.register("before-send.sqs", canned_response)
    return Bench(NO_NETWORK_URL, None, client, backend)


def no_network(repeat: int, messages: int, body: bytes) -> dict[str, Any]:
    """Client CPU per message of melange and raw boto3 when SQS answers instantly.

    Both clients get the same canned responses from a botocore ``before-send`` hook, so the
    figures are the client's own cost (melange + botocore), with no server and no socket: the
    ratio is the worst case melange/boto3 throughput ratio, for an endpoint of zero latency.
    """
    bench = canned_bench()
    names = [(side, workload) for side, workload in RUNS if side in ("melange", "boto3")]
    names.append(("boto3 batch-of-1", PUBLISH_SINGLE))
    cpu: dict[str, list[float]] = {f"{side} {workload}": [] for side, workload in names}
    jobs = {name: RUNS[name](bench, [NO_NETWORK_QUEUE], messages, body) for name in names}
    for job in jobs.values():  # warm-up, not recorded
        job.go()
    for rep in range(repeat):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for side, workload in reversed(order) if rep % 2 else order:
            gc.collect()
            start = time.process_time()
            jobs[side, workload].go()
            cpu[f"{side} {workload}"].append((time.process_time() - start) / messages * 1e6)
    bench.backend.close()
    medians = {name: statistics.median(values) for name, values in cpu.items()}
    return {
        "messages": messages,
        "repeat": repeat,
        "client_cpu_us_per_msg": {name: summary(values) for name, values in cpu.items()},
        # boto3's cost over melange's: the throughput ratio melange/boto3 with a free network.
        "ratio_melange_over_boto3": {
            workload: medians[f"boto3 {workload}"] / medians[f"melange {workload}"]
            for workload in WORKLOAD_NAMES
        },
        "extra_ratio_melange_over_boto3_batch_of_1": (
            medians[f"boto3 batch-of-1 {PUBLISH_SINGLE}"] / medians[f"melange {PUBLISH_SINGLE}"]
        ),
    }


def report_no_network(result: dict[str, Any]) -> None:
    print_machine(machine())
    print(
        f"no network: canned SQS responses from a botocore before-send hook, "
        f"{result['messages']} messages per run, {result['repeat']} repetitions"
    )
    for name, stats in result["client_cpu_us_per_msg"].items():
        print(
            f"  {name:<34} median {stats['median']:>7.1f} us/msg client CPU  "
            f"(min {stats['min']:.1f}, max {stats['max']:.1f})"
        )
    for workload, ratio in result["ratio_melange_over_boto3"].items():
        print(f"ratio melange/boto3 (boto3 cost / melange cost), {workload}: {ratio:.3f}x")
    print(
        "extra: melange/boto3 batch-of-1, publish single: "
        f"{result['extra_ratio_melange_over_boto3_batch_of_1']:.3f}x"
    )


@contextlib.contextmanager
def started_bench() -> Iterator[Bench]:
    """Start the moto server, build the clients and the backend; stop everything after."""
    import boto3
    from melange_localsqs import LocalSQSBackend
    from melange_localsqs.testing import MotoServer

    with MotoServer() as server:
        session = boto3.session.Session(
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name=REGION
        )
        admin = session.client("sqs", endpoint_url=server.endpoint_url)
        client = session.client("sqs", endpoint_url=server.endpoint_url)
        backend = LocalSQSBackend(endpoint_url=server.endpoint_url)
        # The backend asks the endpoint once whether it has SNS (ListTopics) on the first look
        # at its capabilities, which publish makes: ask now, outside any timed part.
        backend.capabilities  # noqa: B018
        try:
            yield Bench(server.endpoint_url, admin, client, backend)
        finally:
            backend.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=500, help="messages per run (500)")
    parser.add_argument(
        "--per-queue", type=int, default=50, help="messages per fresh queue (50, a multiple of 10)"
    )
    parser.add_argument("--repeat", type=int, default=5, help="repetitions (default 5)")
    parser.add_argument("--body-size", type=int, default=256, help="body bytes (default 256)")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile melange's workloads (canned responses)"
    )
    parser.add_argument(
        "--no-network",
        action="store_true",
        help="client cost only: canned SQS responses instead of the moto server",
    )
    args = parser.parse_args()
    if args.per_queue < BATCH or args.per_queue % BATCH or args.messages % args.per_queue:
        parser.error("--per-queue must be a multiple of 10 and divide --messages")
    if args.messages < 1 or args.repeat < 1 or args.body_size < 1:
        parser.error("need --messages >= 1, --repeat >= 1, --body-size >= 1")
    body = b"x" * args.body_size
    queue_count = args.messages // args.per_queue
    if args.no_network:
        result = no_network(args.repeat, args.messages, body)
        if args.json:
            dump_json({"benchmark": "sqs_throughput --no-network", "machine": machine(), **result})
        else:
            report_no_network(result)
        return 0

    if args.profile:
        profile(args.messages, body)
        return 0
    with started_bench() as bench:
        # Untimed pass: warms every code path and records each side's API calls.
        api_check = check_calls(bench, body)
        samples = measure(bench, queue_count, args.per_queue, args.repeat, body)
        kombu_wire_body_size = bench.kombu_wire_body_size

    comparisons = {
        label: compare(samples, ours, theirs, goal)
        for label, (ours, theirs, goal) in COMPARISONS.items()
    }
    payload = {
        "benchmark": "sqs_throughput",
        "machine": machine(),
        "endpoint": "moto server (python -m moto.server) on 127.0.0.1, started by the script",
        "messages": args.messages,
        "per_queue": args.per_queue,
        "repeat": args.repeat,
        "body_size": args.body_size,
        "kombu_wire_body_size": kombu_wire_body_size,
        "msgs_per_second": {k: summary(v) for k, v in samples.msgs_per_second.items()},
        "client_cpu_us_per_msg": {k: summary(v) for k, v in samples.client_cpu_us_per_msg.items()},
        "samples_msgs_per_second": samples.msgs_per_second,
        "samples_client_cpu_us_per_msg": samples.client_cpu_us_per_msg,
        "api_calls_check": api_check,
        "comparisons": comparisons,
    }
    if args.json:
        dump_json(payload)
    else:
        report(payload)
    return 1 if api_check["melange_extra_calls"] else 0


# label -> (ours, theirs, goal or None); ratios are ours/theirs in msgs/s.
COMPARISONS: dict[str, tuple[str, str, float | None]] = {
    f"melange/boto3, {PUBLISH_SINGLE}": (
        f"melange {PUBLISH_SINGLE}",
        f"boto3 {PUBLISH_SINGLE}",
        GOAL_BOTO3,
    ),
    f"melange/boto3, {PUBLISH_BATCH}": (
        f"melange {PUBLISH_BATCH}",
        f"boto3 {PUBLISH_BATCH}",
        GOAL_BOTO3,
    ),
    f"melange/boto3, {RECEIVE}": (f"melange {RECEIVE}", f"boto3 {RECEIVE}", GOAL_BOTO3),
    f"melange/kombu, {PUBLISH_SINGLE}": (
        f"melange {PUBLISH_SINGLE}",
        f"kombu {PUBLISH_SINGLE}",
        GOAL_KOMBU,
    ),
    # kombu has no batch publish: ten messages cost it ten calls.
    f"melange/kombu, {PUBLISH_BATCH} (kombu: one per call)": (
        f"melange {PUBLISH_BATCH}",
        f"kombu {PUBLISH_SINGLE}",
        GOAL_KOMBU,
    ),
    f"melange/kombu, {RECEIVE}": (f"melange {RECEIVE}", f"kombu {RECEIVE}", GOAL_KOMBU),
    # Extra: the same operation on both sides (melange sends one message as a batch of one).
    f"extra: melange/boto3 batch-of-1, {PUBLISH_SINGLE}": (
        f"melange {PUBLISH_SINGLE}",
        f"boto3 batch-of-1 {PUBLISH_SINGLE}",
        None,
    ),
}


def compare(samples: Samples, ours: str, theirs: str, goal: float | None) -> dict[str, Any]:
    """Ratios of two runs: paired per repetition (the headline) and of the medians."""
    rates = samples.msgs_per_second
    paired = [mine / other for mine, other in zip(rates[ours], rates[theirs], strict=True)]
    cpu = samples.client_cpu_us_per_msg
    headline = statistics.median(paired)
    return {
        "ours": ours,
        "theirs": theirs,
        "ratio": headline,
        "paired_ratios": paired,
        "ratio_of_medians": statistics.median(rates[ours]) / statistics.median(rates[theirs]),
        "client_cpu_ratio": statistics.median(cpu[ours]) / statistics.median(cpu[theirs]),
        "goal_at_least": goal,
        "met": None if goal is None else headline >= goal,
    }


def report(payload: dict[str, Any]) -> None:
    """Print the human-readable result."""
    print_machine(payload["machine"])
    print(
        f"SQS over HTTP to one moto server: {payload['messages']} messages of "
        f"{payload['body_size']} bytes per run and repetition, {payload['per_queue']} per fresh "
        f"queue; kombu sends {payload['kombu_wire_body_size']} bytes (its envelope); "
        f"{payload['repeat']} repetitions, runs interleaved queue by queue"
    )
    cpu = payload["client_cpu_us_per_msg"]
    for name, stats in payload["msgs_per_second"].items():
        print(
            f"  {name:<34} median {stats['median']:>7,.0f} msgs/s  "
            f"(min {stats['min']:,.0f}, max {stats['max']:,.0f})  "
            f"client CPU {cpu[name]['median']:>6,.0f} us/msg"
        )
    check = payload["api_calls_check"]
    print(
        f"API calls of the timed part for {check['queues']} queues x {check['per_queue']} "
        "messages (untimed pass):"
    )
    for workload, sides in check["calls"].items():
        print(f"  {workload}: " + "; ".join(f"{side} {calls}" for side, calls in sides.items()))
    for extra in check["melange_extra_calls"]:
        print(f"  ERROR, melange makes more calls than boto3: {extra}")
    for difference in check["differences"]:
        print(f"  difference (same number of calls): {difference}")
    print("ratios in msgs/s, median of the per-repetition ratios (min-max); client CPU ratio:")
    for label, result in payload["comparisons"].items():
        paired = result["paired_ratios"]
        goal = result["goal_at_least"]
        verdict = (
            "" if goal is None else f"  goal >= {goal}x: {'met' if result['met'] else 'NOT met'}"
        )
        print(
            f"  {label:<56} {result['ratio']:.2f}x ({min(paired):.2f}-{max(paired):.2f})  "
            f"CPU {result['client_cpu_ratio']:.2f}x{verdict}"
        )


if __name__ == "__main__":
    sys.exit(main())
