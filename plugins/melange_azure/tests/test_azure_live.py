"""Opt-in: the conformance suite against a real Service Bus namespace.

Runs only when ``MELANGE_AZURE_CONNECTION_STRING`` holds a namespace-level
connection string with Manage rights (Standard tier or above: Basic has no
topics). Every entity is named ``mlg-<token>-...`` and deleted after its test.
Without the variable this module defines no test, so nothing is skipped in a
normal run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from melange_azure import AzureServiceBusBackend

from melange.testing.conformance import BackendSpec, ConformanceSuite, known_deviation
from melange.testing.conformance._support import DeliveryGuarantee

LIVE_CONNECTION_ENV = "MELANGE_AZURE_CONNECTION_STRING"

LIVE_DEVIATIONS: dict[str, str] = {}
"""Conformance tests expected to fail on the real service, each with the reason."""


if os.environ.get(LIVE_CONNECTION_ENV):

    class TestAzureServiceBusLive(ConformanceSuite):
        """The whole suite against the namespace of MELANGE_AZURE_CONNECTION_STRING."""

        @pytest.fixture
        def melange_backend(self) -> Iterator[AzureServiceBusBackend]:
            backend = AzureServiceBusBackend(connection_string=os.environ[LIVE_CONNECTION_ENV])
            yield backend
            backend.close()

        @pytest.fixture
        def melange_backend_spec(self) -> BackendSpec:
            return ("azure", {"connection_string": os.environ[LIVE_CONNECTION_ENV]})

        @pytest.fixture
        def melange_delivery(self) -> DeliveryGuarantee:
            return "at-least-once"

        @pytest.fixture(autouse=True)
        def _known_deviation(self, request: pytest.FixtureRequest) -> None:
            reason = known_deviation(LIVE_DEVIATIONS, request.node.name)
            if reason is not None:
                request.applymarker(pytest.mark.xfail(reason=reason, strict=True))
