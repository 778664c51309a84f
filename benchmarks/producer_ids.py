"""What producer ids cost: publish and consume throughput with ``melange.id`` on, against off.

Every message a melange publisher sends carries a producer id (one attribute, assigned before
the first attempt) so that consumers with a dedup cache handle publisher-retry duplicates once.
This measures what that costs, in one run, on two backends:

- ``memory``: the embedded backend, where melange's own per-message work is all there is, so the
  id's cost is as visible as it can be;
- ``localsqs`` on a moto server over HTTP: a real network round trip per call, as in production.

For each backend and each direction, the two sides (ids on, ids off) alternate repetition by
repetition, so drift on the machine hits both alike; the headline is the median of the
per-repetition ratios (on / off, messages per second). Goal: at least 0.97.

- **publish**: ``QueuePublisher(backend, producer_ids=...).publish_batch`` of 100 payloads at a
  time (the backend splits them into its native calls).
- **consume**: a ``MessageDispatcher`` with a ``MemoryDedupCache`` (the configuration the ids
  exist for) drains a queue pre-filled with the same messages published with or without ids; the
  cache keys on the producer id when there is one, else on the broker's id.

Run: ``.venv/bin/python benchmarks/producer_ids.py [--messages 20000] [--sqs-messages 1000]
[--repeat 7] [--json]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from _bench import dump_json, machine, print_machine, summary

from melange import MessageDispatcher, MessagingBackendFactory, QueuePublisher, consumer
from melange.backends.base import MessagingBackend
from melange.backends.memory import MemoryBackend
from melange.dedup import MemoryDedupCache
from melange.observability import Hooks
from melange.serializers import SerializerRegistry

PAYLOAD = {"payment_id": "pay-0001", "amount_cents": 1250, "currency": "EUR", "status": "paid"}
CHUNK = 100
SIDES = ("ids on", "ids off")


def payloads(count: int) -> list[dict[str, Any]]:
    return [{**PAYLOAD, "n": n} for n in range(count)]


def publish(backend: MessagingBackend, queue: str, count: int, producer_ids: bool) -> float:
    """Publish ``count`` payloads; return messages per second."""
    publisher = QueuePublisher(
        backend, SerializerRegistry(), hooks=Hooks(), producer_ids=producer_ids
    )
    items = payloads(count)
    start = time.perf_counter()
    for offset in range(0, count, CHUNK):
        results = publisher.publish_batch(queue, items[offset : offset + CHUNK])
        if not all(r.ok for r in results):
            raise RuntimeError(f"publishing failed: {[r.error for r in results if not r.ok][:3]}")
    return count / (time.perf_counter() - start)


def consume(backend: MessagingBackend, queue: str, count: int, wait_seconds: float) -> float:
    """Drain ``count`` messages with a dispatcher and a dedup cache; return messages per second."""
    handled: list[int] = []

    @consumer
    def record(payload: dict[str, Any]) -> None:
        handled.append(payload["n"])

    dispatcher = MessageDispatcher(
        backend,
        queue,
        [record],
        SerializerRegistry(),
        dedup=MemoryDedupCache(),
        wait_seconds=wait_seconds,
        hooks=Hooks(),
        close_backend=False,
    )
    start = time.perf_counter()
    dispatcher.start()
    try:
        while len(handled) < count:
            if time.perf_counter() - start > 600:
                raise RuntimeError(f"only {len(handled)} of {count} handled in 600 s")
            time.sleep(0.001)
        elapsed = time.perf_counter() - start
    finally:
        dispatcher.stop()
    if sorted(handled) != list(range(count)):
        raise RuntimeError("messages were lost or handled twice")
    return count / elapsed


@contextmanager
def memory_backend() -> Iterator[tuple[MessagingBackend, float]]:
    with MemoryBackend() as backend:
        yield backend, 0.0


@contextmanager
def sqs_backend() -> Iterator[tuple[MessagingBackend, float]]:
    from melange_localsqs import LocalSQSBackend
    from melange_localsqs.testing import MotoServer

    with MotoServer() as server, LocalSQSBackend(endpoint_url=server.endpoint_url) as backend:
        yield backend, 1.0


def measure(
    opened: Callable[[], Any], count: int, repeat: int
) -> dict[str, dict[str, list[float]]]:
    """Rates per direction and side, alternating sides every repetition."""
    rates: dict[str, dict[str, list[float]]] = {
        "publish": {side: [] for side in SIDES},
        "consume": {side: [] for side in SIDES},
    }
    with opened() as (backend, wait):
        factory = MessagingBackendFactory(backend)
        for round_ in range(repeat):
            order = SIDES if round_ % 2 == 0 else tuple(reversed(SIDES))
            for side in order:
                queue = f"bench-ids-{round_}-{'on' if side == 'ids on' else 'off'}"
                factory.init_queue(queue)
                rates["publish"][side].append(publish(backend, queue, count, side == "ids on"))
                rates["consume"][side].append(consume(backend, queue, count, wait))
    return rates


def ratios(rates: dict[str, list[float]]) -> list[float]:
    return [on / off for on, off in zip(rates["ids on"], rates["ids off"], strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000, help="per run on memory")
    parser.add_argument("--sqs-messages", type=int, default=1_000, help="per run on moto")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    info = machine()
    results: dict[str, Any] = {"machine": info, "backends": {}}
    for label, opened, count in (
        ("memory", memory_backend, args.messages),
        ("localsqs (moto server)", sqs_backend, args.sqs_messages),
    ):
        rates = measure(opened, count, args.repeat)
        results["backends"][label] = {
            direction: {
                "rates": per_side,
                "summary": {side: summary(per_side[side]) for side in SIDES},
                "ratio_median": statistics.median(ratios(per_side)),
                "ratios": ratios(per_side),
            }
            for direction, per_side in rates.items()
        }
    if args.json:
        dump_json(results)
        return
    print_machine(info)
    print(
        f"{'backend':<24} {'direction':<9} {'ids on msg/s':>13} {'ids off msg/s':>14} {'on/off':>7}"
    )
    for label, directions in results["backends"].items():
        for direction, data in directions.items():
            on = data["summary"]["ids on"]["median"]
            off = data["summary"]["ids off"]["median"]
            print(
                f"{label:<24} {direction:<9} {on:>13,.0f} {off:>14,.0f} "
                f"{data['ratio_median']:>7.3f}"
            )


if __name__ == "__main__":
    main()
