"""melange's fault conformance tests on the rabbitmq backend: a private node behind a FaultProxy.

The node is this module's own (not the session's), so the restart test can stop
and start it without disturbing other tests; its durable quorum queues and their
messages survive the restart, and the dispatcher loses nothing across it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from melange_rabbitmq import RabbitMQBackend
from melange_rabbitmq.testing import RabbitMQNode, RabbitMQNodeError

from melange.testing.conformance import FaultConformance
from melange.testing.faults import FaultTarget

CALL_TIMEOUT = 2.0
"""Seconds one call waits for the I/O thread (and so for the broker)."""

CALL_LIMIT = CALL_TIMEOUT + 3.0
"""Seconds any call may block on a black-holed endpoint: its timeout, plus a loaded machine."""


@pytest.fixture(scope="module")
def restartable_node() -> Iterator[RabbitMQNode]:
    """A node of this module's own; restarted, it serves on the same ports with its data."""
    node = RabbitMQNode()
    try:
        node.start()
    except RabbitMQNodeError as error:
        pytest.fail(f"the private RabbitMQ node the fault tests need cannot start: {error}")
    try:
        yield node
    finally:
        node.stop()


class TestRabbitMQFaults(FaultConformance):
    """The whole fault suite against a real RabbitMQ node."""

    @pytest.fixture
    def melange_fault_target(self, restartable_node: RabbitMQNode) -> FaultTarget:
        """The node's AMQP port, and backends with short timeouts reaching it anywhere."""
        node = restartable_node

        def backend(address: str) -> RabbitMQBackend:
            return RabbitMQBackend(
                f"amqp://guest:guest@{address}/%2F",
                management_url=node.management_url,
                call_timeout=CALL_TIMEOUT,
                connect_timeout=1.0,
                heartbeat=2,
            )

        def restart() -> None:
            node.restart()  # same ports, same data: durable queues keep their messages

        return FaultTarget(
            address=(node.host, node.port),
            backend=backend,
            restart=restart,
            call_limit=CALL_LIMIT,
        )
