"""Pub/Sub throughput on Google's emulator: melange's ``gcp`` backend against the raw client.

One Pub/Sub emulator (started by this script on a free port, through
``melange_gcp.testing.PubSubEmulator``) serves both sides. The raw side is the
GAPIC client of google-cloud-pubsub (``google.pubsub_v1.PublisherClient`` /
``SubscriberClient``), the same client melange calls, making the same RPCs:

* ``publish single``: one message per call. melange ``backend.publish(queue, [message])``;
  raw ``Publish`` with one message.
* ``publish batch x100``: a hundred messages per call. melange ``backend.publish(queue,
  hundred)``; raw ``Publish`` with a hundred messages.
* ``pull + ack``: from a queue filled beforehand (not timed), up to 100 per call, then
  acknowledge them. melange ``backend.receive(queue, max_messages=100)`` +
  ``backend.ack(...)``; raw ``Pull`` (``return_immediately``) + ``Acknowledge``.

In every repetition each side gets a fresh queue (a topic and its subscription of the same
name, made by melange's factory outside the timing), checked afterwards: every message
published arrived, or the subscription is empty. The two sides move their messages in chunks
of ``--chunk`` (100), alternating chunk by chunk (and who goes first), so both share the same
moments of a busy machine; the headline ratios (melange throughput over raw throughput, goal
>= 0.95) are the medians of the per-repetition ratios.

Usage: ``.venv/bin/python benchmarks/gcp_throughput.py [--messages 1000] [--repeat 7]
[--chunk 100] [--body-size 256] [--json]``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from _bench import dump_json, machine, print_machine, summary

PROJECT = "melange-bench"
BATCH = 100
GOAL = 0.95
TIMEOUT = 60.0

PUBLISH_SINGLE = "publish single"
PUBLISH_BATCH = f"publish batch x{BATCH}"
PULL = "pull + ack"
WORKLOADS = (PUBLISH_SINGLE, PUBLISH_BATCH, PULL)
SIDES = ("melange", "raw")


@dataclass
class Bench:
    """What every run shares: the melange backend and the raw GAPIC clients."""

    backend: Any
    publisher: Any
    subscriber: Any

    def topic(self, name: str) -> str:
        return f"projects/{PROJECT}/topics/{name}"

    def subscription(self, name: str) -> str:
        return f"projects/{PROJECT}/subscriptions/{name}"


def _melange(bench: Bench, workload: str, queue: str, count: int, body: bytes) -> int:
    from melange.backends.base import OutgoingMessage

    backend = bench.backend
    moved = 0
    if workload == PUBLISH_SINGLE:
        for _ in range(count):
            moved += backend.publish(queue, [OutgoingMessage(body)])[0].ok
    elif workload == PUBLISH_BATCH:
        for _ in range(count // BATCH):
            results = backend.publish(queue, [OutgoingMessage(body) for _ in range(BATCH)])
            moved += sum(result.ok for result in results)
    else:
        empty = 0
        while moved < count and empty < 3:
            received = backend.receive(queue, max_messages=BATCH)
            if not received:
                empty += 1
                continue
            backend.ack(received)
            moved += len(received)
    return moved


def _raw(bench: Bench, workload: str, queue: str, count: int, body: bytes) -> int:
    publish, pull, acknowledge = (
        bench.publisher.publish,
        bench.subscriber.pull,
        bench.subscriber.acknowledge,
    )
    topic, subscription = bench.topic(queue), bench.subscription(queue)
    moved = 0
    if workload == PUBLISH_SINGLE:
        for _ in range(count):
            response = publish(
                request={"topic": topic, "messages": [{"data": body}]}, timeout=TIMEOUT
            )
            moved += len(response.message_ids)
    elif workload == PUBLISH_BATCH:
        for _ in range(count // BATCH):
            messages = [{"data": body} for _ in range(BATCH)]
            response = publish(request={"topic": topic, "messages": messages}, timeout=TIMEOUT)
            moved += len(response.message_ids)
    else:
        empty = 0
        while moved < count and empty < 3:
            response = pull(
                request={
                    "subscription": subscription,
                    "max_messages": BATCH,
                    "return_immediately": True,
                },
                timeout=TIMEOUT,
            )
            received = response.received_messages
            if not received:
                empty += 1
                continue
            ack_ids = [item.ack_id for item in received]
            acknowledge(request={"subscription": subscription, "ack_ids": ack_ids}, timeout=TIMEOUT)
            moved += len(received)
    return moved


RUNNERS: dict[str, Callable[[Bench, str, str, int, bytes], int]] = {
    "melange": _melange,
    "raw": _raw,
}


def _fill(bench: Bench, queue: str, count: int, body: bytes) -> None:
    for start in range(0, count, BATCH):
        messages = [{"data": body} for _ in range(min(BATCH, count - start))]
        bench.publisher.publish(request={"topic": bench.topic(queue), "messages": messages})


def _backlog(bench: Bench, queue: str) -> int:
    """Messages left in the queue's subscription (pulled, counted and released)."""
    left = 0
    while True:
        response = bench.subscriber.pull(
            request={
                "subscription": bench.subscription(queue),
                "max_messages": 1000,
                "return_immediately": True,
            }
        )
        if not response.received_messages:
            return left
        left += len(response.received_messages)
        bench.subscriber.acknowledge(
            request={
                "subscription": bench.subscription(queue),
                "ack_ids": [item.ack_id for item in response.received_messages],
            }
        )


def run_pair(bench: Bench, workload: str, count: int, chunk: int, body: bytes) -> dict[str, float]:
    """Time both sides on one workload, interleaved chunk by chunk; check every message.

    Each side gets a fresh queue of its own. The ``count`` messages of each side move in
    chunks of ``chunk``, melange's and raw's chunks alternating (who goes first alternates
    too), so both sides share the same moments of a noisy machine.

    Returns:
        Seconds each side spent in its timed chunks, by side.
    """
    from melange import MessagingBackendFactory

    token = uuid.uuid4().hex[:10]
    queues = {side: f"bench-{side}-{workload.split()[0]}-{token}" for side in SIDES}
    factory = MessagingBackendFactory(bench.backend)
    for queue in queues.values():
        factory.init_queue(queue, visibility_timeout=60.0)
    try:
        if workload == PULL:
            for queue in queues.values():
                _fill(bench, queue, count, body)
        elapsed = dict.fromkeys(SIDES, 0.0)
        moved = dict.fromkeys(SIDES, 0)
        gc.collect()
        for step in range(count // chunk):
            for side in SIDES if step % 2 == 0 else tuple(reversed(SIDES)):
                start = time.perf_counter()
                moved[side] += RUNNERS[side](bench, workload, queues[side], chunk, body)
                elapsed[side] += time.perf_counter() - start
        expected_left = 0 if workload == PULL else count
        for side, queue in queues.items():
            left = _backlog(bench, queue)
            if moved[side] != count or left != expected_left:
                raise SystemExit(
                    f"{side} {workload}: moved {moved[side]} of {count}; {left} left in the "
                    f"queue, {expected_left} expected"
                )
    finally:
        for queue in queues.values():
            bench.backend.delete_queue(queue)
    return elapsed


def measure(
    bench: Bench, count: int, chunk: int, repeat: int, body: bytes
) -> dict[str, list[float]]:
    """Messages per second of every (side, workload), ``repeat`` times."""
    rates: dict[str, list[float]] = {f"{side} {w}": [] for w in WORKLOADS for side in SIDES}
    for rep in range(repeat):
        shift = rep % len(WORKLOADS)
        for workload in WORKLOADS[shift:] + WORKLOADS[:shift]:
            elapsed = run_pair(bench, workload, count, chunk, body)
            for side in SIDES:
                rates[f"{side} {workload}"].append(count / elapsed[side])
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000, help="messages per run")
    parser.add_argument("--repeat", type=int, default=7, help="repetitions of every run")
    parser.add_argument(
        "--chunk", type=int, default=BATCH, help="messages per alternation between the sides"
    )
    parser.add_argument("--body-size", type=int, default=256, help="bytes per message body")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    if args.chunk % BATCH or args.messages % args.chunk:
        parser.error(f"--chunk must be a multiple of {BATCH}, and --messages of --chunk")

    from google.pubsub_v1 import PublisherClient, SubscriberClient
    from melange_gcp import GCPPubSubBackend
    from melange_gcp.testing import PubSubEmulator

    body = bytes(index % 251 for index in range(args.body_size))
    with PubSubEmulator() as emulator:
        backend = GCPPubSubBackend(project=PROJECT, emulator_host=emulator.host_port)
        # The raw side: the same GAPIC clients, on a channel of their own to the same emulator.
        import grpc

        channel = grpc.insecure_channel(
            emulator.host_port,
            options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)],
        )
        from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
        from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

        bench = Bench(
            backend,
            PublisherClient(transport=PublisherGrpcTransport(channel=channel)),
            SubscriberClient(transport=SubscriberGrpcTransport(channel=channel)),
        )
        for workload in WORKLOADS:  # warm-up, not recorded
            run_pair(bench, workload, BATCH, BATCH, body)
        rates = measure(bench, args.messages, args.chunk, args.repeat, body)
        backend.close()
        channel.close()

    ratios = {
        workload: statistics.median(
            ours / theirs
            for ours, theirs in zip(
                rates[f"melange {workload}"], rates[f"raw {workload}"], strict=True
            )
        )
        for workload in WORKLOADS
    }
    result = {
        "benchmark": "gcp_throughput",
        "machine": machine(),
        "messages": args.messages,
        "repeat": args.repeat,
        "chunk": args.chunk,
        "body_size": args.body_size,
        "msgs_per_second": {name: summary(values) for name, values in rates.items()},
        "ratio_melange_over_raw": ratios,
        "goal": GOAL,
        "meets_goal": all(ratio >= GOAL for ratio in ratios.values()),
    }
    if args.json:
        dump_json(result)
        return
    print_machine(result["machine"])
    print(
        f"Pub/Sub emulator, {args.messages} messages per run, {args.repeat} repetitions, "
        f"{args.body_size}-byte bodies"
    )
    print(f"{'run':<28} {'median msg/s':>13} {'min':>9} {'max':>9}")
    for name, stats in result["msgs_per_second"].items():
        print(f"{name:<28} {stats['median']:>13.0f} {stats['min']:>9.0f} {stats['max']:>9.0f}")
    for workload, ratio in ratios.items():
        mark = "ok" if ratio >= GOAL else "BELOW GOAL"
        print(f"ratio melange/raw, {workload:<20} {ratio:.3f}x  (goal >= {GOAL}) {mark}")


if __name__ == "__main__":
    sys.exit(main())
