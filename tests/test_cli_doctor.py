"""``melange doctor``: one line per check, the fix for each failure, exit 1 when one fails.

Against a moto server and a black hole: plugins/melange_localsqs/tests/test_cli_localsqs.py
and tests/test_cli_scripting.py.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from melange.backends.memory import MemoryBackend
from melange.cli import CliState, cli
from melange.topology import QueueSpec


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("MELANGE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def run(*args: str, backend: MemoryBackend | None = None) -> Result:
    return CliRunner().invoke(cli, ["doctor", *args], obj=CliState(backend), catch_exceptions=False)


def checks(result: Result) -> dict[str, dict[str, Any]]:
    return {check["name"]: check for check in json.loads(result.stdout)["checks"]}


def test_default_backend_is_a_warning_not_a_failure() -> None:
    result = run()
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("[warn] configuration")
    assert "no configuration found" in lines[0]
    assert "fix: set MELANGE_BACKEND=NAME or write a melange.toml" in lines[1]
    assert any(line.startswith("[ok  ] reachable") for line in lines)
    assert lines[-1] == "0 failed, 1 warning(s), 6 check(s)"


def test_configuration_source_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "melange.toml").write_text('backend = "memory"\n[options]\ndedup_window = 30\n')
    found = checks(run("--json"))
    assert found["configuration"]["status"] == "ok"
    assert str(tmp_path / "melange.toml") in found["configuration"]["detail"]
    assert "dedup_window" in found["configuration"]["detail"]

    monkeypatch.setenv("MELANGE_BACKEND", "memory")
    found = checks(run("--json"))
    assert "from the environment (MELANGE_BACKEND" in found["configuration"]["detail"]
    assert found["plugin"]["status"] == "ok" and "melange" in found["plugin"]["detail"]


def test_broken_configuration_fails_with_the_file_and_skips_the_rest(tmp_path: Path) -> None:
    (tmp_path / "melange.toml").write_text('backend = "memory"\n[options]\ncolour = "red"\n')
    result = run("--json")
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert document["ok"] is False
    found = {check["name"]: check for check in document["checks"]}
    assert found["configuration"]["status"] == "fail"
    assert "colour" in found["configuration"]["detail"]
    assert str(tmp_path / "melange.toml") in found["configuration"]["detail"]
    assert found["configuration"]["fix"]
    assert {found[name]["status"] for name in ("plugin", "reachable", "permissions")} == {"skip"}


def test_missing_plugin_names_what_to_install(uninstalled_backend: Any) -> None:
    result = run("--backend", uninstalled_backend.name)
    assert result.exit_code == 1
    assert "[FAIL] plugin" in result.stdout
    assert f'pip install "melange[{uninstalled_backend.extra}]"' in result.stdout
    assert "[skip] reachable" in result.stdout
    assert result.stdout.splitlines()[-1].startswith("1 failed")


def test_a_plugin_that_fails_to_load_is_the_plugin_check_not_the_configuration() -> None:
    # It was reported as [FAIL] configuration with "correct the configuration".
    from melange.backends import register_backend, unregister_backend

    register_backend("broken-example", "melange_no_such_module:Backend")
    try:
        result = run("--backend", "broken-example", "--json")
    finally:
        unregister_backend("broken-example")
    assert result.exit_code == 1
    found = checks(result)
    assert found["configuration"]["status"] == "ok"
    assert found["plugin"]["status"] == "fail"
    assert "melange_no_such_module" in found["plugin"]["detail"]
    assert "reinstall the plugin" in found["plugin"]["fix"]
    assert found["reachable"]["status"] == "skip"


def test_permissions_from_a_topology_file_and_a_write_check(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text('[[queues]]\nname = "orders"\n')
    memory = MemoryBackend()
    try:
        pending = checks(run(str(path), "--json", backend=memory))
        assert pending["permissions"]["status"] == "warn"
        assert "1 change(s) pending" in pending["permissions"]["detail"]
        assert f"melange plan {path}" in pending["permissions"]["fix"]

        memory.declare_queue(QueueSpec("orders"))
        applied = run(str(path), "--write-check", "--json", backend=memory)
        assert applied.exit_code == 0
        found = [c for c in json.loads(applied.stdout)["checks"] if c["name"] == "permissions"]
        assert [c["status"] for c in found] == ["ok", "ok"]
        assert "it is applied" in found[0]["detail"]
        probe = re.search(r"'(melange-doctor-\w+)'", found[1]["detail"])
        assert probe is not None and memory.get_queue(probe.group(1)) is None  # deleted again
    finally:
        memory.close()


def test_a_failing_broker_is_named_and_no_secret_is_printed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MELANGE_BACKEND", "localsqs")
    monkeypatch.setenv("MELANGE_OPTION_ENDPOINT_URL", "http://127.0.0.1:1")  # nothing listens
    monkeypatch.setenv("MELANGE_OPTION_AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("MELANGE_OPTION_AWS_SECRET_ACCESS_KEY", "s3cr3t-never-shown")
    result = run("--timeout", "20")
    assert result.exit_code == 1
    assert "[FAIL] reachable" in result.stdout and "127.0.0.1:1" in result.stdout
    assert "found in option aws_access_key_id" in result.stdout  # named, not shown
    assert "s3cr3t-never-shown" not in result.stdout + result.stderr
    assert "AKIDEXAMPLE" not in result.stdout + result.stderr
