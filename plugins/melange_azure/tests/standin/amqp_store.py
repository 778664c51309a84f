"""The messages of one queue, subscription or dead-letter queue, with their locks.

Pure bookkeeping, no I/O: the broker's reactor thread is the only caller, so
nothing here locks. Available messages are kept per session (``None`` for an
entity without sessions) in sequence-number order, so an abandoned message
goes back to its place, as on Service Bus.
"""

from __future__ import annotations

import heapq
import time
import uuid
from dataclasses import dataclass, field

from proton import Message

from .namespace import Entity


@dataclass
class StoredMessage:
    """A message as the sender sent it, plus what the service adds to it."""

    message: Message
    sequence_number: int
    enqueued_time: float
    session_id: str | None
    delivery_count: int = 0
    lock_token: uuid.UUID | None = None
    locked_until: float = 0.0
    holder: object = None
    """The link the locked message was delivered on (opaque to this module)."""
    deferred: bool = False
    size: int = 0
    """Encoded bytes, counted against the entity's (or its topic's) size quota."""

    def __lt__(self, other: StoredMessage) -> bool:
        return self.sequence_number < other.sequence_number


@dataclass
class SessionLock:
    holder: object
    locked_until: float


@dataclass
class MessageBox:
    """One entity's messages: available, locked (peek-lock) and deferred."""

    path: str
    entity: Entity
    requires_session: bool
    _ready: dict[str | None, list[StoredMessage]] = field(default_factory=dict)
    locked: dict[uuid.UUID, StoredMessage] = field(default_factory=dict)
    deferred: dict[int, StoredMessage] = field(default_factory=dict)
    session_locks: dict[str, SessionLock] = field(default_factory=dict)
    session_state: dict[str, bytes] = field(default_factory=dict)

    def add(self, stored: StoredMessage) -> None:
        """Make a message available (new, abandoned, released or lock expired)."""
        stored.lock_token = None
        stored.holder = None
        key = stored.session_id if self.requires_session else None
        heapq.heappush(self._ready.setdefault(key, []), stored)

    def take(self, session_id: str | None = None) -> StoredMessage | None:
        """Remove and return the next available message (of a session, for session entities)."""
        key = session_id if self.requires_session else None
        heap = self._ready.get(key)
        if not heap:
            return None
        stored = heapq.heappop(heap)
        if not heap:
            del self._ready[key]
        return stored

    def lock(self, stored: StoredMessage, holder: object, until: float) -> uuid.UUID:
        """Lock a taken message for a receiver; return its lock token."""
        stored.lock_token = uuid.uuid4()
        stored.locked_until = until
        stored.holder = holder
        self.locked[stored.lock_token] = stored
        return stored.lock_token

    def unlock(self, token: uuid.UUID) -> StoredMessage | None:
        """Forget a lock; return its message, or ``None`` if the lock is gone (expired, settled)."""
        return self.locked.pop(token, None)

    def free_sessions(self) -> list[str]:
        """Sessions with available messages and no lock holder, oldest message first."""
        now = time.time()
        ready = [
            (heap[0].sequence_number, key)
            for key, heap in self._ready.items()
            if key is not None and heap and not self.session_locked(key, now)
        ]
        return [key for _, key in sorted(ready)]

    def session_locked(self, session_id: str, now: float) -> bool:
        lock = self.session_locks.get(session_id)
        return lock is not None and lock.locked_until > now

    def expired_locks(self, now: float) -> list[StoredMessage]:
        """Message locks past their time; session messages follow their session's lock instead."""
        if self.requires_session:
            return []
        return [s for s in self.locked.values() if s.locked_until <= now]

    def all_messages(self) -> list[StoredMessage]:
        """Every message still in the entity (available, locked, deferred), by sequence number."""
        every = [s for heap in self._ready.values() for s in heap]
        every += self.locked.values()
        every += self.deferred.values()
        return sorted(every)

    def ready_count(self) -> int:
        return sum(len(heap) for heap in self._ready.values())
