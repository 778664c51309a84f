"""Conformance tests for backends built on :class:`~melange_aws.AWSBackend`.

The shared suite (``melange.testing.conformance``) covers what every backend does;
this mixin adds what only SQS-based backends meet: messages from other producers
(raw SQS bodies, SNS envelopes from subscriptions without raw delivery). A plugin
built on ``AWSBackend`` (``localsqs``, or a third party's) adds it to its suite::

    class TestMyBackend(ConformanceSuite, SQSForeignProducerConformance): ...

It needs pytest, like the rest of the conformance suite.
"""

from __future__ import annotations

from melange.consumers import consumer
from melange.dispatcher import MessageDispatcher
from melange.factory import MessagingBackendFactory
from melange.message import DEAD_LETTER_REASON_ATTRIBUTE, Message
from melange.serializers import SerializerRegistry
from melange.testing.conformance import (
    POLL_TIMEOUT,
    ResourceNames,
    assert_empty,
    drain,
    requires,
    without_dead_letter_reason,
)
from melange.testing.conformance.runtime import ORDER_MANIFEST, Order
from melange_aws.backend import AWSBackend

__all__ = ["SQSForeignProducerConformance"]


class SQSForeignProducerConformance:
    """Tests of messages that other producers put on an SQS queue."""

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
        copies = drain(backend, dlq, 3)
        dead = {message.body: without_dead_letter_reason(message.attributes) for message in copies}
        assert dead == {b"enveloped text": {}, b"raw text": {}, b'{"legacy": true}': {"count": "3"}}
        reasons = {
            message.body: message.attributes[DEAD_LETTER_REASON_ATTRIBUTE] for message in copies
        }
        assert reasons[b"raw text"] == "undecodable"  # SQS has room for the reason
        assert_empty(backend, queue)
