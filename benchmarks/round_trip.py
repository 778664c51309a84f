"""Publish + receive + ack round trips: melange's memory backend against kombu's ``memory://``.

Every workload moves the same number of messages with the same body (raw bytes on both sides,
no serializer) through one in-process queue, and every message is published, received and
acknowledged. Workloads run in one process, several repetitions, in rotating order, each on a
fresh backend/connection; set-up is not timed.

Like-with-like comparisons (the headline is the first):

* ``single``: per message, publish one, receive one, ack it (melange ``publish(name, [msg])`` +
  ``receive(name, max_messages=1)`` + ``ack``; kombu ``Producer.publish`` + ``Queue.get``
  (``basic_get``) + ``Message.ack``).
* ``backlog``: publish all messages one by one, then receive and ack them one by one, so the
  queue is deep while receiving.

Extra lines, not part of the comparison: melange batched (10 messages per publish, receive
``max_messages=10``, one ack call for the 10) and kombu through ``SimpleQueue``.

Usage: ``.venv/bin/python benchmarks/round_trip.py [--messages N] [--repeat R] [--json]``;
``--profile`` prints a cProfile of melange's ``single`` workload instead.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from typing import Any

from _bench import dump_json, machine, print_machine, summary

GOAL_RATIO = 2.0
QUEUE = "bench"
BATCH = 10

Workload = Callable[[int, bytes], float]


# ------------------------------------------------------------------ melange
def _melange_backend() -> Any:
    from melange.backends.memory import MemoryBackend
    from melange.topology import QueueSpec

    backend = MemoryBackend()
    backend.declare_queue(QueueSpec(QUEUE))
    return backend


def _melange_finish(backend: Any, received: int, expected: int) -> None:
    leftover = backend.receive(QUEUE, max_messages=10)
    backend.close()
    if received != expected or leftover:
        raise SystemExit(
            f"melange: received {received} of {expected} messages, {len(leftover)} left over"
        )


def melange_single(count: int, body: bytes) -> float:
    """Publish one, receive one, ack it; ``count`` times."""
    from melange.backends.base import OutgoingMessage

    backend = _melange_backend()
    publish, receive, ack = backend.publish, backend.receive, backend.ack
    received = 0
    gc.collect()
    start = time.perf_counter()
    for _ in range(count):
        publish(QUEUE, [OutgoingMessage(body=body)])
        messages = receive(QUEUE, max_messages=1)
        ack(messages)
        received += len(messages)
    elapsed = time.perf_counter() - start
    _melange_finish(backend, received, count)
    return elapsed


def melange_backlog(count: int, body: bytes) -> float:
    """Publish ``count`` messages one by one, then receive and ack them one by one."""
    from melange.backends.base import OutgoingMessage

    backend = _melange_backend()
    publish, receive, ack = backend.publish, backend.receive, backend.ack
    received = 0
    gc.collect()
    start = time.perf_counter()
    for _ in range(count):
        publish(QUEUE, [OutgoingMessage(body=body)])
    for _ in range(count):
        messages = receive(QUEUE, max_messages=1)
        ack(messages)
        received += len(messages)
    elapsed = time.perf_counter() - start
    _melange_finish(backend, received, count)
    return elapsed


def melange_batched(count: int, body: bytes) -> float:
    """Publish 10 per call, receive up to 10 per call, ack them in one call."""
    from melange.backends.base import OutgoingMessage

    backend = _melange_backend()
    publish, receive, ack = backend.publish, backend.receive, backend.ack
    received = 0
    gc.collect()
    start = time.perf_counter()
    for _ in range(count // BATCH):
        publish(QUEUE, [OutgoingMessage(body=body) for _ in range(BATCH)])
        wanted = received + BATCH
        while received < wanted:
            messages = receive(QUEUE, max_messages=BATCH)
            if not messages:
                break
            ack(messages)
            received += len(messages)
    elapsed = time.perf_counter() - start
    _melange_finish(backend, received, count // BATCH * BATCH)
    return elapsed


# -------------------------------------------------------------------- kombu
def _kombu_queue() -> tuple[Any, Any, Any]:
    from kombu import Connection, Exchange, Producer, Queue

    connection = Connection("memory://")
    channel = connection.channel()
    exchange = Exchange(QUEUE, type="direct")
    queue = Queue(QUEUE, exchange, routing_key=QUEUE)(channel)
    queue.declare()
    # A fresh memory:// connection shares the transport's state; start from an empty queue.
    queue.purge()
    producer = Producer(channel, exchange=exchange, routing_key=QUEUE)
    return connection, queue, producer


def _kombu_finish(connection: Any, queue: Any, received: int, expected: int) -> None:
    leftover = queue.get(no_ack=True)
    connection.release()
    if received != expected or leftover is not None:
        raise SystemExit(f"kombu: received {received} of {expected} messages, or some left over")


def kombu_single(count: int, body: bytes) -> float:
    """Publish one, get one (``basic_get``), ack it; ``count`` times."""
    connection, queue, producer = _kombu_queue()
    publish, get = producer.publish, queue.get
    received = 0
    gc.collect()
    start = time.perf_counter()
    for _ in range(count):
        publish(body, routing_key=QUEUE)
        message = get(no_ack=False)
        message.ack()
        received += 1
    elapsed = time.perf_counter() - start
    _kombu_finish(connection, queue, received, count)
    return elapsed


def kombu_backlog(count: int, body: bytes) -> float:
    """Publish ``count`` messages one by one, then get and ack them one by one."""
    connection, queue, producer = _kombu_queue()
    publish, get = producer.publish, queue.get
    received = 0
    gc.collect()
    start = time.perf_counter()
    for _ in range(count):
        publish(body, routing_key=QUEUE)
    for _ in range(count):
        message = get(no_ack=False)
        message.ack()
        received += 1
    elapsed = time.perf_counter() - start
    _kombu_finish(connection, queue, received, count)
    return elapsed


def kombu_simple_queue(count: int, body: bytes) -> float:
    """The ``single`` workload through kombu's ``SimpleQueue`` convenience API."""
    from kombu import Connection

    connection = Connection("memory://")
    simple = connection.SimpleQueue(QUEUE + "-simple")
    simple.clear()
    put, get = simple.put, simple.get_nowait
    received = 0
    gc.collect()
    start = time.perf_counter()
    for _ in range(count):
        put(body)
        message = get()
        message.ack()
        received += 1
    elapsed = time.perf_counter() - start
    leftover = simple.qsize()
    simple.close()
    connection.release()
    if received != count or leftover:
        raise SystemExit(f"kombu SimpleQueue: received {received} of {count}, {leftover} left")
    return elapsed


WORKLOADS: dict[str, Workload] = {
    "melange single": melange_single,
    "kombu single": kombu_single,
    "melange backlog": melange_backlog,
    "kombu backlog": kombu_backlog,
    "melange batched x10": melange_batched,
    "kombu SimpleQueue single": kombu_simple_queue,
}
COMPARISONS = {
    "single": ("melange single", "kombu single"),
    "backlog": ("melange backlog", "kombu backlog"),
}
HEADLINE = "single"


def measure(messages: int, repeat: int, body: bytes) -> dict[str, list[float]]:
    """Messages per second of every workload, ``repeat`` times, in rotating order."""
    for workload in WORKLOADS.values():  # warm-up: imports, caches; not recorded
        workload(min(messages, 1000), body)
    rates: dict[str, list[float]] = {name: [] for name in WORKLOADS}
    names = list(WORKLOADS)
    for rep in range(repeat):
        shift = rep % len(names)
        order = names[shift:] + names[:shift]
        if rep % 2:
            order.reverse()
        for name in order:
            count = messages // BATCH * BATCH if "batched" in name else messages
            rates[name].append(count / WORKLOADS[name](messages, body))
    return rates


def profile(messages: int, body: bytes) -> None:
    """Print where melange's ``single`` workload spends its time."""
    import cProfile
    import pstats

    melange_single(min(messages, 1000), body)
    profiler = cProfile.Profile()
    profiler.enable()
    melange_single(messages, body)
    profiler.disable()
    stats = pstats.Stats(profiler, stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(25)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20000, help="messages per run")
    parser.add_argument("--repeat", type=int, default=7, help="repetitions (default 7)")
    parser.add_argument("--body-size", type=int, default=256, help="body bytes (default 256)")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument("--profile", action="store_true", help="cProfile melange single")
    args = parser.parse_args()
    if args.messages < BATCH or args.repeat < 1 or args.body_size < 0:
        parser.error("need --messages >= 10, --repeat >= 1, --body-size >= 0")
    body = b"x" * args.body_size
    if args.profile:
        profile(args.messages, body)
        return 0

    rates = measure(args.messages, args.repeat, body)
    stats = {name: summary(values) for name, values in rates.items()}
    ratios = {
        label: stats[ours]["median"] / stats[theirs]["median"]
        for label, (ours, theirs) in COMPARISONS.items()
    }
    payload = {
        "benchmark": "round_trip",
        "machine": machine(),
        "messages": args.messages,
        "repeat": args.repeat,
        "body_size": args.body_size,
        "msgs_per_second": stats,
        "samples_msgs_per_second": rates,
        "ratio_melange_over_kombu": ratios,
        "batched_over_kombu_single": (
            stats["melange batched x10"]["median"] / stats["kombu single"]["median"]
        ),
        "goal": {"ratio_at_least": GOAL_RATIO, "met": ratios[HEADLINE] >= GOAL_RATIO},
    }
    if args.json:
        dump_json(payload)
    else:
        report(payload)
    return 0


def report(payload: dict[str, Any]) -> None:
    """Print the human-readable result."""
    print_machine(payload["machine"])
    print(
        f"round trip (publish + receive + ack), {payload['messages']} messages of "
        f"{payload['body_size']} bytes, {payload['repeat']} repetitions, rotating order"
    )
    for name, stats in payload["msgs_per_second"].items():
        print(
            f"  {name:<26} median {stats['median']:>10,.0f} msgs/s  "
            f"(min {stats['min']:,.0f}, max {stats['max']:,.0f})"
        )
    for label, ratio in payload["ratio_melange_over_kombu"].items():
        print(f"ratio melange/kombu, {label}: {ratio:.2f}x")
    print(f"extra: melange batched x10 / kombu single: {payload['batched_over_kombu_single']:.2f}x")
    goal = payload["goal"]
    verdict = "met" if goal["met"] else "NOT met"
    print(
        f"goal: melange/kombu >= {goal['ratio_at_least']}x on {HEADLINE}: {verdict} "
        f"({payload['ratio_melange_over_kombu'][HEADLINE]:.2f}x)"
    )


if __name__ == "__main__":
    sys.exit(main())
