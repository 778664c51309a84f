"""melange messages to ServiceBusMessage and back, and the SQL filters of subscriptions."""

from __future__ import annotations

import datetime

import pytest
from azure.servicebus import ServiceBusReceivedMessage
from azure.servicebus._pyamqp.message import Header, Message, Properties
from melange_azure import filters
from melange_azure.wire import DEFAULT_GROUP_ID, from_service_bus, to_service_bus

from melange.backends.base import OutgoingMessage
from melange.topology import SubscriptionSpec


def test_outgoing_message_fields() -> None:
    message = OutgoingMessage(b"\x00body", {"k": "v"}, group_id="g", dedup_id="d-1")
    outgoing = to_service_bus(message, fifo=True)
    assert b"".join(outgoing.body) == b"\x00body"
    assert outgoing.application_properties == {"k": "v"}
    assert (outgoing.message_id, outgoing.session_id) == ("d-1", "g")
    assert outgoing.scheduled_enqueue_time_utc is None


def test_every_message_gets_its_own_id_and_fifo_messages_a_session() -> None:
    first = to_service_bus(OutgoingMessage(b"a"), fifo=True)
    second = to_service_bus(OutgoingMessage(b"a"), fifo=True)
    assert first.message_id != second.message_id
    assert first.session_id == DEFAULT_GROUP_ID
    assert to_service_bus(OutgoingMessage(b"a"), fifo=False).session_id is None


def test_delays_become_scheduled_enqueue_times() -> None:
    before = datetime.datetime.now(datetime.timezone.utc)
    own = to_service_bus(OutgoingMessage(b"a", delay_seconds=30), fifo=False, queue_delay=5)
    queue = to_service_bus(OutgoingMessage(b"a"), fifo=False, queue_delay=5)
    assert own.scheduled_enqueue_time_utc is not None
    assert queue.scheduled_enqueue_time_utc is not None
    assert 29 < (own.scheduled_enqueue_time_utc - before).total_seconds() < 31
    assert 4 < (queue.scheduled_enqueue_time_utc - before).total_seconds() < 6


def _received(
    body: bytes, properties: dict[bytes, bytes] | None, delivery_count: int, session: bytes | None
) -> ServiceBusReceivedMessage:
    raw = Message(
        header=Header(delivery_count=delivery_count),
        properties=Properties(message_id=b"m-1", group_id=session),
        application_properties=properties,
        data=[body],
    )
    return ServiceBusReceivedMessage(raw, receiver=None)


def test_received_messages_are_read_back() -> None:
    message = _received(b"\xffbin", {b"k": b"v", b"DeadLetterReason": b"x"}, 2, b"g")
    decoded = from_service_bus(message)
    assert decoded.body == b"\xffbin"
    assert decoded.attributes == {"k": "v"}  # Service Bus's dead-letter reason is not one
    assert decoded.receive_count == 3  # the header counts earlier deliveries
    assert decoded.group_id == "g"
    assert decoded.message_id == "m-1"


def test_the_default_group_reads_back_as_none() -> None:
    decoded = from_service_bus(_received(b"", None, 0, DEFAULT_GROUP_ID.encode()))
    assert (decoded.group_id, decoded.attributes, decoded.receive_count) == (None, {}, 1)


@pytest.mark.parametrize(
    "filter_",
    [
        {"kind": ["a"]},
        {"kind": ["it's", "b"], "region": ["eu", "us"]},
        {"x y": ["AND", "' OR 1=1 --"]},
    ],
)
def test_filters_round_trip_through_sql(filter_: dict[str, list[str]]) -> None:
    normalized = SubscriptionSpec.normalize_filter(filter_)
    assert normalized is not None
    assert filters.parse(filters.to_sql(normalized)) == normalized


def test_true_filters_and_foreign_sql() -> None:
    assert filters.parse(None) is None
    assert filters.parse("1=1") is None
    with pytest.raises(ValueError):
        filters.parse("sys.Label = 'x'")
    with pytest.raises(ValueError):
        filters.parse("user.[a] IN ('x') OR user.[b] IN ('y')")


def test_quotes_in_values_are_doubled() -> None:
    assert filters.to_sql((("k", ("it's",)),)) == "user.[k] IN ('it''s')"


def test_several_data_sections_read_as_one_body() -> None:
    raw = Message(header=Header(delivery_count=0), data=[b"two ", b"sections"])
    message = ServiceBusReceivedMessage(raw, receiver=None)
    assert from_service_bus(message).body == b"two sections"
