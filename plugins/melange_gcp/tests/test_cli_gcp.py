"""The ``melange`` CLI against the Pub/Sub emulator, configured by environment, in subprocesses.

The acceptance of issue 15 on ``gcp``: messages the runtime dead-lettered are
listed by ``melange dlq peek`` (and stay), moved back byte for byte by
``melange dlq redrive`` and consumed after the fix; a redrive killed with
SIGKILL half-way and run again loses nothing; ``apply``, ``plan``, ``dlq`` and
``doctor`` against an endpoint that never answers fail within ``--timeout``
naming it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from melange_gcp import GCPPubSubBackend

from melange import MessageDispatcher, MessagingBackendFactory
from melange.backends.base import MessagingBackend, OutgoingMessage, ReceivedMessage
from melange.cli import TEST_PAUSE_VARIABLE
from melange.consumers import Consumer
from melange.message import Message
from melange.retry import RetryPolicy


def cli_env(emulator_host: str, project: str, **extra: str) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("MELANGE_") and name != "PUBSUB_EMULATOR_HOST"
    }
    env.update(
        MELANGE_BACKEND="gcp",
        MELANGE_OPTION_PROJECT=project,
        MELANGE_OPTION_EMULATOR_HOST=emulator_host,
    )
    env.update(extra)
    return env


@pytest.fixture
def melange(emulator_host: str, gcp_project: str, tmp_path: Path) -> Any:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "melange.cli", *args],
            capture_output=True,
            text=True,
            env=cli_env(emulator_host, gcp_project),
            cwd=tmp_path,
            timeout=120,
            check=False,
        )

    return run


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
    backend: GCPPubSubBackend, unique: str, tmp_path: Path, melange: Any
) -> None:
    queue, dlq = unique, f"{unique}-dlq"
    low = backend.capabilities.max_receive_count_range[0]
    MessagingBackendFactory(backend).init_queue(
        queue, dead_letter_queue_name=dlq, max_receive_count=low, visibility_timeout=10
    )
    # Formatting a re-serialization would change, and non-ASCII: byte-exactness shows.
    spaced = '{"order":  2 ,\n "note": "ünïcöde ✓"}'.encode()
    (tmp_path / "order.json").write_bytes(spaced)
    sent = melange(
        "publish", queue, "-f", "order.json", "--json",
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
    )  # every delivery fails: dead-lettered
    dead = raw(backend, dlq, 3)
    assert sorted(m.body for m in dead) == sorted(published)
    assert sorted(m.attributes.get("n", "-") for m in dead) == ["-", "-", "2"]

    peeked = melange("dlq", "peek", queue, "--json")
    assert peeked.returncode == 0, peeked.stderr
    rows = json.loads(peeked.stdout)["messages"]
    assert sorted(row["size"] for row in rows) == sorted(map(len, published))
    assert sorted(json.dumps(row["attributes"], sort_keys=True) for row in rows) == sorted(
        json.dumps(dict(m.attributes), sort_keys=True) for m in dead
    )
    assert exact(raw(backend, dlq, 3)) == exact(dead)  # the peek left them all there

    redriven = melange("dlq", "redrive", queue, "--json")
    assert redriven.returncode == 0, redriven.stderr
    document = json.loads(redriven.stdout)
    assert (document["moved"], document["failed"]) == (3, [])
    assert exact(raw(backend, queue, 3)) == exact(dead)  # bodies and attributes, exactly
    assert empty(backend, dlq)

    fixed = Orders(broken=False)
    dispatch(backend, queue, fixed, lambda: len(fixed.handled) >= 3)
    assert sorted(fixed.handled, key=json.dumps) == sorted(
        (json.loads(body) for body in published), key=json.dumps
    )
    assert empty(backend, queue) and empty(backend, dlq)


def test_a_redrive_killed_half_way_and_run_again_loses_nothing(
    backend: GCPPubSubBackend,
    unique: str,
    tmp_path: Path,
    melange: Any,
    emulator_host: str,
    gcp_project: str,
) -> None:
    queue, dlq = unique, f"{unique}-dlq"
    bodies = [f"message {n}".encode() for n in range(15)]  # two receive batches at least
    MessagingBackendFactory(backend).init_queue(
        queue, dead_letter_queue_name=dlq, visibility_timeout=10
    )
    backend.publish(dlq, [OutgoingMessage(body, {"n": str(n)}) for n, body in enumerate(bodies)])

    first = subprocess.Popen(
        [sys.executable, "-m", "melange.cli", "dlq", "redrive", queue],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(emulator_host, gcp_project, **{TEST_PAUSE_VARIABLE: "60"}),
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

    again = melange("dlq", "redrive", queue, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["moved"] >= len(bodies) - moved_first

    back = raw(backend, queue, len(bodies))
    assert {m.body for m in back} == set(bodies)  # every one back; duplicates allowed
    assert all(m.attributes["n"] == str(bodies.index(m.body)) for m in back)
    assert empty(backend, dlq)


# ------------------------------------------------------------------ timeout
@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        yield server.getsockname()[1]


def test_a_black_holed_emulator_fails_within_the_timeout_naming_it(
    black_hole: int, tmp_path: Path, gcp_project: str
) -> None:
    path = tmp_path / "t.toml"
    path.write_text('[[queues]]\nname = "orders"\n')
    commands = [["plan", str(path)], ["apply", str(path)], ["dlq", "peek", "q"], ["doctor"]]
    started = time.monotonic()
    running = [  # all at once: each waits on the black hole, not on the CPU
        subprocess.Popen(
            [sys.executable, "-m", "melange.cli", *command, "--timeout", "2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(f"127.0.0.1:{black_hole}", gcp_project),
            cwd=tmp_path,
        )
        for command in commands
    ]
    for command, process in zip(commands, running, strict=True):
        out, err = process.communicate(timeout=60)
        assert process.returncode == 1, (command, out, err)
        # doctor prints its failed check on standard output; the others fail on standard error.
        output = out if command == ["doctor"] else err
        assert "within 2 s" in output, (command, output)
        assert f"backend 'gcp' at 127.0.0.1:{black_hole}" in output, (command, output)
        assert "Traceback" not in err
    assert time.monotonic() - started < 30
