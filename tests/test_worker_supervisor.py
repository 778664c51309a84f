"""``melange worker`` running a real application against a real broker (a moto server over HTTP).

The acceptance of issue 15's worker: two processes consume 1,000 messages, a
process killed with SIGKILL is replaced, ``/readyz`` and ``/metrics`` tell the
truth, SIGTERM stops everything cleanly; and a crash-looping target gives up.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from melange_localsqs.testing import MotoServer, MotoServerError

from melange import MessagingBackendFactory, QueuePublisher
from melange.backends import LocalSQSBackend
from tests.http_probe import get

TESTS = Path(__file__).parent
QUEUE = "worker-jobs"


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """A private moto server (patched for speed and thread safety); failing to start fails."""
    try:
        server = MotoServer(patch_sqs=True).start()
    except MotoServerError as error:
        pytest.fail(f"the moto server these tests need cannot start: {error}", pytrace=False)
    try:
        yield server.endpoint_url
    finally:
        server.stop()


class Worker:
    """A ``melange worker`` process, its stderr collected line by line."""

    def __init__(self, cwd: Path, env: dict[str, str], *args: str, own_group: bool = False) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "melange.cli", "worker", *args],
            cwd=cwd,
            env={**os.environ, "PYTHONPATH": str(TESTS), **env},
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=own_group,  # a terminal's job: Ctrl-C reaches the whole group
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    def logs(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self.lines)]

    def stderr(self) -> str:
        return "\n".join(self.lines)

    def wait(self, timeout: float) -> int:
        code = self.process.wait(timeout)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def eventually(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def sample(metrics: str, name: str) -> float:
    values = [float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", metrics, re.M)]
    return sum(values)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def recorded(directory: Path) -> list[int]:
    return [int(n) for log in directory.glob("*.log") for n in log.read_text().split()]


def test_two_processes_consume_restart_report_and_stop_cleanly(
    moto_endpoint: str, tmp_path: Path
) -> None:
    backend = LocalSQSBackend(endpoint_url=moto_endpoint)
    MessagingBackendFactory(backend).init_queue(QUEUE, dead_letter_queue_name=f"{QUEUE}-dlq")
    record = tmp_path / "record"
    record.mkdir()
    env = {
        "WORKER_APP_ENDPOINT": moto_endpoint,
        "WORKER_APP_QUEUE": QUEUE,
        "WORKER_APP_RECORD": str(record),
    }
    worker = Worker(
        tmp_path,
        env,
        "worker_app:dispatchers",
        "--processes=2",
        "--health-port=0",
        "--health-host=127.0.0.1",
        "--log-format=json",
    )
    try:
        port = eventually(
            lambda: next((e["port"] for e in worker.logs() if "port" in e), None),
            30,
            "the health port in the logs",
        )
        base = f"http://127.0.0.1:{port}"
        eventually(lambda: get(f"{base}/readyz")[0] == 200, 60, "/readyz to say 200")
        first = json.loads(get(f"{base}/livez")[1])["workers"]
        assert len(first) == 2 and all(alive(pid) for pid in first)

        publisher = QueuePublisher(backend)
        publisher.publish_batch(QUEUE, [{"n": n} for n in range(500)])
        eventually(lambda: set(recorded(record)) == set(range(500)), 60, "500 messages handled")
        # Counted before the kill, so the killed process's counters are all in the files.
        eventually(
            lambda: (
                sample(get(f"{base}/metrics")[1], "melange_messages_handled_total")
                >= len(recorded(record))
            ),
            10,
            "the handled counter to catch up",
        )

        victim = first[0]
        os.kill(victim, signal.SIGKILL)
        replaced = eventually(
            lambda: (
                (w := json.loads(get(f"{base}/livez")[1])["workers"])
                and len(w) == 2
                and victim not in w
                and w
            ),
            30,
            "a new worker process in place of the killed one",
        )
        assert first[1] in replaced and not alive(victim)
        eventually(lambda: get(f"{base}/readyz")[0] == 200, 30, "/readyz to say 200 again")

        publisher.publish_batch(QUEUE, [{"n": n} for n in range(500, 1000)])
        eventually(lambda: set(recorded(record)) == set(range(1000)), 60, "1,000 messages handled")
        # Both processes consumed: the replacement wrote its own record.
        assert {p.stem for p in record.glob("*.log")} >= {str(replaced[0]), str(replaced[1])}

        def counted_equals_recorded() -> bool:
            metrics = get(f"{base}/metrics")[1]
            return sample(metrics, "melange_messages_handled_total") == len(recorded(record))

        eventually(counted_equals_recorded, 10, "/metrics handled total == calls recorded")
        metrics = get(f"{base}/metrics")[1]
        assert sample(metrics, "melange_messages_received_total") >= 1000
        assert sample(metrics, "melange_messages_failed_total") == 0
        for series in ("failed_total", "dead_lettered_total"):  # exported, at 0
            assert f'melange_messages_{series}{{queue="{QUEUE}"}} 0.0' in metrics
        assert f'melange_messages_in_flight{{queue="{QUEUE}"}} ' in metrics
        assert sample(metrics, "melange_handler_seconds_count") >= 1000
        assert sample(metrics, "melange_worker_restarts_total") == 1
        assert sample(metrics, "melange_worker_processes") == 2
        eventually(
            lambda: sample(get(f"{base}/metrics")[1], "melange_messages_in_flight") == 0,
            10,
            "nothing in flight",
        )

        worker.process.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0, worker.stderr()
    finally:
        worker.kill()
        backend.close()
    assert not any(alive(pid) for pid in [*first, *replaced])
    logs = worker.logs()  # every line is JSON (json.loads would have raised)
    assert all({"time", "level", "logger", "message", "pid"} <= set(e) for e in logs)
    assert any(e["logger"] == "melange.dispatcher" and e.get("queue") == QUEUE for e in logs)
    assert any(
        e["level"] == "warning" and f"worker process {victim} was killed by SIGKILL" in e["message"]
        for e in logs
    )
    assert logs[-1]["message"] == "all worker processes stopped"


def test_sigterm_lets_running_asyncio_handlers_finish(moto_endpoint: str, tmp_path: Path) -> None:
    queue = "worker-slow"
    backend = LocalSQSBackend(endpoint_url=moto_endpoint)
    MessagingBackendFactory(backend).init_queue(queue)
    record = tmp_path / "record"
    record.mkdir()
    env = {
        "WORKER_APP_ENDPOINT": moto_endpoint,
        "WORKER_APP_QUEUE": queue,
        "WORKER_APP_RECORD": str(record),
    }
    worker = Worker(tmp_path, env, "worker_app:slow_async_dispatchers")
    try:
        QueuePublisher(backend).publish_batch(queue, [{"n": n} for n in range(3)])
        eventually(lambda: "started-" in " ".join(_lines(record)), 30, "a handler to start")
        worker.process.send_signal(signal.SIGTERM)  # while it runs (each takes a second)
        assert worker.wait(timeout=30) == 0, worker.stderr()
        lines = _lines(record)
        finished = [line for line in lines if not line.startswith("started-")]
        started = [line.removeprefix("started-") for line in lines if line.startswith("started-")]
        # Every handler running at the signal finished within the grace period.
        assert finished and sorted(finished) == sorted(started)
        # ... and was acknowledged: only the messages never started are still in the queue.
        left = backend.receive(queue, 10, 1.0)
        assert len(left) == 3 - len(finished)
    finally:
        worker.kill()
        backend.close()


def test_worker_processes_stop_when_the_supervisor_is_killed(
    moto_endpoint: str, tmp_path: Path
) -> None:
    queue = "worker-orphans"
    backend = LocalSQSBackend(endpoint_url=moto_endpoint)
    MessagingBackendFactory(backend).init_queue(queue)
    backend.close()
    env = {
        "WORKER_APP_ENDPOINT": moto_endpoint,
        "WORKER_APP_QUEUE": queue,
        "WORKER_APP_RECORD": str(tmp_path),
    }
    worker = Worker(tmp_path, env, "worker_app:dispatchers", "--log-format=json")
    try:
        child = eventually(
            lambda: next((e["pid"] for e in worker.logs() if "running 1" in e["message"]), None),
            30,
            "the worker process to run its dispatcher",
        )
        supervisor = worker.process.pid
        worker.process.kill()  # SIGKILL: nobody forwards anything to the worker process
        worker.process.wait()
        eventually(lambda: not alive(child), 15, "the orphaned worker process to stop")
    finally:
        worker.kill()
    worker._reader.join(5)
    messages = [e["message"] for e in worker.logs() if e["pid"] == child]
    assert f"the supervisor (pid {supervisor}) is gone; stopping" in messages
    assert messages[-1] == f"worker process {child} stopped"


def _lines(directory: Path) -> list[str]:
    return [line for log in directory.glob("*.log") for line in log.read_text().split()]


def test_readyz_is_503_while_a_dispatcher_waits_for_its_broker(tmp_path: Path) -> None:
    with socket.socket() as closed:  # a port nobody listens on: connections are refused
        closed.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
    worker = Worker(
        tmp_path,
        {"WORKER_APP_ENDPOINT": endpoint},
        "worker_app:unreachable",
        "--health-port=0",
        "--health-host=127.0.0.1",
        "--log-format=json",
    )
    try:
        port = eventually(
            lambda: next((e["port"] for e in worker.logs() if "port" in e), None),
            30,
            "the health port in the logs",
        )
        base = f"http://127.0.0.1:{port}"
        eventually(
            lambda: any("running 1 dispatcher" in e["message"] for e in worker.logs()),
            30,
            "the worker process to start its dispatcher",
        )
        time.sleep(0.5)  # several readiness updates
        assert get(f"{base}/livez")[0] == 200
        code, body = get(f"{base}/readyz")
        assert code == 503
        assert "not running all their dispatchers" in json.loads(body)["reason"]
        assert sample(get(f"{base}/metrics")[1], "melange_dispatchers_running") == 0
        worker.process.send_signal(signal.SIGTERM)  # also ends the wait for the broker
        assert worker.wait(timeout=30) == 0, worker.stderr()
    finally:
        worker.kill()


def test_a_process_that_ran_its_target_is_restarted_whatever_its_exit_code(
    tmp_path: Path,
) -> None:
    """Exit code 4 means "the target cannot be imported" only before the target ever loaded."""
    worker = Worker(tmp_path, {}, "worker_app:dies_with_exit_code_4", "--max-restarts=1")
    try:
        assert worker.wait(timeout=60) == 1  # the crash loop, not a bad target (4)
    finally:
        worker.kill()
    stderr = worker.stderr()
    assert "cannot load" not in stderr, stderr
    assert stderr.count("started (slot 0)") == 2, stderr  # the first start and one restart
    assert re.search(r"crash loop: worker process \d+ exited with code 4", stderr), stderr


@pytest.mark.parametrize("delay", [0.0, 0.03])
def test_ctrl_c_while_a_worker_process_starts_stops_it_cleanly(
    tmp_path: Path, delay: float
) -> None:
    """A terminal's Ctrl-C goes to the whole process group, the worker processes included,
    which may not have their signal handlers yet: no traceback, exit 0, JSON lines only."""
    worker = Worker(tmp_path, {}, "worker_app:idle", "--json", own_group=True)
    try:
        eventually(lambda: children(worker.process.pid), 10, "a worker process")
        time.sleep(delay)
        os.killpg(worker.process.pid, signal.SIGINT)
        code = worker.wait(timeout=30)
    finally:
        worker.kill()
    assert code == 0, worker.stderr()
    for line in worker.lines:
        assert isinstance(json.loads(line), dict), line


def test_a_crash_looping_target_ends_with_exit_1_and_the_reason(tmp_path: Path) -> None:
    worker = Worker(tmp_path, {}, "worker_app:crashing", "--processes=2", "--max-restarts=2")
    try:
        assert worker.wait(timeout=60) == 1
    finally:
        worker.kill()
    stderr = worker.stderr()
    assert "RuntimeError: the database is not there (on purpose)" in stderr
    assert re.search(
        r"crash loop: worker process \d+ exited with code 1, after 2 restarts within 60 s", stderr
    ), stderr
    assert stderr.count("started (slot 0)") == 3  # the first start and two restarts
