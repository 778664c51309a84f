"""The scriptable side of the ``melange`` CLI: --json, exit codes, --timeout, ``melange dlq``.

The dead-letter commands run in-process (click's CliRunner) on a memory
backend handed to the CLI as ``CliState(backend=...)``: the memory backend
lives in one process. The localsqs plugin's tests run them through the
configuration against a moto server (plugins/melange_localsqs/tests/test_cli_localsqs.py).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from melange import MessagingBackendFactory
from melange.backends.base import OutgoingMessage
from melange.backends.memory import MemoryBackend
from melange.cli import CliState, cli

QUEUE, DLQ = "payment-updates", "payment-updates-dlq"
BODIES = [b'{"order": 1}', b"\x00\xffraw bytes", b'{"order": 3}']


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("MELANGE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def backend() -> Iterator[MemoryBackend]:
    memory = MemoryBackend()
    factory = MessagingBackendFactory(memory)
    factory.init_queue(QUEUE, dead_letter_queue_name=DLQ)
    factory.init_queue("plain")
    factory.init_queue("other.fifo", fifo=True)
    memory.publish(DLQ, [OutgoingMessage(body, {"event": "paid"}) for body in BODIES])
    yield memory
    memory.close()


def run(backend: MemoryBackend | None, *args: str, stdin: str | None = None) -> Result:
    obj = CliState(backend=backend)
    return CliRunner().invoke(cli, list(args), obj=obj, input=stdin, catch_exceptions=False)


def bodies_in(backend: MemoryBackend, queue: str) -> list[bytes]:
    received = backend.receive(queue, 10, 0.1)
    backend.nack(received, 0.0)
    return sorted(m.body for m in received)


# ---------------------------------------------------------------------- dlq
def test_peek_lists_messages_and_leaves_them(backend: MemoryBackend) -> None:
    result = run(backend, "dlq", "peek", QUEUE, "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["queue"] == QUEUE and document["dead_letter_queue"] == DLQ
    rows = document["messages"]
    assert sorted(row["size"] for row in rows) == sorted(len(b) for b in BODIES)
    assert all(row["attributes"]["event"] == "paid" for row in rows)
    assert all(row["receive_count"] >= 1 for row in rows)
    assert '{"order": 1}' in {row["body_preview"] for row in rows}
    assert bodies_in(backend, DLQ) == sorted(BODIES)  # still there

    table = run(backend, "dlq", "peek", QUEUE, "--max", "2")
    assert table.exit_code == 0
    assert f"2 message(s) of {DLQ!r}" in table.stdout
    assert "event=paid" in table.stdout
    assert bodies_in(backend, DLQ) == sorted(BODIES)


def test_redrive_moves_messages_byte_exact(backend: MemoryBackend) -> None:
    dry = run(backend, "dlq", "redrive", QUEUE, "--dry-run", "--json")
    assert json.loads(dry.stdout) == {
        "source": DLQ,
        "target": QUEUE,
        "dry_run": True,
        "moved": 3,
        "failed": [],
    }
    assert bodies_in(backend, QUEUE) == []

    result = run(backend, "dlq", "redrive", QUEUE, "--max", "2")
    assert result.exit_code == 0, result.output
    assert f"moved 2 message(s) from {DLQ!r} to {QUEUE!r}" in result.stdout
    result = run(backend, "dlq", "redrive", QUEUE, "--to", "plain", "--json")
    assert json.loads(result.stdout)["moved"] == 1
    assert sorted(bodies_in(backend, QUEUE) + bodies_in(backend, "plain")) == sorted(BODIES)
    assert bodies_in(backend, DLQ) == []


def test_purge_asks_unless_yes(backend: MemoryBackend) -> None:
    declined = run(backend, "dlq", "purge", QUEUE, stdin="n\n")
    # CliRunner's stdin is not a terminal: without --yes the purge is refused as a usage error.
    assert declined.exit_code == 2
    assert "--yes" in declined.stderr
    assert bodies_in(backend, DLQ) == sorted(BODIES)

    result = run(backend, "dlq", "purge", QUEUE, "--yes", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"queue": QUEUE, "dead_letter_queue": DLQ, "deleted": 3}
    assert bodies_in(backend, DLQ) == []


@pytest.mark.parametrize(
    ("args", "error_type", "expected"),
    [
        (["peek", "missing"], "QueueNotFound", "missing"),
        (["peek", "plain"], "InvalidTopology", "has no dead-letter queue"),
        (["redrive", QUEUE, "--to", "other.fifo"], "InvalidTopology", "same kind"),
        (["redrive", QUEUE, "--to", "nowhere"], "QueueNotFound", "nowhere"),
        (["purge", "plain", "--yes"], "InvalidTopology", "has no dead-letter queue"),
    ],
)
def test_dlq_errors_exit_1_without_traceback(
    backend: MemoryBackend, args: list[str], error_type: str, expected: str
) -> None:
    plain = run(backend, "dlq", *args)
    assert plain.exit_code == 1
    assert plain.stdout == ""
    assert plain.stderr.startswith("melange: error: ") and expected in plain.stderr
    assert "Traceback" not in plain.stderr

    as_json = run(backend, "dlq", *args, "--json")
    assert as_json.exit_code == 1
    document = json.loads(as_json.stdout)
    assert document["type"] == error_type and expected in document["error"]
    assert bodies_in(backend, DLQ) == sorted(BODIES)  # nothing moved or deleted


# ----------------------------------------------------------- plan / apply
TOPOLOGY = """
[[queues]]
name = "orders"
dead_letter_queue = "orders-dlq"
"""


def test_plan_json_and_detailed_exitcode(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(TOPOLOGY)
    memory = MemoryBackend()

    plain = run(memory, "plan", str(path))
    assert plain.exit_code == 0  # changes pending, but no --detailed-exitcode
    pending = run(memory, "plan", str(path), "--detailed-exitcode", "--json")
    assert pending.exit_code == 3
    document = json.loads(pending.stdout)
    assert document["changes_pending"] is True and document["backend"] == "memory"
    assert [(a["kind"], a["target"]) for a in document["actions"]] == [
        ("create_queue", "orders-dlq"),
        ("create_queue", "orders"),
    ]

    applied = run(memory, "apply", str(path), "--json")
    assert applied.exit_code == 0
    assert json.loads(applied.stdout)["applied"] is True
    assert memory.get_queue("orders") is not None  # the injected backend really got it

    clean = run(memory, "plan", str(path), "--detailed-exitcode", "--json")
    assert clean.exit_code == 0
    assert json.loads(clean.stdout)["actions"] == []
    assert sorted(json.loads(clean.stdout)["unchanged"]) == ["orders", "orders-dlq"]


def test_json_on_the_other_commands() -> None:
    rows = json.loads(run(None, "backends", "--json").stdout)
    assert "memory" in {row["name"] for row in rows}
    demo = run(None, "demo", "--json")
    assert demo.exit_code == 0
    assert json.loads(demo.stdout)["left_in_queues"] == {QUEUE: 0, DLQ: 1}
    usage = run(None, "plan", "--json", "x.toml", "-o", "novalue")
    assert usage.exit_code == 2
    assert json.loads(usage.stdout)["type"] == "UsageError"


def test_help_documents_exit_codes() -> None:
    for args in ([], ["plan"], ["dlq"], ["dlq", "purge"]):
        out = run(None, *args, "--help").stdout
        assert "3 `plan --detailed-exitcode` with changes pending" in " ".join(out.split())


def test_backends_table_fits_100_columns() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "melange.cli", "backends"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "100"},
        timeout=60,
        check=True,
    )
    lines = result.stdout.splitlines()
    assert lines[0].split()[0] == "NAME" and len(lines) > 3
    assert max(len(line) for line in lines) <= 100


# ------------------------------------------------------------------ timeout
@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        yield server.getsockname()[1]


@pytest.mark.parametrize(
    "command",
    [
        ["plan", "{file}"],
        ["apply", "{file}"],
        ["dlq", "peek", "q"],
        ["dlq", "redrive", "q"],
        ["dlq", "purge", "q", "--yes"],
        ["doctor"],
        ["publish", "q", "body"],
        ["tail", "q"],
    ],
)
def test_timeout_against_a_black_hole(black_hole: int, tmp_path: Path, command: list[str]) -> None:
    path = tmp_path / "t.toml"
    path.write_text(TOPOLOGY)
    env = {
        **os.environ,
        "MELANGE_BACKEND": "localsqs",
        "MELANGE_OPTION_ENDPOINT_URL": f"http://user:s3cret@127.0.0.1:{black_hole}/?token=x",
    }
    argv = [sys.executable, "-m", "melange.cli", *(a.format(file=path) for a in command)]
    started = time.monotonic()
    result = subprocess.run(
        [*argv, "--timeout", "2"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    assert elapsed < 15, elapsed
    # doctor prints its failed check on standard output; the others fail on standard error.
    output = result.stdout if command == ["doctor"] else result.stderr
    assert "within 2 s" in output
    assert f"backend 'localsqs' at http://127.0.0.1:{black_hole}" in output
    assert "s3cret" not in result.stdout + result.stderr
    assert "token" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_timeout_names_an_endpoint_given_as_url(black_hole: int, tmp_path: Path) -> None:
    # RabbitMQ's endpoint is its ``url`` option: the message named the backend alone.
    pytest.importorskip("melange_rabbitmq")
    env = {
        **os.environ,
        "MELANGE_BACKEND": "rabbitmq",
        "MELANGE_OPTION_URL": f"amqp://guest:s3cret@127.0.0.1:{black_hole}/%2F?heartbeat=5",
    }
    result = subprocess.run(
        [sys.executable, "-m", "melange.cli", "publish", "q", "body", "--timeout", "2"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert f"backend 'rabbitmq' at amqp://127.0.0.1:{black_hole} within 2 s" in result.stderr
    assert "s3cret" not in result.stdout + result.stderr


def test_plan_and_apply_json_of_a_dead_letter_change(tmp_path: Path) -> None:
    # The dead_letter setting's values are DeadLetterPolicy objects: --json printed a
    # traceback (after apply had made the change) instead of the documented shape.
    memory = MemoryBackend()
    first, second = tmp_path / "one.toml", tmp_path / "two.toml"
    first.write_text(
        '[[queues]]\nname = "jd-q"\ndead_letter_queue = "jd-dlq"\nmax_receive_count = 3\n'
    )
    second.write_text(first.read_text().replace("= 3", "= 4"))
    assert run(memory, "apply", str(first)).exit_code == 0

    for command in ("plan", "apply"):
        result = run(memory, command, str(second), "--json")
        assert result.exit_code == 0
        (action,) = json.loads(result.stdout)["actions"]
        assert action["kind"] == "update_queue"
        assert action["changes"] == [
            {
                "setting": "dead_letter",
                "current": {"queue_name": "jd-dlq", "max_receive_count": 3},
                "declared": {"queue_name": "jd-dlq", "max_receive_count": 4},
            }
        ]
    assert json.loads(run(memory, "plan", str(second), "--json").stdout)["actions"] == []


def test_redrive_progress_counter_draws_on_standard_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # It drew on standard output: a piped redrive result began with a stray blank line.
    from melange.cli import _counter

    update = _counter("moved")
    update(5)
    update(None)
    assert capsys.readouterr().out == ""


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
@pytest.mark.parametrize(
    "command",
    [
        ["plan", "t.toml"],
        ["apply", "t.toml"],
        ["dlq", "peek", "q"],
        ["dlq", "purge", "q", "--yes"],
        ["dlq", "redrive", "q"],
        ["publish", "q", "body"],
    ],
)
def test_json_keeps_a_terminal_on_standard_error_quiet(tmp_path: Path, command: list[str]) -> None:
    # docs/cli.md: with --json, standard error stays quiet. A spinner drew on it when it
    # was a terminal.
    import pty
    import select

    (tmp_path / "t.toml").write_text(TOPOLOGY)
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "melange.cli", *command, "--json"],
        stdout=subprocess.PIPE,
        stderr=slave,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if not k.startswith("MELANGE_")},
    )
    os.close(slave)
    drawn = b""
    while True:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the command ended and closed the terminal
                break
            if not chunk:
                break
            drawn += chunk
        elif process.poll() is not None:
            break
    os.close(master)
    stdout = process.stdout.read() if process.stdout else b""
    process.wait(30)
    assert drawn == b""
    json.loads(stdout)  # the one document, result or error
