"""What a topology is made of: topic, queue and subscription specs, and the plan.

Specs are frozen values: the factory builds them from a request, backends
report the current state of the broker as the same specs (``get_queue`` and
friends), and the plan is the difference between the two.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from melange.exceptions import InvalidName, RemovedIn8

FIFO_SUFFIX = ".fifo"
"""Names ending with this suffix are FIFO queues and topics, as on SQS/SNS."""

_WRAPPER_7X = frozenset({"unwrapped_obj", "unwrap", "obj"})
"""What melange 7.x's QueueWrapper/TopicWrapper offered; read on melange 8's objects, it
raises an error that says what changed."""

DEFAULT_MAX_RECEIVE_COUNT = 5
DEFAULT_VISIBILITY_TIMEOUT = 30.0
DEFAULT_RETENTION_PERIOD = 4 * 24 * 3600.0

SubscriptionFilter = Mapping[str, Sequence[str]]
"""An attribute filter: every key must be present with one of the listed values."""


def is_fifo_name(name: str) -> bool:
    """Return whether ``name`` names a FIFO queue or topic (ends with ``.fifo``)."""
    return name.endswith(FIFO_SUFFIX)


@dataclass(frozen=True)
class DeadLetterPolicy:
    """Where a queue moves messages that were received too often without an ack.

    Attributes:
        queue_name: The dead-letter queue.
        max_receive_count: Receives after which the next one moves the message there.
    """

    queue_name: str
    max_receive_count: int = DEFAULT_MAX_RECEIVE_COUNT


@dataclass(frozen=True)
class QueueSpec:
    """The declared (or current) state of a queue.

    Attributes:
        name: The queue name.
        fifo: Whether the queue keeps per-group order (and deduplicates).
        visibility_timeout: Seconds a received message stays invisible before redelivery.
        message_retention_period: Seconds an unreceived message is kept.
        delay_seconds: Seconds every new message waits before it can be received.
        dead_letter: Where messages go after too many receives, if anywhere.
    """

    name: str
    fifo: bool = False
    visibility_timeout: float = DEFAULT_VISIBILITY_TIMEOUT
    message_retention_period: float = DEFAULT_RETENTION_PERIOD
    delay_seconds: float = 0.0
    dead_letter: DeadLetterPolicy | None = None

    def settings(self) -> dict[str, object]:
        """Return the managed settings (everything but the name) by field name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "name"}

    def __getattr__(self, name: str) -> Any:
        if name in _WRAPPER_7X:  # 7.x's backend returned wrapped broker objects
            raise RemovedIn8(
                f"a {type(self).__name__} is the resource's declared state, not melange 7.x's "
                f"wrapper (.{name}): melange 8 names queues and topics by their names"
            )
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


@dataclass(frozen=True)
class TopicSpec:
    """The declared (or current) state of a topic.

    Attributes:
        name: The topic name.
        fifo: Whether the topic keeps per-group order.
    """

    name: str
    fifo: bool = False

    def settings(self) -> dict[str, object]:
        """Return the managed settings (everything but the name) by field name."""
        return {"fifo": self.fifo}

    def __getattr__(self, name: str) -> Any:
        if name in _WRAPPER_7X:  # 7.x's backend returned wrapped broker objects
            raise RemovedIn8(
                f"a {type(self).__name__} is the resource's declared state, not melange 7.x's "
                f"wrapper (.{name}): melange 8 names queues and topics by their names"
            )
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


@dataclass(frozen=True)
class SubscriptionSpec:
    """A queue subscribed to a topic, optionally filtered by message attributes.

    Attributes:
        topic_name: The topic that fans out.
        queue_name: The queue that receives a copy of each matching message.
        filter: ``{attribute: [allowed values]}``; ``None`` lets everything through.
    """

    topic_name: str
    queue_name: str
    filter: tuple[tuple[str, tuple[str, ...]], ...] | None = None

    @staticmethod
    def normalize_filter(
        value: SubscriptionFilter | None,
    ) -> tuple[tuple[str, tuple[str, ...]], ...] | None:
        """Turn a user's filter mapping into the canonical, comparable form.

        The values of an attribute are a set: their order and repeats mean nothing.
        """
        if value is None:
            return None
        return tuple(
            sorted((str(k), tuple(sorted({str(v) for v in vs}))) for k, vs in value.items())
        )

    def filter_dict(self) -> dict[str, list[str]] | None:
        """Return the filter as ``{attribute: [values]}``, or ``None``."""
        return None if self.filter is None else {k: list(vs) for k, vs in self.filter}

    def matches(self, attributes: Mapping[str, str]) -> bool:
        """Return whether a message with ``attributes`` passes this subscription's filter."""
        if self.filter is None:
            return True
        return all(attributes.get(key) in values for key, values in self.filter)


@dataclass(frozen=True)
class NameRule:
    """A broker's naming rule, checked before any call.

    Attributes:
        pattern: A full-match regular expression for the base name (without ``.fifo``).
        max_length: The longest allowed name, suffix included.
        description: The rule in words, used in error messages.
    """

    pattern: str = r"[A-Za-z0-9_-]+"
    max_length: int = 80
    description: str = "1 to 80 characters: letters, digits, hyphens and underscores"

    def check(self, kind: str, name: str, fifo: bool) -> None:
        """Raise :class:`InvalidName` unless ``name`` follows the rule.

        Args:
            kind: ``"queue"`` or ``"topic"``, for the message.
            name: The full name.
            fifo: Whether a FIFO resource is being declared.
        """
        if not isinstance(name, str) or not name:
            raise InvalidName(kind, str(name), "a name must be a non-empty string")
        if fifo != is_fifo_name(name):
            need = "must end" if fifo else "must not end"
            raise InvalidName(
                kind,
                name,
                f"a {'FIFO' if fifo else 'standard'} {kind} name {need} with "
                f"{FIFO_SUFFIX!r}; '.fifo' names are FIFO {kind}s and other names are standard",
            )
        base = name[: -len(FIFO_SUFFIX)] if fifo else name
        if len(name) > self.max_length or not re.fullmatch(self.pattern, base):
            # The suffix is part of the name, not extra: brokers count it in the limit.
            suffix = (
                f"; a FIFO name ends in {FIFO_SUFFIX!r}, which counts toward the {self.max_length}"
            )
            raise InvalidName(kind, name, f"use {self.description}{suffix}")


ActionKind = Literal[
    "create_topic",
    "create_queue",
    "update_queue",
    "subscribe",
    "update_subscription",
]


@dataclass(frozen=True)
class Change:
    """One setting that differs between the broker and the declaration."""

    setting: str
    current: object
    declared: object

    def __str__(self) -> str:
        return f"{self.setting}: {self.current!r} -> {self.declared!r}"


@dataclass(frozen=True)
class Action:
    """One step of a plan.

    Attributes:
        kind: What the step does.
        spec: The declared state the step brings about.
        changes: For updates, what differs now.
    """

    kind: ActionKind
    spec: QueueSpec | TopicSpec | SubscriptionSpec
    changes: tuple[Change, ...] = ()

    @property
    def target(self) -> str:
        """A readable name of the resource the action touches."""
        if isinstance(self.spec, SubscriptionSpec):
            return f"{self.spec.topic_name} -> {self.spec.queue_name}"
        return self.spec.name

    def __str__(self) -> str:
        verb = self.kind.replace("_", " ")
        if self.changes:
            return f"{verb} {self.target!r}: " + ", ".join(
                f"{c.setting} {_show(c.current)} -> {_show(c.declared)}" for c in self.changes
            )
        if isinstance(self.spec, SubscriptionSpec):
            extra = f" filter={self.spec.filter_dict()}" if self.spec.filter else ""
            return f"{verb} {self.target!r}{extra}"
        details = ", ".join(
            f"{k}={_show(v)}" for k, v in self.spec.settings().items() if v not in (None, False)
        )
        return f"{verb} {self.target!r}" + (f" ({details})" if details else "")


def _show(value: object) -> str:
    if isinstance(value, DeadLetterPolicy):
        return f"{value.queue_name!r} after {value.max_receive_count} receives"
    if isinstance(value, float) and value.is_integer():
        return f"{value:g}"
    return repr(value)


@dataclass(frozen=True)
class Plan:
    """The actions that bring the broker to a declared topology, in order.

    An empty plan means the broker already matches: applying it calls nothing
    that changes the broker.

    Attributes:
        actions: The steps, topics first, then dead-letter queues, queues, subscriptions.
        unchanged: Resources that already match their declaration.
    """

    actions: tuple[Action, ...] = ()
    unchanged: tuple[str, ...] = field(default=())

    def __iter__(self) -> Iterator[Action]:
        return iter(self.actions)

    def __getattr__(self, name: str) -> Any:
        if name in _WRAPPER_7X:  # 7.x's init_queue/init_topic returned a wrapped resource
            raise RemovedIn8(
                f"init_queue/init_topic return a Plan in melange 8, not melange 7.x's wrapper "
                f"(.{name}): the queue or topic is named by its name; read its state with "
                "backend.get_queue(name) or backend.get_topic(name)"
            )
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __len__(self) -> int:
        return len(self.actions)

    def __bool__(self) -> bool:
        return bool(self.actions)

    def __add__(self, other: Plan) -> Plan:
        return Plan(self.actions + other.actions, self.unchanged + other.unchanged)

    def describe(self) -> str:
        """Return the plan as readable lines, one per action."""
        lines = [
            f"+ {a}" if a.kind.startswith(("create", "subscribe")) else f"~ {a}"
            for a in self.actions
        ]
        lines += [f"= {name} (up to date)" for name in self.unchanged]
        return "\n".join(lines) if lines else "(nothing to do)"
