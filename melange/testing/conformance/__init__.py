"""The conformance suite: the contract every melange backend must honour, as pytest mixins.

A backend plugin runs the whole suite with a few lines in its own tests::

    import pytest
    from melange.testing.conformance import ConformanceSuite

    class TestMyBackend(ConformanceSuite):
        @pytest.fixture
        def melange_backend(self):
            backend = MyBackend(...)
            yield backend
            backend.close()

Tests that need an optional capability say so with :func:`requires` and are
skipped, with a reason naming the backend and the capability, when the backend
does not declare it. Tests that drive a dispatcher run with both dispatchers,
threaded and asyncio (:mod:`~melange.testing.conformance.drivers`); a known
deviation keyed by a test's name covers both (:func:`known_deviation`). Load
:mod:`melange.testing.conformance.report` from your ``conftest.py`` for a JSON
report of the run. See ``docs/conformance.md``.
"""

from __future__ import annotations

import pytest

# Before the test modules are imported: failing asserts then show their values.
pytest.register_assert_rewrite(
    "melange.testing.conformance._support",
    "melange.testing.conformance.convergence",
    "melange.testing.conformance.data",
    "melange.testing.conformance.faults",
    "melange.testing.conformance.runtime",
    "melange.testing.conformance.topology",
)

from melange.testing.conformance._support import (  # noqa: E402
    MARGIN,
    POLL_TIMEOUT,
    VISIBILITY_TIMEOUT,
    ConformanceBase,
    DeliveryGuarantee,
    ResourceNames,
    Wait,
    assert_empty,
    drain,
    drain_bodies,
    messages,
    receive_now,
    release,
    requires,
    without_dead_letter_reason,
)
from melange.testing.conformance.convergence import (  # noqa: E402
    ConvergenceConformance,
    DeclaredTopology,
    HandChanges,
)
from melange.testing.conformance.data import DataConformance  # noqa: E402
from melange.testing.conformance.drivers import (  # noqa: E402
    DRIVERS,
    drives_dispatcher,
    known_deviation,
)
from melange.testing.conformance.faults import FaultConformance  # noqa: E402
from melange.testing.conformance.runtime import BackendSpec, RuntimeConformance  # noqa: E402
from melange.testing.conformance.topology import TopologyConformance  # noqa: E402


class ConformanceSuite(
    TopologyConformance, ConvergenceConformance, DataConformance, RuntimeConformance
):
    """Every conformance test: subclass it (as ``Test...``) and provide ``melange_backend``."""


__all__ = [
    "DRIVERS",
    "MARGIN",
    "POLL_TIMEOUT",
    "VISIBILITY_TIMEOUT",
    "BackendSpec",
    "ConformanceBase",
    "ConformanceSuite",
    "ConvergenceConformance",
    "DataConformance",
    "DeclaredTopology",
    "DeliveryGuarantee",
    "FaultConformance",
    "HandChanges",
    "ResourceNames",
    "RuntimeConformance",
    "TopologyConformance",
    "Wait",
    "assert_empty",
    "drain",
    "drain_bodies",
    "drives_dispatcher",
    "known_deviation",
    "messages",
    "receive_now",
    "release",
    "requires",
    "without_dead_letter_reason",
]
