"""Topology on RabbitMQ: the seed's factory calls, convergence counted, immutable settings.

Convergence is counted where it happens: the management API client counts its
requests by method, and the backend counts the AMQP methods that declare, bind,
unbind or delete. A converged re-init reads, and changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator

import pika
import pika.exceptions
import pytest
from melange_rabbitmq import RabbitMQBackend
from melange_rabbitmq.testing import RabbitMQNode

from melange import MessagingBackendFactory
from melange.backends import load_backend
from melange.backends.base import OutgoingMessage
from melange.exceptions import ImmutableSettingError, UnsupportedCapability
from melange.testing.conformance import drain_bodies
from melange.topology import DeadLetterPolicy


@pytest.fixture
def bare(rabbitmq_node: RabbitMQNode) -> Iterator[RabbitMQBackend]:
    """A backend without the management API: settings are queue arguments."""
    backend = RabbitMQBackend(rabbitmq_node.url)
    yield backend
    backend.close()


def test_the_seed_factory_calls_work_with_standard_names(rabbitmq_node: RabbitMQNode) -> None:
    from melange.backends import RabbitMQBackend as ByName

    backend = ByName(rabbitmq_node.url, management_url=rabbitmq_node.management_url)
    try:
        factory = MessagingBackendFactory(backend)
        factory.init_topic("my-topic")
        factory.init_queue(
            "payment-updates",
            ["my-topic-1", "my-topic-2"],
            dead_letter_queue_name="payment-updates-dlq",
        )
        assert backend.get_topic("my-topic") is not None
        queue = backend.get_queue("payment-updates")
        assert queue is not None
        assert queue.dead_letter == DeadLetterPolicy("payment-updates-dlq", 5)
        for topic in ("my-topic-1", "my-topic-2"):
            assert backend.get_subscription(topic, "payment-updates") is not None
            backend.publish_to_topic(topic, [OutgoingMessage(topic.encode())])
        assert sorted(drain_bodies(backend, "payment-updates", 2)) == [
            b"my-topic-1",
            b"my-topic-2",
        ]
        with pytest.raises(UnsupportedCapability, match="fifo"):
            factory.init_queue("payment-updates.fifo")
    finally:
        for queue_name in ("payment-updates", "payment-updates-dlq"):
            if backend.get_queue(queue_name) is not None:
                backend.delete_queue(queue_name)
        for topic in ("my-topic", "my-topic-1", "my-topic-2"):
            if backend.get_topic(topic) is not None:
                backend.delete_topic(topic)
        backend.close()


def test_load_backend_by_name_takes_the_url_and_management_url(
    rabbitmq_node: RabbitMQNode, unique: str
) -> None:
    backend = load_backend(
        "rabbitmq", url=rabbitmq_node.url, management_url=rabbitmq_node.management_url
    )
    try:
        assert isinstance(backend, RabbitMQBackend)
        MessagingBackendFactory(backend).init_queue(unique)
        assert backend.get_queue(unique) is not None
        backend.delete_queue(unique)
    finally:
        backend.close()


def test_a_converged_reinit_makes_no_mutating_call(backend: RabbitMQBackend, unique: str) -> None:
    factory = MessagingBackendFactory(backend)
    queue, dlq, topics = f"{unique}-q", f"{unique}-dlq", [f"{unique}-t1", f"{unique}-t2"]
    request = {"dead_letter_queue_name": dlq, "subscription_filter": {"kind": ["a", "b"]}}
    first = factory.init_queue(queue, topics, visibility_timeout=7.0, **request)
    assert len(first) > 0
    api = backend.management
    assert api is not None
    mutating, declares = api.mutating_calls, backend.declare_calls
    assert mutating > 0 and declares > 0  # the first init did create things
    for _ in range(3):
        again = factory.init_queue(queue, topics, visibility_timeout=7.0, **request)
        assert len(again) == 0, again.describe()
    assert (api.mutating_calls, backend.declare_calls) == (mutating, declares)


def test_reinit_restores_a_policy_changed_by_hand_with_one_write(
    backend: RabbitMQBackend, unique: str
) -> None:
    factory = MessagingBackendFactory(backend)
    queue, dlq = f"{unique}-q", f"{unique}-dlq"
    factory.init_queue(queue, dead_letter_queue_name=dlq, max_receive_count=4)
    api = backend.management
    assert api is not None
    policy = api.policy(backend._policy_name(queue))
    assert policy is not None
    hand = dict(policy["definition"], **{"delivery-limit": 9})
    api.put_policy(policy["name"], policy["pattern"], hand, policy["priority"])
    before = api.mutating_calls
    plan = factory.init_queue(queue, dead_letter_queue_name=dlq, max_receive_count=4)
    assert [(a.kind, [str(c) for c in a.changes]) for a in plan] == [
        (
            "update_queue",
            [
                "dead_letter: DeadLetterPolicy(queue_name='"
                f"{dlq}', max_receive_count=10) -> DeadLetterPolicy(queue_name='"
                f"{dlq}', max_receive_count=4)"
            ],
        )
    ]
    assert api.mutating_calls - before == 1  # the policy; the visibility parameter was right
    queue_spec = backend.get_queue(queue)
    assert queue_spec is not None and queue_spec.dead_letter == DeadLetterPolicy(dlq, 4)


def test_a_classic_queue_under_the_name_is_refused_naming_both_types(
    backend: RabbitMQBackend, rabbitmq_node: RabbitMQNode, unique: str
) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_node.url))
    try:
        connection.channel().queue_declare(unique, durable=True)  # classic, by hand
    finally:
        connection.close()
    with pytest.raises(ImmutableSettingError) as caught:
        MessagingBackendFactory(backend).init_queue(unique)
    error = caught.value
    assert (error.setting, error.current, error.declared) == ("queue type", "classic", "quorum")
    assert backend.get_queue(unique) is not None  # untouched, not deleted
    backend.delete_queue(unique)


def test_without_management_a_changed_setting_is_refused_naming_both_values(
    bare: RabbitMQBackend, unique: str
) -> None:
    factory = MessagingBackendFactory(bare)
    factory.init_queue(unique, message_retention_period=3600.0)
    with pytest.raises(ImmutableSettingError) as caught:
        factory.init_queue(unique, message_retention_period=7200.0)
    error = caught.value
    assert (error.resource, error.setting) == (unique, "message_retention_period")
    assert (error.current, error.declared) == (3600.0, 7200.0)
    assert "3600" in str(error) and "7200" in str(error)
    factory.init_queue(unique, message_retention_period=3600.0)  # the same: accepted
    bare.delete_queue(unique)


def test_without_management_a_fresh_backend_s_reinit_is_checked_by_the_broker(
    rabbitmq_node: RabbitMQNode, bare: RabbitMQBackend, unique: str
) -> None:
    # Another process (a fresh backend) cannot read the queue's arguments: its declaration,
    # even one equal to melange's defaults, must reach the broker, which compares them.
    queue, dlq = f"{unique}-q", f"{unique}-dlq"
    MessagingBackendFactory(bare).init_queue(
        queue, dead_letter_queue_name=dlq, max_receive_count=5, message_retention_period=3600.0
    )
    for settings in (
        {},  # melange's defaults, no dead-letter queue
        {"message_retention_period": 3600.0},  # the dead-letter queue left out
        {"dead_letter_queue_name": dlq, "max_receive_count": 3, "message_retention_period": 3600.0},
    ):
        fresh = RabbitMQBackend(rabbitmq_node.url)
        try:
            with pytest.raises(ImmutableSettingError) as caught:
                MessagingBackendFactory(fresh).init_queue(queue, **settings)  # type: ignore[arg-type]
        finally:
            fresh.close()
        assert caught.value.resource == queue, settings
    fresh = RabbitMQBackend(rabbitmq_node.url)
    try:  # the same declaration is accepted
        MessagingBackendFactory(fresh).init_queue(
            queue, dead_letter_queue_name=dlq, max_receive_count=5, message_retention_period=3600.0
        )
    finally:
        fresh.close()
    for name in (queue, dlq):
        bare.delete_queue(name)


def test_without_management_a_classic_queue_made_by_another_client_is_refused(
    rabbitmq_node: RabbitMQNode, bare: RabbitMQBackend, unique: str
) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_node.url))
    try:
        connection.channel().queue_declare(unique, durable=True)  # classic, by hand
    finally:
        connection.close()
    with pytest.raises(ImmutableSettingError) as caught:
        MessagingBackendFactory(bare).init_queue(unique)
    # The broker names the first argument that differs (here x-message-ttl, unset).
    assert caught.value.resource == unique
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_node.url))
    try:  # still the classic queue: declaring it as a quorum queue is refused
        with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="x-queue-type"):
            connection.channel().queue_declare(
                unique, durable=True, arguments={"x-queue-type": "quorum"}
            )
    finally:
        connection.close()
    bare.delete_queue(unique)


def test_with_management_a_queue_made_without_it_names_the_real_values(
    rabbitmq_node: RabbitMQNode, backend: RabbitMQBackend, bare: RabbitMQBackend, unique: str
) -> None:
    # Made without the management API: its settings are queue arguments, fixed for good.
    queue, dlq = f"{unique}-q", f"{unique}-dlq"
    MessagingBackendFactory(bare).init_queue(
        queue, dead_letter_queue_name=dlq, max_receive_count=4, message_retention_period=3600.0
    )
    factory = MessagingBackendFactory(backend)
    kept = {"dead_letter_queue_name": dlq, "max_receive_count": 4}
    for settings, expected in (
        (
            {**kept, "message_retention_period": 7200.0},
            ("message_retention_period", 3600.0, 7200.0),
        ),
        ({"message_retention_period": 3600.0}, ("dead_letter_queue_name", dlq, None)),
        (
            {**kept, "max_receive_count": 3, "message_retention_period": 3600.0},
            ("max_receive_count", 4, 3),
        ),
    ):
        with pytest.raises(ImmutableSettingError) as caught:
            factory.init_queue(queue, **settings)  # type: ignore[arg-type]
        error = caught.value
        assert (error.setting, error.current, error.declared) == expected, settings
    # The advice works: declaring the values the queue has, other settings still converge.
    plan = factory.init_queue(
        queue, **kept, message_retention_period=3600.0, visibility_timeout=60.0
    )
    assert plan.actions
    spec = backend.get_queue(queue)
    assert spec is not None
    assert (spec.visibility_timeout, spec.message_retention_period) == (60.0, 3600.0)
    assert spec.dead_letter == DeadLetterPolicy(dlq, 4)
    for name in (queue, dlq):
        backend.delete_queue(name)


def test_without_management_a_queue_s_dead_letter_arguments_work(
    bare: RabbitMQBackend, unique: str
) -> None:
    queue, dlq = f"{unique}-q", f"{unique}-dlq"
    MessagingBackendFactory(bare).init_queue(
        queue, dead_letter_queue_name=dlq, max_receive_count=1, visibility_timeout=1.0
    )
    bare.publish(queue, [OutgoingMessage(b"once")])
    (received,) = bare.receive(queue, 1, wait_seconds=5)
    bare.nack([received])
    assert drain_bodies(bare, dlq, 1) == [b"once"]
    for name in (queue, dlq):
        bare.delete_queue(name)
