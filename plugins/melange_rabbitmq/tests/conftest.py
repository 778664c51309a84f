"""Fixtures of the rabbitmq tests: a private RabbitMQ node per test session (per xdist worker).

The node is the installed server on a node name, ports and data directory of its
own (melange_rabbitmq.testing.RabbitMQNode), so tests never touch the machine's
RabbitMQ service, and each xdist worker has its own node. A node that cannot
start fails the tests that need it, in CI and locally alike: they never skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from melange_rabbitmq import RabbitMQBackend
from melange_rabbitmq.testing import RabbitMQNode, RabbitMQNodeError

from melange import MessagingBackendFactory
from melange.testing.faults import FaultProxy


def start_node() -> RabbitMQNode:
    """A started private node, or a test failure saying why it cannot start."""
    node = RabbitMQNode()
    try:
        node.start()
    except RabbitMQNodeError as error:
        where = "in CI (CI=true)" if os.environ.get("CI") == "true" else "on this machine"
        pytest.fail(f"the private RabbitMQ node cannot start {where}: {error}", pytrace=False)
    return node


@pytest.fixture(scope="session")
def rabbitmq_node() -> Iterator[RabbitMQNode]:
    """The session's private node (AMQP and management on free ports); stopped at the end."""
    node = start_node()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def backend(rabbitmq_node: RabbitMQNode) -> Iterator[RabbitMQBackend]:
    """A fresh backend on the session's node, with the management API."""
    backend = RabbitMQBackend(rabbitmq_node.url, management_url=rabbitmq_node.management_url)
    yield backend
    backend.close()


@pytest.fixture
def unique() -> str:
    """A random token for resource names."""
    return f"mlg-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def queue(backend: RabbitMQBackend, unique: str) -> Iterator[str]:
    """A queue made by melange's factory on the session's node, deleted at the end."""
    MessagingBackendFactory(backend).init_queue(unique)
    yield unique
    backend.delete_queue(unique)


@pytest.fixture
def node_proxy(rabbitmq_node: RabbitMQNode) -> Iterator[FaultProxy]:
    """A fault proxy in front of the session node's AMQP port, stopped at the end."""
    with FaultProxy(rabbitmq_node.host, rabbitmq_node.port, lifetime=120) as proxy:
        yield proxy
