"""Hands on Service Bus for the convergence conformance test: the raw administration client.

:class:`ServiceBusHandChanges` changes, with ``ServiceBusAdministrationClient``
and not through the backend, every setting melange manages for a declaration:

- the queue: LockDuration, DefaultMessageTimeToLive, MaxDeliveryCount,
  ForwardDeadLetteredMessagesTo, the settings melange keeps in UserMetadata
  (a delay), ForwardTo (set: every message would go elsewhere) and Status;
- its dead-letter queue: ForwardTo (the dead letters would go elsewhere) and
  Status (SendDisabled: nothing could be dead-lettered into it);
- each forwarding subscription: Status (Disabled), the ``$Default`` rule's
  filter, an extra rule letting everything through, and (on the last topic)
  ForwardTo pointing at another queue.

:meth:`~ServiceBusHandChanges.differences` reads them back and checks them
against the declaration on Service Bus's own terms, not with the backend's code,
so a bug there cannot hide here.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

from azure.servicebus.management import (
    ServiceBusAdministrationClient,
    SqlRuleFilter,
    TrueRuleFilter,
)

from melange.testing.conformance.convergence import DeclaredTopology
from melange_azure.names import subscription_name

MIN_LOCK = 5.0
"""Service Bus's shortest LockDuration."""

NEVER = 2_147_483_647
"""MaxDeliveryCount of a queue that should never dead-letter (Service Bus's largest)."""


def _other(declared: float, first: float, second: float) -> float:
    return first if declared != first else second


def _seconds(value: Any) -> float | None:
    return value.total_seconds() if isinstance(value, datetime.timedelta) else None


def _target(address: Any) -> str | None:
    """The entity name of a ForwardTo address (``sb://host/<name>`` or a bare name)."""
    if not address:
        return None
    text = str(address)
    if "://" in text:
        text = text.split("://", 1)[1].partition("/")[2]
    return text.strip("/") or None


def _status(value: Any) -> str:
    return str(getattr(value, "value", value) or "Active")


def _sql(filter_: dict[str, list[str]]) -> str:
    """The SQL a filter means: every named user property, one of the listed values."""
    clauses = []
    for name in sorted(filter_):
        values = ", ".join("'" + value.replace("'", "''") + "'" for value in sorted(filter_[name]))
        clauses.append(f"user.[{name}] IN ({values})")
    return " AND ".join(clauses)


class ServiceBusHandChanges:
    """Changes by hand, and reads back, what a declaration owns on Service Bus.

    Args:
        admin: An administration client of the namespace under test.
    """

    def __init__(self, admin: ServiceBusAdministrationClient) -> None:
        self.admin = admin

    # ------------------------------------------------------------------ change
    def change(self, topology: DeclaredTopology) -> list[str]:
        """Change every managed setting of every resource ``topology`` owns; say what."""
        made: list[str] = []
        settings = topology.settings
        queue = self.admin.get_queue(topology.queue)
        visibility = float(settings.get("visibility_timeout", 30.0))
        queue.lock_duration = datetime.timedelta(
            seconds=_other(max(visibility, MIN_LOCK), 233, 234)
        )
        retention = float(settings.get("message_retention_period", 0.0))
        queue.default_message_time_to_live = datetime.timedelta(
            seconds=_other(retention, 7200, 7201)
        )
        count = int(settings.get("max_receive_count", NEVER))
        queue.max_delivery_count = count + 4 if count + 4 < NEVER else 9
        queue.forward_dead_lettered_messages_to = None
        queue.user_metadata = json.dumps({"melange": {"delay_seconds": 7}})
        queue.status = "ReceiveDisabled"
        if topology.dead_letter_queue is not None:
            queue.forward_to = topology.dead_letter_queue
        self.admin.update_queue(queue)
        made.append(
            f"queue {topology.queue}: lock duration, time to live, max delivery count, "
            "dead-letter forwarding, metadata (delay), status"
            + (", forward_to" if topology.dead_letter_queue is not None else "")
        )

        if topology.dead_letter_queue is not None:
            dead_letter = self.admin.get_queue(topology.dead_letter_queue)
            dead_letter.forward_to = topology.queue
            dead_letter.status = "SendDisabled"
            self.admin.update_queue(dead_letter)
            made.append(f"dead-letter queue {topology.dead_letter_queue}: forward_to, status")

        name = subscription_name(topology.queue)
        for index, topic in enumerate(topology.topics):
            subscription = self.admin.get_subscription(topic, name)
            subscription.status = "Disabled"
            last = index == len(topology.topics) - 1
            if last and topology.dead_letter_queue is not None:
                subscription.forward_to = topology.dead_letter_queue
            self.admin.update_subscription(topic, subscription)
            rule = self.admin.get_rule(topic, name, "$Default")
            rule.filter = SqlRuleFilter("user.[kind] IN ('changed-by-hand')")
            self.admin.update_rule(topic, name, rule)
            self.admin.create_rule(topic, name, "by-hand", filter=TrueRuleFilter())
            made.append(
                f"subscription {topic}/{name}: status, $Default filter, extra rule"
                + (", forward_to" if last and topology.dead_letter_queue is not None else "")
            )
        return made

    # ------------------------------------------------------------- differences
    def differences(self, topology: DeclaredTopology) -> list[str]:
        """Every setting of an owned resource that differs from ``topology``."""
        found: list[str] = []
        settings = topology.settings
        queue = self.admin.get_queue(topology.queue)
        where = f"queue {topology.queue}"
        visibility = float(settings.get("visibility_timeout", 30.0))
        if _seconds(queue.lock_duration) != max(visibility, MIN_LOCK):
            found.append(f"{where}: lock duration {queue.lock_duration}")
        retention = float(settings.get("message_retention_period", 0.0))
        if _seconds(queue.default_message_time_to_live) != retention:
            found.append(f"{where}: time to live {queue.default_message_time_to_live}")
        wanted_count = int(settings.get("max_receive_count", NEVER))
        if topology.dead_letter_queue is None:
            wanted_count = NEVER
        if queue.max_delivery_count != wanted_count:
            found.append(f"{where}: max delivery count {queue.max_delivery_count}")
        if _target(queue.forward_dead_lettered_messages_to) != topology.dead_letter_queue:
            found.append(f"{where}: dead letters to {queue.forward_dead_lettered_messages_to}")
        if _target(queue.forward_to) is not None:
            found.append(f"{where}: forward_to {queue.forward_to}")
        if _status(queue.status) != "Active":
            found.append(f"{where}: status {queue.status}")
        kept = self._melange_metadata(queue.user_metadata)
        wanted_kept: dict[str, float] = {}
        if float(settings.get("delay_seconds", 0.0)):
            wanted_kept["delay_seconds"] = float(settings["delay_seconds"])
        if visibility < MIN_LOCK:
            wanted_kept["visibility_timeout"] = visibility
        if kept != wanted_kept:
            found.append(f"{where}: metadata {queue.user_metadata}")

        if topology.dead_letter_queue is not None:
            dead_letter = self.admin.get_queue(topology.dead_letter_queue)
            where = f"dead-letter queue {topology.dead_letter_queue}"
            if _target(dead_letter.forward_to) is not None:
                found.append(f"{where}: forward_to {dead_letter.forward_to}")
            if _status(dead_letter.status) != "Active":
                found.append(f"{where}: status {dead_letter.status}")

        name = subscription_name(topology.queue)
        declared_filter = settings.get("subscription_filter")
        for topic in topology.topics:
            where = f"subscription {topic}/{name}"
            subscription = self.admin.get_subscription(topic, name)
            if (_target(subscription.forward_to) or "").lower() != topology.queue.lower():
                found.append(f"{where}: forward_to {subscription.forward_to}")
            if _status(subscription.status) != "Active":
                found.append(f"{where}: status {subscription.status}")
            rules = list(self.admin.list_rules(topic, name))
            expressions = [self._expression(rule.filter) for rule in rules]
            wanted = _sql(declared_filter) if declared_filter else None
            if [rule.name for rule in rules] != ["$Default"] or expressions != [wanted]:
                named = [
                    (rule.name, expression)
                    for rule, expression in zip(rules, expressions, strict=True)
                ]
                found.append(f"{where}: rules {named}")
        return found

    @staticmethod
    def _expression(rule_filter: Any) -> str | None:
        """A rule's SQL expression; ``None`` for a filter that lets everything through."""
        if isinstance(rule_filter, TrueRuleFilter):
            return None
        if isinstance(rule_filter, SqlRuleFilter):
            expression = str(rule_filter.sql_expression).strip()
            return None if expression == "1=1" else expression
        return f"<{type(rule_filter).__name__}>"

    @staticmethod
    def _melange_metadata(metadata: str | None) -> dict[str, float]:
        try:
            document = json.loads(metadata) if metadata else {}
            kept = document.get("melange", {}) if isinstance(document, dict) else {}
            return {str(k): float(v) for k, v in kept.items()}
        except (ValueError, TypeError, AttributeError):
            return {"<unreadable>": 0.0}
