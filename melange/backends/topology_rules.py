"""The topology rules every backend shares, checked in one place before anything is declared.

:class:`~melange.backends.base.MessagingBackend` calls these from its public
``declare_queue``, ``declare_topic`` and ``subscribe`` (and the factory calls the
same methods while planning), then the backend's own ``validate_*`` hooks for what
only its broker refuses. What differs between brokers is data on the backend:
its :class:`~melange.backends.base.Capabilities` (limits, ``dead_letter_any_kind``,
``case_insensitive_names``), its name rules, and the words its messages use
(``broker_label``, ``receive_count_setting``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from melange.exceptions import InvalidArgument, InvalidTopology
from melange.topology import DeadLetterPolicy, QueueSpec, SubscriptionSpec, TopicSpec, is_fifo_name

if TYPE_CHECKING:
    from melange.backends.base import MessagingBackend

__all__ = ["check_queue", "check_subscription", "check_topic", "dead_letter_mismatch"]


def check_queue(backend: MessagingBackend, spec: QueueSpec) -> None:
    """Raise the specific error if ``backend`` cannot declare ``spec`` as it is.

    Checks, in order: the types, the ranges of its settings, the capabilities
    the queue needs, the dead-letter rules, then ``backend.validate_queue``.
    """
    if not isinstance(spec, QueueSpec):
        raise InvalidArgument("spec", "a QueueSpec", spec, "declare queues with init_queue()")
    caps = backend.capabilities
    if not isinstance(spec.name, str):
        raise InvalidArgument("queue name", "a string", spec.name)
    if not isinstance(spec.fifo, bool):
        raise InvalidArgument("fifo", "True or False", spec.fifo)
    # Values out of any range first: a negative delay is wrong on every backend.
    _check_seconds(backend, spec, "visibility_timeout", (0.0, caps.max_visibility_timeout))
    _check_seconds(backend, spec, "message_retention_period", caps.retention_range)
    _check_seconds(backend, spec, "delay_seconds", (0.0, caps.max_delay))
    if spec.fifo:
        backend.require("fifo", f"FIFO queue {spec.name!r}")
    if spec.dead_letter is not None:
        backend.require("dead_letter", f"dead-letter queue of {spec.name!r}")
    if spec.delay_seconds:
        backend.require("delay", f"delay_seconds on {spec.name!r}")
    if spec.dead_letter is not None:
        _check_dead_letter(backend, spec, spec.dead_letter)
    backend.validate_queue(spec)


def check_topic(backend: MessagingBackend, spec: TopicSpec) -> None:
    """Raise the specific error if ``backend`` cannot declare the topic ``spec``."""
    if not isinstance(spec, TopicSpec):
        raise InvalidArgument("spec", "a TopicSpec", spec, "declare topics with init_topic()")
    if not isinstance(spec.name, str):
        raise InvalidArgument("topic name", "a string", spec.name)
    backend.require("topics", f"topic {spec.name!r}")
    if spec.fifo:
        backend.require("fifo", f"FIFO topic {spec.name!r}")
    backend.validate_topic(spec)


def check_subscription(
    backend: MessagingBackend,
    spec: SubscriptionSpec,
    topic: TopicSpec | None = None,
    queue: QueueSpec | None = None,
) -> None:
    """Raise the specific error if ``backend`` cannot subscribe ``spec``'s queue to its topic.

    Args:
        backend: The backend.
        spec: The subscription.
        topic: The topic as declared, when known; else inferred from its name.
        queue: The queue as declared, when known; else inferred from its name.
    """
    if not isinstance(spec, SubscriptionSpec):
        raise InvalidArgument("spec", "a SubscriptionSpec", spec)
    backend.require("topics", "subscriptions")
    if spec.filter is not None:
        backend.require("filters", f"the subscription filter of {spec.queue_name!r}")
    topic = topic if topic is not None else TopicSpec(spec.topic_name, _fifo(spec.topic_name))
    queue = queue if queue is not None else QueueSpec(spec.queue_name, _fifo(spec.queue_name))
    backend.topic_name_rule.check("topic", topic.name, topic.fifo)
    backend.queue_name_rule.check("queue", queue.name, queue.fifo)
    if topic.fifo:
        backend.require("fifo", f"FIFO topic {topic.name!r}")
    backend.validate_subscription(topic, queue, spec)


def dead_letter_mismatch(queue_name: str, fifo: bool, dlq_name: str) -> str:
    """The message for a FIFO queue with a standard dead-letter queue, or the reverse."""
    kind, other = ("FIFO", "standard") if fifo else ("standard", "FIFO")
    if is_fifo_name(dlq_name) != fifo:  # its name says the other type: the name is the fix
        fixed = dlq_name + ".fifo" if fifo else dlq_name.removesuffix(".fifo")
    else:  # a queue made outside melange, whose name does not say its type
        fixed = queue_name.removesuffix(".fifo") + "-dlq" + (".fifo" if fifo else "")
    return (
        f"{kind} queue {queue_name!r} needs a {kind} dead-letter queue, but {dlq_name!r} is "
        f"{other}; brokers move messages only between queues of the same type. "
        f"Use e.g. {fixed!r}"
    )


# ----------------------------------------------------------------- helpers
def _fifo(name: str) -> bool:
    if not isinstance(name, str):
        raise InvalidArgument("name", "a string", name)
    return is_fifo_name(name)


def _check_seconds(
    backend: MessagingBackend, spec: QueueSpec, setting: str, bounds: tuple[float, float]
) -> None:
    value = getattr(spec, setting)
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgument(setting, "a number of seconds", value)
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidTopology(
            f"{setting} must be a number of seconds from {low:g} to {high:g} on backend "
            f"{backend.name!r}, got {value!r}"
        )


def _check_dead_letter(
    backend: MessagingBackend, spec: QueueSpec, policy: DeadLetterPolicy
) -> None:
    caps = backend.capabilities
    broker = backend.broker_label or backend.name
    if not isinstance(policy, DeadLetterPolicy):
        raise InvalidArgument("dead_letter", "a DeadLetterPolicy", policy)
    target = policy.queue_name
    if not isinstance(target, str) or not target:
        raise InvalidTopology(
            f"dead_letter_queue_name must be a non-empty queue name, got {target!r}"
        )
    same = (
        target.lower() == spec.name.lower() if caps.case_insensitive_names else target == spec.name
    )
    if same:
        example = spec.name.removesuffix(".fifo") + ("-dlq.fifo" if spec.fifo else "-dlq")
        note = f" ({broker} names compare case-insensitively)" if target != spec.name else ""
        raise InvalidTopology(
            f"queue {spec.name!r} cannot be its own dead-letter queue{note}: messages that fail "
            f"there would come straight back. Name another queue, e.g. {example!r}"
        )
    target_fifo = is_fifo_name(target)
    if target_fifo != spec.fifo and not caps.dead_letter_any_kind:
        raise InvalidTopology(dead_letter_mismatch(spec.name, spec.fifo, target))
    backend.queue_name_rule.check("dead-letter queue", target, target_fifo)
    count = policy.max_receive_count
    low, high = caps.max_receive_count_range
    if isinstance(count, bool) or not isinstance(count, int) or not low <= count <= high:
        raise InvalidTopology(
            f"max_receive_count must be a whole number from {low} to {high} on backend "
            f"{backend.name!r} ({broker}: {backend.receive_count_setting}), got {count!r}"
        )
