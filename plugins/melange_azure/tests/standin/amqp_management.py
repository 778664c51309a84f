"""Request/response nodes of the AMQP stand-in: ``$cbs`` and ``<entity>/$management``.

A request is an AMQP message with an ``operation`` application property and a
map body; the response carries ``statusCode`` (``status-code`` on ``$cbs``),
``statusDescription`` and, on failure, ``errorCondition``, and correlates by
the request's message id. Operations follow "AMQP request-response operations
in Azure Service Bus" for exactly what the SDK and the backend use.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote_plus

from proton import UNDESCRIBED, Array, Data, Described, Message, symbol, timestamp

from .amqp_router import Address, BrokerError, entity_path

if TYPE_CHECKING:
    from .amqp import Broker

DEAD_LETTER_DETAILS = ("deadletter-reason", "deadletter-description")


@dataclass
class Response:
    status: int
    description: str = "OK"
    body: object = None
    condition: str | None = None

    def to_message(self, request: Message) -> Message:
        properties: dict[str, object] = {
            "statusCode": self.status,
            "status-code": self.status,
            "statusDescription": self.description,
            "status-description": self.description,
        }
        if self.condition:
            properties["errorCondition"] = symbol(self.condition)
        return Message(correlation_id=request.id, properties=properties, body=self.body)


def _plain(value: Any) -> Any:
    """proton's decoded arrays/described values -> plain Python lists and values."""
    if isinstance(value, Array):
        return [_plain(v) for v in value.elements]
    if isinstance(value, Described):
        return _plain(value.value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _ticks_ms(seconds: float) -> timestamp:
    return timestamp(int(seconds * 1000))


# -- $cbs ------------------------------------------------------------------------------------


def verify_sas_token(token: str, key_name: str, key: str, now: float) -> str:
    """Check a ``SharedAccessSignature`` token; return its audience (``sr``) or raise."""
    if not token.startswith("SharedAccessSignature "):
        raise BrokerError("com.microsoft:auth-failed", "Not a SharedAccessSignature token.", 401)
    fields = {k: v[0] for k, v in parse_qs(token.split(" ", 1)[1], keep_blank_values=True).items()}
    audience, signature, expiry = fields.get("sr", ""), fields.get("sig", ""), fields.get("se", "")
    if fields.get("skn") != key_name:
        raise BrokerError("com.microsoft:auth-failed", "Unknown SharedAccessKeyName.", 401)
    if not expiry.isdigit() or int(expiry) < now:
        raise BrokerError("com.microsoft:auth-failed", "The token has expired.", 401)
    to_sign = f"{quote_plus(audience)}\n{expiry}".encode()
    expected = base64.b64encode(hmac.new(key.encode(), to_sign, hashlib.sha256).digest()).decode()
    if not hmac.compare_digest(expected, signature):
        raise BrokerError(
            "com.microsoft:auth-failed",
            "InvalidSignature: The token has an invalid signature.",
            401,
        )
    return audience


def put_token(broker: Broker, request: Message, audiences: set[str]) -> Response:
    """``put-token``: accept a valid SAS token and remember the audience it grants."""
    properties = request.properties or {}
    if properties.get("operation") != "put-token":
        return Response(400, "Unsupported $cbs operation.", condition="amqp:not-implemented")
    try:
        audience = verify_sas_token(str(request.body), broker.key_name, broker.key, time.time())
    except BrokerError as error:
        return Response(error.status, error.description, condition=error.condition)
    audiences.add(entity_path(audience).lower())
    return Response(202, "Accepted")


def authorized(audiences: Iterable[str], path: str) -> bool:
    """Whether a token was put for the namespace or for this entity (or a parent of it)."""
    lowered = path.lower()
    return any(a == "" or lowered == a or lowered.startswith(a + "/") for a in audiences)


# -- <entity>/$management --------------------------------------------------------------------


def handle(broker: Broker, address: Address, request: Message) -> Response:
    """Run one ``$management`` operation against the entity behind ``address``."""
    operation = str((request.properties or {}).get("operation", ""))
    body = request.body if isinstance(request.body, dict) else {}
    args = {str(k): _plain(v) for k, v in body.items()}
    handler = _OPERATIONS.get(operation)
    if handler is None:
        return Response(
            501, f"The stand-in does not implement {operation!r}.", condition="amqp:not-implemented"
        )
    try:
        return handler(broker, address, args)
    except BrokerError as error:
        return Response(error.status, error.description, condition=error.condition)


def _renew_lock(broker: Broker, address: Address, args: dict[str, Any]) -> Response:
    box = broker.router.box(address)
    expirations = []
    for token in args.get("lock-tokens", []):
        until = broker.renew_message_lock(box, uuid.UUID(str(token)))
        if until is None:
            raise BrokerError(
                "com.microsoft:message-lock-lost",
                "The lock supplied is invalid. Either the lock expired, or the message has "
                "already been removed from the queue.",
                410,
            )
        expirations.append(_ticks_ms(until + broker.namespace.clock_skew))
    return Response(200, body={"expirations": Array(UNDESCRIBED, Data.TIMESTAMP, *expirations)})


def _renew_session_lock(broker: Broker, address: Address, args: dict[str, Any]) -> Response:
    box = broker.router.box(address)
    until = broker.renew_session_lock(box, str(args.get("session-id", "")))
    return Response(200, body={"expiration": _ticks_ms(until + broker.namespace.clock_skew)})


def _peek(broker: Broker, address: Address, args: dict[str, Any]) -> Response:
    start = int(args.get("from-sequence-number", 0))
    count = int(args.get("message-count", 1))
    session_id = args.get("session-id")
    box = broker.router.box(address)
    found: list[tuple[int, bytes]] = []
    for stored in box.all_messages():
        if stored.sequence_number >= start and (
            session_id is None or stored.session_id == session_id
        ):
            found.append((stored.sequence_number, broker.encode_for_peek(stored)))
    for sequence_number, message in broker.router.scheduled_for(address.box_path):
        if sequence_number >= start:
            found.append((sequence_number, broker.encode_scheduled(sequence_number, message)))
    found.sort(key=lambda item: item[0])
    if not found:
        return Response(204, "No messages to peek.")
    return Response(200, body={"messages": [{"message": m} for _, m in found[:count]]})


def _schedule(broker: Broker, address: Address, args: dict[str, Any]) -> Response:
    numbers = []
    for item in args.get("messages", []):
        message = Message()
        message.decode(bytes(item["message"] if "message" in item else item[b"message"]))
        due = (message.annotations or {}).get(symbol("x-opt-scheduled-enqueue-time"))
        if due is None:
            raise BrokerError("com.microsoft:argument-error", "ScheduledEnqueueTimeUtc is missing.")
        numbers.append(broker.router.schedule(address, message, int(due) / 1000))
    return Response(200, body={"sequence-numbers": Array(UNDESCRIBED, Data.LONG, *numbers)})


def _cancel_scheduled(broker: Broker, address: Address, args: dict[str, Any]) -> Response:
    broker.router.cancel_scheduled([int(n) for n in args.get("sequence-numbers", [])])
    return Response(200)


def _update_disposition(broker: Broker, address: Address, args: dict[str, Any]) -> Response:
    box = broker.router.box(address)
    status = str(args.get("disposition-status", ""))
    outcomes = {
        "completed": "complete",
        "abandoned": "abandon",
        "suspended": "dead-letter",
        "defered": "defer",
    }
    if status not in outcomes:
        raise BrokerError("com.microsoft:argument-error", f"Unknown disposition-status {status!r}.")
    for token in args.get("lock-tokens", []):
        if not broker.settle(
            box,
            uuid.UUID(str(token)),
            outcomes[status],
            args.get(DEAD_LETTER_DETAILS[0]),
            args.get(DEAD_LETTER_DETAILS[1]),
        ):
            raise BrokerError(
                "com.microsoft:message-lock-lost",
                "The lock supplied is invalid. Either the lock expired, or the message has "
                "already been removed from the queue.",
                410,
            )
    return Response(200)


def _get_session_state(broker: Broker, address: Address, args: dict[str, Any]) -> Response:
    box = broker.router.box(address)
    state = box.session_state.get(str(args.get("session-id", "")))
    return Response(200, body={"session-state": state})


def _set_session_state(broker: Broker, address: Address, args: dict[str, Any]) -> Response:
    box = broker.router.box(address)
    state = args.get("session-state")
    box.session_state[str(args.get("session-id", ""))] = bytes(state) if state is not None else b""
    return Response(200)


_OPERATIONS = {
    "com.microsoft:renew-lock": _renew_lock,
    "com.microsoft:renew-session-lock": _renew_session_lock,
    "com.microsoft:peek-message": _peek,
    "com.microsoft:schedule-message": _schedule,
    "com.microsoft:cancel-scheduled-message": _cancel_scheduled,
    "com.microsoft:update-disposition": _update_disposition,
    "com.microsoft:get-session-state": _get_session_state,
    "com.microsoft:set-session-state": _set_session_state,
}
