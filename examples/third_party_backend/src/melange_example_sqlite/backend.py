"""Durable melange queues in one SQLite file.

Every queue and message lives in two tables of one database file, so queues
survive restarts and several processes can share them. A receive claims
messages inside a ``BEGIN IMMEDIATE`` transaction: SQLite's write lock makes
the claim atomic across threads, connections and processes.

Only the standard library is used (:mod:`sqlite3`); the backend declares a
subset of melange's capabilities (no topics, FIFO, deduplication or filters).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator

from melange.backends import (
    Capabilities,
    MessagingBackend,
    OutgoingMessage,
    PublishResult,
    ReceivedMessage,
)
from melange.exceptions import (
    BackendClosed,
    BackendUnavailable,
    ConfigurationError,
    InvalidMessage,
    LeaseLost,
    QueueNotFound,
)
from melange.topology import DeadLetterPolicy, NameRule, QueueSpec

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queues (
    name               TEXT PRIMARY KEY,
    visibility_timeout REAL NOT NULL,
    retention          REAL NOT NULL,
    delay              REAL NOT NULL,
    dead_letter_queue  TEXT,
    max_receive_count  INTEGER
);
CREATE TABLE IF NOT EXISTS messages (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id    TEXT NOT NULL UNIQUE,
    queue         TEXT NOT NULL,
    body          BLOB NOT NULL,
    attributes    TEXT NOT NULL,
    enqueued_at   REAL NOT NULL,
    visible_at    REAL NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt       TEXT
);
CREATE INDEX IF NOT EXISTS messages_by_queue ON messages (queue, seq);
"""

_POLL_INTERVAL = 0.05
"""Seconds between polls while a receive waits for messages (SQLite cannot notify)."""


class SQLiteBackend(MessagingBackend):
    """Queues with visibility timeouts and dead-letter queues in one SQLite file.

    Args:
        path: The database file, created if missing. Required: a queue file in
            the working directory would be a surprise. ``":memory:"`` gives a
            private, non-durable database that only this instance sees.
        clock: Returns the current time in seconds. Must be wall-clock time
            (the default, :func:`time.time`) when several processes share the file.
        busy_timeout: Seconds to wait for another connection's write lock before
            raising :class:`~melange.exceptions.BackendUnavailable`.

    Attributes:
        path: The database file as given (``":memory:"`` included).
        busy_timeout: Seconds to wait for another connection's write lock.

    Raises:
        ConfigurationError: ``path`` is missing or ``busy_timeout`` is not positive.
        BackendUnavailable: The file cannot be opened or is not a SQLite database.
    """

    name = "sqlite"
    capabilities = Capabilities(
        dead_letter=True,
        delay=True,
        batch=True,
        lease_extension=True,
        nack_delay=True,
        max_batch_size=100,
    )
    queue_name_rule = NameRule(
        pattern=r"[A-Za-z0-9_-]+",
        max_length=64,
        description="1 to 64 characters: letters, digits, hyphens and underscores",
    )

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout: float = 5.0,
    ) -> None:
        super().__init__()
        if path is None:
            raise ConfigurationError(
                "backend 'sqlite' needs a database file: pass path='queues.sqlite3' "
                "(or path=':memory:' for a private, non-durable database)"
            )
        try:
            busy_timeout = float(busy_timeout)
        except (TypeError, ValueError):
            busy_timeout = -1.0
        if busy_timeout <= 0:
            raise ConfigurationError(
                f"backend 'sqlite': busy_timeout must be a positive number of seconds, "
                f"got {busy_timeout!r}"
            )
        self.path = os.fspath(path)
        self._clock = clock
        self.busy_timeout = busy_timeout
        # One connection shared by this instance's threads, serialised by a lock;
        # other instances and processes are kept apart by SQLite's own file lock.
        self._lock = threading.Lock()
        self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,  # transactions are begun explicitly below
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise BackendUnavailable(
                f"cannot open SQLite database {self.path!r}: {exc}; check that its "
                "directory exists and is writable"
            ) from exc
        try:
            db.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
            db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            db.close()
            raise self._unavailable(exc) from exc
        return db

    # ------------------------------------------------------------ plumbing
    def _unavailable(self, exc: sqlite3.Error) -> BackendUnavailable:
        """Translate a sqlite3 error into melange's error, keeping the cause readable."""
        if "locked" in str(exc) or "busy" in str(exc):
            return BackendUnavailable(
                f"SQLite database {self.path!r} stayed locked by another connection for "
                f"more than {self.busy_timeout:g}s; retry, or raise busy_timeout"
            )
        if isinstance(exc, sqlite3.OperationalError):
            return BackendUnavailable(
                f"SQLite database {self.path!r} failed: {exc}; check that the file "
                "and its directory are readable and writable"
            )
        return BackendUnavailable(
            f"{self.path!r} is not a usable SQLite database ({exc}); point path at a new "
            "file or at one this backend created"
        )

    @contextlib.contextmanager
    def _transaction(self, operation: str) -> Iterator[sqlite3.Connection]:
        """Hold the write lock for the block; commit on success, roll back on error."""
        with self._lock:
            if self.closed:  # close() ran while this thread waited for the lock
                raise BackendClosed(self.name, operation)
            try:
                self._db.execute("BEGIN IMMEDIATE")
                yield self._db
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise self._unavailable(exc) from exc
            finally:
                if self._db.in_transaction:  # the block raised: undo all of it
                    self._db.execute("ROLLBACK")

    @staticmethod
    def _load_queue(db: sqlite3.Connection, name: str) -> QueueSpec | None:
        row = db.execute(
            "SELECT visibility_timeout, retention, delay, dead_letter_queue, max_receive_count "
            "FROM queues WHERE name = ?",
            (name,),
        ).fetchone()
        if row is None:
            return None
        visibility, retention, delay, dlq_name, max_receives = row
        dead_letter = None if dlq_name is None else DeadLetterPolicy(dlq_name, max_receives)
        return QueueSpec(name, False, visibility, retention, delay, dead_letter)

    def _require_queue(self, db: sqlite3.Connection, name: str) -> QueueSpec:
        queue = self._load_queue(db, name)
        if queue is None:
            raise QueueNotFound(name)
        return queue

    @staticmethod
    def _receipt(message: ReceivedMessage) -> str:
        if not isinstance(message.receipt, str):
            raise InvalidMessage(
                f"message {message.message_id!r} was not received from a sqlite backend "
                "(its receipt is missing); settle messages with the backend they came from"
            )
        return message.receipt

    # ------------------------------------------------------------ topology
    def _get_queue(self, name: str) -> QueueSpec | None:
        with self._transaction("get a queue") as db:
            return self._load_queue(db, name)

    def _declare_queue(self, spec: QueueSpec) -> None:
        dead_letter = spec.dead_letter
        with self._transaction("declare a queue") as db:
            # One upsert statement: concurrent declares cannot create two queues.
            db.execute(
                "INSERT INTO queues VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "visibility_timeout = excluded.visibility_timeout, "
                "retention = excluded.retention, delay = excluded.delay, "
                "dead_letter_queue = excluded.dead_letter_queue, "
                "max_receive_count = excluded.max_receive_count",
                (
                    spec.name,
                    spec.visibility_timeout,
                    spec.message_retention_period,
                    spec.delay_seconds,
                    None if dead_letter is None else dead_letter.queue_name,
                    None if dead_letter is None else dead_letter.max_receive_count,
                ),
            )

    def _delete_queue(self, name: str) -> None:
        with self._transaction("delete a queue") as db:
            if db.execute("DELETE FROM queues WHERE name = ?", (name,)).rowcount == 0:
                raise QueueNotFound(name)
            db.execute("DELETE FROM messages WHERE queue = ?", (name,))

    # ---------------------------------------------------------------- data
    def _publish_batch(self, queue_name: str, batch: list[OutgoingMessage]) -> list[PublishResult]:
        now = self._clock()
        with self._transaction("publish") as db:
            queue = self._require_queue(db, queue_name)
            rows = [
                (
                    uuid.uuid4().hex,
                    queue_name,
                    bytes(message.body),
                    json.dumps(dict(message.attributes)),
                    now,
                    # A message's own delay replaces the queue's, as on SQS.
                    now + (message.delay_seconds or queue.delay_seconds),
                )
                for message in batch
            ]
            db.executemany(
                "INSERT INTO messages (message_id, queue, body, attributes, enqueued_at, "
                "visible_at) VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
        return [PublishResult(index, row[0]) for index, row in enumerate(rows)]

    def _receive(
        self, queue_name: str, max_messages: int, wait_seconds: float
    ) -> list[ReceivedMessage]:
        deadline = time.monotonic() + wait_seconds  # real time, even with a test clock
        while True:
            received = self._claim(queue_name, max_messages)
            remaining = deadline - time.monotonic()
            if received or remaining <= 0:
                return received
            time.sleep(min(_POLL_INTERVAL, remaining))  # the lock is free while we sleep

    def _claim(self, queue_name: str, max_messages: int) -> list[ReceivedMessage]:
        """Claim up to ``max_messages`` visible messages in one write transaction."""
        now = self._clock()
        received: list[ReceivedMessage] = []
        with self._transaction("receive") as db:
            queue = self._require_queue(db, queue_name)
            db.execute(
                "DELETE FROM messages WHERE queue = ? AND enqueued_at + ? <= ?",
                (queue_name, queue.message_retention_period, now),
            )
            policy = queue.dead_letter
            if policy is not None and self._load_queue(db, policy.queue_name) is None:
                policy = None  # a missing dead-letter queue must not swallow messages
            last_seq = 0
            while len(received) < max_messages:
                # The seq cursor keeps a zero visibility timeout from re-claiming a row.
                rows = db.execute(
                    "SELECT seq, message_id, body, attributes, receive_count FROM messages "
                    "WHERE queue = ? AND visible_at <= ? AND seq > ? ORDER BY seq LIMIT ?",
                    (queue_name, now, last_seq, max_messages - len(received)),
                ).fetchall()
                if not rows:
                    break
                for seq, message_id, body, attributes, receive_count in rows:
                    last_seq = seq
                    if policy is not None and receive_count >= policy.max_receive_count:
                        # Like SQS: the receive that would exceed the limit moves it instead.
                        db.execute(
                            "UPDATE messages SET queue = ?, receive_count = 0, receipt = NULL, "
                            "visible_at = ?, enqueued_at = ? WHERE seq = ?",
                            (policy.queue_name, now, now, seq),
                        )
                        continue
                    receipt = uuid.uuid4().hex
                    db.execute(
                        "UPDATE messages SET receive_count = receive_count + 1, receipt = ?, "
                        "visible_at = ? WHERE seq = ?",
                        (receipt, now + queue.visibility_timeout, seq),
                    )
                    received.append(
                        ReceivedMessage(
                            queue_name=queue_name,
                            body=bytes(body),
                            attributes=json.loads(attributes),
                            message_id=message_id,
                            receive_count=receive_count + 1,
                            receipt=receipt,
                        )
                    )
        return received

    def _ack(self, messages: list[ReceivedMessage]) -> None:
        keys = [(m.message_id, self._receipt(m)) for m in messages]
        with self._transaction("acknowledge") as db:
            # A stale receipt matches nothing: whoever holds the message now settles it.
            db.executemany("DELETE FROM messages WHERE message_id = ? AND receipt = ?", keys)

    def _nack(self, messages: list[ReceivedMessage], delay_seconds: float) -> None:
        keys = [(m.message_id, self._receipt(m)) for m in messages]
        visible_at = self._clock() + delay_seconds
        with self._transaction("negatively acknowledge") as db:
            db.executemany(
                "UPDATE messages SET visible_at = ?, receipt = NULL "
                "WHERE message_id = ? AND receipt = ?",
                [(visible_at, *key) for key in keys],
            )

    def _extend_lease(self, messages: list[ReceivedMessage], seconds: float) -> None:
        keys = [(m.message_id, self._receipt(m)) for m in messages]
        visible_at = self._clock() + seconds
        lost: list[ReceivedMessage] = []
        with self._transaction("extend a lease") as db:
            for message, key in zip(messages, keys, strict=True):
                cursor = db.execute(
                    "UPDATE messages SET visible_at = ? WHERE message_id = ? AND receipt = ?",
                    (visible_at, *key),
                )
                if cursor.rowcount == 0:  # settled, or received again under a new receipt
                    lost.append(message)
        # The leases still held were extended (and committed) before reporting the lost one.
        if lost:
            raise LeaseLost(lost[0].message_id, lost[0].queue_name)

    def _close(self) -> None:
        with self._lock:
            self._db.close()
