"""PubSubEmulator: finds the SDK's emulator, runs it in its own process group, fails clearly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from melange_gcp import GCPPubSubBackend
from melange_gcp.testing import PubSubEmulator, PubSubEmulatorError, find_emulator


def test_the_emulator_script_is_found_through_gcloud() -> None:
    script = find_emulator()
    assert script.is_file() and script.name == "cloud-pubsub-emulator"


def test_a_second_emulator_starts_serves_and_stops_with_its_process_group(
    pubsub_emulator: PubSubEmulator,
) -> None:
    with PubSubEmulator() as emulator:
        assert emulator.port != pubsub_emulator.port
        data_dir = emulator.data_dir
        assert data_dir is not None and data_dir.is_dir()
        process = emulator._process
        assert process is not None
        with GCPPubSubBackend(project="melange-test", emulator_host=emulator.host_port) as backend:
            assert backend.get_queue("not-there") is None
    assert not emulator.running
    assert not data_dir.exists()
    with pytest.raises(ProcessLookupError):
        os.killpg(process.pid, 0)  # nothing of the group is left


def test_a_missing_script_is_a_clear_error(tmp_path: Path) -> None:
    emulator = PubSubEmulator(script=tmp_path / "missing-emulator")
    with pytest.raises((PubSubEmulatorError, OSError)):
        emulator.start()
    assert not emulator.running


def test_an_emulator_that_exits_at_once_reports_its_output(tmp_path: Path) -> None:
    script = tmp_path / "broken-emulator"
    script.write_text("#!/bin/sh\necho 'no java here' >&2\nexit 3\n")
    script.chmod(0o755)
    with pytest.raises(PubSubEmulatorError, match="no java here"):
        PubSubEmulator(script=script, startup_timeout=10).start()


def test_port_before_start_is_an_error() -> None:
    with pytest.raises(PubSubEmulatorError, match="start"):
        _ = PubSubEmulator().port
