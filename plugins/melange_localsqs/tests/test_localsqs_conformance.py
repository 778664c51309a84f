"""melange's conformance suite against LocalSQSBackend over real HTTP.

Always against a moto server the session starts on a free port; also against
LocalStack when ``MELANGE_LOCALSTACK_ENDPOINT`` names one
(``plugins/melange_localsqs/scripts/localstack.sh run pytest ...``).

Where an emulator deviates from AWS, the backend follows the AWS documentation
and the test is marked, one at a time, in that emulator's table with the reason.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from melange_aws.testing import MOTO_SQS_DEVIATIONS, SQSForeignProducerConformance, SQSHandChanges
from melange_localsqs import LocalSQSBackend
from melange_localsqs.testing import LOCALSTACK_ENDPOINT_ENV, MotoServer

from melange.testing.conformance import (
    BackendSpec,
    ConformanceSuite,
    known_deviation,
)
from melange.testing.conformance._support import DeliveryGuarantee
from melange.testing.conformance.convergence import ConvergenceConformance

MOTO_DEVIATIONS: dict[str, str] = {
    **MOTO_SQS_DEVIATIONS,
    "test_deleting_a_subscribed_queue_leaves_the_topic_working": (
        "moto 5.2: once a subscribed queue is deleted, SNS PublishBatch answers with neither a "
        "Successful nor a Failed entry and delivers to no remaining queue (Publish fails with "
        "NonExistentQueue); AWS accepts the message and delivers it to the other subscriptions"
    ),
    "test_init_restores_every_owned_resource_changed_by_hand": (
        "moto 5.2 accepts a queue's RedriveAllowPolicy and forgets it: GetQueueAttributes "
        "refuses the name (InvalidAttributeName) and leaves it out of All, so whether the "
        "dead-letter queue admits its queue cannot be read back; SQS keeps and returns it. "
        "TestLocalSQSConvergenceOnMoto runs this test with every other hand change"
    ),
}
"""Conformance tests expected to fail on the moto server, by test id, each with the reason."""

LOCALSTACK_DEVIATIONS: dict[str, str] = {
    "test_a_stale_receipt_settles_nothing_and_its_lease_is_lost": (
        "LocalStack 2026.3.0 deletes a message with an earlier receipt handle of it, as moto "
        "does. SQS documents that only the most recent handle is sure to work: a delete with "
        "an earlier one 'succeeds, but the message might not be deleted' (DeleteMessage)"
    ),
    "test_a_dead_letter_queue_that_is_gone_swallows_nothing": (
        "LocalStack 2026.3.0 fails ReceiveMessage on a queue with AWS.SimpleQueueService."
        "NonExistentQueue once one of its messages is due for a dead-letter queue that was "
        "deleted, so the message cannot be received; SQS keeps it in the source queue while "
        "the redrive target does not exist"
    ),
}
"""Conformance tests expected to fail on LocalStack, by test id, each with the reason."""


class LocalSQSConformance(ConformanceSuite, SQSForeignProducerConformance):
    """The suite against one local endpoint; subclasses say which."""

    deviations: dict[str, str] = {}

    @pytest.fixture
    def endpoint(self) -> str:
        raise NotImplementedError

    @pytest.fixture
    def melange_backend(self, endpoint: str) -> Iterator[LocalSQSBackend]:
        backend = LocalSQSBackend(endpoint_url=endpoint)  # fresh per test, the server is shared
        yield backend
        backend.close()

    @pytest.fixture
    def melange_backend_spec(self, endpoint: str) -> BackendSpec:
        # A consumer process of the runtime tests reaches the same endpoint.
        return ("localsqs", {"endpoint_url": endpoint})

    @pytest.fixture
    def melange_hand_changes(self, melange_backend: LocalSQSBackend) -> SQSHandChanges:
        # Plain boto3 calls on the emulator, through the backend's clients.
        return SQSHandChanges.of(melange_backend)

    @pytest.fixture
    def melange_delivery(self) -> DeliveryGuarantee:
        return "at-least-once"  # SQS standard queues may deliver a message twice

    @pytest.fixture(autouse=True)
    def _known_deviation(self, request: pytest.FixtureRequest) -> None:
        reason = known_deviation(self.deviations, request.node.name)
        if reason is not None:
            # strict: once the emulator is fixed the XPASS fails, so the entry gets removed.
            request.applymarker(pytest.mark.xfail(reason=reason, strict=True))


class TestLocalSQSOnMoto(LocalSQSConformance):
    deviations = MOTO_DEVIATIONS

    @pytest.fixture
    def endpoint(self, moto_server: MotoServer) -> str:
        return moto_server.endpoint_url


class TestLocalSQSConvergenceOnMoto(ConvergenceConformance):
    """The convergence test on the moto server, with every hand change moto can show.

    All but the dead-letter queue's RedriveAllowPolicy, which moto forgets (see
    MOTO_DEVIATIONS): over HTTP, as localsqs talks to it.
    """

    @pytest.fixture
    def melange_backend(self, moto_server: MotoServer) -> Iterator[LocalSQSBackend]:
        backend = LocalSQSBackend(endpoint_url=moto_server.endpoint_url)
        yield backend
        backend.close()

    @pytest.fixture
    def melange_hand_changes(self, melange_backend: LocalSQSBackend) -> SQSHandChanges:
        return SQSHandChanges.of(melange_backend, dead_letter_admission=False)


if os.environ.get(LOCALSTACK_ENDPOINT_ENV):

    class TestLocalSQSOnLocalStack(LocalSQSConformance):
        deviations = LOCALSTACK_DEVIATIONS

        @pytest.fixture
        def endpoint(self, localstack_endpoint: str) -> str:
            return localstack_endpoint
