"""Convergence on every resource a declaration owns, checked with the broker's own client.

``init_queue`` promises to put back whatever was changed by hand: settings of the
queue, of its dead-letter queue, of its subscriptions and of whatever else the
backend creates for it (Pub/Sub's fan-out subscriptions, SQS's queue policy).
Most of those resources are invisible through the contract, so this test asks the
plugin to reach them with the broker's own client: a plugin opts in with one
fixture, ``melange_hand_changes``, returning a :class:`HandChanges`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import pytest

from melange.backends.base import MessagingBackend
from melange.factory import MessagingBackendFactory
from melange.testing.conformance._support import (
    VISIBILITY_TIMEOUT,
    ConformanceBase,
    ResourceNames,
    in_range,
)

__all__ = ["ConvergenceConformance", "DeclaredTopology", "HandChanges"]


@dataclass(frozen=True)
class DeclaredTopology:
    """What the test declared with ``init_queue``, for a :class:`HandChanges` to check against.

    Attributes:
        queue: The queue.
        topics: The topics it subscribes to (empty without the ``topics`` capability).
        dead_letter_queue: Its dead-letter queue, if any.
        settings: The keyword settings passed to ``init_queue``
            (``visibility_timeout``, ``max_receive_count``, ``subscription_filter``, ...).
    """

    queue: str
    topics: tuple[str, ...] = ()
    dead_letter_queue: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def init(self, factory: MessagingBackendFactory) -> Any:
        """Declare (or converge) this topology with ``factory``; return the plan applied."""
        return factory.init_queue(
            self.queue,
            list(self.topics),
            dead_letter_queue_name=self.dead_letter_queue,
            **self.settings,
        )


class HandChanges(Protocol):
    """A plugin's hands on its broker, through the broker's own client (not the backend)."""

    def change(self, topology: DeclaredTopology) -> list[str]:
        """Change every setting melange manages, on every resource the declaration owns.

        Returns:
            One line per change made (e.g. ``"subscription orders~events: ack deadline 333 s"``).
        """
        ...

    def differences(self, topology: DeclaredTopology) -> list[str]:
        """Read every owned resource back; return each setting that differs from the declaration.

        An empty list means the broker holds exactly what ``topology`` declares.
        """
        ...


class ConvergenceConformance(ConformanceBase):
    """Re-init restores every setting of every owned resource, changed by hand."""

    @pytest.fixture
    def melange_hand_changes(self) -> HandChanges | None:
        """Override to return your :class:`HandChanges`; ``None`` skips the test."""
        return None

    def _topology(self, backend: MessagingBackend, names: ResourceNames) -> DeclaredTopology:
        caps = backend.capabilities
        settings: dict[str, Any] = {
            "visibility_timeout": VISIBILITY_TIMEOUT,
            "message_retention_period": in_range(3600.0, caps.retention_range),
        }
        topics: tuple[str, ...] = ()
        if caps.topics:
            topics = (names.topic("events"), names.topic("audit"))
            if caps.filters:
                settings["subscription_filter"] = {"kind": ["paid"]}
        dead_letter_queue = None
        if caps.dead_letter:
            dead_letter_queue = names.queue("dlq")
            settings["max_receive_count"] = int(in_range(5, caps.max_receive_count_range))
        return DeclaredTopology(names.queue("orders"), topics, dead_letter_queue, settings)

    def test_init_restores_every_owned_resource_changed_by_hand(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
        melange_hand_changes: HandChanges | None,
    ) -> None:
        """Every hand change, on the queue, its DLQ, subscriptions and fan-out, is put back."""
        if melange_hand_changes is None:
            pytest.skip(
                f"backend {melange_backend.name!r}: no melange_hand_changes fixture, so "
                "settings outside the contract's view are not checked"
            )
        topology = self._topology(melange_backend, melange_names)
        topology.init(melange_factory)
        assert melange_hand_changes.differences(topology) == [], "not converged after init"

        made = melange_hand_changes.change(topology)
        assert made, "the plugin's hand changes changed nothing"
        seen = melange_hand_changes.differences(topology)
        assert seen, f"the hand changes {made} are not visible to differences()"

        plan = topology.init(melange_factory)
        left = melange_hand_changes.differences(topology)
        assert left == [], f"re-init left hand changes in place: {left} (plan: {list(plan)})"
        assert len(plan) > 0, "re-init restored the settings but reported nothing to do"
        assert len(topology.init(melange_factory)) == 0, "a converged topology is not a no-op"
