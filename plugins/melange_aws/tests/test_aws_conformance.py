"""melange's conformance suite against the aws backend, inside moto's in-process mock.

Deviations of moto from AWS are marked one test at a time in KNOWN_DEVIATIONS,
each with the reason; the backend itself follows the AWS documentation.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from melange_aws import AWSBackend
from melange_aws.testing import MOTO_SQS_DEVIATIONS, SQSForeignProducerConformance, SQSHandChanges
from melange_localsqs.testing import MotoServer

from melange.testing.conformance import (
    BackendSpec,
    ConformanceSuite,
    known_deviation,
)
from melange.testing.conformance._support import DeliveryGuarantee

KNOWN_DEVIATIONS: dict[str, str] = {
    **MOTO_SQS_DEVIATIONS,
    "test_deleting_a_subscribed_queue_leaves_the_topic_working": (
        "moto 5.2 fails an SNS publish when a subscribed SQS queue was deleted (PublishBatch "
        "reports the entry neither Successful nor Failed, Publish raises NonExistentQueue); on "
        "AWS, SNS delivers to subscriptions asynchronously, so the publish succeeds and only "
        "that delivery fails (SNS message delivery retries)"
    ),
    "test_init_restores_every_owned_resource_changed_by_hand": (
        "moto 5.2 accepts a queue's RedriveAllowPolicy and forgets it: GetQueueAttributes "
        "refuses the name (InvalidAttributeName) and leaves it out of All, so whether the "
        "dead-letter queue admits its queue cannot be read back; SQS keeps and returns it. "
        "test_aws_convergence.py runs this test with every other hand change, and with moto "
        "taught to keep the attribute"
    ),
}
"""Conformance tests expected to fail on moto, by test id, each with the reason."""


@pytest.fixture(scope="module")
def moto_server() -> Iterator[MotoServer]:
    """A moto server over HTTP, for the runtime tests that run a consumer in another process.

    The in-process mock cannot be reached from another process; against this
    server the aws backend itself (not localsqs) talks real HTTP.
    """
    with MotoServer() as server:
        yield server


class TestAWSBackend(ConformanceSuite, SQSForeignProducerConformance):
    """The whole suite, each test on a fresh backend inside a fresh moto mock."""

    @pytest.fixture
    def melange_backend(self, mocked_aws: None) -> Iterator[AWSBackend]:
        """An AWSBackend configured by the (dummy) environment alone."""
        backend = AWSBackend()
        yield backend
        backend.close()

    @pytest.fixture
    def melange_backend_spec(self, moto_server: MotoServer) -> BackendSpec:
        """The aws backend against the moto server, with explicit dummy settings."""
        return (
            "aws",
            {
                "endpoint_url": moto_server.endpoint_url,
                "region_name": "us-east-1",
                "aws_access_key_id": "AKIAMELANGETESTKEY01",
                "aws_secret_access_key": "melange/test/SECRET+key/0123456789abcdefghij",
            },
        )

    @pytest.fixture
    def melange_hand_changes(self, melange_backend: AWSBackend) -> SQSHandChanges:
        """Hands on moto's SQS and SNS, through the backend's boto3 clients."""
        return SQSHandChanges.of(melange_backend)

    @pytest.fixture
    def melange_delivery(self) -> DeliveryGuarantee:
        """SQS standard queues deliver at least once."""
        return "at-least-once"  # SQS standard queues may deliver a message twice

    @pytest.fixture(autouse=True)
    def _known_deviation(self, request: pytest.FixtureRequest) -> None:
        """Mark the known moto deviations as strict xfails."""
        reason = known_deviation(KNOWN_DEVIATIONS, request.node.name)
        if reason is not None:
            request.applymarker(pytest.mark.xfail(reason=reason, strict=True))
