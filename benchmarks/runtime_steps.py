"""Where a message's time goes in the consumer runtime, step by step, on one thread.

The same messages as ``consumer_throughput.py``'s memory part (small JSON objects encoded by
melange's ``SerializerRegistry``) are received 10 at a time from a pre-filled ``memory`` queue
and acknowledged; each line adds one more step of the runtime to what the line above did, in
one thread, without the dispatcher's pool:

1. receive + ack only;
2. + ``json.loads`` of each body: the hand-written loop of ``consumer_throughput.py``;
3. + ``SerializerRegistry.decode`` instead of ``json.loads``;
4. + the runtime's delivery objects (``Settlement.deliveries``);
5. + the consumer call through the settlement (``Settlement.call_sync``: hooks, timing);
6. + the runtime's handling step (``Runtime._handle_now``, as the threaded driver runs it);
7. + the scheduling core (``Schedule.accept``, ``Runtime._finished_all`` once per batch:
   capacity, FIFO holds, ack batching).

Each line is printed in microseconds per message and as the ratio of line 2 to it: the best a
dispatcher could reach against the hand loop with that much of the runtime and no threads. Run
with ``--hooks none`` to leave the default hooks (OpenTelemetry, when installed) out.

It reaches into private parts of the runtime on purpose; it is a diagnostic, not a test.

Usage: ``.venv/bin/python benchmarks/runtime_steps.py [--messages 20000] [--repeat 3]
[--hooks default|none]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from collections.abc import Callable
from typing import Any

from consumer_throughput import encoded_messages

from melange.backends.memory import MemoryBackend
from melange.consumers import consumer
from melange.dispatcher import MessageDispatcher
from melange.message import Message
from melange.observability import Hooks
from melange.topology import QueueSpec

BATCH = 10


@consumer
def noop(message: Message) -> None:
    """The trivial handler."""


def loads_each(dispatcher: Any, batch: list[Any]) -> None:
    for message in batch:
        json.loads(message.body)


def decode_each(dispatcher: Any, batch: list[Any]) -> None:
    for message in batch:
        dispatcher.serializers.decode(message)


def with_deliveries(dispatcher: Any, batch: list[Any]) -> None:
    for delivery in dispatcher._settlement.deliveries(batch, time.monotonic()):
        dispatcher.serializers.decode(delivery.received)


def with_consumer_call(dispatcher: Any, batch: list[Any]) -> None:
    settlement = dispatcher._settlement
    for delivery in settlement.deliveries(batch, time.monotonic()):
        message = dispatcher.serializers.decode(delivery.received)
        settlement.call_sync(noop, message, delivery.received, "")


def with_handling(dispatcher: Any, batch: list[Any]) -> None:
    for delivery in dispatcher._settlement.deliveries(batch, time.monotonic()):
        dispatcher._handle_now(delivery)


def with_scheduling(dispatcher: Any, batch: list[Any]) -> None:
    # As the threaded driver does: accept under the lock, handle one message after another,
    # free their capacity in one lock round.
    deliveries = dispatcher._settlement.deliveries(batch, time.monotonic())
    with dispatcher._lock:
        started, _ = dispatcher._schedule.accept(
            deliveries, len(deliveries), stopping=False, now=time.monotonic()
        )
    finished = [(delivery, dispatcher._handle_now(delivery)) for delivery in started]
    with dispatcher._lock:
        dispatcher._finished_all(finished)
    dispatcher._ack_queue.clear()  # this script acks the batch itself


STEPS: list[tuple[str, Callable[[Any, list[Any]], None] | None]] = [
    ("receive + ack", None),
    ("+ json.loads (the hand loop)", loads_each),
    ("+ registry decode instead", decode_each),
    ("+ delivery objects", with_deliveries),
    ("+ consumer call (settlement, hooks)", with_consumer_call),
    ("+ runtime handling step", with_handling),
    ("+ scheduling core", with_scheduling),
]


def run_step(
    step: Callable[[Any, list[Any]], None] | None, messages: list[Any], hooks: Any
) -> float:
    """Microseconds per message for one pass over ``messages``."""
    backend = MemoryBackend()
    backend.declare_queue(QueueSpec("steps"))
    for start in range(0, len(messages), BATCH):
        backend.publish("steps", messages[start : start + BATCH])
    options = {} if hooks is None else {"hooks": hooks}
    dispatcher = MessageDispatcher(backend, "steps", [noop], wait_seconds=0.0, **options)
    dispatcher._settlement.load(backend.get_queue("steps"))
    dispatcher._schedule.acks = dispatcher._settlement.ack_buffer()
    gc.collect()
    began = time.perf_counter()
    while batch := backend.receive("steps", BATCH, 0.0):
        if step is not None:
            step(dispatcher, batch)
        backend.ack(batch)
    elapsed = time.perf_counter() - began
    if backend.queue_depth("steps") != (0, 0, 0):
        raise SystemExit(f"queue not empty: {backend.queue_depth('steps')}")
    backend.close()
    return elapsed / len(messages) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3, help="passes per step; the best counts")
    parser.add_argument("--hooks", choices=("default", "none"), default="default")
    args = parser.parse_args()
    messages = encoded_messages(args.messages)
    hooks = Hooks() if args.hooks == "none" else None
    for _, step in STEPS:  # warm-up: imports (OpenTelemetry on the first handled message)
        run_step(step, messages[:1000], hooks)
    results = [
        (label, min(run_step(step, messages, hooks) for _ in range(args.repeat)))
        for label, step in STEPS
    ]
    loop = results[1][1]
    print(f"{args.messages} messages, one thread, best of {args.repeat}; hooks: {args.hooks}")
    for label, micros in results:
        print(f"  {label:38s} {micros:6.2f} us/msg   hand loop / this: {loop / micros:4.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
