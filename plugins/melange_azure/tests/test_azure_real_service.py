"""Behaviours of the real Service Bus that the stand-in learned, and how the backend copes.

Each test runs on its own stand-in, since it turns on a behaviour for the whole
namespace: a small topic quota (orphaned forwarding subscriptions fill it), 409
"conflicting operation in progress" for a while after a delete, a broker clock
that differs from the host's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError
from azure.servicebus.management import ServiceBusAdministrationClient
from melange_azure import AzureServiceBusBackend
from melange_azure.clients import RedirectingTransport
from melange_azure.conflicts import retry_conflicts
from standin import ServiceBusStandIn
from standin.amqp_filters import matches

from melange.backends.base import OutgoingMessage
from melange.exceptions import BackendUnavailable, BrokerError, InvalidTopology
from melange.factory import MessagingBackendFactory

BODY = b"x" * 4096


@pytest.fixture
def bus() -> Iterator[ServiceBusStandIn]:
    """A stand-in of its own, whose namespace-wide behaviours a test may change."""
    with ServiceBusStandIn() as stand_in:
        yield stand_in
    assert stand_in.amqp.errors == [], stand_in.amqp.errors


@pytest.fixture
def azure(bus: ServiceBusStandIn) -> Iterator[AzureServiceBusBackend]:
    backend = AzureServiceBusBackend(
        connection_string=bus.connection_string, management_url=bus.management_url
    )
    yield backend
    backend.close()


@pytest.fixture
def admin(bus: ServiceBusStandIn) -> Iterator[ServiceBusAdministrationClient]:
    client = ServiceBusAdministrationClient.from_connection_string(
        bus.connection_string, transport=RedirectingTransport(bus.management_url)
    )
    yield client
    client.close()


def _publish_to_topic(backend: AzureServiceBusBackend, topic: str, count: int) -> list[str]:
    """Publish ``count`` messages one by one (a batch is refused or accepted whole)."""
    statuses = []
    for _ in range(count):
        try:
            statuses.append(backend.publish_to_topic(topic, [OutgoingMessage(BODY)])[0].status)
        except BrokerError as error:
            assert "maximum entity size" in str(error), error
            assert "forwarding to a queue deleted outside melange" in str(error), error
            statuses.append("refused")
    return statuses


# --- orphaned forwarding subscriptions ---------------------------------------------------------


def test_standin_an_orphaned_forwarding_subscription_fills_the_topic_quota(
    bus: ServiceBusStandIn, azure: AzureServiceBusBackend, admin: ServiceBusAdministrationClient
) -> None:
    bus.namespace.megabyte = 64  # the topic's 1024 "MB" are 64 KiB: 16 messages of 4 KiB
    admin.create_topic("events")
    admin.create_queue("orders")
    admin.create_subscription("events", "orders", forward_to="orders")
    admin.delete_queue("orders")  # by hand: the subscription stays, forwarding nowhere
    statuses = _publish_to_topic(azure, "events", 20)
    assert statuses[:15] == ["accepted"] * 15
    assert statuses[-1] == "refused"
    admin.delete_subscription("events", "orders")  # the messages go with it: room again
    assert _publish_to_topic(azure, "events", 1) == ["accepted"]


def test_deleting_a_queue_deletes_the_subscriptions_that_forward_to_it(
    bus: ServiceBusStandIn, azure: AzureServiceBusBackend, admin: ServiceBusAdministrationClient
) -> None:
    bus.namespace.megabyte = 64
    factory = MessagingBackendFactory(azure)
    factory.init_queue("orders", ["events", "audit"])
    factory.init_queue("billing", ["events"])
    azure.delete_queue("orders")
    assert [s.name for s in admin.list_subscriptions("events")] == ["billing"]
    assert list(admin.list_subscriptions("audit")) == []
    # Nothing piles up in the topic: every publish is forwarded to billing and accepted.
    assert _publish_to_topic(azure, "events", 40) == ["accepted"] * 40


# --- 409 "conflicting operation in progress" ----------------------------------------------------


def test_standin_answers_409_conflicting_operation_for_a_while_after_a_delete(
    bus: ServiceBusStandIn, admin: ServiceBusAdministrationClient
) -> None:
    bus.namespace.conflict_after_delete = 0.5
    admin.create_queue("orders")
    admin.delete_queue("orders")
    with pytest.raises(HttpResponseError) as caught:
        admin.create_queue("orders")
    assert caught.value.status_code == 409
    assert "conflicting operation is in progress" in str(caught.value)
    time.sleep(0.6)
    admin.create_queue("orders")


def test_a_quick_delete_and_recreate_waits_for_the_conflicting_operation(
    bus: ServiceBusStandIn, azure: AzureServiceBusBackend, admin: ServiceBusAdministrationClient
) -> None:
    bus.namespace.conflict_after_delete = 0.5
    factory = MessagingBackendFactory(azure)
    declared = {"dead_letter_queue_name": "orders-dlq", "max_receive_count": 7}
    factory.init_queue("orders", ["events"], **declared)
    azure.delete_queue("orders")
    azure.delete_topic("events")
    started = time.monotonic()
    factory.init_queue("orders", ["events"], **declared)
    assert time.monotonic() - started >= 0.4  # it waited for the delete to finish
    assert admin.get_queue("orders").max_delivery_count == 7  # created as declared
    subscription = admin.get_subscription("events", "orders")
    assert str(subscription.forward_to).endswith("/orders")
    assert azure.publish_to_topic("events", [OutgoingMessage(b"hi")])[0].status == "accepted"
    assert [m.body for m in azure.receive("orders", max_messages=1, wait_seconds=5)] == [b"hi"]


def test_a_conflict_that_outlasts_the_budget_says_so_and_other_409s_pass_through(
    bus: ServiceBusStandIn, admin: ServiceBusAdministrationClient
) -> None:
    bus.namespace.conflict_after_delete = 60.0
    admin.create_queue("orders")
    admin.delete_queue("orders")
    waits: list[float] = []
    with pytest.raises(BackendUnavailable, match="conflicting operation in progress after 1 s"):
        retry_conflicts(
            lambda: admin.create_queue("orders"),
            "create queue 'orders'",
            budget=1.0,
            sleep=waits.append,
        )
    assert waits[:3] == [0.1, 0.2, 0.4]
    admin.create_queue("billing")
    with pytest.raises(ResourceExistsError):  # "already exists" is not retried
        retry_conflicts(lambda: admin.create_queue("billing"), "create", sleep=waits.append)


# --- locks and clocks ---------------------------------------------------------------------------


def test_a_delivery_is_not_dropped_when_the_broker_clock_is_behind(
    bus: ServiceBusStandIn, azure: AzureServiceBusBackend
) -> None:
    bus.namespace.clock_skew = -120.0  # every lock looks expired by the local clock
    MessagingBackendFactory(azure).init_queue("orders", visibility_timeout=30.0)
    azure.publish("orders", [OutgoingMessage(b"one")])
    received = azure.receive("orders", max_messages=1, wait_seconds=5)
    assert [m.body for m in received] == [b"one"]
    azure.extend_lease(received, 40.0)  # Service Bus still holds the lock: no LeaseLost
    azure.ack(received)
    assert azure.receive("orders", max_messages=1, wait_seconds=0.5) == []


def test_held_locks_are_renewed_early_enough_when_the_broker_clock_is_ahead(
    bus: ServiceBusStandIn, azure: AzureServiceBusBackend
) -> None:
    bus.namespace.clock_skew = 2.0  # locks look 2 s longer than they are
    MessagingBackendFactory(azure).init_queue("orders", visibility_timeout=5.0)
    azure.publish("orders", [OutgoingMessage(b"one")])
    received = azure.receive("orders", max_messages=1, wait_seconds=5)
    azure.extend_lease(received, 30.0)
    time.sleep(6.5)  # past the first lock: only a renewal before 5 s keeps it
    other = AzureServiceBusBackend(
        connection_string=bus.connection_string, management_url=bus.management_url
    )
    try:
        assert other.receive("orders", max_messages=1, wait_seconds=0.5) == []
    finally:
        other.close()
    azure.ack(received)


# --- SQL filters: property names are case-insensitive -------------------------------------------


def test_standin_reads_filter_property_names_case_insensitively() -> None:
    expression = "user.[color] IN ('red')"
    assert matches(expression, {"Color": "red"})
    assert matches(expression, {"COLOR": "red"})
    assert not matches(expression, {"Color": "blue"})
    assert not matches(expression, {"colour": "red"})


def test_a_filter_on_attributes_differing_only_in_case_is_refused(
    azure: AzureServiceBusBackend, admin: ServiceBusAdministrationClient
) -> None:
    factory = MessagingBackendFactory(azure)
    with pytest.raises(InvalidTopology, match="differ only in case"):
        factory.init_queue("orders", ["events"], subscription_filter={"kind": ["a"], "KIND": ["b"]})
    topics = [topic.name for topic in admin.list_topics()]
    assert "events" not in topics or list(admin.list_subscriptions("events")) == []


def test_a_filter_passes_an_attribute_of_another_case_as_service_bus_does(
    azure: AzureServiceBusBackend,
) -> None:
    MessagingBackendFactory(azure).init_queue(
        "orders", ["events"], subscription_filter={"color": ["red"]}
    )
    azure.publish_to_topic(
        "events",
        [OutgoingMessage(b"upper", {"Color": "red"}), OutgoingMessage(b"other", {"Color": "blue"})],
    )
    received = azure.receive("orders", max_messages=10, wait_seconds=2)
    assert [m.body for m in received] == [b"upper"]


# --- convergence beyond QueueSpec and SubscriptionSpec ------------------------------------------


def test_init_restores_status_and_forwarding_that_specs_cannot_show(
    azure: AzureServiceBusBackend, admin: ServiceBusAdministrationClient
) -> None:
    factory = MessagingBackendFactory(azure)
    factory.init_queue("orders", ["events"], dead_letter_queue_name="orders-dlq")
    queue = admin.get_queue("orders")
    queue.status = "ReceiveDisabled"
    admin.update_queue(queue)
    dead_letter = admin.get_queue("orders-dlq")
    dead_letter.forward_to = "orders"
    admin.update_queue(dead_letter)
    subscription = admin.get_subscription("events", "orders")
    subscription.status = "Disabled"
    admin.update_subscription("events", subscription)

    plan = factory.init_queue("orders", ["events"], dead_letter_queue_name="orders-dlq")
    changes = {str(change.setting) for action in plan for change in action.changes}
    assert changes == {"queue status", "dead-letter queue forward_to", "subscription status"}
    assert str(admin.get_queue("orders").status) in ("Active", "EntityStatus.ACTIVE")
    assert admin.get_queue("orders-dlq").forward_to is None
    assert str(admin.get_subscription("events", "orders").status) in (
        "Active",
        "EntityStatus.ACTIVE",
    )
    assert len(factory.init_queue("orders", ["events"], dead_letter_queue_name="orders-dlq")) == 0
