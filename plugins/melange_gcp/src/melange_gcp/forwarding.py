"""Byte-exact copies of received messages, for dead-lettering: the wire form, extras where they fit.

A message is sent on as it came over the wire: its ``data`` bytes, every
attribute it carried (also those its received form leaves out: the
``CloudPubSubDeadLetter*`` attributes Pub/Sub adds, melange's empty-body
marker; the receipt keeps them) and its ordering key. None of melange's
publish checks apply: a message another client published may carry what
melange would refuse to send, and Pub/Sub took it once already.

Extra attributes (why the message is dead-lettered) are added one by one, in
order, only while the copy stays within Pub/Sub's own limits
(https://cloud.google.com/pubsub/quotas#resource_limits): 100 attributes, keys
of at most 256 bytes not starting with ``goog``, values of at most 1,024 bytes,
and a Publish request of at most 10,000,000 bytes, counted exactly on the
serialized request. An extra named like an original attribute is left out:
the original's value wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.pubsub_v1 import types

from melange.backends.base import ReceivedMessage
from melange_gcp.receipts import GCPReceipt
from melange_gcp.wire import (
    EMPTY_BODY,
    MAX_ATTRIBUTE_KEY_BYTES,
    MAX_ATTRIBUTE_VALUE_BYTES,
    MAX_ATTRIBUTES,
    MAX_REQUEST_BYTES,
    RESERVED_PREFIX,
)

_MessagePb: Any = types.PubsubMessage.pb()
_PublishRequestPb: Any = types.PublishRequest.pb()


def wire_attributes(message: ReceivedMessage) -> dict[str, str]:
    """Return the attributes ``message`` carried on the wire."""
    attributes = dict(message.attributes)
    receipt = message.receipt
    if isinstance(receipt, GCPReceipt) and receipt.hidden:
        attributes.update(receipt.hidden)
    return attributes


def extra_fits(key: str, value: str) -> bool:
    """Whether Pub/Sub takes an attribute ``key`` = ``value`` (its count and size aside)."""
    return (
        0 < len(key.encode()) <= MAX_ATTRIBUTE_KEY_BYTES
        and len(value.encode()) <= MAX_ATTRIBUTE_VALUE_BYTES
        and not key.startswith(RESERVED_PREFIX)
    )


def copy_request(
    topic: str, message: ReceivedMessage, extras: Mapping[str, str]
) -> types.PublishRequest:
    """Return the Publish request that sends ``message`` on to ``topic`` as it came.

    Args:
        topic: The target topic's path.
        message: The message as received (through this backend, or any other).
        extras: Attributes to add where they fit, in order.
    """
    request = _PublishRequestPb(
        topic=topic,
        messages=[
            _MessagePb(
                data=bytes(message.body),
                attributes=wire_attributes(message),
                ordering_key=message.group_id or "",
            )
        ],
    )
    entry = request.messages[0]  # the request's own copy, changed in place below
    for key, value in extras.items():
        if len(entry.attributes) >= MAX_ATTRIBUTES:
            break
        if key in entry.attributes or not extra_fits(key, value):
            continue
        entry.attributes[key] = value
        if request.ByteSize() > MAX_REQUEST_BYTES:
            del entry.attributes[key]  # a shorter one may still fit
    if not entry.data and not entry.attributes:
        # Only a message received elsewhere can be empty; Pub/Sub refuses one as it is.
        entry.attributes[EMPTY_BODY] = "1"
    wrapped: types.PublishRequest = types.PublishRequest.wrap(request)
    return wrapped
