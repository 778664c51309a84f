"""Byte-exact copies to dead-letter queues, and FIFO deduplication by producer id, over HTTP.

Foreign messages are sent and read back with plain boto3, not melange: what a
dead-letter queue holds must be what the original queue held, body byte for
byte and attribute for attribute (data types and Binary values included),
whatever melange itself would refuse to publish: 10 attributes, a body at the
queue's full size, attributes named like melange's own.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from melange_localsqs import LocalSQSBackend

from melange import MessagingBackendFactory
from melange.backends.base import OutgoingMessage, ReceivedMessage
from melange.consumers import consumer
from melange.dispatcher import MessageDispatcher
from melange.message import (
    DEAD_LETTER_REASON_ATTRIBUTE,
    DEAD_LETTER_SOURCE_ATTRIBUTE,
    PRODUCER_ID_ATTRIBUTE,
    Message,
)
from melange.publishers import QueuePublisher
from melange.serializers import SerializerRegistry
from melange.testing.conformance import POLL_TIMEOUT, ResourceNames, drain

EXTRAS = {DEAD_LETTER_REASON_ATTRIBUTE: "undecodable", DEAD_LETTER_SOURCE_ATTRIBUTE: "orders"}


@pytest.fixture
def names() -> ResourceNames:
    return ResourceNames()


@pytest.fixture
def backend(endpoint_url: str) -> Iterator[LocalSQSBackend]:
    created = LocalSQSBackend(endpoint_url=endpoint_url, sns=True)
    yield created
    created.close()


@pytest.fixture
def sqs(endpoint_url: str) -> Iterator[Any]:
    """A plain boto3 SQS client: the foreign producer, and the independent reader."""
    client = boto3.client(
        "sqs",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    yield client
    client.close()


def url_of(sqs: Any, queue: str) -> str:
    return str(sqs.get_queue_url(QueueName=queue)["QueueUrl"])


def raw_receive(sqs: Any, queue: str, expected: int = 1, polls: int = 10) -> list[dict[str, Any]]:
    """Receive (and delete) ``expected`` messages with boto3, in at most ``polls`` 1 s polls."""
    url = url_of(sqs, queue)
    messages: list[dict[str, Any]] = []
    for _ in range(polls):
        response = sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=1,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["MessageGroupId"],
        )
        for message in response.get("Messages", []):
            messages.append(message)
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        if len(messages) >= expected:
            break
    return messages


def receive_one(backend: LocalSQSBackend, queue: str) -> ReceivedMessage:
    (message,) = drain(backend, queue, 1, ack=False)
    return message


def string(value: str, data_type: str = "String") -> dict[str, Any]:
    return {"DataType": data_type, "StringValue": value}


def binary(value: bytes, data_type: str = "Binary") -> dict[str, Any]:
    return {"DataType": data_type, "BinaryValue": value}


TEN_ATTRIBUTES = {
    "a-string": string("plain"),
    "a-number": string("3.14159", "Number"),
    "an-int": string("-42", "Number.int"),
    "custom": string("v", "String.custom"),
    "bytes": binary(bytes(range(256))),
    "gif": binary(b"GIF89a\x00\x01", "Binary.gif"),
    "unicode": string("h\u00e9llo \U0001f600"),
    "spaces": string("  padded  "),
    "melange.manifest": string("someone.else.Type"),
    "zz-last": string("10th"),
}

CASES: dict[str, tuple[str | None, dict[str, dict[str, Any]], bool]] = {
    # name: (body, or None for the queue's maximum size; attributes; room for the extras)
    "ten-attributes": ('{"order": 1}', TEN_ATTRIBUTES, False),
    "maximum-size-body": (None, {}, False),
    "reserved-names": (
        "text",
        {
            "melange.body-encoding": string("gzip"),
            "melange.manifest": string("other.Manifest"),
            "melange.id": string("not a producer id"),
            "melange.serializer": string("msgpack"),
        },
        True,
    ),
    "binary-attribute": ("payload", {"blob": binary(b"\x00\xff\x10binary\x80")}, True),
    "junk-with-a-stray-encoding": ("junk", {"melange.body-encoding": string("base64")}, True),
    "unicode-body": ("\u00e9t\u00e9 \U0001f600\t\r\n", {"n": string("7", "Number")}, True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_forward_copies_a_foreign_message_byte_for_byte(
    case: str, backend: LocalSQSBackend, sqs: Any, names: ResourceNames
) -> None:
    """Sent with boto3, received and forwarded by melange, read back with boto3: identical.

    The dead-letter reason is added only where SQS has room (10 attributes, 256 KiB).
    """
    body, attributes, room = CASES[case]
    queue, dlq = names.queue(), names.queue("dlq")
    MessagingBackendFactory(backend).init_queue(queue, dead_letter_queue_name=dlq)
    if body is None:  # the largest body this queue takes (what the endpoint accepts)
        size = sqs.get_queue_attributes(
            QueueUrl=url_of(sqs, queue), AttributeNames=["MaximumMessageSize"]
        )["Attributes"]["MaximumMessageSize"]
        body = "x" * int(size)
    sent = {"QueueUrl": url_of(sqs, queue), "MessageBody": body}
    if attributes:
        sent["MessageAttributes"] = attributes
    sqs.send_message(**sent)
    received = receive_one(backend, queue)
    result = backend.forward(received, dlq, extra_attributes=EXTRAS)
    assert result.status == "accepted", result.error
    (copy,) = raw_receive(sqs, dlq)
    assert copy["Body"] == body
    copied = copy.get("MessageAttributes", {})
    assert {k: v for k, v in copied.items() if k not in EXTRAS} == attributes
    if room:
        assert {k: copied[k]["StringValue"] for k in EXTRAS} == EXTRAS
    else:
        assert not set(copied) & set(EXTRAS)
    backend.ack([received])


def test_forward_copies_an_sns_envelope_as_it_was_received(
    backend: LocalSQSBackend, sqs: Any, names: ResourceNames
) -> None:
    """A message in an SNS envelope (a subscription without raw delivery) is copied enveloped."""
    queue, dlq, topic = names.queue(), names.queue("dlq"), names.topic()
    MessagingBackendFactory(backend).init_queue(queue, dead_letter_queue_name=dlq)
    sns = backend.sns_client
    topic_arn = sns.create_topic(Name=topic)["TopicArn"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=url_of(sqs, queue), AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn)
    sns.publish(TopicArn=topic_arn, Message="enveloped")
    (original,) = raw_receive_without_delete(sqs, queue)
    received = receive_one(backend, queue)
    assert received.body == b"enveloped"  # melange unwraps it for consumers
    assert backend.forward(received, dlq).status == "accepted"
    (copy,) = raw_receive(sqs, dlq)
    assert copy["Body"] == original["Body"]


def raw_receive_without_delete(sqs: Any, queue: str) -> list[dict[str, Any]]:
    """Look at one message with boto3 and make it visible again at once."""
    url = url_of(sqs, queue)
    response = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=2, VisibilityTimeout=0)
    return list(response.get("Messages", []))


def test_forward_keeps_the_fifo_group_and_stores_a_repeated_copy_once(
    backend: LocalSQSBackend, sqs: Any, names: ResourceNames
) -> None:
    """FIFO: the group goes along; the deduplication id is the original's message id."""
    queue, dlq = names.fifo_queue(), names.fifo_queue("dlq")
    MessagingBackendFactory(backend).init_queue(queue, dead_letter_queue_name=dlq)
    sqs.send_message(
        QueueUrl=url_of(sqs, queue),
        MessageBody="in a group",
        MessageGroupId="customer-7",
        MessageDeduplicationId="foreign-dedup-1",
        MessageAttributes={"blob": binary(b"\x01\x02")},
    )
    received = receive_one(backend, queue)
    for _ in range(2):  # a crash between the copy and the ack repeats the copy
        assert backend.forward(received, dlq, extra_attributes=EXTRAS).status == "accepted"
    copies = raw_receive(sqs, dlq, expected=2, polls=2)
    assert len(copies) == 1
    (copy,) = copies
    assert copy["Body"] == "in a group"
    assert copy["Attributes"]["MessageGroupId"] == "customer-7"
    assert copy["MessageAttributes"]["blob"] == binary(b"\x01\x02")


def test_the_dispatcher_dead_letters_foreign_messages_exactly(
    backend: LocalSQSBackend, sqs: Any, names: ResourceNames
) -> None:
    """Undecodable foreign messages reach the DLQ as they were, even at SQS's limits.

    Before, the copy went through melange's publish checks: 10 attributes and the
    reserved names were refused (an ERROR per delivery until SQS's redrive).
    """
    queue, dlq = names.queue(), names.queue("dlq")
    MessagingBackendFactory(backend).init_queue(queue, dead_letter_queue_name=dlq)
    url = url_of(sqs, queue)
    sent = {
        "junk": {"melange.body-encoding": string("base64")},
        "ten": TEN_ATTRIBUTES,
        "named like melange": {"melange.serializer": string("nobody-knows-me")},
    }
    for body, attributes in sent.items():
        sqs.send_message(QueueUrl=url, MessageBody=body, MessageAttributes=attributes)

    @consumer(dict, name="nobody")  # takes no message of these
    def nobody(message: Message) -> None:
        raise AssertionError(f"handled {message!r}")

    dispatcher = MessageDispatcher(backend, queue, [nobody], wait_seconds=1.0, close_backend=False)
    stats = dispatcher.run_until_idle(idle_seconds=1.0, timeout=POLL_TIMEOUT, stop=True)
    assert stats.dead_lettered == 3, stats
    copies = {m["Body"]: m.get("MessageAttributes", {}) for m in raw_receive(sqs, dlq, 3)}
    assert set(copies) == set(sent)
    for body, attributes in sent.items():
        assert {k: v for k, v in copies[body].items() if k not in EXTRAS} == attributes, body


# ---------------------------------------------------------- FIFO and producer ids
def test_the_same_message_published_twice_to_a_fifo_queue_is_delivered_once(
    backend: LocalSQSBackend, names: ResourceNames
) -> None:
    """The producer id is the MessageDeduplicationId: a publish repeated after an unknown
    outcome is dropped by SQS. Without a producer id, each publish is a new message."""
    queue = names.fifo_queue()
    MessagingBackendFactory(backend).init_queue(queue)
    outgoing = SerializerRegistry().encode(Message({"order": 1}))
    assert PRODUCER_ID_ATTRIBUTE in outgoing.attributes
    for _ in range(2):
        assert backend.publish(queue, [outgoing])[0].ok
    anonymous = OutgoingMessage(b"no producer id")
    for _ in range(2):
        assert backend.publish(queue, [anonymous])[0].ok
    bodies = [m.body for m in drain(backend, queue, 4, timeout=3)]
    assert sorted(bodies) == sorted([outgoing.body, b"no producer id", b"no producer id"])


def test_a_producer_id_sqs_would_refuse_still_deduplicates(
    backend: LocalSQSBackend, names: ResourceNames
) -> None:
    """An id with spaces or accents is not a valid deduplication id: its hash is used."""
    queue = names.fifo_queue()
    MessagingBackendFactory(backend).init_queue(queue)
    publisher = QueuePublisher(backend)
    producer_id = f"caf\u00e9 order {uuid.uuid4()}"
    for _ in range(2):
        publisher.publish(queue, {"order": 2}, producer_id=producer_id)
    (delivered,) = drain(backend, queue, 2, timeout=3)
    assert delivered.attributes[PRODUCER_ID_ATTRIBUTE] == producer_id
