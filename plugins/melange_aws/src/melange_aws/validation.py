"""What SQS and SNS refuse in a message, checked before anything of a batch is sent.

The common checks (types, attribute count, size in melange's measure,
capabilities) are the core's; these add AWS's own rules, which depend on the
message (attribute names and values, id formats, the encoded size) and on the
destination (per-message delay and deduplication ids by queue or topic type).
"""

from __future__ import annotations

from collections.abc import Sequence

from melange.backends.base import OutgoingMessage
from melange.exceptions import InvalidMessage, MessageTooLarge
from melange_aws.names import check_attribute_name, check_message_token
from melange_aws.wire import ENCODING_ATTRIBUTE, MESSAGE_LIMIT, is_valid_text, wire_size


def check_message(message: OutgoingMessage, backend_name: str) -> int:
    """Raise the specific error if SQS/SNS would refuse ``message``; return its wire size.

    The wire size is what AWS counts: the body as sent (base64 for a binary
    body, a third larger) plus every attribute's name, data type and value.

    Raises:
        InvalidMessage: An attribute name or value, or a group or dedup id, that
            AWS refuses, or melange's reserved attribute.
        MessageTooLarge: The encoded message exceeds 256 KiB.
    """
    for name, value in message.attributes.items():
        check_attribute_name(name)
        if name == ENCODING_ATTRIBUTE:
            raise InvalidMessage(
                f"attribute {name!r} is reserved by melange's aws backend (it marks encoded "
                "bodies); use another name"
            )
        if not is_valid_text(value):
            raise InvalidMessage(
                f"attribute {name!r} has value {value!r}, which SQS/SNS refuse: values must be "
                "non-empty text without control characters other than tab and line breaks"
            )
    if message.group_id is not None:
        check_message_token("group_id", message.group_id)
    if message.dedup_id is not None:
        check_message_token("dedup_id", message.dedup_id)
    size = wire_size(message.body, message.attributes)
    if size > MESSAGE_LIMIT:
        too_large = MessageTooLarge(size, MESSAGE_LIMIT, backend_name)
        too_large.args = (
            f"{too_large}. The body is not UTF-8 text, so it is sent base64-encoded, which "
            "makes it a third larger: keep binary bodies under about 192 KiB",
        )
        raise too_large
    return size


def check_destination(
    kind: str, destination: str, fifo: bool, batch: Sequence[OutgoingMessage]
) -> None:
    """Refuse message options that the destination's type does not support.

    SNS has no per-message delay at all, SQS FIFO queues take only the queue's
    delay, and only FIFO queues and topics take deduplication ids.

    Args:
        kind: ``"queue"`` or ``"topic"``.
        destination: Its name, for the message.
        fifo: Whether it is a FIFO queue or topic.
        batch: The messages about to be published.

    Raises:
        InvalidMessage: A message uses an option the destination does not support.
    """
    for index, message in enumerate(batch):
        where = f"message {index} to {'FIFO' if fifo else 'standard'} {kind} {destination!r}"
        if message.delay_seconds and (kind == "topic" or fifo):
            why = (
                "SNS has no per-message delay"
                if kind == "topic"
                else "SQS FIFO queues take only the queue's own delay_seconds"
            )
            raise InvalidMessage(
                f"{where} has delay_seconds={message.delay_seconds!r}, but {why}. Publish to a "
                "standard queue for a per-message delay, or give the queue a delay_seconds "
                "setting with init_queue; nothing was sent"
            )
        if message.dedup_id is not None and not fifo:
            raise InvalidMessage(
                f"{where} has a dedup_id, but SQS and SNS deduplicate only on FIFO queues and "
                f"topics (.fifo names). Drop dedup_id or publish to a FIFO {kind}; nothing "
                "was sent"
            )
