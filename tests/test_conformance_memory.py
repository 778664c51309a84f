"""The conformance suite against the embedded ``memory`` backend, on a manual clock.

Every test must run here: ``memory`` declares every capability, so a skip is a bug.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from melange.backends.memory import MemoryBackend
from melange.clock import ManualClock
from melange.testing.conformance import ConformanceSuite, DeliveryGuarantee, Wait


class TestMemoryBackend(ConformanceSuite):
    @pytest.fixture
    def clock(self) -> ManualClock:
        return ManualClock()

    @pytest.fixture
    def melange_backend(self, clock: ManualClock) -> Iterator[MemoryBackend]:
        backend = MemoryBackend(clock=clock)
        yield backend
        backend.close()

    @pytest.fixture
    def melange_wait(self, clock: ManualClock) -> Wait:
        return clock.advance

    @pytest.fixture
    def melange_delivery(self) -> DeliveryGuarantee:
        # One process, one lock, and no time passes unless a test says so.
        return "exactly-once"
