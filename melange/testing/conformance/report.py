"""Pytest plugin that writes a machine-readable report of a conformance run.

Load it explicitly from the ``conftest.py`` at the root of a test suite::

    pytest_plugins = ["melange.testing.conformance.report"]

and run ``pytest --melange-report=DIR`` (or set ``MELANGE_CONFORMANCE_REPORT=DIR``).
For every backend the suite ran against, ``DIR/<backend-name>.json`` holds the
backend's name, class, distribution version and capabilities, and per test its
outcome (``passed``, ``failed``, ``skipped``, ``xfailed`` or ``xpassed``), the
capabilities it required, the skip or xfail reason and its duration.

The plugin also registers the ``melange_requires`` marker, so a plugin's own
test suite can run with ``--strict-markers`` without declaring it. Without the
option or the environment variable it records nothing and writes nothing.

It works the same with pytest-xdist (``-n``): the process that runs a test
attaches what the report needs (name, required capabilities, collection
position, backend) to the test's reports as plain JSON, which xdist carries to
the controller; the controller, which sees reports but no test items, writes
the files, in collection order as a run without xdist does.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import importlib.metadata
import json
import os
from collections import Counter
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from melange.backends.base import MessagingBackend

REPORT_OPTION = "--melange-report"
REPORT_ENV = "MELANGE_CONFORMANCE_REPORT"
REQUIRES_MARKER = "melange_requires"
REPORT_FORMAT = 1
"""Version of the JSON layout; bumped when a field changes meaning or disappears."""

OUTCOMES = ("passed", "failed", "skipped", "xfailed", "xpassed")

BACKEND_INFO = pytest.StashKey[dict[str, Any]]()
"""Where the suite's autouse fixture leaves :func:`describe_backend` for the running test."""

REPORT_ATTRIBUTE = "melange_conformance"
"""Attribute of a conformance test's reports holding what the recorder needs (plain JSON)."""

_COLLECTION_INDEX = pytest.StashKey[int]()


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--melange-report=DIR``."""
    group = parser.getgroup("melange", "melange conformance suite")
    group.addoption(
        REPORT_OPTION,
        dest="melange_report",
        metavar="DIR",
        default=None,
        help=(
            "write one JSON report per backend run through the melange conformance suite "
            f"into DIR (default: ${REPORT_ENV}, else no report)"
        ),
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the capability marker and, when a report is wanted, the recorder."""
    config.addinivalue_line(
        "markers",
        f"{REQUIRES_MARKER}(*capabilities): the conformance test needs these backend capabilities",
    )
    directory = config.getoption("melange_report") or os.environ.get(REPORT_ENV)
    if not directory:
        return
    # Whoever runs tests (a plain run, an xdist worker) labels their reports...
    config.pluginmanager.register(_ReportLabeller(), "melange-conformance-labeller")
    # ...and whoever sees every report (a plain run, the xdist controller) writes the files.
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(ConformanceRecorder(Path(directory)), "melange-conformance")


def describe_backend(backend: MessagingBackend) -> dict[str, Any]:
    """Return what the report says about ``backend``: name, class, version, capabilities."""
    cls = type(backend)
    distribution, version = _distribution_of(cls.__module__)
    return {
        "name": backend.name,
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "distribution": distribution,
        "version": version,
        "capabilities": _jsonable(dataclasses.asdict(backend.capabilities)),
    }


@functools.cache
def _distribution_of(module: str) -> tuple[str | None, str | None]:
    """Return the installed distribution providing ``module``'s top-level package, if any.

    Tried in order: a distribution registering a backend from that package
    (works for editable installs too), the installed files' top-level
    packages, then a distribution named like the package (``melange_aws`` ->
    ``melange-aws``).
    """
    top_level = module.partition(".")[0]
    candidates: list[str] = []
    for entry_point in importlib.metadata.entry_points(group="melange.backends"):
        dist = getattr(entry_point, "dist", None)
        if dist is not None and entry_point.module.partition(".")[0] == top_level:
            candidates.append(dist.metadata["Name"])
    candidates += importlib.metadata.packages_distributions().get(top_level, [])
    candidates.append(top_level)
    for name in candidates:
        try:
            return name, importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None, None


def _jsonable(value: Any) -> Any:
    """Turn capability values (tuples, frozensets) into plain JSON values."""
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (frozenset, set)):
        return sorted(_jsonable(item) for item in value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


def _is_conformance_item(item: pytest.Item) -> bool:
    cls = getattr(item, "cls", None)
    return bool(cls is not None and getattr(cls, "melange_conformance_suite", False))


def _class_key(nodeid: str) -> str:
    """``path::TestClass`` of a test's node id: the tests of one backend configuration."""
    return nodeid.split("[", 1)[0].rsplit("::", 1)[0]


def _failure_reason(report: pytest.TestReport) -> str:
    """The first line of what went wrong, prefixed with the phase (setup, call, teardown)."""
    if isinstance(report.longrepr, str):  # e.g. "[XPASS(strict)] reason"
        return report.longrepr
    crash = getattr(report.longrepr, "reprcrash", None)
    message = str(getattr(crash, "message", "") or "").strip()
    return f"{report.when}: {message.splitlines()[0]}" if message else f"{report.when} failed"


def _skip_reason(report: pytest.TestReport) -> str | None:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return None if longrepr is None else str(longrepr)


class _ReportLabeller:
    """Attaches :data:`REPORT_ATTRIBUTE` to the reports of conformance tests, where they run."""

    @pytest.hookimpl(trylast=True)  # after deselection and any reordering
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for index, item in enumerate(items):
            item.stash[_COLLECTION_INDEX] = index

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        if _is_conformance_item(item):
            label = {
                "name": getattr(item, "originalname", item.name),
                "requires": [
                    str(arg) for mark in item.iter_markers(REQUIRES_MARKER) for arg in mark.args
                ],
                "index": item.stash.get(_COLLECTION_INDEX, None),
                "backend": item.stash.get(BACKEND_INFO, None),
            }
            setattr(report, REPORT_ATTRIBUTE, label)
        return report


@dataclasses.dataclass
class _TestRecord:
    nodeid: str
    name: str
    requires: list[str]
    index: int | None = None
    outcome: str = "passed"
    reason: str | None = None
    duration: float = 0.0
    backend: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "nodeid": self.nodeid,
            "name": self.name,
            "outcome": self.outcome,
            "requires": self.requires,
            "reason": self.reason,
            "duration": round(self.duration, 4),
        }


class ConformanceRecorder:
    """Collects the outcome of every conformance test and writes the reports at the end.

    It reads test reports only (what an xdist controller receives), never test items.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.records: dict[str, _TestRecord] = {}
        self.written: list[tuple[Path, str, Counter[str]]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Fold one phase (setup, call, teardown) into the test's record."""
        label: dict[str, Any] | None = getattr(report, REPORT_ATTRIBUTE, None)
        record = self.records.get(report.nodeid)
        if record is None:
            if label is None:  # not a conformance test
                return
            record = _TestRecord(
                report.nodeid, str(label["name"]), list(label["requires"]), label["index"]
            )
            self.records[report.nodeid] = record
        record.duration += report.duration
        # A report xdist makes up for a crashed worker has no label: it still fails the test.
        if record.backend is None and label is not None:
            record.backend = label["backend"]
        self._fold_outcome(record, report)

    @staticmethod
    def _fold_outcome(record: _TestRecord, report: pytest.TestReport) -> None:
        xfail_reason: str | None = getattr(report, "wasxfail", None)
        if report.failed:
            # A failure in any phase (a strict XPASS included) makes the test failed.
            if record.outcome != "failed":
                record.outcome, record.reason = "failed", _failure_reason(report)
        elif report.skipped:
            if xfail_reason is not None:
                record.outcome, record.reason = "xfailed", xfail_reason
            else:
                record.outcome, record.reason = "skipped", _skip_reason(report)
        elif report.when == "call" and xfail_reason is not None:
            record.outcome, record.reason = "xpassed", xfail_reason

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Write one report per backend."""
        groups = self._group_by_backend()
        if not groups:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        generated = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        for name, (backend, records) in sorted(groups.items()):
            totals = Counter({outcome: 0 for outcome in OUTCOMES})
            totals.update(record.outcome for record in records)
            document = {
                "format": REPORT_FORMAT,
                "generated_at": generated,
                "melange_version": _distribution_of("melange")[1],
                "backend": backend,
                "totals": {**totals, "total": len(records)},
                "tests": [record.as_json() for record in records],
            }
            path = self.directory / f"{_safe_filename(name)}.json"
            path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
            self.written.append((path, name, totals))

    def _group_by_backend(self) -> dict[str, tuple[dict[str, Any], list[_TestRecord]]]:
        # A test skipped by a mark never ran the fixture that describes the backend:
        # it belongs to the backend its sibling tests (same class) ran against.
        class_backend: dict[str, dict[str, Any]] = {}
        for record in self.records.values():
            if record.backend is not None:
                class_backend.setdefault(_class_key(record.nodeid), record.backend)
        groups: dict[str, tuple[dict[str, Any], list[_TestRecord]]] = {}
        # Collection order, whatever order (or xdist worker) the tests ran in.
        in_order = sorted(
            self.records.values(),
            key=lambda record: -1 if record.index is None else record.index,
        )
        for record in in_order:
            key = _class_key(record.nodeid)
            backend = record.backend or class_backend.get(key)
            if backend is None:
                name = "unknown-" + key.rsplit("::", 1)[-1]
                backend = {
                    "name": None,
                    "class": None,
                    "distribution": None,
                    "version": None,
                    "capabilities": None,
                }
            else:
                name = str(backend["name"])
            groups.setdefault(name, (backend, []))[1].append(record)
        return groups

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        """Print one line per written report."""
        for path, name, totals in self.written:
            counts = ", ".join(f"{totals[outcome]} {outcome}" for outcome in OUTCOMES)
            terminalreporter.write_line(
                f"melange conformance report for {name!r}: {counts} -> {path}"
            )


def _safe_filename(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "backend"
