"""Opt-in: the conformance suite against a real Google Cloud project.

Runs only when ``MELANGE_GCP_PROJECT`` names a project that Application
Default Credentials may administer Pub/Sub in (``roles/pubsub.editor``; dead
letters also need the Pub/Sub service agent to publish to the dead-letter
topics and subscribe to the sources, see docs/backends/gcp.md). Every
resource is named ``mlg-<token>-...`` and deleted after its test. Without the
variable this module defines no test, so nothing is skipped in a normal run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from melange_gcp import GCPPubSubBackend
from melange_gcp.testing import PubSubHandChanges

from melange.testing.conformance import BackendSpec, ConformanceSuite, known_deviation
from melange.testing.conformance._support import DeliveryGuarantee

LIVE_PROJECT_ENV = "MELANGE_GCP_PROJECT"

LIVE_DEVIATIONS: dict[str, str] = {
    "test_init_restores_a_subscription_filter_changed_by_hand": (
        "Pub/Sub cannot change a subscription's filter after creation; init refuses with "
        "ImmutableSettingError unless recreate_subscriptions=True"
    ),
    "test_messages_of_a_killed_consumer_process_are_redelivered": (
        "Pub/Sub reports delivery_attempt only on subscriptions with a dead-letter policy"
    ),
}
"""Conformance tests expected to fail on the real service, each with the reason."""


if os.environ.get(LIVE_PROJECT_ENV):

    class TestGCPPubSubLive(ConformanceSuite):
        """The whole suite against the project named by MELANGE_GCP_PROJECT."""

        @pytest.fixture
        def melange_backend(self) -> Iterator[GCPPubSubBackend]:
            backend = GCPPubSubBackend(project=os.environ[LIVE_PROJECT_ENV], emulator_host="")
            yield backend
            backend.close()

        @pytest.fixture
        def melange_backend_spec(self) -> BackendSpec:
            return ("gcp", {"project": os.environ[LIVE_PROJECT_ENV], "emulator_host": ""})

        @pytest.fixture
        def melange_hand_changes(self, melange_backend: GCPPubSubBackend) -> PubSubHandChanges:
            return PubSubHandChanges.of(melange_backend)

        @pytest.fixture
        def melange_delivery(self) -> DeliveryGuarantee:
            return "at-least-once"

        @pytest.fixture(autouse=True)
        def _known_deviation(self, request: pytest.FixtureRequest) -> None:
            reason = known_deviation(LIVE_DEVIATIONS, request.node.name)
            if reason is not None:
                request.applymarker(pytest.mark.xfail(reason=reason, strict=True))
