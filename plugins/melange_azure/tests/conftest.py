"""Fixtures of the azure backend's tests: the Service Bus stand-ins, reached over real sockets.

One :class:`~standin.ServiceBusStandIn` (the administration API over HTTP and
the AMQP 1.0 data plane, on one namespace) serves the whole session; every
test makes its own backend with the stand-in's connection string, which holds
``UseDevelopmentEmulator=true`` so the unmodified SDK connects without TLS.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from melange_azure import AzureServiceBusBackend
from standin import ServiceBusStandIn


@pytest.fixture(scope="session")
def service_bus() -> Iterator[ServiceBusStandIn]:
    """Both stand-ins on one namespace, for the whole session."""
    with ServiceBusStandIn() as stand_in:
        yield stand_in
    # A bug in the stand-in, or a filter it cannot evaluate, is logged by the broker rather
    # than killing it: fail the session so it cannot pass unnoticed.
    assert stand_in.amqp.errors == [], stand_in.amqp.errors


@pytest.fixture
def backend(service_bus: ServiceBusStandIn) -> Iterator[AzureServiceBusBackend]:
    """A fresh backend on the stand-ins, closed after the test."""
    azure = AzureServiceBusBackend(
        connection_string=service_bus.connection_string,
        management_url=service_bus.management_url,
    )
    yield azure
    azure.close()
