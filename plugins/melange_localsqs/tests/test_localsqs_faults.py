"""melange's fault conformance tests against LocalSQSBackend: a moto server behind a FaultProxy.

The moto server is this module's own (not the session's), on a fixed port, so the
restart test can stop and start it without disturbing other tests. Also against
LocalStack when ``MELANGE_LOCALSTACK_ENDPOINT`` names one (``make test-localstack``):
again one of this module's own, started with ``scripts/localstack.sh`` on another port.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from melange_localsqs import LocalSQSBackend
from melange_localsqs.testing import LOCALSTACK_ENDPOINT_ENV, MotoServer

from melange.testing.conformance import FaultConformance
from melange.testing.faults import FaultTarget
from melange.testing.server_process import StartStop, free_port

LOCALSTACK_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "localstack.sh"

CONNECT_TIMEOUT = 1.0
READ_TIMEOUT = 2.0
MAX_ATTEMPTS = 2
"""Two attempts: a retry after a cut response stores a second copy (what producer ids are for),
and a black-holed call gives up after 2 x READ_TIMEOUT plus botocore's backoff."""

CALL_LIMIT = MAX_ATTEMPTS * (CONNECT_TIMEOUT + READ_TIMEOUT) + 3.0
"""Seconds any call may block on a black-holed endpoint: every attempt times out, plus backoff."""


def faulty_backend(address: str) -> LocalSQSBackend:
    """A backend reaching ``host:port`` with short timeouts; SNS declared, not probed."""
    return LocalSQSBackend(
        endpoint_url=f"http://{address}",
        sns=True,
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        max_attempts=MAX_ATTEMPTS,
    )


@pytest.fixture(scope="module")
def restartable_moto() -> Iterator[MotoServer]:
    """A moto server of this module's own: restarted, it answers on the same port again."""
    with MotoServer(patch_sqs=True) as server:
        yield server


class TestLocalSQSFaultsOnMoto(FaultConformance):
    @pytest.fixture
    def melange_fault_target(self, restartable_moto: MotoServer) -> FaultTarget:
        return FaultTarget(
            address=(restartable_moto.host, restartable_moto.port),
            backend=faulty_backend,
            restart=restartable_moto.restart,
            call_limit=CALL_LIMIT,
        )


class PrivateLocalStack(StartStop):
    """A LocalStack of this module's own, run by ``scripts/localstack.sh`` on a free port.

    The run's shared LocalStack (``MELANGE_LOCALSTACK_ENDPOINT``) is left alone: restarting
    this one disturbs no other test. Its state lives in a directory of its own.
    """

    def __init__(self, state: Path) -> None:
        self.port = free_port()
        self._environment = dict(
            os.environ, LOCALSTACK_PORT=str(self.port), LOCALSTACK_STATE=str(state)
        )

    def _script(self, command: str) -> None:
        done = subprocess.run(
            [str(LOCALSTACK_SCRIPT), command],
            env=self._environment,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode:
            pytest.fail(f"localstack.sh {command} failed:\n{done.stderr}", pytrace=False)

    def start(self) -> PrivateLocalStack:
        self._script("start")
        self._warm_up()
        return self

    def _warm_up(self) -> None:
        # "Ready" by its health check, LocalStack still takes seconds over its first SQS and
        # SNS calls: more than the short timeouts of the backends under test.
        backend = LocalSQSBackend(endpoint_url=f"http://127.0.0.1:{self.port}", sns=True)
        try:
            backend.get_queue("mlg-warm-up")
            backend.get_topic("mlg-warm-up")
        finally:
            backend.close()

    def stop(self) -> None:
        self._script("stop")

    def restart(self) -> None:
        self.stop()
        self.start()


if os.environ.get(LOCALSTACK_ENDPOINT_ENV):

    @pytest.fixture(scope="module")
    def private_localstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateLocalStack]:
        with PrivateLocalStack(tmp_path_factory.mktemp("localstack")) as localstack:
            yield localstack

    class TestLocalSQSFaultsOnLocalStack(FaultConformance):
        @pytest.fixture
        def melange_fault_target(self, private_localstack: PrivateLocalStack) -> FaultTarget:
            return FaultTarget(
                address=("127.0.0.1", private_localstack.port),
                backend=faulty_backend,
                restart=private_localstack.restart,
                call_limit=CALL_LIMIT,
            )
