"""Topology on the management stand-in: what each melange resource becomes, and convergence."""

from __future__ import annotations

import datetime
from collections.abc import Iterator

import pytest
from azure.servicebus.management import (
    ServiceBusAdministrationClient,
    SqlRuleFilter,
    TrueRuleFilter,
)
from melange_azure import AzureServiceBusBackend
from melange_azure.clients import RedirectingTransport
from melange_azure.resources import NO_DEAD_LETTER_COUNT
from standin import ServiceBusStandIn

from melange.exceptions import ImmutableSettingError, InvalidTopology, QueueNotFound
from melange.factory import MessagingBackendFactory
from melange.testing.conformance import ResourceNames
from melange.topology import QueueSpec, SubscriptionSpec


@pytest.fixture
def admin(service_bus: ServiceBusStandIn) -> Iterator[ServiceBusAdministrationClient]:
    """A plain administration client, to look at and change entities by hand."""
    client = ServiceBusAdministrationClient.from_connection_string(
        service_bus.connection_string, transport=RedirectingTransport(service_bus.management_url)
    )
    yield client
    client.close()


@pytest.fixture
def names(backend: AzureServiceBusBackend) -> Iterator[ResourceNames]:
    """Unique names, cleaned up after the test."""
    issued = ResourceNames()
    yield issued
    issued.cleanup(backend)


def test_a_queue_is_a_queue_with_the_declared_settings(
    backend: AzureServiceBusBackend, admin: ServiceBusAdministrationClient, names: ResourceNames
) -> None:
    queue, dlq = names.queue(), names.queue("dlq")
    MessagingBackendFactory(backend).init_queue(
        queue,
        dead_letter_queue_name=dlq,
        max_receive_count=7,
        visibility_timeout=45.0,
        message_retention_period=7200.0,
    )
    props = admin.get_queue(queue)
    assert props.lock_duration == datetime.timedelta(seconds=45)
    assert props.default_message_time_to_live == datetime.timedelta(hours=2)
    assert props.max_delivery_count == 7
    assert str(props.forward_dead_lettered_messages_to).endswith(f"/{dlq}")
    assert not props.requires_session and not props.requires_duplicate_detection
    assert admin.get_queue(dlq).max_delivery_count == NO_DEAD_LETTER_COUNT


def test_a_fifo_queue_has_sessions_and_duplicate_detection(
    backend: AzureServiceBusBackend, admin: ServiceBusAdministrationClient, names: ResourceNames
) -> None:
    queue = names.fifo_queue()
    MessagingBackendFactory(backend).init_queue(queue)
    props = admin.get_queue(queue)
    assert props.requires_session and props.requires_duplicate_detection
    topic = names.fifo_topic()
    MessagingBackendFactory(backend).init_topic(topic)
    assert admin.get_topic(topic).requires_duplicate_detection


def test_short_visibility_timeouts_get_the_shortest_lock_and_melange_metadata(
    backend: AzureServiceBusBackend, admin: ServiceBusAdministrationClient, names: ResourceNames
) -> None:
    queue = names.queue()
    MessagingBackendFactory(backend).init_queue(queue, visibility_timeout=2.0, delay_seconds=3.0)
    props = admin.get_queue(queue)
    assert props.lock_duration == datetime.timedelta(seconds=5)
    assert '"visibility_timeout": 2.0' in str(props.user_metadata)
    assert '"delay_seconds": 3.0' in str(props.user_metadata)
    spec = backend.get_queue(queue)
    assert spec is not None and (spec.visibility_timeout, spec.delay_seconds) == (2.0, 3.0)


def test_user_metadata_of_others_is_kept(
    backend: AzureServiceBusBackend, admin: ServiceBusAdministrationClient, names: ResourceNames
) -> None:
    queue = names.queue()
    MessagingBackendFactory(backend).init_queue(queue)
    props = admin.get_queue(queue)
    props.user_metadata = '{"owner": "team-a"}'
    admin.update_queue(props)
    MessagingBackendFactory(backend).init_queue(queue, delay_seconds=2.0)
    metadata = str(admin.get_queue(queue).user_metadata)
    assert '"owner": "team-a"' in metadata and '"delay_seconds": 2.0' in metadata


def test_a_subscription_forwards_to_the_queue_with_the_filter_as_its_rule(
    backend: AzureServiceBusBackend,
    admin: ServiceBusAdministrationClient,
    names: ResourceNames,
    service_bus: ServiceBusStandIn,
) -> None:
    topic, queue = names.topic(), names.queue()
    factory = MessagingBackendFactory(backend)
    factory.init_queue(queue, [topic], subscription_filter={"kind": ["a", "it's"], "v": ["1"]})
    subscription = admin.get_subscription(topic, queue)
    assert str(subscription.forward_to) == f"sb://127.0.0.1:{service_bus.amqp_port}/{queue}"
    (rule,) = admin.list_rules(topic, queue)
    assert rule.name == "$Default"
    assert isinstance(rule.filter, SqlRuleFilter)
    assert rule.filter.sql_expression == ("user.[kind] IN ('a', 'it''s') AND user.[v] IN ('1')")
    factory.init_queue(queue, [topic])  # no filter: back to a TrueFilter
    (rule,) = admin.list_rules(topic, queue)
    assert isinstance(rule.filter, TrueRuleFilter) or rule.filter.sql_expression == "1=1"


def test_a_converged_reinit_only_reads(
    backend: AzureServiceBusBackend, names: ResourceNames, service_bus: ServiceBusStandIn
) -> None:
    topic, queue, dlq = names.topic(), names.queue(), names.queue("dlq")
    factory = MessagingBackendFactory(backend)

    def declare() -> object:
        return factory.init_queue(
            queue, [topic], dead_letter_queue_name=dlq, subscription_filter={"k": ["v"]}
        )

    declare()
    before = len(service_bus.management.requests)
    assert len(declare()) == 0  # type: ignore[arg-type]
    methods = {method for method, _ in service_bus.management.requests[before:]}
    assert methods == {"GET"}, service_bus.management.requests[before:]


def test_hand_changes_are_restored(
    backend: AzureServiceBusBackend, admin: ServiceBusAdministrationClient, names: ResourceNames
) -> None:
    topic, queue, dlq = names.topic(), names.queue(), names.queue("dlq")
    factory = MessagingBackendFactory(backend)
    factory.init_queue(queue, [topic], dead_letter_queue_name=dlq, max_receive_count=4)
    props = admin.get_queue(queue)
    props.max_delivery_count = 9
    props.forward_dead_lettered_messages_to = None
    props.lock_duration = datetime.timedelta(seconds=50)
    admin.update_queue(props)
    subscription = admin.get_subscription(topic, queue)
    subscription.forward_to = None
    admin.update_subscription(topic, subscription)
    admin.create_rule(topic, queue, "extra", filter=SqlRuleFilter("1=1"))

    plan = factory.init_queue(queue, [topic], dead_letter_queue_name=dlq, max_receive_count=4)
    assert len(plan) == 2, plan.describe()
    props = admin.get_queue(queue)
    assert props.max_delivery_count == 4 and props.lock_duration == datetime.timedelta(seconds=30)
    assert str(props.forward_dead_lettered_messages_to).endswith(f"/{dlq}")
    assert str(admin.get_subscription(topic, queue).forward_to).endswith(f"/{queue}")
    assert [rule.name for rule in admin.list_rules(topic, queue)] == ["$Default"]


@pytest.mark.parametrize(
    ("setting", "made_with"),
    [
        ("requires_duplicate_detection", {"requires_duplicate_detection": True}),
        ("enable_partitioning", {"enable_partitioning": True}),
    ],
)
def test_immutable_drift_is_refused_naming_both_values(
    backend: AzureServiceBusBackend,
    admin: ServiceBusAdministrationClient,
    names: ResourceNames,
    setting: str,
    made_with: dict[str, bool],
) -> None:
    queue = names.queue()
    admin.create_queue(queue, **made_with)
    before = admin.get_queue(queue)
    with pytest.raises(ImmutableSettingError) as caught:
        backend.declare_queue(QueueSpec(queue, visibility_timeout=10.0))
    assert caught.value.setting == setting
    assert (caught.value.current, caught.value.declared) == (True, False)
    assert "True" in str(caught.value) and "False" in str(caught.value)
    assert admin.get_queue(queue).lock_duration == before.lock_duration  # nothing changed


def test_immutable_drift_is_refused_before_the_plan_creates_a_topic(
    backend: AzureServiceBusBackend, admin: ServiceBusAdministrationClient, names: ResourceNames
) -> None:
    queue, topic = names.queue(), names.topic()
    admin.create_queue(queue, enable_partitioning=True)
    factory = MessagingBackendFactory(backend)
    with pytest.raises(ImmutableSettingError, match="enable_partitioning"):
        factory.init_queue(queue, [topic], visibility_timeout=10.0)
    assert topic not in [t.name for t in admin.list_topics()], "the refusal came after the topic"


def test_sessions_drift_is_refused(
    backend: AzureServiceBusBackend, admin: ServiceBusAdministrationClient, names: ResourceNames
) -> None:
    queue = names.fifo_queue()
    admin.create_queue(queue)  # no sessions, no duplicate detection
    with pytest.raises(ImmutableSettingError) as caught:
        backend.declare_queue(QueueSpec(queue, fifo=True))
    assert caught.value.setting == "requires_session"


def test_a_missing_dead_letter_queue_is_named(
    backend: AzureServiceBusBackend, names: ResourceNames
) -> None:
    from melange.topology import DeadLetterPolicy

    queue, dlq = names.queue(), names.queue("dlq")
    with pytest.raises(QueueNotFound, match="dead-letter queue"):
        backend.declare_queue(QueueSpec(queue, dead_letter=DeadLetterPolicy(dlq, 3)))
    assert backend.get_queue(queue) is None


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"visibility_timeout": 301.0}, "visibility_timeout"),
        ({"visibility_timeout": -1.0}, "visibility_timeout"),
        ({"message_retention_period": 0.5}, "message_retention_period"),
        ({"dead_letter_queue_name": "dlq-x", "max_receive_count": 2001}, "max_receive_count"),
    ],
)
def test_out_of_range_settings_are_refused_before_any_call(
    backend: AzureServiceBusBackend,
    names: ResourceNames,
    service_bus: ServiceBusStandIn,
    settings: dict[str, object],
    fragment: str,
) -> None:
    before = len(service_bus.management.requests)
    with pytest.raises(InvalidTopology, match=fragment):
        MessagingBackendFactory(backend).init_queue(names.queue(), **settings)  # type: ignore[arg-type]
    assert service_bus.management.requests[before:] == []


def test_subscription_rules_refused_before_any_call(
    backend: AzureServiceBusBackend, names: ResourceNames, service_bus: ServiceBusStandIn
) -> None:
    before = len(service_bus.management.requests)
    factory = MessagingBackendFactory(backend)
    with pytest.raises(InvalidTopology, match="FIFO queue"):
        factory.init_queue(names.fifo_queue(), [names.topic()])
    with pytest.raises(InvalidTopology, match=r"'\['"):
        factory.init_queue(names.queue(), [names.topic()], subscription_filter={"a]": ["x"]})
    with pytest.raises(InvalidTopology, match="1024"):
        factory.init_queue(
            names.queue(), [names.topic()], subscription_filter={"k": ["v" * 600, "w" * 600]}
        )
    with pytest.raises(InvalidTopology, match="dead-letter"):
        factory.init_queue(names.queue(), dead_letter_queue_name=names.fifo_queue("dlq"))
    assert service_bus.management.requests[before:] == []


def test_subscribe_needs_the_queue(backend: AzureServiceBusBackend, names: ResourceNames) -> None:
    topic = names.topic()
    MessagingBackendFactory(backend).init_topic(topic)
    with pytest.raises(QueueNotFound):
        backend.subscribe(SubscriptionSpec(topic, names.queue()))


def _writes(service_bus: ServiceBusStandIn, since: int) -> list[tuple[str, str]]:
    return [r for r in service_bus.management.requests[since:] if r[0] != "GET"]


def test_a_name_of_the_other_kind_is_refused_at_init_before_anything_is_created(
    backend: AzureServiceBusBackend,
    admin: ServiceBusAdministrationClient,
    names: ResourceNames,
    service_bus: ServiceBusStandIn,
) -> None:
    # Queues and topics share one namespace of names, compared case-insensitively.
    factory = MessagingBackendFactory(backend)
    topic, queue = names.topic(), names.queue()
    factory.init_topic(topic)
    factory.init_queue(queue)
    new_topic, new_queue = names.topic("new"), names.queue("new")
    before = len(service_bus.management.requests)
    with pytest.raises(InvalidTopology, match=rf"(?i)'{topic.upper()}'.*topic.*one namespace"):
        factory.init_queue(topic.upper())
    with pytest.raises(InvalidTopology, match=rf"(?i)'{queue.upper()}'.*queue.*one namespace"):
        factory.init_topic(queue.upper())
    with pytest.raises(InvalidTopology, match=f"'{topic}'.*topic"):
        factory.init_queue(new_queue, [new_topic], dead_letter_queue_name=topic)
    with pytest.raises(InvalidTopology, match=f"'{queue}'.*queue"):
        factory.init_queue(new_queue, [queue])
    assert _writes(service_bus, before) == []
    assert backend.get_topic(new_topic) is None and backend.get_queue(new_queue) is None
    assert admin.get_topic(topic).name == topic and admin.get_queue(queue).name == queue


def test_data_calls_on_a_name_of_the_other_kind_are_not_found(
    backend: AzureServiceBusBackend,
    admin: ServiceBusAdministrationClient,
    names: ResourceNames,
    service_bus: ServiceBusStandIn,
) -> None:
    from melange.backends.base import OutgoingMessage
    from melange.exceptions import TopicNotFound

    factory = MessagingBackendFactory(backend)
    topic, queue = names.topic(), names.queue()
    factory.init_topic(topic)
    factory.init_queue(queue)
    message = OutgoingMessage(b"x")
    with pytest.raises(QueueNotFound, match="is a topic"):
        backend.publish(topic, [message])
    with pytest.raises(QueueNotFound, match="is a topic"):
        backend.receive(topic, 1, 0)
    with pytest.raises(TopicNotFound, match="is a queue"):
        backend.publish_to_topic(queue, [message])
    before = len(service_bus.management.requests)
    with pytest.raises(QueueNotFound, match="is a topic"):
        backend.delete_queue(topic)
    with pytest.raises(TopicNotFound, match="is a queue"):
        backend.delete_topic(queue)
    assert _writes(service_bus, before) == []
    assert admin.get_topic(topic).name == topic and admin.get_queue(queue).name == queue
