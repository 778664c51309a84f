"""The ``melange`` CLI against a moto server, chosen through the configuration, in subprocesses.

The acceptance of issue 15 on ``localsqs``: messages the runtime dead-lettered
are listed by ``melange dlq peek`` (and stay), moved back byte for byte by
``melange dlq redrive`` and consumed after the fix; a redrive killed with
SIGKILL half-way and run again loses nothing. Also ``publish``, ``tail`` (with
Ctrl-C) and ``doctor`` on a real endpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from melange_localsqs import LocalSQSBackend
from melange_localsqs.testing import MotoServer

from melange import MessageDispatcher, MessagingBackendFactory
from melange.backends.base import MessagingBackend, OutgoingMessage, ReceivedMessage
from melange.cli import TEST_PAUSE_VARIABLE
from melange.consumers import Consumer
from melange.message import Message
from melange.retry import RetryPolicy

BODIES = [b'{"order": 1}', b"\x00\xff\xfe not utf-8 \r\n", b"x" * 2000]


def cli_env(server: MotoServer, **extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("MELANGE_")}
    env.update(MELANGE_BACKEND="localsqs", MELANGE_OPTION_ENDPOINT_URL=server.endpoint_url)
    env.update(extra)
    return env


def melange(server: MotoServer, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "melange.cli", *args],
        capture_output=True,
        text=True,
        env=cli_env(server),
        cwd=cwd,
        timeout=120,
        check=False,
    )


def test_peek_redrive_purge_through_the_configuration(
    moto_server: MotoServer, tmp_path: Path
) -> None:
    queue = f"cli-{uuid.uuid4().hex[:8]}"
    dlq = f"{queue}-dlq"
    backend = LocalSQSBackend(endpoint_url=moto_server.endpoint_url)
    try:
        MessagingBackendFactory(backend).init_queue(queue, dead_letter_queue_name=dlq)
        backend.publish(dlq, [OutgoingMessage(body, {"event": "paid"}) for body in BODIES])

        peeked = melange(moto_server, tmp_path, "dlq", "peek", queue, "--json")
        assert peeked.returncode == 0, peeked.stderr
        rows = json.loads(peeked.stdout)["messages"]
        assert sorted(row["size"] for row in rows) == sorted(len(b) for b in BODIES)
        assert all(row["attributes"]["event"] == "paid" for row in rows)

        redriven = melange(moto_server, tmp_path, "dlq", "redrive", queue, "--json")
        assert redriven.returncode == 0, redriven.stderr
        assert json.loads(redriven.stdout)["moved"] == 3  # peek left all three there
        back = backend.receive(queue, 10, 2.0)
        assert sorted(m.body for m in back) == sorted(BODIES)  # byte-exact
        assert all(m.attributes["event"] == "paid" for m in back)
        backend.ack(back)

        backend.publish(dlq, [OutgoingMessage(b"again", {})])
        purged = melange(moto_server, tmp_path, "dlq", "purge", queue, "--yes")
        assert purged.returncode == 0, purged.stderr
        assert f"deleted 1 message(s) from {dlq!r}" in purged.stdout
        assert backend.receive(dlq, 10, 1.0) == []

        missing = melange(moto_server, tmp_path, "dlq", "peek", "no-such-queue")
        assert missing.returncode == 1
        assert missing.stderr.startswith("melange: error: ") and "no-such-queue" in missing.stderr
        assert "Traceback" not in missing.stderr
    finally:
        backend.close()


# ------------------------------------------------------- issue 15 acceptance
class Orders(Consumer):
    """Fails every message while ``broken``; records the decoded bodies once fixed."""

    def __init__(self, *, broken: bool) -> None:
        super().__init__()
        self.broken = broken
        self.handled: list[Any] = []

    def process(self, message: Message) -> None:
        if self.broken:
            raise RuntimeError("the handler is broken")
        self.handled.append(message.body)


def dispatch(
    backend: MessagingBackend, queue: str, handler: Orders, done: Callable[[], bool]
) -> None:
    """Run a dispatcher on ``queue`` until ``done()`` (it keeps receiving meanwhile)."""
    dispatcher = MessageDispatcher(
        backend,
        queue,
        [handler],
        retry=RetryPolicy(base=0.1, max_delay=0.2, jitter=0.0),
        wait_seconds=0.5,
        close_backend=False,
    )
    dispatcher.start()
    try:
        deadline = time.monotonic() + 60
        while not done():
            assert time.monotonic() < deadline, dispatcher.stats.snapshot()
            time.sleep(0.2)
    finally:
        dispatcher.stop(timeout=30)


def holds(backend: MessagingBackend, queue: str, count: int) -> Callable[[], bool]:
    """Whether ``queue`` holds ``count`` messages now (they are released at once)."""

    def check() -> bool:
        found = backend.receive(queue, 10, 0.5)
        backend.nack(found, 0.0)
        return len(found) >= count

    return check


def raw(backend: MessagingBackend, queue: str, count: int) -> list[ReceivedMessage]:
    """Receive ``count`` messages (or what comes within 10 s) and release them."""
    held: dict[str, ReceivedMessage] = {}
    deadline = time.monotonic() + 10
    while len(held) < count and time.monotonic() < deadline:
        for message in backend.receive(queue, 10, 1.0):
            held[message.message_id] = message
    backend.nack(list(held.values()), 0.0)
    return list(held.values())


def empty(backend: MessagingBackend, queue: str) -> bool:
    found = backend.receive(queue, 10, 1.0)
    backend.nack(found, 0.0)
    return found == []


def exact(messages: list[ReceivedMessage]) -> list[tuple[bytes, list[tuple[str, str]]]]:
    return sorted((m.body, sorted(m.attributes.items())) for m in messages)


def test_runtime_dead_letters_are_peeked_redriven_and_consumed_after_the_fix(
    moto_server: MotoServer, tmp_path: Path
) -> None:
    queue = f"acc-{uuid.uuid4().hex[:8]}"
    dlq = f"{queue}-dlq"
    backend = LocalSQSBackend(endpoint_url=moto_server.endpoint_url)
    try:
        MessagingBackendFactory(backend).init_queue(
            queue, dead_letter_queue_name=dlq, max_receive_count=2, visibility_timeout=5
        )
        # Formatting a re-serialization would change, and non-ASCII: byte-exactness shows.
        spaced = '{"order":  2 ,\n "note": "ünïcöde ✓"}'.encode()
        (tmp_path / "order.json").write_bytes(spaced)
        sent = melange(
            moto_server, tmp_path, "publish", queue, "-f", "order.json", "--json",
            "-a", "melange.serializer=json", "-a", "n=2",
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        assert json.loads(sent.stdout)["message_ids"][0]  # the broker's id
        json_attribute = {"melange.serializer": "json"}
        backend.publish(queue, [OutgoingMessage(b'{"order": 1}', json_attribute)])
        backend.publish(queue, [OutgoingMessage(b'{"order": 3}', json_attribute)])
        published = [b'{"order": 1}', spaced, b'{"order": 3}']

        dispatch(
            backend, queue, Orders(broken=True), holds(backend, dlq, 3)
        )  # every delivery fails: SQS dead-letters
        dead = raw(backend, dlq, 3)
        assert sorted(m.body for m in dead) == sorted(published)
        assert sorted(m.attributes.get("n", "-") for m in dead) == ["-", "-", "2"]

        peeked = melange(moto_server, tmp_path, "dlq", "peek", queue, "--json")
        assert peeked.returncode == 0, peeked.stderr
        rows = json.loads(peeked.stdout)["messages"]
        assert sorted(row["size"] for row in rows) == sorted(map(len, published))
        assert sorted((row["id"], row["attributes"]) for row in rows) == sorted(
            (m.message_id, dict(m.attributes)) for m in dead
        )
        assert exact(raw(backend, dlq, 3)) == exact(dead)  # the peek left them all there

        redriven = melange(moto_server, tmp_path, "dlq", "redrive", queue, "--json")
        assert redriven.returncode == 0, redriven.stderr
        assert json.loads(redriven.stdout) == {
            "source": dlq,
            "target": queue,
            "dry_run": False,
            "moved": 3,
            "failed": [],
        }
        assert exact(raw(backend, queue, 3)) == exact(dead)  # bodies and attributes, exactly
        assert empty(backend, dlq)

        fixed = Orders(broken=False)
        dispatch(backend, queue, fixed, lambda: len(fixed.handled) >= 3)
        assert sorted(fixed.handled, key=json.dumps) == sorted(
            (json.loads(body) for body in published), key=json.dumps
        )
        assert empty(backend, queue) and empty(backend, dlq)
    finally:
        backend.close()


def test_a_redrive_killed_half_way_and_run_again_loses_nothing(
    moto_server: MotoServer, tmp_path: Path
) -> None:
    queue = f"kill-{uuid.uuid4().hex[:8]}"
    dlq = f"{queue}-dlq"
    backend = LocalSQSBackend(endpoint_url=moto_server.endpoint_url)
    bodies = [f"message {n}".encode() for n in range(15)]  # two receive batches at least
    try:
        MessagingBackendFactory(backend).init_queue(
            queue, dead_letter_queue_name=dlq, visibility_timeout=2
        )
        backend.publish(
            dlq, [OutgoingMessage(body, {"n": str(n)}) for n, body in enumerate(bodies)]
        )

        first = subprocess.Popen(
            [sys.executable, "-m", "melange.cli", "dlq", "redrive", queue],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(moto_server, **{TEST_PAUSE_VARIABLE: "60"}),
            cwd=tmp_path,
        )
        try:
            assert first.stderr is not None
            line = first.stderr.readline()  # written after the first batch is moved
            assert line.startswith("melange: test pause after "), line
            moved_first = int(line.split()[4])
            assert 0 < moved_first < len(bodies)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(30)
        assert first.returncode == -signal.SIGKILL

        again = melange(moto_server, tmp_path, "dlq", "redrive", queue, "--json")
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["moved"] >= len(bodies) - moved_first

        back = raw(backend, queue, len(bodies))
        assert {m.body for m in back} == set(bodies)  # every one back; duplicates allowed
        assert all(m.attributes["n"] == str(bodies.index(m.body)) for m in back)
        assert empty(backend, dlq)
    finally:
        backend.close()


def test_publish_tail_and_doctor_on_a_real_endpoint(
    moto_server: MotoServer, tmp_path: Path
) -> None:
    queue = f"tail-{uuid.uuid4().hex[:8]}"
    backend = LocalSQSBackend(endpoint_url=moto_server.endpoint_url)
    try:
        MessagingBackendFactory(backend).init_queue(queue, visibility_timeout=60)
        backend.publish(queue, [OutgoingMessage(b"\xff\x00", {"k": "v"}), OutgoingMessage(b"hi")])

        tailed = melange(moto_server, tmp_path, "tail", queue, "--max", "2", "--json")
        assert tailed.returncode == 0, tailed.stderr
        lines = [json.loads(line) for line in tailed.stdout.splitlines()]
        assert sorted(line["body_encoding"] for line in lines) == ["base64", "utf-8"]

        # Ctrl-C while it waits for more: it releases what it holds (visibility 60 s).
        running = subprocess.Popen(
            [sys.executable, "-m", "melange.cli", "tail", queue, "--wait-seconds", "1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(moto_server),
            cwd=tmp_path,
        )
        assert running.stdout is not None
        shown = [running.stdout.readline(), running.stdout.readline()]
        running.send_signal(signal.SIGINT)
        _, err = running.communicate(timeout=30)
        assert running.returncode == 130, err
        assert all("receives=2" in line for line in shown), shown
        assert "2 message(s) shown, released" in err and "Traceback" not in err
        assert sorted(m.body for m in backend.receive(queue, 10, 1.0)) == [b"hi", b"\xff\x00"]

        doctor = melange(moto_server, tmp_path, "doctor", "--write-check", "--json")
        assert doctor.returncode == 0, doctor.stdout
        checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
        assert "from the environment" in checks["configuration"]["detail"]
        assert checks["plugin"]["detail"].startswith("'localsqs' from melange-localsqs ")
        assert checks["reachable"]["status"] == "ok"
        assert checks["permissions"]["status"] == "ok"
    finally:
        backend.close()
