"""melange 7.x's ``InMemoryMessagingBackend`` and ``link_synchronously`` on melange 8.

The 7.x testing page (docs/testing.md at c62ee77): "All the messages sent to the
queue or topic with that name will be dispatched to those consumers", before
``publish()`` returns.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from melange.backends import OutgoingMessage
from melange.backends.memory import MemoryBackend
from melange.compat.testing import InMemoryMessagingBackend, link_synchronously
from melange.consumers import Consumer, consumer
from melange.dispatcher import MessageDispatcher
from melange.exceptions import ConfigurationError
from melange.factory import MessagingBackendFactory
from melange.message import Message
from melange.publishers import QueuePublisher, TopicPublisher
from melange.serializers import PickleSerializer, SerializerRegistry

THIS_FILE = __file__

SETTINGS = {  # the testing page's
    "serializers": {"pickle": PickleSerializer},
    "serializer_bindings": {},
    "default": "pickle",
}


@pytest.fixture
def deprecations() -> Iterator[list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


@pytest.fixture
def backend(deprecations: list[warnings.WarningMessage]) -> InMemoryMessagingBackend:
    return InMemoryMessagingBackend()


@pytest.fixture
def registry(deprecations: list[warnings.WarningMessage]) -> SerializerRegistry:
    return SerializerRegistry(SETTINGS)


class Recorder(Consumer):
    def __init__(self, name: str, fail: bool = False) -> None:
        super().__init__(name=name)
        self.bodies: list[Any] = []
        self.fail = fail

    def process(self, message: Message) -> None:
        if self.fail:
            raise RuntimeError("boom")
        self.bodies.append(message.body)


def test_the_testing_page_example_runs_the_consumers_before_publish_returns(
    deprecations: list[warnings.WarningMessage],
) -> None:
    consumer_1, consumer_2 = Recorder("one"), Recorder("two")
    backend = InMemoryMessagingBackend()
    line = sys._getframe().f_lineno - 1
    registry = SerializerRegistry(SETTINGS)
    link_synchronously("somequeue", [consumer_1, consumer_2], registry, backend)

    registry = SerializerRegistry(SETTINGS)  # the page makes a second one for the publisher
    QueuePublisher(backend, registry).publish("somequeue", {"message": "Mary"})

    assert consumer_1.bodies == consumer_2.bodies == [{"message": "Mary"}]
    assert backend.queue_depth("somequeue").visible == 0  # acknowledged
    found = [w for w in deprecations if issubclass(w.category, DeprecationWarning)]
    created = next(w for w in found if "InMemoryMessagingBackend()" in str(w.message))
    assert (created.filename, created.lineno) == (THIS_FILE, line)
    linked = next(w for w in found if "link_synchronously()" in str(w.message))
    assert linked.filename == THIS_FILE
    for warning in (created, linked):
        assert "melange.backends.MemoryBackend()" in str(warning.message)
        assert "run_until_idle(stop=True)" in str(warning.message)


def test_the_7x_consumer_form_works_with_the_link(
    backend: InMemoryMessagingBackend, registry: SerializerRegistry
) -> None:
    # The page's consumers, built the 7.x way: Consumer(on_message) with the same name twice.
    seen: list[str] = []
    consumer_1 = Consumer(lambda message: seen.append(f"Hello {message['message']}!"))  # type: ignore[abstract,call-arg,arg-type]
    consumer_2 = Consumer(lambda message: seen.append(f"Hello {message['message']} 2!"))  # type: ignore[abstract,call-arg,arg-type]
    link_synchronously("somequeue", [consumer_1, consumer_2], registry, backend)
    QueuePublisher(backend, registry).publish("somequeue", {"message": "Mary"})
    assert seen == ["Hello Mary!", "Hello Mary 2!"]


def test_publishing_to_a_topic_of_the_linked_name_reaches_the_consumers(
    backend: InMemoryMessagingBackend, registry: SerializerRegistry
) -> None:
    recorder = Recorder("r")
    link_synchronously("sometopic", [recorder], registry, backend)
    TopicPublisher(backend, registry).publish("sometopic", {"n": 1})
    assert recorder.bodies == [{"n": 1}]


def test_a_linked_queue_subscribed_to_a_topic_gets_the_topic_messages(
    backend: InMemoryMessagingBackend, registry: SerializerRegistry
) -> None:
    MessagingBackendFactory(backend).init_queue("payments", ["orders"])
    recorder = Recorder("r")
    link_synchronously("payments", [recorder], registry, backend)
    TopicPublisher(backend, registry).publish("orders", {"order": "o-1"})
    assert recorder.bodies == [{"order": "o-1"}]


def test_only_accepting_consumers_are_called(
    backend: InMemoryMessagingBackend, registry: SerializerRegistry
) -> None:
    strings: list[str] = []

    @consumer
    def only_strings(text: str) -> None:
        strings.append(text)

    everything = Recorder("all")
    link_synchronously("q", [only_strings, everything], registry, backend)
    publisher = QueuePublisher(backend, registry)
    publisher.publish("q", {"a": 1})
    publisher.publish("q", "text")
    assert strings == ["text"]
    assert everything.bodies == [{"a": 1}, "text"]


def test_messages_published_before_the_link_are_handled_when_linking(
    backend: InMemoryMessagingBackend, registry: SerializerRegistry
) -> None:
    QueuePublisher(backend, registry).publish("early", 1)  # the queue is created on publish
    assert backend.queue_depth("early").visible == 1
    recorder = Recorder("r")
    link_synchronously("early", [recorder], registry, backend)
    assert recorder.bodies == [1]


def test_a_failing_consumer_does_not_fail_the_publish_and_the_message_stays(
    backend: InMemoryMessagingBackend,
    registry: SerializerRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    failing, fine = Recorder("failing", fail=True), Recorder("fine")
    link_synchronously("q", [failing, fine], registry, backend)
    with caplog.at_level(logging.ERROR, logger="melange.compat.testing"):
        QueuePublisher(backend, registry).publish("q", {"n": 1})
    assert fine.bodies == [{"n": 1}]
    assert backend.queue_depth("q").visible == 1  # not acknowledged: handled again later
    [record] = [r for r in caplog.records if r.name == "melange.compat.testing"]
    assert record.consumer == "failing"  # type: ignore[attr-defined]
    assert "{'n': 1}" not in caplog.text  # bodies are never logged
    failing.fail = False
    QueuePublisher(backend, registry).publish("q", {"n": 2})
    assert sorted(b["n"] for b in failing.bodies) == [1, 2]
    assert backend.queue_depth("q").visible == 0


def test_an_undecodable_message_is_logged_and_dropped(
    backend: InMemoryMessagingBackend,
    registry: SerializerRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = Recorder("r")
    link_synchronously("q", [recorder], registry, backend)
    with caplog.at_level(logging.ERROR, logger="melange.compat.testing"):
        backend.publish("q", [OutgoingMessage(b"\xff", {"melange.serializer": "pickle"})])
    assert recorder.bodies == []
    assert backend.queue_depth("q").visible == 0
    assert "undecodable" in caplog.text


def test_an_unlinked_queue_keeps_its_messages(
    backend: InMemoryMessagingBackend, registry: SerializerRegistry
) -> None:
    QueuePublisher(backend, registry).publish("elsewhere", {"n": 1})
    [message] = backend.receive("elsewhere")
    assert registry.decode(message).body == {"n": 1}


def test_the_backend_is_a_memory_backend_that_a_dispatcher_consumes(
    backend: InMemoryMessagingBackend, registry: SerializerRegistry
) -> None:
    assert isinstance(backend, MemoryBackend)
    QueuePublisher(backend, registry).publish("q", {"n": 3})
    recorder = Recorder("r")
    dispatcher = MessageDispatcher(backend, "q", [recorder], registry, wait_seconds=0.1)
    dispatcher.run_until_idle(0.2, 5, stop=True)
    assert recorder.bodies == [{"n": 3}]


def test_linking_on_another_backend_raises_naming_the_8x_form(
    registry: SerializerRegistry, deprecations: list[warnings.WarningMessage]
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        link_synchronously("q", [Recorder("r")], registry, MemoryBackend())
    assert "needs an InMemoryMessagingBackend, got MemoryBackend" in str(raised.value)
    assert "run_until_idle(stop=True)" in str(raised.value)


@pytest.mark.parametrize(
    ("consumers", "error"),
    [
        (print, "consumers must be a list"),
        ([print], "is not a melange Consumer"),
    ],
)
def test_linking_what_is_not_a_consumer_raises(
    backend: InMemoryMessagingBackend, registry: SerializerRegistry, consumers: Any, error: str
) -> None:
    with pytest.raises(ConfigurationError, match=error):
        link_synchronously("q", consumers, registry, backend)


def test_linking_an_async_consumer_raises(
    backend: InMemoryMessagingBackend, registry: SerializerRegistry
) -> None:
    @consumer
    async def handle(body: dict[str, Any]) -> None:
        pass

    with pytest.raises(ConfigurationError, match="asynchronous"):
        link_synchronously("q", [handle], registry, backend)


def test_linking_without_a_registry_raises(backend: InMemoryMessagingBackend) -> None:
    with pytest.raises(ConfigurationError, match="SerializerRegistry"):
        link_synchronously("q", [Recorder("r")], SETTINGS, backend)
