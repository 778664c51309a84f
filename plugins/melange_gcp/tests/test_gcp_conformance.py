"""melange's conformance suite against the gcp backend on Google's Pub/Sub emulator.

Where the emulator deviates from Pub/Sub, or Pub/Sub itself cannot do what a
test asks, the test is marked here, one at a time, with the reason; the
backend follows the Pub/Sub documentation.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from melange_gcp import GCPPubSubBackend
from melange_gcp.testing import PubSubHandChanges

from melange.testing.conformance import BackendSpec, ConformanceSuite, known_deviation
from melange.testing.conformance._support import DeliveryGuarantee

FILTERS_NOT_APPLIED = (
    "the Pub/Sub emulator stores subscription filters but does not apply them "
    "(https://cloud.google.com/pubsub/docs/emulator#known_limitations); the service does"
)

KNOWN_DEVIATIONS: dict[str, str] = {
    "test_subscription_filters_select_messages": FILTERS_NOT_APPLIED,
    "test_init_restores_a_subscription_filter_changed_by_hand": (
        "Pub/Sub cannot change a subscription's filter after creation, so init refuses the "
        "hand-changed filter with ImmutableSettingError unless recreate_subscriptions=True "
        "(test_gcp_topology covers both); the emulator would not apply the filter either"
    ),
    "test_init_restores_settings_changed_by_hand": (
        "the Pub/Sub emulator refuses UpdateSubscription with update_mask 'labels' ('labels is "
        "not a known Subscription field'); a visibility timeout below Pub/Sub's 10 s minimum "
        "ack deadline is kept in a label, which the service lets UpdateSubscription change"
    ),
    "test_a_stale_receipt_settles_nothing_and_its_lease_is_lost": (
        "Pub/Sub without exactly-once delivery accepts an acknowledgement or a deadline change "
        "for an ack id of an earlier delivery and reports nothing, so the backend cannot tell a "
        "stale receipt from a current one (docs/backends/gcp.md, Leases)"
    ),
    "test_fifo_holds_a_group_while_one_of_its_messages_is_in_flight": (
        "the Pub/Sub emulator hands out the next message of an ordering key while an earlier "
        "one was nacked; the service redelivers a nacked message and every later message of its "
        "ordering key in order (https://cloud.google.com/pubsub/docs/ordering); not checked "
        "against the service here"
    ),
    "test_init_removes_a_subscription_filter_added_by_hand": (
        "Pub/Sub cannot change a subscription's filter after creation, so init refuses the "
        "hand-added filter with ImmutableSettingError unless recreate_subscriptions=True "
        "(test_gcp_topology covers both)"
    ),
    "test_a_changed_visibility_timeout_governs_later_deliveries": (
        "the Pub/Sub emulator refuses UpdateSubscription with update_mask 'labels', where a "
        "visibility timeout below Pub/Sub's 10 s minimum ack deadline is kept; the service "
        "accepts it"
    ),
    "test_init_restores_every_owned_resource_changed_by_hand": (
        "the Pub/Sub emulator refuses UpdateSubscription of 'labels' and 'expiration_policy' "
        "('Updating the expiration_policy field is currently unsupported in the Pub/Sub "
        "Emulator'), so melange's visibility label and the never-expiring policy cannot be "
        "changed by hand there; test_gcp_convergence runs this test with every other hand "
        "change, and the service accepts both"
    ),
    "test_messages_of_a_killed_consumer_process_are_redelivered": (
        "Pub/Sub reports a delivery count (delivery_attempt) only on subscriptions with a "
        "dead-letter policy; without one the backend counts the deliveries it pulled itself, "
        "so a consumer in another process sees a redelivery as receive_count 1"
    ),
}
"""Conformance tests expected to fail on the emulator, by test id, each with the reason."""


class TestGCPPubSubBackend(ConformanceSuite):
    """The whole suite, each test on a fresh backend against the session's emulator."""

    @pytest.fixture
    def melange_backend(self, emulator_host: str, gcp_project: str) -> Iterator[GCPPubSubBackend]:
        """A GCPPubSubBackend on the emulator."""
        backend = GCPPubSubBackend(project=gcp_project, emulator_host=emulator_host)
        yield backend
        backend.close()

    @pytest.fixture
    def melange_backend_spec(self, emulator_host: str, gcp_project: str) -> BackendSpec:
        """The same backend, for consumer processes."""
        return ("gcp", {"project": gcp_project, "emulator_host": emulator_host})

    @pytest.fixture
    def melange_hand_changes(self, melange_backend: GCPPubSubBackend) -> PubSubHandChanges:
        """Every hand change, through the raw subscriber client."""
        return PubSubHandChanges.of(melange_backend)

    @pytest.fixture
    def melange_delivery(self) -> DeliveryGuarantee:
        """Pub/Sub delivers at least once."""
        return "at-least-once"

    @pytest.fixture(autouse=True)
    def _known_deviation(self, request: pytest.FixtureRequest) -> None:
        """Mark the known deviations as strict xfails."""
        reason = known_deviation(KNOWN_DEVIATIONS, request.node.name)
        if reason is not None:
            request.applymarker(pytest.mark.xfail(reason=reason, strict=True))
