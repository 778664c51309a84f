"""Service Bus name rules, checked before any call, and subscription names."""

from __future__ import annotations

import pytest
from melange_azure import AzureServiceBusBackend
from melange_azure.names import (
    SUBSCRIPTION_MAX_LENGTH,
    entity_from_address,
    same_entity,
    subscription_name,
)
from standin import ServiceBusStandIn

from melange.exceptions import InvalidName, InvalidTopology
from melange.factory import MessagingBackendFactory


@pytest.mark.parametrize(
    "name",
    [
        "a",
        "orders",
        "Orders.v2",
        "team/orders",
        "a_b-c.d/e",
        "x" * 260,
        "9lives",
    ],
)
def test_valid_queue_names(name: str) -> None:
    AzureServiceBusBackend.queue_name_rule.check("queue", name, False)
    AzureServiceBusBackend.topic_name_rule.check("topic", name, False)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty"),
        ("-orders", "starts with a hyphen"),
        ("orders-", "ends with a hyphen"),
        (".orders", "starts with a period"),
        ("orders/", "ends with a slash"),
        ("/orders", "starts with a slash"),
        ("team//orders", "empty segment"),
        ("a//b", "empty segment"),
        ("or ders", "space"),
        ("orders$", "dollar"),
        ("$DeadLetterQueue", "reserved"),
        ("ördrs", "non-ASCII letter"),
        ("x" * 261, "too long"),
    ],
)
def test_invalid_queue_names(name: str, reason: str) -> None:
    with pytest.raises(InvalidName) as caught:
        AzureServiceBusBackend.queue_name_rule.check("queue", name, False)
    if name:
        assert "260 characters" in str(caught.value), reason


def test_fifo_names_need_the_suffix() -> None:
    AzureServiceBusBackend.queue_name_rule.check("queue", "payments.fifo", True)
    with pytest.raises(InvalidName):
        AzureServiceBusBackend.queue_name_rule.check("queue", "payments", True)
    with pytest.raises(InvalidName):
        AzureServiceBusBackend.queue_name_rule.check("queue", "payments.fifo", False)


def test_subscription_name_is_the_queue_name_when_it_can_be() -> None:
    assert subscription_name("orders") == "orders"
    assert subscription_name("orders.fifo") == "orders.fifo"


@pytest.mark.parametrize("queue", ["team/orders", "q" * 51, "a" * 260, "x/" * 40 + "y"])
def test_subscription_name_of_other_queues_is_valid_stable_and_distinct(queue: str) -> None:
    name = subscription_name(queue)
    assert 1 <= len(name) <= SUBSCRIPTION_MAX_LENGTH
    assert "/" not in name
    assert name[0].isalnum() and name[-1].isalnum()
    assert subscription_name(queue) == name
    assert subscription_name(queue + "z") != name


def test_entity_names_compare_case_insensitively() -> None:
    assert same_entity("Orders", "orders")
    assert not same_entity("orders", "orders2")


@pytest.mark.parametrize(
    ("address", "entity"),
    [
        ("sb://ns.servicebus.windows.net/orders", "orders"),
        ("sb://127.0.0.1:5672/team/orders", "team/orders"),
        ("orders", "orders"),
        ("", None),
        (None, None),
    ],
)
def test_forward_to_addresses(address: str | None, entity: str | None) -> None:
    assert entity_from_address(address) == entity


def test_invalid_names_create_nothing(
    backend: AzureServiceBusBackend, service_bus: ServiceBusStandIn
) -> None:
    before = len(service_bus.management.requests)
    factory = MessagingBackendFactory(backend)
    with pytest.raises(InvalidTopology):
        factory.init_queue("bad name", ["topic-ok"])
    with pytest.raises(InvalidTopology):
        factory.init_queue("ok-queue", ["-bad-topic"])
    with pytest.raises(InvalidTopology):
        factory.init_queue("ok-queue", dead_letter_queue_name="bad/")
    with pytest.raises(InvalidName, match="empty segment"):
        factory.init_queue("a//b")
    with pytest.raises(InvalidName, match="empty segment"):
        factory.init_topic("a//b")
    assert service_bus.management.requests[before:] == []
