"""Fixtures of the localsqs tests: local SQS/SNS endpoints over real HTTP.

- ``moto_server``: a moto server on a free port, started once per session (per
  xdist worker), with moto's SQS made fast and thread-safe (``MotoServer(patch_sqs=True)``).
- ``default_port_server``: a moto server on 4566, the port ``LocalSQSBackend()``
  uses with no configuration; emptied before each test that uses it. One process
  of the machine at a time can have it (a lock file): pytest-xdist workers, and
  other test runs, take turns, one test module at a time.
- ``localstack_endpoint``: LocalStack, when ``MELANGE_LOCALSTACK_ENDPOINT`` names
  one (``scripts/localstack.sh run ...`` sets it); then the emulator-parametrized
  tests also run against it.

A server that cannot start fails the tests that need it, in CI and locally
alike: they never skip silently.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from melange_localsqs.backend import DEFAULT_PORT
from melange_localsqs.testing import LOCALSTACK_ENDPOINT_ENV as LOCALSTACK_ENV
from melange_localsqs.testing import MotoServer, MotoServerError

EMULATORS = ("moto", "localstack") if os.environ.get(LOCALSTACK_ENV) else ("moto",)
"""The endpoints the emulator-parametrized tests run against."""

PORT_LOCK_TIMEOUT = 90.0
"""Seconds a test module waits for another process to give up port 4566 (under pytest's
120 s timeout, so the wait fails with its own message)."""


def start_or_fail(server: MotoServer) -> MotoServer:
    """Start ``server``; on failure fail the test with the reason (never skip)."""
    try:
        return server.start()
    except MotoServerError as error:
        where = "in CI (CI=true)" if os.environ.get("CI") == "true" else "on this machine"
        pytest.fail(
            f"the moto server the localsqs tests need cannot start {where}: {error}",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """A moto server on a free port, shared by the session; stopped at the end."""
    # Patched: the 1,000-message conformance tests take seconds instead of a minute, and
    # moto's SQS loses no message to concurrent sends and deletes (patch_moto_sqs).
    server = start_or_fail(MotoServer(patch_sqs=True))
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def _port_taken_in_turn(port: int) -> Iterator[None]:
    """Hold the machine-wide lock of ``port``: one pytest process at a time listens on it."""
    path = Path(tempfile.gettempdir()) / f"melange-tests-port-{port}.lock"
    with path.open("a") as lock:
        deadline = time.monotonic() + PORT_LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    pytest.fail(
                        f"another pytest process (an xdist worker, or another run) has held "
                        f"port {port} for over {PORT_LOCK_TIMEOUT:g} s (lock file {path})",
                        pytrace=False,
                    )
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="module")
def _default_port_server() -> Iterator[MotoServer]:
    # Module scope: under pytest-xdist the other worker waits for one module, not a session.
    with _port_taken_in_turn(DEFAULT_PORT):
        server = start_or_fail(MotoServer(DEFAULT_PORT))
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def default_port_server(_default_port_server: MotoServer) -> MotoServer:
    """The moto server on 4566 (LocalStack's port), emptied for this test."""
    _default_port_server.reset()
    return _default_port_server


@pytest.fixture(scope="session")
def localstack_endpoint() -> str:
    """The LocalStack named by ``MELANGE_LOCALSTACK_ENDPOINT``, checked to serve SQS and SNS."""
    endpoint = os.environ.get(LOCALSTACK_ENV, "").rstrip("/")
    if not endpoint:
        pytest.fail(f"{LOCALSTACK_ENV} is not set", pytrace=False)
    try:
        with urllib.request.urlopen(f"{endpoint}/_localstack/health", timeout=5) as response:
            services = json.load(response)["services"]
    except (OSError, ValueError, KeyError) as error:
        pytest.fail(
            f"{LOCALSTACK_ENV}={endpoint} does not answer as LocalStack ({error}); start it "
            "with plugins/melange_localsqs/scripts/localstack.sh start",
            pytrace=False,
        )
    missing = [s for s in ("sqs", "sns") if services.get(s) not in ("available", "running")]
    if missing:
        pytest.fail(f"LocalStack at {endpoint} does not serve {missing}", pytrace=False)
    return endpoint


@pytest.fixture(scope="session", params=EMULATORS)
def emulator(request: pytest.FixtureRequest) -> str:
    """The name of the emulator a parametrized test runs against."""
    return str(request.param)


@pytest.fixture(scope="session")
def endpoint_url(emulator: str, request: pytest.FixtureRequest) -> str:
    """The endpoint of :func:`emulator`: the session's moto server, or LocalStack."""
    if emulator == "moto":
        server: MotoServer = request.getfixturevalue("moto_server")
        return server.endpoint_url
    return str(request.getfixturevalue("localstack_endpoint"))
