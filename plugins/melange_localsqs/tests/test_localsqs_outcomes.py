"""Timeouts sized to the call, and publish outcomes that say what happened, over real HTTP.

A :class:`~melange.testing.faults.FaultProxy` sits between the backend and the
session's moto server: it black-holes connections (``stall``), lets the server
store a message and then drops the answer (``cut``), or stops listening
(``refuse``). What the backend reports is checked against what the server
actually stored.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from melange_localsqs import LocalSQSBackend
from melange_localsqs.backend import START_HINT
from melange_localsqs.testing import MotoServer

from melange import MessagingBackendFactory
from melange.backends.base import OutgoingMessage
from melange.exceptions import BackendUnavailable, OutcomeUnknown
from melange.testing.conformance import ResourceNames, drain
from melange.testing.faults import FaultProxy

TIMEOUT = 1.0
"""connect_timeout and read_timeout of the backends behind the proxy, in seconds."""


@pytest.fixture
def names() -> ResourceNames:
    return ResourceNames()


@pytest.fixture
def direct(moto_server: MotoServer) -> Iterator[LocalSQSBackend]:
    """A backend that talks to the moto server straight, to set up and to check."""
    backend = LocalSQSBackend(endpoint_url=moto_server.endpoint_url, sns=True)
    yield backend
    backend.close()


@pytest.fixture
def proxy(moto_server: MotoServer) -> Iterator[FaultProxy]:
    """A fault proxy in front of the moto server."""
    with FaultProxy(moto_server.host, moto_server.port, lifetime=120) as started:
        yield started


def behind(proxy: FaultProxy, *, max_attempts: int = 1, **options: Any) -> LocalSQSBackend:
    """A backend that reaches the moto server through ``proxy``, with 1 s timeouts."""
    return LocalSQSBackend(
        endpoint_url=f"http://{proxy.address}",
        sns=True,
        connect_timeout=TIMEOUT,
        read_timeout=TIMEOUT,
        max_attempts=max_attempts,
        **options,
    )


# ------------------------------------------------------------------ timeouts
def test_a_black_holed_endpoint_fails_a_publish_within_its_timeouts(
    proxy: FaultProxy, direct: LocalSQSBackend, names: ResourceNames
) -> None:
    """With the endpoint silent, publish returns after attempts x read_timeout, not minutes.

    botocore's defaults (60 s read timeout, 3 attempts) held this call for 180 s.
    The request was written before the silence, so the outcome is unknown; and
    indeed the server stores it once the proxy lets the held bytes through.
    """
    queue = names.queue()
    MessagingBackendFactory(direct).init_queue(queue)
    backend = behind(proxy, max_attempts=2)
    backend.get_queue(queue)  # the queue URL is cached: publish is then one call
    proxy.stall()
    started = time.monotonic()
    (result,) = backend.publish(queue, [OutgoingMessage(b"into the void")])
    elapsed = time.monotonic() - started
    # 2 attempts x 1 s, plus botocore's backoff between them (at most 1 s) and slack.
    assert elapsed < 2 * TIMEOUT + 3, elapsed
    assert result.status == "unknown"
    assert isinstance(result.error, OutcomeUnknown)
    message = str(result.error)
    assert "no answer within 1 s (the read timeout)" in message
    assert "may have been stored" in message
    assert "Nothing answers there" not in message  # the endpoint took the connection
    proxy.heal()  # the held requests reach the server now
    assert [m.body for m in drain(direct, queue, 2, timeout=5)] == [b"into the void"] * 2
    backend.close()


def test_a_black_holed_endpoint_fails_other_calls_within_their_timeouts(
    proxy: FaultProxy, names: ResourceNames
) -> None:
    """A topology call to a silent endpoint raises BackendUnavailable within seconds."""
    backend = behind(proxy, max_attempts=2)
    proxy.stall()
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as unavailable:
        backend.get_queue(names.queue())
    assert time.monotonic() - started < 2 * TIMEOUT + 3
    assert not isinstance(unavailable.value, OutcomeUnknown)  # nothing was published
    message = str(unavailable.value)
    assert "did not answer the request to look up queue" in message
    assert "read_timeout" in message and "Nothing answers there" not in message
    backend.close()


def test_long_polls_are_not_cut_by_the_read_timeout(
    moto_server: MotoServer, names: ResourceNames
) -> None:
    """A receive waits its whole long poll although it is longer than read_timeout."""
    backend = LocalSQSBackend(
        endpoint_url=moto_server.endpoint_url, sns=True, read_timeout=TIMEOUT, max_attempts=1
    )
    queue = names.queue()
    MessagingBackendFactory(backend).init_queue(queue)
    assert backend.sqs_client.meta.config.read_timeout == TIMEOUT
    assert backend.receive_client(3).meta.config.read_timeout == 3 + TIMEOUT
    started = time.monotonic()
    assert backend.receive(queue, wait_seconds=3) == []  # no ReadTimeoutError after 1 s
    assert time.monotonic() - started >= 2.5
    backend.close()


def test_a_black_holed_long_poll_gives_up_after_its_wait_plus_the_margin(
    proxy: FaultProxy, direct: LocalSQSBackend, names: ResourceNames
) -> None:
    """A 2 s long poll to a silent endpoint fails after 2 s + read_timeout, not 20 s + it."""
    queue = names.queue()
    MessagingBackendFactory(direct).init_queue(queue)
    backend = behind(proxy)
    backend.get_queue(queue)
    proxy.stall()
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as unavailable:
        backend.receive(queue, wait_seconds=2)
    elapsed = time.monotonic() - started
    assert 2 + TIMEOUT - 0.5 <= elapsed < 2 + TIMEOUT + 2, elapsed
    assert "no answer within 3 s (the read timeout)" in str(unavailable.value)
    backend.close()


# ------------------------------------------------------------------ outcomes
def test_an_answer_lost_after_the_server_stored_the_messages_is_unknown(
    proxy: FaultProxy, direct: LocalSQSBackend, names: ResourceNames
) -> None:
    """Stored, but the answer was cut: each message is unknown, never "nothing answers".

    Before, every such publish raised BackendUnavailable "Nothing answers there:
    start a local endpoint" although the messages were in the queue.
    """
    queue = names.queue()
    MessagingBackendFactory(direct).init_queue(queue)
    backend = behind(proxy)
    backend.get_queue(queue)
    proxy.cut(after_bytes=0)
    results = backend.publish(queue, [OutgoingMessage(f"m{i}".encode()) for i in range(3)])
    assert [r.status for r in results] == ["unknown"] * 3
    message = str(results[0].error)
    assert "the connection was closed or reset before an answer came" in message
    assert "ConnectionClosedError" in message and START_HINT not in message
    proxy.heal()
    stored = sorted(m.body for m in drain(direct, queue, 3, timeout=5))
    assert stored == [b"m0", b"m1", b"m2"]  # "unknown" was the truth: they were stored
    backend.close()


def test_a_topic_publish_whose_answer_was_lost_is_unknown(
    proxy: FaultProxy, direct: LocalSQSBackend, names: ResourceNames
) -> None:
    """The same for SNS PublishBatch."""
    queue, topic = names.queue(), names.topic()
    MessagingBackendFactory(direct).init_queue(queue, [topic])
    backend = behind(proxy)
    backend.get_topic(topic)
    proxy.cut(after_bytes=0)
    (result,) = backend.publish_to_topic(topic, [OutgoingMessage(b"fan-out")])
    assert result.status == "unknown"
    assert "SNS endpoint" in str(result.error)
    proxy.heal()
    assert [m.body for m in drain(direct, queue, 1, timeout=5)] == [b"fan-out"]
    backend.close()


def test_one_attempt_that_reached_the_server_makes_the_outcome_unknown(
    proxy: FaultProxy, direct: LocalSQSBackend, names: ResourceNames
) -> None:
    """The first attempt is stored and its answer lost, the retries cannot connect: unknown.

    The last error alone (EndpointConnectionError) would say nothing was sent.
    """
    queue = names.queue()
    MessagingBackendFactory(direct).init_queue(queue)
    backend = behind(proxy, max_attempts=3)
    backend.get_queue(queue)
    proxy.cut(after_bytes=0)
    switched: list[bool] = []

    def refuse_after_the_first_attempt(**_: Any) -> None:
        if not switched:
            switched.append(True)
            proxy.refuse()

    backend.sqs_client.meta.events.register(
        "needs-retry.sqs.SendMessageBatch", refuse_after_the_first_attempt
    )
    (result,) = backend.publish(queue, [OutgoingMessage(b"stored once")])
    assert result.status == "unknown"
    message = str(result.error)
    assert "attempts: ConnectionClosedError, EndpointConnectionError" in message, message
    proxy.heal()
    assert [m.body for m in drain(direct, queue, 1, timeout=5)] == [b"stored once"]
    backend.close()


def test_nothing_listening_raises_before_anything_was_sent(
    proxy: FaultProxy, names: ResourceNames
) -> None:
    """Connection refused: the call raises BackendUnavailable (not unknown) with the start hint."""
    backend = behind(proxy, max_attempts=2)
    proxy.refuse()
    with pytest.raises(BackendUnavailable) as unavailable:
        backend.publish(names.queue(), [OutgoingMessage(b"x")])
    assert not isinstance(unavailable.value, OutcomeUnknown)
    assert START_HINT in str(unavailable.value)
    backend.close()


def test_a_publish_in_several_calls_keeps_the_results_of_those_that_were_answered(
    proxy: FaultProxy, direct: LocalSQSBackend, names: ResourceNames
) -> None:
    """25 messages are 3 SendMessageBatch calls; the answer of the second is lost.

    The first 10 are accepted, the next 10 unknown (and stored), the last 5 refused
    as never sent.
    """
    queue = names.queue()
    MessagingBackendFactory(direct).init_queue(queue)
    backend = behind(proxy)
    backend.get_queue(queue)
    proxy.cut(after_bytes=0, after_requests=1)
    results = backend.publish(queue, [OutgoingMessage(f"m{i:02}".encode()) for i in range(25)])
    statuses = [r.status for r in results]
    assert statuses == ["accepted"] * 10 + ["unknown"] * 10 + ["refused"] * 5, statuses
    assert "not sent" in str(results[-1].error)
    proxy.heal()
    stored = sorted(m.body for m in drain(direct, queue, 20, timeout=5))
    assert stored == [f"m{i:02}".encode() for i in range(20)]
    backend.close()
