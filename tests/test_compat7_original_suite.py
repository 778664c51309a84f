"""The original melange's (7.x) own unit tests, rewritten for melange 8 through its 7.x API.

The original suite (tests/ at commit c62ee77 of the original repository) checked its
dispatcher, publisher, serializer registry and pickle serializer against test doubles of the
backend (doublex spies: "acknowledge was called twice"). The same scenarios run here on
melange 8's memory backend, a real one, and check what it holds: a message acknowledged is
gone from the queue, one not acknowledged is still there. The classes the original's fixtures
module declared (a message hierarchy, consumers, a 7.x custom serializer) are rewritten below.

The 7.x names are imported inside the tests (the ``seven`` fixture), each afresh, so that a
missing one fails its tests with the reason rather than the whole module.

Its tests against LocalStack (tests/backends/): plugins/melange_localsqs/tests/
test_compat7_original_suite_sqs.py.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from melange import QueuePublisher, SingleDispatchConsumer, consumer
from melange.backends.memory import MemoryBackend, QueueDepth
from melange.exceptions import MelangeError, SerializationError
from melange.factory import MessagingBackendFactory
from melange.serializers import Serializer
from tests.compat7_docs import MODULES_7X

EMPTY = QueueDepth(0, 0, 0)
QUEUE = "queue"


# ------------------------------------------------------------------ the original's fixtures
class BaseMessage:
    """The root of the test message hierarchy."""


class MessageStubInterface(BaseMessage):
    """A more specific message type, bound to the test serializer."""


@dataclass
class BananaHappened(MessageStubInterface):
    somevalue: Any


class NotBananaHappened(MessageStubInterface):
    pass


@dataclass
class OrderPlaced:
    """A domain event, pickled whole."""

    reference: str
    lines: list[str] = field(default_factory=list)


class BananaConsumer(SingleDispatchConsumer):
    """Takes BananaHappened (7.x: ``@consumer`` on a method), records what it got."""

    def __init__(self) -> None:
        super().__init__()
        self.processed: list[BananaHappened] = []

    @consumer
    def on_banana_event(self, event: BananaHappened) -> None:
        self.processed.append(event)


class NoBananaConsumer(SingleDispatchConsumer):
    """Takes only NotBananaHappened."""

    def __init__(self) -> None:
        super().__init__()
        self.processed: list[Any] = []

    @consumer
    def on_other_event(self, event: NotBananaHappened) -> None:
        self.processed.append(event)


class FailingConsumer(SingleDispatchConsumer):
    """Takes BananaHappened and always fails on it."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts = 0

    @consumer
    def on_banana_event(self, event: BananaHappened) -> None:
        self.attempts += 1
        raise RuntimeError("no bananas today")


class StubSerializer(Serializer):
    """A 7.x custom serializer: identifier() returns an int, bodies are str."""

    @staticmethod
    def identifier() -> int:  # type: ignore[override]
        return 40

    def manifest(self, data: Any) -> str:
        return "BananaEvent"

    def serialize(self, data: Any) -> str:  # type: ignore[override]
        if isinstance(data, BananaHappened):
            return json.dumps({"value": data.somevalue})
        return "apple"

    def deserialize(self, data: str, manifest: str | None = None) -> Any:  # type: ignore[override]
        if data != "apple":
            return BananaHappened(somevalue=json.loads(data)["value"])
        return None


# ------------------------------------------------------------------ fixtures
@pytest.fixture
def seven(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """The 7.x names the original tests imported, each imported afresh."""
    for name in MODULES_7X:
        monkeypatch.delitem(sys.modules, name, raising=False)
    melange = importlib.import_module("melange")
    serializers = importlib.import_module("melange.serializers")
    return SimpleNamespace(
        SerializerRegistry=serializers.SerializerRegistry,
        JsonSerializer=serializers.JsonSerializer,
        PickleSerializer=serializers.PickleSerializer,
        QueuePublisher=melange.QueuePublisher,
        MessageDispatcher=melange.MessageDispatcher,
        SimpleMessageDispatcher=melange.SimpleMessageDispatcher,
        Consumer=melange.Consumer,
    )


@pytest.fixture
def broker() -> Iterator[MemoryBackend]:
    backend = MemoryBackend()
    MessagingBackendFactory(backend).init_queue(QUEUE)
    yield backend
    backend.close()


def original_config(seven: SimpleNamespace, **overrides: Any) -> dict[str, Any]:
    """The serializer settings of the original's dispatcher and publisher tests."""
    config: dict[str, Any] = {
        "serializers": {
            "json": seven.JsonSerializer,
            "pickle": seven.PickleSerializer,
            "test": StubSerializer,
        },
        "serializer_bindings": {dict: "json", MessageStubInterface: "test", BaseMessage: "test"},
        "default": "pickle",
    }
    config.update(overrides)
    return config


@pytest.fixture
def registry(seven: SimpleNamespace) -> Any:
    with pytest.warns(DeprecationWarning, match=r"use SerializerRegistry\("):
        return seven.SerializerRegistry(original_config(seven))


def queue_bananas(broker: MemoryBackend, registry: Any, count: int = 2) -> None:
    """Put ``count`` BananaHappened("apple") in the queue (melange 8's publisher, no warnings)."""
    publisher = QueuePublisher(broker, registry)
    for _ in range(count):
        publisher.publish(QUEUE, BananaHappened("apple"))
    assert broker.queue_depth(QUEUE).visible == count


def held(broker: MemoryBackend) -> int:
    """Messages still in the queue, in whatever state: none acknowledged means all of them."""
    return sum(broker.queue_depth(QUEUE))


def consume_event(dispatcher: Any) -> None:
    with pytest.warns(DeprecationWarning, match=r"use .*\.run_until_idle\("):
        dispatcher.consume_event(QUEUE)


def simple_dispatcher(seven: SimpleNamespace, consumer: Any, registry: Any, **kwargs: Any) -> Any:
    with pytest.warns(
        DeprecationWarning, match=r"use SimpleMessageDispatcher\(consumer, backend, queue_name"
    ):
        return seven.SimpleMessageDispatcher(consumer, serializer_registry=registry, **kwargs)


# ================================================================== test_message_dispatcher.py
def test_consume_on_queue_with_messages(
    seven: SimpleNamespace, broker: MemoryBackend, registry: Any
) -> None:
    queue_bananas(broker, registry)
    banana = BananaConsumer()
    consume_event(simple_dispatcher(seven, banana, registry, backend=broker))
    assert banana.processed == [BananaHappened("apple"), BananaHappened("apple")]
    assert broker.queue_depth(QUEUE) == EMPTY  # both acknowledged


def test_consume_on_queue_but_no_consumer_interested_in_the_messages(
    seven: SimpleNamespace, broker: MemoryBackend, registry: Any
) -> None:
    queue_bananas(broker, registry)
    other = NoBananaConsumer()
    consume_event(simple_dispatcher(seven, other, registry, backend=broker))
    assert other.processed == []
    assert broker.queue_depth(QUEUE) == EMPTY  # 7.x acknowledged what no consumer wanted


def test_if_a_consumer_raises_an_exception_the_message_is_not_acknowledged(
    seven: SimpleNamespace, broker: MemoryBackend, registry: Any
) -> None:
    queue_bananas(broker, registry)
    failing = FailingConsumer()
    consume_event(simple_dispatcher(seven, failing, registry, backend=broker))
    assert failing.attempts >= 2
    assert held(broker) == 2  # none acknowledged: they come back


def test_always_ack_acknowledges_a_message_whose_consumer_failed(
    seven: SimpleNamespace, broker: MemoryBackend, registry: Any
) -> None:
    # components/consumers.md: "Unless the always_ack is set to True, a message will only be
    # acknowledged if it's been correctly processed by all consumers that accept the message."
    queue_bananas(broker, registry)
    failing = FailingConsumer()
    consume_event(simple_dispatcher(seven, failing, registry, backend=broker, always_ack=True))
    assert failing.attempts == 2
    assert broker.queue_depth(QUEUE) == EMPTY


def test_a_message_is_acknowledged_only_once_every_accepting_consumer_succeeded(
    seven: SimpleNamespace, broker: MemoryBackend, registry: Any
) -> None:
    queue_bananas(broker, registry, count=1)
    banana, failing = BananaConsumer(), FailingConsumer()
    with pytest.warns(DeprecationWarning, match=r"use MessageDispatcher\(backend, queue_name"):
        dispatcher = seven.MessageDispatcher(registry, backend=broker)
    with pytest.warns(DeprecationWarning, match=r"use MessageDispatcher\(backend, queue_name"):
        dispatcher.attach_consumer(banana)
        dispatcher.attach_consumer(failing)
    consume_event(dispatcher)
    assert banana.processed[:1] == [BananaHappened("apple")] and failing.attempts >= 1
    assert held(broker) == 1


# ================================================================== test_publishers.py
def test_publish_a_message_to_a_queue(
    seven: SimpleNamespace, broker: MemoryBackend, registry: Any
) -> None:
    with pytest.warns(DeprecationWarning, match=r"use QueuePublisher\(backend"):
        sut = seven.QueuePublisher(backend=broker, serializer_registry=registry)
    sut.publish(QUEUE, {"some_content": "12345"})
    [message] = broker.receive(QUEUE)
    assert json.loads(message.body) == {"some_content": "12345"}  # the JSON binding of Dict
    assert message.attributes["melange.serializer"] == "json"


def test_the_publisher_sends_the_serializers_manifest_with_the_data(
    seven: SimpleNamespace, broker: MemoryBackend, registry: Any
) -> None:
    with pytest.warns(DeprecationWarning, match=r"use QueuePublisher\(backend"):
        sut = seven.QueuePublisher(registry, broker)
    sut.publish(QUEUE, BananaHappened(5))
    [message] = broker.receive(QUEUE)
    assert json.loads(message.body) == {"value": 5}  # what StubSerializer wrote
    assert message.attributes["melange.manifest"] == "BananaEvent"


# ================================================================== serializers/test_registry.py
def serializer_id(registry: Any, obj: Any) -> int:
    """The 7.x id of the serializer the registry picks for ``obj`` (JSON 1, pickle 2, stub 40).

    7.x returned an instance of the configured class; melange 8 returns a view of its own
    serializer with the 7.x interface (identifier(), manifest(), serialize() to text).
    """
    with pytest.warns(DeprecationWarning, match=r"find_serializer_for"):
        found = registry.find_serializer_for(obj)
    return int(found.identifier())


def test_the_serializer_of_the_most_specific_binding_is_found(registry: Any) -> None:
    assert serializer_id(registry, BananaHappened(1)) == StubSerializer.identifier()
    with pytest.warns(DeprecationWarning, match=r"find_serializer_for"):
        found = registry.find_serializer_for(BananaHappened(1))
    assert found.serialize(BananaHappened(1)) == '{"value": 1}'
    assert found.manifest(BananaHappened(1)) == "BananaEvent"


@pytest.mark.parametrize("order", ["general first", "specific first"])
def test_bindings_are_tried_from_the_most_specific_class(
    seven: SimpleNamespace, order: str
) -> None:
    # The original tested its `sort` helper: subclasses before their superclasses.
    bindings: dict[type, str] = {BaseMessage: "pickle", MessageStubInterface: "test"}
    if order == "specific first":
        bindings = dict(reversed(list(bindings.items())))
    with pytest.warns(DeprecationWarning):
        registry = seven.SerializerRegistry(original_config(seven, serializer_bindings=bindings))
    assert serializer_id(registry, BananaHappened(1)) == 40
    assert serializer_id(registry, NotBananaHappened()) == 40
    assert serializer_id(registry, BaseMessage()) == 2  # pickle


def test_dicts_use_json_and_other_types_the_default(registry: Any) -> None:
    assert serializer_id(registry, {"a": 1}) == 1  # JSON
    assert serializer_id(registry, OrderPlaced("r-1")) == 2  # the default, pickle


def test_a_type_with_no_binding_and_no_default_is_refused(
    seven: SimpleNamespace, broker: MemoryBackend
) -> None:
    # 7.2.0 raised a bare Exception("No serializer could be found for the type ...").
    config = original_config(seven)
    del config["default"]
    with pytest.warns(DeprecationWarning):
        registry = seven.SerializerRegistry(config)
    with pytest.raises(SerializationError, match="OrderPlaced"):
        QueuePublisher(broker, registry).publish(QUEUE, OrderPlaced("r-1"))
    assert broker.queue_depth(QUEUE) == EMPTY


# ================================================================== test_pickleserializer.py
def test_pickle_a_domain_event(seven: SimpleNamespace) -> None:
    event = OrderPlaced("REF88888", ["banana"])
    serializer = seven.PickleSerializer()
    data = serializer.serialize(event)
    assert serializer.deserialize(data, manifest=None) == event


# ================================================================== the 7.x backend contract
# The original's backend tests called the 7.x backend methods directly. melange 8's backends
# have another contract (deliberate): each call works with a warning, or raises a MelangeError
# naming what to use: an AttributeError or TypeError tells a 7.x user nothing. (Except
# declare_queue(name, dead_letter_queue_name=...): Python's TypeError names the keyword, and
# melange 8's declare_queue takes a QueueSpec only; the factory is the documented way.)
def _message(models: Any) -> Any:
    return models.Message.create('{"value": 1}', "BananaEvent", 40)


SEVEN_BACKEND_CALLS: dict[str, tuple[Callable[[MemoryBackend, Any], Any], str]] = {
    "declare_topic(name)": (lambda b, m: b.declare_topic("t7"), r"init_topic"),
    "declare_queue(name)": (lambda b, m: b.declare_queue("q7"), r"init_queue"),
    "get_queue(name).unwrapped_obj": (
        lambda b, m: b.get_queue(QUEUE).unwrapped_obj,
        r"get_queue|QueueSpec",
    ),
    "publish_to_queue(message, queue)": (
        lambda b, m: b.publish_to_queue(_message(m), b.get_queue(QUEUE)),
        r"QueuePublisher|\.publish\(",
    ),
    "publish_to_topic(message, topic)": (
        lambda b, m: b.publish_to_topic(_message(m), m.TopicWrapper("t7")),
        r"TopicPublisher|publish_to_topic\(topic_name",
    ),
    "retrieve_messages(queue)": (
        lambda b, m: b.retrieve_messages(b.get_queue(QUEUE)),
        r"receive\(",
    ),
    "yield_messages(queue)": (lambda b, m: list(b.yield_messages(b.get_queue(QUEUE))), r"receive"),
    "acknowledge(message)": (lambda b, m: b.acknowledge(_message(m)), r"\back\("),
    "delete_queue(queue)": (lambda b, m: b.delete_queue(b.get_queue(QUEUE)), r"delete_queue|name"),
    "delete_topic(topic)": (
        lambda b, m: b.delete_topic(m.TopicWrapper("t7")),
        r"delete_topic|name",
    ),
}


@pytest.mark.parametrize("call", list(SEVEN_BACKEND_CALLS))
def test_a_7x_backend_method_on_a_melange_8_backend_is_refused_clearly(
    seven: SimpleNamespace, broker: MemoryBackend, call: str
) -> None:
    action, replacement = SEVEN_BACKEND_CALLS[call]
    with pytest.warns(DeprecationWarning, match=r"use melange\.Message"):
        models = importlib.import_module("melange.models")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            action(broker, models)
        except MelangeError as error:
            assert re.search(replacement, str(error)), (
                f"{call}: {type(error).__name__} does not name {replacement!r}: {error}"
            )
            return
        except Exception as error:
            pytest.fail(f"{call} raised {type(error).__name__}, not a MelangeError: {error}")
    texts = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    assert any(re.search(replacement, text) for text in texts), (
        f"{call} worked, but no DeprecationWarning names {replacement!r}: {texts}"
    )
