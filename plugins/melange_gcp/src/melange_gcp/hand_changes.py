"""The gcp plugin's hands for the conformance suite's convergence test, on Pub/Sub itself.

:class:`PubSubHandChanges` is the ``melange_hand_changes`` fixture's value
(:mod:`melange.testing.conformance.convergence`): it changes, with the raw GAPIC
``SubscriberClient``, every subscription setting melange manages on every
resource an ``init_queue`` declaration owns, and reads them back on Pub/Sub's
own terms (its documented fields), not with the backend's code, so that a bug
there cannot hide here::

    class TestMyPubSubBackend(ConformanceSuite):
        @pytest.fixture
        def melange_hand_changes(self, melange_backend):
            return PubSubHandChanges.of(melange_backend)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from google.protobuf import duration_pb2, field_mask_pb2  # type: ignore[import-untyped]
from google.pubsub_v1 import types

from melange.topology import (
    DEFAULT_MAX_RECEIVE_COUNT,
    DEFAULT_RETENTION_PERIOD,
    DEFAULT_VISIBILITY_TIMEOUT,
    is_fifo_name,
)
from melange_gcp.names import fan_out_subscription, subscription_path, topic_path

if TYPE_CHECKING:
    from melange.testing.conformance.convergence import DeclaredTopology
    from melange_gcp.backend import GCPPubSubBackend

__all__ = ["PubSubHandChanges"]

VISIBILITY_LABEL = "melange-visibility-ms"
"""The label docs/backends/gcp.md documents for a visibility timeout below 10 s."""

HAND_RETRY = types.RetryPolicy(
    minimum_backoff=duration_pb2.Duration(seconds=5),
    maximum_backoff=duration_pb2.Duration(seconds=60),
)
HAND_TTL = duration_pb2.Duration(seconds=2 * 24 * 3600)
"""An expiration after two idle days (melange's subscriptions never expire)."""


def _other(declared: float, value: int, fallback: int) -> int:
    return fallback if value == declared else value


class PubSubHandChanges:
    """Hands on Pub/Sub for the convergence test: the raw subscriber client, not the backend.

    :meth:`change` changes, with one UpdateSubscription each, the queue's own
    subscription and each fan-out subscription ``<queue>~<topic>``:
    ``ack_deadline_seconds``, ``message_retention_duration``, the
    ``dead_letter_policy``'s ``max_delivery_attempts``, a ``retry_policy``
    (melange sets none) and, where the broker lets them change, melange's
    visibility label and an ``expiration_policy`` (melange's subscriptions never
    expire). The dead-letter queue's own settings are its own (an existing
    dead-letter queue is used as it is), so nothing of it is changed; what the
    queue needs of it is checked: it exists, on its own topic, and the
    dead-letter policies point at that topic.

    Args:
        subscriber: A GAPIC ``google.pubsub_v1.SubscriberClient`` of the project.
        project: The project id.
        labels: Change melange's label too. Google's emulator refuses
            UpdateSubscription of ``labels``; turn it off there.
        expiration: Change the expiration policy too (the emulator refuses that as well).
    """

    def __init__(
        self, subscriber: Any, project: str, *, labels: bool = True, expiration: bool = True
    ) -> None:
        self.subscriber = subscriber
        self.project = project
        self.labels = labels
        self.expiration = expiration

    @classmethod
    def of(
        cls, backend: GCPPubSubBackend, *, labels: bool = True, expiration: bool = True
    ) -> PubSubHandChanges:
        """Hands on the project of ``backend``, through its subscriber client."""
        return cls(backend.subscriber_client, backend.project, labels=labels, expiration=expiration)

    # ------------------------------------------------------------------ change
    def change(self, topology: DeclaredTopology) -> list[str]:
        """Change every managed setting of every subscription ``topology`` owns; say what."""
        made = []
        for name, _ in self._subscriptions(topology):
            made.append(f"subscription {name}: {', '.join(self._change(name, topology))}")
        return made

    def _change(self, name: str, topology: DeclaredTopology) -> list[str]:
        declared = _Declared(topology, self.project)
        current = self._get(name)
        assert current is not None, f"subscription {name!r} does not exist: init it first"
        update = types.Subscription(
            name=current.name,
            ack_deadline_seconds=_other(declared.ack_deadline, 333, 334),
            message_retention_duration=duration_pb2.Duration(
                seconds=_other(declared.retention, 7200, 7201)
            ),
            retry_policy=HAND_RETRY,
        )
        paths = ["ack_deadline_seconds", "message_retention_duration", "retry_policy"]
        if declared.dead_letter_topic is not None:
            update.dead_letter_policy = types.DeadLetterPolicy(
                dead_letter_topic=declared.dead_letter_topic,
                max_delivery_attempts=_other(declared.max_delivery_attempts, 9, 10),
            )
            paths.append("dead_letter_policy")
        if self.labels:
            labels = dict(current.labels)
            labels[VISIBILITY_LABEL] = "4321"
            update.labels = labels
            paths.append("labels")
        if self.expiration:
            update.expiration_policy = types.ExpirationPolicy(ttl=HAND_TTL)
            paths.append("expiration_policy")
        self.subscriber.update_subscription(
            request={"subscription": update, "update_mask": field_mask_pb2.FieldMask(paths=paths)}
        )
        return paths

    # ------------------------------------------------------------- differences
    def differences(self, topology: DeclaredTopology) -> list[str]:
        """Every managed setting that differs from ``topology``; empty when converged."""
        declared = _Declared(topology, self.project)
        found: list[str] = []
        for name, topic in self._subscriptions(topology):
            current = self._get(name)
            if current is None:
                found.append(f"subscription {name}: missing")
                continue
            expression = declared.filter_expression if topic != topology.queue else ""
            found += [
                f"subscription {name}: {problem}"
                for problem in declared.compare(
                    current, topic_path(self.project, topic), expression
                )
            ]
        if topology.dead_letter_queue is not None:
            dead_letter = self._get(topology.dead_letter_queue)
            where = f"dead-letter queue {topology.dead_letter_queue}"
            if dead_letter is None:
                found.append(f"{where}: its subscription is missing")
            elif dead_letter.topic != declared.dead_letter_topic:
                found.append(f"{where}: its subscription is on {dead_letter.topic!r}")
        return found

    # ------------------------------------------------------------------ lookups
    def _subscriptions(self, topology: DeclaredTopology) -> list[tuple[str, str]]:
        """The queue's subscriptions with the topic each should be on."""
        owned = [(topology.queue, topology.queue)]
        owned += [(fan_out_subscription(topology.queue, topic), topic) for topic in topology.topics]
        return owned

    def _get(self, name: str) -> Any:
        from google.api_core import exceptions as api_exceptions

        try:
            return self.subscriber.get_subscription(
                request={"subscription": subscription_path(self.project, name)}
            )
        except api_exceptions.NotFound:
            return None


class _Declared:
    """What a declaration asks of each of the queue's subscriptions, in Pub/Sub's fields."""

    def __init__(self, topology: DeclaredTopology, project: str) -> None:
        settings = topology.settings
        self.visibility = float(settings.get("visibility_timeout", DEFAULT_VISIBILITY_TIMEOUT))
        # Pub/Sub's ack deadline is 10..600 s; a shorter timeout is kept in melange's label.
        self.ack_deadline = min(max(math.ceil(self.visibility), 10), 600)
        self.label = (
            None if self.ack_deadline == self.visibility else str(round(self.visibility * 1000))
        )
        self.retention = int(settings.get("message_retention_period", DEFAULT_RETENTION_PERIOD))
        self.dead_letter_topic: str | None = None
        self.max_delivery_attempts = 0
        if topology.dead_letter_queue is not None:
            self.dead_letter_topic = topic_path(project, topology.dead_letter_queue)
            self.max_delivery_attempts = int(
                settings.get("max_receive_count", DEFAULT_MAX_RECEIVE_COUNT)
            )
        self.fifo = is_fifo_name(topology.queue)
        self.filter_expression = _expression(settings.get("subscription_filter"))

    def compare(self, current: Any, topic: str, expression: str) -> list[str]:
        """Return each field of ``current`` that differs from the declaration."""
        found = []
        if current.topic != topic:
            found.append(f"on topic {current.topic!r}, declared {topic!r}")
        if current.ack_deadline_seconds != self.ack_deadline:
            found.append(
                f"ack deadline {current.ack_deadline_seconds}, declared {self.ack_deadline}"
            )
        label = current.labels.get(VISIBILITY_LABEL)
        if label != self.label:
            found.append(f"label {VISIBILITY_LABEL}={label!r}, declared {self.label!r}")
        retention = current.message_retention_duration
        seconds = int(retention.total_seconds()) if retention else None
        if seconds != self.retention:
            found.append(f"retention {seconds} s, declared {self.retention} s")
        policy = current.dead_letter_policy if "dead_letter_policy" in current else None
        now = (
            (policy.dead_letter_topic, policy.max_delivery_attempts)
            if policy and policy.dead_letter_topic
            else None
        )
        wanted = (
            None
            if self.dead_letter_topic is None
            else (self.dead_letter_topic, self.max_delivery_attempts)
        )
        if now != wanted:
            found.append(f"dead-letter policy {now}, declared {wanted}")
        if "retry_policy" in current:
            found.append("a retry policy, declared none (redelivery at once)")
        expiration = current.expiration_policy if "expiration_policy" in current else None
        if expiration is None or expiration.ttl:
            found.append(f"expiration policy {expiration}, declared never to expire")
        if bool(current.enable_message_ordering) != self.fifo:
            found.append(
                f"message ordering {current.enable_message_ordering}, declared {self.fifo}"
            )
        if current.filter != expression:
            found.append(f"filter {current.filter!r}, declared {expression!r}")
        return found


def _expression(value: Any) -> str:
    """Pub/Sub's filter for ``{attribute: [values]}`` of plain attribute names, as documented."""
    if not value:
        return ""
    clauses = []
    for key in sorted(value):
        terms = [f'attributes.{key} = "{item}"' for item in sorted(value[key])]
        clauses.append(terms[0] if len(terms) == 1 else "(" + " OR ".join(terms) + ")")
    return " AND ".join(clauses)
