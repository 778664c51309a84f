"""Publish outcomes that never lie, and producer ids that make publisher retries harmless.

A backend whose native call fails part-way through a publish split in several
native calls is simulated with a memory backend subclass: which call fails, and
how, is the whole point of each test. The network-level versions of the same
faults run against real endpoints in the fault conformance suite.
"""

from __future__ import annotations

import dataclasses

import pytest

from melange import Message, MessageDispatcher, QueuePublisher, consumer
from melange.backends.base import OutgoingMessage, PublishResult
from melange.backends.memory import MemoryBackend
from melange.dedup import MemoryDedupCache
from melange.exceptions import BackendUnavailable, OutcomeUnknown, QueueNotFound
from melange.factory import MessagingBackendFactory
from melange.observability import Hooks
from melange.serializers import SerializerRegistry

QUEUE = "orders"
CHUNK = 10


class FailingCallBackend(MemoryBackend):
    """Memory backend with a broker-like batch limit whose Nth native publish call fails.

    ``stored_then`` decides whether the failing call stored its messages first
    (the answer was lost: unknown) or not (nothing was sent: refused).
    """

    capabilities = dataclasses.replace(MemoryBackend.capabilities, max_batch_size=CHUNK)

    def __init__(self, fail_call: int, error: Exception, *, stored_then: bool = False) -> None:
        super().__init__()
        self.fail_call = fail_call
        self.error = error
        self.stored_then = stored_then
        self.calls = 0

    def _publish_batch(self, queue_name: str, batch: list[OutgoingMessage]) -> list[PublishResult]:
        self.calls += 1
        if self.calls == self.fail_call:
            if self.stored_then:
                super()._publish_batch(queue_name, batch)
            raise self.error
        return super()._publish_batch(queue_name, batch)


def in_queue(backend: MemoryBackend) -> set[bytes]:
    bodies: set[bytes] = set()
    while batch := backend.receive(QUEUE, max_messages=100):
        bodies.update(m.body for m in batch)
        backend.ack(batch)
    return bodies


def batch(count: int) -> list[OutgoingMessage]:
    return [OutgoingMessage(f"m-{i}".encode()) for i in range(count)]


def declare(backend: MemoryBackend) -> MemoryBackend:
    MessagingBackendFactory(backend).init_queue(QUEUE)
    return backend


def test_a_later_chunk_failing_keeps_the_results_of_the_earlier_ones() -> None:
    """Reproduced: 25 messages, the connection died after the first native call (10 stored)."""
    backend = declare(FailingCallBackend(2, BackendUnavailable("connection refused")))
    messages = batch(25)

    results = backend.publish(QUEUE, messages)  # raised BackendUnavailable before the fix

    assert [r.index for r in results] == list(range(25))
    assert [r.status for r in results] == ["accepted"] * 10 + ["refused"] * 15
    assert all(r.message_id for r in results[:10])
    assert "never sent" in str(results[20].error)
    stored = in_queue(backend)
    assert stored == {m.body for m in messages[:10]}
    assert backend.calls == 2, "after a failure the rest is held back, not sent"


def test_a_chunk_whose_answer_was_lost_is_unknown_and_may_be_stored() -> None:
    error = OutcomeUnknown("read timeout after sending")
    backend = declare(FailingCallBackend(2, error, stored_then=True))
    messages = batch(25)

    results = backend.publish(QUEUE, messages)

    assert [r.status for r in results] == ["accepted"] * 10 + ["unknown"] * 10 + ["refused"] * 5
    assert results[15].error is error
    stored = in_queue(backend)
    refused = {m.body for m, r in zip(messages, results, strict=True) if r.status == "refused"}
    accepted = {m.body for m, r in zip(messages, results, strict=True) if r.status == "accepted"}
    assert accepted <= stored and not refused & stored


def test_an_error_before_anything_was_sent_is_raised() -> None:
    backend = declare(FailingCallBackend(1, BackendUnavailable("connection refused")))
    with pytest.raises(BackendUnavailable, match="connection refused"):
        backend.publish(QUEUE, batch(25))
    assert in_queue(backend) == set()


def test_an_unknown_outcome_of_a_single_call_is_reported_not_raised() -> None:
    error = OutcomeUnknown("no answer")
    backend = declare(FailingCallBackend(1, error, stored_then=True))
    results = backend.publish(QUEUE, batch(3))
    assert [r.status for r in results] == ["unknown"] * 3
    assert {r.error for r in results} == {error}


def test_a_missing_queue_is_still_raised() -> None:
    backend = FailingCallBackend(99, BackendUnavailable("unused"))
    with pytest.raises(QueueNotFound):
        backend.publish("nowhere", batch(25))


def test_the_publisher_raises_with_the_results_attached() -> None:
    backend = declare(FailingCallBackend(1, OutcomeUnknown("no answer"), stored_then=True))
    publisher = QueuePublisher(backend, hooks=Hooks())
    with pytest.raises(OutcomeUnknown) as raised:
        publisher.publish(QUEUE, {"n": 1})
    assert raised.value.results is not None
    assert [r.status for r in raised.value.results] == ["unknown"]


def test_publish_batch_reports_every_outcome_without_raising() -> None:
    backend = declare(FailingCallBackend(2, OutcomeUnknown("no answer")))
    publisher = QueuePublisher(backend, hooks=Hooks())
    results = publisher.publish_batch(QUEUE, [{"n": n} for n in range(25)])
    assert [r.status for r in results].count("accepted") == 10
    assert [r.status for r in results].count("unknown") == 10


# ------------------------------------------------------------------ producer ids
class RetryingBackend(MemoryBackend):
    """Stores every message of a publish call twice: what an SDK retry after a lost answer does.

    The broker gives each copy its own id, as SQS did in the reproduced defect.
    """

    def _publish_batch(self, queue_name: str, batch: list[OutgoingMessage]) -> list[PublishResult]:
        super()._publish_batch(queue_name, batch)  # first attempt: stored, answer lost
        return super()._publish_batch(queue_name, batch)  # the retry


def handle_all(backend: MemoryBackend, registry: SerializerRegistry) -> list[int]:
    handled: list[int] = []

    @consumer
    def record(payload: dict[str, int]) -> None:
        handled.append(payload["n"])

    with MessageDispatcher(
        backend,
        QUEUE,
        [record],
        registry,
        dedup=MemoryDedupCache(),
        wait_seconds=0.05,
        hooks=Hooks(),
        close_backend=False,
    ) as dispatcher:
        dispatcher.run_until_idle(idle_seconds=0.2, timeout=10)
    return handled


@pytest.mark.parametrize("producer_ids", [True, False], ids=["ids", "no-ids"])
def test_dedup_handles_publisher_retry_duplicates_once_thanks_to_producer_ids(
    producer_ids: bool,
) -> None:
    backend = declare(RetryingBackend())
    registry = SerializerRegistry()
    publisher = QueuePublisher(backend, registry, hooks=Hooks(), producer_ids=producer_ids)
    publisher.publish_batch(QUEUE, [{"n": n} for n in range(20)])

    handled = handle_all(backend, registry)

    assert sorted(set(handled)) == list(range(20))
    if producer_ids:
        assert sorted(handled) == list(range(20)), "a publisher-retry duplicate ran twice"
    else:  # the broker's ids differ, so the cache cannot tell: the ids are what matters
        assert len(handled) == 40


def test_a_producer_id_is_assigned_once_and_can_be_chosen() -> None:
    backend = declare(MemoryBackend())
    publisher = QueuePublisher(backend, hooks=Hooks())
    publisher.publish(QUEUE, {"n": 1})
    publisher.publish(QUEUE, {"n": 2}, producer_id="order-2")
    publisher.publish(QUEUE, Message({"n": 3}, producer_id="order-3"))
    received = backend.receive(QUEUE, max_messages=10)
    ids = [m.attributes["melange.id"] for m in received]
    assert ids[1:] == ["order-2", "order-3"]
    assert ids[0] not in ("order-2", "order-3") and len(ids[0]) >= 16
    decoded = SerializerRegistry().decode(received[1])
    assert decoded.producer_id == "order-2"
    assert "melange.id" not in decoded.attributes


def test_producer_ids_are_unique_across_calls_and_processes() -> None:
    import multiprocessing

    from melange.message import new_producer_id

    local = {new_producer_id() for _ in range(10_000)}
    assert len(local) == 10_000
    context = multiprocessing.get_context("fork")
    with context.Pool(2) as pool:
        remote = pool.map(_ids, [100, 100])
    assert len(set(remote[0]) | set(remote[1]) | local) == 10_200


def _ids(count: int) -> list[str]:
    from melange.message import new_producer_id

    return [new_producer_id() for _ in range(count)]
