"""The state shared by the two stand-ins: the entities of one Service Bus namespace.

The management stand-in (ATOM/XML over HTTP) creates, reads, updates and deletes
these entities; the AMQP stand-in reads them to decide how to deliver (lock
duration, max delivery count, sessions, duplicate detection, forwarding, rules).

Each entity keeps its description as Service Bus puts it on the wire: element
name (``MaxDeliveryCount``) to text (``"10"``), in document order. Typed
accessors parse the few values delivery depends on.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from datetime import timedelta

_DURATION = re.compile(
    r"^P(?:(?P<days>\d+)D)?(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?"
    r"(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)


def parse_duration(text: str) -> timedelta:
    """Parse the ISO 8601 durations Service Bus uses (``PT1M``, ``P10675199DT2H48M5.47S``)."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"not an ISO 8601 duration: {text!r}")
    parts = {k: float(v) for k, v in match.groupdict().items() if v is not None}
    return timedelta(**parts)


def entity_name_from_forward_to(value: str) -> str:
    """``ForwardTo`` arrives as ``sb://host:port/<entity>``; return ``<entity>``."""
    if "://" in value:
        value = value.split("://", 1)[1].split("/", 1)[1] if "/" in value.split("://", 1)[1] else ""
    return value.strip("/")


@dataclass
class Entity:
    """A queue, topic or subscription: its name and its wire description."""

    name: str
    description: dict[str, str] = field(default_factory=dict)

    def _get(self, key: str, default: str) -> str:
        return self.description.get(key) or default

    def _flag(self, key: str) -> bool:
        return self._get(key, "false").lower() == "true"

    @property
    def lock_duration(self) -> timedelta:
        return parse_duration(self._get("LockDuration", "PT1M"))

    @property
    def max_delivery_count(self) -> int:
        return int(self._get("MaxDeliveryCount", "10"))

    @property
    def requires_session(self) -> bool:
        return self._flag("RequiresSession")

    @property
    def requires_duplicate_detection(self) -> bool:
        return self._flag("RequiresDuplicateDetection")

    @property
    def duplicate_detection_window(self) -> timedelta:
        return parse_duration(self._get("DuplicateDetectionHistoryTimeWindow", "PT10M"))

    @property
    def forward_to(self) -> str | None:
        value = self.description.get("ForwardTo")
        return entity_name_from_forward_to(value) if value else None

    @property
    def forward_dead_lettered_messages_to(self) -> str | None:
        value = self.description.get("ForwardDeadLetteredMessagesTo")
        return entity_name_from_forward_to(value) if value else None


@dataclass
class Rule:
    """A subscription rule: its name and its wire description (filter, action)."""

    name: str
    description: dict[str, str] = field(default_factory=dict)
    sql_expression: str | None = None
    """The SqlFilter expression, or ``None`` for a TrueFilter (``1=1``)."""


@dataclass
class Subscription(Entity):
    rules: dict[str, Rule] = field(default_factory=dict)


@dataclass
class Topic(Entity):
    subscriptions: dict[str, Subscription] = field(default_factory=dict)


@dataclass
class Queue(Entity):
    pass


@dataclass
class Namespace:
    """All entities of one namespace; hold ``lock`` while reading or changing them."""

    queues: dict[str, Queue] = field(default_factory=dict)
    topics: dict[str, Topic] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)
    megabyte: int = 1024 * 1024
    """Bytes one MaxSizeInMegabytes megabyte stands for; a test shrinks it to reach a
    topic's quota with a few messages (the service's smallest quota is 1024 MB)."""
    conflict_after_delete: float = 0.0
    """Seconds after a delete during which creating the same name answers 409
    "conflicting operation in progress", as the service does while it still removes
    the entity; 0 (the default) turns it off."""
    clock_skew: float = 0.0
    """Seconds the broker's clock is ahead of the host's (negative: behind): added to
    the lock expiry times it reports, never to the times it enforces."""
    deleted_at: dict[str, float] = field(default_factory=dict)
    """When each entity path (lower case) was last deleted (``time.monotonic()``)."""
