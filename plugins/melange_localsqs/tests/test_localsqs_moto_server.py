"""MotoServer: starts a real moto server, reports why it cannot, and always stops it."""

from __future__ import annotations

import os
import socket
import sys
import urllib.request

import boto3
import pytest
from melange_localsqs.testing import MotoServer, MotoServerError, port_in_use


def sqs_client(endpoint_url: str):  # type: ignore[no-untyped-def]
    return boto3.client(
        "sqs",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def test_session_server_answers_sqs_over_http(moto_server: MotoServer) -> None:
    assert moto_server.running
    assert moto_server.endpoint_url == f"http://127.0.0.1:{moto_server.port}"
    client = sqs_client(moto_server.endpoint_url)
    url = client.create_queue(QueueName="moto-server-smoke")["QueueUrl"]
    client.send_message(QueueUrl=url, MessageBody="over http")
    received = client.receive_message(QueueUrl=url)["Messages"]
    assert [m["Body"] for m in received] == ["over http"]
    client.delete_queue(QueueUrl=url)


def test_a_given_port_is_used_and_stop_ends_the_process_group() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = MotoServer(port)
    with server:
        assert server.port == port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/") as response:
            assert response.status == 200
        pid = server._process.pid  # type: ignore[union-attr]
    assert not server.running
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # no process of its group is left
    assert not port_in_use("127.0.0.1", port)
    server.stop()  # idempotent


def test_server_is_stopped_when_the_block_fails() -> None:
    server = MotoServer()
    with pytest.raises(RuntimeError, match="boom"), server:
        raise RuntimeError("boom")
    assert not server.running


def test_a_port_in_use_is_refused_with_the_port_named() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MotoServerError, match=rf"127\.0\.0\.1:{port}: the port is already in"):
            MotoServer(port).start()


def test_a_server_that_dies_at_startup_reports_its_output(tmp_path) -> None:  # type: ignore[no-untyped-def]
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'ModuleNotFoundError: No module named flask' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(MotoServerError) as error:
        MotoServer(python=str(fake)).start()
    message = str(error.value)
    assert "exited with code 3" in message
    assert "No module named flask" in message  # the server's own output
    assert 'pip install "moto[server]"' in message  # and how to fix it


def test_a_server_that_never_answers_times_out_and_is_stopped(tmp_path) -> None:  # type: ignore[no-untyped-def]
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'listening soon'\nexec sleep 60\n")
    fake.chmod(0o755)
    server = MotoServer(python=str(fake), startup_timeout=0.5)
    with pytest.raises(MotoServerError, match=r"did not answer HTTP .* within 0\.5 s") as error:
        server.start()
    assert "listening soon" in str(error.value)
    assert not server.running


def test_missing_moto_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "moto" else real_find_spec(name, *a),
    )
    with pytest.raises(MotoServerError, match=r'install it with `pip install "moto\[server\]"`'):
        MotoServer(python=sys.executable).start()


def test_port_is_unknown_before_start() -> None:
    with pytest.raises(MotoServerError, match="has not been started"):
        _ = MotoServer().endpoint_url
