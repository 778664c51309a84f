"""What RabbitMQ's refusals mean in melange's terms, in one place.

A refused AMQP method closes its channel with a reply code and text
(``404 NOT_FOUND``, ``406 PRECONDITION_FAILED``, ``403 ACCESS_REFUSED``). The
406 of a redeclaration names the argument and both values; it becomes an
:class:`~melange.exceptions.ImmutableSettingError` in melange's own setting
names.
"""

from __future__ import annotations

import re

import pika.exceptions

from melange.exceptions import BrokerError, ConfigurationError, ImmutableSettingError, MelangeError

__all__ = ["NOT_FOUND", "PRECONDITION_FAILED", "immutable_setting", "translate"]

NOT_FOUND = 404
PRECONDITION_FAILED = 406
ACCESS_REFUSED = 403

_INEQUIVALENT = re.compile(
    r"inequivalent arg '(?P<arg>[^']+)' for (?:queue|exchange) '[^']*' in vhost '[^']*': "
    r"received (?:the value )?(?P<received>'[^']*'|none)(?: of type '[^']*')?"
    r" but current is (?:the value )?(?P<current>'[^']*'|none)"
)

_SETTINGS: dict[str, tuple[str, float]] = {
    "x-message-ttl": ("message_retention_period", 1000.0),
    "x-delivery-limit": ("max_receive_count", 1.0),
    "x-dead-letter-routing-key": ("dead_letter_queue", 1.0),
    "x-queue-type": ("queue type", 1.0),
    "type": ("exchange type", 1.0),
    "durable": ("durable", 1.0),
}
"""RabbitMQ's argument name -> (melange's setting name, divisor of numbers)."""


def _value(raw: str, arg: str) -> object:
    if raw == "none":
        return "classic" if arg == "x-queue-type" else None  # classic is the default type
    text = raw.strip("'")
    divisor = _SETTINGS.get(arg, (arg, 1.0))[1]
    if arg == "x-delivery-limit" and text.lstrip("-").isdigit():
        return int(text) + 1  # RabbitMQ counts returns, melange counts receives
    if divisor != 1.0 and text.isdigit():
        return int(text) / divisor
    return text


def immutable_setting(resource: str, reply_text: str) -> ImmutableSettingError | None:
    """The ImmutableSettingError a 406 redeclaration stands for, or ``None`` for another 406."""
    found = _INEQUIVALENT.search(reply_text)
    if found is None:
        return None
    arg = found["arg"]
    setting = _SETTINGS.get(arg, (arg, 1.0))[0]
    return ImmutableSettingError(
        resource, setting, _value(found["current"], arg), _value(found["received"], arg)
    )


def translate(
    error: pika.exceptions.ChannelClosedByBroker, resource: str, doing: str
) -> MelangeError:
    """A MelangeError for a method the broker refused (not 404: callers know what is missing)."""
    code, text = error.reply_code, error.reply_text
    if code == PRECONDITION_FAILED:
        immutable = immutable_setting(resource, text)
        if immutable is not None:
            return immutable
    if code == ACCESS_REFUSED:
        return ConfigurationError(
            f"RabbitMQ refused to {doing} {resource!r}: {text}; grant the user configure, write "
            "and read permissions matching melange's queue and exchange names on the virtual host"
        )
    return BrokerError(
        f"RabbitMQ refused to {doing} {resource!r}: {code} {text}", broker_code=str(code)
    )
