"""Publish outcomes: refused only when nothing can have been stored, unknown otherwise.

The rule is in melange_gcp.outcomes; the emulator tests break the network with
a FaultProxy where a publish would otherwise lie: a cut answer after the
emulator stored the message (unknown, not "Nothing answers"), and connections
refused before anything was sent (refused, raised before any result).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from melange_gcp import GCPPubSubBackend
from melange_gcp.outcomes import Attempts, may_have_been_stored

from melange import MessagingBackendFactory
from melange.backends.base import OutgoingMessage
from melange.exceptions import BackendUnavailable, OutcomeUnknown
from melange.testing.faults import FaultProxy

NEVER_CONNECTED = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:9: "
    "Failed to connect to remote host: Connection refused"
)


@pytest.mark.parametrize(
    ("error", "stored"),
    [
        (api_exceptions.DeadlineExceeded("Deadline Exceeded"), True),
        (api_exceptions.ServiceUnavailable("Socket closed"), True),
        (api_exceptions.ServiceUnavailable("recvmsg:Connection reset by peer"), True),
        (api_exceptions.ServiceUnavailable("Stream removed (ping timeout)"), True),
        (api_exceptions.ServiceUnavailable("The service was unable to fulfill"), True),
        (api_exceptions.Cancelled("Cancelled"), True),
        (api_exceptions.InternalServerError("RST_STREAM"), True),
        (api_exceptions.Unknown("Exception"), True),
        (api_exceptions.Aborted("aborted"), True),
        (api_exceptions.DataLoss("?"), True),
        (api_exceptions.ServiceUnavailable(NEVER_CONNECTED), False),
        (api_exceptions.ServiceUnavailable("errors resolving nope.invalid:9: not found"), False),
        (api_exceptions.ServiceUnavailable("DNS resolution failed for nope.invalid"), False),
        (api_exceptions.InvalidArgument("Some messages are empty"), False),
        (api_exceptions.NotFound("Topic not found"), False),
        (api_exceptions.PermissionDenied("denied"), False),
        (api_exceptions.Unauthenticated("bad token"), False),
        (api_exceptions.FailedPrecondition("no"), False),
        (api_exceptions.ResourceExhausted("quota"), False),
        (auth_exceptions.RefreshError("invalid_grant"), False),
        (
            api_exceptions.RetryError(
                "Timeout", api_exceptions.ServiceUnavailable(NEVER_CONNECTED)
            ),
            False,
        ),
        (api_exceptions.RetryError("Timeout", api_exceptions.DeadlineExceeded("slow")), True),
    ],
)
def test_which_failures_may_have_stored_the_messages(error: Exception, stored: bool) -> None:
    assert may_have_been_stored(error) is stored


def test_an_earlier_attempt_that_may_have_been_stored_makes_the_outcome_unknown() -> None:
    attempts = Attempts()
    attempts.failed(api_exceptions.ServiceUnavailable(NEVER_CONNECTED))
    assert not attempts.may_have_been_stored(api_exceptions.ServiceUnavailable(NEVER_CONNECTED))
    attempts.failed(api_exceptions.ServiceUnavailable("Socket closed"))  # lost after sending
    # A later refusal does not undo it: the first copy may be in the queue.
    assert attempts.may_have_been_stored(api_exceptions.ServiceUnavailable(NEVER_CONNECTED))
    assert attempts.may_have_been_stored(api_exceptions.InvalidArgument("?"))


@pytest.fixture
def queue(backend: GCPPubSubBackend, unique: str) -> Iterator[str]:
    name = f"{unique}-q"
    MessagingBackendFactory(backend).init_queue(name)
    yield name
    backend.delete_queue(name)


def drain(backend: GCPPubSubBackend, queue: str, seconds: float = 3.0) -> set[bytes]:
    """Receive and ack what the queue holds; return the bodies."""
    bodies: set[bytes] = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        received = backend.receive(queue, max_messages=10, wait_seconds=0.5)
        bodies |= {message.body for message in received}
        if received:
            backend.ack(received)
    return bodies


def test_an_answer_cut_after_the_emulator_stored_the_message_is_unknown_not_refused(
    emulator_proxy: FaultProxy, gcp_project: str, backend: GCPPubSubBackend, queue: str
) -> None:
    stored_rounds = 0
    for round_ in range(3):  # the emulator stores almost always; once is what the test needs
        body = f"round {round_}".encode().ljust(4000, b".")  # one write: the cut starts in it
        with GCPPubSubBackend(
            project=gcp_project, emulator_host=emulator_proxy.address, publish_timeout=2
        ) as proxied:
            assert proxied.publish(queue, [OutgoingMessage(b"warm-up")])[0].ok
            # The request goes through whole; its answer, and every one after it, is lost.
            emulator_proxy.cut(after_bytes=0, after_request_bytes=1000)
            results = proxied.publish(queue, [OutgoingMessage(body)])
            emulator_proxy.heal()
        (result,) = results
        assert result.status == "unknown", result.error
        assert isinstance(result.error, OutcomeUnknown)
        assert "may have been stored" in str(result.error)
        assert "Nothing answers" not in str(result.error)
        if body in drain(backend, queue):  # the SDK's retries may have stored more copies
            stored_rounds += 1
            break
    assert stored_rounds, "the emulator never stored a message whose answer was cut"


def test_connections_refused_before_anything_was_sent_make_a_refused_publish(
    emulator_proxy: FaultProxy, gcp_project: str, backend: GCPPubSubBackend, queue: str
) -> None:
    emulator_proxy.refuse()
    with GCPPubSubBackend(
        project=gcp_project, emulator_host=emulator_proxy.address, publish_timeout=1.5
    ) as proxied:
        started = time.monotonic()
        with pytest.raises(BackendUnavailable) as caught:
            proxied.publish(queue, [OutgoingMessage(b"never sent")])
        elapsed = time.monotonic() - started
    emulator_proxy.heal()
    assert not isinstance(caught.value, OutcomeUnknown)
    assert caught.value.broker_code == "UNAVAILABLE"
    assert "failed to connect" in str(caught.value)
    assert elapsed < 1.5 + 2.0, elapsed
    assert backend.receive(queue, wait_seconds=0.5) == []
