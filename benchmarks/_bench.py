"""Small helpers shared by the benchmark scripts: statistics, machine info, output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from typing import Any


def machine() -> dict[str, Any]:
    """Describe where the numbers were measured, so a reader can compare runs."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "executable": sys.executable,
    }


def summary(samples: Sequence[float]) -> dict[str, float]:
    """Median, spread and extremes of a list of samples."""
    ordered = sorted(samples)
    quartiles = statistics.quantiles(ordered, n=4) if len(ordered) >= 2 else [ordered[0]] * 3
    return {
        "median": statistics.median(ordered),
        "q1": quartiles[0],
        "q3": quartiles[2],
        "min": ordered[0],
        "max": ordered[-1],
        "n": len(ordered),
    }


def print_machine(info: dict[str, Any]) -> None:
    """Print the machine description as one header line."""
    print(
        f"machine: {info['implementation']} {info['python']}, nproc={info['nproc']}, "
        f"cpu={info['cpu']}, {info['platform']}"
    )


def dump_json(payload: dict[str, Any]) -> None:
    """Write the machine-readable result to stdout."""
    json.dump(payload, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
