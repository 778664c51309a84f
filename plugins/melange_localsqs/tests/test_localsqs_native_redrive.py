"""A whole dead-letter queue redrive through SQS message move tasks, and its fallback.

moto (5.2) does not implement StartMessageMoveTask / ListMessageMoveTasks: it
answers 500. So:

- against the moto server over HTTP, a whole-queue redrive asks for a move task,
  is refused, and moves the messages itself, byte for byte (what every user of
  ``localsqs`` on moto or ElasticMQ gets); against LocalStack
  (``MELANGE_LOCALSTACK_ENDPOINT``), which has move tasks, the task moves them;
- the move-task path itself (status polling, progress, FAILED / CANCELLED,
  timeout, refusals to start) runs on the same backend class with botocore's
  Stubber answering as AWS documents it (API_StartMessageMoveTask,
  API_ListMessageMoveTasksResultEntry); no request leaves the process.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from botocore.stub import Stubber  # type: ignore[import-untyped]
from melange_aws import MessageMoveTaskError, moves
from melange_localsqs import LocalSQSBackend

from melange import MessagingBackendFactory, deadletter
from melange.backends.base import OutgoingMessage
from melange.exceptions import QueueNotFound
from melange.testing.conformance import ResourceNames

BODIES = [b'{"order": 7}', "caf\u00e9 \u2713".encode(), b"\x00\xff binary"]
PREFIX = "arn:aws:sqs:us-east-1:000000000000:"
URL = "http://127.0.0.1:1/000000000000/"


# ------------------------------------------------------------------ moto, over HTTP
@pytest.fixture
def backend(endpoint_url: str) -> Iterator[LocalSQSBackend]:
    created = LocalSQSBackend(endpoint_url=endpoint_url, sns=False)
    yield created
    created.close()


def test_a_whole_redrive_uses_a_move_task_where_there_are_some_else_moves_byte_for_byte(
    backend: LocalSQSBackend, emulator: str
) -> None:
    names = ResourceNames()
    queue, dlq = names.queue("orders"), names.queue("orders-dlq")
    MessagingBackendFactory(backend).init_queue(queue, dead_letter_queue_name=dlq)
    sent = {body: {"n": str(n), "kind": "\u00e9"} for n, body in enumerate(BODIES)}
    backend.publish(dlq, [OutgoingMessage(body, attrs) for body, attrs in sent.items()])
    calls: list[str] = []
    backend.sqs_client.meta.events.register(
        "before-call.sqs", lambda model, **_: calls.append(model.name)
    )

    result = deadletter.redrive(backend, queue, wait_seconds=1.0)

    asked = calls.index("ListMessageMoveTasks")  # the tasks before, then a new one
    if emulator == "moto":  # refused (moto has no move tasks): copied one by one
        assert "StartMessageMoveTask" not in calls
        assert calls[asked + 1 :].count("SendMessage") == 3
    else:  # LocalStack runs the task: nothing is copied by melange
        after_start = calls[calls.index("StartMessageMoveTask") + 1 :]
        assert calls.index("StartMessageMoveTask") > asked
        assert "ListMessageMoveTasks" in after_start
        assert "SendMessage" not in after_start
    assert (result.moved, result.failed) == (3, [])
    back = backend.receive(queue, 10, 1.0)
    assert {m.body: dict(m.attributes) for m in back} == sent
    assert backend.receive(dlq, 10, 0.0) == []


# ------------------------------------------------------- the move task, stubbed
@pytest.fixture
def stubbed(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[LocalSQSBackend, Stubber]]:
    """A backend whose SQS client answers from a Stubber; the queues' lookups are queued."""
    monkeypatch.setattr(moves, "POLL_SECONDS", (0.0,))
    created = LocalSQSBackend(endpoint_url="http://127.0.0.1:1", sns=False)
    stubber = Stubber(created.sqs_client)
    for name in ("orders-dlq", "orders"):
        stubber.add_response("get_queue_url", {"QueueUrl": URL + name}, {"QueueName": name})
        stubber.add_response(
            "get_queue_attributes",
            {"Attributes": {"QueueArn": PREFIX + name}},
            {"QueueUrl": URL + name, "AttributeNames": ["QueueArn"]},
        )
    with stubber:
        yield created, stubber
    created.close()


OLDER = {"Status": "COMPLETED", "StartedTimestamp": 1, "ApproximateNumberOfMessagesMoved": 9}
"""A task that moved this queue to the same target before: never taken for the new one."""


def _started(stubber: Stubber) -> None:
    _listed(stubber)
    stubber.add_response(
        "start_message_move_task",
        {"TaskHandle": "handle-1"},
        {"SourceArn": PREFIX + "orders-dlq", "DestinationArn": PREFIX + "orders"},
    )


def _listed(stubber: Stubber, *tasks: dict[str, Any]) -> None:
    """Queue a ListMessageMoveTasks answer: ``tasks`` (newest first), then the older one."""
    arns = {"SourceArn": PREFIX + "orders-dlq", "DestinationArn": PREFIX + "orders"}
    stubber.add_response(
        "list_message_move_tasks",
        {"Results": [{**arns, **task} for task in (*tasks, OLDER)]},
        {"SourceArn": PREFIX + "orders-dlq", "MaxResults": 10},
    )


def _task(status: str, moved: int, **more: Any) -> dict[str, Any]:
    task = {"Status": status, "ApproximateNumberOfMessagesMoved": moved}
    return {**task, "StartedTimestamp": 2, **more}


def test_a_move_task_is_followed_to_completion_with_its_progress(
    stubbed: tuple[LocalSQSBackend, Stubber],
) -> None:
    backend, stubber = stubbed
    _started(stubber)
    _listed(stubber)  # not listed yet: the older task is not taken for it
    _listed(stubber, _task("RUNNING", 2, TaskHandle="handle-1"))
    _listed(stubber, _task("COMPLETED", 5))
    progress: list[int] = []
    assert backend.move_all("orders-dlq", "orders", on_progress=progress.append) == 5
    assert progress == [0, 2]
    stubber.assert_no_pending_responses()


@pytest.mark.parametrize(
    ("status", "reason", "expected"),
    [
        ("FAILED", "CouldNotDetermineMessageSource", r"failed after moving 1 of 4 .*"),
        ("CANCELLED", None, r"was cancelled after moving 1 of 4 .*no reason given"),
    ],
)
def test_a_failed_or_cancelled_task_raises_with_the_reason_and_what_is_left(
    stubbed: tuple[LocalSQSBackend, Stubber], status: str, reason: str | None, expected: str
) -> None:
    backend, stubber = stubbed
    _started(stubber)
    task = _task(status, 1, ApproximateNumberOfMessagesToMove=4)
    if reason is not None:
        task["FailureReason"] = reason
    _listed(stubber, task)
    with pytest.raises(MessageMoveTaskError, match=expected) as raised:
        backend.move_all("orders-dlq", "orders")
    assert raised.value.broker_code == status
    assert reason is None or reason in str(raised.value)
    assert "still in 'orders-dlq', nothing is lost" in str(raised.value)


def test_a_task_still_running_at_the_timeout_says_so_and_how_to_follow_it(
    stubbed: tuple[LocalSQSBackend, Stubber],
) -> None:
    backend, stubber = stubbed
    backend.move_task_timeout = 0.0
    _started(stubber)
    _listed(stubber, _task("RUNNING", 3, TaskHandle="handle-1"))
    with pytest.raises(MessageMoveTaskError, match=r"still running after 0 s \(3 moved") as raised:
        backend.move_all("orders-dlq", "orders")
    assert raised.value.broker_code == "RUNNING"
    assert "list-message-move-tasks --source-arn " + PREFIX + "orders-dlq" in str(raised.value)


@pytest.mark.parametrize("code", ["AccessDenied", "UnsupportedOperation", "500"])
def test_a_task_that_cannot_start_hands_over_to_the_generic_path(
    stubbed: tuple[LocalSQSBackend, Stubber], code: str
) -> None:
    backend, stubber = stubbed
    _listed(stubber)
    stubber.add_client_error("start_message_move_task", code, "no")
    assert backend.move_all("orders-dlq", "orders") is None
    stubber.assert_no_pending_responses()  # nothing polled after


def test_a_dead_letter_queue_gone_before_the_task_starts_is_queue_not_found(
    stubbed: tuple[LocalSQSBackend, Stubber],
) -> None:
    backend, stubber = stubbed
    stubber.add_client_error(
        "list_message_move_tasks", "AWS.SimpleQueueService.NonExistentQueue", "gone", 400
    )
    with pytest.raises(QueueNotFound, match="orders-dlq"):
        backend.move_all("orders-dlq", "orders")
