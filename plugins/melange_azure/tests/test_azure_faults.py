"""melange's fault conformance tests: the azure backend's AMQP connection through a FaultProxy.

The stand-ins of this module are its own (the restart test restarts the AMQP
broker, which would disturb other tests): the AMQP broker is reached through
the proxy; the administration API goes direct (its timeouts are tested in
test_azure_timeouts.py). The backend gets short timeouts, which is what the
tests measure: 1 s per attempt at opening a link, 2 s per publish, a receive's
wait plus 2 s, 2 s per settlement, one retry after a 0.1 s backoff (the SDK
doubles the factor).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from melange_azure import AzureServiceBusBackend
from standin import ServiceBusStandIn

from melange.testing.conformance import FaultConformance, known_deviation
from melange.testing.faults import FaultTarget

KNOWN_DEVIATIONS: dict[str, str] = {}
"""Fault tests expected to fail on the stand-ins, by test id, each with the reason."""

CALL_LIMIT = 8.0
"""Seconds any call may block on a black-holed endpoint: a publish's 2 s plus the 1 s grace
of melange's deadline, a receive's 1 s wait plus its 2 s margin, a settlement's 2 s, and
the SDK's backoff in progress when the deadline passes (0.1 s here)."""


@pytest.fixture(scope="module")
def fault_stand_in() -> Iterator[ServiceBusStandIn]:
    """Stand-ins for this module alone: the restart test restarts the AMQP broker."""
    with ServiceBusStandIn() as stand_in:
        yield stand_in
    assert stand_in.amqp.errors == [], stand_in.amqp.errors


def backend_at(stand_in: ServiceBusStandIn, address: str) -> AzureServiceBusBackend:
    """A backend whose AMQP connections go to ``address`` ("host:port"), with short timeouts."""
    return AzureServiceBusBackend(
        connection_string=stand_in.connection_string_at(address),
        management_url=stand_in.management_url,
        connect_timeout=1.0,
        publish_timeout=2.0,
        receive_margin=2.0,
        settle_timeout=2.0,
        retry_total=1,
        retry_backoff_factor=0.05,
        retry_backoff_max=1.0,
    )


class TestAzureServiceBusFaults(FaultConformance):
    """The fault suite, each test with a fresh proxy and backends; the stand-ins are shared."""

    @pytest.fixture
    def melange_fault_target(self, fault_stand_in: ServiceBusStandIn) -> FaultTarget:
        """The AMQP stand-in, reached through the proxy; restarting it loses its messages."""
        return FaultTarget(
            address=(fault_stand_in.host, fault_stand_in.amqp_port),
            backend=lambda address: backend_at(fault_stand_in, address),
            restart=fault_stand_in.amqp.restart,
            call_limit=CALL_LIMIT,
        )

    @pytest.fixture(autouse=True)
    def _known_deviation(self, request: pytest.FixtureRequest) -> None:
        """Mark the known deviations as strict xfails."""
        reason = known_deviation(KNOWN_DEVIATIONS, request.node.name)
        if reason is not None:
            request.applymarker(pytest.mark.xfail(reason=reason, strict=True))
