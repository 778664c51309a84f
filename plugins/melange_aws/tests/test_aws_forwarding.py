"""The SendMessage parameters that copy a received message exactly (melange_aws.forwarding)."""

from __future__ import annotations

from typing import Any

from melange_aws.forwarding import attribute_size, send_message_params
from melange_aws.names import deduplication_id
from melange_aws.wire import MESSAGE_LIMIT

REASON = {"melange.dead-letter-reason": "undecodable"}


def received(body: str, attributes: dict[str, dict[str, Any]], **system: str) -> dict[str, Any]:
    """A ReceiveMessage element as boto3 returns it."""
    message: dict[str, Any] = {"MessageId": "m-1", "Body": body, "ReceiptHandle": "h"}
    if attributes:
        message["MessageAttributes"] = attributes
    if system:
        message["Attributes"] = {"ApproximateReceiveCount": "1", **system}
    return message


def test_body_attributes_and_data_types_go_back_as_received() -> None:
    """Body text and every attribute as SQS delivered them; the reason only on top."""
    attributes = {
        "n": {"DataType": "Number.float", "StringValue": "1.5"},
        "b": {"DataType": "Binary", "BinaryValue": b"\x00\xff"},
        "melange.body-encoding": {"DataType": "String", "StringValue": "base64"},
    }
    params = send_message_params(received("junk", attributes), REASON, fifo=False, message_id="m")
    assert params["MessageBody"] == "junk"
    assert params["MessageAttributes"] == {
        **attributes,
        "melange.dead-letter-reason": {"DataType": "String", "StringValue": "undecodable"},
    }
    assert "MessageGroupId" not in params and "MessageDeduplicationId" not in params


def test_fields_sendmessage_does_not_take_are_left_out() -> None:
    """The list fields some SDKs report on received attributes are not sent back."""
    attributes = {
        "s": {
            "DataType": "String",
            "StringValue": "v",
            "StringListValues": [],
            "BinaryListValues": [],
        }
    }
    params = send_message_params(received("x", attributes), {}, fifo=False, message_id="m")
    assert params["MessageAttributes"] == {"s": {"DataType": "String", "StringValue": "v"}}


def test_no_extra_attribute_past_ten() -> None:
    """A message with 10 attributes is copied with its 10, and no reason."""
    ten = {f"a{i}": {"DataType": "String", "StringValue": "v"} for i in range(10)}
    params = send_message_params(received("x", ten), REASON, fifo=False, message_id="m")
    assert params["MessageAttributes"] == ten
    nine = dict(list(ten.items())[:9])
    params = send_message_params(received("x", nine), REASON, fifo=False, message_id="m")
    assert len(params["MessageAttributes"]) == 10


def test_no_extra_attribute_past_the_size_limit() -> None:
    """The reason is added only while SQS's count (name, type, value) stays within 256 KiB."""
    reason_size = attribute_size(
        "melange.dead-letter-reason", {"DataType": "String", "StringValue": "undecodable"}
    )
    just_fits = "x" * (MESSAGE_LIMIT - reason_size)
    params = send_message_params(received(just_fits, {}), REASON, fifo=False, message_id="m")
    assert "melange.dead-letter-reason" in params["MessageAttributes"]
    one_over = just_fits + "x"
    params = send_message_params(received(one_over, {}), REASON, fifo=False, message_id="m")
    assert params == {"MessageBody": one_over}


def test_an_extra_never_replaces_an_original_nor_breaks_the_copy() -> None:
    """An original of the same name wins; a name or value SQS refuses is left out."""
    original = {"melange.dead-letter-reason": {"DataType": "String", "StringValue": "theirs"}}
    extras = {
        "melange.dead-letter-reason": "ours",
        "AWS.reserved": "refused by SQS",
        "bad value": "x",
        "empty": "",
        "ok": "yes",
    }
    params = send_message_params(received("x", original), extras, fifo=False, message_id="m")
    assert params["MessageAttributes"] == {
        **original,
        "ok": {"DataType": "String", "StringValue": "yes"},
    }


def test_fifo_copies_keep_the_group_and_deduplicate_by_message_id() -> None:
    """The group goes along (melange's default group for none); the dedup id is the message id."""
    message = received("x", {}, MessageGroupId="customer-7")
    params = send_message_params(message, {}, fifo=True, message_id="3f2a-11")
    assert (params["MessageGroupId"], params["MessageDeduplicationId"]) == ("customer-7", "3f2a-11")
    params = send_message_params(received("x", {}), {}, fifo=True, message_id="3f2a-11")
    assert params["MessageGroupId"] == "melange-default"
    # A standard target keeps a fair queue's group, and needs no deduplication id.
    params = send_message_params(message, {}, fifo=False, message_id="3f2a-11")
    assert params["MessageGroupId"] == "customer-7" and "MessageDeduplicationId" not in params


def test_deduplication_ids_sqs_refuses_are_hashed_stably() -> None:
    """Valid ids are used as they are; others become their SHA-256, the same every time."""
    assert deduplication_id("4df5692093173a34-1") == "4df5692093173a34-1"
    hashed = deduplication_id("caf\u00e9 order 1")
    assert hashed == deduplication_id("caf\u00e9 order 1") and len(hashed) == 64
    assert deduplication_id("x" * 129) != "x" * 129
