"""Queue settings as Pub/Sub subscription fields, both ways, and what differs.

A queue's settings live on its own subscription and are copied to each of its
fan-out subscriptions (one per subscribed topic); a fan-out subscription that
no longer holds them has drifted (:meth:`Desired.drift`) and is converged too:

- ``visibility_timeout``: ``ack_deadline_seconds``, which Pub/Sub keeps within
  10..600 s. A shorter timeout is kept in the label :data:`VISIBILITY_LABEL`
  (milliseconds) and applied after each pull with ModifyAckDeadline, which
  accepts 0..600 s.
- ``message_retention_period``: ``message_retention_duration`` (10 min..31 days).
- ``dead_letter``: ``dead_letter_policy`` to the dead-letter queue's topic.
- ``fifo``: ``enable_message_ordering`` (cannot change after creation).
- the subscription never expires: ``expiration_policy`` without ``ttl``
  (Pub/Sub's default deletes a subscription after 31 idle days).
- ``retry_policy`` is left unset (redelivery at once); init removes one set by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from google.protobuf import duration_pb2  # type: ignore[import-untyped]
from google.pubsub_v1 import types

from melange.topology import DeadLetterPolicy, QueueSpec
from melange_gcp.names import short_name, subscription_path, topic_path

MIN_ACK_DEADLINE = 10
MAX_ACK_DEADLINE = 600
VISIBILITY_LABEL = "melange-visibility-ms"
"""Label holding a visibility timeout Pub/Sub's ack deadline cannot express (below 10 s)."""

ROLE_LABEL = "melange-role"
"""Topic label marking a queue's own topic (``queue``), so it is not taken for a melange topic."""

MUTABLE_FIELDS = (
    "ack_deadline_seconds",
    "message_retention_duration",
    "dead_letter_policy",
    "retry_policy",
    "labels",
    "expiration_policy",
)
"""Subscription fields UpdateSubscription may change, compared one by one."""


def native_ack_deadline(visibility_timeout: float) -> int:
    """Return the ack deadline Pub/Sub is given for a visibility timeout (10..600 s)."""
    return min(max(math.ceil(visibility_timeout), MIN_ACK_DEADLINE), MAX_ACK_DEADLINE)


def needs_label(visibility_timeout: float) -> bool:
    """Whether the timeout differs from its native ack deadline and is kept in a label."""
    return native_ack_deadline(visibility_timeout) != visibility_timeout


def short_deadline(subscription: types.Subscription) -> float | None:
    """Return the labelled visibility timeout, if the subscription has one it still matches."""
    label = subscription.labels.get(VISIBILITY_LABEL)
    if label is None or not label.isdigit():
        return None
    seconds = int(label) / 1000
    if native_ack_deadline(seconds) != subscription.ack_deadline_seconds:
        return None  # the ack deadline was changed by hand since: it is what applies
    return seconds


@dataclass(frozen=True)
class Desired:
    """The subscription fields a queue's settings ask for."""

    ack_deadline_seconds: int
    retention_seconds: int
    dead_letter_topic: str | None
    max_delivery_attempts: int
    visibility_label: str | None
    ordering: bool

    @classmethod
    def of(cls, project: str, spec: QueueSpec) -> Desired:
        """Return what ``spec`` asks of each of the queue's subscriptions."""
        dead_letter = spec.dead_letter
        return cls(
            ack_deadline_seconds=native_ack_deadline(spec.visibility_timeout),
            retention_seconds=int(spec.message_retention_period),
            dead_letter_topic=None
            if dead_letter is None
            else topic_path(project, dead_letter.queue_name),
            max_delivery_attempts=0 if dead_letter is None else dead_letter.max_receive_count,
            visibility_label=str(round(spec.visibility_timeout * 1000))
            if needs_label(spec.visibility_timeout)
            else None,
            ordering=spec.fifo,
        )

    def labels(self, current: dict[str, str]) -> dict[str, str]:
        """Return ``current`` labels with melange's visibility label set or removed."""
        labels = {k: v for k, v in current.items() if k != VISIBILITY_LABEL}
        if self.visibility_label is not None:
            labels[VISIBILITY_LABEL] = self.visibility_label
        return labels

    def subscription(
        self, project: str, name: str, topic: str, filter_expression: str = ""
    ) -> dict[str, Any]:
        """Return a CreateSubscription request body."""
        body: dict[str, Any] = {
            "name": subscription_path(project, name),
            "topic": topic_path(project, topic),
            "ack_deadline_seconds": self.ack_deadline_seconds,
            "message_retention_duration": duration_pb2.Duration(seconds=self.retention_seconds),
            "enable_message_ordering": self.ordering,
            "expiration_policy": types.ExpirationPolicy(),
            "labels": self.labels({}),
        }
        if self.dead_letter_topic is not None:
            body["dead_letter_policy"] = types.DeadLetterPolicy(
                dead_letter_topic=self.dead_letter_topic,
                max_delivery_attempts=self.max_delivery_attempts,
            )
        if filter_expression:
            body["filter"] = filter_expression
        return body

    def without_dead_letter(self) -> Desired:
        """The same fields without a dead-letter policy (set once its permissions are checked)."""
        return replace(self, dead_letter_topic=None, max_delivery_attempts=0)

    def drift(self, current: types.Subscription) -> list[str]:
        """Return every field of ``current`` that differs from this, the immutable ordering too.

        The filter is left out: it is a subscription's own, not the queue's.
        """
        paths, _ = self.changes(current)
        if bool(current.enable_message_ordering) != self.ordering:
            paths.append("enable_message_ordering")
        return paths

    def changes(self, current: types.Subscription) -> tuple[list[str], types.Subscription]:
        """Return the mutable fields that differ from ``current``, and the update to send."""
        update = types.Subscription(name=current.name)
        paths: list[str] = []
        if current.ack_deadline_seconds != self.ack_deadline_seconds:
            update.ack_deadline_seconds = self.ack_deadline_seconds
            paths.append("ack_deadline_seconds")
        retention = current.message_retention_duration
        if retention is None or int(retention.total_seconds()) != self.retention_seconds:
            update.message_retention_duration = duration_pb2.Duration(
                seconds=self.retention_seconds
            )
            paths.append("message_retention_duration")
        policy = current.dead_letter_policy
        current_target = policy.dead_letter_topic if policy else ""
        if self.dead_letter_topic is None:
            if current_target:
                paths.append("dead_letter_policy")  # unset in the update: removes it
        elif (current_target, policy.max_delivery_attempts if policy else 0) != (
            self.dead_letter_topic,
            self.max_delivery_attempts,
        ):
            update.dead_letter_policy = types.DeadLetterPolicy(
                dead_letter_topic=self.dead_letter_topic,
                max_delivery_attempts=self.max_delivery_attempts,
            )
            paths.append("dead_letter_policy")
        if "retry_policy" in current and current.retry_policy:
            paths.append("retry_policy")  # unset in the update: redelivery at once
        labels = dict(current.labels)
        if self.labels(labels) != labels:
            update.labels = self.labels(labels)
            paths.append("labels")
        expiration = current.expiration_policy if "expiration_policy" in current else None
        if expiration is None or (expiration.ttl is not None and expiration.ttl.total_seconds()):
            update.expiration_policy = types.ExpirationPolicy()
            paths.append("expiration_policy")
        return paths, update


def queue_spec(name: str, subscription: types.Subscription) -> QueueSpec:
    """Return the queue settings a queue's own subscription holds."""
    short = short_deadline(subscription)
    visibility = float(subscription.ack_deadline_seconds) if short is None else short
    retention = subscription.message_retention_duration
    policy = subscription.dead_letter_policy
    dead_letter = None
    if policy and policy.dead_letter_topic:
        dead_letter = DeadLetterPolicy(
            short_name(policy.dead_letter_topic), policy.max_delivery_attempts or 5
        )
    return QueueSpec(
        name,
        fifo=bool(subscription.enable_message_ordering),
        visibility_timeout=visibility,
        message_retention_period=float(int(retention.total_seconds()))
        if retention
        else 7 * 24 * 3600.0,
        delay_seconds=0.0,
        dead_letter=dead_letter,
    )
