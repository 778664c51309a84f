"""The supervisor's health endpoint reading metrics files while worker processes write them.

A worker process creates its prometheus-client file empty and sizes it a moment
later; a supervisor polled in between used to drop the connection without an
answer (CI saw ``RemoteDisconnected`` from ``/readyz`` while workers started).
The files here are written by prometheus-client itself, in a real process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from melange.worker.health import HealthServer, WorkerStatus
from tests.http_probe import get

READY_WORKER = """
import sys
from melange.worker.metrics import WorkerMetrics

class Running:
    queue_name = "jobs"
    running = True
    in_flight = 0
    class stats:
        @staticmethod
        def as_dict():
            return {"received": 3, "handled": 3, "failed": 0, "dead_lettered": 0}

assert WorkerMetrics().sync([Running()])
print("ready", flush=True)
sys.stdin.read()  # stay alive (a dead process's live gauges are not read) until told
"""


@pytest.fixture
def metrics_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "metrics"
    directory.mkdir()
    return directory


@pytest.fixture
def ready_worker(metrics_dir: Path) -> Iterator[int]:
    """A real process that wrote its metrics through prometheus-client and says it is ready."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    process = subprocess.Popen(
        [sys.executable, "-c", READY_WORKER],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        yield process.pid
    finally:
        process.communicate("", timeout=10)


def serve(metrics_dir: Path, workers: list[int]) -> HealthServer:
    status = WorkerStatus(pid=os.getpid(), processes=len(workers), workers=workers)
    server = HealthServer("127.0.0.1", 0, str(metrics_dir), lambda: status)
    server.start()
    return server


def test_a_worker_creating_its_metrics_file_does_not_break_readyz_or_metrics(
    metrics_dir: Path, ready_worker: int
) -> None:
    # A second worker process has just opened its file and not sized it yet.
    starting = 4_000_000
    (metrics_dir / f"gauge_liveall_{starting}.db").touch()
    (metrics_dir / f"counter_{starting}.db").touch()
    server = serve(metrics_dir, [ready_worker, starting])
    try:
        base = f"http://127.0.0.1:{server.port}"
        code, body = get(f"{base}/readyz")
        assert code == 503
        assert json.loads(body)["reason"] == (
            f"worker processes not running all their dispatchers: [{starting}]"
        )
        code, body = get(f"{base}/metrics")
        assert code == 200
        assert f'melange_worker_ready{{pid="{ready_worker}"}} 1.0' in body
        assert 'melange_messages_received_total{queue="jobs"} 3.0' in body
    finally:
        server.stop()


def test_the_ready_worker_alone_is_ready(metrics_dir: Path, ready_worker: int) -> None:
    (metrics_dir / "gauge_liveall_4000001.db").touch()  # a process that never got further
    server = serve(metrics_dir, [ready_worker])
    try:
        code, body = get(f"http://127.0.0.1:{server.port}/readyz")
        assert (code, json.loads(body)["ready"]) == (200, True)
    finally:
        server.stop()


def test_an_unreadable_metrics_file_gets_an_answer_not_a_dropped_connection(
    metrics_dir: Path, ready_worker: int
) -> None:
    # A file whose header claims more than it holds (a torn or corrupted write).
    (metrics_dir / "counter_4000002.db").write_bytes((4096).to_bytes(4, "little") + bytes(12))
    server = serve(metrics_dir, [ready_worker])
    try:
        base = f"http://127.0.0.1:{server.port}"
        code, body = get(f"{base}/metrics")
        assert code == 500
        assert "counter_4000002.db" in json.loads(body)["error"]
        code, body = get(f"{base}/readyz")
        assert code == 503
        assert "counter_4000002.db" in json.loads(body)["reason"]
        code, _ = get(f"{base}/livez")  # the server still serves
        assert code == 200
    finally:
        server.stop()
