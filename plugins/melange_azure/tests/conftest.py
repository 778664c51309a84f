"""Fixtures of the azure backend's tests: the Service Bus stand-ins, reached over real sockets.

One :class:`~standin.ServiceBusStandIn` (the administration API over HTTP and
the AMQP 1.0 data plane, on one namespace) serves the whole session; every
test makes its own backend with the stand-in's connection string, which holds
``UseDevelopmentEmulator=true`` so the unmodified SDK connects without TLS.
Network faults come from a :class:`~melange.testing.faults.FaultProxy` in
front of the AMQP stand-in (``amqp_proxy``, ``proxied``) or from a port that
accepts connections and never answers (``black_hole``).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from melange_azure import AzureServiceBusBackend
from standin import ServiceBusStandIn

from melange.testing.faults import FaultProxy


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


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A loopback port that accepts TCP connections and never answers (nor reads)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stopped = threading.Event()

    def accept() -> None:
        while not stopped.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            held.append(connection)

    thread = threading.Thread(target=accept, name="black-hole", daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stopped.set()
    listener.close()
    for connection in held:
        connection.close()


@pytest.fixture
def amqp_proxy(service_bus: ServiceBusStandIn) -> Iterator[FaultProxy]:
    """A healthy FaultProxy in front of the AMQP stand-in."""
    with FaultProxy(service_bus.host, service_bus.amqp_port, lifetime=120.0) as proxy:
        yield proxy


@pytest.fixture
def proxied(
    service_bus: ServiceBusStandIn, amqp_proxy: FaultProxy
) -> Iterator[Callable[..., AzureServiceBusBackend]]:
    """Makes backends whose AMQP connections go through ``amqp_proxy``, with short timeouts."""
    made: list[AzureServiceBusBackend] = []

    def make(**options: Any) -> AzureServiceBusBackend:
        settings: dict[str, Any] = {
            "connect_timeout": 1.0,
            "publish_timeout": 2.0,
            "receive_margin": 2.0,
            "settle_timeout": 2.0,
            "retry_total": 1,
            "retry_backoff_factor": 0.25,
            "retry_backoff_max": 1.0,
            **options,
        }
        backend = AzureServiceBusBackend(
            connection_string=service_bus.connection_string_at(amqp_proxy.address),
            management_url=service_bus.management_url,
            **settings,
        )
        made.append(backend)
        return backend

    yield make
    amqp_proxy.heal()
    for backend in made:
        backend.close()
