"""The management stand-in, driven by the unmodified ``ServiceBusAdministrationClient``.

The client talks to the stand-in over a real socket: its transport only rewrites
``https://<namespace>/...`` to the stand-in's ``http://127.0.0.1:<port>/...``.
What is checked is what the service does (defaults, 404/409/400/401 answers,
immutable properties, forwarding checks, case-insensitive names) and what the
stand-in keeps in the shared :class:`Namespace` for the AMQP stand-in.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.core.pipeline.transport import RequestsTransport
from azure.servicebus._pyamqp.utils import generate_sas_token
from azure.servicebus.management import (
    CorrelationRuleFilter,
    ServiceBusAdministrationClient,
    SqlRuleFilter,
    TrueRuleFilter,
)
from standin.management import ManagementServer, canonical_duration
from standin.namespace import Namespace

KEY = "c3RhbmQtaW4ta2V5LWZvci10ZXN0cw=="
KEY_NAME = "RootManageSharedAccessKey"
FQDN = "127.0.0.1:5671"
CONNECTION_STRING = (
    f"Endpoint=sb://{FQDN};SharedAccessKeyName={KEY_NAME};SharedAccessKey={KEY};"
    "UseDevelopmentEmulator=true"
)
TIMESPAN_MAX = timedelta(days=10675199, hours=2, minutes=48, seconds=5.4775807)


class RewritingTransport(RequestsTransport):  # type: ignore[misc]
    """Sends the client's ``https://<namespace>/...`` requests to ``base_url`` instead."""

    def __init__(self, base_url: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base_url = base_url

    def send(self, request: Any, **kwargs: Any) -> Any:
        parts = urlsplit(request.url)
        request.url = f"{self.base_url}{parts.path}" + (f"?{parts.query}" if parts.query else "")
        return super().send(request, **kwargs)


@pytest.fixture
def namespace() -> Namespace:
    return Namespace()


@pytest.fixture
def server(namespace: Namespace) -> Iterator[ManagementServer]:
    with ManagementServer(namespace, key=KEY, key_name=KEY_NAME) as running:
        yield running


def admin(server: ManagementServer, connection_string: str = CONNECTION_STRING) -> Any:
    return ServiceBusAdministrationClient.from_connection_string(
        connection_string, transport=RewritingTransport(server.url), retry_total=0
    )


@pytest.fixture
def client(server: ManagementServer) -> Iterator[Any]:
    with admin(server) as running:
        yield running


def raw(
    server: ManagementServer, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """One plain HTTP request to the stand-in (no SDK in between)."""
    request = urllib.request.Request(server.url + path, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def sas(resource: str = f"https://{FQDN}", key: str = KEY, expiry: int | None = None) -> str:
    """A SAS token made by the SDK's own signer, so the stand-in's check is tested against it."""
    expires = expiry or int(time.time()) + 600
    return str(generate_sas_token(resource, KEY_NAME, key, expires))  # type: ignore[no-untyped-call]


# --- queues ---------------------------------------------------------------------------------


def test_a_new_queue_gets_the_service_defaults(client: Any) -> None:
    created = client.create_queue("orders")
    fetched = client.get_queue("orders")
    for queue in (created, fetched):
        assert queue.lock_duration == timedelta(minutes=1)
        assert queue.max_delivery_count == 10
        assert queue.default_message_time_to_live == TIMESPAN_MAX
        assert queue.duplicate_detection_history_time_window == timedelta(minutes=10)
        assert queue.requires_session is False
        assert queue.requires_duplicate_detection is False
        assert queue.enable_partitioning is False
        assert queue.dead_lettering_on_message_expiration is False
        assert queue.status == "Active"
        assert queue.forward_to is None
        assert queue.forward_dead_lettered_messages_to is None
    runtime = client.get_queue_runtime_properties("orders")
    assert runtime.total_message_count == 0
    assert runtime.created_at_utc is not None


def test_create_queue_keeps_every_setting_melange_uses(client: Any, namespace: Namespace) -> None:
    client.create_queue("orders-dlq")
    client.create_queue(
        "orders",
        max_delivery_count=3,
        lock_duration=timedelta(seconds=30),
        requires_session=True,
        requires_duplicate_detection=True,
        duplicate_detection_history_time_window=timedelta(minutes=2),
        forward_dead_lettered_messages_to="orders-dlq",
    )
    queue = client.get_queue("orders")
    assert queue.max_delivery_count == 3
    assert queue.lock_duration == timedelta(seconds=30)
    assert queue.requires_session is True
    assert queue.requires_duplicate_detection is True
    assert queue.duplicate_detection_history_time_window == timedelta(minutes=2)
    # The SDK sends the target as a full URL; the service stores and returns it so.
    assert queue.forward_dead_lettered_messages_to == f"sb://{FQDN}/orders-dlq"

    stored = namespace.queues["orders"]
    assert stored.max_delivery_count == 3
    assert stored.lock_duration == timedelta(seconds=30)
    assert stored.requires_session and stored.requires_duplicate_detection
    assert stored.duplicate_detection_window == timedelta(minutes=2)
    assert stored.forward_dead_lettered_messages_to == "orders-dlq"


def test_update_queue_sets_what_is_sent_and_resets_what_is_omitted(
    client: Any, namespace: Namespace
) -> None:
    client.create_queue("orders-dlq")
    client.create_queue("orders", forward_dead_lettered_messages_to="orders-dlq")
    created_at = client.get_queue_runtime_properties("orders").created_at_utc
    queue = client.get_queue("orders")
    queue.max_delivery_count = 7
    queue.forward_dead_lettered_messages_to = None
    client.update_queue(queue)

    updated = client.get_queue("orders")
    assert updated.max_delivery_count == 7
    assert updated.forward_dead_lettered_messages_to is None
    assert namespace.queues["orders"].forward_dead_lettered_messages_to is None
    assert client.get_queue_runtime_properties("orders").created_at_utc == created_at


@pytest.mark.parametrize(
    ("setting", "words"),
    [
        ("requires_session", "RequiresSession"),
        ("requires_duplicate_detection", "requires duplicate detection"),
        ("enable_partitioning", "EnablePartitioning"),
    ],
)
def test_a_property_fixed_at_creation_cannot_be_updated(
    client: Any, namespace: Namespace, setting: str, words: str
) -> None:
    client.create_queue("orders")
    queue = client.get_queue("orders")
    setattr(queue, setting, True)
    queue.max_delivery_count = 5

    with pytest.raises(HttpResponseError) as raised:
        client.update_queue(queue)

    assert raised.value.status_code == 400
    assert f"The value for the {words} property of an existing Queue cannot be changed" in str(
        raised.value
    )
    assert namespace.queues["orders"].max_delivery_count == 10  # nothing changed


def test_an_immutable_property_sent_unchanged_is_accepted(client: Any) -> None:
    client.create_queue("orders", requires_session=True)
    queue = client.get_queue("orders")
    queue.lock_duration = timedelta(seconds=45)
    client.update_queue(queue)
    assert client.get_queue("orders").lock_duration == timedelta(seconds=45)


def test_list_and_delete_queues(client: Any, namespace: Namespace) -> None:
    for name in ("b-queue", "a-queue", "c-queue"):
        client.create_queue(name)
    assert [q.name for q in client.list_queues()] == ["a-queue", "b-queue", "c-queue"]

    client.delete_queue("b-queue")

    assert [q.name for q in client.list_queues()] == ["a-queue", "c-queue"]
    assert sorted(namespace.queues) == ["a-queue", "c-queue"]


def test_lists_are_paged_with_skip_and_top(client: Any, server: ManagementServer) -> None:
    names = [f"queue-{i}" for i in range(5)]
    for name in names:
        client.create_queue(name)
    server.requests.clear()

    assert [q.name for q in client.list_queues(max_page_size=2)] == names
    assert server.requests == [("GET", "/$Resources/queues")] * 3


def test_durations_are_written_back_the_way_dotnet_writes_them(client: Any) -> None:
    client.create_queue("orders", lock_duration="PT60S", auto_delete_on_idle="P1DT24H")
    queue = client.get_queue("orders")
    assert queue.lock_duration == timedelta(minutes=1)
    assert canonical_duration("PT60S") == "PT1M"
    assert canonical_duration("P1DT24H") == "P2D"
    assert canonical_duration("PT0.5S") == "PT0.5S"
    assert canonical_duration("P10675199DT2H48M5.4775807S") == "P10675199DT2H48M5.4775807S"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"lock_duration": timedelta(minutes=6)}, "LockDuration must be between PT5S and PT5M"),
        ({"max_delivery_count": 0}, "MaxDeliveryCount must be at least 1"),
        (
            {"duplicate_detection_history_time_window": timedelta(seconds=5)},
            "DuplicateDetectionHistoryTimeWindow must be between PT20S and P7D",
        ),
    ],
)
def test_out_of_range_settings_are_refused(
    client: Any, namespace: Namespace, settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(HttpResponseError) as raised:
        client.create_queue("orders", **settings)
    assert raised.value.status_code == 400
    assert message in str(raised.value)
    assert namespace.queues == {}


# --- missing, existing, names --------------------------------------------------------------


def make_topology(client: Any) -> None:
    client.create_queue("orders")
    client.create_topic("events")
    client.create_subscription("events", "audit")


@pytest.mark.parametrize(
    "read",
    [
        lambda c: c.get_queue("nope"),
        lambda c: c.get_topic("nope"),
        lambda c: c.get_subscription("events", "nope"),
        lambda c: c.get_subscription("nope", "audit"),
        lambda c: c.get_rule("events", "audit", "nope"),
        lambda c: c.delete_queue("nope"),
        lambda c: c.delete_topic("nope"),
        lambda c: c.delete_subscription("events", "nope"),
        lambda c: c.delete_rule("events", "audit", "nope"),
        lambda c: c.create_subscription("nope", "audit"),
        lambda c: c.create_rule("events", "nope", "rule"),
    ],
    ids=[
        "get_queue",
        "get_topic",
        "get_subscription",
        "get_subscription_of_missing_topic",
        "get_rule",
        "delete_queue",
        "delete_topic",
        "delete_subscription",
        "delete_rule",
        "create_subscription_on_missing_topic",
        "create_rule_on_missing_subscription",
    ],
)
def test_a_missing_entity_is_not_found(client: Any, read: Any) -> None:
    make_topology(client)
    with pytest.raises(ResourceNotFoundError):
        read(client)


def test_a_missing_queue_is_an_empty_feed_like_on_the_service(server: ManagementServer) -> None:
    status, body = raw(server, "GET", "/nope", {"Authorization": sas()})
    assert status == 200
    feed = ET.fromstring(body)
    assert feed.tag == "{http://www.w3.org/2005/Atom}feed"
    assert feed.find("{http://www.w3.org/2005/Atom}entry") is None


def test_updating_a_missing_queue_is_not_found(client: Any) -> None:
    client.create_queue("orders")
    queue = client.get_queue("orders")
    client.delete_queue("orders")
    with pytest.raises(ResourceNotFoundError):
        client.update_queue(queue)


@pytest.mark.parametrize(
    "create",
    [
        lambda c: c.create_queue("orders"),
        lambda c: c.create_queue("events"),  # queues and topics share one name space
        lambda c: c.create_topic("events"),
        lambda c: c.create_topic("orders"),
        lambda c: c.create_subscription("events", "audit"),
        lambda c: c.create_rule("events", "audit", "$Default"),
    ],
    ids=["queue", "queue_named_like_a_topic", "topic", "topic_named_like_a_queue", "sub", "rule"],
)
def test_creating_an_existing_entity_is_a_conflict(client: Any, create: Any) -> None:
    make_topology(client)
    with pytest.raises(ResourceExistsError):
        create(client)


def test_names_are_case_insensitive_and_keep_their_casing(
    client: Any, namespace: Namespace
) -> None:
    client.create_queue("Orders")
    client.create_topic("Events")
    client.create_subscription("EVENTS", "Audit")

    assert client.get_queue("ORDERS").max_delivery_count == 10
    assert client.get_subscription("events", "AUDIT").lock_duration == timedelta(minutes=1)
    with pytest.raises(ResourceExistsError):
        client.create_queue("orders")
    assert [q.name for q in client.list_queues()] == ["Orders"]
    assert [s.name for s in client.list_subscriptions("events")] == ["Audit"]
    assert list(namespace.queues) == ["Orders"]

    client.delete_queue("oRdErS")
    assert namespace.queues == {}


@pytest.mark.parametrize("name", ["has space", "star*", "a" * 261, "percent%"])
def test_a_name_the_service_refuses_is_a_bad_request(
    client: Any, namespace: Namespace, name: str
) -> None:
    with pytest.raises(HttpResponseError) as raised:
        client.create_queue(name)
    assert raised.value.status_code == 400
    assert namespace.queues == {}


# --- topics and subscriptions --------------------------------------------------------------


def test_topic_create_get_update_list_delete(client: Any, namespace: Namespace) -> None:
    created = client.create_topic("events", default_message_time_to_live=timedelta(hours=1))
    assert created.default_message_time_to_live == timedelta(hours=1)
    assert created.requires_duplicate_detection is False

    topic = client.get_topic("events")
    topic.default_message_time_to_live = timedelta(hours=2)
    client.update_topic(topic)
    assert client.get_topic("events").default_message_time_to_live == timedelta(hours=2)

    topic.requires_duplicate_detection = True
    with pytest.raises(HttpResponseError) as raised:
        client.update_topic(topic)
    assert "requires duplicate detection property of an existing Topic" in str(raised.value)

    assert [t.name for t in client.list_topics()] == ["events"]
    client.create_subscription("events", "audit")
    assert client.get_topic_runtime_properties("events").subscription_count == 1
    client.delete_topic("events")
    assert namespace.topics == {}
    with pytest.raises(ResourceNotFoundError):
        client.get_subscription("events", "audit")


def test_a_new_subscription_forwards_as_sent_and_gets_the_default_rule(
    client: Any, namespace: Namespace
) -> None:
    client.create_queue("orders")
    client.create_topic("events")
    created = client.create_subscription(
        "events", "orders-sub", forward_to="orders", max_delivery_count=4
    )

    assert created.forward_to == f"sb://{FQDN}/orders"
    assert client.get_subscription("events", "orders-sub").max_delivery_count == 4
    rules = list(client.list_rules("events", "orders-sub"))
    assert [r.name for r in rules] == ["$Default"]
    assert isinstance(rules[0].filter, TrueRuleFilter)

    stored = namespace.topics["events"].subscriptions["orders-sub"]
    assert stored.forward_to == "orders"
    assert stored.rules["$Default"].sql_expression is None


def test_subscription_update_list_delete(client: Any, namespace: Namespace) -> None:
    client.create_queue("orders")
    client.create_topic("events")
    client.create_subscription("events", "b-sub", forward_to="orders")
    client.create_subscription("events", "a-sub", requires_session=True)

    subscription = client.get_subscription("events", "b-sub")
    subscription.lock_duration = timedelta(seconds=20)
    client.update_subscription("events", subscription)
    assert client.get_subscription("events", "b-sub").lock_duration == timedelta(seconds=20)

    sessionful = client.get_subscription("events", "a-sub")
    sessionful.requires_session = False
    with pytest.raises(HttpResponseError) as raised:
        client.update_subscription("events", sessionful)
    assert "RequiresSession property of an existing Subscription cannot be changed" in str(
        raised.value
    )

    assert [s.name for s in client.list_subscriptions("events")] == ["a-sub", "b-sub"]
    client.delete_subscription("events", "a-sub")
    assert list(namespace.topics["events"].subscriptions) == ["b-sub"]


@pytest.mark.parametrize(
    ("create", "message"),
    [
        (
            lambda c: c.create_queue("orders", forward_dead_lettered_messages_to="nope"),
            "The auto forwarding destination entity 'nope' does not exist",
        ),
        (
            lambda c: c.create_queue("orders", forward_to="nope"),
            "The auto forwarding destination entity 'nope' does not exist",
        ),
        (
            lambda c: c.create_subscription("events", "sub", forward_to="nope"),
            "The auto forwarding destination entity 'nope' does not exist",
        ),
        (
            lambda c: c.create_queue("orders", forward_dead_lettered_messages_to="ORDERS"),
            "cannot be the queue itself",
        ),
    ],
    ids=["queue_dlq_to_missing", "queue_to_missing", "subscription_to_missing", "queue_to_itself"],
)
def test_forwarding_to_a_missing_entity_or_to_itself_is_refused(
    client: Any, namespace: Namespace, create: Any, message: str
) -> None:
    client.create_topic("events")
    with pytest.raises(HttpResponseError) as raised:
        create(client)
    assert raised.value.status_code == 400
    assert message in str(raised.value)
    assert namespace.queues == {}
    assert namespace.topics["events"].subscriptions == {}


def test_an_update_that_forwards_to_a_missing_entity_changes_nothing(
    client: Any, namespace: Namespace
) -> None:
    client.create_queue("orders")
    queue = client.get_queue("orders")
    queue.max_delivery_count = 2
    queue.forward_dead_lettered_messages_to = "nope"
    with pytest.raises(HttpResponseError):
        client.update_queue(queue)
    assert namespace.queues["orders"].max_delivery_count == 10
    assert namespace.queues["orders"].forward_dead_lettered_messages_to is None


# --- rules ----------------------------------------------------------------------------------


def test_rules_create_get_update_list_delete(client: Any, namespace: Namespace) -> None:
    client.create_topic("events")
    client.create_subscription("events", "audit")
    expression = "user.[kind] IN ('created', 'it''s') AND user.[region] IN ('eu')"

    created = client.create_rule("events", "audit", "by-kind", filter=SqlRuleFilter(expression))
    client.create_rule("events", "audit", "everything", filter=TrueRuleFilter())
    client.delete_rule("events", "audit", "$Default")

    assert created.filter.sql_expression == expression
    assert client.get_rule("events", "audit", "by-kind").filter.sql_expression == expression
    assert [r.name for r in client.list_rules("events", "audit")] == ["by-kind", "everything"]
    rules = namespace.topics["events"].subscriptions["audit"].rules
    assert rules["by-kind"].sql_expression == expression
    assert rules["everything"].sql_expression is None

    rule = client.get_rule("events", "audit", "by-kind")
    rule.filter = SqlRuleFilter("user.[kind] IN ('deleted')")
    client.update_rule("events", "audit", rule)
    assert rules["by-kind"].sql_expression == "user.[kind] IN ('deleted')"


@pytest.mark.parametrize(
    "rule_filter",
    [SqlRuleFilter("kind = 'created'"), CorrelationRuleFilter(correlation_id="x")],
    ids=["sql_outside_the_subset", "correlation_filter"],
)
def test_a_rule_the_stand_in_cannot_evaluate_is_refused(
    client: Any, namespace: Namespace, rule_filter: Any
) -> None:
    client.create_topic("events")
    client.create_subscription("events", "audit")
    with pytest.raises(HttpResponseError) as raised:
        client.create_rule("events", "audit", "rule", filter=rule_filter)
    assert raised.value.status_code == 400
    assert "stand-in" in str(raised.value)
    assert list(namespace.topics["events"].subscriptions["audit"].rules) == ["$Default"]


# --- authorization ------------------------------------------------------------------------------


def test_a_request_without_a_token_is_unauthorized(server: ManagementServer) -> None:
    status, body = raw(server, "GET", "/$Resources/queues")
    assert status == 401
    assert b"MissingToken" in body
    assert server.requests == [("GET", "/$Resources/queues")]


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (lambda: "Bearer abc", b"InvalidSignature"),
        (lambda: "SharedAccessSignature sr=x&sig=y", b"InvalidSignature"),
        (lambda: sas(expiry=int(time.time()) - 10), b"ExpiredToken"),
        (lambda: sas(key="d3Jvbmc="), b"InvalidSignature"),
        (lambda: sas().replace(KEY_NAME, "OtherPolicy"), b"unknown policy"),
    ],
    ids=["not_sas", "missing_fields", "expired", "wrong_key", "wrong_policy"],
)
def test_a_bad_token_is_unauthorized(
    server: ManagementServer, header: Callable[[], str], reason: bytes
) -> None:
    status, body = raw(server, "GET", "/$Resources/queues", {"Authorization": header()})
    assert status == 401
    assert reason in body


def test_a_forwarding_token_signed_with_another_key_is_unauthorized(
    client: Any, server: ManagementServer, namespace: Namespace
) -> None:
    client.create_queue("orders-dlq")
    body = (
        '<entry xmlns="http://www.w3.org/2005/Atom"><content type="application/xml">'
        '<QueueDescription xmlns="http://schemas.microsoft.com/netservices/2010/10/servicebus/'
        f'connect"><ForwardDeadLetteredMessagesTo>sb://{FQDN}/orders-dlq'
        "</ForwardDeadLetteredMessagesTo></QueueDescription></content></entry>"
    )
    supplementary = sas(f"sb://{FQDN}/orders-dlq", key="b3RoZXI=")
    request = urllib.request.Request(
        f"{server.url}/orders",
        data=body.encode(),
        method="PUT",
        headers={"Authorization": sas(), "ServiceBusDlqSupplementaryAuthorization": supplementary},
    )
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=5)
    assert raised.value.code == 401
    assert "orders" not in namespace.queues


def test_the_sdk_with_a_wrong_key_gets_client_authentication_error(
    server: ManagementServer, namespace: Namespace
) -> None:
    wrong = CONNECTION_STRING.replace(KEY, "d3Jvbmcta2V5")
    with admin(server, wrong) as client, pytest.raises(ClientAuthenticationError):
        client.create_queue("orders")
    assert namespace.queues == {}


def test_without_a_key_only_the_token_shape_is_checked(namespace: Namespace) -> None:
    with ManagementServer(namespace) as server, admin(server, CONNECTION_STRING) as client:
        client.create_queue("orders")
        assert raw(server, "GET", "/orders", {"Authorization": sas(key="b3RoZXI=")})[0] == 200
        assert raw(server, "GET", "/orders")[0] == 401


# --- wire format and bookkeeping ----------------------------------------------------------------


def test_the_description_elements_come_in_the_service_order(
    client: Any, server: ManagementServer
) -> None:
    client.create_queue("orders")
    status, body = raw(server, "GET", "/orders", {"Authorization": sas()})
    assert status == 200
    description = ET.fromstring(body).find(
        "{http://www.w3.org/2005/Atom}content/"
        "{http://schemas.microsoft.com/netservices/2010/10/servicebus/connect}QueueDescription"
    )
    assert description is not None
    names = [child.tag.rpartition("}")[2] for child in description]
    assert names[:4] == [
        "LockDuration",
        "MaxSizeInMegabytes",
        "RequiresDuplicateDetection",
        "RequiresSession",
    ]
    assert (
        names.index("MaxDeliveryCount")
        < names.index("CreatedAt")
        < names.index("EnablePartitioning")
    )


def test_requests_records_method_and_path(client: Any, server: ManagementServer) -> None:
    client.create_topic("events")
    client.create_subscription("events", "audit")
    server.requests.clear()

    client.get_topic("events")
    client.get_subscription("events", "audit")
    list(client.list_rules("events", "audit"))
    client.delete_rule("events", "audit", "$Default")

    assert server.requests == [
        ("GET", "/events"),
        ("GET", "/events/subscriptions/audit"),
        ("GET", "/events/subscriptions/audit/rules"),
        ("DELETE", "/events/subscriptions/audit/rules/$Default"),
    ]


def test_namespace_properties(client: Any) -> None:
    properties = client.get_namespace_properties()
    assert properties.messaging_sku == "Standard"
    assert properties.namespace_type == "Messaging"
