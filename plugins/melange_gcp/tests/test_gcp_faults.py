"""melange's fault conformance tests against the gcp backend: the emulator behind a FaultProxy.

The emulator is this module's own (not the session's), so the restart test can
stop and start it (it comes back empty, on the same port) without disturbing
other tests.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from melange_gcp import GCPPubSubBackend
from melange_gcp.testing import PubSubEmulator, PubSubEmulatorError

from melange.testing.conformance import FaultConformance
from melange.testing.faults import FaultTarget

PROJECT = "melange-faults"
TIMEOUT = 1.0
"""Seconds any call but a waiting pull may take, retries included."""

CALL_LIMIT = TIMEOUT + 3.0
"""Seconds any call may block on a black-holed endpoint: its timeout, plus a loaded machine."""


def faulty_backend(address: str) -> GCPPubSubBackend:
    """A backend reaching the emulator at ``host:port`` with short timeouts."""
    return GCPPubSubBackend(project=PROJECT, emulator_host=address, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def restartable_emulator() -> Iterator[PubSubEmulator]:
    """An emulator of this module's own; restarted, it serves on the same port again."""
    emulator = PubSubEmulator()
    try:
        emulator.start()
    except PubSubEmulatorError as error:
        pytest.fail(f"the Pub/Sub emulator the fault tests need cannot start: {error}")
    try:
        yield emulator
    finally:
        emulator.stop()


class TestGCPFaultsOnTheEmulator(FaultConformance):
    """The whole fault suite; the emulator's deviations are marked below, one at a time."""

    @pytest.fixture
    def melange_fault_target(self, restartable_emulator: PubSubEmulator) -> FaultTarget:
        """The emulator, and backends with short timeouts reaching it through any address."""
        return FaultTarget(
            address=(restartable_emulator.host, restartable_emulator.port),
            backend=faulty_backend,
            restart=restartable_emulator.restart,
            call_limit=CALL_LIMIT,
        )
