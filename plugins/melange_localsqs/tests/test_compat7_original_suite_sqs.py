"""The original melange's (7.x) backend tests, rewritten for melange 8 through its 7.x API, on SQS.

The original's tests/backends/ (commit c62ee77 of the original repository) ran against
LocalStack: the factory creating topics and subscribed queues, FIFO and standard queues with
and without dead-letter queues, 100 messages through a FIFO queue in order and through a
standard one all delivered, and a topic whose subscriptions filter events by manifest. The
same scenarios run here against the session's moto server, with the 7.x forms a 7.x
application uses: ``LocalSQSBackend(host="http://...", port="...", sns_host=..., ...)`` as the
original's fixture built it, ``MessagingBackendFactory.init_queue(name, topics, dlq_name)``,
``QueuePublisher(registry, backend).publish(..., message_group_id=...)`` and
``SimpleMessageDispatcher(consumer, registry, backend=...).consume_event(queue)``. (Its direct
calls of 7.x backend methods: tests/test_compat7_original_suite.py, on every backend alike.)

What is checked is on the server, through boto3 without melange. Names are unique per test.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from melange_localsqs.testing import MotoServer

from melange.exceptions import MelangeError
from tests.compat7_docs import MODULES_7X, WAIT_SECONDS


@dataclass
class MyBananaEvent:
    value: int


@dataclass
class MyNonBananaEvent:
    value: int


# ------------------------------------------------------------------ fixtures
@pytest.fixture
def seven(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """The 7.x names, each imported afresh."""
    for name in MODULES_7X:
        monkeypatch.delitem(sys.modules, name, raising=False)
    melange = importlib.import_module("melange")
    serializers = importlib.import_module("melange.serializers")
    return SimpleNamespace(
        melange=melange,
        serializers=serializers,
        LocalSQSBackend=importlib.import_module("melange.backends").LocalSQSBackend,
    )


@pytest.fixture
def sqs(moto_server: MotoServer) -> Any:
    return raw("sqs", moto_server)


@pytest.fixture
def sns(moto_server: MotoServer) -> Any:
    return raw("sns", moto_server)


def raw(service: str, server: MotoServer) -> Any:
    return boto3.session.Session().client(
        service,
        endpoint_url=server.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


@pytest.fixture
def backend(seven: SimpleNamespace, moto_server: MotoServer) -> Iterator[Any]:
    """The original's fixture: LocalSQSBackend with 7.x's keywords, from its environment."""
    options: dict[str, Any] = {
        "host": f"http://{moto_server.host}",
        "port": str(moto_server.port),
        "sns_host": f"http://{moto_server.host}",
        "sns_port": str(moto_server.port),
    }
    consumer_options = {"wait_time_seconds": 1, "visibility_timeout": 10}
    with pytest.warns(DeprecationWarning, match=r"use LocalSQSBackend\(endpoint_url="):
        try:
            local = seven.LocalSQSBackend(**consumer_options, **options)
        except MelangeError as refused:
            # 8.x has these per dispatcher; refusing them is fine if the error says where.
            assert re.search(r"wait_seconds|MessageDispatcher", str(refused)), refused
            local = seven.LocalSQSBackend(**options)
    assert local.endpoint_url == moto_server.endpoint_url
    yield local
    local.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def attributes(sqs: Any, queue: str) -> dict[str, str]:
    url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    found: dict[str, str] = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])[
        "Attributes"
    ]
    return found


def subscribers(sns: Any, topic: str) -> list[str]:
    arn = sns.create_topic(Name=topic)["TopicArn"]  # idempotent: the ARN of the existing one
    subscriptions = sns.list_subscriptions_by_topic(TopicArn=arn)["Subscriptions"]
    return sorted(s["Endpoint"].rsplit(":", 1)[1] for s in subscriptions)


def factory(seven: SimpleNamespace, backend: Any) -> Any:
    return seven.melange.MessagingBackendFactory(backend=backend)


def json_registry(seven: SimpleNamespace) -> Any:
    s = seven.serializers
    with pytest.warns(DeprecationWarning):
        return s.SerializerRegistry(
            {"serializers": {"json": s.JsonSerializer}, "serializer_bindings": {dict: "json"}}
        )


def refused_or_works(action: Callable[[], Any], refusal: str) -> tuple[Any, MelangeError | None]:
    """Run a 7.x form: it works with a DeprecationWarning, or raises a MelangeError naming
    ``refusal``. Returns the result or the error."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = action()
        except MelangeError as error:
            assert re.search(refusal, str(error)), f"{error} does not name {refusal!r}"
            return None, error
    assert any(issubclass(w.category, DeprecationWarning) for w in caught), (
        "the 7.x form worked without a DeprecationWarning"
    )
    return result, None


def consume(
    seven: SimpleNamespace, backend: Any, queue: str, registry: Any, count: int
) -> list[Any]:
    """7.x's way: SimpleMessageDispatcher.consume_event passes until ``count`` arrived, and
    one more (what it then holds beyond ``count`` is returned too)."""
    received: list[Any] = []
    with pytest.warns(DeprecationWarning, match=r"use @consumer|use the @consumer"):
        recorder = seven.melange.Consumer(on_message=received.append)
    with pytest.warns(DeprecationWarning):
        dispatcher = seven.melange.SimpleMessageDispatcher(recorder, registry, backend=backend)
    deadline = time.monotonic() + WAIT_SECONDS
    while len(received) < count and time.monotonic() < deadline:
        with pytest.warns(DeprecationWarning, match=r"run_until_idle"):
            dispatcher.consume_event(queue)
    with pytest.warns(DeprecationWarning, match=r"run_until_idle"):
        dispatcher.consume_event(queue)
    return received


# ================================================================== test_factory.py
def test_create_topic(seven: SimpleNamespace, backend: Any, sns: Any) -> None:
    name = unique("mytopic")
    topic = factory(seven, backend).init_topic(name)
    assert any(t["TopicArn"].endswith(f":{name}") for t in sns.list_topics()["Topics"])
    # 7.x returned a TopicWrapper; the original checked its unwrapped_obj.
    refused_or_works(lambda: topic.unwrapped_obj, r"Plan|get_topic")


def test_create_and_subscribe_queue_with_a_topic(
    seven: SimpleNamespace, backend: Any, sqs: Any, sns: Any
) -> None:
    queue, dlq = unique("myqueue"), unique("mydlq")
    topics = [unique("mytopic1"), unique("mytopic2")]
    # 7.x's third positional argument, dlq_name, is melange 8's dead_letter_queue_name.
    created = factory(seven, backend).init_queue(queue, topics, dlq)
    redrive = json.loads(attributes(sqs, queue)["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"].endswith(f":{dlq}")
    # maxReceiveCount: 7.x set 4; the positional form is melange 8's, whose default is 5
    # (dlq_name= or compatible_with_7x=True keep 4).
    assert int(redrive["maxReceiveCount"]) in (4, 5)
    assert [subscribers(sns, topic) for topic in topics] == [[queue], [queue]]
    refused_or_works(lambda: created.unwrapped_obj, r"Plan|get_queue")


# ================================================================== test_localsqs.py: queues
@pytest.mark.parametrize("fifo", [True, False], ids=["fifo", "standard"])
@pytest.mark.parametrize("with_dlq", [False, True], ids=["", "with-dlq"])
def test_create_queue(
    seven: SimpleNamespace, backend: Any, sqs: Any, fifo: bool, with_dlq: bool
) -> None:
    suffix = ".fifo" if fifo else ""
    queue, dlq = unique("test-queue") + suffix, unique("test-queue-dlq") + suffix
    factory(seven, backend).init_queue(queue, dead_letter_queue_name=dlq if with_dlq else None)
    for name in [queue, dlq] if with_dlq else [queue]:
        assert attributes(sqs, name).get("FifoQueue", "false") == str(fifo).lower(), name


# ================================================================== test_localsqs.py: messages
def test_send_messages_through_a_fifo_queue_and_make_sure_they_are_always_ordered(
    seven: SimpleNamespace, backend: Any
) -> None:
    queue = unique("test-queue") + ".fifo"
    factory(seven, backend).init_queue(queue)
    registry = json_registry(seven)
    with pytest.warns(DeprecationWarning):
        publisher = seven.melange.QueuePublisher(registry, backend)
    with pytest.warns(DeprecationWarning) as caught:
        for i in range(100):
            publisher.publish(
                queue,
                {"message": f"my-message-{i}"},
                message_group_id="my-app",
                message_deduplication_id=str(uuid.uuid4()),
            )
    texts = {str(w.message) for w in caught}
    assert any(re.search(r"use .*\bgroup_id=", t) for t in texts), texts
    assert any(re.search(r"use .*\bdedup_id=", t) for t in texts), texts
    received = consume(seven, backend, queue, registry, 100)
    assert [m["message"] for m in received] == [f"my-message-{i}" for i in range(100)]


def test_send_messages_through_a_non_fifo_queue_delivers_them_all(
    seven: SimpleNamespace, backend: Any
) -> None:
    queue = unique("test-queue")
    factory(seven, backend).init_queue(queue)
    registry = json_registry(seven)
    with pytest.warns(DeprecationWarning):
        publisher = seven.melange.QueuePublisher(registry, backend)
    for i in range(100):
        publisher.publish(queue, {"message": f"my-message-{i}"})
    received = consume(seven, backend, queue, registry, 100)
    assert sorted(m["message"] for m in received) == sorted(f"my-message-{i}" for i in range(100))


# ================================================================== test_localsqs.py: filters
def test_queues_subscribed_to_a_topic_filter_the_events_by_manifest(
    seven: SimpleNamespace, backend: Any
) -> None:
    """7.x: ``filter_events=[manifest, ...]`` on a subscription; the manifest of a pickled
    event was its class name. melange 8 may refuse the keyword naming its form; then the
    scenario runs with that form, and the events must still be routed by their class."""
    topic = unique("dev-topic")
    queues = [unique("dev-queue") for _ in range(3)]
    filters: list[list[str] | None] = [["MyBananaEvent"], ["MyNonBananaEvent"], None]
    make = factory(seven, backend)
    make.init_topic(topic)
    for queue, events in zip(queues, filters, strict=True):
        if events is None:
            make.init_queue(queue, [topic])
            continue
        _, refused = refused_or_works(
            lambda: make.init_queue(queue, [topic], filter_events=events),  # noqa: B023
            r"subscription_filter=\{'melange\.manifest'",
        )
        if refused is not None:  # do what the error says for melange 8 producers
            make.init_queue(queue, [topic], subscription_filter={"melange.manifest": events})
    s = seven.serializers
    with pytest.warns(DeprecationWarning):
        registry = s.SerializerRegistry(
            {
                "serializers": {"pickle": s.PickleSerializer},
                "serializer_bindings": {},
                "default": "pickle",
            }
        )
    with pytest.warns(DeprecationWarning):
        publisher = seven.melange.TopicPublisher(registry, backend)
    publisher.publish(topic, MyBananaEvent(3))
    publisher.publish(topic, MyNonBananaEvent(5))
    everything = consume(seven, backend, queues[2], registry, 2)
    assert sorted(type(e).__name__ for e in everything) == ["MyBananaEvent", "MyNonBananaEvent"]
    assert consume(seven, backend, queues[0], registry, 1) == [MyBananaEvent(3)]
    assert consume(seven, backend, queues[1], registry, 1) == [MyNonBananaEvent(5)]
