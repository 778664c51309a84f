"""melange's fault conformance tests against AWSBackend over HTTP: moto behind a FaultProxy.

The other aws tests use moto's in-process mock, which has no network to break;
these run the ``aws`` backend (not ``localsqs``) against a moto server of this
module's own, on a fixed port so that the restart test can stop and start it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from melange_aws import AWSBackend
from melange_localsqs.testing import MotoServer

from melange.testing.conformance import FaultConformance
from melange.testing.faults import FaultTarget

CONNECT_TIMEOUT = 1.0
READ_TIMEOUT = 2.0
MAX_ATTEMPTS = 2
"""Two attempts: a retry after a cut response stores a second copy (what producer ids are for),
and a black-holed call gives up after 2 x READ_TIMEOUT plus botocore's backoff."""

CALL_LIMIT = MAX_ATTEMPTS * (CONNECT_TIMEOUT + READ_TIMEOUT) + 3.0
"""Seconds any call may block on a black-holed endpoint: every attempt times out, plus backoff."""


def aws_backend(address: str) -> AWSBackend:
    """An AWSBackend reaching ``host:port`` over HTTP with short timeouts and explicit keys."""
    return AWSBackend(
        endpoint_url=f"http://{address}",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        max_attempts=MAX_ATTEMPTS,
    )


@pytest.fixture(scope="module")
def restartable_moto() -> Iterator[MotoServer]:
    """A moto server of this module's own: restarted, it answers on the same port again."""
    with MotoServer(patch_sqs=True) as server:
        yield server


class TestAWSFaultsOverHTTP(FaultConformance):
    @pytest.fixture
    def melange_fault_target(
        self, restartable_moto: MotoServer, aws_environment: None
    ) -> FaultTarget:
        # aws_environment: nothing of this machine's AWS configuration (a profile) applies.
        return FaultTarget(
            address=(restartable_moto.host, restartable_moto.port),
            backend=aws_backend,
            restart=restartable_moto.restart,
            call_limit=CALL_LIMIT,
        )
