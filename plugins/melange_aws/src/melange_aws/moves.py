"""SQS message move tasks: the native fast path of a whole dead-letter queue redrive.

``StartMessageMoveTask`` asks SQS to move every message of a dead-letter queue
(a queue that is the dead-letter queue of another SQS queue) to a queue of the
same kind, standard or FIFO; SQS keeps each message's body and attributes and
removes it from the dead-letter queue only once it is in the target. The task
runs on the broker; ``ListMessageMoveTasks`` reports its status and how many
messages it has moved so far. SQS runs one task per dead-letter queue at a time.

An endpoint without move tasks (moto, ElasticMQ) or credentials not allowed to
start one make :func:`move_all` return ``None`` before anything moved, and
:func:`melange.deadletter.redrive` then moves the messages itself.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from melange.exceptions import BrokerError
from melange_aws.errors import QUEUE_MISSING, error_code, scrub, summarize
from melange_aws.resources import BOTO_ERRORS

__all__ = ["MOVE_TASK_TIMEOUT", "MessageMoveTaskError", "move_all"]

logger = logging.getLogger("melange.aws.moves")

MOVE_TASK_TIMEOUT = 900.0
"""Seconds :func:`move_all` waits for a task to finish (SQS lets one run for 36 hours)."""

POLL_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)
"""Pauses between two status reads: short at first (small queues finish in a second)."""

_ENDED = frozenset({"COMPLETED", "FAILED", "CANCELLED"})


class MessageMoveTaskError(BrokerError):
    """An SQS message move task failed, was cancelled, or did not finish in time.

    The messages it did not move are still in the dead-letter queue: nothing is
    lost. :attr:`broker_code` is the task's status (``FAILED``, ``CANCELLED``,
    or ``RUNNING`` when the wait timed out).
    """


def move_all(
    sqs: Any,
    *,
    source: str,
    target: str,
    source_arn: str,
    target_arn: str,
    fail: Callable[[Exception, str], Any],
    on_progress: Callable[[int], None] | None = None,
    timeout: float = MOVE_TASK_TIMEOUT,
    secrets: tuple[str, ...] = (),
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> int | None:
    """Move every message of queue ``source`` to ``target`` with a message move task.

    Args:
        sqs: The boto3 SQS client.
        source: The dead-letter queue's name, for messages.
        target: The target queue's name, for messages.
        source_arn: The dead-letter queue's ARN.
        target_arn: The target queue's ARN.
        fail: Raises the melange error for a boto error (the backend's ``_fail``).
        on_progress: Called with the number moved so far after each status read.
        timeout: Seconds to wait for the task to end.
        secrets: Strings to keep out of error messages.
        sleep: Waits between status reads (a test hook).
        clock: Monotonic time (a test hook).

    Returns:
        The number of messages SQS reports moved, or ``None`` when no task could
        be started (nothing moved; the caller moves the messages itself).

    Raises:
        MessageMoveTaskError: The task failed, was cancelled, or is still running
            after ``timeout`` seconds.
        MelangeError: A status read failed (the task goes on on the broker).
    """
    action = f"move the messages of {source!r} to {target!r}"
    try:
        # The tasks listed before: an ended task is listed without its handle, so
        # ours is then the one that was not there before.
        earlier = {_key(task) for task in _listed(sqs, source_arn)}
        handle = sqs.start_message_move_task(SourceArn=source_arn, DestinationArn=target_arn)[
            "TaskHandle"
        ]
    except NotImplementedError:  # moto's in-process mock_aws: no move tasks there
        logger.info("no SQS message move task for %r here; moving messages one by one", source)
        return None
    except BOTO_ERRORS as error:
        code = error_code(error)
        if code is None or code in QUEUE_MISSING:
            fail(error, action)  # unreachable endpoint, missing queue: the generic path fails too
        # Not implemented here, not allowed, or a task of someone else's is running:
        # nothing started, so the receive-forward-ack path can do it instead.
        logger.info(
            "no SQS message move task for %r (%s); moving messages one by one", source, code
        )
        return None
    deadline = clock() + timeout
    for attempt in itertools.count():
        sleep(POLL_SECONDS[min(attempt, len(POLL_SECONDS) - 1)])
        try:
            tasks = _listed(sqs, source_arn)
        except BOTO_ERRORS as error:
            fail(error, f"read the status of the task that moves {source!r} to {target!r}")
        task = _our_task(tasks, handle, earlier)
        moved = int(task.get("ApproximateNumberOfMessagesMoved", 0)) if task else 0
        status = task.get("Status", "RUNNING") if task else "RUNNING"
        if task is not None and status in _ENDED:
            return _ended(task, status, moved, source, target, secrets)
        if on_progress is not None:
            on_progress(moved)
        if clock() >= deadline:
            raise MessageMoveTaskError(
                f"the SQS message move task from {source!r} to {target!r} is still running after "
                f"{timeout:g} s ({moved} moved so far); nothing is lost: it goes on on the broker. "
                f"Follow it with `aws sqs list-message-move-tasks --source-arn {source_arn}`",
                broker_code="RUNNING",
            )
    raise AssertionError("unreachable")  # pragma: no cover


def _listed(sqs: Any, source_arn: str) -> list[Mapping[str, Any]]:
    """The most recent move tasks of the queue (SQS lists up to 10, newest first)."""
    results: list[Mapping[str, Any]] = sqs.list_message_move_tasks(
        SourceArn=source_arn, MaxResults=10
    ).get("Results", [])
    return results


def _key(task: Mapping[str, Any]) -> tuple[object, ...]:
    """What tells two tasks of a queue apart once ended (when their handles are not listed)."""
    return (task.get("StartedTimestamp"), task.get("DestinationArn"))


def _our_task(
    tasks: list[Mapping[str, Any]], handle: str, earlier: set[tuple[object, ...]]
) -> Mapping[str, Any] | None:
    """The task started with ``handle``, or ``None`` while SQS does not list it yet.

    SQS lists the handle of running tasks only; once ours ended, it is the
    ended task that was not listed before it started (SQS runs one task per
    queue at a time, so no other can have started since).
    """
    for task in tasks:
        if task.get("TaskHandle") == handle:
            return task
    for task in tasks:
        if task.get("Status") in _ENDED and _key(task) not in earlier:
            return task
    return None


def _ended(
    task: Mapping[str, Any],
    status: str,
    moved: int,
    source: str,
    target: str,
    secrets: tuple[str, ...],
) -> int:
    if status == "COMPLETED":
        return moved
    total = task.get("ApproximateNumberOfMessagesToMove")
    of = f" of {total}" if total is not None else ""
    reason = task.get("FailureReason") or "no reason given"
    what = "failed" if status == "FAILED" else "was cancelled"
    raise MessageMoveTaskError(
        f"the SQS message move task from {source!r} to {target!r} {what} after moving "
        f"{moved}{of} messages ({scrub(summarize(str(reason)), secrets)}). The others are still "
        f"in {source!r}, nothing is lost: fix the cause and run the redrive again",
        broker_code=status,
    )
