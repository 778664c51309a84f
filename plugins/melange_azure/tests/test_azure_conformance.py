"""melange's whole conformance suite against the azure backend on the Service Bus stand-ins.

The SDK (azure-servicebus, unmodified) talks over real sockets to the local
stand-ins (tests/standin). Where a test cannot pass as the suite writes it on
Service Bus through this SDK, or a stand-in deviates from the service, the test
is marked in KNOWN_DEVIATIONS, one at a time and with the reason; strict, so a
fixed one shows up as XPASS and its entry gets removed.

The suite's own skip: ``test_immutable_drift_is_refused_and_nothing_changes``
(melange names FIFO queues ``.fifo``, so a session queue under a standard name
cannot be declared; test_azure_topology.py covers sessions drift instead).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from azure.servicebus.management import ServiceBusAdministrationClient
from melange_azure import AzureServiceBusBackend
from melange_azure.clients import RedirectingTransport
from melange_azure.hand_changes import ServiceBusHandChanges
from melange_azure.testing import ServiceBusForeignProducerConformance
from standin import ServiceBusStandIn

from melange.testing.conformance import BackendSpec, ConformanceSuite, known_deviation
from melange.testing.conformance._support import DeliveryGuarantee

KNOWN_DEVIATIONS: dict[str, str] = {
    "test_a_body_of_several_data_sections_is_joined": (
        "stand-in: the AMQP broker stores messages as python-qpid-proton Message objects, which "
        "hold one body section, so of several data sections only the last is delivered; Service "
        "Bus keeps every section"
    ),
    "test_a_dead_letter_queue_that_is_gone_swallows_nothing": (
        "Service Bus: a message it cannot forward to a deleted ForwardDeadLetteredMessagesTo "
        "target is dead-lettered into the queue's own $DeadLetterQueue ('The transfer "
        "destination entity does not exist', Azure/azure-service-bus#693), not kept in the "
        "queue; the stand-in drops it and lists it in AMQPBroker.dropped. Either way it leaves "
        "the queue"
    ),
}
"""Conformance tests expected to fail, by test id, each with the reason."""


class TestAzureServiceBusBackend(ConformanceSuite, ServiceBusForeignProducerConformance):
    """The whole suite, each test on a fresh backend; the stand-ins are shared."""

    @pytest.fixture
    def melange_backend(self, service_bus: ServiceBusStandIn) -> Iterator[AzureServiceBusBackend]:
        """An AzureServiceBusBackend on the stand-ins."""
        backend = AzureServiceBusBackend(
            connection_string=service_bus.connection_string,
            management_url=service_bus.management_url,
        )
        yield backend
        backend.close()

    @pytest.fixture
    def melange_backend_spec(self, service_bus: ServiceBusStandIn) -> BackendSpec:
        """The same backend, rebuilt by name in a consumer process of the runtime tests."""
        return (
            "azure",
            {
                "connection_string": service_bus.connection_string,
                "management_url": service_bus.management_url,
            },
        )

    @pytest.fixture
    def melange_hand_changes(
        self, service_bus: ServiceBusStandIn
    ) -> Iterator[ServiceBusHandChanges]:
        """Hands on the stand-in through the raw administration client."""
        admin = ServiceBusAdministrationClient.from_connection_string(
            service_bus.connection_string,
            transport=RedirectingTransport(service_bus.management_url),
        )
        yield ServiceBusHandChanges(admin)
        admin.close()

    @pytest.fixture
    def melange_delivery(self) -> DeliveryGuarantee:
        """Peek-lock delivers at least once."""
        return "at-least-once"

    @pytest.fixture(autouse=True)
    def _known_deviation(self, request: pytest.FixtureRequest) -> None:
        """Mark the known deviations as strict xfails."""
        reason = known_deviation(KNOWN_DEVIATIONS, request.node.name)
        if reason is not None:
            request.applymarker(pytest.mark.xfail(reason=reason, strict=True))
