"""Convergence of every resource a declaration owns, on moto, including what moto cannot show.

The suite's convergence test (``ConvergenceConformance``, with
:class:`~melange_aws.testing.SQSHandChanges`) is a known deviation on plain
moto: moto 5.2 accepts a dead-letter queue's ``RedriveAllowPolicy`` and
forgets it (``GetQueueAttributes`` refuses the name, ``All`` leaves it out), so
whether the dead-letter queue admits its queue cannot be checked there. Here:

- the same test with every other hand change, on plain moto;
- the whole test on moto taught to keep ``RedriveAllowPolicy`` as SQS does
  (:func:`moto_keeps_redrive_allow_policy`), and the dead-letter admission on
  its own, case by case.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError
from melange_aws import AWSBackend
from melange_aws.testing import SQSHandChanges

from melange import MessagingBackendFactory
from melange.exceptions import InvalidTopology
from melange.testing.conformance.convergence import ConvergenceConformance
from melange.topology import DeadLetterPolicy, QueueSpec


@pytest.fixture
def moto_keeps_redrive_allow_policy(mocked_aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Teach the in-process moto what SQS does with ``RedriveAllowPolicy``: keep and return it.

    moto 5.2 stores the attribute on SetQueueAttributes (as ``redrive_allow_policy``)
    but lists only its known attributes, so GetQueueAttributes never returns it and
    refuses it by name. Listing it is all that is missing; nothing else of moto changes.
    """
    from moto.sqs.models import Queue

    monkeypatch.setattr(Queue, "BASE_ATTRIBUTES", [*Queue.BASE_ATTRIBUTES, "RedriveAllowPolicy"])
    monkeypatch.setattr(Queue, "redrive_allow_policy", None, raising=False)


class TestConvergenceOnMoto(ConvergenceConformance):
    """Every hand change but the dead-letter queue's RedriveAllowPolicy, restored by init."""

    @pytest.fixture
    def melange_backend(self, mocked_aws: None) -> Iterator[AWSBackend]:
        backend = AWSBackend()
        yield backend
        backend.close()

    @pytest.fixture
    def melange_hand_changes(self, melange_backend: AWSBackend) -> SQSHandChanges:
        return SQSHandChanges.of(melange_backend, dead_letter_admission=False)


class TestConvergenceWithRedriveAllowPolicy(ConvergenceConformance):
    """Every hand change, the dead-letter queue's admission included, on moto taught to keep it."""

    @pytest.fixture
    def melange_backend(self, moto_keeps_redrive_allow_policy: None) -> Iterator[AWSBackend]:
        backend = AWSBackend()
        yield backend
        backend.close()

    @pytest.fixture
    def melange_hand_changes(self, melange_backend: AWSBackend) -> SQSHandChanges:
        return SQSHandChanges.of(melange_backend)


# ------------------------------------------------------ dead-letter admission
@pytest.fixture
def backend(moto_keeps_redrive_allow_policy: None) -> Iterator[AWSBackend]:
    """An AWSBackend on moto that keeps RedriveAllowPolicy."""
    with AWSBackend() as aws:
        yield aws


@pytest.fixture
def factory(backend: AWSBackend) -> MessagingBackendFactory:
    """A factory over the test's backend."""
    return MessagingBackendFactory(backend)


def url(backend: AWSBackend, queue: str) -> str:
    """The queue's URL, straight from SQS."""
    return str(backend.sqs_client.get_queue_url(QueueName=queue)["QueueUrl"])


def attribute(backend: AWSBackend, queue: str, name: str) -> str | None:
    """One attribute of the queue, straight from SQS."""
    response = backend.sqs_client.get_queue_attributes(
        QueueUrl=url(backend, queue), AttributeNames=[name]
    )
    value = response.get("Attributes", {}).get(name)
    return str(value) if value else None


def allow(backend: AWSBackend, queue: str, policy: dict[str, Any]) -> None:
    """Set the queue's RedriveAllowPolicy by hand."""
    backend.sqs_client.set_queue_attributes(
        QueueUrl=url(backend, queue), Attributes={"RedriveAllowPolicy": json.dumps(policy)}
    )


def allowed(backend: AWSBackend, queue: str) -> dict[str, Any] | None:
    """The queue's RedriveAllowPolicy, straight from SQS."""
    policy = attribute(backend, queue, "RedriveAllowPolicy")
    return None if policy is None else dict(json.loads(policy))


def arn(backend: AWSBackend, queue: str) -> str:
    """The queue's ARN."""
    return str(attribute(backend, queue, "QueueArn"))


def test_a_dead_letter_queue_that_stopped_admitting_its_queue_is_planned_and_fixed(
    backend: AWSBackend, factory: MessagingBackendFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """denyAll set by hand on the DLQ, and nothing else: init plans an update and admits it."""
    factory.init_queue("orders", dead_letter_queue_name="orders-dlq", max_receive_count=3)
    allow(backend, "orders-dlq", {"redrivePermission": "denyAll"})

    current = backend.get_queue("orders")
    assert current is not None and current.dead_letter is not None
    # The dispatcher dead-letters to what get_queue names: still the real queue.
    assert (current.dead_letter.queue_name, current.dead_letter.max_receive_count) == (
        "orders-dlq",
        3,
    )
    drift = backend.queue_drift(current)
    assert [c.setting for c in drift] == ["dead_letter_admission"], "drift must show"
    assert "does not admit" in caplog.text

    plan = factory.init_queue("orders", dead_letter_queue_name="orders-dlq", max_receive_count=3)

    assert [(action.kind, action.target) for action in plan] == [("update_queue", "orders")]
    assert allowed(backend, "orders-dlq") == {
        "redrivePermission": "byQueue",
        "sourceQueueArns": [arn(backend, "orders")],
    }
    assert (
        len(factory.init_queue("orders", dead_letter_queue_name="orders-dlq", max_receive_count=3))
        == 0
    )


def test_a_by_queue_dead_letter_queue_keeps_its_other_sources(
    backend: AWSBackend, factory: MessagingBackendFactory
) -> None:
    """byQueue naming other queues gains this one; the others stay admitted."""
    factory.init_queue("orders-dlq")
    others = [f"arn:aws:sqs:us-east-1:123456789012:other-{index}" for index in range(2)]
    allow(backend, "orders-dlq", {"redrivePermission": "byQueue", "sourceQueueArns": others})

    factory.init_queue("orders", dead_letter_queue_name="orders-dlq")

    assert allowed(backend, "orders-dlq") == {
        "redrivePermission": "byQueue",
        "sourceQueueArns": [*others, arn(backend, "orders")],
    }
    assert json.loads(attribute(backend, "orders", "RedrivePolicy") or "{}")[
        "deadLetterTargetArn"
    ] == arn(backend, "orders-dlq")


def test_a_dead_letter_queue_that_admits_the_most_queues_is_refused_with_the_fix(
    backend: AWSBackend, factory: MessagingBackendFactory
) -> None:
    """byQueue already naming 10 other queues: InvalidTopology says what to do; nothing made."""
    factory.init_queue("orders-dlq")
    full = {
        "redrivePermission": "byQueue",
        "sourceQueueArns": [f"arn:aws:sqs:us-east-1:123456789012:other-{i}" for i in range(10)],
    }
    allow(backend, "orders-dlq", full)

    with pytest.raises(InvalidTopology, match=r"'orders-dlq' admits 10 source queues.*allowAll"):
        factory.init_queue("orders", dead_letter_queue_name="orders-dlq")

    assert allowed(backend, "orders-dlq") == full
    assert backend.get_queue("orders") is None


def test_a_full_dead_letter_queue_is_refused_before_the_new_topics_are_created(
    backend: AWSBackend, factory: MessagingBackendFactory
) -> None:
    """The admission is checked with the whole plan, not when the queue's turn comes."""
    factory.init_queue("orders-dlq")
    full = {
        "redrivePermission": "byQueue",
        "sourceQueueArns": [f"arn:aws:sqs:us-east-1:123456789012:other-{i}" for i in range(10)],
    }
    allow(backend, "orders-dlq", full)

    with pytest.raises(InvalidTopology, match=r"'orders-dlq' admits 10 source queues"):
        factory.plan_queue("orders", ["order-events"], dead_letter_queue_name="orders-dlq")
    with pytest.raises(InvalidTopology, match=r"'orders-dlq' admits 10 source queues"):
        factory.init_queue("orders", ["order-events"], dead_letter_queue_name="orders-dlq")

    assert backend.sns_client.list_topics()["Topics"] == []
    assert backend.get_queue("orders") is None
    assert allowed(backend, "orders-dlq") == full


def test_an_admitting_dead_letter_queue_is_left_as_it_is(
    backend: AWSBackend, factory: MessagingBackendFactory
) -> None:
    """allowAll, or byQueue already naming the queue: init writes nothing to the DLQ."""
    factory.init_queue("orders", dead_letter_queue_name="orders-dlq")
    for policy in (
        {"redrivePermission": "allowAll"},
        {"redrivePermission": "byQueue", "sourceQueueArns": [arn(backend, "orders")]},
    ):
        allow(backend, "orders-dlq", policy)
        assert len(factory.init_queue("orders", dead_letter_queue_name="orders-dlq")) == 0
        assert allowed(backend, "orders-dlq") == policy


def test_a_dead_letter_queue_the_caller_may_not_read_does_not_fail_get_queue(
    backend: AWSBackend, factory: MessagingBackendFactory
) -> None:
    """A consumer's role without GetQueueAttributes on the DLQ still starts (get_queue)."""
    factory.init_queue("orders", dead_letter_queue_name="orders-dlq", max_receive_count=3)
    dead_letter_url = url(backend, "orders-dlq")

    def refuse(params: dict[str, Any], **_: Any) -> None:
        if params.get("QueueUrl") == dead_letter_url:
            denied = {"Error": {"Code": "AccessDenied", "Message": "not for you"}}
            raise ClientError(denied, "GetQueueAttributes")

    backend.sqs_client.meta.events.register("before-parameter-build.sqs.GetQueueAttributes", refuse)
    assert backend.get_queue("orders") == QueueSpec(
        "orders", dead_letter=DeadLetterPolicy("orders-dlq", 3)
    )
