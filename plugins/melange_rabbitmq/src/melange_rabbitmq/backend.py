"""The rabbitmq backend: melange's contract on RabbitMQ (AMQP 0-9-1) through pika.

Mapping (docs/backends/rabbitmq.md has the reasons and the limits):

- queue: a durable quorum queue; its mutable settings (retention as
  ``message-ttl``, the dead-letter queue as ``dead-letter-exchange`` /
  ``dead-letter-routing-key`` / ``delivery-limit`` with at-least-once
  dead-lettering) live in a policy melange owns, ``melange.queue.<name>``, set
  through the management API; without ``management_url`` they are queue
  arguments, fixed at creation;
- visibility timeout: a lease kept by the client (:mod:`melange_rabbitmq.leases`),
  its value stored in the global parameter ``melange:<vhost>:<queue>``;
- topic: a durable headers exchange; subscription: its bindings to the queue
  (:mod:`melange_rabbitmq.filters`);
- publish: persistent messages on a channel in confirm mode, ``mandatory`` to
  a queue, so "accepted" means confirmed and a missing queue is refused.
"""

from __future__ import annotations

import math
import os
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pika
import pika.exceptions
from pika.spec import BasicProperties

from melange.backends.base import (
    Capabilities,
    MessagingBackend,
    OutgoingMessage,
    PublishResult,
    ReceivedMessage,
)
from melange.exceptions import (
    BrokerError,
    ConfigurationError,
    ImmutableSettingError,
    InvalidMessage,
    LeaseLost,
    MelangeError,
    OutcomeUnknown,
    QueueNotFound,
    TopicNotFound,
)
from melange.topology import (
    DEFAULT_VISIBILITY_TIMEOUT,
    Change,
    DeadLetterPolicy,
    NameRule,
    QueueSpec,
    SubscriptionSpec,
    TopicSpec,
)
from melange_rabbitmq import errors, filters
from melange_rabbitmq.leases import DeliveryKey
from melange_rabbitmq.link import CONNECTION_ERRORS, Delivery, Link
from melange_rabbitmq.management import ManagementAPI

__all__ = ["DEFAULT_URL", "RabbitMQBackend", "RabbitMQReceipt"]

_T = TypeVar("_T")

DEFAULT_URL = "amqp://guest:guest@localhost:5672/%2F"
"""RabbitMQ's out-of-the-box address and user (the guest user works from localhost only)."""

QUORUM = {"x-queue-type": "quorum"}
POLICY_PREFIX = "melange.queue."
PARAMETER_PREFIX = "melange:"
CONSUMER_TIMEOUT = 1800.0
"""RabbitMQ's default ``consumer_timeout``: a delivery unacked this long closes its channel."""
FULL_PREFETCH_POLL = (0.02, 0.25)
"""Seconds between two ``basic.get`` of a waiting receive while the prefetch is used up (the
broker pushes nothing then): the first interval, doubled after each empty answer up to the last."""

DEFAULT_HEARTBEAT = 30
"""Seconds between heartbeats when neither the option nor the URL's ``?heartbeat=`` sets them."""
DEFAULT_CONNECT_TIMEOUT = 10.0
"""Seconds to connect when neither the option nor the URL's ``?socket_timeout=`` sets them."""
AMQP_SHORT_MAX = 65535
"""Largest ``basic.qos`` prefetch count and heartbeat (16-bit fields of AMQP 0-9-1)."""

NAME_RULE = NameRule(
    pattern=r"(?!amq\.)[A-Za-z0-9_.:-]+",
    max_length=200,
    description="1 to 200 characters: letters, digits, '.', ':', '-' and '_', not starting "
    "with 'amq.' (RabbitMQ reserves it)",
)


@dataclass(frozen=True, slots=True)
class RabbitMQReceipt:
    """Settles one delivery: the channel it arrived on and its delivery tag.

    Attributes:
        owner: ``id()`` of the backend's link that received it.
        key: ``(connection generation, channel number, delivery tag)``.
    """

    owner: int
    key: DeliveryKey


class RabbitMQBackend(MessagingBackend):
    """Queues, topics and dead-letter queues on RabbitMQ, over one AMQP connection.

    Args:
        url: ``amqp://user:password@host:port/vhost`` (``amqps://`` for TLS); by default
            ``MELANGE_OPTION_URL`` or :data:`DEFAULT_URL`. Query options of pika's
            ``URLParameters`` apply (e.g. ``?heartbeat=30``) and win over melange's
            defaults (not over ``heartbeat`` or ``connect_timeout`` passed explicitly).
        management_url: The management plugin's HTTP endpoint (``http://host:15672``);
            with it, init reads the real state and converges through policies. Without
            it, settings are fixed at creation (docs/backends/rabbitmq.md).
        heartbeat: Seconds between AMQP heartbeats, 1 to 65535; by default the URL's
            ``?heartbeat=``, else 30.
        prefetch: Deliveries each queue's consumer may hold unacknowledged, 1 to 65535.
        call_timeout: Seconds one call waits for the broker before it fails.
        connect_timeout: Seconds to open the TCP (and TLS) connection; by default the
            URL's ``?socket_timeout=``, else 10.
        default_visibility_timeout: Lease of a queue whose timeout cannot be read
            (no ``management_url``, and not declared by this backend); at most 1500 s.
        policy_priority: Priority of melange's queue policies over other policies (>= 0).

    Raises:
        ConfigurationError: An option has the wrong type or is out of range.
    """

    name = "rabbitmq"
    broker_label = "RabbitMQ"
    receive_count_setting = "delivery-limit"
    queue_name_rule = NAME_RULE
    topic_name_rule = NAME_RULE
    capabilities = Capabilities(
        topics=True,
        dead_letter=True,
        fifo=False,
        dedup=False,
        delay=False,
        batch=False,
        lease_extension=True,
        nack_delay=True,
        filters=True,
        max_message_size=1024 * 1024,
        max_batch_size=100,
        max_attributes=None,
        max_visibility_timeout=CONSUMER_TIMEOUT - 300.0,
        max_receive_count_range=(1, 1000),
        retention_range=(1.0, 4_294_967.0),
        max_wait_seconds=20.0,
    )

    def __init__(
        self,
        url: str | None = None,
        *,
        management_url: str | None = None,
        heartbeat: int | None = None,
        prefetch: int = 100,
        call_timeout: float = 30.0,
        connect_timeout: float | None = None,
        default_visibility_timeout: float = DEFAULT_VISIBILITY_TIMEOUT,
        policy_priority: int = 10,
    ) -> None:
        super().__init__()
        url = url or os.environ.get("MELANGE_OPTION_URL") or DEFAULT_URL
        if not isinstance(url, str) or urllib.parse.urlsplit(url).scheme not in ("amqp", "amqps"):
            raise ConfigurationError(
                "url must be an amqp:// or amqps:// URL such as "
                f"{DEFAULT_URL.replace('guest:guest@', 'user:password@')}"
            )
        in_url = set(urllib.parse.parse_qs(urllib.parse.urlsplit(url).query))
        heartbeat_given, connect_timeout_given = heartbeat is not None, connect_timeout is not None
        if heartbeat is None:
            heartbeat = DEFAULT_HEARTBEAT
        if connect_timeout is None:
            connect_timeout = DEFAULT_CONNECT_TIMEOUT
        # AMQP carries both in 16-bit fields, and 0 would mean "no limit" (prefetch) or
        # "no heartbeats" (a dead peer never noticed): the documented range starts at 1.
        for label, value, what in (
            ("prefetch", prefetch, "a whole number"),
            ("heartbeat", heartbeat, "a whole number of seconds"),
        ):
            if not _whole(value) or not 1 <= value <= AMQP_SHORT_MAX:
                raise ConfigurationError(
                    f"{label} must be {what} from 1 to {AMQP_SHORT_MAX}, got {value!r}"
                )
        if not _whole(policy_priority) or policy_priority < 0:
            raise ConfigurationError(
                f"policy_priority must be a whole number >= 0 (higher wins over the broker's "
                f"other policies), got {policy_priority!r}"
            )
        for label, seconds in (
            ("call_timeout", call_timeout),
            ("connect_timeout", connect_timeout),
            ("default_visibility_timeout", default_visibility_timeout),
        ):
            if (
                isinstance(seconds, bool)
                or not isinstance(seconds, (int, float))
                or not math.isfinite(seconds)
                or seconds <= 0
            ):
                raise ConfigurationError(
                    f"{label} must be a finite number of seconds > 0, got {seconds!r}"
                )
        lease_cap = self.capabilities.max_visibility_timeout
        if default_visibility_timeout > lease_cap:
            raise ConfigurationError(
                f"default_visibility_timeout must be at most {lease_cap:g} seconds (25 minutes, "
                f"below RabbitMQ's consumer_timeout), got {default_visibility_timeout!r}"
            )
        try:
            parameters = pika.URLParameters(url)
        except Exception as error:  # pika raises several kinds; none may echo the URL
            raise ConfigurationError(
                f"url is not a valid AMQP URL ({type(error).__name__}); the form is "
                "amqp://user:password@host:port/vhost"
            ) from None
        # pika's query options in the URL win over melange's defaults; heartbeat and
        # connect_timeout passed explicitly win over the URL's heartbeat and socket_timeout.
        defaults: dict[str, Any] = {
            "heartbeat": heartbeat,
            "socket_timeout": connect_timeout,
            "blocked_connection_timeout": call_timeout,
            "connection_attempts": 1,
        }
        explicit = {"heartbeat": heartbeat_given, "socket_timeout": connect_timeout_given}
        for key, value in defaults.items():
            if key not in in_url or explicit.get(key, False):
                setattr(parameters, key, value)
        if "stack_timeout" not in in_url:
            parameters.stack_timeout = parameters.socket_timeout + 5.0
        parameters.client_properties = {
            **(parameters.client_properties or {}),
            "connection_name": "melange",
        }
        scheme = "amqps" if parameters.ssl_options is not None else "amqp"
        self.vhost: str = parameters.virtual_host
        vhost = urllib.parse.quote(self.vhost, safe="")
        self.where = f"{scheme}://{parameters.host}:{parameters.port}/{vhost}"
        self.default_visibility_timeout = float(default_visibility_timeout)
        self.policy_priority = policy_priority
        self.management: ManagementAPI | None = None
        if management_url is not None:
            credentials = parameters.credentials
            self.management = ManagementAPI(
                management_url,
                vhost=self.vhost,
                username=getattr(credentials, "username", "guest"),
                password=getattr(credentials, "password", "guest"),
                timeout=call_timeout,
            )
        self.declare_calls = 0
        """AMQP methods that declare, bind, unbind or delete (for convergence tests)."""
        self._link = Link(parameters, self.where, prefetch=prefetch, call_timeout=call_timeout)
        self._visibility: dict[str, tuple[float, float]] = {}
        self._subscriptions: dict[tuple[str, str], SubscriptionSpec] = {}
        self._declared: dict[str, QueueSpec] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        return f"<RabbitMQBackend {self.where}{state}>"

    @property
    def link(self) -> Link:
        """The connection and its I/O thread (for tests and diagnostics)."""
        return self._link

    # ------------------------------------------------------------- plumbing
    def _io(self, fn: Callable[[], _T], *, publishing: bool = False) -> _T:
        return self._link.call(fn, publishing=publishing)

    def _declaring(self, fn: Callable[[], _T]) -> _T:
        with self._lock:
            self.declare_calls += 1
        return self._io(fn)

    def _queue_exists(self, name: str) -> bool:
        def probe() -> bool:
            try:
                self._link.channel().queue_declare(name, passive=True)
            except pika.exceptions.ChannelClosedByBroker as error:
                if error.reply_code == errors.NOT_FOUND:
                    return False
                raise errors.translate(error, name, "look up the queue") from None
            return True

        return self._io(probe)

    def _exchange_exists(self, name: str) -> bool:
        def probe() -> bool:
            try:
                self._link.channel().exchange_declare(name, passive=True)
            except pika.exceptions.ChannelClosedByBroker as error:
                if error.reply_code == errors.NOT_FOUND:
                    return False
                raise errors.translate(error, name, "look up the exchange") from None
            return True

        return self._io(probe)

    def _policy_name(self, queue: str) -> str:
        return POLICY_PREFIX + queue

    def _parameter_name(self, queue: str) -> str:
        return f"{PARAMETER_PREFIX}{self.vhost}:{queue}"

    @staticmethod
    def policy_pattern(queue: str) -> str:
        """The policy pattern that matches exactly ``queue``."""
        return "^" + "".join(c if c.isalnum() or c in "_-:" else "\\" + c for c in queue) + "$"

    @staticmethod
    def policy_definition(spec: QueueSpec) -> dict[str, Any]:
        """The policy keys that hold ``spec``'s mutable settings."""
        definition: dict[str, Any] = {"message-ttl": round(spec.message_retention_period * 1000)}
        if spec.dead_letter is not None:
            definition.update(
                {
                    "dead-letter-exchange": "",
                    "dead-letter-routing-key": spec.dead_letter.queue_name,
                    "delivery-limit": spec.dead_letter.max_receive_count - 1,
                    "dead-letter-strategy": "at-least-once",
                    "overflow": "reject-publish",
                }
            )
        return definition

    @staticmethod
    def queue_arguments(spec: QueueSpec) -> dict[str, Any]:
        """The queue arguments of ``spec`` when there is no management API (fixed for good)."""
        arguments: dict[str, Any] = dict(QUORUM)
        for key, value in RabbitMQBackend.policy_definition(spec).items():
            arguments[f"x-{key}"] = value
        return arguments

    @staticmethod
    def _spec_from(name: str, definition: dict[str, Any], visibility: float) -> QueueSpec:
        ttl = definition.get("message-ttl")
        retention = float("inf") if ttl is None else int(ttl) / 1000.0
        dead_letter = None
        target = definition.get("dead-letter-routing-key")
        if definition.get("dead-letter-exchange") == "" and isinstance(target, str):
            limit = definition.get("delivery-limit")
            # Without a delivery limit nothing is ever dead-lettered: show it as no policy.
            if isinstance(limit, int):
                dead_letter = DeadLetterPolicy(target, limit + 1)
        return QueueSpec(
            name,
            visibility_timeout=visibility,
            message_retention_period=retention,
            dead_letter=dead_letter,
        )

    # ------------------------------------------------------------- topology
    def _get_queue(self, name: str) -> QueueSpec | None:
        api = self.management
        if api is None:
            if not self._queue_exists(name):
                return None
            return self._declared.get(name) or QueueSpec(
                name, visibility_timeout=self.default_visibility_timeout
            )
        described = api.queue(name)
        if described is None:
            return None
        policy = api.policy(self._policy_name(name)) or {}
        definition = dict(policy.get("definition") or {})
        arguments = described.get("arguments") or {}
        for key, value in arguments.items():  # queue arguments win over policies
            if key.startswith("x-") and key != "x-queue-type":
                definition[key[2:]] = value
        return self._spec_from(name, definition, self._read_visibility(name))

    def _read_visibility(self, name: str) -> float:
        api = self.management
        if api is not None:
            value = api.parameter(self._parameter_name(name))
            if isinstance(value, dict) and isinstance(
                value.get("visibility_timeout"), (int, float)
            ):
                seconds = float(value["visibility_timeout"])
                self._visibility[name] = (seconds, time.monotonic())
                return seconds
        declared = self._declared.get(name)
        return declared.visibility_timeout if declared else self.default_visibility_timeout

    def _queue_drift(self, spec: QueueSpec) -> tuple[Change, ...]:
        api = self.management
        if api is None:
            with self._lock:
                declared_here = spec.name in self._declared
            if declared_here:
                return ()
            # AMQP cannot read a queue's arguments, so get_queue reported the defaults: a
            # declaration equal to them would never be sent. Sending it is how the broker
            # compares the arguments (406 PRECONDITION_FAILED, ImmutableSettingError).
            return (
                Change("queue arguments", "unread (no management_url)", "checked by the broker"),
            )
        described = api.queue(spec.name) or {}
        kind = described.get("type") or (described.get("arguments") or {}).get("x-queue-type")
        if kind and kind != "quorum":
            return (Change("queue type", kind, "quorum"),)
        return ()

    def _declare_queue(self, spec: QueueSpec) -> None:
        api = self.management
        if api is None:
            arguments = self.queue_arguments(spec)
        else:
            # A queue made without the management API holds settings in its arguments: they
            # win over policies and cannot change, and a redeclaration must repeat them.
            fixed = self._fixed_arguments(api, spec.name)
            self._check_fixed_arguments(spec, fixed)
            arguments = {**fixed, **QUORUM}

        def declare() -> None:
            try:
                self._link.channel().queue_declare(spec.name, durable=True, arguments=arguments)
            except pika.exceptions.ChannelClosedByBroker as error:
                raise errors.translate(error, spec.name, "declare the queue") from None

        self._declaring(declare)
        if api is not None:
            self._converge_queue(api, spec)
        with self._lock:
            self._declared[spec.name] = spec
            self._visibility[spec.name] = (spec.visibility_timeout, time.monotonic())

    @staticmethod
    def _fixed_arguments(api: ManagementAPI, name: str) -> dict[str, Any]:
        """The ``x-`` arguments of an existing queue, but its type (empty when it is new)."""
        described = api.queue(name) or {}
        arguments = described.get("arguments") or {}
        return {k: v for k, v in arguments.items() if k.startswith("x-") and k != "x-queue-type"}

    def _check_fixed_arguments(self, spec: QueueSpec, fixed: dict[str, Any]) -> None:
        """Raise ImmutableSettingError where ``spec`` differs from a setting held in arguments."""
        if not fixed:
            return
        held = self._spec_from(
            spec.name, {key[2:]: value for key, value in fixed.items()}, spec.visibility_timeout
        )
        differences: list[tuple[str, object, object]] = []
        if "x-message-ttl" in fixed:
            differences.append(
                (
                    "message_retention_period",
                    held.message_retention_period,
                    spec.message_retention_period,
                )
            )
        if "x-dead-letter-routing-key" in fixed or "x-dead-letter-exchange" in fixed:
            current, declared = held.dead_letter, spec.dead_letter
            differences.append(
                (
                    "dead_letter_queue_name",
                    current.queue_name if current else None,
                    declared.queue_name if declared else None,
                )
            )
            if current is not None and declared is not None:
                differences.append(
                    ("max_receive_count", current.max_receive_count, declared.max_receive_count)
                )
        for setting, current_value, declared_value in differences:
            if current_value != declared_value:
                raise ImmutableSettingError(spec.name, setting, current_value, declared_value)

    def _converge_queue(self, api: ManagementAPI, spec: QueueSpec) -> None:
        name = self._policy_name(spec.name)
        definition = self.policy_definition(spec)
        pattern = self.policy_pattern(spec.name)
        current = api.policy(name)
        if current is None or (
            current.get("definition"),
            current.get("pattern"),
            current.get("priority"),
            current.get("apply-to"),
        ) != (definition, pattern, self.policy_priority, "queues"):
            api.put_policy(name, pattern, definition, self.policy_priority)
        parameter = self._parameter_name(spec.name)
        wanted = {"visibility_timeout": spec.visibility_timeout}
        if api.parameter(parameter) != wanted:
            api.put_parameter(parameter, wanted)

    def _delete_queue(self, name: str) -> None:
        if not self._queue_exists(name):
            raise QueueNotFound(name)

        def delete() -> None:
            self._link.forget_queue(name)
            self._link.channel().queue_delete(name)

        self._declaring(delete)
        if self.management is not None:
            self.management.delete_policy(self._policy_name(name))
            self.management.delete_parameter(self._parameter_name(name))
        with self._lock:
            self._declared.pop(name, None)
            self._visibility.pop(name, None)
            for key in [key for key in self._subscriptions if key[1] == name]:
                del self._subscriptions[key]

    def _get_topic(self, name: str) -> TopicSpec | None:
        api = self.management
        exists = api.exchange(name) is not None if api is not None else self._exchange_exists(name)
        return TopicSpec(name) if exists else None

    def _declare_topic(self, spec: TopicSpec) -> None:
        def declare() -> None:
            try:
                self._link.channel().exchange_declare(spec.name, "headers", durable=True)
            except pika.exceptions.ChannelClosedByBroker as error:
                raise errors.translate(error, spec.name, "declare the exchange") from None

        self._declaring(declare)

    def _delete_topic(self, name: str) -> None:
        if not self._exchange_exists(name):
            raise TopicNotFound(name)
        self._declaring(lambda: self._link.channel().exchange_delete(name))
        with self._lock:
            for key in [key for key in self._subscriptions if key[0] == name]:
                del self._subscriptions[key]

    def _bindings(self, topic: str, queue: str) -> list[dict[str, Any]] | None:
        """The arguments of every binding from ``topic`` to ``queue``; ``None`` when unknown."""
        api = self.management
        if api is None:
            return None
        return [dict(binding.get("arguments") or {}) for binding in api.bindings(topic, queue)]

    def _get_subscription(self, topic_name: str, queue_name: str) -> SubscriptionSpec | None:
        current = self._bindings(topic_name, queue_name)
        if current is None:
            return self._subscriptions.get((topic_name, queue_name))
        if not current:
            return None
        return SubscriptionSpec(topic_name, queue_name, filters.filter_of(current))

    def _subscription_drift(self, spec: SubscriptionSpec) -> tuple[Change, ...]:
        current = self._bindings(spec.topic_name, spec.queue_name)
        if current is None:
            return ()
        wanted = filters.bindings_for(spec)
        if sorted(map(_frozen, current)) != sorted(map(_frozen, wanted)):
            return (Change("bindings", len(current), len(wanted)),)
        return ()

    def validate_subscription(
        self, topic: TopicSpec, queue: QueueSpec, subscription: SubscriptionSpec
    ) -> None:
        """Refuse filters a headers exchange cannot express (see ``melange_rabbitmq.filters``)."""
        filters.bindings_for(subscription)

    def _subscribe(self, spec: SubscriptionSpec) -> None:
        wanted = filters.bindings_for(spec)
        current = self._bindings(spec.topic_name, spec.queue_name) or []
        add = [args for args in wanted if _frozen(args) not in set(map(_frozen, current))]
        remove = [args for args in current if _frozen(args) not in set(map(_frozen, wanted))]

        def bind() -> None:
            channel = self._link.channel()
            try:
                for args in add:
                    channel.queue_bind(spec.queue_name, spec.topic_name, "", arguments=args)
                for args in remove:
                    channel.queue_unbind(spec.queue_name, spec.topic_name, "", arguments=args)
            except pika.exceptions.ChannelClosedByBroker as error:
                if error.reply_code == errors.NOT_FOUND:
                    if "exchange" in error.reply_text:
                        raise TopicNotFound(spec.topic_name) from None
                    raise QueueNotFound(spec.queue_name) from None
                raise errors.translate(error, spec.queue_name, "bind the queue") from None

        if add or remove:
            self._declaring(bind)
        with self._lock:
            self._subscriptions[(spec.topic_name, spec.queue_name)] = spec

    # ------------------------------------------------------------- publish
    def validate_message(self, message: OutgoingMessage) -> int:
        """Also refuse attribute names RabbitMQ reserves (``x-...``) before sending."""
        size = super().validate_message(message)
        for key in message.attributes:
            if key.startswith("x-"):
                raise InvalidMessage(
                    f"attribute {key!r}: RabbitMQ reserves header names starting with 'x-' "
                    "(x-delivery-count, x-death, ...); rename the attribute"
                )
        return size

    def _publish_batch(self, queue_name: str, batch: list[OutgoingMessage]) -> list[PublishResult]:
        return self._send("", queue_name, batch, queue=queue_name)

    def _publish_topic_batch(
        self, topic_name: str, batch: list[OutgoingMessage]
    ) -> list[PublishResult]:
        return self._send(topic_name, "", batch, queue=None)

    def _publish_failure(
        self, error: BaseException, queue: str | None, exchange: str
    ) -> MelangeError:
        """What ended a publish before every message was confirmed, as melange's error."""
        target = queue if queue is not None else exchange
        if isinstance(error, pika.exceptions.ChannelClosedByBroker):
            if error.reply_code == errors.NOT_FOUND:
                return TopicNotFound(exchange) if queue is None else QueueNotFound(queue)
            return errors.translate(error, target, "publish to")
        lost = isinstance(error, CONNECTION_ERRORS)
        if lost:
            self._link._lost(f"{type(error).__name__}: {error}")
        return _unknown(target, error, connection_lost=lost)

    def _send(
        self, exchange: str, routing_key: str, batch: list[OutgoingMessage], queue: str | None
    ) -> list[PublishResult]:
        link = self._link
        target = queue if queue is not None else exchange
        mandatory = queue is not None  # a queue that is missing returns the message

        def publish() -> list[PublishResult]:
            publisher = link.publisher()  # a failure here sent nothing: it raises
            messages = [
                (
                    bytes(message.body),
                    BasicProperties(
                        delivery_mode=2,
                        message_id=uuid.uuid4().hex,
                        headers=dict(message.attributes) or None,
                    ),
                )
                for message in batch
            ]
            sent = publisher.publish_all(exchange, routing_key, messages, mandatory=mandatory)
            outcomes, error = sent.outcomes, sent.error
            failure = None if error is None else self._publish_failure(error, queue, exchange)
            if failure is not None and not any(outcomes):
                raise failure  # the broker refused the first message, or nothing was confirmed
            if outcomes and all(outcome == "returned" for outcome in outcomes):
                raise QueueNotFound(target)  # no queue to route to
            results: list[PublishResult] = []
            for index, outcome in enumerate(outcomes):
                if outcome == "ack":
                    results.append(PublishResult(index, message_id=messages[index][1].message_id))
                elif outcome == "returned":
                    results.append(PublishResult(index, error=QueueNotFound(target)))
                elif outcome == "nack":
                    results.append(PublishResult(index, error=_nacked(target)))
                else:  # sent, then the channel or connection closed before its answer
                    results.append(PublishResult(index, error=_unconfirmed(target, failure)))
            return results

        return self._io(publish, publishing=True)

    # ------------------------------------------------------------- receive
    def _visibility_of(self, queue: str) -> float:
        cached = self._visibility.get(queue)
        if cached is not None and (self.management is None or time.monotonic() - cached[1] < 10.0):
            return cached[0]
        try:
            return self._read_visibility(queue)
        except MelangeError:
            return cached[0] if cached else self.default_visibility_timeout

    def _receive(
        self, queue_name: str, max_messages: int, wait_seconds: float
    ) -> list[ReceivedMessage]:
        link = self._link
        deadline = time.monotonic() + wait_seconds
        visibility: float | None = None
        poll = FULL_PREFETCH_POLL[0]
        while True:
            consuming = link.has_consumer(queue_name)
            deliveries = link.take(queue_name, max_messages) if consuming else []
            if not deliveries:
                remaining = deadline - time.monotonic()
                if consuming and remaining > 0 and len(link.leases) < link.prefetch:
                    # The consumer has room under its prefetch, so the broker pushes what is
                    # ready: wait for it rather than ask (basic.get is a round trip).
                    link.wait_for(queue_name, remaining)
                    continue
                got = self._io(lambda: self._get(queue_name))
                deliveries = [got] if got is not None else link.take(queue_name, max_messages)
            if deliveries:
                if visibility is None:
                    visibility = self._visibility_of(queue_name)
                return [self._hand_out(d, visibility) for d in deliveries]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            if len(link.leases) >= link.prefetch:
                # Nothing is pushed past the prefetch: ask the queue again soon (a message
                # published meanwhile, or one the get answered before it reached the queue).
                link.wait_for(queue_name, min(remaining, poll))
                poll = min(2 * poll, FULL_PREFETCH_POLL[1])
            else:
                link.wait_for(queue_name, remaining)

    def _get(self, queue: str) -> Delivery | None:
        try:
            return self._link.get(queue)
        except pika.exceptions.ChannelClosedByBroker as error:
            if error.reply_code == errors.NOT_FOUND:
                raise QueueNotFound(queue) from None
            raise errors.translate(error, queue, "consume from") from None

    def _hand_out(self, delivery: Delivery, visibility: float) -> ReceivedMessage:
        properties = delivery.properties
        headers = properties.headers or {}
        attributes = {
            key: _text(value) for key, value in headers.items() if not key.startswith("x-")
        }
        count = headers.get("x-delivery-count")
        if isinstance(count, int):
            receive_count = count + 1
        else:
            receive_count = 2 if delivery.method.redelivered else 1
        message_id = properties.message_id or f"rabbitmq-{uuid.uuid4().hex}"
        self._link.leases.hold(delivery.key, delivery.queue, message_id, visibility)
        return ReceivedMessage(
            queue_name=delivery.queue,
            body=delivery.body,
            attributes=attributes,
            message_id=message_id,
            receive_count=receive_count,
            receipt=RabbitMQReceipt(id(self._link), delivery.key),
        )

    def _keys(self, messages: list[ReceivedMessage]) -> list[DeliveryKey]:
        owner = id(self._link)
        keys = []
        for message in messages:
            receipt = message.receipt
            if not isinstance(receipt, RabbitMQReceipt) or receipt.owner != owner:
                raise InvalidMessage(
                    f"message {message.message_id!r} was not received by this RabbitMQ backend "
                    "(its receipt belongs to another backend or connection); settle it through "
                    "the backend that received it"
                )
            keys.append(receipt.key)
        return keys

    def _ack(self, messages: list[ReceivedMessage]) -> None:
        leases = self._link.leases
        keys = [key for key in self._keys(messages) if leases.settle(key)]
        if keys:
            self._link.settle_later(keys, requeue=None)

    def _nack(self, messages: list[ReceivedMessage], delay_seconds: float) -> None:
        leases = self._link.leases
        now = [key for key in self._keys(messages) if leases.release(key, delay_seconds)]
        if now:
            self._link.settle_later(now, requeue=True)

    def _extend_lease(self, messages: list[ReceivedMessage], seconds: float) -> None:
        leases = self._link.leases
        for message, key in zip(messages, self._keys(messages), strict=True):
            if leases.extend(key, seconds) is None:
                raise LeaseLost(message.message_id, message.queue_name)

    def _close(self) -> None:
        self._link.close()


def _frozen(arguments: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((str(k), str(v)) for k, v in arguments.items()))


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _nacked(target: str) -> MelangeError:
    return BrokerError(
        f"RabbitMQ did not accept the message for {target!r} (basic.nack): the queue refuses "
        "publishes (overflow reject-publish) or failed to store it",
        broker_code="nack",
    )


def _unconfirmed(target: str, cause: MelangeError | None) -> MelangeError:
    return OutcomeUnknown(
        f"no confirm came for the message to {target!r} before the publish ended ({cause}); "
        "it was sent and may or may not have been stored"
    )


def _unknown(target: str, error: BaseException, *, connection_lost: bool) -> MelangeError:
    what = (
        f"the connection to RabbitMQ was lost while publishing to {target!r}"
        if connection_lost
        else f"publishing to {target!r} failed before RabbitMQ confirmed it"
    )
    return OutcomeUnknown(
        f"{what} ({type(error).__name__}); the message may or may not have been stored"
    )


def _whole(value: object) -> bool:
    """Whether ``value`` is an ``int`` (not a ``bool``)."""
    return isinstance(value, int) and not isinstance(value, bool)
