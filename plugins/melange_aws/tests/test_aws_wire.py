"""Bodies and attributes on the wire: encoding, sizes, and reading what arrives."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from melange_aws.wire import (
    BASE64,
    DEFAULT_GROUP_ID,
    EMPTY,
    EMPTY_BODY_TEXT,
    ENCODING_ATTRIBUTE,
    MAX_ATTRIBUTES,
    MAX_MESSAGE_SIZE,
    MESSAGE_LIMIT,
    decode_message,
    encode_body,
    is_valid_text,
    message_attributes,
    sns_envelope,
    wire_size,
)

TEXT_BODIES = [
    pytest.param(b'{"amount": 42}', id="json"),
    pytest.param("Grüße, 世界 ✓ 🎉".encode(), id="unicode"),
    pytest.param(b"tab\tnewline\ncarriage\r", id="allowed-control-characters"),
    pytest.param(b" ", id="one-space"),
    pytest.param("\ufeffbom".encode(), id="byte-order-mark"),
    pytest.param("\U0010fffd".encode(), id="last-plane"),
]

ENCODED_BODIES = [
    pytest.param(bytes(range(256)), BASE64, id="all-bytes"),
    pytest.param(b"\x00", BASE64, id="nul"),
    pytest.param(b"vertical\x0btab", BASE64, id="vertical-tab"),
    pytest.param(b"\xff\xfe not utf-8", BASE64, id="invalid-utf-8"),
    pytest.param("\ufffe".encode(), BASE64, id="noncharacter-fffe"),
    pytest.param(b"\xed\xa0\x80", BASE64, id="encoded-surrogate"),
    pytest.param(b"", EMPTY, id="empty"),
]


def sqs_message(
    text: str, attributes: dict[str, Any] | None = None, **system: str
) -> dict[str, Any]:
    """A ReceiveMessage element as boto3 returns it."""
    message: dict[str, Any] = {"MessageId": "m-1", "ReceiptHandle": "r-1", "Body": text}
    if attributes is not None:
        message["MessageAttributes"] = attributes
    if system:
        message["Attributes"] = system
    return message


def received(body: bytes, attributes: dict[str, str]) -> dict[str, Any]:
    """What SQS hands back for a message melange sent with ``body`` and ``attributes``."""
    text, encoding = encode_body(body)
    return sqs_message(text, message_attributes(attributes, encoding))


@pytest.mark.parametrize("body", TEXT_BODIES)
def test_text_bodies_travel_unchanged(body: bytes) -> None:
    """A body of UTF-8 text SQS accepts is sent as it is, without a marker."""
    text, encoding = encode_body(body)
    assert (text.encode(), encoding) == (body, None)
    assert wire_size(body, {}) == len(body)


@pytest.mark.parametrize(("body", "encoding"), ENCODED_BODIES)
def test_other_bodies_travel_encoded_with_a_marker(body: bytes, encoding: str) -> None:
    """Binary, control-character and empty bodies travel as accepted text plus a marker."""
    text, used = encode_body(body)
    assert used == encoding
    assert is_valid_text(text), "what is sent must be text SQS and SNS accept"
    if encoding == BASE64:
        assert base64.b64decode(text) == body
    else:
        assert text == EMPTY_BODY_TEXT


@pytest.mark.parametrize("body", [*TEXT_BODIES, *(p.values[0] for p in ENCODED_BODIES)])
def test_every_body_round_trips_byte_for_byte(body: bytes) -> None:
    """Whatever the body, the receiver gets the same bytes and no marker attribute."""
    decoded = decode_message(received(body, {"kind": "k"}))
    assert decoded.body == body
    assert decoded.attributes == {"kind": "k"}, "the marker attribute must not reach the consumer"


def test_wire_size_counts_what_aws_counts() -> None:
    """The wire size counts body, attribute names, data types and values as AWS does."""
    # AWS: body + each attribute's name, data type ("String") and value, in UTF-8 bytes.
    assert wire_size(b"abc", {"k": "vé"}) == 3 + (1 + 6 + 3)
    # A base64 body is a third larger and carries the marker attribute.
    marker = len(ENCODING_ATTRIBUTE) + 6 + len(BASE64)
    assert wire_size(b"\x00" * 3, {}) == 4 + marker
    assert wire_size(b"\x00" * 4, {}) == 8 + marker
    assert wire_size(b"", {}) == len(EMPTY_BODY_TEXT) + len(ENCODING_ATTRIBUTE) + 6 + len(EMPTY)


def test_largest_text_message_fits_aws_whatever_its_attributes() -> None:
    """The declared max_message_size plus AWS's data-type bytes is exactly AWS's limit."""
    # melange counts body + names + values; AWS adds 6 bytes per attribute for "String".
    attributes = {f"a{index}": "v" for index in range(MAX_ATTRIBUTES)}
    melange_size = sum(len(k) + len(v) for k, v in attributes.items())
    body = b"x" * (MAX_MESSAGE_SIZE - melange_size)
    assert wire_size(body, attributes) == MESSAGE_LIMIT
    assert wire_size(body + b"x", attributes) == MESSAGE_LIMIT + 1


def test_message_attributes_are_strings_plus_the_marker() -> None:
    """Attributes are sent as String, the marker only when the body was encoded."""
    assert message_attributes({"a": "1"}, None) == {"a": {"DataType": "String", "StringValue": "1"}}
    assert message_attributes({}, BASE64) == {
        ENCODING_ATTRIBUTE: {"DataType": "String", "StringValue": BASE64}
    }


@pytest.mark.parametrize(
    ("value", "valid"),
    [("v", True), ("", False), ("a\x00b", False), ("tab\there", True), ("\x7f", True)],
)
def test_is_valid_text(value: str, valid: bool) -> None:
    """Values must be non-empty text of the characters SQS allows."""
    assert is_valid_text(value) is valid


# ------------------------------------------------------------------ decoding
def envelope(message: str, attributes: dict[str, dict[str, str]] | None = None) -> str:
    """An SNS notification as a subscription without raw delivery puts it in SQS."""
    document: dict[str, Any] = {
        "Type": "Notification",
        "MessageId": "sns-1",
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:orders",
        "Message": message,
        "Timestamp": "2025-01-01T00:00:00.000Z",
        "SignatureVersion": "1",
    }
    if attributes is not None:
        document["MessageAttributes"] = attributes
    return json.dumps(document, indent=2)


def test_sns_envelope_is_unwrapped_with_its_attributes() -> None:
    """A non-raw SNS delivery yields the published message and its attributes as strings."""
    text = envelope(
        '{"id": 7}',
        {
            "event": {"Type": "String", "Value": "paid"},
            "amount": {"Type": "Number", "Value": "12.5"},
            "blob": {"Type": "Binary", "Value": "AAE="},
        },
    )
    decoded = decode_message(sqs_message(text))
    assert decoded.body == b'{"id": 7}'
    assert decoded.attributes == {"event": "paid", "amount": "12.5", "blob": "AAE="}


def test_sns_envelope_of_an_encoded_melange_body_is_decoded() -> None:
    """An encoded melange body inside an SNS envelope is decoded too."""
    body = b"\x00\xff binary"
    text, encoding = encode_body(body)
    assert encoding == BASE64
    marker = {ENCODING_ATTRIBUTE: {"Type": "String", "Value": BASE64}}
    decoded = decode_message(
        sqs_message(envelope(text, {**marker, "k": {"Type": "String", "Value": "v"}}))
    )
    assert (decoded.body, decoded.attributes) == (body, {"k": "v"})


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('{"Type": "Notification", "Message": "x"}', id="no-topic-arn"),
        pytest.param(
            '{"Type": "SubscriptionConfirmation", "TopicArn": "arn:x", "MessageId": "1", '
            '"Message": "x"}',
            id="other-type",
        ),
        pytest.param(
            '{"TopicArn": "arn:x", "Type": "Notification", "MessageId": "1"}', id="no-message"
        ),
        pytest.param('{"TopicArn": broken', id="not-json"),
        pytest.param('["TopicArn"]', id="not-an-object"),
    ],
)
def test_bodies_that_are_not_envelopes_stay_as_they_are(text: str) -> None:
    """JSON that is not a complete SNS notification is delivered unchanged."""
    assert sns_envelope(text) is None
    assert decode_message(sqs_message(text)).body == text.encode()


def test_foreign_producer_attributes_become_strings() -> None:
    """Number, Binary and custom-typed attributes of other producers arrive as strings."""
    decoded = decode_message(
        sqs_message(
            "plain",
            {
                "s": {"DataType": "String", "StringValue": "text"},
                "n": {"DataType": "Number", "StringValue": "42"},
                "b": {"DataType": "Binary", "BinaryValue": b"\x00\x01"},
                "custom": {"DataType": "String.uuid", "StringValue": "u-1"},
                "odd": "not a mapping",
            },
        )
    )
    assert decoded.body == b"plain"
    assert decoded.attributes == {"s": "text", "n": "42", "b": "AAE=", "custom": "u-1"}


def test_a_marker_on_text_that_is_not_base64_keeps_text_and_marker() -> None:
    """A marker on text that is not base64 leaves text and marker for the consumer."""
    # Not melange's doing (a foreign producer set the attribute): deliver what arrived.
    message = sqs_message("not base64!", message_attributes({}, BASE64))
    decoded = decode_message(message)
    assert decoded.body == b"not base64!"
    assert decoded.attributes == {ENCODING_ATTRIBUTE: BASE64}


def test_missing_or_odd_fields_do_not_fail() -> None:
    """A message with missing fields decodes to empty values instead of failing."""
    decoded = decode_message({"MessageId": "m"})
    assert (decoded.body, decoded.attributes, decoded.group_id) == (b"", {}, None)


@pytest.mark.parametrize(("sent", "seen"), [(DEFAULT_GROUP_ID, None), ("g-1", "g-1")])
def test_default_group_reads_as_no_group(sent: str, seen: str | None) -> None:
    """The default FIFO group arrives as group_id None; other groups arrive as sent."""
    assert decode_message(sqs_message("x", MessageGroupId=sent)).group_id == seen
