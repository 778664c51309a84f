"""Messages on the wire and filter expressions: Pub/Sub's limits, checked before sending."""

from __future__ import annotations

import pytest
from google.pubsub_v1 import types
from melange_gcp import filters, wire
from melange_gcp.backend import GCPPubSubBackend

from melange.backends.base import OutgoingMessage
from melange.exceptions import InvalidMessage, InvalidTopology, MessageTooLarge
from melange.topology import SubscriptionSpec


@pytest.mark.parametrize(
    ("attributes", "fragment"),
    [
        pytest.param({"k" * 257: "v"}, "256", id="key-too-long"),
        pytest.param({"k": "v" * 1025}, "1024", id="value-too-long"),
        pytest.param({"googlecloud": "v"}, "'goog'", id="reserved-goog-prefix"),
        pytest.param({"CloudPubSubDeadLetterX": "v"}, "dead-lettered", id="dead-letter-prefix"),
        pytest.param({wire.EMPTY_BODY: "1"}, "reserved", id="empty-body-marker"),
    ],
)
def test_attributes_pubsub_refuses_are_refused_before_sending(
    backend: GCPPubSubBackend, unique: str, attributes: dict[str, str], fragment: str
) -> None:
    # The queue does not exist: a call to Pub/Sub would raise QueueNotFound instead.
    with pytest.raises(InvalidMessage) as caught:
        backend.publish(f"{unique}-missing", [OutgoingMessage(b"x", attributes)])
    assert fragment in str(caught.value)


def test_attribute_limits_at_the_edge_are_accepted() -> None:
    message = OutgoingMessage(b"x", {"k" * 256: "v" * 1024})
    assert wire.check_message(message, message.size) >= message.size


def _added_to_a_request(message: OutgoingMessage) -> int:
    """What the message adds to a serialized PublishRequest, by protobuf's own count."""
    topic = "projects/p-1234/topics/orders"
    alone = wire.publish_request(topic, [])
    with_it = wire.publish_request(topic, [wire.to_pubsub(message)])
    return int(
        types.PublishRequest.pb(with_it).ByteSize() - types.PublishRequest.pb(alone).ByteSize()
    )


@pytest.mark.parametrize(
    "message",
    [
        OutgoingMessage(b""),
        OutgoingMessage(b"x"),
        OutgoingMessage(b"x" * 125),
        OutgoingMessage(b"x" * 126),
        OutgoingMessage(b"x" * 16_381),
        OutgoingMessage(b"x" * 16_382),
        OutgoingMessage(b"x" * wire.MAX_MESSAGE_SIZE),
        OutgoingMessage(b"", {"k": ""}),
        OutgoingMessage(b"body", {"k": "v", "name": "value"}),
        OutgoingMessage(b"", {f"{j:03d}".ljust(128, "k"): "v" * 128 for j in range(100)}),
        OutgoingMessage(b"x" * 300, {"k" * 256: "v" * 1024}),
        OutgoingMessage(b"", group_id="g"),
        OutgoingMessage(b"body", {"k": "v"}, group_id="g" * 1024),
    ],
    ids=lambda message: f"{len(message.body)}b-{len(message.attributes)}a-{message.group_id!r:.5}",
)
def test_the_size_counted_is_what_protobuf_serializes(
    backend: GCPPubSubBackend, message: OutgoingMessage
) -> None:
    """Exact, so that a batch split by it fits Pub/Sub's 10,000,000-byte request."""
    assert backend.validate_message(message) == _added_to_a_request(message)


def test_a_batch_of_many_attributes_is_split_into_requests_within_10_mb(
    backend: GCPPubSubBackend,
) -> None:
    """800 messages of 100 attributes of 128-byte names and values: ~27 MB in all."""
    batch = [
        OutgoingMessage(b"", {f"{i:04d}{j:03d}".ljust(128, "k"): "v" * 128 for j in range(100)})
        for i in range(800)
    ]
    sizes = [backend.validate_message(message) for message in batch]
    topic = f"projects/{backend.project}/topics/{'q' * 255}"
    for _, chunk in backend._chunks(batch, sizes):
        request = wire.publish_request(topic, [wire.to_pubsub(message) for message in chunk])
        assert types.PublishRequest.pb(request).ByteSize() <= wire.MAX_REQUEST_BYTES


def test_more_than_100_attributes_are_refused(backend: GCPPubSubBackend, unique: str) -> None:
    attributes = {f"a{index}": "v" for index in range(101)}
    with pytest.raises(InvalidMessage, match="at most 100"):
        backend.publish(f"{unique}-missing", [OutgoingMessage(b"x", attributes)])


def test_a_message_over_the_size_limit_is_refused_before_sending(
    backend: GCPPubSubBackend, unique: str
) -> None:
    with pytest.raises(MessageTooLarge) as caught:
        backend.publish(f"{unique}-missing", [OutgoingMessage(b"x" * (wire.MAX_MESSAGE_SIZE + 1))])
    assert caught.value.limit == wire.MAX_MESSAGE_SIZE


def test_ordering_key_limits() -> None:
    with pytest.raises(InvalidMessage, match="ordering keys"):
        wire.check_message(OutgoingMessage(b"x", group_id="g" * 1025), 1)
    with pytest.raises(InvalidMessage, match="ordering keys"):
        wire.check_message(OutgoingMessage(b"x", group_id=""), 1)


def test_a_group_id_towards_a_standard_queue_is_refused(
    backend: GCPPubSubBackend, unique: str
) -> None:
    with pytest.raises(InvalidTopology, match="FIFO"):
        backend.publish(f"{unique}-missing", [OutgoingMessage(b"x", group_id="g")])


def test_an_empty_body_travels_with_a_marker_that_is_removed_on_receipt() -> None:
    entry = wire.to_pubsub(OutgoingMessage(b""))
    assert dict(entry.attributes) == {wire.EMPTY_BODY: "1"}
    assert wire.from_pubsub(b"", entry.attributes) == (b"", {}, {wire.EMPTY_BODY: "1"})
    # With attributes no marker is needed; with a body the marker is not there to remove.
    assert dict(wire.to_pubsub(OutgoingMessage(b"", {"a": "b"})).attributes) == {"a": "b"}
    assert wire.from_pubsub(b"x", {"a": "b"}) == (b"x", {"a": "b"}, None)
    grouped = wire.to_pubsub(OutgoingMessage(b"", group_id="g"))
    assert (grouped.ordering_key, dict(grouped.attributes)) == ("g", {wire.EMPTY_BODY: "1"})


def test_dead_letter_attributes_are_removed_on_receipt_and_kept_for_a_forward() -> None:
    attributes = {"event": "e", "CloudPubSubDeadLetterSourceDeliveryCount": "5"}
    assert wire.from_pubsub(b"x", attributes) == (
        b"x",
        {"event": "e"},
        {"CloudPubSubDeadLetterSourceDeliveryCount": "5"},
    )


@pytest.mark.parametrize(
    ("value", "expression"),
    [
        ({"event": ["paid"]}, 'attributes.event = "paid"'),
        (
            {"event": ["paid", "refunded"], "region": ["eu"]},
            '(attributes.event = "paid" OR attributes.event = "refunded") AND '
            'attributes.region = "eu"',
        ),
        (
            {"trace-id": ['a "quoted" \\ value']},
            'attributes."trace-id" = "a \\"quoted\\" \\\\ value"',
        ),
    ],
)
def test_filters_round_trip_through_pubsub_expressions(
    value: dict[str, list[str]], expression: str
) -> None:
    normalized = SubscriptionSpec.normalize_filter(value)
    assert filters.to_expression(normalized) == expression
    assert filters.from_expression(expression) == normalized


def test_a_hand_written_filter_is_reported_as_something_no_declaration_equals() -> None:
    parsed = filters.from_expression('hasPrefix(attributes.event, "pa")')
    assert parsed is not None
    assert parsed != SubscriptionSpec.normalize_filter({"event": ["pa"]})
    assert filters.from_expression("") is None


def test_a_filter_over_256_bytes_is_refused() -> None:
    spec = SubscriptionSpec(
        "topic",
        "queue",
        SubscriptionSpec.normalize_filter({"event": [f"v{n:03}" for n in range(20)]}),
    )
    with pytest.raises(InvalidTopology, match="256"):
        filters.check(spec)
