"""The original melange's (7.x) documented snippets and example apps, run on melange 8.

Issue 14: a 7.x application upgrades by changing its pin. Every code block of the 7.x README.md
and docs/ pages that needs no broker of its own runs here as the docs wrote it
(:mod:`tests.compat7_docs` embeds them and says how they run), pointed at the memory backend:
``LocalSQSBackend(...)``/``AWSBackend(...)`` become the test's ``broker``, nothing else changes.
Each test checks what the page says happens (the consumer printed the message, the queue
exists, ...) and that every 7.x form gave a ``DeprecationWarning`` naming its 8.x form, or
that a deliberate change raises a :class:`~melange.exceptions.MelangeError` naming the fix.

Where 7.2.0 itself failed on a snippet, the test says so and checks melange 8 fails clearly:
the tutorial's publisher binds pickle to simple-cqrs's ``DomainEvent`` only and then publishes
``MyTestMessage``, which is no ``DomainEvent`` (7.2.0: ``Exception: No serializer could be
found for the type``). The consumers are then run with a message published the way the
tutorial means it.

The same snippets against a local SQS/SNS endpoint: plugins/melange_localsqs/tests/
test_compat7_snippets_sqs.py. The factory page: tests/test_original_docs.py.
"""

from __future__ import annotations

import importlib
import inspect
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from melange import MessagingBackendFactory, QueuePublisher
from melange.backends.memory import MemoryBackend, QueueDepth
from melange.consumers import Consumer
from melange.dispatcher import MessageDispatcher
from melange.exceptions import MelangeError, SerializationError, TopicNotFound
from melange.message import Message
from melange.serializers import PickleSerializer, SerializerRegistry
from tests.compat7_docs import (
    WAIT_SECONDS,
    Docs,
    Output,
    Running,
    adapt_to_memory,
    default_backend_restored,
    docs_runner,
    stop_dispatcher,
    wait_until,
)

EMPTY = QueueDepth(0, 0, 0)

CREATE_QUEUE = "melange/examples/doc_examples/tutorial/create_queue.py"
TUTORIAL_PUBLISH = "melange/examples/doc_examples/tutorial/publish.py"
TUTORIAL_CONSUME = "melange/examples/doc_examples/tutorial/consume.py"
INIT_QUEUES = "melange/examples/init_queues.py"
EVENTS = "melange/examples/payment_service/events.py"


# ------------------------------------------------------------------ fixtures
@pytest.fixture
def broker() -> Iterator[MemoryBackend]:
    """The test backend every snippet's ``LocalSQSBackend(...)``/``AWSBackend(...)`` becomes."""
    backend = MemoryBackend()
    yield backend
    backend.close()


@pytest.fixture
def docs(monkeypatch: pytest.MonkeyPatch, broker: MemoryBackend) -> Iterator[Docs]:
    with docs_runner(monkeypatch, adapt_to_memory, broker=broker) as runner:
        yield runner


@pytest.fixture
def output(capsys: pytest.CaptureFixture[str]) -> Output:
    return Output(capsys)


@pytest.fixture
def default_backend() -> Iterator[None]:
    with default_backend_restored():
        yield


def publish_as_the_tutorial_means(docs: Docs, broker: MemoryBackend, text: str) -> None:
    """Put a pickled ``MyTestMessage`` in the tutorial's queue (8.x API: no 7.x warning)."""
    tutorial = docs.module(TUTORIAL_PUBLISH)
    publisher = QueuePublisher(broker, SerializerRegistry(PickleSerializer(), allow_pickle=True))
    publisher.publish("melangetutorial-queue", tutorial.MyTestMessage(text))


class Recorder(Consumer):
    """An 8.x consumer that keeps every payload."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[Any] = []

    def process(self, message: Message) -> None:
        self.bodies.append(message.body)


def consume_with_8x(broker: MemoryBackend, queue: str, registry: Any) -> list[Any]:
    recorder = Recorder()
    dispatcher = MessageDispatcher(broker, queue, [recorder], registry, wait_seconds=0.1)
    dispatcher.run_until_idle(idle_seconds=0.2, timeout=WAIT_SECONDS, stop=True)
    return recorder.bodies


def refused_or_works(action: Callable[[], Any], refusal: str) -> tuple[Any, MelangeError | None]:
    """Run a 7.x form that melange 8 may support (with a warning) or refuse clearly.

    Returns the result, or the MelangeError, which must match ``refusal`` (name the 8.x form).
    Any other exception fails the test.
    """
    try:
        return action(), None
    except MelangeError as error:
        assert re.search(refusal, str(error)), (
            f"{type(error).__name__} does not name the replacement ({refusal!r}): {error}"
        )
        return None, error


# ==================================================== README.md, tutorial
PUBLISH_SNIPPETS = {
    "README.md: Publish": [
        "melange.serializers.pickle",
        "melange.serializers.registry",
        "SerializerRegistry(config)",
        "QueuePublisher(registry, backend)",
    ],
    TUTORIAL_PUBLISH: ["SerializerRegistry(config)", "QueuePublisher(registry, backend)"],
}


def test_tutorial_create_queue_creates_the_queue(docs: Docs, broker: MemoryBackend) -> None:
    docs.script(CREATE_QUEUE)
    assert broker.get_queue("melangetutorial-queue") is not None
    assert docs.deprecations() == []  # the factory's 7.x form is the 8.x form


@pytest.mark.parametrize("path", list(PUBLISH_SNIPPETS))
def test_publish_snippet_refuses_a_type_its_registry_has_no_serializer_for(
    docs: Docs, broker: MemoryBackend, output: Output, path: str
) -> None:
    # 7.2.0 raised `Exception: No serializer could be found for the type ...MyTestMessage`:
    # pickle is bound to DomainEvent only and there is no default. melange 8: a MelangeError.
    docs.script(CREATE_QUEUE)
    with pytest.raises(SerializationError, match="MyTestMessage"):
        docs.script(path)
    assert broker.queue_depth("melangetutorial-queue") == EMPTY  # nothing was sent
    assert "Message sent successfully!" not in output.text
    docs.assert_warned(*PUBLISH_SNIPPETS[path])


CONSUME_SNIPPETS = {
    "README.md: Consume": [
        "melange.message_dispatcher",
        "melange.serializers.pickle",
        "melange.serializers.registry",
        "SerializerRegistry(config)",
        "SimpleMessageDispatcher(consumer, registry, backend=)",
        "consume_loop()",
    ],
    TUTORIAL_CONSUME: [
        "SerializerRegistry(config)",
        "SimpleMessageDispatcher(consumer, registry, backend=)",
        "consume_loop()",
    ],
}


@pytest.mark.parametrize("path", list(CONSUME_SNIPPETS))
def test_consume_snippet_prints_the_message(
    docs: Docs, broker: MemoryBackend, output: Output, path: str
) -> None:
    docs.script(CREATE_QUEUE)
    publish_as_the_tutorial_means(docs, broker, "Hello World!")
    running = docs.start(path)
    # "every time you run publish_example.py you will see a print with the message"
    output.wait_for("Hello World!\n", running)
    running.stop("message_dispatcher")
    assert output.text.startswith("Consuming...\n")
    assert broker.queue_depth("melangetutorial-queue") == EMPTY  # handled, so acknowledged
    docs.assert_warned(*CONSUME_SNIPPETS[path])


# ==================================================== components/publishers.md
def test_topic_publish_snippet_refuses_a_type_its_registry_has_no_serializer_for(
    docs: Docs, broker: MemoryBackend, output: Output
) -> None:
    # The shared registry of the examples, as in the tutorial: 7.2.0 raised there too.
    with pytest.raises(SerializationError, match="MyTestMessage"):
        docs.script("melange/examples/doc_examples/topic_publish.py")
    assert "Message sent successfully!" not in output.text
    docs.assert_warned("SerializerRegistry(config)", "TopicPublisher(registry, backend)")


def test_topic_publisher_does_not_create_its_topic(docs: Docs, broker: MemoryBackend) -> None:
    # Deliberate: 7.x's TopicPublisher created the topic on every publish; 8.x's does not.
    with pytest.raises(SerializationError):
        docs.script("melange/examples/doc_examples/topic_publish.py")
    publisher = docs.partial["publisher"]
    events = docs.module(EVENTS)
    event = events.OrderResponse(id="o-1", reference="REF-TOPIC")
    with pytest.raises(TopicNotFound, match=r"MessagingBackendFactory(\(backend\))?\.init_topic"):
        publisher.publish("melangetutorial-topic", event)
    assert broker.get_topic("melangetutorial-topic") is None
    # The fix the error names: create it (and a subscribed queue), then publish.
    MessagingBackendFactory(broker).init_queue("melangetutorial-sub", ["melangetutorial-topic"])
    publisher.publish("melangetutorial-topic", event)
    [received] = consume_with_8x(broker, "melangetutorial-sub", docs.partial["serializer_registry"])
    assert isinstance(received, events.OrderResponse) and received.reference == "REF-TOPIC"


# ==================================================== examples/payment-service.md
PAYMENT_APPS = {
    "melange/examples/payment_service/app.py": (
        "dispatcher",
        ["MessageDispatcher(registry, backend=)", "attach_consumer()", "consume_loop()"],
    ),
    "melange/examples/payment_service/app_simpleconsumer.py": (
        "payment_consumer",
        ["SimpleMessageDispatcher(consumer, registry, backend=)", "consume_loop()"],
    ),
}


def run_payment_example(
    docs: Docs, broker: MemoryBackend, output: Output, app: str, reference: str
) -> Running:
    docs.script(INIT_QUEUES)
    assert "Queues created." in output.text
    running = docs.start(app)
    output.wait_for("Consuming...", running)
    docs.script("melange/examples/payment_service/triggerer.py", [reference])
    assert f"Order with reference {reference} sent." in output.text
    # "you should see a message like `Order SOMEREFNUMBER paid successfully`"
    output.wait_for(f"Order {reference} paid successfully", running)
    return running


@pytest.mark.parametrize("app", list(PAYMENT_APPS))
def test_payment_service_example(
    docs: Docs, broker: MemoryBackend, output: Output, app: str
) -> None:
    variable, forms = PAYMENT_APPS[app]
    running = run_payment_example(docs, broker, output, app, "SOMEREFNUMBER")
    # The service publishes the order's status to the order and saga queues.
    wait_until(
        lambda: (
            broker.queue_depth("order-updates").visible == 1
            and broker.queue_depth("saga-updates").visible == 1
        ),
        "an OrderStatus in order-updates and saga-updates",
        running,
    )
    running.stop(variable)
    assert broker.queue_depth("payment-updates") == EMPTY
    statuses = consume_with_8x(
        broker, "order-updates", docs.module("melange/examples/shared.py").serializer_registry
    )
    assert [(type(s).__name__, s.status) for s in statuses] == [("OrderStatus", "ORDER_PAID")]
    docs.assert_warned("SerializerRegistry(config)", "QueuePublisher(registry, backend)", *forms)


# ==================================================== components/consumers.md
def test_consumer_draft_behaves_as_in_7x_and_is_flagged(
    docs: Docs, broker: MemoryBackend, output: Output, caplog: pytest.LogCaptureFixture
) -> None:
    """The page shows consumer_draft.py's Consumer subclass as the same PaymentConsumer.

    Its ``accepts(self, manifest)`` compares with class names, but 7.2.0 passed it the
    payload, so it accepted nothing and every message was acknowledged unhandled. melange 8
    keeps that behaviour for the 7.x form (an application that checks the payload there
    keeps working), and flags it: a warning at the class names ``accepts(self, message)``,
    and the dropped message is logged.
    """
    docs.serve_as(
        "melange/examples/payment_service/consumer_draft.py",
        "melange.examples.payment_service.consumer",
    )
    docs.script(INIT_QUEUES)
    running = docs.start("melange/examples/payment_service/app.py")
    docs.script("melange/examples/payment_service/triggerer.py", ["REF-DRAFT"])
    wait_until(
        lambda: running.error or broker.queue_depth("payment-updates") == EMPTY,
        "the draft consumer's dispatcher to settle the order message",
    )
    assert running.error is None, running.error
    running.stop("dispatcher")
    assert "Order REF-DRAFT paid successfully" not in output.text  # as in 7.2.0
    assert broker.queue_depth("order-updates").visible == 0
    texts = [str(warning.message) for warning in docs.deprecations()]
    assert any(re.search(r"accepts\(self, message", text) for text in texts), texts
    assert any("unhandled" in record.getMessage() for record in caplog.records)


# ==================================================== components/messaging-backends.md
class _SevenStyle:
    """What the 7.x page asks of a custom backend: its interface's methods (names only)."""

    def declare_topic(self, topic_name: str) -> Any:
        return topic_name

    def get_queue(self, queue_name: str) -> Any:
        return queue_name

    def declare_queue(
        self,
        queue_name: str,
        *topics_to_bind: Any,
        dead_letter_queue_name: Any = None,
        **kwargs: Any,
    ) -> Any:
        return queue_name, None

    def retrieve_messages(self, queue: Any, **kwargs: Any) -> list[Any]:
        return []

    def yield_messages(self, queue: Any, **kwargs: Any) -> Any:
        return iter([])

    def publish_to_topic(self, message: Any, topic: Any, extra_attributes: Any = None) -> None:
        pass

    def publish_to_queue(self, message: Any, queue: Any, **kwargs: Any) -> None:
        pass

    def acknowledge(self, message: Any) -> None:
        pass

    def delete_queue(self, queue: Any) -> None:
        pass

    def delete_topic(self, topic: Any) -> None:
        pass


@pytest.mark.parametrize("module", ["melange.backends", "melange.backends.interfaces"])
def test_a_7x_custom_backend_is_refused_naming_the_8x_contract(docs: Docs, module: str) -> None:
    # Deliberate: the backend contract changed (topology specs, batches, receive/ack).
    # "Subclass the MessagingBackend interface and implement all the methods of that class."
    with pytest.raises(MelangeError, match=r"writing-a-backend|backend contract") as refused:
        base = importlib.import_module(module).MessagingBackend
        methods = {k: v for k, v in vars(_SevenStyle).items() if not k.startswith("__")}
        seven = type("ListBackend", (base,), methods)  # as a 7.x class body defines them
        backend = seven()
        MessagingBackendFactory(backend).init_queue("custom-backend-queue")
        QueuePublisher(backend).publish("custom-backend-queue", {"n": 1})
    assert "ListBackend" in str(refused.value)


# ==================================================== components/serialization.md
SERIALIZATION_CONTEXT = """\
from typing import Dict

from bunch import Bunch

from melange import QueuePublisher
from melange.examples.doc_examples.serializer_example import MyOwnSerializer as YourOwnSerializer
from melange.serializers import JsonSerializer, PickleSerializer, SerializerRegistry


class YourOwnMessage(Bunch):
    pass


backend = broker
"""


def test_serialization_page_registry_picks_each_serializer(
    docs: Docs, broker: MemoryBackend
) -> None:
    # The page's config: dicts as JSON, YourOwnMessage with the page's custom serializer
    # (serializer_example.py, a 7.x Serializer: identifier() -> int, str bodies), else pickle.
    namespace, refused = refused_or_works(
        lambda: docs.run(
            "docs/components/serialization.md: SerializerRegistry", SERIALIZATION_CONTEXT
        ),
        r"melange\.serializers\.Serializer",
    )
    if refused is not None:
        return  # a 7.x custom serializer refused, naming the 8.x interface
    events = docs.module(EVENTS)
    MessagingBackendFactory(broker).init_queue("serialization-page")
    publisher = namespace["publisher"]
    publisher.publish("serialization-page", {"amount": 10})
    publisher.publish("serialization-page", namespace["YourOwnMessage"](reference="r-1"))
    publisher.publish("serialization-page", events.OrderResponse(id="o-1", reference="REF-P"))
    received = consume_with_8x(broker, "serialization-page", namespace["registry"])
    assert len(received) == 3, received
    by_kind = {type(body).__name__: body for body in received}
    assert by_kind["dict"] == {"amount": 10}
    assert by_kind["Bunch"] == {"reference": "r-1"} and by_kind["Bunch"].reference == "r-1"
    assert by_kind["OrderResponse"].reference == "REF-P"
    docs.assert_warned(
        "SerializerRegistry(config)",
        "QueuePublisher(registry, backend)",
        "JsonSerializer",
        "7.x Serializer subclass",
        "melange.helpers.typing",
    )


# ==================================================== advanced-topics/default-mb.md
def test_backend_manager_page(
    docs: Docs, broker: MemoryBackend, output: Output, default_backend: None
) -> None:
    namespace = docs.run(
        "docs/components/advanced-topics/default-mb.md: BackendManager",
        "from melange.backends import AWSBackend, BackendManager\n",
    )
    assert namespace["BackendManager"]().get_default_backend() is broker
    MessagingBackendFactory(broker).init_queue("melangetutorial-queue")
    # backend_manager.py publishes MyTestMessage with the examples' registry: 7.2.0 raised.
    with pytest.raises(SerializationError, match="MyTestMessage"):
        docs.script("melange/examples/doc_examples/backend_manager.py")
    # The publisher built without a backend publishes through the default one.
    events = docs.module(EVENTS)
    docs.partial["publisher"].publish(
        "melangetutorial-queue", events.OrderResponse(id="o-1", reference="REF-DEFAULT")
    )
    assert broker.queue_depth("melangetutorial-queue").visible == 1
    docs.assert_warned("BackendManager", "SerializerRegistry(config)")


# ==================================================== advanced-topics/message-dedup.md
def test_redis_cache_handles_a_message_once_per_consumer(docs: Docs, broker: MemoryBackend) -> None:
    # "a RedisCache ... will control that no message is delivered twice to the same consumer"
    namespace = f"melange-test-compat7-{uuid.uuid4().hex}"
    client = redis.Redis(host="127.0.0.1", port=6379)
    try:
        cache_module = importlib.import_module("melange.infrastructure.cache")
        melange = importlib.import_module("melange")
        serializers = importlib.import_module("melange.serializers")
        cache = cache_module.RedisCache(
            host="127.0.0.1", port=6379, db=0, namespace=namespace, expire=60
        )
        registry = serializers.SerializerRegistry(
            {
                "serializers": {"json": serializers.JsonSerializer},
                "serializer_bindings": {dict: "json"},
            }
        )
        got: list[Any] = []
        dispatcher = melange.MessageDispatcher(registry, cache, backend=broker)
        dispatcher.attach_consumer(melange.Consumer(on_message=got.append))
        MessagingBackendFactory(broker).init_queue("dedup-queue")
        publisher = melange.QueuePublisher(registry, broker)
        for _ in range(2):  # a publisher retry: the same message twice (one producer id)
            publisher.publish("dedup-queue", {"n": 1}, producer_id="order-1")
        dispatcher.consume_event("dedup-queue")
        assert got == [{"n": 1}]
        assert broker.queue_depth("dedup-queue") == EMPTY
        docs.assert_warned("melange.infrastructure.cache", "RedisCache(**kwargs)")
    finally:
        keys = list(client.scan_iter(match=f"*{namespace}*"))
        if keys:
            client.delete(*keys)
        client.close()


# ==================================================== testing.md
class Finalizers:
    """The ``request`` the docs' test function takes: it only registers a finalizer."""

    def __init__(self) -> None:
        self.finalizers: list[Callable[[], None]] = []

    def addfinalizer(self, finalizer: Callable[[], None]) -> None:
        self.finalizers.append(finalizer)


def test_testing_page_asynchronous_test_with_threads(docs: Docs, broker: MemoryBackend) -> None:
    module = docs.module("tests/doc_examples/test_async.py")
    request = Finalizers()
    before = set(threading.enumerate())
    module.test_async_consumer(request)  # it asserts that the consumer set the value to 1
    # The page's test never stops its consume_loop thread (a lambda over `handler`).
    [(loop, handler)] = [
        (thread, inspect.getclosurevars(target).nonlocals["handler"])
        for thread in set(threading.enumerate()) - before
        if (target := getattr(thread, "_target", None)) is not None
        and getattr(target, "__name__", "") == "<lambda>"
        and "handler" in inspect.getclosurevars(target).nonlocals
    ]
    stop_dispatcher(handler, "the page's handler")
    loop.join(WAIT_SECONDS)
    assert not loop.is_alive(), "consume_loop() did not return after stop()"
    # "delete the queue to keep the environment clean": init_queue's result, then delete_queue.
    [teardown] = request.finalizers
    _, refused = refused_or_works(teardown, r"delete_queue|name")
    if refused is None:
        assert broker.get_queue("testqueue") is None
    docs.assert_warned(
        "Consumer(on_message)",
        "SerializerRegistry(config)",
        "SimpleMessageDispatcher(consumer, registry, backend=)",
        "consume_loop()",
        "QueuePublisher(registry, backend)",
    )


def test_testing_page_in_memory_backend(docs: Docs, output: Output) -> None:
    module = docs.module("tests/doc_examples/test_testing.py")
    module.test_inmemory_messaging_backend()
    # "upon publish ... the consumers can synchronously receive and process the message"
    assert output.text == "Hello Mary!\nHello Mary 2!\n"
    docs.assert_warned(
        "InMemoryMessagingBackend",
        "link_synchronously",
        "Consumer(on_message)",
        "SerializerRegistry(config)",
        "QueuePublisher(registry, backend)",
    )


# ==================================================== examples/saga-choreography.md
def test_saga_choreography_example(docs: Docs, broker: MemoryBackend, output: Output) -> None:
    docs.script(INIT_QUEUES)
    payment = docs.start("melange/examples/payment_service/app.py")
    saga = docs.start("melange/examples/saga_pattern/app.py")
    output.wait_for("Consuming...\nConsuming...", payment, saga)
    docs.script("melange/examples/saga_pattern/saga_triggerer.py", ["SOMEREFNUMBER"])
    # "on the payment service consumer screen, the confirmation that the order was paid and
    # immediately afterwards, on the saga orchestrator screen, the message that the order was
    # paid and marked as complete"
    for line in (
        "Sending payment for order SOMEREFNUMBER",
        "Order SOMEREFNUMBER paid successfully",
        "Order received with status: ORDER_PAID",
        "as COMPLETED",
    ):
        output.wait_for(line, payment, saga)
    payment.stop("dispatcher")
    saga.stop("consumer_handler")
    [finished] = saga.namespace["payment_consumer"].saga_repository.sagas.values()
    assert finished.state == "completed"
    assert broker.queue_depth("saga-updates") == EMPTY
    assert broker.queue_depth("payment-updates") == EMPTY
    docs.assert_warned("always_ack=True", "SimpleMessageDispatcher(consumer, registry, backend=)")


# ==================================================== where the warnings point
def test_deprecation_warnings_point_at_the_snippets_lines(
    docs: Docs, broker: MemoryBackend, output: Output
) -> None:
    # warnings.warn(..., stacklevel=...) must name the user's line, not melange's.
    docs.script(CREATE_QUEUE)
    with pytest.raises(SerializationError):
        docs.script("README.md: Publish")
    docs.module("tests/doc_examples/test_testing.py").test_inmemory_messaging_backend()
    publish_as_the_tutorial_means(docs, broker, "Hello World!")
    running = docs.start("README.md: Consume")
    output.wait_for("Hello World!\n", running)
    running.stop("message_dispatcher")
    assert docs.deprecations(), "no DeprecationWarning at all"
    assert docs.misplaced() == []
