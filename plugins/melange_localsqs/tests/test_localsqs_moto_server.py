"""MotoServer: starts a real moto server, reports why it cannot, and always stops it."""

from __future__ import annotations

import os
import socket
import subprocess
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
    assert moto_server.running and moto_server.patch_sqs
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


def test_the_patched_server_names_its_program_in_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'cannot start' >&2\nexit 4\n")
    fake.chmod(0o755)
    with pytest.raises(MotoServerError) as error:
        MotoServer(python=str(fake), patch_sqs=True).start()
    message = str(error.value)
    assert "exited with code 4" in message and "cannot start" in message
    assert f"{fake} -c <PATCHED_SERVER> -H 127.0.0.1 -p " in message


# Run in a child process: the patch is for the whole process, and must not leak into the
# other tests (the aws plugin's in-process moto mock) of this one.
_PATCH_CHECK = """
import threading, time
import boto3
import moto.sqs.models as models
from moto import mock_aws
from moto.core import utils
from melange_localsqs.testing import patch_moto_sqs

original_clock = models.unix_time
patch_moto_sqs()
patch_moto_sqs()  # idempotent
assert abs(models.unix_time() - original_clock()) < 1.0, "the same clock, read faster"
assert models.unix_time(utils.utcfromtimestamp(12)) == 12.0

with mock_aws():
    sqs = boto3.client(
        "sqs", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    url = sqs.create_queue(QueueName="locked")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="one")
    queue = models.sqs_backends["123456789012"]["us-east-1"].queues["locked"]

    def blocked_while_the_queue_is_locked(call):
        done = threading.Event()
        with queue._messages_lock:
            threading.Thread(target=lambda: (call(), done.set()), daemon=True).start()
            assert not done.wait(0.5), "ran while another thread held the queue's lock"
        assert done.wait(10), "never ran once the lock was released"

    received = []
    blocked_while_the_queue_is_locked(
        lambda: received.extend(sqs.receive_message(QueueUrl=url)["Messages"])
    )
    handle = received[0]["ReceiptHandle"]
    blocked_while_the_queue_is_locked(
        lambda: sqs.delete_message(QueueUrl=url, ReceiptHandle=handle)
    )
    assert "Messages" not in sqs.receive_message(QueueUrl=url)
    # A long poll waits on the lock's condition, releasing it: a send gets through.
    threading.Timer(0.3, lambda: sqs.send_message(QueueUrl=url, MessageBody="two")).start()
    started = time.monotonic()
    late = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=5)["Messages"]
    assert [m["Body"] for m in late] == ["two"] and time.monotonic() - started < 4
print("ok")
"""


def test_patch_moto_sqs_keeps_the_clock_and_serializes_receive_and_delete() -> None:
    # No AWS_* setting of this machine or of earlier tests (AWS_ENDPOINT_URL) reaches boto3.
    env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    result = subprocess.run(
        [sys.executable, "-c", _PATCH_CHECK], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
