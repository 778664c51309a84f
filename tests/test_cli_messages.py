"""``melange publish`` and ``melange tail`` in-process, on a memory backend given as CliState.

The localsqs plugin runs them as subprocesses against a moto server, with
Ctrl-C (plugins/melange_localsqs/tests/test_cli_localsqs.py).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from melange import MessagingBackendFactory
from melange.backends.base import OutgoingMessage, ReceivedMessage
from melange.backends.memory import MemoryBackend
from melange.cli import CliState, cli

QUEUE, FIFO, TOPIC = "orders", "orders.fifo", "payments"


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
    factory.init_queue(QUEUE)
    factory.init_queue(FIFO, fifo=True)
    factory.init_topic(TOPIC)
    factory.init_queue("paid", [TOPIC])
    yield memory
    memory.close()


def run(backend: MemoryBackend | None, *args: str, stdin: bytes | None = None) -> Result:
    obj = CliState(backend=backend)
    return CliRunner().invoke(cli, list(args), obj=obj, input=stdin, catch_exceptions=False)


def everything(backend: MemoryBackend, queue: str) -> list[ReceivedMessage]:
    received = backend.receive(queue, 10, 0.1)
    backend.nack(received, 0.0)
    return received


# ------------------------------------------------------------------ publish
def test_publish_sends_the_exact_bytes_from_each_source(
    backend: MemoryBackend, tmp_path: Path
) -> None:
    raw = b"\x00\xff\xfe not utf-8 \r\n"
    path = tmp_path / "body.bin"
    path.write_bytes(raw)

    from_argument = run(backend, "publish", QUEUE, '{"order": 1}', "-a", "event=paid", "--json")
    assert from_argument.exit_code == 0, from_argument.output
    document = json.loads(from_argument.stdout)
    assert document["queue"] == QUEUE and document["size"] == 12
    [message] = everything(backend, QUEUE)
    assert message.message_id == document["message_ids"][0]  # the id printed is the broker's
    assert message.body == b'{"order": 1}'
    assert dict(message.attributes) == {"event": "paid"}  # nothing added by the CLI
    backend.ack([message])

    assert run(backend, "publish", QUEUE, "--file", str(path)).exit_code == 0
    assert run(backend, "publish", QUEUE, "-", stdin=raw + b"\n").exit_code == 0
    stdin_file = run(backend, "publish", QUEUE, "-f", "-", "-a", "a=1", "-a", "b=x=y", stdin=b"")
    assert stdin_file.exit_code == 0
    bodies = sorted((m.body, dict(m.attributes)) for m in everything(backend, QUEUE))
    assert bodies == sorted([(raw, {}), (raw + b"\n", {}), (b"", {"a": "1", "b": "x=y"})])


def test_publish_to_a_topic_and_to_a_fifo_queue(backend: MemoryBackend) -> None:
    result = run(backend, "publish", "--topic", TOPIC, "paid!", "-a", "event=paid")
    assert result.exit_code == 0, result.output
    assert f"published 5 byte(s) to topic {TOPIC!r}: message id " in result.stdout
    assert [m.body for m in everything(backend, "paid")] == [b"paid!"]

    for _ in range(2):  # the same dedup id within the window: stored once
        sent = run(backend, "publish", FIFO, "one", "--group-id", "g1", "--dedup-id", "d1")
        assert sent.exit_code == 0, sent.output
    [message] = everything(backend, FIFO)
    assert (message.body, message.group_id) == (b"one", "g1")


@pytest.mark.parametrize(
    ("args", "error_type", "expected"),
    [
        (["missing", "x"], "QueueNotFound", "queue 'missing' does not exist"),
        (["--topic", "nowhere", "x"], "TopicNotFound", "topic 'nowhere' does not exist"),
        ([QUEUE, "x", "--group-id", "g"], "InvalidMessage", "standard queue"),
    ],
)
def test_publish_refusals_exit_1_and_send_nothing(
    backend: MemoryBackend, args: list[str], error_type: str, expected: str
) -> None:
    plain = run(backend, "publish", *args)
    assert plain.exit_code == 1
    assert plain.stderr.startswith("melange: error: ") and expected in plain.stderr
    assert "Traceback" not in plain.stderr
    as_json = json.loads(run(backend, "publish", *args, "--json").stdout)
    assert as_json["type"] == error_type and expected in as_json["error"]
    assert everything(backend, QUEUE) == [] and everything(backend, "paid") == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "give a QUEUE"),
        ([QUEUE], "no body"),
        ([QUEUE, "x", "--file", "{missing}"], "No such file"),
        ([QUEUE, "x", "--file", "{existing}"], "not both"),
        ([QUEUE, "a", "b"], "got 3 arguments"),
        (["--topic", TOPIC, QUEUE, "x"], "a queue and a topic cannot both"),
        ([QUEUE, "x", "-a", "novalue"], "expected KEY=VALUE"),
        ([QUEUE, "x", "-a", "k=1", "-a", "k=2"], "'k' is given twice"),
    ],
)
def test_publish_usage_errors_exit_2(
    backend: MemoryBackend, tmp_path: Path, args: list[str], expected: str
) -> None:
    existing = tmp_path / "exists.txt"
    existing.write_text("x")
    paths = {"missing": tmp_path / "nope.bin", "existing": existing}
    argv = [arg.format(**paths) for arg in args]
    result = run(backend, "publish", *argv)
    assert result.exit_code == 2
    assert expected in result.stderr and "Traceback" not in result.stderr
    as_json = run(backend, "publish", *argv, "--json")
    assert as_json.exit_code == 2
    assert json.loads(as_json.stdout)["type"] == "UsageError"
    assert everything(backend, QUEUE) == []


# --------------------------------------------------------------------- tail
def test_tail_prints_and_releases_by_default(backend: MemoryBackend) -> None:
    raw = b"\x00\xff raw"
    backend.publish(QUEUE, [OutgoingMessage(b'{"n": 1}', {"event": "paid"}), OutgoingMessage(raw)])

    result = run(backend, "tail", QUEUE, "--max", "2", "--json", "--wait-seconds", "0.2")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    by_body = {line["body_encoding"]: line for line in lines}
    assert by_body["utf-8"]["body"] == '{"n": 1}'
    assert by_body["utf-8"]["attributes"] == {"event": "paid"}
    assert base64.b64decode(by_body["base64"]["body"]) == raw  # the whole body, exactly
    assert all(line["receive_count"] == 1 and line["queue"] == QUEUE for line in lines)

    # Released at once, not consumed: receivable now, one receive more.
    again = backend.receive(QUEUE, 10, 0.0)
    assert sorted(m.body for m in again) == sorted([b'{"n": 1}', raw])
    assert {m.receive_count for m in again} == {2}
    backend.nack(again, 0.0)

    text = run(backend, "tail", QUEUE, "--max", "1", "--wait-seconds", "0.2")
    assert text.exit_code == 0
    assert "receives=3" in text.stdout
    assert len(everything(backend, QUEUE)) == 2


def test_tail_ack_consumes_exactly_what_it_printed(backend: MemoryBackend) -> None:
    backend.publish(QUEUE, [OutgoingMessage(f"m{n}".encode()) for n in range(5)])
    result = run(backend, "tail", QUEUE, "--ack", "--max", "3", "--json", "--wait-seconds", "0")
    assert result.exit_code == 0, result.output
    printed = {json.loads(line)["body"] for line in result.stdout.splitlines()}
    left = {m.body.decode() for m in everything(backend, QUEUE)}
    assert len(printed) == 3 and len(left) == 2
    assert printed | left == {f"m{n}" for n in range(5)} and not printed & left


def test_tail_missing_queue_exits_1(backend: MemoryBackend) -> None:
    result = run(backend, "tail", "missing", "--wait-seconds", "0")
    assert result.exit_code == 1
    assert "queue 'missing' does not exist" in result.stderr


def test_tail_stops_on_sigterm_and_releases_what_it_holds(backend: MemoryBackend) -> None:
    backend.publish(QUEUE, [OutgoingMessage(f"m{n}".encode()) for n in range(3)])
    before = signal.getsignal(signal.SIGTERM)

    def terminate_once_tail_handles_it() -> None:
        # Never before tail's handler is in place: SIGTERM would end the test process.
        deadline = time.monotonic() + 30
        while signal.getsignal(signal.SIGTERM) == before and time.monotonic() < deadline:
            time.sleep(0.02)
        if signal.getsignal(signal.SIGTERM) != before:
            time.sleep(0.5)  # it has received and printed the three by now
            os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=terminate_once_tail_handles_it, daemon=True)
    killer.start()
    result = run(backend, "tail", QUEUE, "--wait-seconds", "0.2")
    killer.join(5)
    assert result.exit_code == 143, result.output
    assert result.stdout.count("receives=1") == 3
    assert "stopped; 3 message(s) shown, released" in result.stderr
    held = backend.receive(QUEUE, 10, 0.0)  # all three receivable at once: none held, none lost
    assert sorted(m.body for m in held) == [b"m0", b"m1", b"m2"]
    assert signal.getsignal(signal.SIGTERM) == before  # tail put the previous handler back


def test_a_long_tail_keeps_its_leases_and_dead_letters_nothing() -> None:
    # docs/cli.md: without --ack tail consumes nothing. It held each message only for
    # the queue's visibility timeout, then received it again and again: a tail longer
    # than max_receive_count visibility timeouts moved the message to the dead-letter queue.
    memory = MemoryBackend()
    factory = MessagingBackendFactory(memory)
    factory.init_queue(
        "short", dead_letter_queue_name="short-dlq", visibility_timeout=1, max_receive_count=2
    )
    memory.publish("short", [OutgoingMessage(b"hello")])
    before = signal.getsignal(signal.SIGTERM)

    def terminate_after_four_visibility_timeouts() -> None:
        deadline = time.monotonic() + 30
        while signal.getsignal(signal.SIGTERM) == before and time.monotonic() < deadline:
            time.sleep(0.02)
        if signal.getsignal(signal.SIGTERM) != before:
            time.sleep(4.0)
            os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=terminate_after_four_visibility_timeouts, daemon=True)
    killer.start()
    result = run(memory, "tail", "short", "--wait-seconds", "2")  # longer than the lease
    killer.join(10)
    assert result.exit_code == 143, result.output
    assert result.stdout.count("receives=1") == 1 and "receives=2" not in result.stdout
    assert memory.receive("short-dlq", 10, 0.0) == []
    (left,) = memory.receive("short", 10, 0.0)  # released at once, still in its queue
    assert left.body == b"hello"
    assert left.receive_count == 2  # the tail's one receive, then this one
    memory.close()
