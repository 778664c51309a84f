"""The conformance report is the same with pytest-xdist (``-n 2``) as without it.

Under xdist the tests run in worker processes and the report is written by the
controller, which sees test reports but no test items: everything the report
needs must travel with the reports.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from test_conformance_memory import _SUITE_RUN

pytest_plugins = ["pytester"]

# The suite run of the report's own tests, plus one test that is not part of the suite.
_SUITE = (
    _SUITE_RUN
    + """

def test_not_part_of_the_suite():
    pass
"""
)


def _run(pytester: pytest.Pytester, out: Path, *extra: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "-p", "melange.testing.conformance.report", f"--melange-report={out}", "-v", *extra
    )


def _comparable(path: Path) -> dict[str, Any]:
    """The report without what differs between any two runs (time stamp, durations, ids)."""
    document = json.loads(path.read_text())
    del document["generated_at"]
    for test in document["tests"]:
        assert isinstance(test.pop("duration"), float)
        if test["reason"]:  # an assertion message may quote a random message id
            test["reason"] = re.sub(r"[0-9a-f]{10,}", "<id>", test["reason"])
    return dict(document)


def test_reports_under_xdist_equal_the_reports_of_a_plain_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite_run=_SUITE)
    plain_out, xdist_out = pytester.path / "plain", pytester.path / "xdist"

    plain = _run(pytester, plain_out, "-p", "no:xdist")
    distributed = _run(pytester, xdist_out, "-n", "2")

    # Both workers ran tests, and the controller printed the report lines.
    output = distributed.stdout.str()
    assert "[gw0]" in output and "[gw1]" in output
    distributed.stdout.fnmatch_lines([f"melange conformance report for 'lossy': * -> {xdist_out}*"])
    assert plain.parseoutcomes() == distributed.parseoutcomes()

    names = sorted(path.name for path in plain_out.iterdir())
    assert names == ["lossy.json", "memory.json"]
    assert sorted(path.name for path in xdist_out.iterdir()) == names
    for name in names:
        assert _comparable(xdist_out / name) == _comparable(plain_out / name), name

    lossy = _comparable(xdist_out / "lossy.json")
    by_name = {test["name"]: test for test in lossy["tests"]}
    # Every kind of outcome made it across: passed, failed, skipped (by capability and by
    # mark, the latter filed under its class's backend), xfailed; no test outside the suite.
    assert lossy["backend"]["capabilities"]["topics"] is False
    assert {test["outcome"] for test in lossy["tests"]} == {
        "passed",
        "failed",
        "skipped",
        "xfailed",
    }
    assert by_name["test_delete_queue"]["reason"] == "lossy cannot delete queues here"
    fan_out = by_name["test_topic_fans_out_to_every_subscribed_queue_and_no_other"]
    assert fan_out["outcome"] == "skipped" and fan_out["requires"] == ["topics"]
    assert "test_not_part_of_the_suite" not in json.dumps(lossy)
    memory = _comparable(xdist_out / "memory.json")
    assert memory["totals"]["passed"] == memory["totals"]["total"] > 15
