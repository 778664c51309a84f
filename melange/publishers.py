"""Publishers: send messages to a queue or a topic through any backend.

A publisher turns application objects into what a backend sends: it lets the
hooks add their attributes (trace context), serializes the message through a
:class:`~melange.serializers.SerializerRegistry`, and publishes it::

    publisher = TopicPublisher(backend)
    publisher.publish("payments", PaymentEvent("pay-1", 1250), attributes={"event": "paid"})

    results = publisher.publish_batch("payments", [event1, Message(event2, group_id="pay-2")])
    failed = [r for r in results if not r.ok]

Everything is checked before anything is sent: a payload that cannot be
serialized, an attribute name melange reserves, a message over the backend's
size limit, or a group id, dedup id or delay the backend cannot honour raises
the specific :class:`~melange.exceptions.MelangeError`, and no message of the
call was published.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar, cast

from melange.backends.base import MessagingBackend, OutgoingMessage, PublishResult
from melange.exceptions import (
    ConfigurationError,
    InvalidArgument,
    InvalidMessage,
    MelangeError,
    MessageTooLarge,
    require_number,
    require_str,
)
from melange.message import RESERVED_ATTRIBUTES, Message
from melange.observability import Hooks, safe
from melange.serializers import SerializerRegistry

__all__ = ["QueuePublisher", "TopicPublisher"]

logger = logging.getLogger("melange.publishers")

_P = TypeVar("_P", bound="_Publisher")


class _Publisher:
    """What both publishers share; they differ only in where a batch goes."""

    _kind: Literal["queue", "topic"] = "queue"

    def __new__(cls: type[_P], *args: Any, **kwargs: Any) -> _P:
        # melange 7.x took (serializer_registry, backend=None): a registry first is that form,
        # handled by a subclass in melange.compat (loaded only then).
        if (cls is QueuePublisher or cls is TopicPublisher) and (
            (args and isinstance(args[0], SerializerRegistry)) or "serializer_registry" in kwargs
        ):
            from melange.compat.calls_publishers import publisher_class_7x

            # A subclass of cls, so Python then runs its __init__ with these arguments.
            return cast(_P, super().__new__(publisher_class_7x(cls)))
        return super().__new__(cls)

    def __init__(
        self,
        backend: MessagingBackend,
        serializers: SerializerRegistry | None = None,
        *,
        hooks: Hooks | None = None,
        producer_ids: bool = True,
    ) -> None:
        if not isinstance(backend, MessagingBackend):
            raise ConfigurationError(
                f"{type(self).__name__} needs a melange.backends.MessagingBackend as its first "
                f"argument, got {type(backend).__name__}; e.g. {type(self).__name__}(backend, "
                "serializers), with a backend from melange.backends.load_backend(name)"
            )
        if serializers is not None and not isinstance(serializers, SerializerRegistry):
            raise ConfigurationError(
                f"serializers must be a melange.serializers.SerializerRegistry, got "
                f"{type(serializers).__name__}"
            )
        self.backend = backend
        self.producer_ids = producer_ids
        self.serializers = SerializerRegistry() if serializers is None else serializers
        if hooks is None:
            from melange.tracing import default_hooks

            hooks = default_hooks()
        self.hooks = hooks
        self._hooks = safe(hooks)  # a failing hook is logged, never fails a publish
        self._warned_limits = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} backend={self.backend.name!r}>"

    def _publish_one(
        self,
        destination: str,
        data: Message | Any,
        attributes: Mapping[str, str] | None,
        group_id: str | None,
        dedup_id: str | None,
        delay_seconds: float,
        producer_id: str | None,
    ) -> PublishResult:
        require_str(f"{self._kind}_name", destination)
        message = self._message(data, attributes, group_id, dedup_id, producer_id)
        outgoing = self._encode(message, require_number("delay_seconds", delay_seconds))
        results = self._send(destination, [outgoing])
        error = results[0].error
        if error is not None:
            error.results = results  # refused or unknown: the caller can tell which
            raise error
        return results[0]

    def _publish_many(
        self, destination: str, items: Sequence[Message | Any]
    ) -> list[PublishResult]:
        require_str(f"{self._kind}_name", destination)
        if isinstance(items, (str, bytes, bytearray, Message, Mapping)) or not isinstance(
            items, Sequence
        ):
            raise InvalidMessage(
                f"publish_batch() needs a list of messages, got a {type(items).__name__}; "
                "use publish() for a single message"
            )
        # Encode every item first: a bad one fails the call before anything is sent.
        outgoing = [
            self._encode(self._message(item, None, None, None, None), 0.0) for item in items
        ]
        if not outgoing:
            return []
        return self._send(destination, outgoing)

    # ------------------------------------------------------------------ steps
    @staticmethod
    def _message(
        data: Message | Any,
        attributes: Mapping[str, str] | None,
        group_id: str | None,
        dedup_id: str | None,
        producer_id: str | None,
    ) -> Message:
        if not isinstance(data, Message):
            return Message(
                data,
                attributes=attributes or {},
                group_id=group_id,
                dedup_id=dedup_id,
                producer_id=producer_id,
            )
        changes: dict[str, Any] = {}
        if attributes:
            if not isinstance(attributes, Mapping):  # as Message() itself would refuse it
                raise InvalidArgument(
                    "attributes", "a mapping of str to str, e.g. {'event': 'paid'}", attributes
                )
            changes["attributes"] = {**data.attributes, **attributes}
        if group_id is not None:
            changes["group_id"] = group_id
        if dedup_id is not None:
            changes["dedup_id"] = dedup_id
        if producer_id is not None:
            changes["producer_id"] = producer_id
        return dataclasses.replace(data, **changes) if changes else data

    def _encode(self, message: Message, delay_seconds: float) -> OutgoingMessage:
        own = message.attributes
        proposed = dict(own)
        self._hooks.prepare_attributes(proposed)
        added = self._hook_attributes(own, proposed)
        if added:
            message = dataclasses.replace(message, attributes={**added, **own})
        outgoing = self.serializers.encode(
            message, delay_seconds=delay_seconds, producer_id=self.producer_ids
        )
        if added:
            refused = self._refusal(outgoing)
            if refused is not None:
                kept = {k: v for k, v in outgoing.attributes.items() if k not in added}
                without = dataclasses.replace(outgoing, attributes=kept)
                if self._refusal(without) is None:  # else the message's own: the send says so
                    self._warn_dropped(added, refused)
                    outgoing = without
        return outgoing

    def _refusal(self, outgoing: OutgoingMessage) -> MelangeError | None:
        """Why the backend would refuse ``outgoing`` (its own rules and measure), if it would."""
        try:
            self.backend.validate_message(outgoing)
        except (InvalidMessage, MessageTooLarge) as refused:
            return refused
        return None

    def _warn_dropped(self, added: Mapping[str, str], refused: MelangeError) -> None:
        # Observability must not make a message unsendable: it is sent without them. Warn
        # once per publisher: with tracing on, this would repeat for every message.
        level = logging.DEBUG if self._warned_limits else logging.WARNING
        self._warned_limits = True
        logger.log(
            level,
            "hook attributes %s dropped: backend %r refuses the message with them (%s); it is "
            "sent without them",
            ", ".join(sorted(added)),
            self.backend.name,
            refused,
        )

    @staticmethod
    def _hook_attributes(own: Mapping[str, str], proposed: Mapping[str, str]) -> dict[str, str]:
        """Return what the hooks added: new, well-formed, not reserved. Own attributes win."""
        added: dict[str, str] = {}
        for key, value in proposed.items():
            if key in own:
                continue
            if key in RESERVED_ATTRIBUTES or not isinstance(key, str) or not key:
                logger.warning("hook attribute %r ignored: the name is reserved or empty", key)
            elif not isinstance(value, str):
                logger.warning("hook attribute %r ignored: its value is not a string", key)
            else:
                added[key] = value
        return added

    def _send(self, destination: str, outgoing: list[OutgoingMessage]) -> list[PublishResult]:
        if self._kind == "topic":
            results = self.backend.publish_to_topic(destination, outgoing)
        else:
            results = self.backend.publish(destination, outgoing)
        self._hooks.on_publish(destination, outgoing, results)
        failed = sum(not result.ok for result in results)
        if failed:
            unknown = sum(result.status == "unknown" for result in results)
            logger.warning(
                "%d of %d message(s) to %s %r not accepted: %d refused (not stored), %d unknown "
                "(sent, no answer: they may have been stored)",
                failed,
                len(results),
                self._kind,
                destination,
                failed - unknown,
                unknown,
            )
        return results


class QueuePublisher(_Publisher):
    """Publishes messages straight to a queue.

    Examples:
        >>> publisher = QueuePublisher(backend)  # doctest: +SKIP
        >>> publisher.publish("payment-updates", {"id": 1}).message_id  # doctest: +SKIP
        '5f0c...'

    Args:
        backend: The backend to publish through.
        serializers: The registry that serializes payloads; a new JSON registry
            when omitted. Bind the same types and manifests as the consumers do.
        hooks: Called before each message is encoded and after each publish; by
            default :func:`melange.tracing.default_hooks` (trace context when
            OpenTelemetry is installed). Pass ``Hooks()`` for none.
        producer_ids: Give every message a producer id (the ``melange.id``
            attribute) before the first attempt to send it, so that consumers
            with a deduplication cache handle publisher-retry duplicates once.
            ``False`` saves one attribute per message and drops that guarantee.
    """

    _kind = "queue"

    def publish(
        self,
        queue_name: str,
        data: Message | Any,
        *,
        attributes: Mapping[str, str] | None = None,
        group_id: str | None = None,
        dedup_id: str | None = None,
        delay_seconds: float = 0.0,
        producer_id: str | None = None,
    ) -> PublishResult:
        """Serialize and publish one message to a queue.

        Args:
            queue_name: The queue.
            data: A :class:`~melange.message.Message` (its manifest, attributes,
                group and dedup ids are kept) or a bare payload object.
            attributes: Attributes added to the message's own; these win on a clash.
            group_id: The FIFO message group; replaces the message's.
            dedup_id: The deduplication id; replaces the message's.
            delay_seconds: Seconds before the message can be received.
            producer_id: The message's producer id (``melange.id``); replaces the
                message's. By default a new one is assigned before sending.

        Returns:
            The result of the accepted message, with the broker's message id.

        Raises:
            SerializationError: The payload cannot be serialized.
            InvalidArgument: An argument has the wrong type (e.g. a ``group_id``
                that is not a string).
            InvalidMessage: An attribute is not a string or uses a name melange
                reserves, the delay is out of range, or the destination cannot
                take the group id, dedup id or delay (see the backend's page).
            MessageTooLarge: The message is over the backend's size limit.
            UnsupportedCapability: The backend cannot honour the group id, dedup id
                or delay.
            QueueNotFound: The queue does not exist.
            OutcomeUnknown: The request was sent but no answer came: the message
                may have been stored (``error.results`` holds the result).
            MelangeError: The broker refused the message (the error of its result;
                ``error.results`` holds the result); it was not stored.
        """
        return self._publish_one(
            queue_name, data, attributes, group_id, dedup_id, delay_seconds, producer_id
        )

    def publish_batch(self, queue_name: str, items: Sequence[Message | Any]) -> list[PublishResult]:
        """Serialize and publish several messages, in as few broker calls as the backend allows.

        Every item is serialized and validated before any is sent, so an error
        raised here means nothing was published. Items that are
        :class:`~melange.message.Message` objects keep their manifest, attributes,
        group and dedup ids.

        Args:
            queue_name: The queue.
            items: The messages or payloads, in order.

        Returns:
            One result per item, in order. A result whose ``ok`` is false holds the
            broker's reason in ``error``; the other messages were still sent.

        Raises:
            SerializationError: An item cannot be serialized.
            InvalidMessage: An item is malformed, or ``items`` is one message
                rather than a sequence of them.
            MessageTooLarge: An item is over the backend's size limit.
            UnsupportedCapability: An item needs something the backend cannot do.
            QueueNotFound: The queue does not exist.
        """
        return self._publish_many(queue_name, items)


class TopicPublisher(_Publisher):
    """Publishes messages to a topic; every subscribed queue whose filter matches gets a copy.

    Examples:
        >>> publisher = TopicPublisher(backend)  # doctest: +SKIP
        >>> publisher.publish("payments", event, attributes={"event": "paid"})  # doctest: +SKIP

    Args:
        backend: The backend to publish through; it must support topics.
        serializers: The registry that serializes payloads; a new JSON registry
            when omitted. Bind the same types and manifests as the consumers do.
        hooks: Called before each message is encoded and after each publish; by
            default :func:`melange.tracing.default_hooks` (trace context when
            OpenTelemetry is installed). Pass ``Hooks()`` for none.
        producer_ids: Give every message a producer id (the ``melange.id``
            attribute) before the first attempt to send it, so that consumers
            with a deduplication cache handle publisher-retry duplicates once.
            ``False`` saves one attribute per message and drops that guarantee.
    """

    _kind = "topic"

    def publish(
        self,
        topic_name: str,
        data: Message | Any,
        *,
        attributes: Mapping[str, str] | None = None,
        group_id: str | None = None,
        dedup_id: str | None = None,
        delay_seconds: float = 0.0,
        producer_id: str | None = None,
    ) -> PublishResult:
        """Serialize and publish one message to a topic.

        Arguments, result and errors are those of :meth:`QueuePublisher.publish`,
        with :class:`~melange.exceptions.TopicNotFound` for a missing topic and
        :class:`~melange.exceptions.UnsupportedCapability` when the backend has
        no topics (a delay its topics cannot take is an
        :class:`~melange.exceptions.InvalidMessage`, as on SNS).

        Args:
            topic_name: The topic.
            data: A :class:`~melange.message.Message` or a bare payload object.
            attributes: Attributes added to the message's own; these win on a clash.
            group_id: The FIFO message group; replaces the message's.
            dedup_id: The deduplication id; replaces the message's.
            delay_seconds: Seconds before the message can be received.
            producer_id: The message's producer id (``melange.id``); replaces the
                message's. By default a new one is assigned before sending.

        Returns:
            The result of the accepted message, with the broker's message id.
        """
        return self._publish_one(
            topic_name, data, attributes, group_id, dedup_id, delay_seconds, producer_id
        )

    def publish_batch(self, topic_name: str, items: Sequence[Message | Any]) -> list[PublishResult]:
        """Serialize and publish several messages to a topic.

        Works like :meth:`QueuePublisher.publish_batch`.

        Args:
            topic_name: The topic.
            items: The messages or payloads, in order.

        Returns:
            One result per item, in order.
        """
        return self._publish_many(topic_name, items)
