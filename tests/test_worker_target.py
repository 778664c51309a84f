"""``melange worker`` with targets it cannot run: one message and one exit code per mistake.

Each case runs the real command (supervisor and worker process) in a fresh
directory holding the target's module, as a user would from a project's root.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).parent

BROKEN_MODULE = """\
import json

VALUE = 1
import melange_module_that_is_not_installed  # line 4
"""


def run_worker(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    return subprocess.run(
        [sys.executable, "-m", "melange.cli", "worker", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("target", "code", "expected"),
    [
        pytest.param("worker_app", 2, "worker target 'worker_app' has no ':'", id="no-colon"),
        pytest.param(
            "worker_app:dispatchers()",
            2,
            "attribute 'dispatchers()' is not a dotted Python name",
            id="bad-attribute-syntax",
        ),
        pytest.param(
            "no_such_app_module:dispatchers",
            4,
            "cannot import module 'no_such_app_module': No module named 'no_such_app_module'",
            id="no-module",
        ),
        pytest.param(
            "broken_app:dispatchers",
            4,
            "importing module 'broken_app' failed at ",
            id="module-raises",
        ),
        pytest.param(
            "worker_app:dispatcher",
            5,
            "'worker_app' has no attribute 'dispatcher'; the closest names: dispatchers",
            id="no-attribute",
        ),
        pytest.param(
            "worker_app:not_a_dispatcher",
            6,
            "worker target 'worker_app:not_a_dispatcher' is a builtins.dict; give a "
            "MessageDispatcher",
            id="not-a-dispatcher",
        ),
        pytest.param(
            "worker_app:needs_arguments",
            6,
            "is a function that needs arguments; a factory takes none",
            id="factory-with-arguments",
        ),
    ],
)
def test_a_bad_target_is_one_clear_line_and_its_own_exit_code(
    tmp_path: Path, target: str, code: int, expected: str
) -> None:
    (tmp_path / "broken_app.py").write_text(BROKEN_MODULE)
    result = run_worker(tmp_path, target, "--processes", "2")
    assert result.returncode == code, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("melange: error:")]
    assert len(errors) == 1, result.stderr  # reported once, by one process
    assert expected in errors[0]
    assert "Traceback" not in result.stderr


def test_a_module_that_raises_is_named_with_its_error_and_line(tmp_path: Path) -> None:
    (tmp_path / "broken_app.py").write_text(BROKEN_MODULE)
    result = run_worker(tmp_path, "broken_app:dispatchers")
    assert result.returncode == 4
    assert (
        f"importing module 'broken_app' failed at {tmp_path / 'broken_app.py'}:4: "
        "ModuleNotFoundError: No module named 'melange_module_that_is_not_installed'"
    ) in result.stderr


def test_json_logs_report_a_bad_target_as_a_json_line(tmp_path: Path) -> None:
    import json

    result = run_worker(tmp_path, "worker_app:not_a_dispatcher", "--log-format", "json")
    assert result.returncode == 6
    lines = [json.loads(line) for line in result.stderr.splitlines()]  # every line is JSON
    errors = [line for line in lines if "error" in line]
    assert [(e["level"], e["error"], e["exit_code"]) for e in errors] == [
        ("error", "NotADispatcher", 6)
    ]
    assert "builtins.dict" in errors[0]["message"]


@pytest.mark.parametrize("json_flag", ["--json", "--log-format=json"])
def test_an_error_of_the_supervisor_is_a_complete_json_line(tmp_path: Path, json_flag: str) -> None:
    """docs/worker.md: every line has time, level, logger, message and pid; errors too."""
    import json

    with socket.socket() as taken:  # the health port is in use: the supervisor refuses it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases = {
            "no-colon": (["worker_app", json_flag], 2),
            "port-taken": (
                ["worker_app:idle", json_flag, f"--health-port={port}", "--health-host=127.0.0.1"],
                1,
            ),
        }
        for case, (args, code) in cases.items():
            result = run_worker(tmp_path, *args)
            assert result.returncode == code, (case, result.stderr)
            lines = [json.loads(line) for line in result.stderr.splitlines()]
            errors = [line for line in lines if line["level"] == "error"]
            assert len(errors) == 1, (case, lines)
            (error,) = errors
            assert {"time", "level", "logger", "message", "pid", "error"} <= set(error), error
            assert error["logger"].startswith("melange"), error


def test_health_port_without_prometheus_client_names_the_extra(tmp_path: Path) -> None:
    # As if prometheus-client were not installed: its import fails in this process.
    program = (
        "import sys; sys.modules['prometheus_client'] = None; from melange.cli import main; "
        "sys.exit(main(['worker', 'worker_app:dispatchers', '--health-port', '0']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", program],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(TESTS)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr == (
        "melange: error: melange worker --health-port serves Prometheus metrics and needs "
        'prometheus-client; install it with: pip install "melange[worker]"\n'
    )


def test_a_health_port_in_use_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_worker(
            tmp_path, "worker_app:dispatchers", f"--health-port={port}", "--health-host=127.0.0.1"
        )
    assert result.returncode == 1
    assert result.stderr == (
        f"melange: error: --health-port {port}: cannot listen on 127.0.0.1:{port} (Address "
        "already in use); choose a free port, or 0 to pick one\n"
    )


APP = """\
from types import SimpleNamespace

from melange import MessageDispatcher, consumer
from melange.aio import AsyncMessageDispatcher
from melange.backends.memory import MemoryBackend


@consumer(name="noop")
def noop(body: dict) -> None: ...


threaded = MessageDispatcher(MemoryBackend(), "a", [noop])
asynchronous = AsyncMessageDispatcher(MemoryBackend(), "b", [noop])
both = (threaded, asynchronous)
holder = SimpleNamespace(inner=[threaded])
empty = []
mixed = [threaded, "b"]
calls = []


def factory():
    calls.append(1)
    return [MessageDispatcher(MemoryBackend(), "c", [noop])]


def returns_a_string():
    return "a"
"""


@pytest.fixture
def inproc_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    (tmp_path / "inproc_worker_app.py").write_text(APP)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    module = importlib.import_module("inproc_worker_app")
    yield module
    sys.modules.pop("inproc_worker_app", None)


@pytest.mark.parametrize(
    ("attribute", "queues"),
    [
        ("threaded", ["a"]),
        ("both", ["a", "b"]),
        ("holder.inner", ["a"]),  # a dotted path inside the module
        ("factory", ["c"]),
    ],
)
def test_the_forms_a_target_can_take(inproc_app: object, attribute: str, queues: list[str]) -> None:
    from melange.worker.target import load_target

    dispatchers = load_target(f"inproc_worker_app:{attribute}")
    assert [d.queue_name for d in dispatchers] == queues
    assert not any(d.running for d in dispatchers)  # loading starts nothing


def test_a_factory_is_called_once_per_load(inproc_app: object) -> None:
    from melange.worker.target import load_target

    first = load_target("inproc_worker_app:factory")
    second = load_target("inproc_worker_app:factory")
    assert first[0] is not second[0]
    assert inproc_app.calls == [1, 1]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("attribute", "message"),
    [
        ("empty", "worker target 'inproc_worker_app:empty' is an empty list"),
        ("mixed", "is a list whose item 1 is a builtins.str, not a dispatcher"),
        ("returns_a_string", "inproc_worker_app:returns_a_string() returned a builtins.str"),
        ("MessageDispatcher", "the class MessageDispatcher (a class, not an instance)"),
        ("holder.missing", "'inproc_worker_app:holder' has no attribute 'missing'"),
    ],
)
def test_what_is_not_a_target(inproc_app: object, attribute: str, message: str) -> None:
    from melange.worker.target import WorkerTargetError, load_target

    with pytest.raises(WorkerTargetError, match=re.escape(message)):
        load_target(f"inproc_worker_app:{attribute}")
