"""Hands on a RabbitMQ broker for the conformance suite's convergence test.

:class:`RabbitMQHandChanges` changes, through the management API (as an operator
would by hand), every setting melange manages for a declared queue: its policy
(retention, dead-letter queue, delivery limit), the parameter holding its
visibility timeout, and its bindings to every topic; and reads them all back.
"""

from __future__ import annotations

from typing import Any

from melange.testing.conformance.convergence import DeclaredTopology
from melange.topology import DeadLetterPolicy, QueueSpec, SubscriptionSpec
from melange_rabbitmq.backend import RabbitMQBackend
from melange_rabbitmq.filters import bindings_for
from melange_rabbitmq.management import ManagementAPI

__all__ = ["RabbitMQHandChanges"]


class RabbitMQHandChanges:
    """Hand changes through a management API client of its own.

    Args:
        backend: The backend whose naming (policy and parameter names) to follow; it
            must have a ``management_url``.
        management: The client the hands use (its calls are not the backend's).
    """

    def __init__(self, backend: RabbitMQBackend, management: ManagementAPI) -> None:
        self.backend = backend
        self.api = management

    def _declared(self, topology: DeclaredTopology) -> QueueSpec:
        settings = topology.settings
        dead_letter = None
        if topology.dead_letter_queue is not None:
            dead_letter = DeadLetterPolicy(
                topology.dead_letter_queue, int(settings.get("max_receive_count", 5))
            )
        return QueueSpec(
            topology.queue,
            visibility_timeout=float(settings["visibility_timeout"]),
            message_retention_period=float(settings["message_retention_period"]),
            dead_letter=dead_letter,
        )

    def _subscription(self, topology: DeclaredTopology, topic: str) -> SubscriptionSpec:
        wanted = topology.settings.get("subscription_filter")
        return SubscriptionSpec(topic, topology.queue, SubscriptionSpec.normalize_filter(wanted))

    def change(self, topology: DeclaredTopology) -> list[str]:
        """Change the policy, the visibility parameter and every binding of the queue."""
        queue = topology.queue
        backend = self.backend
        policy = backend._policy_name(queue)
        current = self.api.policy(policy) or {}
        definition: dict[str, Any] = dict(current.get("definition") or {})
        definition["message-ttl"] = int(definition.get("message-ttl", 1000)) * 2
        made = [f"policy {policy}: message-ttl {definition['message-ttl']} ms"]
        if "delivery-limit" in definition:
            definition["delivery-limit"] = int(definition["delivery-limit"]) + 3
            definition["dead-letter-routing-key"] = f"{queue}-elsewhere"
            made.append(f"policy {policy}: delivery-limit and dead-letter-routing-key")
        self.api.put_policy(
            policy, backend.policy_pattern(queue), definition, backend.policy_priority
        )
        parameter = backend._parameter_name(queue)
        self.api.put_parameter(parameter, {"visibility_timeout": 333.0})
        made.append(f"parameter {parameter}: visibility_timeout 333 s")
        for topic in topology.topics:
            for binding in self.api.bindings(topic, queue):
                self.api.unbind(topic, queue, binding["properties_key"])
            self.api.bind(topic, queue, {"x-match": "all", "kind": "by-hand"})
            made.append(f"bindings {topic} -> {queue}: replaced by kind=by-hand")
        return made

    def differences(self, topology: DeclaredTopology) -> list[str]:
        """Each setting of the queue's policy, parameter and bindings unlike the declaration."""
        backend = self.backend
        declared = self._declared(topology)
        found: list[str] = []
        policy = self.api.policy(backend._policy_name(topology.queue)) or {}
        want = backend.policy_definition(declared)
        if policy.get("definition") != want:
            found.append(f"policy definition {policy.get('definition')!r}, declared {want!r}")
        if policy.get("pattern") != backend.policy_pattern(topology.queue):
            found.append(f"policy pattern {policy.get('pattern')!r}")
        visibility = self.api.parameter(backend._parameter_name(topology.queue))
        if visibility != {"visibility_timeout": declared.visibility_timeout}:
            found.append(f"visibility parameter {visibility!r}")
        for topic in topology.topics:
            wanted = sorted(
                sorted(args.items()) for args in bindings_for(self._subscription(topology, topic))
            )
            current = sorted(
                sorted((k, str(v)) for k, v in (b.get("arguments") or {}).items())
                for b in self.api.bindings(topic, topology.queue)
            )
            if current != wanted:
                found.append(f"bindings {topic} -> {topology.queue}: {current!r}")
        return found
