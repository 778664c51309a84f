"""Messages through SQS/SNS (moto): FIFO defaults, refusals before sending, decoding, settling."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from melange_aws import AWSBackend
from melange_aws.wire import DEFAULT_GROUP_ID, ENCODING_ATTRIBUTE

from melange import MessagingBackendFactory
from melange.backends.base import OutgoingMessage, ReceivedMessage
from melange.backends.memory import MemoryBackend
from melange.exceptions import (
    BrokerError,
    InvalidMessage,
    LeaseLost,
    MessageTooLarge,
    OutcomeUnknown,
    QueueNotFound,
)
from melange.topology import QueueSpec


class Sent:
    """Records the API parameters of every call of a client, by operation name."""

    def __init__(self, client: Any) -> None:
        self.params: dict[str, list[dict[str, Any]]] = {}
        client.meta.events.register("before-parameter-build", self._record)

    def _record(self, model: Any, params: dict[str, Any], **_: Any) -> None:
        self.params.setdefault(model.name, []).append(params)

    def operations(self) -> set[str]:
        """Names of the operations called so far."""
        return set(self.params)


@pytest.fixture
def factory(backend: AWSBackend) -> MessagingBackendFactory:
    """A factory over the test's backend."""
    return MessagingBackendFactory(backend)


@pytest.fixture
def sqs_sent(backend: AWSBackend) -> Sent:
    """What the backend's SQS client sends."""
    return Sent(backend.sqs_client)


def receive_all(backend: AWSBackend, queue: str, expected: int) -> list[ReceivedMessage]:
    """Receive and ack until ``expected`` messages arrived, for up to 5 s.

    moto compares visibility deadlines with the wall clock, so a message released
    with a zero timeout can take a moment to come back: poll, don't spin.
    """
    received: list[ReceivedMessage] = []
    deadline = time.monotonic() + 5
    while len(received) < expected and time.monotonic() < deadline:
        batch = backend.receive(queue)
        backend.ack(batch)
        received.extend(batch)
        if not batch:
            time.sleep(0.02)
    return received


def raw_receive(backend: AWSBackend, queue: str) -> list[dict[str, Any]]:
    """Receive straight from SQS, as a consumer that is not melange would."""
    url = backend.sqs_client.get_queue_url(QueueName=queue)["QueueUrl"]
    response = backend.sqs_client.receive_message(
        QueueUrl=url,
        MaxNumberOfMessages=10,
        MessageAttributeNames=["All"],
        MessageSystemAttributeNames=["All"],
    )
    messages: list[dict[str, Any]] = response.get("Messages", [])
    return messages


# ----------------------------------------------------------------------- FIFO
def test_fifo_messages_without_group_share_one_default_group(
    backend: AWSBackend, factory: MessagingBackendFactory
) -> None:
    """No group_id: one default MessageGroupId is sent, and read back as None."""
    factory.init_queue("jobs.fifo")
    backend.publish("jobs.fifo", [OutgoingMessage(b"1"), OutgoingMessage(b"2")])
    (first, second) = raw_receive(backend, "jobs.fifo")
    assert first["Attributes"]["MessageGroupId"] == DEFAULT_GROUP_ID
    assert second["Attributes"]["MessageGroupId"] == DEFAULT_GROUP_ID
    backend.sqs_client.change_message_visibility_batch(
        QueueUrl=backend.sqs_client.get_queue_url(QueueName="jobs.fifo")["QueueUrl"],
        Entries=[
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
            for i, m in enumerate((first, second))
        ],
    )
    received = receive_all(backend, "jobs.fifo", 2)
    assert [(m.body, m.group_id) for m in received] == [(b"1", None), (b"2", None)]


def test_only_explicit_dedup_ids_deduplicate(
    backend: AWSBackend, factory: MessagingBackendFactory, sqs_sent: Sent
) -> None:
    """Equal bodies without dedup_id are two messages: each gets a unique deduplication id."""
    factory.init_queue("jobs.fifo")
    backend.publish("jobs.fifo", [OutgoingMessage(b"same"), OutgoingMessage(b"same")])
    backend.publish("jobs.fifo", [OutgoingMessage(b"same")])
    assert [m.body for m in receive_all(backend, "jobs.fifo", 3)] == [b"same"] * 3
    entries = [e for p in sqs_sent.params["SendMessageBatch"] for e in p["Entries"]]
    dedup_ids = {entry["MessageDeduplicationId"] for entry in entries}
    assert len(dedup_ids) == 3
    attributes = backend.sqs_client.get_queue_attributes(
        QueueUrl=backend.sqs_client.get_queue_url(QueueName="jobs.fifo")["QueueUrl"],
        AttributeNames=["All"],
    )["Attributes"]
    assert attributes.get("ContentBasedDeduplication", "false") == "false"


def test_a_fifo_topic_deduplicates_before_fan_out(
    backend: AWSBackend, factory: MessagingBackendFactory
) -> None:
    """A repeated dedup_id on a FIFO topic reaches each FIFO queue once, in group order."""
    factory.init_queue("billing.fifo", ["invoices.fifo"])
    for body, dedup_id in ((b"a", "d-1"), (b"a again", "d-1"), (b"b", "d-2")):
        (result,) = backend.publish_to_topic(
            "invoices.fifo", [OutgoingMessage(body, {"k": "v"}, group_id="g", dedup_id=dedup_id)]
        )
        assert result.ok
    received = receive_all(backend, "billing.fifo", 2)
    assert [(m.body, m.group_id, dict(m.attributes)) for m in received] == [
        (b"a", "g", {"k": "v"}),
        (b"b", "g", {"k": "v"}),
    ]


def test_a_fifo_topic_delivers_to_a_standard_queue(
    backend: AWSBackend, factory: MessagingBackendFactory
) -> None:
    """SNS lets standard queues subscribe to FIFO topics; the message arrives."""
    factory.init_queue("analytics", ["prices.fifo"])
    backend.publish_to_topic("prices.fifo", [OutgoingMessage(b"42", group_id="sku-1")])
    assert [m.body for m in receive_all(backend, "analytics", 1)] == [b"42"]


# ----------------------------------------------------------- refused unsent
@pytest.mark.parametrize(
    ("kind", "destination", "message", "fragment"),
    [
        pytest.param(
            "queue",
            "jobs.fifo",
            OutgoingMessage(b"x", delay_seconds=5),
            "FIFO queues take only the queue's own delay_seconds",
            id="delay-on-fifo-queue",
        ),
        pytest.param(
            "topic",
            "events",
            OutgoingMessage(b"x", delay_seconds=5),
            "SNS has no per-message delay",
            id="delay-on-topic",
        ),
        pytest.param(
            "queue",
            "jobs",
            OutgoingMessage(b"x", dedup_id="d"),
            "deduplicate only on FIFO",
            id="dedup-on-standard-queue",
        ),
        pytest.param(
            "topic",
            "events",
            OutgoingMessage(b"x", dedup_id="d"),
            "deduplicate only on FIFO",
            id="dedup-on-standard-topic",
        ),
        pytest.param(
            "queue",
            "jobs",
            OutgoingMessage(b"x", {"empty": ""}),
            "non-empty",
            id="empty-attribute-value",
        ),
        pytest.param(
            "queue",
            "jobs",
            OutgoingMessage(b"x", {"bad": "nul\x00"}),
            "control characters",
            id="control-character-in-attribute",
        ),
        pytest.param(
            "queue",
            "jobs",
            OutgoingMessage(b"x", {"AWS.trace": "1"}),
            "reserved by AWS",
            id="aws-attribute-prefix",
        ),
        pytest.param(
            "queue",
            "jobs",
            OutgoingMessage(b"x", {ENCODING_ATTRIBUTE: "base64"}),
            "reserved by melange",
            id="melange-marker-attribute",
        ),
        pytest.param(
            "queue",
            "jobs",
            OutgoingMessage(b"x", {f"a{i}": "v" for i in range(10)}),
            "at most 9",
            id="ten-attributes",
        ),
        pytest.param(
            "queue",
            "jobs.fifo",
            OutgoingMessage(b"x", group_id="has space"),
            "group_id",
            id="bad-group-id",
        ),
    ],
)
def test_messages_aws_would_refuse_are_refused_before_anything_is_sent(
    backend: AWSBackend,
    factory: MessagingBackendFactory,
    kind: str,
    destination: str,
    message: OutgoingMessage,
    fragment: str,
) -> None:
    """The whole batch is refused with the reason; the valid message before it is not sent."""
    if kind == "queue":
        factory.init_queue(destination)
    else:
        factory.init_queue("listener", [destination])
    sent_sqs, sent_sns = Sent(backend.sqs_client), Sent(backend.sns_client)
    publish = backend.publish if kind == "queue" else backend.publish_to_topic
    with pytest.raises(InvalidMessage, match=fragment):
        publish(destination, [OutgoingMessage(b"valid", group_id="g"), message])
    assert not {"SendMessageBatch", "PublishBatch"} & (
        sent_sqs.operations() | sent_sns.operations()
    )


def test_a_binary_body_too_large_once_encoded_is_refused_unsent(
    backend: AWSBackend, factory: MessagingBackendFactory, sqs_sent: Sent
) -> None:
    """Base64 makes a binary body a third larger: over 256 KiB so, it is refused first."""
    factory.init_queue("blobs")
    fits = bytes(range(256)) * 700  # 179,200 bytes -> 238,936 as base64
    too_big = bytes(range(256)) * 800  # 204,800 bytes -> 273,068 as base64
    assert backend.publish("blobs", [OutgoingMessage(fits)])[0].ok
    with pytest.raises(MessageTooLarge, match="base64") as caught:
        backend.publish("blobs", [OutgoingMessage(too_big)])
    assert caught.value.limit == 262_144 and caught.value.size > 262_144
    assert len(sqs_sent.params["SendMessageBatch"]) == 1
    assert [m.body for m in receive_all(backend, "blobs", 1)] == [fits]


# ------------------------------------------------------------------- results
def test_per_message_failures_are_reported_with_the_aws_code(
    backend: AWSBackend, factory: MessagingBackendFactory
) -> None:
    """An entry SQS refuses gets its own error with broker_code; the others succeed."""
    factory.init_queue("jobs")

    def refuse_entry_one(parsed: dict[str, Any], **_: Any) -> None:
        # Stand in for SQS refusing one entry of the batch (e.g. KMS throttling).
        accepted = parsed["Successful"]
        refused = next(entry for entry in accepted if entry["Id"] == "1")
        accepted.remove(refused)
        parsed["Failed"] = [
            {"Id": "1", "SenderFault": False, "Code": "KMS.ThrottlingException", "Message": "slow"}
        ]

    backend.sqs_client.meta.events.register("after-call.sqs.SendMessageBatch", refuse_entry_one)
    results = backend.publish("jobs", [OutgoingMessage(b"0"), OutgoingMessage(b"1")])
    assert [(r.index, r.ok) for r in results] == [(0, True), (1, False)]
    error = results[1].error
    assert isinstance(error, BrokerError) and error.broker_code == "KMS.ThrottlingException"
    assert "publish to queue 'jobs'" in str(error)


def test_messages_an_answer_does_not_mention_are_unknown_not_refused(
    backend: AWSBackend, factory: MessagingBackendFactory
) -> None:
    """An answer cut short reads as an empty success: SQS may have stored those messages.

    Before, they were reported refused ("returned no result"), which says "not stored".
    """
    factory.init_queue("jobs")

    def forget_entry_one(parsed: dict[str, Any], **_: Any) -> None:
        parsed["Successful"] = [entry for entry in parsed["Successful"] if entry["Id"] != "1"]

    backend.sqs_client.meta.events.register("after-call.sqs.SendMessageBatch", forget_entry_one)
    results = backend.publish("jobs", [OutgoingMessage(b"0"), OutgoingMessage(b"1")])
    assert [r.status for r in results] == ["accepted", "unknown"]
    assert isinstance(results[1].error, OutcomeUnknown)
    assert "without a result" in str(results[1].error)
    assert sorted(m.body for m in receive_all(backend, "jobs", 2)) == [b"0", b"1"]


def test_the_producer_id_deduplicates_on_fifo_queues(
    backend: AWSBackend, factory: MessagingBackendFactory, sqs_sent: Sent
) -> None:
    """MessageDeduplicationId: the dedup_id, else the producer id, else a fresh one."""
    factory.init_queue("jobs.fifo")
    messages = [
        OutgoingMessage(b"a", {"melange.id": "p-1"}, dedup_id="explicit"),
        OutgoingMessage(b"b", {"melange.id": "p-2"}),
        OutgoingMessage(b"c"),
        OutgoingMessage(b"d"),
    ]
    backend.publish("jobs.fifo", messages)
    ids = [e["MessageDeduplicationId"] for e in sqs_sent.params["SendMessageBatch"][0]["Entries"]]
    assert ids[:2] == ["explicit", "p-2"]
    assert len({ids[2], ids[3]}) == 2 and not {ids[2], ids[3]} & {"explicit", "p-2"}


def test_batches_are_split_by_count_and_by_bytes(
    backend: AWSBackend, factory: MessagingBackendFactory, sqs_sent: Sent
) -> None:
    """25 small messages make 3 calls; 3 messages of 100 KB make 3 calls (256 KiB per call)."""
    factory.init_queue("jobs", visibility_timeout=60)
    assert all(r.ok for r in backend.publish("jobs", [OutgoingMessage(b"s")] * 25))
    assert [len(p["Entries"]) for p in sqs_sent.params["SendMessageBatch"]] == [10, 10, 5]
    sqs_sent.params.clear()
    big = OutgoingMessage(b"b" * 100_000)
    results = backend.publish("jobs", [big, big, big])
    assert [r.index for r in results] == [0, 1, 2] and all(r.ok for r in results)
    assert [len(p["Entries"]) for p in sqs_sent.params["SendMessageBatch"]] == [2, 1]


# ---------------------------------------------------------------- receiving
def test_messages_of_foreign_producers_are_read(
    backend: AWSBackend, factory: MessagingBackendFactory
) -> None:
    """A message sent by another SQS client, with Number and Binary attributes, is read."""
    factory.init_queue("inbox")
    url = backend.sqs_client.get_queue_url(QueueName="inbox")["QueueUrl"]
    backend.sqs_client.send_message(
        QueueUrl=url,
        MessageBody='{"legacy": true}',
        MessageAttributes={
            "count": {"DataType": "Number", "StringValue": "3"},
            "blob": {"DataType": "Binary", "BinaryValue": b"\x01\x02"},
            "name": {"DataType": "String", "StringValue": "x"},
        },
    )
    (message,) = receive_all(backend, "inbox", 1)
    assert message.body == b'{"legacy": true}'
    assert dict(message.attributes) == {"count": "3", "blob": "AQI=", "name": "x"}
    assert message.receive_count == 1


def test_a_subscription_without_raw_delivery_is_unwrapped(
    backend: AWSBackend, factory: MessagingBackendFactory
) -> None:
    """Someone else's non-raw SNS subscription delivers envelopes; melange unwraps them."""
    factory.init_queue("inbox")
    factory.init_topic("events")
    topic = backend.sns_client.create_topic(Name="events")["TopicArn"]
    queue_arn = backend.sqs_client.get_queue_attributes(
        QueueUrl=backend.sqs_client.get_queue_url(QueueName="inbox")["QueueUrl"],
        AttributeNames=["QueueArn"],
    )["Attributes"]["QueueArn"]
    backend.sns_client.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    body = b"\x00binary \xff"
    backend.publish_to_topic("events", [OutgoingMessage(body, {"event": "paid"})])
    (raw,) = raw_receive(backend, "inbox")
    assert json.loads(raw["Body"])["Type"] == "Notification"  # an envelope indeed
    backend.sqs_client.change_message_visibility(
        QueueUrl=backend.sqs_client.get_queue_url(QueueName="inbox")["QueueUrl"],
        ReceiptHandle=raw["ReceiptHandle"],
        VisibilityTimeout=0,
    )
    (message,) = receive_all(backend, "inbox", 1)
    assert (message.body, dict(message.attributes)) == (body, {"event": "paid"})


def test_long_polls_wait_whole_seconds_never_longer_than_asked(
    backend: AWSBackend, factory: MessagingBackendFactory
) -> None:
    """wait_seconds is rounded down to SQS's whole seconds; max_messages capped at 10."""
    factory.init_queue("jobs")
    backend.publish("jobs", [OutgoingMessage(b"ready")])
    received = Sent(backend.receive_client(1.9))  # long polls have clients of their own
    backend.receive("jobs", max_messages=50, wait_seconds=1.9)
    (params,) = received.params["ReceiveMessage"]
    assert (params["WaitTimeSeconds"], params["MaxNumberOfMessages"]) == (1, 10)
    assert params["MessageAttributeNames"] == ["All"]


def test_receiving_from_a_deleted_queue_raises_queue_not_found(
    backend: AWSBackend, factory: MessagingBackendFactory
) -> None:
    """A queue deleted by hand raises QueueNotFound on receive."""
    factory.init_queue("jobs")
    backend.receive("jobs")
    backend.sqs_client.delete_queue(
        QueueUrl=backend.sqs_client.get_queue_url(QueueName="jobs")["QueueUrl"]
    )
    with pytest.raises(QueueNotFound, match="jobs"):
        backend.receive("jobs")


# ------------------------------------------------------------------- settling
def test_settling_with_a_receipt_sqs_refuses(
    backend: AWSBackend, factory: MessagingBackendFactory
) -> None:
    """After an ack: a second ack and a nack do nothing, an extension raises LeaseLost."""
    factory.init_queue("jobs")
    backend.publish("jobs", [OutgoingMessage(b"done")])
    (message,) = backend.receive("jobs")
    backend.ack([message])
    backend.ack([message])
    backend.nack([message])
    with pytest.raises(LeaseLost) as caught:
        backend.extend_lease([message], 30)
    assert caught.value.message_id == message.message_id
    assert "ReceiptHandleIsInvalid" in str(caught.value)


def test_extending_leases_of_a_deleted_queue_raises_lease_lost(
    backend: AWSBackend, factory: MessagingBackendFactory
) -> None:
    """Settling after the queue was deleted: ack does nothing, extension reports the loss."""
    factory.init_queue("jobs")
    backend.publish("jobs", [OutgoingMessage(b"x")])
    (message,) = backend.receive("jobs")
    backend.delete_queue("jobs")
    backend.ack([message])
    with pytest.raises(LeaseLost, match="queue no longer exists"):
        backend.extend_lease([message], 10)


def test_settling_in_batches_of_ten_per_queue(
    backend: AWSBackend, factory: MessagingBackendFactory, sqs_sent: Sent
) -> None:
    """Acks of 12 messages from two queues go out per queue, at most 10 per call."""
    factory.init_queue("a", visibility_timeout=60)
    factory.init_queue("b", visibility_timeout=60)
    backend.publish("a", [OutgoingMessage(b"a")] * 10)
    backend.publish("b", [OutgoingMessage(b"b")] * 2)
    received = backend.receive("a") + backend.receive("b")
    assert len(received) == 12
    backend.ack(received)
    assert sorted(len(p["Entries"]) for p in sqs_sent.params["DeleteMessageBatch"]) == [2, 10]
    assert backend.receive("a") == [] and backend.receive("b") == []


def test_receipts_of_other_backends_are_refused(
    backend: AWSBackend, factory: MessagingBackendFactory
) -> None:
    """A message received from the memory backend cannot be settled here."""
    memory = MemoryBackend()
    memory.declare_queue(QueueSpec("q"))
    memory.publish("q", [OutgoingMessage(b"x")])
    (foreign,) = memory.receive("q")
    with pytest.raises(InvalidMessage, match="no receipt of an SQS backend"):
        backend.ack([foreign])
