"""How melange messages travel through SQS and SNS, and how received ones are read back.

SQS and SNS carry text: a message body must be 1 or more characters of the
XML character set (tab, newline, carriage return, U+0020..U+D7FF,
U+E000..U+FFFD, U+10000..U+10FFFF), and so must every attribute value. melange
bodies are bytes, so:

- a non-empty body that is valid UTF-8 of allowed characters is sent as it is
  (a consumer that is not melange reads it unchanged);
- any other body (binary data, control characters, invalid UTF-8) is sent as
  base64 text with the attribute ``melange.body-encoding=base64``;
- the empty body is sent as the text ``(empty)`` with
  ``melange.body-encoding=empty``.

The receiving side removes the marker attribute and restores the bytes, so
every body round-trips byte for byte.

AWS counts a message's size as its body plus, for every attribute, the name,
the data type (``"String"``) and the value; :func:`wire_size` counts the same.

Received messages are read whatever produced them: melange itself (raw SNS
delivery or direct sends), an SNS subscription without raw delivery (the body
is a JSON envelope, unwrapped here), or another producer (Number attributes
arrive as their text, Binary attributes as base64 text). Messages in melange 7.x's
format are turned into melange 8's (:mod:`melange_aws.wire7`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from melange_aws.wire7 import SERIALIZER_ID_7X, read_7x

MESSAGE_LIMIT = 262_144
"""Bytes one SNS message may have, and one SNS PublishBatch request. SQS accepts up to
1 MiB since 2025, but melange keeps one limit so that a message fits a queue and a topic."""

AWS_MAX_ATTRIBUTES = 10
"""Message attributes SQS accepts per message (and SNS delivers with raw delivery)."""

ENCODING_ATTRIBUTE = "melange.body-encoding"
"""The attribute that marks a body melange had to encode to send it as text."""

RESERVED_ATTRIBUTES = 1
"""Attribute slots melange keeps for itself (the encoding marker)."""

STRING_TYPE = "String"
"""The data type melange gives every attribute; AWS counts its 6 bytes in the message size."""

MAX_ATTRIBUTES = AWS_MAX_ATTRIBUTES - RESERVED_ATTRIBUTES
"""User attributes per message."""

MAX_MESSAGE_SIZE = MESSAGE_LIMIT - len(STRING_TYPE) * MAX_ATTRIBUTES
"""The largest message, in melange's measure (body plus attribute names and values),
that AWS accepts whatever its attributes: melange does not count data types, AWS does."""

BASE64 = "base64"
EMPTY = "empty"
EMPTY_BODY_TEXT = "(empty)"
"""What an empty body is sent as; the marker attribute says it stands for no bytes."""

DEFAULT_GROUP_ID = "melange-default"
"""MessageGroupId of messages sent to a FIFO queue or topic without a ``group_id``.

They form one group, as on the memory backend, and arrive with ``group_id=None``."""

_DISALLOWED = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_DISALLOWED_ASCII = re.compile(b"[^\t\n\r\x20-\x7f]")  # the same rule, for ASCII bytes


def body_encoding(body: bytes) -> str | None:
    """Return how ``body`` has to be encoded to travel as text: ``None``, BASE64 or EMPTY."""
    if not body:
        return EMPTY
    if body.isascii():  # the common case, checked without decoding
        return BASE64 if _DISALLOWED_ASCII.search(body) else None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return BASE64
    return BASE64 if _DISALLOWED.search(text) else None


def encode_body(body: bytes) -> tuple[str, str | None]:
    """Return the text to send for ``body`` and the encoding marker it needs (or ``None``)."""
    encoding = body_encoding(body)
    if encoding is None:
        return body.decode("utf-8"), None
    if encoding == EMPTY:
        return EMPTY_BODY_TEXT, EMPTY
    return base64.b64encode(body).decode("ascii"), BASE64


def is_valid_text(value: str) -> bool:
    """Return whether SQS/SNS accept ``value`` as a body or attribute value."""
    return bool(value) and not _DISALLOWED.search(value)


def _attribute_bytes(name: str, value: str) -> int:
    return len(name.encode()) + len(STRING_TYPE) + len(value.encode())


def wire_size(body: bytes, attributes: Mapping[str, str]) -> int:
    """Return the size AWS counts for ``body`` and ``attributes`` once encoded for the wire."""
    encoding = body_encoding(body)
    if encoding is None:
        size = len(body)
    elif encoding == EMPTY:
        size = len(EMPTY_BODY_TEXT)
    else:
        size = 4 * ((len(body) + 2) // 3)
    if encoding is not None:
        size += _attribute_bytes(ENCODING_ATTRIBUTE, encoding)
    return size + sum(_attribute_bytes(name, value) for name, value in attributes.items())


def message_attributes(
    attributes: Mapping[str, str], encoding: str | None
) -> dict[str, dict[str, str]]:
    """Return ``MessageAttributes`` for SendMessageBatch and PublishBatch entries."""
    wire = {
        name: {"DataType": STRING_TYPE, "StringValue": value} for name, value in attributes.items()
    }
    if encoding is not None:
        wire[ENCODING_ATTRIBUTE] = {"DataType": STRING_TYPE, "StringValue": encoding}
    return wire


@dataclass(frozen=True)
class Decoded:
    """A received message as melange sees it.

    Attributes:
        body: The original bytes (or the text's UTF-8 bytes for a foreign message).
        attributes: String attributes, without melange's marker.
        group_id: The message group, ``None`` for melange's default group.
    """

    body: bytes
    attributes: dict[str, str]
    group_id: str | None


def decode_message(message: Mapping[str, Any]) -> Decoded:
    """Read one message of a ReceiveMessage response; never raises on odd content.

    Args:
        message: An element of ``ReceiveMessage``'s ``Messages``.
    """
    text = message.get("Body")
    text = text if isinstance(text, str) else ""
    attributes = sqs_attributes(message.get("MessageAttributes"))
    envelope = sns_envelope(text)
    if envelope is not None:
        text, envelope_attributes = envelope
        attributes = {**envelope_attributes, **attributes}
    body: bytes | None = None
    if SERIALIZER_ID_7X in attributes:  # sent by melange 7.x, or for its consumers
        text, base64_text = read_7x(text, attributes, enveloped=envelope is not None)
        if base64_text:  # 7.x's base64 has line breaks: not the strict form melange sends
            # Left as text if it is not base64: the serializer reports it as undecodable.
            with contextlib.suppress(binascii.Error, ValueError):
                body = base64.b64decode(text)
    if body is None:
        body = _decode_body(text, attributes)
    system = message.get("Attributes") or {}
    group_id = system.get("MessageGroupId")
    if group_id == DEFAULT_GROUP_ID:
        group_id = None
    return Decoded(body, attributes, group_id)


def _decode_body(text: str, attributes: dict[str, str]) -> bytes:
    """Undo :func:`encode_body`, removing the marker from ``attributes`` when it applies."""
    encoding = attributes.get(ENCODING_ATTRIBUTE)
    if encoding == EMPTY:
        del attributes[ENCODING_ATTRIBUTE]
        return b""
    if encoding == BASE64:
        try:
            body = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            return text.encode()  # not melange's doing: keep text and marker for the consumer
        del attributes[ENCODING_ATTRIBUTE]
        return body
    return text.encode()


def sqs_attributes(raw: object) -> dict[str, str]:
    """Turn SQS ``MessageAttributes`` into strings: Binary values become base64 text."""
    if not isinstance(raw, Mapping):
        return {}
    attributes: dict[str, str] = {}
    for name, value in raw.items():
        if not isinstance(value, Mapping):
            continue
        if isinstance(value.get("StringValue"), str):
            attributes[str(name)] = value["StringValue"]
        elif isinstance(value.get("BinaryValue"), (bytes, bytearray)):
            attributes[str(name)] = base64.b64encode(value["BinaryValue"]).decode("ascii")
    return attributes


def sns_envelope(text: str) -> tuple[str, dict[str, str]] | None:
    """Return ``(message, attributes)`` if ``text`` is an SNS notification envelope, else ``None``.

    SNS wraps a message in such a JSON document when the subscription does not
    use raw delivery. melange subscribes with raw delivery; this reads queues
    someone else subscribed.
    """
    if not text.lstrip().startswith("{") or '"TopicArn"' not in text:
        return None  # cheap rejection of every ordinary body
    try:
        document = json.loads(text)
    except ValueError:
        return None
    if not (
        isinstance(document, dict)
        and document.get("Type") == "Notification"
        and isinstance(document.get("TopicArn"), str)
        and isinstance(document.get("MessageId"), str)
        and isinstance(document.get("Message"), str)
    ):
        return None
    attributes: dict[str, str] = {}
    raw = document.get("MessageAttributes")
    if isinstance(raw, dict):
        for name, value in raw.items():
            if isinstance(value, dict) and isinstance(value.get("Value"), str):
                attributes[str(name)] = value["Value"]  # Binary values are base64 text already
    return document["Message"], attributes
