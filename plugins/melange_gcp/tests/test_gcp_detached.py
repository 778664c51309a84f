"""Subscriptions detached from a topic deleted outside melange, or on another topic.

Pub/Sub keeps a subscription whose topic is deleted, attached to
``_deleted-topic_`` for good. Before this work, re-running ``init_queue``
recreated the topic, reported success, publishes succeeded, and ``receive``
returned nothing, forever (reproduced here on Google's emulator). Now init
refuses with SubscriptionDetached, or, with ``recreate_subscriptions=True``,
recreates the subscription and logs a WARNING naming what was lost.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from melange_gcp import GCPPubSubBackend, SubscriptionDetached

from melange import MessagingBackendFactory
from melange.backends.base import OutgoingMessage
from melange.exceptions import ImmutableSettingError


@pytest.fixture
def repairing(emulator_host: str, gcp_project: str) -> Iterator[GCPPubSubBackend]:
    """A fresh backend on the emulator that recreates what it cannot converge."""
    with GCPPubSubBackend(
        project=gcp_project, emulator_host=emulator_host, recreate_subscriptions=True
    ) as backend:
        yield backend


@pytest.fixture
def refusing(emulator_host: str, gcp_project: str) -> Iterator[GCPPubSubBackend]:
    """A fresh backend on the emulator with the default recreate_subscriptions=False."""
    with GCPPubSubBackend(project=gcp_project, emulator_host=emulator_host) as backend:
        yield backend


def _delete_topic_by_hand(backend: GCPPubSubBackend, topic: str) -> None:
    path = f"projects/{backend.project}/topics/{topic}"
    backend.publisher_client.delete_topic(request={"topic": path})


def _topic_of(backend: GCPPubSubBackend, subscription: str) -> str:
    path = f"projects/{backend.project}/subscriptions/{subscription}"
    found = backend.subscriber_client.get_subscription(request={"subscription": path})
    return str(found.topic)


def _topics(backend: GCPPubSubBackend) -> set[str]:
    pager = backend.publisher_client.list_topics(request={"project": f"projects/{backend.project}"})
    return {item.name.rsplit("/", 1)[-1] for item in pager}


def _receive_one(backend: GCPPubSubBackend, queue: str) -> list[bytes]:
    received = backend.receive(queue, max_messages=10, wait_seconds=3)
    backend.ack(received)
    return [message.body for message in received]


# ------------------------------------------------------------------ refused
def test_a_queue_whose_topic_was_deleted_by_hand_is_refused_and_nothing_is_changed(
    backend: GCPPubSubBackend, refusing: GCPPubSubBackend, unique: str
) -> None:
    queue = f"{unique}-q"
    MessagingBackendFactory(backend).init_queue(queue)
    _delete_topic_by_hand(backend, queue)
    assert _topic_of(backend, queue) == "_deleted-topic_"

    with pytest.raises(SubscriptionDetached) as caught:
        MessagingBackendFactory(refusing).init_queue(queue)
    error = caught.value
    assert isinstance(error, ImmutableSettingError)
    assert (error.subscription, error.queue, error.topic, error.detached) == (
        queue,
        queue,
        queue,
        True,
    )
    assert (error.setting, error.current, error.declared) == ("topic", "_deleted-topic_", queue)
    message = str(error)
    assert "detached" in message and "recreate_subscriptions=True" in message
    assert f"gcloud pubsub subscriptions delete {queue} --project={backend.project}" in message
    assert queue not in _topics(backend), "the refusal recreated the topic"
    assert _topic_of(backend, queue) == "_deleted-topic_"


def test_a_fan_out_subscription_whose_topic_was_deleted_by_hand_is_refused(
    backend: GCPPubSubBackend, refusing: GCPPubSubBackend, unique: str
) -> None:
    queue, topic = f"{unique}-q", f"{unique}-t"
    MessagingBackendFactory(backend).init_queue(queue, [topic])
    _delete_topic_by_hand(backend, topic)
    with pytest.raises(SubscriptionDetached, match=f"'{queue}~{topic}'.*is detached"):
        MessagingBackendFactory(refusing).init_queue(queue, [topic])
    assert _topic_of(backend, f"{queue}~{topic}") == "_deleted-topic_"


def test_a_subscription_made_by_hand_on_another_topic_is_refused(
    backend: GCPPubSubBackend, refusing: GCPPubSubBackend, unique: str
) -> None:
    queue, topic, other = f"{unique}-q", f"{unique}-t", f"{unique}-other"
    factory = MessagingBackendFactory(backend)
    factory.init_queue(queue, [topic])
    factory.init_topic(other)
    name = f"projects/{backend.project}/subscriptions/{queue}~{topic}"
    backend.subscriber_client.delete_subscription(request={"subscription": name})
    backend.subscriber_client.create_subscription(
        request={"name": name, "topic": f"projects/{backend.project}/topics/{other}"}
    )
    with pytest.raises(SubscriptionDetached) as caught:
        MessagingBackendFactory(refusing).init_queue(queue, [topic])
    assert not caught.value.detached
    assert f"is on topic '{other}', not on '{topic}'" in str(caught.value)


# ------------------------------------------------------------------ repaired
def test_recreate_subscriptions_repairs_a_queue_whose_topic_was_deleted_by_hand(
    backend: GCPPubSubBackend,
    repairing: GCPPubSubBackend,
    unique: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue, dlq = f"{unique}-q", f"{unique}-dlq"
    MessagingBackendFactory(backend).init_queue(queue, dead_letter_queue_name=dlq)
    backend.publish(queue, [OutgoingMessage(b"before")])
    _delete_topic_by_hand(backend, queue)
    _delete_topic_by_hand(backend, dlq)

    caplog.set_level(logging.WARNING, logger="melange.gcp")
    plan = MessagingBackendFactory(repairing).init_queue(queue, dead_letter_queue_name=dlq)
    assert len(plan) == 2, plan.describe()
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 2, warnings
    for name in (dlq, queue):
        (said,) = [text for text in warnings if f"subscription {name!r}" in text]
        assert "deleted outside melange" in said and "unacknowledged" in said and "lost" in said
        path = f"projects/{backend.project}/topics/{name}"
        assert _topic_of(backend, name) == path
    policy = backend.get_queue(queue)
    assert policy is not None and policy.dead_letter is not None

    repairing.publish(queue, [OutgoingMessage(b"after")])
    assert _receive_one(repairing, queue) == [b"after"]  # "before" went with the old one
    assert (
        len(MessagingBackendFactory(repairing).init_queue(queue, dead_letter_queue_name=dlq)) == 0
    )


def test_recreate_subscriptions_repairs_a_fan_out_whose_topic_was_deleted_by_hand(
    backend: GCPPubSubBackend,
    repairing: GCPPubSubBackend,
    unique: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue, topic = f"{unique}-q", f"{unique}-t"
    MessagingBackendFactory(backend).init_queue(queue, [topic], subscription_filter={"k": ["v"]})
    _delete_topic_by_hand(backend, topic)
    caplog.set_level(logging.WARNING, logger="melange.gcp")
    factory = MessagingBackendFactory(repairing)
    plan = factory.init_queue(queue, [topic], subscription_filter={"k": ["v"]})
    assert [action.kind for action in plan] == ["create_topic", "subscribe"], plan.describe()
    (said,) = [record.getMessage() for record in caplog.records]
    assert f"recreating subscription '{queue}~{topic}'" in said and "are lost" in said
    subscription = repairing.get_subscription(topic, queue)
    assert subscription is not None and subscription.filter_dict() == {"k": ["v"]}

    repairing.publish_to_topic(topic, [OutgoingMessage(b"fanned", {"k": "v"})])
    assert _receive_one(repairing, queue) == [b"fanned"]
    assert len(factory.init_queue(queue, [topic], subscription_filter={"k": ["v"]})) == 0


def test_recreate_subscriptions_moves_a_subscription_made_on_another_topic(
    backend: GCPPubSubBackend, repairing: GCPPubSubBackend, unique: str
) -> None:
    queue, topic, other = f"{unique}-q", f"{unique}-t", f"{unique}-other"
    factory = MessagingBackendFactory(backend)
    factory.init_queue(queue, [topic])
    factory.init_topic(other)
    name = f"projects/{backend.project}/subscriptions/{queue}~{topic}"
    backend.subscriber_client.delete_subscription(request={"subscription": name})
    backend.subscriber_client.create_subscription(
        request={"name": name, "topic": f"projects/{backend.project}/topics/{other}"}
    )
    plan = MessagingBackendFactory(repairing).init_queue(queue, [topic])
    assert [action.kind for action in plan] == ["subscribe"], plan.describe()
    assert _topic_of(backend, f"{queue}~{topic}").endswith(f"/topics/{topic}")
    repairing.publish_to_topic(other, [OutgoingMessage(b"elsewhere")])
    repairing.publish_to_topic(topic, [OutgoingMessage(b"subscribed")])
    assert _receive_one(repairing, queue) == [b"subscribed"]


def test_a_refused_detached_fan_out_changes_nothing_else_first(
    backend: GCPPubSubBackend, refusing: GCPPubSubBackend, unique: str
) -> None:
    """The refusal comes before the plan recreates the topic or updates the queue."""
    queue, topic = f"{unique}-q", f"{unique}-t"
    MessagingBackendFactory(backend).init_queue(queue, [topic], visibility_timeout=30)
    _delete_topic_by_hand(backend, topic)
    with pytest.raises(SubscriptionDetached):
        MessagingBackendFactory(refusing).init_queue(queue, [topic], visibility_timeout=90)
    assert topic not in _topics(backend), "the refusal recreated the topic"
    own = backend.subscriber_client.get_subscription(
        request={"subscription": f"projects/{backend.project}/subscriptions/{queue}"}
    )
    assert own.ack_deadline_seconds == 30, "the refusal updated the queue"
