"""Where messages go: addresses to entities, topic fan-out, forwarding, dead-lettering.

Runs on the broker's reactor thread only. Entities are read from the shared
:class:`~.namespace.Namespace` (under its lock) on every use, so changes made
through the management stand-in apply at once, as on the service.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from proton import Message, symbol

from . import amqp_filters
from .amqp_store import MessageBox, StoredMessage
from .namespace import Entity, Namespace, Queue, Subscription, Topic, parse_duration

DEAD_LETTER_SUFFIX = "$DeadLetterQueue"
MANAGEMENT_NODE = "$management"
SCHEDULED_ENQUEUE_TIME = symbol("x-opt-scheduled-enqueue-time")
DEAD_LETTER_SOURCE = symbol("x-opt-deadletter-source")
# Service Bus stops auto-forwarding chains after four hops.
MAX_FORWARD_HOPS = 4

Kind = Literal["queue", "topic", "subscription"]


class BrokerError(Exception):
    """An AMQP error condition to send back (on a disposition, a detach or a response)."""

    def __init__(self, condition: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.condition = condition
        self.description = description
        self.status = status


def not_found(path: str) -> BrokerError:
    return BrokerError(
        "amqp:not-found", f"The messaging entity '{path}' could not be found.", status=404
    )


def clone(message: Message) -> Message:
    """An independent copy (each subscription gets its own message)."""
    copy = Message()
    copy.decode(message.encode())
    return copy


@dataclass
class Address:
    """A parsed link address: an entity, possibly its dead-letter queue or management node."""

    kind: Kind
    entity: Entity
    path: str
    dead_letter: bool = False
    management: bool = False

    @property
    def box_path(self) -> str:
        return f"{self.path}/{DEAD_LETTER_SUFFIX}" if self.dead_letter else self.path


def entity_path(address: str) -> str:
    """``amqp://host:port/a/b`` or ``sb://host/a/b`` or ``a/b`` -> ``a/b``."""
    if "://" in address:
        rest = address.split("://", 1)[1]
        address = rest.split("/", 1)[1] if "/" in rest else ""
    return address.strip("/")


def _find(
    entities: dict[str, Entity] | dict[str, Queue] | dict[str, Topic] | dict[str, Subscription],
    name: str,
) -> Entity | None:
    found = entities.get(name)
    if found is not None:
        return found
    lowered = name.lower()
    return next((e for key, e in entities.items() if key.lower() == lowered), None)


@dataclass
class _Scheduled:
    due: float
    sequence_number: int
    target: str = field(compare=False)
    message: Message = field(compare=False)

    def __lt__(self, other: _Scheduled) -> bool:
        return (self.due, self.sequence_number) < (other.due, other.sequence_number)


class Router:
    """Resolves addresses and moves messages between the entities' boxes."""

    def __init__(self, namespace: Namespace, on_available: Callable[[MessageBox], None]) -> None:
        self.namespace = namespace
        self.boxes: dict[str, MessageBox] = {}
        self.errors: list[str] = []
        """Bugs a test must fail on (e.g. a filter the stand-in cannot evaluate)."""
        self.dropped: list[str] = []
        """Messages dropped where the service would dead-letter or discard them (e.g. a
        forward to an entity deleted meanwhile); expected in tests that delete entities."""
        self._on_available = on_available
        self._sequence = itertools.count(1)
        self._seen_ids: dict[str, dict[str, float]] = {}
        self._scheduled: list[_Scheduled] = []
        self._cancelled: set[int] = set()

    # -- addresses -------------------------------------------------------------------------

    def resolve(self, address: str) -> Address:
        """Parse a link address into an entity; raise ``amqp:not-found`` if there is none."""
        path = entity_path(address)
        parts = path.split("/")
        management = parts[-1].lower() == MANAGEMENT_NODE
        if management:
            parts = parts[:-1]
        dead_letter = len(parts) > 1 and parts[-1].lower() == DEAD_LETTER_SUFFIX.lower()
        if dead_letter:
            parts = parts[:-1]
        with self.namespace.lock:
            if len(parts) == 1:
                queue = _find(self.namespace.queues, parts[0])
                if queue is not None:
                    return Address("queue", queue, queue.name, dead_letter, management)
                topic = _find(self.namespace.topics, parts[0])
                if topic is not None and not dead_letter:
                    return Address("topic", topic, topic.name, False, management)
            elif len(parts) == 3 and parts[1].lower() == "subscriptions":
                topic = _find(self.namespace.topics, parts[0])
                if isinstance(topic, Topic):
                    sub = _find(topic.subscriptions, parts[2])
                    if sub is not None:
                        return Address(
                            "subscription",
                            sub,
                            f"{topic.name}/Subscriptions/{sub.name}",
                            dead_letter,
                            management,
                        )
        raise not_found(path)

    def box(self, address: Address) -> MessageBox:
        """The message box of a queue, subscription or dead-letter queue."""
        key = address.box_path.lower()
        box = self.boxes.get(key)
        # A different entity object under the same name was deleted and created again:
        # its messages are gone with it (updates keep the object).
        if box is None or box.entity is not address.entity:
            box = MessageBox(
                address.box_path,
                address.entity,
                requires_session=address.entity.requires_session and not address.dead_letter,
            )
            self.boxes[key] = box
        return box

    def drop_deleted(self) -> None:
        """Forget the messages of entities deleted through the management API."""
        for key, box in list(self.boxes.items()):
            try:
                self.resolve(box.path)
            except BrokerError:
                del self.boxes[key]

    # -- sending ---------------------------------------------------------------------------

    def send(self, address: Address, message: Message) -> int | None:
        """Accept a message sent to a queue or topic; return its sequence number if scheduled."""
        if address.kind == "subscription" or address.dead_letter or address.management:
            raise BrokerError(
                "amqp:not-allowed",
                f"Cannot send to '{address.box_path}': it is not a queue or topic.",
            )
        if address.entity.requires_session and address.kind == "queue" and not message.group_id:
            raise BrokerError(
                "amqp:not-allowed",
                "The SessionId was not set on a message, and it cannot be sent to the entity. "
                "Entities that have session support enabled can only receive messages that have "
                "the SessionId set to a valid value.",
            )
        if address.kind == "topic":
            self._check_quota(address, message)
        annotations = message.annotations or {}
        due = annotations.get(SCHEDULED_ENQUEUE_TIME)
        if due is not None and int(due) / 1000 > time.time():
            return self.schedule(address, message, int(due) / 1000)
        self._enter(address, message, hops=0)
        return None

    def _exists(self, target: str) -> bool:
        try:
            self.resolve(target)
        except BrokerError:
            return False
        return True

    def topic_size(self, topic: Topic) -> int:
        """Bytes held by the topic's subscriptions (and their dead-letter queues)."""
        with self.namespace.lock:
            subscriptions = list(topic.subscriptions.values())
        total = 0
        for sub in subscriptions:
            path = f"{topic.name}/Subscriptions/{sub.name}"
            for key in (path, f"{path}/{DEAD_LETTER_SUFFIX}"):
                box = self.boxes.get(key.lower())
                if box is not None and box.entity is sub:
                    total += sum(stored.size for stored in box.all_messages())
        return total

    def _check_quota(self, address: Address, message: Message) -> None:
        """Refuse a message the topic has no room for (QuotaExceededException)."""
        topic = address.entity
        assert isinstance(topic, Topic)
        megabytes = int(topic.description.get("MaxSizeInMegabytes") or "1024")
        limit = megabytes * self.namespace.megabyte
        size = self.topic_size(topic)
        if size + len(message.encode()) > limit:
            raise BrokerError(
                "amqp:resource-limit-exceeded",
                f"The maximum entity size has been reached or exceeded for Topic: "
                f"'{topic.name}'. Size of entity in bytes:{size}, Max entity size in "
                f"bytes:{limit}.",
                status=403,
            )

    def schedule(self, address: Address, message: Message, due: float) -> int:
        """Hold a message until ``due`` (epoch seconds); return its sequence number."""
        sequence_number = next(self._sequence)
        heapq.heappush(self._scheduled, _Scheduled(due, sequence_number, address.path, message))
        return sequence_number

    def cancel_scheduled(self, sequence_numbers: list[int]) -> None:
        self._cancelled.update(sequence_numbers)

    def scheduled_for(self, path: str) -> list[tuple[int, Message]]:
        lowered = path.lower()
        return [
            (s.sequence_number, s.message)
            for s in self._scheduled
            if s.target.lower() == lowered and s.sequence_number not in self._cancelled
        ]

    def release_due(self, now: float) -> None:
        """Enqueue scheduled messages whose time has come."""
        while self._scheduled and self._scheduled[0].due <= now:
            item = heapq.heappop(self._scheduled)
            if item.sequence_number in self._cancelled:
                self._cancelled.discard(item.sequence_number)
                continue
            try:
                self._enter(self.resolve(item.target), item.message, hops=0)
            except BrokerError as error:
                self.dropped.append(f"scheduled message for {item.target!r} dropped: {error}")

    def _enter(self, address: Address, message: Message, hops: int) -> None:
        """A message arrives at a queue or topic (sent, forwarded or released from schedule)."""
        if self._is_duplicate(address, message):
            return
        forward_to = address.entity.forward_to
        if address.kind == "queue" and forward_to:
            self._forward(forward_to, message, hops)
            return
        if address.kind == "queue":
            self._store(self.box(address), message)
            return
        topic = address.entity
        assert isinstance(topic, Topic)
        with self.namespace.lock:
            subscriptions = list(topic.subscriptions.values())
        properties = message.properties or {}
        for sub in subscriptions:
            if not self._passes(topic.name, sub, properties):
                continue
            sub_address = Address("subscription", sub, f"{topic.name}/Subscriptions/{sub.name}")
            if sub.forward_to and self._exists(sub.forward_to):
                self._forward(sub.forward_to, clone(message), hops)
            else:
                # A subscription whose forwarding target was deleted keeps its messages,
                # as on the service: they count against the topic's quota until it is full.
                self._store(self.box(sub_address), clone(message))

    def _passes(self, topic: str, sub: Subscription, properties: dict[str, object]) -> bool:
        with self.namespace.lock:
            expressions = [rule.sql_expression for rule in sub.rules.values()]
        try:
            return any(amqp_filters.matches(e, properties) for e in expressions)
        except amqp_filters.UnsupportedFilterError as error:
            self.errors.append(f"{topic}/Subscriptions/{sub.name}: {error}")
            raise BrokerError("amqp:not-implemented", str(error), status=501) from error

    def _forward(self, target: str, message: Message, hops: int) -> None:
        if hops >= MAX_FORWARD_HOPS:
            self.dropped.append(f"forwarding to {target!r} stopped after {hops} hops")
            return
        try:
            address = self.resolve(target)
        except BrokerError:
            self.dropped.append(f"forwarding target {target!r} does not exist; message dropped")
            return
        self._enter(address, message, hops + 1)

    def _store(self, box: MessageBox, message: Message) -> None:
        # A new sequence number and a reset delivery count, as for any message entering an entity.
        stored = StoredMessage(
            message=message,
            sequence_number=next(self._sequence),
            enqueued_time=time.time(),
            session_id=message.group_id or None,
            size=len(message.encode()),
        )
        box.add(stored)
        self._on_available(box)

    def _is_duplicate(self, address: Address, message: Message) -> bool:
        entity = address.entity
        if not entity.requires_duplicate_detection or message.id is None:
            return False
        now = time.time()
        window = entity.duplicate_detection_window.total_seconds()
        seen = self._seen_ids.setdefault(address.path.lower(), {})
        key = str(message.id)
        if seen.get(key, 0.0) > now:
            return True
        seen[key] = now + window
        return False

    # -- failures --------------------------------------------------------------------------

    def expired(self, box: MessageBox, stored: StoredMessage, now: float) -> bool:
        """Drop (or dead-letter) a message past its time to live; ``True`` if it was.

        The time to live is the message's, capped by the entity's DefaultMessageTimeToLive;
        a dead-letter queue does not observe it.
        """
        if box.path.endswith(DEAD_LETTER_SUFFIX):
            return False
        default = parse_duration(
            box.entity.description.get("DefaultMessageTimeToLive") or "P10675199D"
        ).total_seconds()
        ttl = min(stored.message.ttl or default, default)
        if stored.enqueued_time + ttl > now:
            return False
        if box.entity.description.get("DeadLetteringOnMessageExpiration", "").lower() == "true":
            self.dead_letter(
                box, stored, "TTLExpiredException", "The message expired and was dead lettered."
            )
        return True

    def delivery_failed(self, box: MessageBox, stored: StoredMessage) -> None:
        """Abandon or lock loss: count the attempt, then redeliver or dead-letter."""
        stored.delivery_count += 1
        is_dead_letter_queue = box.path.endswith(DEAD_LETTER_SUFFIX)
        if not is_dead_letter_queue and stored.delivery_count >= box.entity.max_delivery_count:
            self.dead_letter(
                box,
                stored,
                "MaxDeliveryCountExceeded",
                f"Message could not be consumed after {stored.delivery_count} delivery attempts.",
            )
            return
        box.add(stored)
        self._on_available(box)

    def dead_letter(
        self, box: MessageBox, stored: StoredMessage, reason: str | None, description: str | None
    ) -> None:
        """Move a message to its entity's dead-letter queue (or where those are forwarded)."""
        if box.path.endswith(DEAD_LETTER_SUFFIX):
            box.add(stored)  # the dead-letter queue has no dead-letter queue
            self._on_available(box)
            return
        message = stored.message
        properties = dict(message.properties or {})
        if reason is not None:
            properties["DeadLetterReason"] = reason
        if description is not None:
            properties["DeadLetterErrorDescription"] = description
        message.properties = properties
        annotations = dict(message.annotations or {})
        annotations[DEAD_LETTER_SOURCE] = box.path
        message.annotations = annotations
        target = box.entity.forward_dead_lettered_messages_to
        if target:
            stored.message = message
            self._forward(target, message, hops=0)
            return
        kind: Kind = "subscription" if "/" in box.path else "queue"
        dlq = self.box(Address(kind, box.entity, box.path, dead_letter=True))
        dlq.add(stored)
        self._on_available(dlq)
