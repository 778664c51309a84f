"""The conformance suite against the embedded ``memory`` backend, on a manual clock.

Every test must run here: ``memory`` declares every capability, so a skip is a bug, with one
exception: the two runtime tests that need a consumer in another process (both their variants,
``[threads]`` and ``[asyncio]``), which a backend living in the test process cannot serve.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import pytest

import melange
from melange.backends.memory import MemoryBackend
from melange.clock import ManualClock
from melange.testing.conformance import ConformanceSuite, DeliveryGuarantee, Wait, requires
from melange.testing.conformance.convergence import DeclaredTopology
from melange.topology import DeadLetterPolicy, SubscriptionSpec


class MemoryHandChanges:
    """Changes by hand what the memory backend holds: its state, not its public methods."""

    def __init__(self, backend: MemoryBackend) -> None:
        self.backend = backend

    def change(self, topology: DeclaredTopology) -> list[str]:
        made = []
        with self.backend._lock:
            queues, topics = self.backend._queues, self.backend._topics
            queue = queues[topology.queue]
            queue.spec = dataclasses.replace(
                queue.spec,
                visibility_timeout=333.0,
                message_retention_period=7200.0,
                delay_seconds=7.0,
                dead_letter=None
                if topology.dead_letter_queue is None
                else DeadLetterPolicy(topology.dead_letter_queue, 9),
            )
            made.append(f"queue {topology.queue}: every setting")
            for name in topology.topics:
                topics[name].subscriptions[topology.queue] = SubscriptionSpec(
                    name, topology.queue, SubscriptionSpec.normalize_filter({"kind": ["x"]})
                )
                made.append(f"subscription {name} -> {topology.queue}: filter")
        return made

    def differences(self, topology: DeclaredTopology) -> list[str]:
        found = []
        settings = topology.settings
        with self.backend._lock:
            spec = self.backend._queues[topology.queue].spec
            for name in ("visibility_timeout", "message_retention_period"):
                if getattr(spec, name) != settings[name]:
                    found.append(f"queue {name}={getattr(spec, name)}")
            if spec.delay_seconds != settings.get("delay_seconds", 0.0):
                found.append(f"queue delay_seconds={spec.delay_seconds}")
            wanted = (
                None
                if topology.dead_letter_queue is None
                else DeadLetterPolicy(topology.dead_letter_queue, settings["max_receive_count"])
            )
            if spec.dead_letter != wanted:
                found.append(f"queue dead_letter={spec.dead_letter}")
            for name in topology.topics:
                subscription = self.backend._topics[name].subscriptions.get(topology.queue)
                declared = settings.get("subscription_filter")
                if subscription is None or subscription.filter_dict() != declared:
                    found.append(f"subscription {name}: {subscription}")
        return found


pytest_plugins = ["pytester"]


class TestMemoryBackend(ConformanceSuite):
    @pytest.fixture
    def clock(self) -> ManualClock:
        return ManualClock()

    @pytest.fixture
    def melange_backend(self, clock: ManualClock) -> Iterator[MemoryBackend]:
        backend = MemoryBackend(clock=clock)
        yield backend
        backend.close()

    @pytest.fixture
    def melange_wait(self, clock: ManualClock) -> Wait:
        return clock.advance

    @pytest.fixture
    def melange_hand_changes(self, melange_backend: MemoryBackend) -> MemoryHandChanges:
        return MemoryHandChanges(melange_backend)

    @pytest.fixture
    def melange_delivery(self) -> DeliveryGuarantee:
        # One process, one lock, and no time passes unless a test says so.
        return "exactly-once"


# ------------------------------------------------------------------ the report plugin

_SUITE_RUN = '''
import dataclasses

import pytest

from melange.backends.memory import MemoryBackend
from melange.clock import ManualClock
from melange.testing.conformance import DataConformance, TopologyConformance

# The runtime mixin is left out: it would only slow this test of the report down.


class TestMemory(TopologyConformance, DataConformance):
    @pytest.fixture
    def clock(self):
        return ManualClock()

    @pytest.fixture
    def melange_backend(self, clock):
        backend = MemoryBackend(clock=clock)
        yield backend
        backend.close()

    @pytest.fixture
    def melange_wait(self, clock):
        return clock.advance


class LossyBackend(MemoryBackend):
    """No topics, and attributes get lost on the way: a backend with known deviations."""

    name = "lossy"
    capabilities = dataclasses.replace(MemoryBackend.capabilities, topics=False)

    def _publish_batch(self, queue_name, batch):
        stripped = [dataclasses.replace(message, attributes={}) for message in batch]
        return super()._publish_batch(queue_name, stripped)


class TestLossy(TestMemory):
    @pytest.fixture
    def melange_backend(self, clock):
        backend = LossyBackend(clock=clock)
        yield backend
        backend.close()

    @pytest.mark.xfail(reason="lossy drops attributes", strict=True)
    def test_round_trip_of_body_and_attributes(
        self, melange_backend, melange_factory, melange_names
    ):
        super().test_round_trip_of_body_and_attributes(
            melange_backend, melange_factory, melange_names
        )

    @pytest.mark.skip(reason="lossy cannot delete queues here")
    def test_delete_queue(self, melange_backend, melange_factory, melange_names):
        super().test_delete_queue(melange_backend, melange_factory, melange_names)
'''


def _by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {test["nodeid"].split("::")[-1]: test for test in report["tests"]}


def test_report_plugin_writes_one_json_report_per_backend(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite_run=_SUITE_RUN)
    out = pytester.path / "reports"
    result = pytester.runpytest(
        "-p", "melange.testing.conformance.report", "--strict-markers", f"--melange-report={out}"
    )
    assert sorted(path.name for path in out.iterdir()) == ["lossy.json", "memory.json"]
    result.stdout.fnmatch_lines(
        [
            f"melange conformance report for 'lossy': * -> {out / 'lossy.json'}",
            "melange conformance report for 'memory': * passed, 0 failed, 0 skipped* -> *",
        ]
    )

    memory = json.loads((out / "memory.json").read_text())
    assert memory["backend"]["name"] == "memory"
    assert memory["backend"]["class"] == "melange.backends.memory.MemoryBackend"
    assert memory["backend"]["distribution"] == "melange"
    assert memory["backend"]["version"] == melange.__version__
    assert memory["backend"]["capabilities"]["topics"] is True
    assert memory["totals"]["skipped"] == 0
    assert memory["totals"]["passed"] == memory["totals"]["total"] > 50
    round_trip = _by_name(memory)["test_round_trip_of_body_and_attributes"]
    assert round_trip["outcome"] == "passed" and round_trip["requires"] == []
    assert isinstance(round_trip["duration"], float)
    fan_out = _by_name(memory)["test_topic_fans_out_to_every_subscribed_queue_and_no_other"]
    assert fan_out["requires"] == ["topics"]

    lossy = json.loads((out / "lossy.json").read_text())
    assert lossy["backend"]["capabilities"]["topics"] is False
    tests = _by_name(lossy)
    assert tests["test_round_trip_of_body_and_attributes"]["outcome"] == "xfailed"
    assert tests["test_round_trip_of_body_and_attributes"]["reason"] == "lossy drops attributes"
    # Skipped by a mark, its fixtures never ran: still filed under its class's backend.
    assert tests["test_delete_queue"]["outcome"] == "skipped"
    assert tests["test_delete_queue"]["reason"] == "lossy cannot delete queues here"
    skipped = tests["test_missing_topic_errors"]
    assert skipped["outcome"] == "skipped" and skipped["requires"] == ["topics"]
    assert "'lossy'" in skipped["reason"] and "'topics'" in skipped["reason"]
    filtered = tests[
        "test_invalid_request_is_refused_before_anything_is_created[invalid-topic-name]"
    ]
    assert filtered["outcome"] == "skipped" and filtered["requires"] == ["topics"]
    # Attributes are lost elsewhere too: those tests fail and the report says so.
    assert tests["test_dead_letter_after_max_receives_keeps_body_and_attributes"]["outcome"] == (
        "failed"
    )
    totals = lossy["totals"]
    assert totals["xfailed"] == 1 and totals["skipped"] > 10 and totals["failed"] > 0
    assert (
        sum(totals[o] for o in ("passed", "failed", "skipped", "xfailed", "xpassed"))
        == (totals["total"])
    )
    result.assert_outcomes(
        passed=memory["totals"]["passed"] + totals["passed"],
        failed=totals["failed"],
        skipped=totals["skipped"],
        xfailed=1,
    )


def test_report_directory_can_come_from_the_environment(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_suite_run=_SUITE_RUN)
    out = pytester.path / "from-env"
    monkeypatch.setenv("MELANGE_CONFORMANCE_REPORT", str(out))
    pytester.runpytest(
        "-p", "melange.testing.conformance.report", "-k", "TestMemory and test_round_trip_of_body"
    ).assert_outcomes(passed=1)
    report = json.loads((out / "memory.json").read_text())
    assert [test["outcome"] for test in report["tests"]] == ["passed"]


def test_no_report_without_option_or_environment(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_suite_run=_SUITE_RUN)
    monkeypatch.delenv("MELANGE_CONFORMANCE_REPORT", raising=False)
    result = pytester.runpytest(
        "-p", "melange.testing.conformance.report", "-k", "test_round_trip_of_body"
    )
    result.assert_outcomes(passed=1, xfailed=1)
    assert not list(pytester.path.rglob("*.json"))
    assert "melange conformance report" not in result.stdout.str()


def test_requires_refuses_unknown_capabilities() -> None:
    with pytest.raises(ValueError, match=r"'topic'.*choose from"):
        requires("topic")


def test_a_class_without_melange_backend_fails_with_what_to_add(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_forgot="""
        from melange.testing.conformance import ConformanceSuite

        class TestForgot(ConformanceSuite):
            pass
        """
    )
    result = pytester.runpytest(
        "-p", "melange.testing.conformance.report", "-k", "test_round_trip_of_body"
    )
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*TestForgot*does not define the 'melange_backend' fixture*"])
