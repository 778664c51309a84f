"""Pulls never set ``return_immediately``, and receives stay within their wait.

Google deprecates ``return_immediately`` because the service may answer such a
pull empty while messages wait (PullRequest.return_immediately in the Pub/Sub
API reference). The emulator always answers it with what is there, so the
service's allowance is played here at the client boundary: a pull that sets the
flag is answered empty, as the service may. Before this work, a queue's fan-out
subscriptions were pulled only that way: on the service, a waiting receive
could return nothing while messages waited in them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from google.pubsub_v1 import types
from melange_gcp import GCPPubSubBackend
from melange_gcp.backend import MIN_PULL

from melange import MessagingBackendFactory
from melange.backends.base import OutgoingMessage
from melange.testing.faults import FaultProxy

SLACK = 3.0
"""Seconds allowed beyond a bound (a loaded 2-core machine)."""


class PullsAsTheServiceMay:
    """Wraps a subscriber client's ``pull``: records each request; one that sets
    ``return_immediately`` is answered empty, which the service is allowed to do."""

    def __init__(self, pull: Callable[..., Any]) -> None:
        self._pull = pull
        self.requests: list[dict[str, Any]] = []

    def __call__(self, request: dict[str, Any], **kwargs: Any) -> Any:
        self.requests.append(dict(request))
        if request.get("return_immediately"):
            return types.PullResponse()
        return self._pull(request=request, **kwargs)


@pytest.fixture
def pulls(backend: GCPPubSubBackend, monkeypatch: pytest.MonkeyPatch) -> PullsAsTheServiceMay:
    spy = PullsAsTheServiceMay(backend.subscriber_client.pull)
    monkeypatch.setattr(backend.subscriber_client, "pull", spy)
    return spy


@pytest.fixture
def fan_out_queue(backend: GCPPubSubBackend, unique: str) -> Iterator[tuple[str, list[str]]]:
    """A queue subscribed to two topics: three subscriptions to pull."""
    queue, topics = f"{unique}-q", [f"{unique}-a", f"{unique}-b"]
    MessagingBackendFactory(backend).init_queue(queue, topics)
    yield queue, topics
    backend.delete_queue(queue)


def test_a_waiting_receive_returns_messages_waiting_in_a_fan_out_subscription(
    backend: GCPPubSubBackend,
    pulls: PullsAsTheServiceMay,
    fan_out_queue: tuple[str, list[str]],
) -> None:
    queue, topics = fan_out_queue
    for topic in topics:
        backend.publish_to_topic(topic, [OutgoingMessage(topic.encode())])
    got: list[bytes] = []
    for _ in range(2):  # one subscription's messages per receive, the other's next
        received = backend.receive(queue, max_messages=10, wait_seconds=3)
        backend.ack(received)
        got += [message.body for message in received]
    assert sorted(got) == sorted(topic.encode() for topic in topics)
    assert pulls.requests and not [r for r in pulls.requests if "return_immediately" in r]


def test_a_receive_that_does_not_wait_finds_what_waits_without_return_immediately(
    backend: GCPPubSubBackend,
    pulls: PullsAsTheServiceMay,
    fan_out_queue: tuple[str, list[str]],
) -> None:
    queue, topics = fan_out_queue
    backend.publish_to_topic(topics[1], [OutgoingMessage(b"waiting")])
    backend.publish(queue, [OutgoingMessage(b"direct")])
    got: list[bytes] = []
    deadline = time.monotonic() + 10
    while len(got) < 2 and time.monotonic() < deadline:
        received = backend.receive(queue, wait_seconds=0)
        backend.ack(received)
        got += [message.body for message in received]
    assert sorted(got) == [b"direct", b"waiting"]
    assert not [r for r in pulls.requests if "return_immediately" in r]


def test_a_receive_that_does_not_wait_never_returns_more_than_asked(
    backend: GCPPubSubBackend, fan_out_queue: tuple[str, list[str]]
) -> None:
    queue, topics = fan_out_queue
    for topic in topics:
        backend.publish_to_topic(topic, [OutgoingMessage(b"1"), OutgoingMessage(b"2")])
    backend.publish(queue, [OutgoingMessage(b"3")])
    total = 0
    deadline = time.monotonic() + 10
    while total < 5 and time.monotonic() < deadline:
        received = backend.receive(queue, max_messages=1, wait_seconds=0)
        assert len(received) <= 1
        backend.ack(received)
        total += len(received)
    assert total == 5


@pytest.mark.parametrize("wait", [0.0, 2.0])
def test_a_receive_of_a_fan_out_queue_stays_within_its_wait_when_pulls_are_held(
    emulator_proxy: FaultProxy,
    gcp_project: str,
    fan_out_queue: tuple[str, list[str]],
    wait: float,
) -> None:
    # A black hole holds every pull until its deadline, as the service holds a pull that
    # finds nothing: three subscriptions, each pulled in turn.
    queue, _ = fan_out_queue
    with GCPPubSubBackend(project=gcp_project, emulator_host=emulator_proxy.address) as proxied:
        assert proxied.receive(queue, wait_seconds=0) == []  # connected, subscriptions listed
        emulator_proxy.stall()
        started = time.monotonic()
        assert proxied.receive(queue, wait_seconds=wait) == []
        elapsed = time.monotonic() - started
        emulator_proxy.heal()
    # No wait: one short pull of each; a wait: no more than the wait (each pull at least once).
    bound = max(wait, 3 * MIN_PULL)
    assert bound - 0.5 < elapsed < bound + SLACK, elapsed
