from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from melange.backends.base import OutgoingMessage, PublishResult, ReceivedMessage
from melange.backends.memory import MemoryBackend
from melange.clock import ManualClock
from melange.exceptions import (
    BrokerError,
    InvalidArgument,
    InvalidMessage,
    MessageTooLarge,
    QueueNotFound,
    SerializationError,
    TopicNotFound,
    UnsupportedCapability,
)
from melange.factory import MessagingBackendFactory
from melange.message import MANIFEST_ATTRIBUTE, SERIALIZER_ATTRIBUTE, Message
from melange.observability import Hooks
from melange.publishers import QueuePublisher, TopicPublisher
from melange.serializers import SerializerRegistry
from melange.tracing import OpenTelemetryHooks

QUEUE = "orders"


@dataclass(frozen=True)
class OrderPlaced:
    order_id: str
    cents: int


class Recording(Hooks):
    """Records what a publisher tells its hooks; optionally adds attributes."""

    def __init__(self, add: dict[str, object] | None = None) -> None:
        self.add = add or {}
        self.seen_before_encoding: list[dict[str, str]] = []
        self.published: list[tuple[str, list[OutgoingMessage], list[PublishResult]]] = []

    def prepare_attributes(self, attributes: MutableMapping[str, str]) -> None:
        self.seen_before_encoding.append(dict(attributes))
        attributes.update(self.add)  # type: ignore[arg-type]  # bad values on purpose

    def on_publish(
        self,
        destination: str,
        messages: Sequence[OutgoingMessage],
        results: Sequence[PublishResult],
    ) -> None:
        self.published.append((destination, list(messages), list(results)))


class Exploding(Hooks):
    def prepare_attributes(self, attributes: MutableMapping[str, str]) -> None:
        attributes["half"] = "written"
        raise RuntimeError("hook bug")

    def on_publish(self, *args: object) -> None:
        raise RuntimeError("hook bug")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def backend(clock: ManualClock) -> Iterator[MemoryBackend]:
    with MemoryBackend(clock=clock, max_message_size=1024) as backend:
        factory = MessagingBackendFactory(backend)
        factory.init_queue(QUEUE)
        factory.init_queue("orders.fifo")
        factory.init_queue("paid-orders", ["order-events"], subscription_filter={"event": ["paid"]})
        factory.init_queue("all-orders", ["order-events"])
        yield backend


@pytest.fixture
def registry() -> SerializerRegistry:
    registry = SerializerRegistry()
    registry.bind(OrderPlaced, "order.v1")
    return registry


@pytest.fixture
def hooks() -> Recording:
    return Recording()


@pytest.fixture
def publisher(
    backend: MemoryBackend, registry: SerializerRegistry, hooks: Recording
) -> QueuePublisher:
    return QueuePublisher(backend, registry, hooks=hooks)


def receive_all(backend: MemoryBackend, queue: str = QUEUE) -> list[ReceivedMessage]:
    return backend.receive(queue, max_messages=100)


def depth(backend: MemoryBackend, queue: str = QUEUE) -> int:
    d = backend.queue_depth(queue)
    return d.visible + d.in_flight + d.delayed


# ------------------------------------------------------------------- publish
def test_payload_round_trips_through_the_registry(
    publisher: QueuePublisher, backend: MemoryBackend, registry: SerializerRegistry
) -> None:
    result = publisher.publish(QUEUE, OrderPlaced("o-1", 250), attributes={"region": "eu"})

    assert result.ok and result.index == 0
    [received] = receive_all(backend)
    assert received.message_id == result.message_id
    assert received.attributes[MANIFEST_ATTRIBUTE] == "order.v1"
    message = registry.decode(received)
    assert message.body == OrderPlaced("o-1", 250)
    assert dict(message.attributes) == {"region": "eu"}


def test_a_message_keeps_its_metadata_and_keywords_override_it(
    publisher: QueuePublisher, backend: MemoryBackend
) -> None:
    message = Message(
        {"raw": True},
        manifest="custom.v2",
        attributes={"region": "eu", "tier": "gold"},
        group_id="g-1",
        dedup_id="d-1",
    )
    publisher.publish("orders.fifo", message)
    publisher.publish(
        "orders.fifo", message, attributes={"tier": "silver"}, group_id="g-2", dedup_id="d-2"
    )

    first, second = receive_all(backend, "orders.fifo")
    assert first.attributes["melange.id"] != second.attributes["melange.id"]  # one id each
    assert {k: v for k, v in first.attributes.items() if k != "melange.id"} == {
        "region": "eu",
        "tier": "gold",
        MANIFEST_ATTRIBUTE: "custom.v2",
        SERIALIZER_ATTRIBUTE: "json",
    }
    assert first.group_id == "g-1"
    assert second.attributes["tier"] == "silver" and second.attributes["region"] == "eu"
    assert second.group_id == "g-2"


def test_dedup_id_is_honoured(publisher: QueuePublisher, backend: MemoryBackend) -> None:
    first = publisher.publish(QUEUE, "hello", dedup_id="same")
    again = publisher.publish(QUEUE, "hello again", dedup_id="same")

    assert again.message_id == first.message_id
    assert [m.body for m in receive_all(backend)] == [b'"hello"']


def test_delay_holds_the_message_back(
    publisher: QueuePublisher, backend: MemoryBackend, clock: ManualClock
) -> None:
    publisher.publish(QUEUE, "later", delay_seconds=30)

    assert receive_all(backend) == []
    clock.advance(30)
    assert [m.body for m in receive_all(backend)] == [b'"later"']


def test_default_registry_is_json(backend: MemoryBackend) -> None:
    publisher = QueuePublisher(backend, hooks=Hooks())
    publisher.publish(QUEUE, {"n": 1})

    [received] = receive_all(backend)
    assert received.body == b'{"n":1}'
    attributes = dict(received.attributes)
    assert attributes.pop("melange.id")  # a producer id, assigned before sending
    assert attributes == {SERIALIZER_ATTRIBUTE: "json"}


def test_single_publish_raises_a_broker_refusal() -> None:
    class Refusing(MemoryBackend):
        def _publish_batch(
            self, queue_name: str, batch: list[OutgoingMessage]
        ) -> list[PublishResult]:
            return [PublishResult(i, None, BrokerError("throttled")) for i in range(len(batch))]

    with Refusing() as refusing:
        MessagingBackendFactory(refusing).init_queue(QUEUE)
        with pytest.raises(BrokerError, match="throttled"):
            QueuePublisher(refusing, hooks=Hooks()).publish(QUEUE, "x")


# --------------------------------------------------------- errors, nothing sent
@pytest.mark.parametrize("batch", [False, True])
def test_too_large_is_refused_before_sending(
    publisher: QueuePublisher, backend: MemoryBackend, hooks: Recording, batch: bool
) -> None:
    big = "x" * 2000
    with pytest.raises(MessageTooLarge, match="1024-byte limit"):
        if batch:
            publisher.publish_batch(QUEUE, ["small", big, "small"])
        else:
            publisher.publish(QUEUE, big)
    assert depth(backend) == 0
    assert hooks.published == []


def test_unserializable_item_fails_the_whole_batch(
    publisher: QueuePublisher, backend: MemoryBackend
) -> None:
    with pytest.raises(SerializationError, match="object"):
        publisher.publish_batch(QUEUE, ["fine", object()])
    assert depth(backend) == 0


def test_missing_capability_surfaces_unchanged(backend: MemoryBackend) -> None:
    backend.capabilities = dataclasses.replace(backend.capabilities, fifo=False, delay=False)
    publisher = QueuePublisher(backend, hooks=Hooks())

    with pytest.raises(UnsupportedCapability) as group_error:
        publisher.publish(QUEUE, "x", group_id="g")
    assert group_error.value.capability == "fifo"
    with pytest.raises(UnsupportedCapability) as delay_error:
        publisher.publish(QUEUE, "x", delay_seconds=5)
    assert delay_error.value.capability == "delay"
    with pytest.raises(UnsupportedCapability):
        publisher.publish_batch(QUEUE, ["ok", Message("x", group_id="g")])
    assert depth(backend) == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"attributes": {MANIFEST_ATTRIBUTE: "x"}}, "set by melange"),
        ({"attributes": {"n": 1}}, "convert numbers with str"),
        ({"delay_seconds": -1}, "delay_seconds must be between"),
    ],
)
def test_invalid_message(
    publisher: QueuePublisher, backend: MemoryBackend, kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises(InvalidMessage, match=match):
        publisher.publish(QUEUE, "x", **kwargs)  # type: ignore[arg-type]
    assert depth(backend) == 0


@pytest.mark.parametrize("as_message", [False, True], ids=["payload", "message"])
@pytest.mark.parametrize(
    "kwargs",
    [
        {"attributes": ["event", "paid"]},
        {"attributes": "event=paid"},
        {"group_id": 5},
        {"group_id": b"g"},
        {"dedup_id": 5},
    ],
    ids=["attributes-list", "attributes-str", "group-int", "group-bytes", "dedup-int"],
)
def test_an_argument_of_the_wrong_type_is_named_and_nothing_is_sent(
    kwargs: dict[str, object], as_message: bool
) -> None:
    backend = MemoryBackend()
    MessagingBackendFactory(backend).init_queue("orders.fifo")
    publisher = QueuePublisher(backend, hooks=Hooks())
    (argument,) = kwargs
    with pytest.raises(InvalidArgument, match=f"^{argument} must be"):
        publisher.publish("orders.fifo", Message("x") if as_message else "x", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match=f"^{argument} must be"):
        publisher.publish_batch("orders.fifo", ["ok", Message("x", **kwargs)])  # type: ignore[arg-type]
    assert depth(backend, "orders.fifo") == 0


@pytest.mark.parametrize("items", ["abc", b"abc", Message("x"), {"a": 1}])
def test_batch_must_be_a_sequence_of_messages(publisher: QueuePublisher, items: object) -> None:
    with pytest.raises(InvalidMessage, match="use publish"):
        publisher.publish_batch(QUEUE, items)  # type: ignore[arg-type]


def test_missing_destinations(backend: MemoryBackend) -> None:
    with pytest.raises(QueueNotFound):
        QueuePublisher(backend, hooks=Hooks()).publish("nope", "x")
    with pytest.raises(TopicNotFound):
        TopicPublisher(backend, hooks=Hooks()).publish("nope", "x")


# --------------------------------------------------------------------- batch
def test_batch_returns_one_result_per_item_in_order(
    publisher: QueuePublisher, backend: MemoryBackend, registry: SerializerRegistry
) -> None:
    items: list[object] = [OrderPlaced(f"o-{i}", i) for i in range(1500)]  # memory chunks at 1000
    items[3] = Message(OrderPlaced("o-3", 3), attributes={"vip": "yes"})

    results = publisher.publish_batch(QUEUE, items)

    assert [r.index for r in results] == list(range(1500))
    assert all(r.ok for r in results)
    received = {m.message_id: m for m in backend.receive(QUEUE, max_messages=2000)}
    assert len(received) == 1500
    assert registry.decode(received[results[7].message_id]).body == OrderPlaced("o-7", 7)  # type: ignore[index]
    assert received[results[3].message_id].attributes["vip"] == "yes"  # type: ignore[index]


def test_batch_reports_per_message_refusals() -> None:
    class Picky(MemoryBackend):
        def _publish_batch(
            self, queue_name: str, batch: list[OutgoingMessage]
        ) -> list[PublishResult]:
            return [
                PublishResult(i, None, BrokerError("refused"))
                if m.body == b'"bad"'
                else PublishResult(i, f"id-{i}")
                for i, m in enumerate(batch)
            ]

    with Picky() as backend:
        MessagingBackendFactory(backend).init_queue(QUEUE)
        results = QueuePublisher(backend, hooks=Hooks()).publish_batch(QUEUE, ["a", "bad", "c"])
    assert [r.ok for r in results] == [True, False, True]
    assert isinstance(results[1].error, BrokerError)
    assert results[2].message_id == "id-2"


def test_empty_batch_sends_nothing(publisher: QueuePublisher, hooks: Recording) -> None:
    assert publisher.publish_batch(QUEUE, []) == []
    assert hooks.published == []


# --------------------------------------------------------------------- topic
def test_topic_publisher_fans_out_through_filters(
    backend: MemoryBackend, registry: SerializerRegistry
) -> None:
    publisher = TopicPublisher(backend, registry, hooks=Hooks())
    paid = publisher.publish("order-events", OrderPlaced("o-1", 1), attributes={"event": "paid"})
    results = publisher.publish_batch(
        "order-events",
        [Message(OrderPlaced("o-2", 2), attributes={"event": "placed"}), OrderPlaced("o-3", 3)],
    )

    assert paid.ok and [r.ok for r in results] == [True, True]
    assert [registry.decode(m).body.order_id for m in receive_all(backend, "paid-orders")] == [
        "o-1"
    ]
    assert len(receive_all(backend, "all-orders")) == 3


def test_topic_publisher_needs_topics(backend: MemoryBackend) -> None:
    backend.capabilities = dataclasses.replace(backend.capabilities, topics=False)
    with pytest.raises(UnsupportedCapability) as error:
        TopicPublisher(backend, hooks=Hooks()).publish("order-events", "x")
    assert error.value.capability == "topics"


# --------------------------------------------------------------------- hooks
def test_hooks_see_every_message_and_the_results(
    backend: MemoryBackend, registry: SerializerRegistry
) -> None:
    hooks = Recording(add={"traceparent": "00-abc-def-01", "region": "hook-value"})
    publisher = QueuePublisher(backend, registry, hooks=hooks)

    publisher.publish(QUEUE, "one", attributes={"region": "eu"})
    results = publisher.publish_batch(QUEUE, ["two", Message("three", attributes={"k": "v"})])

    # The hook saw the user's attributes, not the reserved ones added by encoding.
    assert hooks.seen_before_encoding == [{"region": "eu"}, {}, {"k": "v"}]
    one, two, three = receive_all(backend)
    assert one.attributes["region"] == "eu"  # the user's value wins over the hook's
    assert one.attributes["traceparent"] == "00-abc-def-01"
    assert two.attributes["region"] == "hook-value"  # nothing to protect: the hook's is kept
    assert three.attributes["k"] == "v" and three.attributes["traceparent"] == "00-abc-def-01"

    assert [(dest, len(msgs)) for dest, msgs, _ in hooks.published] == [(QUEUE, 1), (QUEUE, 2)]
    _, outgoing, reported = hooks.published[1]
    assert reported == results
    assert outgoing[1].attributes["k"] == "v"


def test_malformed_hook_attributes_are_dropped(
    backend: MemoryBackend, caplog: pytest.LogCaptureFixture
) -> None:
    hooks = Recording(add={MANIFEST_ATTRIBUTE: "forged", "count": 3, "good": "yes"})
    with caplog.at_level(logging.WARNING, logger="melange.publishers"):
        QueuePublisher(backend, hooks=hooks).publish(QUEUE, "x")

    [received] = receive_all(backend)
    attributes = dict(received.attributes)
    assert attributes.pop("melange.id")
    assert attributes == {"good": "yes", SERIALIZER_ATTRIBUTE: "json"}
    assert "'melange.manifest' ignored" in caplog.text
    assert "'count' ignored" in caplog.text


def test_hook_attributes_that_break_a_limit_are_dropped(
    backend: MemoryBackend, caplog: pytest.LogCaptureFixture
) -> None:
    backend.capabilities = dataclasses.replace(backend.capabilities, max_attributes=3)
    hooks = Recording(add={"traceparent": "t", "tracestate": "s"})
    publisher = QueuePublisher(backend, hooks=hooks, producer_ids=False)  # counts below

    publisher.publish(QUEUE, "x", attributes={"a": "1"})  # 1 + json + 2 from the hook = 4
    publisher.publish(QUEUE, "y")  # 1 json + 2 from the hook = 3: fits

    first, second = receive_all(backend)
    assert first.attributes == {"a": "1", SERIALIZER_ATTRIBUTE: "json"}
    assert second.attributes == {
        "traceparent": "t",
        "tracestate": "s",
        SERIALIZER_ATTRIBUTE: "json",
    }
    assert "traceparent, tracestate dropped" in caplog.text
    publisher.publish(QUEUE, "x2", attributes={"a": "1"})  # dropped again, without a new warning
    assert caplog.text.count("dropped") == 1
    assert "traceparent" not in receive_all(backend)[0].attributes
    # The user's own attributes are never dropped: too many of those is the user's error.
    with pytest.raises(InvalidMessage, match="at most 3"):
        publisher.publish(QUEUE, "z", attributes={"a": "1", "b": "2", "c": "3"})


def test_a_failing_hook_never_fails_a_publish(
    backend: MemoryBackend, caplog: pytest.LogCaptureFixture
) -> None:
    publisher = QueuePublisher(backend, hooks=Exploding())
    with caplog.at_level(logging.ERROR, logger="melange.observability"):
        assert publisher.publish(QUEUE, "x").ok

    assert len(receive_all(backend)) == 1
    assert "Exploding.prepare_attributes failed" in caplog.text
    assert "Exploding.on_publish failed" in caplog.text


def test_default_hooks_trace_when_opentelemetry_is_installed(backend: MemoryBackend) -> None:
    publisher = TopicPublisher(backend)
    assert isinstance(publisher.hooks, OpenTelemetryHooks)


def test_the_publishing_guide_example_runs() -> None:
    guide = Path(__file__).resolve().parents[1] / "docs" / "publishing.md"
    example = re.findall(r"```python\n(.*?)```", guide.read_text(), flags=re.DOTALL)[0]
    namespace: dict[str, Any] = {}
    exec(example, namespace)
    backend = namespace["backend"]
    received = backend.receive("payment-updates", max_messages=10)
    assert len(received) == 3  # the delayed fourth is not visible yet
    assert backend.queue_depth("payment-updates").delayed == 1
    assert received[2].attributes["event"] == "refund"
