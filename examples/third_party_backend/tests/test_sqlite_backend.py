"""What the conformance suite cannot know about: the file, other processes, the clock.

The shared suite (test_conformance.py) checks the melange contract; these tests
check what is particular to this backend: durability across reopen, claims that
stay exclusive across connections and processes, and its own errors.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from melange_example_sqlite import SQLiteBackend

from melange.backends import OutgoingMessage, ReceivedMessage
from melange.exceptions import (
    BackendClosed,
    BackendUnavailable,
    ConfigurationError,
    InvalidName,
    InvalidTopology,
    LeaseLost,
    QueueNotFound,
    UnsupportedCapability,
)
from melange.topology import DeadLetterPolicy, QueueSpec


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "queues.sqlite3"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def backend(db_path: Path, clock: FakeClock) -> Iterator[SQLiteBackend]:
    with SQLiteBackend(db_path, clock=clock) as opened:
        yield opened


def send(backend: SQLiteBackend, queue: str, *bodies: bytes) -> list[str]:
    results = backend.publish(queue, [OutgoingMessage(body) for body in bodies])
    assert all(result.ok for result in results)
    return [str(result.message_id) for result in results]


def receive_one(backend: SQLiteBackend, queue: str) -> ReceivedMessage:
    (message,) = backend.receive(queue, max_messages=1)
    return message


def test_queues_and_messages_survive_reopen(db_path: Path) -> None:
    spec = QueueSpec("orders", visibility_timeout=12.0, dead_letter=DeadLetterPolicy("dlq", 3))
    with SQLiteBackend(db_path) as first:
        first.declare_queue(QueueSpec("dlq"))
        first.declare_queue(spec)
        first.publish("orders", [OutgoingMessage(b"\x00kept\xff", {"kind": "order"})])

    with SQLiteBackend(str(db_path)) as second:
        assert second.get_queue("orders") == spec
        message = receive_one(second, "orders")
    assert (message.body, dict(message.attributes), message.receive_count) == (
        b"\x00kept\xff",
        {"kind": "order"},
        1,
    )


def test_two_connections_never_hold_the_same_message(db_path: Path) -> None:
    with SQLiteBackend(db_path) as setup:
        setup.declare_queue(QueueSpec("work", visibility_timeout=60.0))
        sent = set(send(setup, "work", *(str(n).encode() for n in range(200))))

    claimed: list[list[str]] = [[], []]
    errors: list[BaseException] = []
    start_together = threading.Barrier(2)

    def drain(slot: int) -> None:
        try:
            with SQLiteBackend(db_path) as own_connection:
                start_together.wait(timeout=10)
                while batch := own_connection.receive("work", max_messages=3):
                    claimed[slot].extend(m.message_id for m in batch)
                    time.sleep(0.002)  # "process" the batch, leaving the lock to the other
        except BaseException as error:  # reported below: a thread's error would be lost
            errors.append(error)

    threads = [threading.Thread(target=drain, args=(slot,)) for slot in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert errors == []
    assert claimed[0] and claimed[1], "both connections should have claimed some messages"
    everything = claimed[0] + claimed[1]
    assert len(everything) == len(set(everything)), "a message was claimed twice"
    assert set(everything) == sent


def test_another_process_sees_claims_and_acks(db_path: Path) -> None:
    with SQLiteBackend(db_path) as backend:
        backend.declare_queue(QueueSpec("shared", visibility_timeout=60.0))
        send(backend, "shared", b"held-here", b"for-the-child")
        held = receive_one(backend, "shared")
        assert held.body == b"held-here"

        child = textwrap.dedent(
            f"""
            from melange_example_sqlite import SQLiteBackend
            with SQLiteBackend({str(db_path)!r}) as backend:
                messages = backend.receive("shared", max_messages=10)
                print(",".join(m.body.decode() for m in messages))
                backend.ack(messages)
            """
        )
        output = subprocess.run(
            [sys.executable, "-c", child], capture_output=True, text=True, check=True, timeout=30
        ).stdout
        assert output.strip() == "for-the-child"  # the held message stayed invisible
        backend.ack([held])
        assert backend.receive("shared") == []  # the child's ack removed the other one


def test_visibility_timeout_redelivers_with_a_new_receipt(
    backend: SQLiteBackend, clock: FakeClock
) -> None:
    backend.declare_queue(QueueSpec("q", visibility_timeout=10.0))
    send(backend, "q", b"m")
    first = receive_one(backend, "q")
    clock.now += 9.9
    assert backend.receive("q") == []
    clock.now += 0.1
    second = receive_one(backend, "q")
    assert (second.message_id, second.receive_count) == (first.message_id, 2)
    assert second.receipt != first.receipt

    backend.ack([first])  # stale receipt: ignored, the new holder still owns it
    clock.now += 10
    assert receive_one(backend, "q").receive_count == 3


def test_zero_visibility_timeout_hands_each_message_out_once_per_receive(
    backend: SQLiteBackend,
) -> None:
    backend.declare_queue(QueueSpec("q", visibility_timeout=0.0))
    sent = send(backend, "q", b"a", b"b", b"c")
    assert [m.message_id for m in backend.receive("q", max_messages=10)] == sent
    assert [m.receive_count for m in backend.receive("q", max_messages=10)] == [2, 2, 2]


def test_dead_letter_on_the_receive_that_would_exceed_the_limit(
    backend: SQLiteBackend, clock: FakeClock
) -> None:
    backend.declare_queue(QueueSpec("dlq"))
    backend.declare_queue(
        QueueSpec("q", visibility_timeout=5.0, dead_letter=DeadLetterPolicy("dlq", 2))
    )
    send(backend, "q", b"poison")
    for expected_count in (1, 2):
        assert receive_one(backend, "q").receive_count == expected_count
        clock.now += 5
    assert backend.receive("q") == []  # third receive moves it instead of delivering
    moved = receive_one(backend, "dlq")
    assert (moved.body, moved.receive_count) == (b"poison", 1)


def test_nack_delay_and_lease_extension(backend: SQLiteBackend, clock: FakeClock) -> None:
    backend.declare_queue(QueueSpec("q", visibility_timeout=10.0))
    send(backend, "q", b"a", b"b")
    first, second = backend.receive("q", max_messages=2)

    backend.nack([first], delay_seconds=3)
    backend.extend_lease([second], 20)
    clock.now += 3
    released = receive_one(backend, "q")
    assert (released.body, released.receive_count) == (b"a", 2)
    backend.ack([released])
    clock.now += 16.9
    assert backend.receive("q") == []  # the extended lease still holds "b"
    clock.now += 0.1
    again = receive_one(backend, "q")
    assert again.body == b"b"
    with pytest.raises(LeaseLost, match="lease on message"):
        backend.extend_lease([second], 20)  # "b" was received again under a new receipt


def test_queue_and_message_delay(backend: SQLiteBackend, clock: FakeClock) -> None:
    backend.declare_queue(QueueSpec("q", delay_seconds=4.0))
    send(backend, "q", b"queue-delay")
    backend.publish("q", [OutgoingMessage(b"own-delay", delay_seconds=1.0)])
    clock.now += 1
    assert [m.body for m in backend.receive("q")] == [b"own-delay"]
    clock.now += 3
    assert [m.body for m in backend.receive("q")] == [b"queue-delay"]


def test_retention_drops_old_messages(backend: SQLiteBackend, clock: FakeClock) -> None:
    backend.declare_queue(QueueSpec("q", message_retention_period=60.0))
    send(backend, "q", b"old")
    clock.now += 30
    send(backend, "q", b"new")
    clock.now += 30
    assert [m.body for m in backend.receive("q")] == [b"new"]


def test_receive_waits_for_a_message(backend: SQLiteBackend) -> None:
    backend.declare_queue(QueueSpec("q"))
    timer = threading.Timer(0.2, send, args=(backend, "q", b"late"))
    timer.start()
    try:
        assert [m.body for m in backend.receive("q", wait_seconds=5)] == [b"late"]
    finally:
        timer.cancel()


def test_declare_converges_and_delete(backend: SQLiteBackend) -> None:
    backend.declare_queue(QueueSpec("q", visibility_timeout=5.0))
    backend.declare_queue(QueueSpec("q", visibility_timeout=7.0))
    current = backend.get_queue("q")
    assert current is not None and current.visibility_timeout == 7.0
    send(backend, "q", b"gone with the queue")
    backend.delete_queue("q")
    assert backend.get_queue("q") is None
    backend.declare_queue(QueueSpec("q"))
    assert backend.receive("q") == []
    backend.delete_queue("q")
    with pytest.raises(QueueNotFound, match="'q' does not exist"):
        backend.delete_queue("q")
    with pytest.raises(QueueNotFound):
        backend.publish("q", [OutgoingMessage(b"x")])
    with pytest.raises(QueueNotFound):
        backend.receive("q")


@pytest.mark.parametrize("name", ["", "a" * 65, "has.dot", "space d", "x.fifo"])
def test_invalid_queue_names_are_refused(backend: SQLiteBackend, name: str) -> None:
    with pytest.raises(InvalidName, match="invalid queue name"):
        backend.declare_queue(QueueSpec(name))
    assert backend.get_queue(name) is None


def test_refused_settings_create_nothing(backend: SQLiteBackend) -> None:
    with pytest.raises(UnsupportedCapability, match="'sqlite' does not support 'fifo'"):
        backend.declare_queue(QueueSpec("q.fifo", fifo=True))
    with pytest.raises(InvalidTopology, match=r"visibility_timeout must be a number of seconds"):
        backend.declare_queue(QueueSpec("q", visibility_timeout=-1.0))
    with pytest.raises(InvalidTopology, match="cannot be its own dead-letter queue"):
        backend.declare_queue(QueueSpec("q", dead_letter=DeadLetterPolicy("q", 3)))
    assert backend.get_queue("q") is None


def test_path_is_required_and_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="needs a database file"):
        SQLiteBackend()
    with pytest.raises(ConfigurationError, match="busy_timeout must be a positive"):
        SQLiteBackend(tmp_path / "x.sqlite3", busy_timeout=0)
    with pytest.raises(BackendUnavailable, match="cannot open SQLite database"):
        SQLiteBackend(tmp_path / "missing-dir" / "x.sqlite3")
    not_sqlite = tmp_path / "notes.txt"
    not_sqlite.write_bytes(b"this is not a database" * 100)
    with pytest.raises(BackendUnavailable, match="not a usable SQLite database"):
        SQLiteBackend(not_sqlite)


def test_a_lock_held_too_long_is_backend_unavailable(db_path: Path) -> None:
    with SQLiteBackend(db_path, busy_timeout=0.2) as backend:
        backend.declare_queue(QueueSpec("q"))
        blocker = sqlite3.connect(db_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(BackendUnavailable, match="stayed locked"):
                backend.publish("q", [OutgoingMessage(b"x")])
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        send(backend, "q", b"after the lock")  # the backend recovered


def test_memory_database_and_close(clock: FakeClock) -> None:
    backend = SQLiteBackend(":memory:", clock=clock)
    backend.declare_queue(QueueSpec("q"))
    send(backend, "q", b"x")
    assert receive_one(backend, "q").body == b"x"
    backend.close()
    backend.close()
    with pytest.raises(BackendClosed, match="is closed"):
        backend.receive("q")
