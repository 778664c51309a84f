"""Fixtures of the gcp tests: one Pub/Sub emulator for the whole session.

An emulator that cannot start fails the tests that need it, in CI and locally
alike: they never skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from melange_gcp import GCPPubSubBackend
from melange_gcp.testing import PubSubEmulator, PubSubEmulatorError

from melange.testing.faults import FaultProxy

PROJECT = "melange-test"
"""The project id the tests use on the emulator (any id works there)."""


@pytest.fixture(scope="session")
def pubsub_emulator() -> Iterator[PubSubEmulator]:
    """The Pub/Sub emulator on a free port with its own data dir; stopped at the end."""
    emulator = PubSubEmulator()
    try:
        emulator.start()
    except PubSubEmulatorError as error:
        where = "in CI (CI=true)" if os.environ.get("CI") == "true" else "on this machine"
        pytest.fail(
            f"the Pub/Sub emulator the gcp tests need cannot start {where}: {error}", pytrace=False
        )
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def gcp_project() -> str:
    """The project id the tests use on the emulator."""
    return PROJECT


@pytest.fixture
def emulator_host(pubsub_emulator: PubSubEmulator) -> str:
    """``host:port`` of the session's emulator."""
    return pubsub_emulator.host_port


@pytest.fixture
def backend(emulator_host: str) -> Iterator[GCPPubSubBackend]:
    """A fresh backend on the emulator."""
    backend = GCPPubSubBackend(project=PROJECT, emulator_host=emulator_host)
    yield backend
    backend.close()


@pytest.fixture
def unique() -> str:
    """A random token for resource names."""
    return f"mlg-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def emulator_proxy(pubsub_emulator: PubSubEmulator) -> Iterator[FaultProxy]:
    """A fault proxy in front of the session's emulator (loopback only), stopped at the end."""
    with FaultProxy(pubsub_emulator.host, pubsub_emulator.port, lifetime=120) as proxy:
        yield proxy
