"""melange 7.x's call forms of publishers, dispatchers, consumers, the factory and BackendManager.

Each documented 7.x form either works, with a DeprecationWarning that names the
melange 8 form, or raises a MelangeError naming the replacement. Everything
runs on the real memory backend: a message published the 7.x way reaches a
consumer written the 7.x way, as its payload.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from melange.backends.memory import MemoryBackend
from melange.compat.backend_manager import BackendManager
from melange.compat.calls_dispatcher import LegacyDispatcherError, LegacyMessageDispatcher
from melange.consumers import Consumer, SingleDispatchConsumer, consumer
from melange.dispatcher import MessageDispatcher, RetryPolicy, SimpleMessageDispatcher
from melange.exceptions import (
    ConfigurationError,
    InvalidTopology,
    MelangeError,
    TopicNotFound,
)
from melange.factory import MessagingBackendFactory
from melange.message import Message
from melange.publishers import QueuePublisher, TopicPublisher
from melange.serializers import JSONSerializer, SerializerRegistry

QUEUE = "payment-updates"
TOPIC = "payments"


@dataclass(frozen=True)
class OrderResponse:
    id: str
    reference: str


@dataclass(frozen=True)
class DoPayment:
    order_id: str
    reference: str


@pytest.fixture
def backend() -> MemoryBackend:
    backend = MemoryBackend()
    MessagingBackendFactory(backend).init_queue(QUEUE)
    return backend


@pytest.fixture
def registry() -> SerializerRegistry:
    registry = SerializerRegistry()
    registry.bind(OrderResponse, "OrderResponse")
    registry.bind(DoPayment, "DoPayment")
    return registry


@pytest.fixture(autouse=True)
def no_default_backend() -> Iterator[None]:
    manager = BackendManager()
    manager._backend = None
    yield
    manager._backend = None


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def legacy(dispatcher: Any) -> LegacyMessageDispatcher:
    """The 7.x-form dispatcher, with short receives so that stop() is quick."""
    assert isinstance(dispatcher, LegacyMessageDispatcher)
    dispatcher.dispatcher_options["wait_seconds"] = 0.05
    return dispatcher


@contextlib.contextmanager
def looping(
    dispatcher: LegacyMessageDispatcher, queue: str = QUEUE, **kwargs: Any
) -> Iterator[None]:
    """Run 7.x's never-ending consume_loop in a thread; stop it on exit."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            dispatcher.consume_loop(queue, **kwargs)
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        thread.start()
        try:
            wait_for(lambda: errors or (dispatcher.dispatcher is not None and dispatcher.running))
            yield
        finally:
            dispatcher.stop(timeout=5)
            thread.join(5)
    assert not thread.is_alive()
    assert not errors, errors


def deprecations(record: pytest.WarningsRecorder) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, DeprecationWarning)]


# --------------------------------------------------------------- publishers
def test_queue_publisher_in_7x_order_reaches_a_7x_dispatcher_as_the_payload(
    backend: MemoryBackend, registry: SerializerRegistry
) -> None:
    with pytest.warns(DeprecationWarning) as record:
        publisher = QueuePublisher(registry, backend)
    (text,) = deprecations(record)
    assert "QueuePublisher(serializer_registry, backend)" in text
    assert "QueuePublisher(backend, serializers)" in text
    assert record[0].filename == __file__  # points at the application's line
    assert isinstance(publisher, QueuePublisher)
    assert publisher.backend is backend and publisher.serializers is registry

    got: list[Any] = []
    with pytest.warns(DeprecationWarning, match=r"MessageDispatcher\(backend, queue_name"):
        dispatcher = legacy(MessageDispatcher(registry, backend=backend))
    with pytest.warns(DeprecationWarning):
        on_message = Consumer(on_message=got.append)
    with pytest.warns(DeprecationWarning, match=r"\[consumer, \.\.\.\]"):
        dispatcher.attach_consumer(on_message)
    with looping(dispatcher):
        publisher.publish(QUEUE, OrderResponse("o-1", "REF-1"))
        wait_for(lambda: len(got) == 1)
    assert got == [OrderResponse("o-1", "REF-1")]
    assert backend.queue_depth(QUEUE).visible == 0


@pytest.mark.parametrize(
    "call",
    [
        lambda r, b: QueuePublisher(r, backend=b),
        lambda r, b: QueuePublisher(serializer_registry=r, backend=b),
        lambda r, b: TopicPublisher(r, b),
        lambda r, b: TopicPublisher(r, backend=b),
    ],
    ids=["queue-backend-keyword", "queue-all-keywords", "topic", "topic-backend-keyword"],
)
def test_publisher_7x_keyword_forms_warn_and_work(
    call: Callable[..., Any], backend: MemoryBackend, registry: SerializerRegistry
) -> None:
    with pytest.warns(DeprecationWarning, match=r"Publisher\(backend, serializers\)"):
        publisher = call(registry, backend)
    assert publisher.backend is backend and publisher.serializers is registry


def test_melange8_publisher_forms_do_not_warn(
    backend: MemoryBackend, registry: SerializerRegistry
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        publisher = QueuePublisher(backend, registry)
        TopicPublisher(backend)
    assert type(publisher) is QueuePublisher


def test_publisher_without_backend_uses_the_backend_manager_default(
    backend: MemoryBackend, registry: SerializerRegistry
) -> None:
    with pytest.warns(DeprecationWarning, match=r"BackendManager\(\)\.set_default_backend"):
        BackendManager().set_default_backend(backend)
    assert BackendManager() is BackendManager()
    with pytest.warns(DeprecationWarning) as record:
        publisher = QueuePublisher(registry)
    assert any(
        "QueuePublisher(serializer_registry) without a backend" in text
        and "QueuePublisher(backend)" in text
        for text in deprecations(record)
    )
    publisher.publish(QUEUE, {"n": 1})
    assert backend.queue_depth(QUEUE).visible == 1


def test_publisher_without_backend_and_no_default_raises(registry: SerializerRegistry) -> None:
    with pytest.raises(ConfigurationError, match=r"QueuePublisher\(backend\)"):
        QueuePublisher(registry)


def test_backend_manager_refuses_what_is_not_a_melange8_backend() -> None:
    with (
        pytest.warns(DeprecationWarning),
        pytest.raises(ConfigurationError, match="load_backend"),
    ):
        BackendManager().set_default_backend(object())  # type: ignore[arg-type]
    with (
        pytest.warns(DeprecationWarning),
        pytest.raises(ConfigurationError, match=r"set_default_backend\(backend\)"),
    ):
        BackendManager().get_default_backend()


def test_publisher_refuses_a_non_backend_at_creation(registry: SerializerRegistry) -> None:
    # Before: accepted, then AttributeError at publish.
    with pytest.raises(ConfigurationError, match=r"QueuePublisher\(backend, serializers\)"):
        QueuePublisher(object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="SerializerRegistry"):
        QueuePublisher(MemoryBackend(), {"serializers": {}})  # type: ignore[arg-type]


def test_publish_7x_keywords_map_to_group_and_dedup_ids(registry: SerializerRegistry) -> None:
    backend = MemoryBackend()
    MessagingBackendFactory(backend).init_queue("orders.fifo")
    with pytest.warns(DeprecationWarning):
        publisher = QueuePublisher(registry, backend)
    with pytest.warns(DeprecationWarning) as record:
        publisher.publish(
            "orders.fifo", {"n": 1}, message_group_id="g-1", message_deduplication_id="d-1"
        )
    texts = deprecations(record)
    assert any("message_group_id" in t and "group_id=" in t for t in texts)
    assert any("message_deduplication_id" in t and "dedup_id=" in t for t in texts)
    with pytest.warns(DeprecationWarning):  # the same dedup id: accepted, not delivered again
        publisher.publish(
            "orders.fifo", {"n": 1}, message_group_id="g-1", message_deduplication_id="d-1"
        )
    (received,) = backend.receive("orders.fifo", 10, 0)
    assert received.group_id == "g-1"
    assert registry.decode(received).body == {"n": 1}


def test_publish_7x_dedup_id_on_a_standard_queue_or_topic_is_ignored_as_7x_did(
    backend: MemoryBackend, registry: SerializerRegistry
) -> None:
    # 7.2.0 sent MessageDeduplicationId only to FIFO queues; on a standard one it was ignored.
    MessagingBackendFactory(backend).init_queue(QUEUE, [TOPIC])
    with pytest.warns(DeprecationWarning):
        queue_publisher = QueuePublisher(registry, backend)
        topic_publisher = TopicPublisher(registry, backend)
    with pytest.warns(DeprecationWarning, match="standard queue 'payment-updates'"):
        queue_publisher.publish(QUEUE, {"n": 1}, message_deduplication_id="d-1")
    with pytest.warns(DeprecationWarning, match="standard topic 'payments'"):
        topic_publisher.publish(TOPIC, {"n": 2}, message_deduplication_id="d-1")
    received = backend.receive(QUEUE, 10, 0)
    assert sorted(registry.decode(r).body["n"] for r in received) == [1, 2]


def test_publish_7x_keywords_that_have_no_equivalent_raise(
    backend: MemoryBackend, registry: SerializerRegistry
) -> None:
    MessagingBackendFactory(backend).init_topic(TOPIC)
    with pytest.warns(DeprecationWarning):
        publisher = TopicPublisher(registry, backend)
    with pytest.raises(ConfigurationError, match=r"subject.*attributes=\{'subject'"):
        publisher.publish(TOPIC, {"n": 1}, subject="hello")
    with pytest.raises(ConfigurationError, match=r"message_structure.*no equivalent"):
        publisher.publish(TOPIC, {"n": 1}, message_structure="json")
    with pytest.raises(ConfigurationError, match="did you mean 'group_id'"):
        publisher.publish(TOPIC, {"n": 1}, goup_id="g")
    with pytest.raises(ConfigurationError, match="only group_id"):
        publisher.publish(TOPIC, {"n": 1}, group_id="g", message_group_id="g")


def test_topic_publish_7x_message_attributes_become_attributes(
    backend: MemoryBackend, registry: SerializerRegistry
) -> None:
    MessagingBackendFactory(backend).init_queue(QUEUE, [TOPIC])
    with pytest.warns(DeprecationWarning):
        publisher = TopicPublisher(registry, backend)
    with pytest.warns(DeprecationWarning, match=r"attributes=\{name: value\}"):
        publisher.publish(
            TOPIC,
            {"n": 1},
            message_attributes={
                "event": {"DataType": "String", "StringValue": "paid"},
                "amount": {"DataType": "Number", "StringValue": "12.5"},
            },
        )
    (received,) = backend.receive(QUEUE, 10, 0)
    message = registry.decode(received)
    assert message.body == {"n": 1}
    assert message.attributes["event"] == "paid" and message.attributes["amount"] == "12.5"
    with pytest.raises(ConfigurationError, match="Binary attributes have no equivalent"):
        publisher.publish(
            TOPIC, {"n": 1}, message_attributes={"b": {"DataType": "Binary", "BinaryValue": b"x"}}
        )
    with pytest.raises(ConfigurationError, match=r"7\.x's message format"):
        publisher.publish(
            TOPIC,
            {"n": 1},
            message_attributes={"manifest": {"DataType": "String", "StringValue": "x"}},
        )


def test_topic_publisher_does_not_create_the_topic_as_7x_did(
    backend: MemoryBackend, registry: SerializerRegistry
) -> None:
    with pytest.warns(DeprecationWarning):
        publisher = TopicPublisher(registry, backend)
    with pytest.raises(TopicNotFound) as caught:
        publisher.publish("missing-topic", {"n": 1})
    text = str(caught.value)
    assert "MessagingBackendFactory(backend).init_topic('missing-topic')" in text
    assert "7.x's TopicPublisher created a missing topic" in text
    assert backend.get_topic("missing-topic") is None
    # The melange 8 form says the same without the history.
    with pytest.raises(TopicNotFound, match=r"init_topic\('missing-topic'\)"):
        TopicPublisher(backend, registry).publish("missing-topic", {"n": 1})


# -------------------------------------------------------------- dispatchers
def test_simple_message_dispatcher_7x_form_with_the_docs_payment_consumer(
    backend: MemoryBackend, registry: SerializerRegistry
) -> None:
    """The 7.x docs' PaymentConsumer: SingleDispatchConsumer with @consumer methods."""

    class PaymentService:
        def __init__(self) -> None:
            self.processed: list[Any] = []

        def process(self, event: OrderResponse) -> None:
            self.processed.append(event)

        def do_payment(self, command: DoPayment) -> None:
            self.processed.append(command)

    class PaymentConsumer(SingleDispatchConsumer):
        def __init__(self, payment_service: PaymentService):
            super().__init__()
            self.payment_service = payment_service

        @consumer
        def consume_order_response(self, event: OrderResponse) -> None:
            self.payment_service.process(event)

        @consumer
        def consume_do_payment(self, command: DoPayment) -> None:
            self.payment_service.do_payment(command)

    import melange  # the 7.x docs imported them from the package

    assert melange.SingleDispatchConsumer is SingleDispatchConsumer
    assert melange.consumer is consumer
    service = PaymentService()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an 8.x form too: no warning for the consumer
        payment_consumer = PaymentConsumer(service)
    with pytest.warns(DeprecationWarning) as record:
        dispatcher = legacy(SimpleMessageDispatcher(payment_consumer, registry, backend=backend))
    assert any(
        "SimpleMessageDispatcher(consumer, serializer_registry, cache, backend, always_ack)" in t
        and "SimpleMessageDispatcher(consumer, backend, queue_name, serializers)" in t
        for t in deprecations(record)
    )
    with pytest.warns(DeprecationWarning):
        publisher = QueuePublisher(registry, backend=backend)
    with looping(dispatcher):
        publisher.publish(QUEUE, OrderResponse("o-1", "REF-1"))
        publisher.publish(QUEUE, DoPayment("o-2", "REF-2"))
        publisher.publish(QUEUE, {"unhandled": True})  # 7.x acked what nobody accepted
        wait_for(lambda: len(service.processed) == 2 and backend.queue_depth(QUEUE).visible == 0)
        wait_for(lambda: backend.queue_depth(QUEUE).in_flight == 0)
    assert service.processed == [OrderResponse("o-1", "REF-1"), DoPayment("o-2", "REF-2")]
    assert dispatcher.stats.handled == 2


def test_7x_dispatcher_takes_positional_cache_backend_always_ack(
    backend: MemoryBackend, registry: SerializerRegistry
) -> None:
    errors: list[Exception] = []
    after: list[int] = []

    class Failing(Consumer):
        def process(self, message: Message) -> None:
            raise RuntimeError(f"failed on {message.body}")

    with pytest.warns(DeprecationWarning) as record:
        dispatcher = legacy(MessageDispatcher(registry, None, backend, True))
    assert any(
        "always_ack=True" in t and "catches its own exceptions" in t for t in deprecations(record)
    )
    with pytest.warns(DeprecationWarning):
        dispatcher.attach_consumer(Failing())
        publisher = QueuePublisher(registry, backend)
    assert dispatcher.always_ack is True
    with looping(dispatcher, on_exception=errors.append, after_consume=lambda: after.append(1)):
        publisher.publish(QUEUE, {"n": 1})
        wait_for(lambda: backend.queue_depth(QUEUE).in_flight == 0 and len(errors) == 1)
    # always_ack: acknowledged although the consumer failed; the callbacks saw it.
    assert backend.queue_depth(QUEUE).visible == 0
    assert [str(e) for e in errors] == ["failed on {'n': 1}"]
    assert after == [1]


def test_7x_dispatcher_retries_a_failed_message_without_always_ack(
    backend: MemoryBackend, registry: SerializerRegistry
) -> None:
    calls: list[Any] = []

    def flaky(payload: Any) -> None:
        calls.append(payload)
        if len(calls) == 1:
            raise RuntimeError("first try fails")

    with pytest.warns(DeprecationWarning):
        dispatcher = legacy(
            SimpleMessageDispatcher(Consumer(on_message=flaky), registry, backend=backend)
        )
        publisher = QueuePublisher(registry, backend)
    dispatcher.dispatcher_options["retry"] = RetryPolicy(base=0.0, jitter=0.0)
    with looping(dispatcher):
        publisher.publish(QUEUE, {"n": 1})
        wait_for(lambda: len(calls) == 2)
    assert calls == [{"n": 1}, {"n": 1}]


def test_7x_consume_event_handles_what_is_there_and_returns(
    backend: MemoryBackend, registry: SerializerRegistry
) -> None:
    got: list[Any] = []
    with pytest.warns(DeprecationWarning):
        dispatcher = MessageDispatcher(registry, backend=backend)
        dispatcher.attach_consumer(Consumer(on_message=got.append))
        publisher = QueuePublisher(registry, backend)
        for n in range(3):
            publisher.publish(QUEUE, {"n": n})
    with pytest.warns(DeprecationWarning, match=r"run_until_idle\(stop=True\)"):
        dispatcher.consume_event(QUEUE)
    assert sorted(p["n"] for p in got) == [0, 1, 2]
    assert backend.queue_depth(QUEUE).visible == 0
    with pytest.warns(DeprecationWarning):  # again: a new pass
        publisher.publish(QUEUE, {"n": 3})
        dispatcher.consume_event(QUEUE)
    assert len(got) == 4


def test_7x_attach_and_unattach(backend: MemoryBackend, registry: SerializerRegistry) -> None:
    first: list[Any] = []
    second: list[Any] = []

    class Recorder(Consumer):
        def __init__(self, into: list[Any]) -> None:
            super().__init__()
            self.into = into

        def process(self, message: Message) -> None:
            self.into.append(message.body)

    one, two, gone = Recorder(first), Recorder(second), Recorder([])
    with pytest.warns(DeprecationWarning):
        dispatcher = MessageDispatcher(registry, backend=backend)
        for each in (one, one, two, gone):  # 7.x attached an instance once
            dispatcher.attach_consumer(each)
    with pytest.warns(DeprecationWarning, match="unattach_consumer"):
        dispatcher.unattach_consumer(gone)
        dispatcher.unattach_consumer(gone)  # not attached: nothing happens
    with pytest.warns(DeprecationWarning):
        QueuePublisher(registry, backend).publish(QUEUE, {"n": 1})
        dispatcher.consume_event(QUEUE)
    # Two instances of one class: 8.x needs distinct consumer names, so the second is numbered.
    assert first == [{"n": 1}] and second == [{"n": 1}]
    assert dispatcher.dispatcher is not None
    assert [c.name for c in dispatcher.dispatcher.consumers] == [
        Recorder.__qualname__,
        f"{Recorder.__qualname__}#2",
    ]


def test_7x_dispatcher_errors_name_the_8x_form(
    backend: MemoryBackend, registry: SerializerRegistry
) -> None:
    with pytest.warns(DeprecationWarning):
        dispatcher = MessageDispatcher(registry, backend=backend)
    with (
        pytest.warns(DeprecationWarning),
        pytest.raises(ConfigurationError, match=r"attach_consumer\(consumer\)"),
    ):
        dispatcher.consume_loop(QUEUE)  # 7.x looped and acked everything, unseen
    with pytest.raises(LegacyDispatcherError, match=r"MessageDispatcher\(backend, queue_name"):
        dispatcher.run()
    with pytest.raises(MelangeError, match="no queue until consume_loop"):
        _ = dispatcher.stats
    assert not hasattr(dispatcher, "config")  # an AttributeError too: hasattr() works
    with (
        pytest.warns(DeprecationWarning),
        pytest.raises(ConfigurationError, match="not a melange Consumer"),
    ):
        dispatcher.attach_consumer(object())
    with pytest.raises(ConfigurationError, match=r"do not fit 7\.x's signature"):
        MessageDispatcher(registry, backend=backend, workers=3)
    with pytest.raises(ConfigurationError, match="always_ack must be True or False"):
        MessageDispatcher(registry, backend=backend, always_ack="yes")
    with pytest.raises(ConfigurationError, match=r"none was given or set as the default"):
        MessageDispatcher(registry)


def test_7x_dispatcher_uses_the_backend_manager_default(
    backend: MemoryBackend, registry: SerializerRegistry
) -> None:
    got: list[Any] = []
    with pytest.warns(DeprecationWarning):
        BackendManager().set_default_backend(backend)
    with pytest.warns(DeprecationWarning, match="without a backend"):
        dispatcher = MessageDispatcher(registry)
    assert dispatcher.backend is backend
    with pytest.warns(DeprecationWarning):
        dispatcher.attach_consumer(Consumer(on_message=got.append))
        QueuePublisher(registry).publish(QUEUE, {"n": 1})
        dispatcher.consume_event(QUEUE)
    assert got == [{"n": 1}]


def test_7x_dispatcher_stopped_before_consume_loop_returns_at_once(
    backend: MemoryBackend, registry: SerializerRegistry
) -> None:
    with pytest.warns(DeprecationWarning):
        dispatcher = SimpleMessageDispatcher(Consumer(on_message=print), registry, backend=backend)
    dispatcher.stop()
    with pytest.warns(DeprecationWarning):
        dispatcher.consume_loop(QUEUE)  # returns: the stop came first
    assert dispatcher.dispatcher is None


def test_7x_dispatcher_with_a_7x_cache_deduplicates(
    backend: MemoryBackend, registry: SerializerRegistry
) -> None:
    class DictCache:
        """A 7.x DeduplicationCache: store, get, __contains__."""

        def __init__(self) -> None:
            self.data: dict[str, Any] = {}

        def store(self, key: str, value: Any, expire: int | None = None) -> None:
            self.data[key] = value

        def get(self, key: str) -> Any:
            return self.data.get(key)

        def __contains__(self, key: str) -> bool:
            return key in self.data

    cache = DictCache()
    got: list[Any] = []
    with pytest.warns(DeprecationWarning):
        dispatcher = MessageDispatcher(registry, cache, backend)
        dispatcher.attach_consumer(Consumer(on_message=got.append))
        QueuePublisher(registry, backend).publish(QUEUE, {"n": 1})
        dispatcher.consume_event(QUEUE)
    assert got == [{"n": 1}]
    assert cache.data  # the handled message was recorded in the 7.x cache
    assert "dedup" in dispatcher.dispatcher_options


def test_8x_dispatcher_forms_do_not_warn(
    backend: MemoryBackend, registry: SerializerRegistry
) -> None:
    @consumer
    def record(payload: dict[str, Any]) -> None: ...

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dispatcher = MessageDispatcher(backend, QUEUE, [record], registry)
        simple = SimpleMessageDispatcher(record, backend, QUEUE, registry)
    assert type(dispatcher) is MessageDispatcher and type(simple) is SimpleMessageDispatcher


# ---------------------------------------------------------------- consumers
def test_consumer_on_message_gets_the_payload_under_an_8x_dispatcher(
    backend: MemoryBackend, registry: SerializerRegistry
) -> None:
    got: list[Any] = []
    with pytest.warns(DeprecationWarning) as record:
        on_message = Consumer(on_message=got.append)
    (text,) = deprecations(record)
    assert "Consumer(on_message=callable)" in text and "@consumer" in text
    assert isinstance(on_message, Consumer)
    QueuePublisher(backend, registry).publish(QUEUE, OrderResponse("o-1", "R"))
    MessageDispatcher(backend, QUEUE, [on_message], registry, wait_seconds=0.05).run_until_idle(
        0.1, stop=True
    )
    assert got == [OrderResponse("o-1", "R")]
    with pytest.warns(DeprecationWarning), pytest.raises(ConfigurationError, match="@consumer"):
        Consumer(on_message=None)


def test_7x_consumer_subclass_is_adapted_to_take_the_payload(
    backend: MemoryBackend, registry: SerializerRegistry
) -> None:
    with pytest.warns(DeprecationWarning) as record:

        class PaymentConsumer(Consumer):  # the 7.x docs' consumer_draft shape
            def __init__(self) -> None:
                super().__init__()
                self.got: list[tuple[Any, dict[str, Any]]] = []

            def process(self, message: Any, **kwargs: Any) -> None:
                self.got.append((message, kwargs))

            def accepts(self, manifest: Any) -> bool:
                return isinstance(manifest, OrderResponse)

    process_text, accepts_text = deprecations(record)
    assert "PaymentConsumer.process(self, message, **kwargs)" in process_text
    assert "process(self, message: Message)" in process_text
    assert "accepts(self, manifest)" in accepts_text and "not the manifest" in accepts_text
    assert "message.manifest" in accepts_text
    assert all(w.filename == __file__ for w in record)

    payment_consumer = PaymentConsumer()
    publisher = QueuePublisher(backend, registry)
    publisher.publish(QUEUE, OrderResponse("o-1", "R"))
    publisher.publish(QUEUE, DoPayment("o-2", "R"))  # not accepted
    dispatcher = MessageDispatcher(
        backend, QUEUE, [payment_consumer], registry, wait_seconds=0.05, on_unhandled="ack"
    )
    dispatcher.run_until_idle(0.1, stop=True)
    ((payload, kwargs),) = payment_consumer.got
    assert payload == OrderResponse("o-1", "R")
    assert set(kwargs) == {"message_id"} and kwargs["message_id"]
    # Called directly with a payload, as 7.x tests did, it passes through.
    payment_consumer.process("raw", message_id="m-1")
    assert payment_consumer.got[-1] == ("raw", {"message_id": "m-1"})


def test_8x_consumer_subclass_is_not_adapted() -> None:
    got: list[Any] = []

    with warnings.catch_warnings():
        warnings.simplefilter("error")

        class Audit(Consumer):
            def process(self, message: Message) -> None:
                got.append(message)

    message = Message({"n": 1})
    Audit().process(message)
    assert got == [message]


def test_7x_single_dispatch_consumer_accepts_gets_the_payload(
    backend: MemoryBackend, registry: SerializerRegistry
) -> None:
    # 7.2.0's dispatcher called consumer.accepts(payload), SingleDispatchConsumer included.
    with pytest.warns(DeprecationWarning, match=r"BigOrders\.accepts") as record:

        class BigOrders(SingleDispatchConsumer):
            def __init__(self) -> None:
                super().__init__()
                self.handled: list[Any] = []

            @consumer
            def on_order(self, order: dict) -> None:
                self.handled.append(order)

            def accepts(self, message: Any) -> bool:
                return isinstance(message, dict) and message.get("amount", 0) > 100

    assert "accepts(self, message: Message)" in deprecations(record)[0]
    big = BigOrders()
    assert big.accepts(Message({"amount": 500})) and not big.accepts(Message({"amount": 5}))
    with pytest.warns(DeprecationWarning):
        publisher = QueuePublisher(registry, backend)
        publisher.publish(QUEUE, {"id": 1, "amount": 500})
        publisher.publish(QUEUE, {"id": 2, "amount": 5})
        SimpleMessageDispatcher(big, registry, backend=backend).consume_event(QUEUE)
    assert big.handled == [{"id": 1, "amount": 500}]


def test_8x_single_dispatch_consumer_accepts_annotated_message_gets_the_message() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")

        class Tagged(SingleDispatchConsumer):
            @consumer
            def on_order(self, order: dict) -> None: ...

            def accepts(self, message: Message) -> bool:
                return message.attributes.get("tag") == "yes"

        assert Tagged().accepts(Message({}, attributes={"tag": "yes"}))


def test_7x_consumer_subclasses_relying_on_the_base_process_and_on_message(
    backend: MemoryBackend, registry: SerializerRegistry
) -> None:
    # 7.x's Consumer(on_message=None) had a process() calling on_message(payload), which
    # subclasses kept (overriding only accepts) or called with super().process(...).
    got: list[Any] = []
    logged: list[Any] = []

    class DictsOnly(Consumer):
        def accepts(self, manifest: Any) -> bool:  # type: ignore[override]
            return isinstance(manifest, dict)

    class Filtered(Consumer):
        def __init__(self, callback: Callable[[Any], None]) -> None:
            super().__init__(on_message=callback)  # type: ignore[call-arg]

        def accepts(self, manifest: Any) -> bool:  # type: ignore[override]
            return isinstance(manifest, dict) and manifest.get("n") == 2

    with pytest.warns(DeprecationWarning):

        class Logged(Consumer):
            def process(self, message: Any, **kwargs: Any) -> None:
                logged.append(message)
                super().process(message, **kwargs)

        consumers = [
            DictsOnly(on_message=got.append),  # type: ignore[abstract,call-arg]
            Filtered(got.append),  # type: ignore[abstract]
            Logged(on_message=got.append),  # type: ignore[call-arg]
        ]
    assert consumers[0].accepts({"a": 1}) and not consumers[0].accepts("text")
    assert isinstance(consumers[0], DictsOnly) and type(consumers[0]).__name__ == "DictsOnly"
    with pytest.warns(DeprecationWarning):
        dispatcher = MessageDispatcher(registry, backend=backend)
        for each in consumers:
            dispatcher.attach_consumer(each)
        publisher = QueuePublisher(registry, backend)
        publisher.publish(QUEUE, {"n": 1})
        publisher.publish(QUEUE, {"n": 2})
        dispatcher.consume_event(QUEUE)
    assert logged == [{"n": 1}, {"n": 2}]
    assert sorted(p["n"] for p in got) == [1, 1, 2, 2, 2]  # DictsOnly, Logged x2; Filtered: 2
    # A 7.x Consumer() without on_message did nothing with what it accepted: refused.
    with pytest.raises(ConfigurationError, match="on_message=callable"):
        Consumer()  # type: ignore[abstract]


def test_7x_after_consume_is_called_for_every_message(
    backend: MemoryBackend, registry: SerializerRegistry
) -> None:
    # 7.2.0 called after_consume in a finally, once per message: unaccepted and undecodable too.
    from melange.backends import OutgoingMessage

    class OnlyLists(Consumer):
        def process(self, message: Any, **kwargs: Any) -> None:
            handled.append(message)

        def accepts(self, manifest: Any) -> bool:  # type: ignore[override]
            return isinstance(manifest, list)

    handled: list[Any] = []
    calls: list[int] = []
    with pytest.warns(DeprecationWarning):
        dispatcher = SimpleMessageDispatcher(OnlyLists(), registry, backend=backend)
        publisher = QueuePublisher(registry, backend)
        publisher.publish(QUEUE, [1])
        publisher.publish(QUEUE, {"not": "a list"})
        backend.publish(QUEUE, [OutgoingMessage(b"{", {"manifest": "json", "serializer_id": "1"})])
        dispatcher.consume_event(QUEUE, after_consume=lambda: calls.append(1))
    assert handled == [[1]]
    assert len(calls) == 3


# ------------------------------------------------------------------ factory
def test_init_queue_dlq_name_is_dead_letter_queue_name() -> None:
    factory = MessagingBackendFactory(MemoryBackend())
    with pytest.warns(DeprecationWarning) as record:
        factory.init_queue(QUEUE, [TOPIC], dlq_name="payment-updates-dlq")
    (text,) = deprecations(record)
    assert "dead_letter_queue_name='payment-updates-dlq'" in text
    assert "max_receive_count=4" in text  # how to keep 7.x's count
    assert record[0].filename == __file__
    queue = factory.backend.get_queue(QUEUE)
    assert queue is not None and queue.dead_letter is not None
    assert queue.dead_letter.queue_name == "payment-updates-dlq"
    assert queue.dead_letter.max_receive_count == 5  # the backend's default
    assert factory.backend.get_queue("payment-updates-dlq") is not None
    # the same in melange 8's spelling converges: nothing to do
    assert not factory.plan_queue(
        QUEUE, [TOPIC], dead_letter_queue_name="payment-updates-dlq"
    ).actions
    with pytest.warns(DeprecationWarning):
        factory.init_queue(QUEUE, [TOPIC], dlq_name="payment-updates-dlq", max_receive_count=4)
    queue = factory.backend.get_queue(QUEUE)
    assert queue is not None and queue.dead_letter is not None
    assert queue.dead_letter.max_receive_count == 4


def test_init_queue_7x_keywords_that_raise() -> None:
    factory = MessagingBackendFactory(MemoryBackend())
    with pytest.raises(InvalidTopology, match=r"subscription_filter=\{'melange.manifest'"):
        factory.init_queue(QUEUE, [TOPIC], filter_events=["OrderResponse"])
    with pytest.raises(InvalidTopology, match="pass only dead_letter_queue_name"):
        factory.init_queue(QUEUE, dlq_name="a-dlq", dead_letter_queue_name="a-dlq")
    assert factory.backend.get_queue(QUEUE) is None  # nothing was created
    with pytest.warns(DeprecationWarning, match="filter_events"):
        factory.init_queue(QUEUE, [TOPIC], filter_events=None)
    subscription = factory.backend.get_subscription(TOPIC, QUEUE)
    assert subscription is not None and subscription.filter is None


def test_factory_without_backend_uses_the_backend_manager_default() -> None:
    backend = MemoryBackend()
    with pytest.warns(DeprecationWarning):
        BackendManager().set_default_backend(backend)
    with pytest.warns(DeprecationWarning, match=r"MessagingBackendFactory\(\) without a backend"):
        factory = MessagingBackendFactory()
    assert factory.backend is backend


# -------------------------------------------------------------- separation
def test_8x_forms_load_no_compat_code() -> None:
    program = """
import sys
from dataclasses import dataclass
from melange.backends.memory import MemoryBackend
from melange.consumers import Consumer, consumer
from melange.dispatcher import MessageDispatcher, SimpleMessageDispatcher
from melange.factory import MessagingBackendFactory
from melange.message import Message
from melange.publishers import QueuePublisher, TopicPublisher

class Audit(Consumer):
    def process(self, message: Message) -> None: ...

@consumer
def record(payload: dict) -> None: ...

backend = MemoryBackend()
factory = MessagingBackendFactory(backend)
factory.init_queue("q", ["t"], dead_letter_queue_name="q-dlq")
QueuePublisher(backend).publish("q", {"n": 1})
TopicPublisher(backend).publish("t", {"n": 2})
MessageDispatcher(backend, "q", [Audit(), record], wait_seconds=0.05).run_until_idle(0.1, stop=True)
SimpleMessageDispatcher(record, backend, "q")
MessagingBackendFactory()
loaded = sorted(name for name in sys.modules if name.startswith("melange.compat"))
assert not loaded, loaded
"""
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_7x_duck_typed_consumer_and_positional_on_message(
    backend: MemoryBackend, registry: SerializerRegistry
) -> None:
    class Duck:  # 7.x's dispatcher only called process and accepts
        def __init__(self) -> None:
            self.got: list[tuple[Any, dict[str, Any]]] = []

        def process(self, message: Any, **kwargs: Any) -> None:
            self.got.append((message, kwargs))

        def accepts(self, message: Any) -> bool:
            return isinstance(message, dict)

    duck = Duck()
    positional: list[Any] = []
    with pytest.warns(DeprecationWarning):
        dispatcher = SimpleMessageDispatcher(duck, registry, backend=backend)
        dispatcher.attach_consumer(Consumer(positional.append))  # Consumer(on_message) by position
        publisher = QueuePublisher(registry, backend)
        publisher.publish(QUEUE, {"n": 1})
        publisher.publish(QUEUE, OrderResponse("o-1", "R"))  # the duck does not accept it
        dispatcher.consume_event(QUEUE)
    ((payload, kwargs),) = duck.got
    assert payload == {"n": 1} and kwargs["message_id"]
    assert sorted(map(repr, positional)) == sorted(map(repr, [{"n": 1}, OrderResponse("o-1", "R")]))


def test_7x_dispatcher_leaves_an_undecodable_message_to_come_back_as_7x_did() -> None:
    # 7.2.0 acknowledged only on SerializationError from its serializer; a corrupt JSON body
    # (json.loads raised JSONDecodeError) or an unknown serializer id was left unacknowledged,
    # came back and ended in the dead-letter queue (after 4 receives on SQS).
    backend = MemoryBackend()
    MessagingBackendFactory(backend).init_queue(
        QUEUE, dead_letter_queue_name="dlq", max_receive_count=2, visibility_timeout=0.1
    )
    from melange.backends import OutgoingMessage

    # 7.x's attributes for its JSON serializer, with a corrupt body.
    corrupt = OutgoingMessage(b"{not json", {"manifest": "json", "serializer_id": "1"})
    backend.publish(QUEUE, [corrupt])
    backend.publish(QUEUE, [OutgoingMessage(b"{}", {"manifest": "X", "serializer_id": "9"})])
    got: list[Any] = []
    with pytest.warns(DeprecationWarning):
        registry = SerializerRegistry(
            {"serializers": {"json": JSONSerializer}, "serializer_bindings": {dict: "json"}}
        )
        dispatcher = SimpleMessageDispatcher(
            Consumer(on_message=got.append), registry, backend=backend
        )
    for _ in range(6):
        with pytest.warns(DeprecationWarning):
            dispatcher.consume_event(QUEUE)
        time.sleep(0.15)
    assert got == []
    depth, dead = backend.queue_depth(QUEUE), backend.queue_depth("dlq")
    assert depth.visible + depth.in_flight + dead.visible == 2  # none lost
    assert dead.visible == 2
