from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import melange
from melange.backends import (
    KNOWN_BACKENDS,
    available_backends,
    register_backend,
    unregister_backend,
)
from melange.backends.registry import KnownBackend
from melange.cli import main
from melange.demo import DEAD_LETTER_QUEUE, QUEUE, run_demo

TOPOLOGY = """
[[topics]]
name = "payments"

[[queues]]
name = "payment-updates"
topics = ["payments"]
dead_letter_queue = "payment-updates-dlq"
max_receive_count = 3
visibility_timeout = 30
subscription_filter = { event = ["paid"] }
"""


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MELANGE_BACKEND", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def topology(tmp_path: Path) -> Path:
    path = tmp_path / "payments.toml"
    path.write_text(TOPOLOGY)
    return path


@pytest.fixture
def broken_backend() -> Iterator[str]:
    register_backend("broken-example", "melange_no_such_module:Backend")
    yield "broken-example"
    unregister_backend("broken-example")


def table_rows(text: str) -> dict[str, str]:
    """Rows of a printed table by first cell, each with its wrapped continuation lines joined."""
    rows: dict[str, str] = {}
    last = ""
    for line in text.splitlines()[2:]:  # the header, then the rule under it
        if not line.strip():
            continue
        if line[0] != " ":
            last = line.split()[0]
            rows[last] = line
        else:
            rows[last] += " " + line.strip()
    return rows


# ------------------------------------------------------------------ backends
@pytest.mark.parametrize("columns", [100, 80])
def test_backends_table(
    capsys: pytest.CaptureFixture[str],
    broken_backend: str,
    uninstalled_backend: KnownBackend,
    monkeypatch: pytest.MonkeyPatch,
    columns: int,
) -> None:
    """Cells wrap to fit the terminal; a table that cannot shrink that far comes out wider,
    never cropped: no character of a cell is lost (at 80 columns one was, per line)."""
    monkeypatch.setenv("COLUMNS", str(columns))
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    if columns == 100:
        assert max(len(line) for line in out.splitlines()) <= columns
    header = out.splitlines()[0].split()
    assert header == ["NAME", "DISTRIBUTION", "VERSION", "CAPABILITIES", "STATUS", "ERROR"]
    rows = table_rows(out)

    memory = rows["memory"].split()
    assert memory[1:3] == ["melange", melange.__version__]  # installed metadata == the code
    words = [word.rstrip(",") for word in memory[3:]]
    assert "topics" in words and "dead_letter" in words
    assert "ok" in words and "error" not in words

    missing = [k for k in KNOWN_BACKENDS.values() if k.name not in available_backends()]
    assert uninstalled_backend in missing
    for known in missing:
        assert rows[known.name].split()[1] == known.distribution
        assert "not installed" in rows[known.name]
        # The ERROR column wraps anywhere: compare without the spaces.
        assert f'pipinstall"melange[{known.extra}]"' in rows[known.name].replace(" ", "")

    # A plugin that cannot load is reported with its cause and hides nothing else.
    assert "error" in rows[broken_backend].split()
    assert "melange_no_such_module" in rows[broken_backend].replace(" ", "")


def test_backends_json(
    capsys: pytest.CaptureFixture[str], broken_backend: str, uninstalled_backend: KnownBackend
) -> None:
    assert main(["backends", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["memory"]["status"] == "ok"
    assert rows["memory"]["error"] is None
    assert "filters" in rows["memory"]["capabilities"]
    assert rows["examplemq"] == {
        "name": "examplemq",
        "distribution": "melange-examplemq",
        "version": None,
        "capabilities": None,
        "status": "not installed",
        "error": None,
        "install": 'pip install "melange[examplemq]"',
    }
    assert rows[broken_backend]["status"] == "error"
    assert "failed to load" in rows[broken_backend]["error"]


# ------------------------------------------------------------- plan / apply
def test_plan_prints_the_plan(capsys: pytest.CaptureFixture[str], topology: Path) -> None:
    assert main(["plan", str(topology)]) == 0
    out = capsys.readouterr().out
    assert f"Plan for {topology} on backend 'memory' (nothing was changed):" in out
    assert "+ create topic 'payments'" in out
    assert "+ create queue 'payment-updates-dlq'" in out
    assert "dead_letter='payment-updates-dlq' after 3 receives" in out
    assert "+ subscribe 'payments -> payment-updates' filter={'event': ['paid']}" in out
    assert "keeps nothing after it ends" in out


def test_apply_prints_what_was_done(capsys: pytest.CaptureFixture[str], topology: Path) -> None:
    assert main(["apply", str(topology), "--backend", "memory", "-o", "dedup_window=60"]) == 0
    out = capsys.readouterr().out
    assert f"Applied {topology} on backend 'memory':" in out
    assert out.count("+ ") == 4


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["plan", "{file}", "--backend", "examplemq"], 'pip install "melange[examplemq]"'),
        (["plan", "{missing}"], "cannot read topology file"),
        (["apply", "{file}", "-o", "colour=red"], "does not accept option(s) colour"),
        (["apply", "{bad}"], "unknown key 'visiblity_timeout'"),
        (["apply", "{own_dlq}"], "cannot be its own dead-letter queue"),
    ],
)
def test_errors_exit_1_with_the_message_on_stderr(
    capsys: pytest.CaptureFixture[str],
    uninstalled_backend: KnownBackend,
    tmp_path: Path,
    topology: Path,
    argv: list[str],
    expected: str,
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[queues]]\nname = "q"\nvisiblity_timeout = 3\n')
    own_dlq = tmp_path / "own.toml"
    own_dlq.write_text('[[queues]]\nname = "q"\ndead_letter_queue = "q"\n')
    paths = {"file": topology, "missing": tmp_path / "nope.toml", "bad": bad, "own_dlq": own_dlq}
    assert main([arg.format(**paths) for arg in argv]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("melange: error: ")
    assert expected in captured.err
    assert "Traceback" not in captured.err


@pytest.mark.parametrize(
    ("where", "argv"),
    [
        ("topology", ["plan", "t.toml"]),
        ("topology", ["doctor", "t.toml"]),
        ("config", ["plan", "t.toml"]),
        ("config", ["doctor", "t.toml"]),
        ("config", ["dlq", "peek", "q"]),
    ],
)
def test_a_file_that_is_not_utf8_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, where: str, argv: list[str]
) -> None:
    latin1 = 'backend = "m\u00e9mory"\n'.encode("latin-1")  # not valid UTF-8
    (tmp_path / "t.toml").write_bytes(latin1 if where == "topology" else b"")
    if where == "config":
        (tmp_path / "melange.toml").write_bytes(latin1)
    name = "t.toml" if where == "topology" else "melange.toml"
    code = main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert (
        "must be UTF-8 TOML" in captured.err + captured.out and name in captured.err + captured.out
    )
    assert code == 1
    if argv[0] != "doctor":  # doctor reports it as a failed check, on stdout
        assert captured.err.startswith("melange: error: ")
    as_json = main([*argv, "--json"])
    document = json.loads(capsys.readouterr().out)
    assert as_json == 1 and "must be UTF-8 TOML" in json.dumps(document)


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "Usage: melange [OPTIONS] COMMAND" in capsys.readouterr().err
    assert main(["plan", "x.toml", "-o", "novalue"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
    assert main(["plan", "x.toml", "--timeout", "0"]) == 2
    assert "--timeout" in capsys.readouterr().err
    assert main(["dlq", "peek", "q", "--max", "0"]) == 2
    assert "--max" in capsys.readouterr().err
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("melange 8.")


# ---------------------------------------------------------------------- demo
SUMMARY = {
    "published": "9",
    "received": "10",
    "handled": "8",
    "retried": "1",
    "dead-lettered": "1",
    "acked": "9",
    "in flight": "4",
    "left in queues": "1",
}


def assert_demo_output(out: str) -> None:
    assert "+ create queue 'payment-updates-dlq'" in out
    assert "dead_letter='payment-updates-dlq' after 3 receives" in out
    consume = out.split("== 3. Consume 'payment-updates' with a MessageDispatcher")[1]
    consume = consume.split("== 4.")[0]

    # Every payment but the flaky one is recorded on its first delivery, exactly once.
    for n in (1001, *range(1003, 1009)):
        recorded = re.findall(rf"pay-{n}\s+delivery (\d): recorded .* -> ack", consume)
        assert recorded == ["1"], (n, recorded)
    # The flaky one fails once, is nacked with the retry delay, and succeeds 2 simulated s later.
    assert re.search(r"t=\s+0s .*pay-1002\s+delivery 1: handler failed: TimeoutError", consume)
    assert "-> nack, redelivered in 2s" in consume
    assert re.search(
        r"t=\s+2s \[9/9\] worker \d\s+pay-1002\s+delivery 2: recorded 99.00 USD", consume
    )
    # The poison message is received once and dead-lettered by the dispatcher.
    assert len(re.findall(r"msg \w{8} delivery 1: cannot decode it", consume)) == 1
    assert "is not valid JSON" in consume
    assert "-> on_undecodable: moved to 'payment-updates-dlq', then acked" in consume
    # Several workers handled messages.
    assert len(set(re.findall(r"worker (\d)", consume))) >= 2

    dlq_section = out.split("== 4. Dead-letter queue 'payment-updates-dlq'")[1]
    assert re.search(r"msg \w{8}: 45 bytes \(body intact\)", dlq_section)
    assert (
        "event=paid, melange.dead-letter-reason=undecodable, "
        "melange.dead-letter-source=payment-updates, melange.manifest=payment.v1, "
        "melange.serializer=json"
    ) in dlq_section
    # Logs show ids, never bodies: the poison body's content appears nowhere.
    assert "melange.dispatcher: queue=payment-updates message_id=" in out
    assert "pay-1009" not in out

    summary = out.split("== 6. Summary")[1]
    for label, count in SUMMARY.items():
        assert re.search(rf"^\s+{label}\s+{count}\s", summary, re.MULTILINE), label
    assert "payment-updates: 0, payment-updates-dlq: 1" in summary


def test_demo_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    captured = capsys.readouterr()
    assert_demo_output(captured.out)
    assert captured.err == ""


def test_demo_summary_counts_come_from_the_run() -> None:
    import io

    from melange.demo import POISON_BODY

    summary = run_demo(io.StringIO())
    assert summary.published == 9
    stats = summary.stats
    assert (stats.received, stats.handled, stats.retried, stats.dead_lettered) == (10, 8, 1, 1)
    assert (stats.acked, stats.undecodable, stats.max_in_flight) == (9, 1, 4)
    assert summary.dead_letter_bodies == [POISON_BODY]
    assert summary.left_in_queues == {QUEUE: 0, DEAD_LETTER_QUEUE: 1}
    assert summary.workers_used >= 2
    assert summary.seconds < 3.0


def test_installed_console_script_runs_the_demo(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / ("melange.exe" if os.name == "nt" else "melange")
    if not script.exists():
        pytest.fail(f"console script {script} is missing; run `make install`")
    result = subprocess.run(
        [str(script), "demo"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env={**os.environ, "MELANGE_BACKEND": "gone"},  # the demo must not read configuration
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # the dispatcher's warnings are shown in the output, not leaked
    assert_demo_output(result.stdout)
