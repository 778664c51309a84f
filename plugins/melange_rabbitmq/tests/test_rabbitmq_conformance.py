"""melange's whole conformance suite against the rabbitmq backend on a private RabbitMQ node.

A real RabbitMQ 3.10 server, not an emulator. Where a test cannot pass as the
suite writes it on RabbitMQ, it is marked in KNOWN_DEVIATIONS, one at a time and
with the reason; strict, so a fixed one shows up as XPASS and its entry goes.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from melange_rabbitmq import RabbitMQBackend
from melange_rabbitmq.management import ManagementAPI
from melange_rabbitmq.testing import RabbitMQHandChanges, RabbitMQNode

from melange.testing.conformance import BackendSpec, ConformanceSuite, known_deviation
from melange.testing.conformance._support import DeliveryGuarantee

KNOWN_DEVIATIONS: dict[str, str] = {
    "test_a_dead_letter_queue_that_is_gone_swallows_nothing": (
        "RabbitMQ: with at-least-once dead-lettering, a message over its delivery-limit whose "
        "dead-letter queue is gone is held by the quorum queue's dead-letter worker (counted in "
        "messages_dlx), not receivable from the queue, and moves once the dead-letter queue "
        "exists again; nothing is lost (test_rabbitmq_dead_letter.py proves both)"
    ),
}
"""Conformance tests expected to fail, by test id, each with the reason."""


class TestRabbitMQBackend(ConformanceSuite):
    """The whole suite, each test on a fresh backend against the session's private node."""

    @pytest.fixture
    def melange_backend(self, rabbitmq_node: RabbitMQNode) -> Iterator[RabbitMQBackend]:
        """A RabbitMQBackend with the management API."""
        backend = RabbitMQBackend(rabbitmq_node.url, management_url=rabbitmq_node.management_url)
        yield backend
        backend.close()

    @pytest.fixture
    def melange_backend_spec(self, rabbitmq_node: RabbitMQNode) -> BackendSpec:
        """The same backend, rebuilt by name in a consumer process of the runtime tests."""
        return (
            "rabbitmq",
            {"url": rabbitmq_node.url, "management_url": rabbitmq_node.management_url},
        )

    @pytest.fixture
    def melange_hand_changes(
        self, melange_backend: RabbitMQBackend, rabbitmq_node: RabbitMQNode
    ) -> RabbitMQHandChanges:
        """Hands on the node through a management API client of their own."""
        api = ManagementAPI(
            rabbitmq_node.management_url, vhost="/", username="guest", password="guest"
        )
        return RabbitMQHandChanges(melange_backend, api)

    @pytest.fixture
    def melange_delivery(self) -> DeliveryGuarantee:
        """Quorum queues with manual acks deliver at least once."""
        return "at-least-once"

    @pytest.fixture(autouse=True)
    def _known_deviation(self, request: pytest.FixtureRequest) -> None:
        """Mark the known deviations as strict xfails."""
        reason = known_deviation(KNOWN_DEVIATIONS, request.node.name)
        if reason is not None:
            request.applymarker(pytest.mark.xfail(reason=reason, strict=True))
