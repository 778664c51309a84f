"""melange 7.x's message format: read by every 8.x consumer, written with ``compatible_with_7x``.

The 7.x side of these messages is built the way 7.x's SQS backend built them (a
queue body ``{"Message": <payload text>}``; ``manifest`` and ``serializer_id``
attributes, the latter a ``Number``; topic messages in SNS's envelope, since 7.x
subscribed without raw delivery). The real 7.2.0 against these backends is in
plugins/melange_localsqs/tests/test_upgrade_from_7x.py.
"""

from __future__ import annotations

import base64
import json
import pickle
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from melange_aws import AWSBackend
from melange_aws.wire import decode_message
from melange_aws.wire7 import read_7x, write_7x

from melange.backends.base import ReceivedMessage
from melange.exceptions import ConfigurationError, InvalidMessage, SerializationError
from melange.factory import MessagingBackendFactory
from melange.message import Message
from melange.serializers import JSONSerializer, PickleSerializer, SerializerRegistry

PAYLOAD = {"order": 7, "note": 'quotes " and ünïcode'}


def attributes_7x(serializer_id: str = "1", manifest: str = "json") -> dict[str, Any]:
    """SQS MessageAttributes as 7.x's publish_to_queue set them."""
    return {
        "manifest": {"DataType": "String", "StringValue": manifest},
        "serializer_id": {"DataType": "Number", "StringValue": serializer_id},
    }


def queue_message_7x(content: str, **attributes: str) -> dict[str, Any]:
    """A ReceiveMessage element for a 7.x QueuePublisher message."""
    return {
        "MessageId": "m-7",
        "ReceiptHandle": "r-7",
        "Body": json.dumps({"Message": content}),
        "MessageAttributes": attributes_7x(**attributes),
    }


def topic_message_7x(content: str, serializer_id: str = "1", manifest: str = "json") -> dict:
    """A ReceiveMessage element for a 7.x TopicPublisher message (non-raw SNS delivery)."""
    envelope = {
        "Type": "Notification",
        "MessageId": "sns-7",
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:orders",
        "Message": content,
        "Timestamp": "2022-01-24T08:39:32.000Z",
        "MessageAttributes": {
            "manifest": {"Type": "String", "Value": manifest},
            "serializer_id": {"Type": "Number", "Value": serializer_id},
        },
    }
    return {"MessageId": "m-7", "ReceiptHandle": "r-7", "Body": json.dumps(envelope)}


def decoded_payload(raw: dict[str, Any], registry: SerializerRegistry | None = None) -> Any:
    """What an 8.x consumer's handler gets for ``raw``."""
    decoded = decode_message(raw)
    received = ReceivedMessage("q", decoded.body, decoded.attributes, "m-7", 1, None, None)
    return (registry or SerializerRegistry()).decode(received).body


# ------------------------------------------------------------------ reading
def test_a_7x_queue_message_gives_the_payload_7x_consumers_got() -> None:
    decoded = decode_message(queue_message_7x(json.dumps(PAYLOAD)))
    assert json.loads(decoded.body) == PAYLOAD  # the wrapper is gone
    assert decoded.attributes == {"melange.serializer": "json"}
    assert decoded_payload(queue_message_7x(json.dumps(PAYLOAD))) == PAYLOAD


def test_a_7x_topic_message_through_the_sns_envelope_gives_the_payload() -> None:
    assert decoded_payload(topic_message_7x(json.dumps(PAYLOAD))) == PAYLOAD


def test_a_7x_topic_payload_shaped_like_the_queue_wrapper_is_not_unwrapped_twice() -> None:
    payload = {"Message": "sent by 7.x to a topic"}
    assert decoded_payload(topic_message_7x(json.dumps(payload))) == payload


def test_a_7x_topic_message_with_raw_delivery_gives_the_payload() -> None:
    raw = {"MessageId": "m", "Body": json.dumps(PAYLOAD), "MessageAttributes": attributes_7x()}
    assert decoded_payload(raw) == PAYLOAD


def test_a_7x_pickle_message_is_unpickled_only_where_pickle_is_allowed() -> None:
    content = base64.encodebytes(pickle.dumps(PAYLOAD)).decode()  # 7.x: base64 text of pickle
    raw = queue_message_7x(content, serializer_id="2", manifest="dict")
    decoded = decode_message(raw)
    assert decoded.body == pickle.dumps(PAYLOAD)
    assert decoded.attributes["melange.serializer"] == "pickle"
    allowed = SerializerRegistry(allow_pickle=True)
    allowed.register(PickleSerializer())
    assert decoded_payload(raw, allowed) == PAYLOAD


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(
            {"Body": json.dumps({"Message": "x"})}, id="8.x-payload-shaped-like-the-wrapper"
        ),
        pytest.param(
            {
                "Body": json.dumps({"Message": "x"}),
                "MessageAttributes": {"serializer_id": {"DataType": "String", "StringValue": "a"}},
            },
            id="non-numeric-serializer_id",
        ),
    ],
)
def test_messages_not_in_7x_form_are_left_alone(raw: dict[str, Any]) -> None:
    decoded = decode_message(raw)
    assert json.loads(decoded.body) == {"Message": "x"}


def test_an_unknown_7x_serializer_keeps_the_payload_for_the_registry_to_refuse() -> None:
    attributes = {"serializer_id": "9", "manifest": "Custom"}
    body, base64_text = read_7x(json.dumps({"Message": "abc"}), attributes, enveloped=False)
    assert (body, base64_text) == ("abc", False)
    # 7.x's number is kept: the registry reads it with that 7.x serializer, or refuses it.
    assert attributes == {"melange.manifest": "Custom", "serializer_id": "9"}
    with pytest.raises(SerializationError, match=r"no serializer with 7\.x id 9"):
        decoded_payload(queue_message_7x("abc", serializer_id="9", manifest="Custom"))


class Banana7x:  # a 7.x custom serializer, as 7.x's serialization.md describes one
    @staticmethod
    def identifier() -> int:
        return 40

    def manifest(self, data: Any) -> str:
        return "BananaEvent"

    def serialize(self, data: Any) -> str:
        return json.dumps({"value": data["banana"]})

    def deserialize(self, data: str, manifest: str | None = None) -> Any:
        return {"banana": json.loads(data)["value"]}


def banana_registry() -> SerializerRegistry:
    with pytest.warns(DeprecationWarning):
        return SerializerRegistry(
            {
                "serializers": {"json": JSONSerializer, "banana": Banana7x},
                "serializer_bindings": {dict: "banana"},
                "default": "json",
            }
        )


def test_a_7x_custom_serializer_message_is_read_by_that_serializer() -> None:
    # 7.2.0 sent Body '{"Message": "{\"value\": \"b1\"}"}' with manifest BananaEvent and
    # serializer_id 40 (captured from 7.2.0's QueuePublisher on a moto server).
    raw = queue_message_7x(json.dumps({"value": "b1"}), serializer_id="40", manifest="BananaEvent")
    assert decoded_payload(raw, banana_registry()) == {"banana": "b1"}


# ------------------------------------------------------------------ writing
def test_written_7x_form_reads_back_as_the_8x_message() -> None:
    attributes = {"melange.serializer": "json", "melange.id": "p-1", "kind": "paid"}
    text = write_7x(json.dumps(PAYLOAD), attributes, queue=True)
    assert json.loads(json.loads(text)["Message"]) == PAYLOAD  # what 7.x's reader unwraps
    assert attributes["serializer_id"] == "1" and attributes["manifest"] == "json"
    sent = {"Body": text, "MessageAttributes": {}}
    for name, value in attributes.items():
        sent["MessageAttributes"][name] = {"DataType": "String", "StringValue": value}
    decoded = decode_message(sent)
    assert json.loads(decoded.body) == PAYLOAD
    assert decoded.attributes == {"melange.serializer": "json", "melange.id": "p-1", "kind": "paid"}


def test_only_7x_serializers_are_written_in_7x_form() -> None:
    attributes = {"melange.serializer": "msgpack"}
    assert write_7x("abc", attributes, queue=True) == "abc"
    assert attributes == {"melange.serializer": "msgpack"}


def test_a_7x_custom_serializer_payload_is_written_as_7x_wrote_it() -> None:
    outgoing = banana_registry().encode({"banana": "b1"}, producer_id=False)
    attributes = dict(outgoing.attributes)
    text = write_7x(outgoing.body.decode(), attributes, queue=True)
    # What 7.2.0 wrote for it (see test_a_7x_custom_serializer_message_is_read_by_that_serializer).
    assert json.loads(text) == {"Message": '{"value": "b1"}'}
    assert attributes["serializer_id"] == "40" and attributes["manifest"] == "BananaEvent"
    assert write_7x('{"value": "b1"}', dict(outgoing.attributes), queue=False) == '{"value": "b1"}'


# ------------------------------------------------------- against moto's SQS/SNS
@pytest.fixture
def legacy(mocked_aws: None) -> Iterator[AWSBackend]:
    backend = AWSBackend(compatible_with_7x=True)
    yield backend
    backend.close()


def test_compatible_backend_sends_what_7x_reads_and_8x_decodes(
    legacy: AWSBackend, backend: AWSBackend
) -> None:
    MessagingBackendFactory(legacy).init_queue("orders-7x")
    registry = SerializerRegistry()
    legacy.publish("orders-7x", [registry.encode(Message(PAYLOAD, attributes={"k": "v"}))])
    sqs = boto3.client("sqs")
    url = sqs.get_queue_url(QueueName="orders-7x")["QueueUrl"]
    raw = sqs.receive_message(QueueUrl=url, MessageAttributeNames=["All"], VisibilityTimeout=0)
    (message,) = raw["Messages"]
    # What 7.x's _construct_message reads: the wrapper, manifest and a numeric serializer_id.
    assert json.loads(json.loads(message["Body"])["Message"]) == PAYLOAD
    assert message["MessageAttributes"]["serializer_id"]["StringValue"] == "1"
    assert message["MessageAttributes"]["manifest"]["StringValue"] == "json"
    (received,) = backend.receive("orders-7x", 10, 0)
    assert registry.decode(received).body == PAYLOAD
    assert dict(received.attributes).keys() == {"k", "melange.serializer", "melange.id"}


def subscription_raw(topic: str) -> str:
    sns = boto3.client("sns")
    arn = sns.create_topic(Name=topic)["TopicArn"]
    (subscription,) = sns.list_subscriptions_by_topic(TopicArn=arn)["Subscriptions"]
    attributes = sns.get_subscription_attributes(SubscriptionArn=subscription["SubscriptionArn"])
    return str(attributes["Attributes"].get("RawMessageDelivery", "false"))


def test_compatible_backend_subscribes_without_raw_delivery_and_keeps_it(
    legacy: AWSBackend, backend: AWSBackend
) -> None:
    MessagingBackendFactory(legacy).init_queue("audit-7x", ["payments-7x"])
    assert subscription_raw("payments-7x") == "false"
    MessagingBackendFactory(legacy).init_queue("audit-7x", ["payments-7x"])  # a re-init
    assert subscription_raw("payments-7x") == "false"
    registry = SerializerRegistry()
    legacy.publish_to_topic("payments-7x", [registry.encode(PAYLOAD)])
    (received,) = backend.receive("audit-7x", 10, 0)  # through SNS's envelope
    assert registry.decode(received).body == PAYLOAD
    MessagingBackendFactory(backend).init_queue("audit-7x", ["payments-7x"])  # option off
    assert subscription_raw("payments-7x") == "true"


def test_compatible_backend_keeps_room_for_the_7x_attributes(legacy: AWSBackend) -> None:
    MessagingBackendFactory(legacy).init_queue("full-7x")
    registry = SerializerRegistry()
    seven = {f"a{i}": "v" for i in range(5)}  # + melange.serializer, melange.id = 7
    legacy.publish("full-7x", [registry.encode(Message(PAYLOAD, attributes=seven))])
    eight = {f"a{i}": "v" for i in range(6)}
    with pytest.raises(InvalidMessage, match="compatible_with_7x"):
        legacy.publish("full-7x", [registry.encode(Message(PAYLOAD, attributes=eight))])


def test_compatible_with_7x_must_be_a_bool(mocked_aws: None) -> None:
    with pytest.raises(ConfigurationError, match="compatible_with_7x must be True or False"):
        AWSBackend(compatible_with_7x="yes")  # type: ignore[arg-type]


def receive_count(queue: str) -> int:
    sqs = boto3.client("sqs")
    url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["RedrivePolicy"])
    return int(json.loads(attributes["Attributes"]["RedrivePolicy"])["maxReceiveCount"])


def test_compatible_backend_keeps_7x_dead_letter_count(
    legacy: AWSBackend, backend: AWSBackend
) -> None:
    MessagingBackendFactory(legacy).init_queue("billing-7x", dead_letter_queue_name="billing-dlq")
    assert receive_count("billing-7x") == 4  # 7.x's count, kept by a re-init while compatible
    MessagingBackendFactory(legacy).init_queue(
        "billing-7x", dead_letter_queue_name="billing-dlq", max_receive_count=6
    )
    assert receive_count("billing-7x") == 6  # said explicitly: done
    MessagingBackendFactory(backend).init_queue("billing-7x", dead_letter_queue_name="billing-dlq")
    assert receive_count("billing-7x") == 5  # melange 8's default once the option is off
