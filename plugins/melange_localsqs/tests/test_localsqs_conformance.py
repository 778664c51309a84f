"""melange's conformance suite against LocalSQSBackend over real HTTP.

Always against a moto server the session starts on a free port; also against
LocalStack when ``MELANGE_LOCALSTACK_ENDPOINT`` names one
(``plugins/melange_localsqs/scripts/localstack.sh run pytest ...``).

Where an emulator deviates from AWS, the backend follows the AWS documentation
and the test is marked, one at a time, in that emulator's table with the reason.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from melange_localsqs import LocalSQSBackend
from melange_localsqs.testing import LOCALSTACK_ENDPOINT_ENV, MotoServer

from melange.consumers import consumer
from melange.dispatcher import MessageDispatcher
from melange.factory import MessagingBackendFactory
from melange.message import Message
from melange.serializers import SerializerRegistry
from melange.testing.conformance import (
    POLL_TIMEOUT,
    BackendSpec,
    ConformanceSuite,
    ResourceNames,
    assert_empty,
    drain,
    requires,
)
from melange.testing.conformance._support import DeliveryGuarantee
from melange.testing.conformance.runtime import ORDER_MANIFEST, Order

MOTO_DEVIATIONS: dict[str, str] = {
    "test_deleting_a_subscribed_queue_leaves_the_topic_working": (
        "moto 5.2: once a subscribed queue is deleted, SNS PublishBatch answers with neither a "
        "Successful nor a Failed entry and delivers to no remaining queue (Publish fails with "
        "NonExistentQueue); AWS accepts the message and delivers it to the other subscriptions"
    ),
}
"""Conformance tests expected to fail on the moto server, by test id, each with the reason."""

LOCALSTACK_DEVIATIONS: dict[str, str] = {}
"""Conformance tests expected to fail on LocalStack, by test id, each with the reason."""


class LocalSQSConformance(ConformanceSuite):
    """The suite against one local endpoint; subclasses say which."""

    deviations: dict[str, str] = {}

    @pytest.fixture
    def endpoint(self) -> str:
        raise NotImplementedError

    @pytest.fixture
    def melange_backend(self, endpoint: str) -> Iterator[LocalSQSBackend]:
        backend = LocalSQSBackend(endpoint_url=endpoint)  # fresh per test, the server is shared
        yield backend
        backend.close()

    @pytest.fixture
    def melange_backend_spec(self, endpoint: str) -> BackendSpec:
        # A consumer process of the runtime tests reaches the same endpoint.
        return ("localsqs", {"endpoint_url": endpoint})

    @pytest.fixture
    def melange_delivery(self) -> DeliveryGuarantee:
        return "at-least-once"  # SQS standard queues may deliver a message twice

    @pytest.fixture(autouse=True)
    def _known_deviation(self, request: pytest.FixtureRequest) -> None:
        reason = self.deviations.get(request.node.name)
        if reason is not None:
            # strict: once the emulator is fixed the XPASS fails, so the entry gets removed.
            request.applymarker(pytest.mark.xfail(reason=reason, strict=True))

    @requires("topics")
    def test_dispatcher_takes_raw_sqs_bodies_and_sns_envelopes(
        self,
        melange_backend: LocalSQSBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
    ) -> None:
        """Messages of other producers get the dispatcher's documented outcome.

        A melange message wrapped in an SNS envelope (a subscription without raw
        delivery) is handled; a raw JSON body no consumer takes is unhandled; text
        that is not JSON, raw or enveloped, is undecodable. Both go to the DLQ as
        they were received, and the loop goes on.
        """
        backend = melange_backend
        queue, dlq, topic = melange_names.queue(), melange_names.queue("dlq"), melange_names.topic()
        melange_factory.init_queue(queue, dead_letter_queue_name=dlq)
        melange_factory.init_topic(topic)
        sqs, sns = backend.sqs_client, backend.sns_client
        url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        topic_arn = sns.create_topic(Name=topic)["TopicArn"]
        sns.subscribe(  # someone else's subscription, without raw delivery: envelopes
            TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn["Attributes"]["QueueArn"]
        )
        registry = SerializerRegistry()
        registry.bind(Order, ORDER_MANIFEST)
        order = registry.encode(Message(Order(1, "in an envelope"), attributes={"via": "sns"}))
        sns.publish(
            TopicArn=topic_arn,
            Message=order.body.decode(),
            MessageAttributes={
                name: {"DataType": "String", "StringValue": value}
                for name, value in order.attributes.items()
            },
        )
        sns.publish(TopicArn=topic_arn, Message="enveloped text")
        sqs.send_message(
            QueueUrl=url,
            MessageBody='{"legacy": true}',
            MessageAttributes={"count": {"DataType": "Number", "StringValue": "3"}},
        )
        sqs.send_message(QueueUrl=url, MessageBody="raw text")
        handled: list[tuple[object, dict[str, str]]] = []

        @consumer(Order, name="orders")
        def orders(message: Message) -> None:
            handled.append((message.body, dict(message.attributes)))

        dispatcher = MessageDispatcher(
            backend, queue, [orders], registry, wait_seconds=1.0, close_backend=False
        )
        stats = dispatcher.run_until_idle(idle_seconds=1.0, timeout=POLL_TIMEOUT, stop=True)
        assert handled == [(Order(1, "in an envelope"), {"via": "sns"})]
        assert (stats.undecodable, stats.unhandled, stats.dead_lettered) == (2, 1, 3), stats
        dead = {message.body: dict(message.attributes) for message in drain(backend, dlq, 3)}
        assert dead == {b"enveloped text": {}, b"raw text": {}, b'{"legacy": true}': {"count": "3"}}
        assert_empty(backend, queue)


class TestLocalSQSOnMoto(LocalSQSConformance):
    deviations = MOTO_DEVIATIONS

    @pytest.fixture
    def endpoint(self, moto_server: MotoServer) -> str:
        return moto_server.endpoint_url


if os.environ.get(LOCALSTACK_ENDPOINT_ENV):

    class TestLocalSQSOnLocalStack(LocalSQSConformance):
        deviations = LOCALSTACK_DEVIATIONS

        @pytest.fixture
        def endpoint(self, localstack_endpoint: str) -> str:
            return localstack_endpoint
