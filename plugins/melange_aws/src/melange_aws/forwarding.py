"""Byte-exact copies of received messages, for dead-lettering and redrive.

What melange reads from a queue is not always what was sent: a body with
``melange.body-encoding`` is decoded, an SNS envelope is unwrapped, Number and
Binary attributes become text. A copy built from that would differ from the
original, and melange's publish checks would refuse what SQS itself accepted
(10 attributes, a body at SQS's full size, an attribute named like melange's
own). So a received message keeps its wire form (the ReceiveMessage element)
in its receipt, and :func:`send_message_params` turns that into a SendMessage
call that sends it back exactly: the body text, every attribute with its data
type, Binary values as bytes, and the message group.

Extra attributes (why the message is dead-lettered) are added only while the
copy stays within SQS's 10 attributes and 256 KiB, counted as SQS counts:
body, and each attribute's name, data type and value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from melange_aws.names import deduplication_id, is_attribute_name
from melange_aws.wire import (
    AWS_MAX_ATTRIBUTES,
    DEFAULT_GROUP_ID,
    MESSAGE_LIMIT,
    STRING_TYPE,
    is_valid_text,
)

__all__ = ["attribute_size", "send_message_params", "wire_attributes"]

_ATTRIBUTE_FIELDS = ("DataType", "StringValue", "BinaryValue")
"""What SendMessage takes of a received attribute (the list fields are not implemented by SQS)."""


def wire_attributes(raw: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Return the MessageAttributes of a received message as SendMessage takes them."""
    received = raw.get("MessageAttributes")
    if not isinstance(received, Mapping):
        return {}
    attributes: dict[str, dict[str, Any]] = {}
    for name, value in received.items():
        if isinstance(value, Mapping):
            attributes[str(name)] = {key: value[key] for key in _ATTRIBUTE_FIELDS if key in value}
    return attributes


def attribute_size(name: str, value: Mapping[str, Any]) -> int:
    """Return the bytes SQS counts for one attribute: name, data type and value."""
    data = value.get("BinaryValue")
    if not isinstance(data, (bytes, bytearray)):
        data = str(value.get("StringValue", "")).encode("utf-8", "surrogatepass")
    return len(name.encode()) + len(str(value.get("DataType", "")).encode()) + len(data)


def send_message_params(
    raw: Mapping[str, Any],
    extra_attributes: Mapping[str, str],
    *,
    fifo: bool,
    message_id: str,
) -> dict[str, Any]:
    """Return the SendMessage parameters (without QueueUrl) that copy a received message.

    Args:
        raw: The message as ReceiveMessage returned it.
        extra_attributes: String attributes to add where they fit; never one the
            original has, never past 10 attributes or 256 KiB, never one SQS
            would refuse (which would lose the whole copy).
        fifo: Whether the target is a FIFO queue.
        message_id: The original's message id: a FIFO target's deduplication id,
            so a copy sent twice (a crash before the ack) is stored once.
    """
    body = raw.get("Body")
    body = body if isinstance(body, str) else ""
    params: dict[str, Any] = {"MessageBody": body}
    attributes = wire_attributes(raw)
    size = len(body.encode("utf-8", "surrogatepass"))
    size += sum(attribute_size(name, value) for name, value in attributes.items())
    for name, text in extra_attributes.items():
        if len(attributes) >= AWS_MAX_ATTRIBUTES:
            break
        extra = {"DataType": STRING_TYPE, "StringValue": text}
        grown = size + attribute_size(name, extra)
        if name in attributes or grown > MESSAGE_LIMIT:
            continue
        if is_attribute_name(name) and is_valid_text(text):
            attributes[name] = extra
            size = grown
    if attributes:
        params["MessageAttributes"] = attributes
    system = raw.get("Attributes")
    group_id = system.get("MessageGroupId") if isinstance(system, Mapping) else None
    if fifo:
        params["MessageGroupId"] = group_id or DEFAULT_GROUP_ID
        params["MessageDeduplicationId"] = deduplication_id(message_id)
    elif group_id:
        params["MessageGroupId"] = group_id  # a fair queue's group, kept as on the original
    return params
