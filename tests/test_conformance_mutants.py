"""The conformance suite must fail every broken backend of ``tests/mutants.py``.

Each mutant is a memory backend that breaks exactly one rule. For each one, the suite's
topology and data mixins run in this process (``pytest.main`` on a generated module) against the
mutant, on a ``ManualClock`` as in ``tests/test_conformance_memory.py``, with ``-x``: the run stops
at the first failing test, which is reported as the one that caught the mutant. A mutant that
passes every test has escaped, and its test fails naming the mutant and the rule it breaks.

The runtime mixin (publishers and dispatcher over the contract) is left out of these runs: it
takes about 12 s per run, and every rule of the catalogue is one the topology and data tests
state. The control run, the unmodified memory backend through the same harness, must pass.

On memory a message is receivable the moment it is published, so the runs poll for expected
messages 1 s instead of 10 s (``POLL_TIMEOUT``): that only shortens the failures.

What caught which mutant goes to ``build/conformance-mutants.json`` (one entry per mutant,
merged across xdist workers) and is printed (``pytest -rP``).
"""

from __future__ import annotations

import fcntl
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest
from mutants import CATALOGUE, rule_of

from melange.backends.memory import MemoryBackend

REPORT = Path(__file__).resolve().parents[1] / "build" / "conformance-mutants.json"

SUITE_MODULE = """
import pytest

from melange.clock import ManualClock
from melange.testing.conformance import DataConformance, TopologyConformance
from melange.testing.conformance import _support


# pytest runs inherited tests in reverse MRO order: topology first, then data.
class TestMutant(DataConformance, TopologyConformance):
    @pytest.fixture(autouse=True)
    def _short_polls(self, monkeypatch):
        monkeypatch.setattr(_support, "POLL_TIMEOUT", 1.0)

    @pytest.fixture
    def clock(self):
        return ManualClock()

    @pytest.fixture
    def melange_backend(self, clock, melange_backend_class):
        backend = melange_backend_class(clock=clock)
        yield backend
        if not backend.closed:
            backend.close()

    @pytest.fixture
    def melange_wait(self, clock):
        return clock.advance

    @pytest.fixture
    def melange_delivery(self):
        return "exactly-once"
"""


@dataclass
class Verdict:
    """What one run of the suite against one backend showed."""

    backend: str
    rule: str = ""
    guide: str = ""
    passed: int = 0
    failed: list[str] = field(default_factory=list)
    error: str = ""
    exit_code: int = 0

    @property
    def caught_by(self) -> str:
        return self.failed[0] if self.failed else ""


class _Recorder:
    """Pytest plugin: provides the backend class and records what failed."""

    def __init__(self, backend_class: type[MemoryBackend], verdict: Verdict) -> None:
        self.backend_class = backend_class
        self.verdict = verdict

    @pytest.fixture
    def melange_backend_class(self) -> type[MemoryBackend]:
        return self.backend_class

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        name = report.nodeid.rsplit("::", 1)[-1]
        if report.failed:
            where = "" if report.when == "call" else f" ({report.when})"
            self.verdict.failed.append(name + where)
            crash = getattr(report.longrepr, "reprcrash", None)
            if crash is not None and not self.verdict.error:
                self.verdict.error = str(crash.message).splitlines()[0][:200]
                own = self.verdict.error.startswith(("melange.", "Failed:", "AssertionError"))
                if Path(str(crash.path)).name == "mutants.py" and not own:
                    # A Python error inside the mutant is a bug of the catalogue, not a catch.
                    self.verdict.error = "MUTANT CRASHED: " + self.verdict.error
        elif report.passed and report.when == "call":
            self.verdict.passed += 1

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.verdict.error = f"collection failed: {report.longreprtext[:300]}"


def _run_suite(
    backend_class: type[MemoryBackend], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Verdict:
    verdict = Verdict(backend_class.__name__)
    module = tmp_path / f"test_suite_{backend_class.__name__.lower()}.py"
    module.write_text(SUITE_MODULE)
    monkeypatch.delenv("MELANGE_CONFORMANCE_REPORT", raising=False)  # no report of these runs
    args = [
        str(module),
        "-x",
        "-q",
        "--no-header",
        "-p",
        "no:cacheprovider",
        "-p",
        "melange.testing.conformance.report",
        "--import-mode=importlib",
        f"--rootdir={tmp_path}",
        "-o",
        "addopts=",
    ]
    verdict.exit_code = int(pytest.main(args, plugins=[_Recorder(backend_class, verdict)]))
    return verdict


def _record(verdict: Verdict) -> None:
    """Merge one verdict into the JSON report, under a lock shared by the xdist workers."""
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    with open(REPORT.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            report = json.loads(REPORT.read_text()) if REPORT.exists() else {}
        except ValueError:
            report = {}
        entries = report.setdefault("mutants", {})
        entries[verdict.backend] = {
            **asdict(verdict),
            "caught_by": verdict.caught_by,
            "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        report["format"] = 1
        REPORT.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


def test_the_catalogue_has_at_least_25_mutants_each_naming_its_rule() -> None:
    assert len(CATALOGUE) >= 25
    assert len({cls.__name__ for cls in CATALOGUE}) == len(CATALOGUE)
    for cls in CATALOGUE:
        rule, guide = rule_of(cls)
        assert rule and guide, cls.__name__
        assert issubclass(cls, MemoryBackend) and cls is not MemoryBackend


def test_the_unmodified_memory_backend_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    verdict = _run_suite(MemoryBackend, tmp_path, monkeypatch)
    verdict.rule = "control: the unmodified memory backend passes every test of the same run"
    _record(verdict)
    assert verdict.failed == [] and verdict.exit_code == 0, (
        f"the memory backend fails the suite run the mutants get: {verdict.failed} {verdict.error}"
    )
    assert verdict.passed > 50


@pytest.mark.parametrize("backend_class", CATALOGUE, ids=lambda cls: cls.__name__)
def test_the_suite_catches_the_mutant(
    backend_class: type[MemoryBackend], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rule, guide = rule_of(backend_class)
    verdict = _run_suite(backend_class, tmp_path, monkeypatch)
    verdict.rule, verdict.guide = rule, guide
    _record(verdict)
    print(f"{verdict.backend}: caught by {verdict.caught_by or 'NOTHING'} ({verdict.error})")
    assert not verdict.error.startswith(("MUTANT CRASHED", "collection failed")), verdict.error
    assert verdict.exit_code in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED), verdict
    assert verdict.failed, (
        f"mutant {verdict.backend} escaped the conformance suite: all {verdict.passed} tests "
        f"passed. It breaks this rule: {rule} ({guide}). Add a test to "
        "melange/testing/conformance that fails on it, through the public contract only."
    )
