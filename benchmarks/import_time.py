"""How long does ``import melange`` take next to ``import kombu``, and what does it pull in?

Two timings, each from fresh interpreters, many repetitions in rotating order:

* wall time of ``python -c "import X"`` minus a bare ``python -c pass`` measured in the same
  repetition (what a user waits for at start-up);
* ``python -X importtime``: the cumulative time the interpreter itself reports for the top-level
  package (no process start-up noise).

The headline ratio is melange/kombu of the medians (goal: at most 1.5x). Timing is reported,
never asserted.

The same run also checks, in separate fresh interpreters, that ``import melange`` (and
``import melange.backends``) imports no broker SDK and scans no entry point: stevedore is not
imported and ``importlib.metadata.entry_points`` is never called (it is wrapped with a counter
before melange is imported). A violation makes the script exit with status 1.

Usage: ``.venv/bin/python benchmarks/import_time.py [--repeat N] [--json]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Any

from _bench import dump_json, machine, print_machine, summary

TARGETS = ("melange", "kombu")
GOAL_RATIO = 1.5

# Top-level names whose presence after ``import melange`` means a broker SDK (or kombu) leaked in.
BROKER_SDK_PREFIXES = (
    "boto3",
    "botocore",
    "aiobotocore",
    "aioboto3",
    "google.cloud",
    "google.api_core",
    "google.pubsub",
    "grpc",
    "azure",
    "kombu",
    "amqp",
    "pika",
    "redis",
)

# Runs in a fresh interpreter: wrap the metadata scanners with counters, import the module,
# report what was imported and how often the scanners ran.
CHECK_CODE = r"""
import importlib.metadata as md
import json
import sys

calls = {"entry_points": 0, "distribution_discover": 0}
_entry_points = md.entry_points
_discover = md.Distribution.discover.__func__


def counting_entry_points(*args, **kwargs):
    calls["entry_points"] += 1
    return _entry_points(*args, **kwargs)


def counting_discover(cls, *args, **kwargs):
    calls["distribution_discover"] += 1
    return _discover(cls, *args, **kwargs)


md.entry_points = counting_entry_points
md.Distribution.discover = classmethod(counting_discover)
before = set(sys.modules)
import importlib

importlib.import_module(sys.argv[1])
print(json.dumps({"calls": calls, "new_modules": sorted(set(sys.modules) - before)}))
"""

# Runs in a fresh, unpatched interpreter: which modules does the import alone add?
PLAIN_CODE = r"""
import sys

before = set(sys.modules)
import importlib

importlib.import_module(sys.argv[1])
print("\n".join(sorted(set(sys.modules) - before)))
"""


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def _wall(code: str) -> float:
    """Seconds for a fresh interpreter to run ``code`` and exit."""
    start = time.perf_counter()
    done = _run([sys.executable, "-c", code])
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"python -c {code!r} failed:\n{done.stderr}")
    return elapsed


def _importtime(module: str) -> float:
    """Cumulative seconds ``-X importtime`` reports for the top-level ``module``."""
    done = _run([sys.executable, "-X", "importtime", "-c", f"import {module}"])
    if done.returncode != 0:
        raise SystemExit(f"import {module} failed:\n{done.stderr}")
    for line in done.stderr.splitlines():
        # "import time:  self [us] | cumulative | name"; nested imports have an indented name.
        if not line.startswith("import time:"):
            continue
        _, cumulative, name = line.split("|")
        if name == f" {module}":
            return int(cumulative) / 1e6
    raise SystemExit(f"-X importtime printed no line for {module!r}")


def breakdown(module: str, runs: int = 9) -> list[tuple[str, float, float]]:
    """Per imported module: median self and cumulative seconds under ``-X importtime``."""
    self_times: dict[str, list[float]] = {}
    cumulative_times: dict[str, list[float]] = {}
    for _ in range(runs):
        done = _run([sys.executable, "-X", "importtime", "-c", f"import {module}"])
        for line in done.stderr.splitlines():
            if not line.startswith("import time:") or "[us]" in line:
                continue
            own, cumulative, name = line[len("import time:") :].split("|")
            self_times.setdefault(name.strip(), []).append(int(own) / 1e6)
            cumulative_times.setdefault(name.strip(), []).append(int(cumulative) / 1e6)
    # Modules the interpreter imports at start-up are not melange's doing.
    startup = _run([sys.executable, "-X", "importtime", "-c", "pass"]).stderr
    at_startup = {line.split("|")[-1].strip() for line in startup.splitlines()}
    rows = [
        (name, statistics.median(own), statistics.median(cumulative_times[name]))
        for name, own in self_times.items()
        if name not in at_startup
    ]
    return sorted(rows, key=lambda row: row[1], reverse=True)


def measure(repeat: int) -> dict[str, dict[str, list[float]]]:
    """Time each target ``repeat`` times, rotating the order every repetition."""
    wall: dict[str, list[float]] = {target: [] for target in TARGETS}
    importtime: dict[str, list[float]] = {target: [] for target in TARGETS}
    baseline: list[float] = []
    for target in TARGETS:  # warm the bytecode caches; not timed
        _wall(f"import {target}")
    jobs = ["baseline", *TARGETS]
    for rep in range(repeat):
        shift = rep % len(jobs)
        order = jobs[shift:] + jobs[:shift]
        if rep % 2:
            order.reverse()
        times: dict[str, float] = {}
        for job in order:
            times[job] = _wall("pass" if job == "baseline" else f"import {job}")
        baseline.append(times["baseline"])
        for target in TARGETS:
            wall[target].append(times[target] - times["baseline"])
        for target in order[::-1]:
            if target in TARGETS:
                importtime[target].append(_importtime(target))
    return {"wall_minus_baseline": wall, "importtime": importtime, "baseline": {"pass": baseline}}


def check_imports(module: str) -> dict[str, Any]:
    """Import ``module`` in a fresh interpreter and report broker SDKs and metadata scans."""
    done = _run([sys.executable, "-c", CHECK_CODE, module])
    if done.returncode != 0:
        return {"module": module, "error": done.stderr.strip(), "ok": False}
    report = json.loads(done.stdout)
    # The patched run already has importlib.metadata loaded; count modules in an unpatched one.
    plain = _run([sys.executable, "-c", PLAIN_CODE, module])
    modules = sorted(set(report["new_modules"]) | set(plain.stdout.split()))
    leaked = sorted(
        name
        for name in modules
        if any(name == prefix or name.startswith(prefix + ".") for prefix in BROKER_SDK_PREFIXES)
    )
    stevedore = sorted(name for name in modules if name.split(".")[0] == "stevedore")
    ok = not leaked and not stevedore and report["calls"]["entry_points"] == 0
    return {
        "module": module,
        "ok": ok,
        "modules_imported": len(plain.stdout.split()),
        "imports_importlib_metadata": "importlib.metadata" in plain.stdout.split(),
        "melange_modules": sorted(name for name in modules if name.split(".")[0] == "melange"),
        "broker_sdk_modules": leaked,
        "stevedore_modules": stevedore,
        "entry_points_calls": report["calls"]["entry_points"],
        "distribution_discover_calls": report["calls"]["distribution_discover"],
    }


FIRST_USE = {
    "melange": "from melange import MessagingBackendFactory",
    "kombu": "from kombu import Connection",
}
"""Extra, not the goal: importing what an application uses first (both packages import lazily)."""


def measure_first_use(repeat: int) -> dict[str, list[float]]:
    """Wall time of each FIRST_USE statement, alternating the order every repetition."""
    samples: dict[str, list[float]] = {name: [] for name in FIRST_USE}
    for code in FIRST_USE.values():  # warm the bytecode caches; not timed
        _wall(code)
    for rep in range(repeat):
        base = _wall("pass")
        for name in list(FIRST_USE)[:: -1 if rep % 2 else 1]:
            samples[name].append(_wall(FIRST_USE[name]) - base)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=40, help="repetitions (default 40)")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument(
        "--breakdown",
        type=int,
        default=0,
        metavar="N",
        help="only list the N modules with the most self time in `import melange`",
    )
    args = parser.parse_args()
    if args.breakdown:
        print("self ms  cumulative ms  module  (-X importtime, median of 9 runs)")
        for name, own, cumulative in breakdown("melange")[: args.breakdown]:
            print(f"{own * 1e3:7.2f}  {cumulative * 1e3:13.2f}  {name}")
        return 0

    checks = [check_imports("melange"), check_imports("melange.backends")]
    samples = measure(args.repeat)
    results: dict[str, Any] = {}
    for metric in ("wall_minus_baseline", "importtime"):
        stats = {target: summary(samples[metric][target]) for target in TARGETS}
        ratio = stats["melange"]["median"] / stats["kombu"]["median"]
        results[metric] = {**stats, "ratio_melange_over_kombu": ratio}
    results["baseline"] = summary(samples["baseline"]["pass"])
    first_use = measure_first_use(args.repeat)
    first_stats = {name: summary(values) for name, values in first_use.items()}
    results["first_use"] = {
        **first_stats,
        "ratio_melange_over_kombu": first_stats["melange"]["median"]
        / first_stats["kombu"]["median"],
    }
    headline = results["wall_minus_baseline"]["ratio_melange_over_kombu"]
    ok = all(check["ok"] for check in checks)
    payload = {
        "benchmark": "import_time",
        "machine": machine(),
        "repeat": args.repeat,
        "results": results,
        "samples_seconds": samples,
        "goal": {"ratio_at_most": GOAL_RATIO, "met": headline <= GOAL_RATIO},
        "import_checks": checks,
        "import_checks_ok": ok,
    }
    if args.json:
        dump_json(payload)
    else:
        report(payload)
    return 0 if ok else 1


def report(payload: dict[str, Any]) -> None:
    """Print the human-readable result."""
    print_machine(payload["machine"])
    results = payload["results"]
    print(
        f"import time, {payload['repeat']} fresh interpreters each, rotating order "
        f"(bare `python -c pass`: median {results['baseline']['median'] * 1e3:.1f} ms)"
    )
    labels = {
        "wall_minus_baseline": "wall time minus `python -c pass`",
        "importtime": "-X importtime cumulative",
    }
    for metric, label in labels.items():
        row = results[metric]
        print(f"  {label}:")
        for target in TARGETS:
            stats = row[target]
            print(
                f"    import {target:<8} median {stats['median'] * 1e3:7.2f} ms  "
                f"(q1 {stats['q1'] * 1e3:.2f}, q3 {stats['q3'] * 1e3:.2f})"
            )
        print(f"    ratio melange/kombu: {row['ratio_melange_over_kombu']:.2f}x")
    first = results["first_use"]
    print("  extra, first use (wall time minus `python -c pass`):")
    for name, code in FIRST_USE.items():
        print(f"    {code:<46} median {first[name]['median'] * 1e3:7.2f} ms")
    print(f"    ratio melange/kombu: {first['ratio_melange_over_kombu']:.2f}x")
    goal = payload["goal"]
    verdict = "met" if goal["met"] else "NOT met"
    print(
        f"goal: melange/kombu <= {goal['ratio_at_most']}x on wall time: {verdict} "
        f"({results['wall_minus_baseline']['ratio_melange_over_kombu']:.2f}x)"
    )
    for check in payload["import_checks"]:
        if "error" in check:
            print(f"FAIL: import {check['module']} raised:\n{check['error']}")
            continue
        status = "ok" if check["ok"] else "FAIL"
        print(
            f"{status}: import {check['module']}: {check['modules_imported']} new modules, "
            f"broker SDK modules: {check['broker_sdk_modules'] or 'none'}, "
            f"stevedore: {check['stevedore_modules'] or 'none'}, "
            f"entry_points() calls: {check['entry_points_calls']}, "
            f"Distribution.discover() calls: {check['distribution_discover_calls']}, "
            f"importlib.metadata imported: {check['imports_importlib_metadata']}"
        )


if __name__ == "__main__":
    sys.exit(main())
