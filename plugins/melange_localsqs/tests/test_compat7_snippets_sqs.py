"""The original melange's (7.x) documented snippets that use LocalSQSBackend/AWSBackend, on SQS.

The snippets (tests/compat7_docs.py embeds them and says how they run) talk to the session's
moto server over HTTP, adapted only in host and port, as their pages tell the reader to do
with ElasticMQ or LocalStack:

- ``LocalSQSBackend(host="localhost", port=9324)`` (README, tutorial): the port becomes the
  moto server's; the host stays.
- ``LocalSQSBackend(host=os.environ.get("SQSHOST"), port=os.environ.get("SQSPORT"))`` (the
  example apps, the testing page): unchanged; the environment holds what the original's
  docker-compose.yml set, a URL and a port string, pointing at the moto server.
- ``AWSBackend()`` (default-mb page): unchanged; ``AWS_ENDPOINT_URL`` names the moto server.

Each test checks what the page says happens, on the real queues (boto3 without melange), and
the DeprecationWarnings naming the 8.x forms. The factory page's SQS snippets:
test_localsqs_original_docs.py. The same snippets on the memory backend, with the reasons for
each expectation: tests/test_compat7_documented.py.

The snippets use fixed queue names; each test deletes them before and after.
"""

from __future__ import annotations

import inspect
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from melange_localsqs import LocalSQSBackend
from melange_localsqs.testing import MotoServer

from melange import MessagingBackendFactory
from melange.consumers import Consumer
from melange.dispatcher import MessageDispatcher
from melange.exceptions import SerializationError, TopicNotFound
from melange.message import Message
from melange.publishers import QueuePublisher
from melange.serializers import PickleSerializer, SerializerRegistry
from tests.compat7_docs import (
    WAIT_SECONDS,
    Docs,
    Output,
    adapt_port,
    default_backend_restored,
    docs_runner,
    stop_dispatcher,
    wait_until,
)

QUEUES = (
    "melangetutorial-queue",
    "melangetutorial-sub",
    "payment-updates",
    "order-updates",
    "saga-updates",
    "testqueue",
)
TOPICS = ("melangetutorial-topic",)

CREATE_QUEUE = "melange/examples/doc_examples/tutorial/create_queue.py"
INIT_QUEUES = "melange/examples/init_queues.py"
EVENTS = "melange/examples/payment_service/events.py"


# ------------------------------------------------------------------ the endpoint
def client(service: str, server: MotoServer) -> Any:
    """boto3 without melange, to see what the snippets did."""
    return boto3.session.Session().client(
        service,
        endpoint_url=server.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def delete_named(server: MotoServer) -> None:
    sqs, sns = client("sqs", server), client("sns", server)
    for url in sqs.list_queues().get("QueueUrls", []):
        name = url.rsplit("/", 1)[1]
        if name in QUEUES or name.removesuffix("-dlq") in QUEUES:
            sqs.delete_queue(QueueUrl=url)
    for topic in sns.list_topics().get("Topics", []):
        if topic["TopicArn"].rsplit(":", 1)[1] in TOPICS:
            sns.delete_topic(TopicArn=topic["TopicArn"])


def depth(server: MotoServer, queue: str) -> tuple[int, int]:
    """(visible, in flight) messages of ``queue``."""
    sqs = client("sqs", server)
    url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    attributes = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (
        int(attributes["ApproximateNumberOfMessages"]),
        int(attributes["ApproximateNumberOfMessagesNotVisible"]),
    )


def queue_exists(server: MotoServer, queue: str) -> bool:
    urls = client("sqs", server).list_queues().get("QueueUrls", [])
    return any(url.rsplit("/", 1)[1] == queue for url in urls)


@pytest.fixture
def server(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """The moto server, without the snippets' queues, named by the 7.x examples' variables."""
    for variable in list(os.environ):
        if variable.startswith(("AWS_", "MELANGE_")):
            monkeypatch.delenv(variable)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.endpoint_url)  # for AWSBackend()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # What the original's docker-compose.yml gave its examples: a URL and a port string.
    for service in ("SQS", "SNS"):
        monkeypatch.setenv(f"{service}HOST", f"http://{moto_server.host}")
        monkeypatch.setenv(f"{service}PORT", str(moto_server.port))
    delete_named(moto_server)
    yield moto_server
    delete_named(moto_server)


@pytest.fixture
def docs(monkeypatch: pytest.MonkeyPatch, server: MotoServer) -> Iterator[Docs]:
    with docs_runner(monkeypatch, adapt_port(server.port)) as runner:
        yield runner


@pytest.fixture
def output(capsys: pytest.CaptureFixture[str]) -> Output:
    return Output(capsys)


@pytest.fixture
def backend(server: MotoServer) -> Iterator[LocalSQSBackend]:
    """An 8.x backend on the same server, for what the tests themselves publish and read."""
    local = LocalSQSBackend(endpoint_url=server.endpoint_url)
    yield local
    local.close()


class Recorder(Consumer):
    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[Any] = []

    def process(self, message: Message) -> None:
        self.bodies.append(message.body)


def consume_with_8x(backend: LocalSQSBackend, queue: str, registry: Any) -> list[Any]:
    recorder = Recorder()
    dispatcher = MessageDispatcher(backend, queue, [recorder], registry, wait_seconds=0.2)
    dispatcher.run_until_idle(idle_seconds=0.5, timeout=WAIT_SECONDS, stop=True)
    return recorder.bodies


# ================================================================== README.md, tutorial
PUBLISH_SNIPPETS = {
    "README.md: Publish": ["melange.backends.sqs.localsqs"],
    "melange/examples/doc_examples/tutorial/publish.py": [],
}


@pytest.mark.parametrize("publish", list(PUBLISH_SNIPPETS))
def test_tutorial_create_queue_and_publish(docs: Docs, server: MotoServer, publish: str) -> None:
    docs.script(CREATE_QUEUE)
    assert queue_exists(server, "melangetutorial-queue")
    # As on 7.2.0, MyTestMessage has no serializer (pickle is bound to DomainEvent only).
    with pytest.raises(SerializationError, match="MyTestMessage"):
        docs.script(publish)
    assert depth(server, "melangetutorial-queue") == (0, 0)
    docs.assert_warned(
        *PUBLISH_SNIPPETS[publish],
        "SerializerRegistry(config)",
        "QueuePublisher(registry, backend)",
    )


def test_readme_consume(
    docs: Docs, server: MotoServer, backend: LocalSQSBackend, output: Output
) -> None:
    # (The tutorial's consume.py differs only in its imports: run on memory in the core tests.)
    docs.script(CREATE_QUEUE)
    tutorial = docs.module("melange/examples/doc_examples/tutorial/publish.py")
    QueuePublisher(backend, SerializerRegistry(PickleSerializer(), allow_pickle=True)).publish(
        "melangetutorial-queue", tutorial.MyTestMessage("Hello World!")
    )  # the message as the tutorial means it: a pickled MyTestMessage
    running = docs.start("README.md: Consume")
    output.wait_for("Hello World!\n", running)
    running.stop("message_dispatcher")
    assert depth(server, "melangetutorial-queue") == (0, 0)
    docs.assert_warned(
        "melange.backends.sqs.localsqs",
        "SerializerRegistry(config)",
        "SimpleMessageDispatcher(consumer, registry, backend=)",
        "consume_loop()",
    )


# ================================================================== components/publishers.md
def test_topic_publish_on_sqs(docs: Docs, server: MotoServer, backend: LocalSQSBackend) -> None:
    with pytest.raises(SerializationError, match="MyTestMessage"):
        docs.script("melange/examples/doc_examples/topic_publish.py")
    publisher = docs.partial["publisher"]
    event = docs.module(EVENTS).OrderResponse(id="o-1", reference="REF-SNS")
    # Deliberate: 8.x publishers do not create topics.
    with pytest.raises(TopicNotFound, match=r"MessagingBackendFactory(\(backend\))?\.init_topic"):
        publisher.publish("melangetutorial-topic", event)
    arns = [t["TopicArn"] for t in client("sns", server).list_topics().get("Topics", [])]
    assert not [arn for arn in arns if arn.endswith(":melangetutorial-topic")]
    MessagingBackendFactory(backend).init_queue("melangetutorial-sub", ["melangetutorial-topic"])
    publisher.publish("melangetutorial-topic", event)
    registry = docs.module("melange/examples/shared.py").serializer_registry
    [received] = consume_with_8x(backend, "melangetutorial-sub", registry)
    assert received.reference == "REF-SNS"
    docs.assert_warned("TopicPublisher(registry, backend)")


# ================================================================== advanced-topics/default-mb.md
def test_backend_manager_on_sqs(docs: Docs, server: MotoServer, backend: LocalSQSBackend) -> None:
    with default_backend_restored():
        namespace = docs.run(
            "docs/components/advanced-topics/default-mb.md: BackendManager",
            "from melange.backends import AWSBackend, BackendManager\n",
        )
        aws = namespace["BackendManager"]().get_default_backend()
        assert type(aws).__name__ == "AWSBackend"
        assert aws.sqs_client.meta.endpoint_url == server.endpoint_url
        MessagingBackendFactory(backend).init_queue("melangetutorial-queue")
        with pytest.raises(SerializationError, match="MyTestMessage"):
            docs.script("melange/examples/doc_examples/backend_manager.py")
        event = docs.module(EVENTS).OrderResponse(id="o-1", reference="REF-DEFAULT")
        docs.partial["publisher"].publish("melangetutorial-queue", event)
        assert depth(server, "melangetutorial-queue") == (1, 0)
    docs.assert_warned("BackendManager", "no backend (BackendManager default)")


# ================================================================== examples/*.md
def test_payment_service_example_on_sqs(docs: Docs, server: MotoServer, output: Output) -> None:
    docs.script(INIT_QUEUES)
    assert "Queues created." in output.text
    assert all(queue_exists(server, q) for q in ("payment-updates", "order-updates"))
    running = docs.start("melange/examples/payment_service/app.py")
    output.wait_for("Consuming...", running)
    docs.script("melange/examples/payment_service/triggerer.py", ["SOMEREFNUMBER"])
    output.wait_for("Order SOMEREFNUMBER paid successfully", running)
    wait_until(
        lambda: depth(server, "order-updates")[0] == 1 and depth(server, "saga-updates")[0] == 1,
        "an OrderStatus in order-updates and saga-updates",
        running,
    )
    running.stop("dispatcher")
    assert depth(server, "payment-updates") == (0, 0)
    docs.assert_warned(
        "LocalSQSBackend(host='http://...', port='...')",
        "MessageDispatcher(registry, backend=)",
        "consume_loop()",
    )


def test_saga_choreography_example_on_sqs(docs: Docs, server: MotoServer, output: Output) -> None:
    docs.script(INIT_QUEUES)
    payment = docs.start("melange/examples/payment_service/app.py")
    saga = docs.start("melange/examples/saga_pattern/app.py")
    output.wait_for("Consuming...\nConsuming...", payment, saga)
    docs.script("melange/examples/saga_pattern/saga_triggerer.py", ["SOMEREFNUMBER"])
    for line in (
        "Sending payment for order SOMEREFNUMBER",
        "Order SOMEREFNUMBER paid successfully",
        "Order received with status: ORDER_PAID",
        "as COMPLETED",
    ):
        output.wait_for(line, payment, saga)
    # Stopped together: each waits for its receive in flight (a long poll) to return.
    stops = [
        threading.Thread(target=running.stop, args=(variable,))
        for running, variable in ((payment, "dispatcher"), (saga, "consumer_handler"))
    ]
    for stop in stops:
        stop.start()
    for stop in stops:
        stop.join(WAIT_SECONDS)
    payment.check()
    saga.check()
    assert not payment.thread.is_alive() and not saga.thread.is_alive()
    [finished] = saga.namespace["payment_consumer"].saga_repository.sagas.values()
    assert finished.state == "completed"
    docs.assert_warned("always_ack=True")


# ================================================================== testing.md
class Finalizers:
    def __init__(self) -> None:
        self.finalizers: list[Any] = []

    def addfinalizer(self, finalizer: Any) -> None:
        self.finalizers.append(finalizer)


def test_testing_page_asynchronous_test_on_sqs(docs: Docs, server: MotoServer) -> None:
    # The page ran this test on ElasticMQ through SQSHOST/SQSPORT, as here on moto.
    module = docs.module("tests/doc_examples/test_async.py")
    request = Finalizers()
    before = set(threading.enumerate())
    module.test_async_consumer(request)
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
    assert not loop.is_alive()
    docs.assert_warned("LocalSQSBackend(host='http://...', port='...')", "consume_loop()")
