"""The ``melange`` CLI against the Service Bus stand-ins, configured by environment, as processes.

The acceptance of issue 15 on ``azure``: messages the runtime dead-lettered
are listed by ``melange dlq peek`` (and stay), moved back byte for byte by
``melange dlq redrive`` and consumed after the fix; a redrive killed with
SIGKILL half-way and run again loses nothing. (The black-holed endpoint is
tested on gcp and localsqs.)
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

import pytest
from melange_azure import AzureServiceBusBackend
from standin import ServiceBusStandIn

from melange import MessageDispatcher, MessagingBackendFactory
from melange.backends.base import MessagingBackend, OutgoingMessage, ReceivedMessage
from melange.cli import TEST_PAUSE_VARIABLE
from melange.consumers import Consumer
from melange.message import Message
from melange.retry import RetryPolicy


def cli_env(service_bus: ServiceBusStandIn, **extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("MELANGE_")}
    env.update(
        MELANGE_BACKEND="azure",
        MELANGE_OPTION_CONNECTION_STRING=service_bus.connection_string,
        MELANGE_OPTION_MANAGEMENT_URL=service_bus.management_url,
    )
    env.update(extra)
    return env


@pytest.fixture
def unique() -> str:
    return f"mlg-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def melange(service_bus: ServiceBusStandIn, tmp_path: Path) -> Any:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "melange.cli", *args],
            capture_output=True,
            text=True,
            env=cli_env(service_bus),
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


# A backend that received from a queue keeps what it released on its receive link until it
# is closed (other receivers, such as the CLI's process, do not see those messages meanwhile):
# every receive here uses a backend of its own, closed at once.
Connect = Callable[[], MessagingBackend]


def dispatch(connect: Connect, queue: str, handler: Orders, done: Callable[[], bool]) -> None:
    """Run a dispatcher on ``queue`` until ``done()`` (it keeps receiving meanwhile)."""
    with connect() as backend:
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


def holds(connect: Connect, queue: str, count: int) -> Callable[[], bool]:
    """Whether ``queue`` holds ``count`` messages now (they are released at once)."""

    def check() -> bool:
        return len(raw(connect, queue, count, seconds=1.0)) >= count

    return check


def raw(connect: Connect, queue: str, count: int, seconds: float = 10.0) -> list[ReceivedMessage]:
    """Receive ``count`` messages (or what comes within ``seconds``) and release them."""
    held: dict[str, ReceivedMessage] = {}
    with connect() as backend:
        deadline = time.monotonic() + seconds
        while len(held) < count and time.monotonic() < deadline:
            for message in backend.receive(queue, 10, 1.0):
                held[message.message_id] = message
        backend.nack(list(held.values()), 0.0)
    return list(held.values())


def empty(connect: Connect, queue: str) -> bool:
    return raw(connect, queue, 1, seconds=1.0) == []


@pytest.fixture
def connect(service_bus: ServiceBusStandIn) -> Connect:
    def make() -> MessagingBackend:
        return AzureServiceBusBackend(
            connection_string=service_bus.connection_string,
            management_url=service_bus.management_url,
        )

    return make


def exact(messages: list[ReceivedMessage]) -> list[tuple[bytes, list[tuple[str, str]]]]:
    return sorted((m.body, sorted(m.attributes.items())) for m in messages)


def test_runtime_dead_letters_are_peeked_redriven_and_consumed_after_the_fix(
    backend: AzureServiceBusBackend, unique: str, tmp_path: Path, melange: Any, connect: Connect
) -> None:
    queue, dlq = unique, f"{unique}-dlq"
    low = 3  # above 1: checking the redriven messages counts one delivery
    MessagingBackendFactory(backend).init_queue(
        queue, dead_letter_queue_name=dlq, max_receive_count=low, visibility_timeout=5
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
        connect, queue, Orders(broken=True), holds(connect, dlq, 3)
    )  # every delivery fails: dead-lettered
    dead = raw(connect, dlq, 3)
    assert sorted(m.body for m in dead) == sorted(published)
    assert sorted(m.attributes.get("n", "-") for m in dead) == ["-", "-", "2"]

    peeked = melange("dlq", "peek", queue, "--json")
    assert peeked.returncode == 0, peeked.stderr
    rows = json.loads(peeked.stdout)["messages"]
    assert sorted(row["size"] for row in rows) == sorted(map(len, published)), peeked.stdout
    assert sorted(json.dumps(row["attributes"], sort_keys=True) for row in rows) == sorted(
        json.dumps(dict(m.attributes), sort_keys=True) for m in dead
    )
    assert exact(raw(connect, dlq, 3)) == exact(dead)  # the peek left them all there

    redriven = melange("dlq", "redrive", queue, "--json")
    assert redriven.returncode == 0, redriven.stderr
    document = json.loads(redriven.stdout)
    assert (document["moved"], document["failed"]) == (3, [])
    assert exact(raw(connect, queue, 3)) == exact(dead)  # bodies and attributes, exactly
    assert empty(connect, dlq)

    fixed = Orders(broken=False)
    dispatch(connect, queue, fixed, lambda: len(fixed.handled) >= 3)
    assert sorted(fixed.handled, key=json.dumps) == sorted(
        (json.loads(body) for body in published), key=json.dumps
    )
    assert empty(connect, queue) and empty(connect, dlq)


def test_a_redrive_killed_half_way_and_run_again_loses_nothing(
    backend: AzureServiceBusBackend,
    unique: str,
    tmp_path: Path,
    melange: Any,
    service_bus: ServiceBusStandIn,
    connect: Connect,
) -> None:
    queue, dlq = unique, f"{unique}-dlq"
    bodies = [f"message {n}".encode() for n in range(15)]  # two receive batches at least
    MessagingBackendFactory(backend).init_queue(
        queue, dead_letter_queue_name=dlq, visibility_timeout=5
    )
    backend.publish(dlq, [OutgoingMessage(body, {"n": str(n)}) for n, body in enumerate(bodies)])

    first = subprocess.Popen(
        [sys.executable, "-m", "melange.cli", "dlq", "redrive", queue],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(service_bus, **{TEST_PAUSE_VARIABLE: "60"}),
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

    back = raw(connect, queue, len(bodies))
    assert {m.body for m in back} == set(bodies)  # every one back; duplicates allowed
    assert all(m.attributes["n"] == str(bodies.index(m.body)) for m in back)
    assert empty(connect, dlq)
