"""How queues, topics, subscriptions and settings land on Pub/Sub, read back with the raw client."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from google.protobuf import field_mask_pb2
from melange_gcp import GCPPubSubBackend
from melange_gcp.resources import ROLE_LABEL, VISIBILITY_LABEL

from melange import MessagingBackendFactory
from melange.backends.base import OutgoingMessage
from melange.exceptions import (
    ImmutableSettingError,
    InvalidTopology,
    QueueNotFound,
    TopicNotFound,
)
from melange.topology import DeadLetterPolicy, QueueSpec, SubscriptionSpec


@pytest.fixture
def factory(backend: GCPPubSubBackend) -> Iterator[MessagingBackendFactory]:
    yield MessagingBackendFactory(backend)


def _sub(backend: GCPPubSubBackend, name: str) -> object:
    return backend.subscriber_client.get_subscription(
        request={"subscription": f"projects/{backend.project}/subscriptions/{name}"}
    )


def _subscriptions(backend: GCPPubSubBackend) -> set[str]:
    pager = backend.subscriber_client.list_subscriptions(
        request={"project": f"projects/{backend.project}"}
    )
    return {item.name.rsplit("/", 1)[-1] for item in pager}


def test_a_queue_is_a_topic_plus_a_subscription_of_the_same_name(
    backend: GCPPubSubBackend, factory: MessagingBackendFactory, unique: str
) -> None:
    queue, dlq = f"{unique}-q", f"{unique}-dlq"
    factory.init_queue(
        queue,
        dead_letter_queue_name=dlq,
        max_receive_count=7,
        visibility_timeout=45.0,
        message_retention_period=3600.0,
    )
    topic = backend.publisher_client.get_topic(
        request={"topic": f"projects/{backend.project}/topics/{queue}"}
    )
    assert topic.labels[ROLE_LABEL] == "queue"
    sub = _sub(backend, queue)
    assert sub.topic == topic.name  # type: ignore[attr-defined]
    assert sub.ack_deadline_seconds == 45  # type: ignore[attr-defined]
    assert sub.message_retention_duration.total_seconds() == 3600  # type: ignore[attr-defined]
    assert sub.dead_letter_policy.dead_letter_topic.endswith(f"/topics/{dlq}")  # type: ignore[attr-defined]
    assert sub.dead_letter_policy.max_delivery_attempts == 7  # type: ignore[attr-defined]
    assert VISIBILITY_LABEL not in sub.labels  # type: ignore[attr-defined]
    assert not sub.enable_message_ordering  # type: ignore[attr-defined]
    # A queue can be published to directly, with the raw client too.
    backend.publisher_client.publish(request={"topic": topic.name, "messages": [{"data": b"raw"}]})
    (received,) = backend.receive(queue, wait_seconds=5)
    assert received.body == b"raw"
    backend.ack([received])
    # A queue is not a topic.
    assert backend.get_topic(queue) is None


def test_a_short_visibility_timeout_is_kept_in_a_label_over_the_minimum_deadline(
    backend: GCPPubSubBackend, factory: MessagingBackendFactory, unique: str
) -> None:
    queue = f"{unique}-q"
    factory.init_queue(queue, visibility_timeout=1.5)
    sub = _sub(backend, queue)
    assert sub.ack_deadline_seconds == 10  # type: ignore[attr-defined]
    assert sub.labels[VISIBILITY_LABEL] == "1500"  # type: ignore[attr-defined]
    spec = backend.get_queue(queue)
    assert spec is not None and spec.visibility_timeout == 1.5


def test_a_fifo_queue_orders_its_subscriptions(
    backend: GCPPubSubBackend, factory: MessagingBackendFactory, unique: str
) -> None:
    queue, topic = f"{unique}-q.fifo", f"{unique}-t.fifo"
    factory.init_queue(queue, [topic])
    assert _sub(backend, queue).enable_message_ordering  # type: ignore[attr-defined]
    assert _sub(backend, f"{queue}~{topic}").enable_message_ordering  # type: ignore[attr-defined]


def test_a_fifo_queue_cannot_subscribe_to_a_standard_topic(
    backend: GCPPubSubBackend, factory: MessagingBackendFactory, unique: str
) -> None:
    before = _subscriptions(backend)
    with pytest.raises(InvalidTopology, match="ordering key"):
        factory.init_queue(f"{unique}-q.fifo", [f"{unique}-t"])
    assert _subscriptions(backend) == before


def test_subscribing_adds_a_fan_out_subscription_with_the_queue_settings(
    backend: GCPPubSubBackend, factory: MessagingBackendFactory, unique: str
) -> None:
    queue, dlq, topic = f"{unique}-q", f"{unique}-dlq", f"{unique}-t"
    factory.init_queue(
        queue, [topic], dead_letter_queue_name=dlq, subscription_filter={"kind": ["a", "b"]}
    )
    fan_out = _sub(backend, f"{queue}~{topic}")
    assert fan_out.topic.endswith(f"/topics/{topic}")  # type: ignore[attr-defined]
    assert fan_out.filter == '(attributes.kind = "a" OR attributes.kind = "b")'  # type: ignore[attr-defined]
    assert fan_out.dead_letter_policy.dead_letter_topic.endswith(f"/topics/{dlq}")  # type: ignore[attr-defined]
    # A later change of the queue's settings reaches the fan-out subscription too.
    factory.init_queue(
        queue,
        [topic],
        dead_letter_queue_name=dlq,
        subscription_filter={"kind": ["a", "b"]},
        visibility_timeout=90.0,
    )
    assert _sub(backend, f"{queue}~{topic}").ack_deadline_seconds == 90  # type: ignore[attr-defined]
    backend.publish_to_topic(topic, [OutgoingMessage(b"fanned", {"kind": "a"})])
    (received,) = backend.receive(queue, wait_seconds=5)
    assert received.body == b"fanned"
    backend.ack([received])


def test_a_changed_filter_is_refused_naming_both_values(
    backend: GCPPubSubBackend, factory: MessagingBackendFactory, unique: str
) -> None:
    queue, topic = f"{unique}-q", f"{unique}-t"
    factory.init_queue(queue, [topic], subscription_filter={"kind": ["paid"]})
    with pytest.raises(ImmutableSettingError) as caught:
        backend.subscribe(
            SubscriptionSpec(topic, queue, SubscriptionSpec.normalize_filter({"kind": ["other"]}))
        )
    error = caught.value
    assert (error.setting, error.current, error.declared) == (
        "filter",
        'attributes.kind = "paid"',
        'attributes.kind = "other"',
    )
    assert "recreate_subscriptions=True" in str(error)
    subscription = backend.get_subscription(topic, queue)
    assert subscription is not None and subscription.filter_dict() == {"kind": ["paid"]}


def test_recreate_subscriptions_replaces_a_changed_filter(
    emulator_host: str, gcp_project: str, unique: str
) -> None:
    with GCPPubSubBackend(
        project=gcp_project, emulator_host=emulator_host, recreate_subscriptions=True
    ) as backend:
        factory = MessagingBackendFactory(backend)
        queue, topic = f"{unique}-q", f"{unique}-t"
        factory.init_queue(queue, [topic], subscription_filter={"kind": ["paid"]})
        plan = factory.init_queue(queue, [topic], subscription_filter={"kind": ["other"]})
        assert [action.kind for action in plan] == ["update_subscription"]
        subscription = backend.get_subscription(topic, queue)
        assert subscription is not None and subscription.filter_dict() == {"kind": ["other"]}


def test_settings_changed_by_hand_are_restored_with_a_field_mask(
    backend: GCPPubSubBackend, factory: MessagingBackendFactory, unique: str
) -> None:
    queue, dlq = f"{unique}-q", f"{unique}-dlq"
    factory.init_queue(queue, dead_letter_queue_name=dlq, visibility_timeout=30.0)
    name = f"projects/{backend.project}/subscriptions/{queue}"
    backend.subscriber_client.update_subscription(
        request={
            "subscription": {
                "name": name,
                "ack_deadline_seconds": 120,
                "retry_policy": {"minimum_backoff": {"seconds": 5}},
            },
            "update_mask": field_mask_pb2.FieldMask(
                paths=["ack_deadline_seconds", "retry_policy", "dead_letter_policy"]
            ),
        }
    )
    changed = backend.get_queue(queue)
    assert changed is not None
    assert (changed.visibility_timeout, changed.dead_letter) == (120.0, None)
    plan = factory.init_queue(queue, dead_letter_queue_name=dlq, visibility_timeout=30.0)
    assert [action.kind for action in plan] == ["update_queue"]
    restored = _sub(backend, queue)
    assert restored.ack_deadline_seconds == 30  # type: ignore[attr-defined]
    assert not restored.retry_policy  # type: ignore[attr-defined]
    assert backend.get_queue(queue) == QueueSpec(
        queue, visibility_timeout=30.0, dead_letter=DeadLetterPolicy(dlq, 5)
    )
    assert len(factory.init_queue(queue, dead_letter_queue_name=dlq, visibility_timeout=30.0)) == 0


@pytest.mark.parametrize("count", [4, 101])
def test_max_delivery_attempts_outside_5_to_100_are_refused_before_any_call(
    backend: GCPPubSubBackend, factory: MessagingBackendFactory, unique: str, count: int
) -> None:
    before = _subscriptions(backend)
    with pytest.raises(InvalidTopology, match="from 5 to 100"):
        factory.init_queue(
            f"{unique}-q", dead_letter_queue_name=f"{unique}-dlq", max_receive_count=count
        )
    with pytest.raises(InvalidTopology, match="from 5 to 100"):
        backend.declare_queue(
            QueueSpec(f"{unique}-q", dead_letter=DeadLetterPolicy(f"{unique}-d", count))
        )
    assert _subscriptions(backend) == before


def test_declare_queue_needs_its_dead_letter_queue(backend: GCPPubSubBackend, unique: str) -> None:
    with pytest.raises(QueueNotFound, match=f"{unique}-dlq"):
        backend.declare_queue(
            QueueSpec(f"{unique}-q", dead_letter=DeadLetterPolicy(f"{unique}-dlq"))
        )
    assert backend.get_queue(f"{unique}-q") is None


def test_queues_and_topics_cannot_share_a_name(
    backend: GCPPubSubBackend, factory: MessagingBackendFactory, unique: str
) -> None:
    factory.init_queue(f"{unique}-q")
    with pytest.raises(InvalidTopology, match="is a queue"):
        backend.declare_topic(
            dataclasses.replace(
                factory.plan_topic(f"{unique}-t").actions[0].spec, name=f"{unique}-q"
            )
        )  # type: ignore[arg-type]
    factory.init_topic(f"{unique}-t")
    with pytest.raises(InvalidTopology, match="exists as a topic"):
        backend.declare_queue(QueueSpec(f"{unique}-t"))


def test_deleting_queues_and_topics_removes_their_subscriptions(
    backend: GCPPubSubBackend, factory: MessagingBackendFactory, unique: str
) -> None:
    queue, topic, other = f"{unique}-q", f"{unique}-t", f"{unique}-u"
    factory.init_queue(queue, [topic, other])
    assert {queue, f"{queue}~{topic}", f"{queue}~{other}"} <= _subscriptions(backend)
    backend.delete_topic(topic)
    assert f"{queue}~{topic}" not in _subscriptions(backend)
    assert backend.get_queue(queue) is not None
    backend.delete_queue(queue)
    assert not {queue, f"{queue}~{other}"} & _subscriptions(backend)
    assert backend.get_topic(other) is not None
    backend.delete_topic(other)


def _topics(backend: GCPPubSubBackend) -> set[str]:
    pager = backend.publisher_client.list_topics(request={"project": f"projects/{backend.project}"})
    return {item.name.rsplit("/", 1)[-1] for item in pager}


def test_a_refused_filter_change_changes_nothing_else_first(
    backend: GCPPubSubBackend, factory: MessagingBackendFactory, unique: str
) -> None:
    """The plan's later subscribe is refused before its earlier actions run."""
    queue, topic, new_topic = f"{unique}-q", f"{unique}-t", f"{unique}-t2"
    factory.init_queue(
        queue, [topic], subscription_filter={"kind": ["paid"]}, visibility_timeout=30
    )
    with pytest.raises(ImmutableSettingError) as caught:
        factory.init_queue(
            queue,
            [new_topic, topic],
            subscription_filter={"kind": ["other"]},
            visibility_timeout=120,
        )
    assert caught.value.setting == "filter"
    assert _sub(backend, queue).ack_deadline_seconds == 30  # type: ignore[attr-defined]
    assert _sub(backend, f"{queue}~{topic}").ack_deadline_seconds == 30  # type: ignore[attr-defined]
    assert new_topic not in _topics(backend)
    assert f"{queue}~{new_topic}" not in _subscriptions(backend)
    # The dry run refuses it too.
    with pytest.raises(ImmutableSettingError):
        factory.plan_queue(queue, [topic], subscription_filter={"kind": ["other"]})


def test_a_queue_named_like_a_topic_is_refused_before_anything_is_created(
    backend: GCPPubSubBackend, factory: MessagingBackendFactory, unique: str
) -> None:
    topic, queue, dlq, new_topic = f"{unique}-t", f"{unique}-q", f"{unique}-d", f"{unique}-nt"
    factory.init_topic(topic)
    factory.init_queue(queue)
    before_topics, before_subscriptions = _topics(backend), _subscriptions(backend)
    with pytest.raises(InvalidTopology, match="exists as a topic"):
        factory.init_queue(topic, [new_topic], dead_letter_queue_name=dlq)
    with pytest.raises(InvalidTopology, match="is a queue"):
        factory.init_queue(f"{unique}-x", [f"{unique}-nt2", queue])
    with pytest.raises(InvalidTopology, match="is a queue"):
        factory.init_topic(queue)
    assert (_topics(backend), _subscriptions(backend)) == (before_topics, before_subscriptions)


def test_a_queue_made_by_hand_and_adopted_is_never_taken_for_a_topic(
    backend: GCPPubSubBackend, factory: MessagingBackendFactory, unique: str
) -> None:
    """A topic plus a subscription of its name, made without melange's label, is a queue."""
    queue = f"{unique}-q"
    topic_name = f"projects/{backend.project}/topics/{queue}"
    backend.publisher_client.create_topic(request={"name": topic_name})
    backend.subscriber_client.create_subscription(
        request={
            "name": f"projects/{backend.project}/subscriptions/{queue}",
            "topic": topic_name,
            "ack_deadline_seconds": 30,
            "message_retention_duration": {"seconds": 4 * 24 * 3600},
            "expiration_policy": {},
        }
    )
    factory.init_queue(queue)
    assert backend.get_queue(queue) is not None
    assert backend.get_topic(queue) is None
    with pytest.raises(TopicNotFound):
        backend.delete_topic(queue)
    with pytest.raises(InvalidTopology, match="is a queue"):
        factory.init_topic(queue)
    assert _sub(backend, queue).topic == topic_name  # type: ignore[attr-defined]
