"""melange.deadletter's refusals and its redrive through refused copies, on the memory backend.

The peek/redrive/purge behaviour itself runs on every backend in the conformance suite
(DataConformance.test_a_dead_letter_queue_is_peeked_redriven_and_purged).
"""

from __future__ import annotations

import pytest

from melange import deadletter
from melange.backends.base import OutgoingMessage, PublishResult, ReceivedMessage
from melange.backends.memory import MemoryBackend
from melange.exceptions import ConfigurationError, InvalidArgument, InvalidTopology, QueueNotFound
from melange.factory import MessagingBackendFactory


@pytest.fixture
def backend() -> MemoryBackend:
    memory = MemoryBackend()
    factory = MessagingBackendFactory(memory)
    factory.init_queue("orders", dead_letter_queue_name="orders-dlq")
    factory.init_queue("plain")
    factory.init_queue("orders.fifo", dead_letter_queue_name="orders-dlq.fifo")
    return memory


def test_a_queue_without_a_dead_letter_queue_is_named_with_the_fix(backend: MemoryBackend) -> None:
    with pytest.raises(InvalidTopology, match=r"'plain' has no dead-letter queue.*init_queue"):
        deadletter.peek(backend, "plain")


def test_a_missing_queue_is_refused(backend: MemoryBackend) -> None:
    with pytest.raises(QueueNotFound, match="nowhere"):
        deadletter.redrive(backend, "nowhere")
    with pytest.raises(QueueNotFound, match="missing"):
        deadletter.redrive(backend, "orders", to="missing")


def test_a_redrive_target_of_the_other_kind_is_refused_before_anything_moves(
    backend: MemoryBackend,
) -> None:
    backend.publish("orders-dlq", [OutgoingMessage(b"x")])
    with pytest.raises(InvalidTopology, match=r"standard dead-letter queue .* FIFO queue"):
        deadletter.redrive(backend, "orders", to="orders.fifo")
    assert backend.queue_depth("orders-dlq").visible == 1


@pytest.mark.parametrize(
    ("value", "error"), [(0, ConfigurationError), (True, InvalidArgument), ("5", InvalidArgument)]
)
def test_bad_counts_are_refused(backend: MemoryBackend, value: object, error: type) -> None:
    with pytest.raises(error, match="max_messages"):
        deadletter.peek(backend, "orders", max_messages=value)  # type: ignore[arg-type]


def test_a_refused_copy_stays_in_the_dead_letter_queue(
    backend: MemoryBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend.publish("orders-dlq", [OutgoingMessage(b"good"), OutgoingMessage(b"too big")])
    forward = backend.forward

    def refuse_big(message: ReceivedMessage, queue_name: str, **kwargs: object) -> PublishResult:
        if message.body == b"too big":
            return PublishResult(0, None, ConfigurationError("over the target's limit"))
        return forward(message, queue_name)

    monkeypatch.setattr(backend, "forward", refuse_big)
    result = deadletter.redrive(backend, "orders", wait_seconds=0.1)
    assert result.moved == 1
    assert [reason.split(":")[0] for _, reason in result.failed] == ["refused"]
    assert [m.body for m in backend.receive("orders-dlq", 10)] == [b"too big"]  # released
    assert [m.body for m in backend.receive("orders", 10)] == [b"good"]


def test_a_dry_run_counts_and_moves_nothing(backend: MemoryBackend) -> None:
    backend.publish("orders-dlq", [OutgoingMessage(b"a"), OutgoingMessage(b"b")])
    result = deadletter.redrive(backend, "orders", dry_run=True, wait_seconds=0.1)
    assert result.moved == 2
    assert backend.queue_depth("orders-dlq").visible == 2
    assert backend.queue_depth("orders").visible == 0
