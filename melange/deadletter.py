"""Dead-letter queues: look at what is in one, send it back, or empty it, on every backend.

Once the broker (or the dispatcher) has moved a message to a queue's dead-letter
queue, these functions work on it through the backend contract alone, so they
behave the same on every broker::

    from melange.deadletter import peek, redrive

    for message in peek(backend, "payment-updates"):
        print(message.message_id, message.receive_count, message.body[:80])
    redrive(backend, "payment-updates")     # after the handler was fixed

:func:`redrive` copies each message back byte for byte
(:meth:`~melange.backends.MessagingBackend.forward`: body, attributes and group
id as they are) and removes it from the dead-letter queue only once the copy is
accepted: a redrive that is interrupted, or whose copy has an unknown outcome,
leaves a message in both queues at worst, never in neither. Asked to move a
whole dead-letter queue, it first lets the backend use the broker's own move
operation when there is one (:meth:`~melange.backends.MessagingBackend.move_all`,
e.g. SQS's message move tasks), which keeps the same guarantees.

:func:`purge` always receives and deletes: a broker's own purge (SQS's
PurgeQueue) cannot say how many messages it deleted, finishes up to a minute
later, and may also delete messages sent while it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from melange.backends.base import MessagingBackend, ReceivedMessage
from melange.exceptions import (
    ConfigurationError,
    InvalidArgument,
    InvalidTopology,
    QueueNotFound,
    require_number,
    require_str,
)

__all__ = ["RedriveResult", "dead_letter_queue", "peek", "purge", "redrive"]

RECEIVE_BATCH = 10
"""Messages asked for per receive call (the most every backend accepts)."""


def dead_letter_queue(backend: MessagingBackend, queue_name: str) -> str:
    """Return the name of ``queue_name``'s dead-letter queue.

    Raises:
        QueueNotFound: The queue does not exist.
        InvalidTopology: The queue has no dead-letter queue.
    """
    require_str("queue_name", queue_name)
    spec = backend.get_queue(queue_name)
    if spec is None:
        raise QueueNotFound(queue_name, "check the name, or create it with init_queue")
    if spec.dead_letter is None:
        raise InvalidTopology(
            f"queue {queue_name!r} has no dead-letter queue; give it one with "
            f"MessagingBackendFactory(backend).init_queue({queue_name!r}, "
            "dead_letter_queue_name=...)"
        )
    return spec.dead_letter.queue_name


def peek(
    backend: MessagingBackend,
    queue_name: str,
    *,
    max_messages: int = 10,
    wait_seconds: float = 1.0,
) -> list[ReceivedMessage]:
    """Return up to ``max_messages`` of ``queue_name``'s dead-letter queue, leaving them there.

    The messages are received, held until the count is reached or the queue
    has no more, then released for redelivery at once (each counts one more
    receive on the dead-letter queue, which nothing re-dead-letters).

    Args:
        backend: The backend of the queue.
        queue_name: The queue whose dead-letter queue to look at.
        max_messages: The most messages to return.
        wait_seconds: How long to wait for the first message (dead-letter queues
            of some brokers show new messages after a short delay).

    Raises:
        QueueNotFound: The queue does not exist.
        InvalidTopology: The queue has no dead-letter queue.
    """
    source = dead_letter_queue(backend, queue_name)
    limit = _count("max_messages", max_messages)
    require_number("wait_seconds", wait_seconds)
    held: list[ReceivedMessage] = []
    seen: set[str] = set()
    try:
        # Every receive waits: a broker's short poll may answer empty while messages wait.
        while len(held) < limit:
            batch = backend.receive(source, min(RECEIVE_BATCH, limit - len(held)), wait_seconds)
            if not batch:
                break
            for message in batch:
                if message.message_id in seen:  # redelivered meanwhile: already held
                    continue
                seen.add(message.message_id)
                held.append(message)
    finally:
        _release(backend, held)
    return held


@dataclass
class RedriveResult:
    """What a :func:`redrive` did.

    Attributes:
        moved: Messages copied to the target and removed from the dead-letter queue.
        failed: Messages left in the dead-letter queue, with why: the copy was
            refused, or its outcome is unknown (it may be in both queues).
        source: The dead-letter queue.
        target: The queue the messages went to.
    """

    source: str
    target: str
    moved: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def redrive(
    backend: MessagingBackend,
    queue_name: str,
    *,
    to: str | None = None,
    max_messages: int | None = None,
    dry_run: bool = False,
    wait_seconds: float = 1.0,
    on_progress: Callable[[RedriveResult], None] | None = None,
) -> RedriveResult:
    """Move the messages of ``queue_name``'s dead-letter queue back to it (or to ``to``).

    Each message is copied exactly as it was received, then removed from the
    dead-letter queue once the copy is accepted. A copy that is refused or
    whose outcome is unknown leaves the message in the dead-letter queue (it
    is reported in :attr:`RedriveResult.failed` and released for the next run).

    Without ``max_messages`` and ``dry_run``, the backend's native move is
    used when it has one (:meth:`~melange.backends.MessagingBackend.move_all`,
    e.g. an SQS message move task; ``wait_seconds`` does not apply to it, and
    ``on_progress`` sees the broker's count); else the messages are moved one
    batch at a time as above.

    Args:
        backend: The backend of the queues.
        queue_name: The queue whose dead-letter queue to empty.
        to: Another queue to move the messages to; ``queue_name`` by default.
        max_messages: The most messages to move; all of them by default.
        dry_run: Only count what would be moved (:func:`peek`), move nothing.
        wait_seconds: How long each receive waits for messages; the redrive ends
            at the first that gets none.
        on_progress: Called with the result so far after each batch.

    Raises:
        QueueNotFound: The queue, or the target, does not exist.
        InvalidTopology: The queue has no dead-letter queue, or the target is of
            the other kind (FIFO and standard).
    """
    source = dead_letter_queue(backend, queue_name)
    target = queue_name if to is None else require_str("to", to)
    require_number("wait_seconds", wait_seconds)
    limit = None if max_messages is None else _count("max_messages", max_messages)
    source_spec, target_spec = backend.get_queue(source), backend.get_queue(target)
    if target_spec is None:
        raise QueueNotFound(target, "the redrive target must exist")
    if source_spec is not None and source_spec.fifo != target_spec.fifo:
        kinds = {True: "FIFO", False: "standard"}
        raise InvalidTopology(
            f"cannot redrive {kinds[source_spec.fifo]} dead-letter queue {source!r} into "
            f"{kinds[target_spec.fifo]} queue {target!r}: choose a target of the same kind"
        )
    result = RedriveResult(source, target)
    if limit is None and not dry_run and _moved_natively(backend, result, on_progress):
        return result
    if dry_run:
        everything = limit or 1_000_000
        result.moved = len(
            peek(backend, queue_name, max_messages=everything, wait_seconds=wait_seconds)
        )
        return result
    skipped: list[ReceivedMessage] = []  # failed copies: held until the end, then released
    try:
        while limit is None or result.moved < limit:
            room = RECEIVE_BATCH if limit is None else min(RECEIVE_BATCH, limit - result.moved)
            batch = backend.receive(source, room, wait_seconds)
            if not batch:
                break
            done: list[ReceivedMessage] = []
            for message in batch:
                copy = backend.forward(message, target)
                if copy.status == "accepted":
                    done.append(message)
                else:
                    skipped.append(message)
                    result.failed.append((message.message_id, f"{copy.status}: {copy.error}"))
            if done:
                backend.ack(done)
                result.moved += len(done)
            if on_progress is not None:
                on_progress(result)
    finally:
        _release(backend, skipped)
    return result


def _moved_natively(
    backend: MessagingBackend,
    result: RedriveResult,
    on_progress: Callable[[RedriveResult], None] | None,
) -> bool:
    """Move the whole queue with the broker's own operation, if it has one (see move_all)."""

    def progress(moved: int) -> None:
        result.moved = moved
        if on_progress is not None:
            on_progress(result)

    moved = backend.move_all(result.source, result.target, on_progress=progress)
    if moved is None:
        return False
    progress(moved)
    return True


def purge(backend: MessagingBackend, queue_name: str, *, wait_seconds: float = 1.0) -> int:
    """Delete every message of ``queue_name``'s dead-letter queue; return how many.

    Args:
        backend: The backend of the queue.
        queue_name: The queue whose dead-letter queue to empty.
        wait_seconds: How long each receive waits; the purge ends at the first
            that gets none.

    Raises:
        QueueNotFound: The queue does not exist.
        InvalidTopology: The queue has no dead-letter queue.
    """
    source = dead_letter_queue(backend, queue_name)
    require_number("wait_seconds", wait_seconds)
    deleted = 0
    while batch := backend.receive(source, RECEIVE_BATCH, wait_seconds):
        backend.ack(batch)
        deleted += len(batch)
    return deleted


def _count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(name, "a whole number", value)
    if value < 1:
        raise ConfigurationError(f"{name} must be 1 or more, got {value}")
    return value


def _release(backend: MessagingBackend, messages: list[ReceivedMessage]) -> None:
    """Make ``messages`` receivable again at once (else when their lease ends)."""
    if messages and backend.capabilities.nack_delay:
        backend.nack(messages, 0.0)
