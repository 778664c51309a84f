"""melange's conformance suite against the aws backend, inside moto's in-process mock.

Deviations of moto from AWS are marked one test at a time in KNOWN_DEVIATIONS,
each with the reason; the backend itself follows the AWS documentation.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from melange_aws import AWSBackend
from melange_localsqs.testing import MotoServer

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

KNOWN_DEVIATIONS: dict[str, str] = {
    "test_deleting_a_subscribed_queue_leaves_the_topic_working": (
        "moto 5.2 fails an SNS publish when a subscribed SQS queue was deleted (PublishBatch "
        "reports the entry neither Successful nor Failed, Publish raises NonExistentQueue); on "
        "AWS, SNS delivers to subscriptions asynchronously, so the publish succeeds and only "
        "that delivery fails (SNS message delivery retries)"
    ),
}
"""Conformance tests expected to fail on moto, by test id, each with the reason."""


@pytest.fixture(scope="module")
def moto_server() -> Iterator[MotoServer]:
    """A moto server over HTTP, for the runtime tests that run a consumer in another process.

    The in-process mock cannot be reached from another process; against this
    server the aws backend itself (not localsqs) talks real HTTP.
    """
    with MotoServer() as server:
        yield server


class TestAWSBackend(ConformanceSuite):
    """The whole suite, each test on a fresh backend inside a fresh moto mock."""

    @pytest.fixture
    def melange_backend(self, mocked_aws: None) -> Iterator[AWSBackend]:
        """An AWSBackend configured by the (dummy) environment alone."""
        backend = AWSBackend()
        yield backend
        backend.close()

    @pytest.fixture
    def melange_backend_spec(self, moto_server: MotoServer) -> BackendSpec:
        """The aws backend against the moto server, with explicit dummy settings."""
        return (
            "aws",
            {
                "endpoint_url": moto_server.endpoint_url,
                "region_name": "us-east-1",
                "aws_access_key_id": "AKIAMELANGETESTKEY01",
                "aws_secret_access_key": "melange/test/SECRET+key/0123456789abcdefghij",
            },
        )

    @pytest.fixture
    def melange_delivery(self) -> DeliveryGuarantee:
        """SQS standard queues deliver at least once."""
        return "at-least-once"  # SQS standard queues may deliver a message twice

    @pytest.fixture(autouse=True)
    def _known_deviation(self, request: pytest.FixtureRequest) -> None:
        """Mark the known moto deviations as strict xfails."""
        reason = KNOWN_DEVIATIONS.get(request.node.name)
        if reason is not None:
            request.applymarker(pytest.mark.xfail(reason=reason, strict=True))

    @requires("topics")
    def test_dispatcher_takes_raw_sqs_bodies_and_sns_envelopes(
        self,
        melange_backend: AWSBackend,
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
