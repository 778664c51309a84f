"""The consumer runtime's cost per message in CPU instructions, counted by valgrind: no noise.

``consumer_throughput.py`` measures messages per second, and on a shared virtual machine its
hand loop alone moves by a factor of two from one run to the next, so a change of a few percent
cannot be seen there. Instructions can: ``valgrind --tool=callgrind`` counts every instruction
the process executes, the same count for the same code and input whatever else the machine is
doing.

Each side of ``consumer_throughput.py``'s memory part (the hand loop, both drivers with their
default options) consumes N pre-filled messages in a child process run under callgrind, once
with ``--low`` and once with ``--high`` messages; the difference of the two totals, divided by
the difference of the counts, is what one more message costs, start-up and shutdown cancelled
out. A ``fill`` side that only builds and publishes the messages is subtracted from every side,
so what remains is receiving, decoding, handling and acknowledging. The headline is the hand
loop's count divided by each side's: the instruction counterpart of the msgs/s ratio, whose
goal is 0.6.

Under callgrind everything runs about 50 times slower, and the drivers make decisions by the
clock (a handler taking 0.5 ms or more counts as slow and makes them hand the next messages to
other threads). So the child multiplies the runtime's time thresholds by ``--scale`` (50 by
default), and the drivers decide as they do at full speed; ``--scale 1`` shows the difference.
An instruction is not a fixed time (C code such as ``json.loads`` runs more instructions per
nanosecond than the interpreter's loop), so the ratio is a yardstick for changes to the
runtime, not a substitute for the msgs/s benchmark.

Usage: ``.venv/bin/python benchmarks/consumer_instructions.py [--low 1000] [--high 3000]
[--scale 50] [--sides "hand loop;threads, defaults;..."] [--json]`` (about 10 minutes;
needs ``valgrind`` on PATH).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
FILL = "fill"
DEFAULT_SIDES = (
    "hand loop",
    "threads, defaults",
    "asyncio, defaults",
    "asyncio, defaults, async def",
)
# The runtime's decisions by the clock, as (module, name): scaled in the child under callgrind.
THRESHOLDS = (
    ("melange._runtime", "SLOW_HANDLER"),
    ("melange._runtime", "HANDOFF_DELAY"),
    ("melange.dispatcher", "SLOW_HANDLER"),
    ("melange.dispatcher", "HANDOFF_DELAY"),
    ("melange.dispatcher", "REPORT_AFTER"),
    ("melange.dispatcher", "WATCH_MAX"),
    ("melange.aio.dispatcher", "SLOW_HANDLER"),
    ("melange.aio.dispatcher", "HANDOFF_DELAY"),
    ("melange.settlement", "FILL_WAIT"),
    ("melange.settlement", "ACK_MAX_WAIT"),
    ("melange._schedule", "FILL_WAIT"),
)


def child(side: str, count: int, scale: float) -> None:
    """Build and publish ``count`` messages, then consume them with ``side`` (under callgrind)."""
    import importlib

    from consumer_throughput import (
        BATCH,
        LOOP,
        MEMORY_SIDES,
        Handled,
        encoded_messages,
        run_dispatcher,
    )

    from melange.backends.memory import MemoryBackend
    from melange.topology import QueueSpec

    for module_name, name in THRESHOLDS:
        module = importlib.import_module(module_name)
        setattr(module, name, getattr(module, name) * scale)
    messages = encoded_messages(count)
    backend = MemoryBackend()
    backend.declare_queue(QueueSpec("bench"))
    for start in range(0, count, BATCH):
        backend.publish("bench", messages[start : start + BATCH])
    if side == FILL:
        return
    handled = Handled()
    chosen = MEMORY_SIDES[side]
    if chosen.driver == LOOP:
        receive, ack, loads = backend.receive, backend.ack, json.loads
        while batch := receive("bench", BATCH, 0.0):
            for message in batch:
                handled(loads(message.body))
            ack(batch)
    else:  # wait_seconds=0: the defaults' last long poll would only add idle instructions
        run_dispatcher(
            chosen.driver,
            backend,
            "bench",
            handled,
            0.2 * scale,
            async_consumer=chosen.async_consumer,
            **{**chosen.options, "wait_seconds": 0.0},
        )
    if handled.count != count or handled.duplicates or backend.queue_depth("bench") != (0, 0, 0):
        raise SystemExit(f"{side}: handled {handled.count} of {count}, {handled.duplicates} twice")


def instructions(side: str, count: int, scale: float) -> int:
    """Instructions the child executes for ``side`` and ``count`` messages, by callgrind."""
    command = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
        sys.executable, __file__, "--child", side, str(count), str(scale),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=HERE)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode or found is None:
        raise SystemExit(f"{side}, {count} messages: callgrind failed:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--low", type=int, default=1000)
    parser.add_argument("--high", type=int, default=3000)
    parser.add_argument("--scale", type=float, default=50.0, help="time thresholds x this")
    parser.add_argument("--sides", default=";".join(DEFAULT_SIDES), help="names joined by ';'")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        side, count, scale = args.child
        child(side, int(count), float(scale))
        return 0
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not on PATH (Debian: apt-get install valgrind)")
    if args.high <= args.low:
        raise SystemExit("--high must be more than --low")
    sides = _split_sides(args.sides)
    per_message: dict[str, float] = {}
    for side in (FILL, *sides):
        low = instructions(side, args.low, args.scale)
        high = instructions(side, args.high, args.scale)
        per_message[side] = (high - low) / (args.high - args.low)
    fill = per_message.pop(FILL)
    consuming = {side: cost - fill for side, cost in per_message.items()}
    loop = consuming.get("hand loop")
    result: dict[str, Any] = {
        "low": args.low,
        "high": args.high,
        "scale": args.scale,
        "python": sys.version.split()[0],
        "fill_per_message": round(fill),
        "sides": {
            side: {
                "instructions_per_message": round(cost),
                "hand_loop_ratio": None if loop is None else round(loop / cost, 3),
            }
            for side, cost in consuming.items()
        },
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"instructions per message consumed (callgrind; {args.high} - {args.low} messages, "
        f"time thresholds x{args.scale:g}, building and publishing subtracted: "
        f"{fill:,.0f} a message)"
    )
    for side, values in result["sides"].items():
        ratio = values["hand_loop_ratio"]
        shown = "" if ratio is None else f"   hand loop / this: {ratio:.2f}x"
        print(f"  {side:32s} {values['instructions_per_message']:>9,d}{shown}")
    return 0


def _split_sides(text: str) -> list[str]:
    """The side names of ``--sides`` (joined by ';': the names hold commas)."""
    from consumer_throughput import MEMORY_SIDES

    sides = [name.strip() for name in text.split(";") if name.strip()]
    unknown = [name for name in sides if name not in MEMORY_SIDES]
    if unknown:
        raise SystemExit(f"unknown side(s) {unknown}; the sides: {'; '.join(MEMORY_SIDES)}")
    return sides


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    os.environ.setdefault("PYTHONHASHSEED", "0")  # set dict/set orders, the same every run
    raise SystemExit(main())
