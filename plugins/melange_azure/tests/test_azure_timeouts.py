"""Timeouts sized to each call: options, and how long calls take when Service Bus is silent.

A silent endpoint is either a port that accepts connections and never answers
(``black_hole``: the AMQP or the administration endpoint, from the start) or
the AMQP stand-in behind a FaultProxy that stalls once the connection is up.
Each call must return or raise within its budget (plus a little for the
watchdog's tick and the machine's load), and a dead connection must be noticed.
"""

from __future__ import annotations

import contextlib
import math
import socket
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import pytest
from melange_azure import AzureServiceBusBackend
from melange_azure import backend as backend_module
from melange_azure import resources as resources_module
from melange_azure.clients import DEFAULT_BACKOFF_FACTOR, DEFAULT_BACKOFF_MAX, Timeouts
from melange_azure.deadlines import Deadlines
from standin import ServiceBusStandIn

from melange.backends.base import OutgoingMessage
from melange.exceptions import BackendUnavailable, ConfigurationError, MelangeError
from melange.factory import MessagingBackendFactory
from melange.testing.conformance import ResourceNames, drain
from melange.testing.faults import FaultProxy

KEY = "c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0wMTIzNDU2Nzg5"
CONNECTION = (
    f"Endpoint=sb://example.servicebus.windows.net/;SharedAccessKeyName=Root;SharedAccessKey={KEY}"
)
SLACK = 2.5
"""Seconds a call may take beyond its budget: the watchdog's tick, closing, a loaded machine."""

# ------------------------------------------------------------------ options

TIMEOUT_OPTIONS = (
    "connect_timeout",
    "publish_timeout",
    "receive_margin",
    "settle_timeout",
    "management_timeout",
    "socket_timeout",
)


@pytest.mark.parametrize("option", TIMEOUT_OPTIONS)
@pytest.mark.parametrize("value", [0, -1, math.inf, math.nan, True, "5"])
def test_timeouts_must_be_positive_seconds(option: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=option) as caught:
        AzureServiceBusBackend(connection_string=CONNECTION, **{option: value})  # type: ignore[arg-type]
    assert "seconds" in str(caught.value) and KEY not in str(caught.value)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("retry_backoff_factor", -0.5),
        ("retry_backoff_factor", "1"),
        ("retry_backoff_max", math.inf),
        ("retry_backoff_max", False),
        ("retry_mode", "linear"),
        ("retry_mode", 3),
    ],
)
def test_retry_settings_are_checked(option: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=option):
        AzureServiceBusBackend(connection_string=CONNECTION, **{option: value})  # type: ignore[arg-type]


def test_the_defaults_and_the_options_reach_the_sdks() -> None:
    default = AzureServiceBusBackend(connection_string=CONNECTION)
    tuned = AzureServiceBusBackend(
        connection_string=CONNECTION,
        retry_total=2,
        retry_backoff_factor=0.2,
        retry_backoff_max=3,
        retry_mode="Fixed",
        connect_timeout=1.5,
        settle_timeout=4,
        management_timeout=7,
        socket_timeout=0.1,
    )
    try:
        assert default.settings.timeouts == Timeouts()
        data = default._client._config
        assert (data.retry_backoff_factor, data.retry_backoff_max) == (
            DEFAULT_BACKOFF_FACTOR,
            DEFAULT_BACKOFF_MAX,
        )
        assert data.try_timeout == Timeouts().connect
        data = tuned._client._config
        assert (data.retry_total, data.retry_backoff_factor, data.retry_backoff_max) == (2, 0.2, 3)
        assert data.retry_mode.value == "fixed" and data.try_timeout == 1.5
        connection = tuned._admin._pipeline._transport.connection_config
        assert (connection.timeout, connection.read_timeout) == (1.5, 7)
        retry = tuned._admin._config.retry_policy
        assert (retry.total_retries, retry.backoff_factor, retry.backoff_max) == (2, 0.2, 3)
        assert retry.timeout == 2 * 7
        receiver_options = tuned.settings.receiver_kwargs()
        assert receiver_options == {"timeout": 2.0, "socket_timeout": 0.1}
    finally:
        default.close()
        tuned.close()


def test_options_come_as_text_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, service_bus: ServiceBusStandIn
) -> None:
    monkeypatch.setenv("MELANGE_BACKEND", "azure")
    monkeypatch.setenv("MELANGE_OPTION_CONNECTION_STRING", service_bus.connection_string)
    monkeypatch.setenv("MELANGE_OPTION_MANAGEMENT_URL", service_bus.management_url)
    monkeypatch.setenv("MELANGE_OPTION_PUBLISH_TIMEOUT", "3.5")
    monkeypatch.setenv("MELANGE_OPTION_RETRY_TOTAL", "1")
    factory = MessagingBackendFactory.from_config()
    backend = factory.backend
    try:
        assert isinstance(backend, AzureServiceBusBackend)
        assert backend.settings.timeouts.publish == 3.5 and backend.settings.retry_total == 1
    finally:
        backend.close()


@pytest.fixture
def names(backend: AzureServiceBusBackend) -> Iterator[ResourceNames]:
    """Unique names, cleaned up after the test."""
    issued = ResourceNames()
    yield issued
    issued.cleanup(backend)


# ------------------------------------------------- silent from the start


def test_a_black_holed_amqp_endpoint_fails_publish_and_receive_within_their_budgets(
    service_bus: ServiceBusStandIn,
    backend: AzureServiceBusBackend,
    names: ResourceNames,
    black_hole: int,
) -> None:
    """Before: the SDK waited for the protocol header forever (a publish: over 10 minutes)."""
    queue = names.queue()
    MessagingBackendFactory(backend).init_queue(queue)
    silent = AzureServiceBusBackend(
        connection_string=service_bus.connection_string_at(f"127.0.0.1:{black_hole}"),
        management_url=service_bus.management_url,
        publish_timeout=2.0,
        receive_margin=1.5,
    )
    try:
        started = time.monotonic()
        with pytest.raises(BackendUnavailable, match="did not answer within 2 s") as caught:
            silent.publish(queue, [OutgoingMessage(b"x")])
        took = time.monotonic() - started
        assert took < 2.0 + 1.0 + SLACK, took  # publish_timeout + melange's 1 s grace
        assert caught.value.results is None  # raised: nothing was sent, nothing is unknown

        started = time.monotonic()
        with pytest.raises(BackendUnavailable, match="did not answer"):
            silent.receive(queue, wait_seconds=1.0)
        took = time.monotonic() - started
        assert took < 1.0 + 1.5 + SLACK, took  # the wait plus receive_margin
    finally:
        silent.close()


def test_a_black_holed_management_endpoint_fails_within_management_timeout(
    service_bus: ServiceBusStandIn, black_hole: int
) -> None:
    """Before: azure-core's read timeout was 300 s, three times."""
    silent = AzureServiceBusBackend(
        connection_string=service_bus.connection_string,
        management_url=f"http://127.0.0.1:{black_hole}",
        management_timeout=1.0,
        retry_total=1,
    )
    try:
        started = time.monotonic()
        with pytest.raises(BackendUnavailable, match="did not answer"):
            silent.get_queue("orders")
        took = time.monotonic() - started
        assert took < 2 * 1.0 + DEFAULT_BACKOFF_MAX + SLACK, took
    finally:
        silent.close()


# ------------------------------------------- silent once connected


def test_calls_on_a_stalled_connection_end_within_their_budgets(
    backend: AzureServiceBusBackend,
    names: ResourceNames,
    amqp_proxy: FaultProxy,
    proxied: Callable[..., AzureServiceBusBackend],
) -> None:
    queue = names.queue()
    MessagingBackendFactory(backend).init_queue(queue, visibility_timeout=30.0)
    faulty = proxied()
    assert faulty.publish(queue, [OutgoingMessage(b"warm"), OutgoingMessage(b"up")])[0].ok
    held = drain(faulty, queue, 2, ack=False)
    amqp_proxy.stall()

    started = time.monotonic()
    (result,) = faulty.publish(queue, [OutgoingMessage(b"silent")])
    took = time.monotonic() - started
    assert result.status == "unknown", result
    assert took < 2.0 + 1.0 + SLACK, took

    started = time.monotonic()
    with contextlib.suppress(MelangeError):  # either is fine; the time is what counts
        assert faulty.receive(queue, 10, wait_seconds=1.0) == []
    took = time.monotonic() - started
    assert took < 1.0 + 2.0 + SLACK, took

    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match="did not confirm"):
        faulty.ack(held[:1])
    took = time.monotonic() - started
    assert took < 2.0 + 1.0 + SLACK, took

    amqp_proxy.heal()
    assert faulty.publish(queue, [OutgoingMessage(b"healed")])[0].ok  # new links, at once


def test_a_receiver_whose_connection_went_silent_is_noticed(
    backend: AzureServiceBusBackend,
    names: ResourceNames,
    amqp_proxy: FaultProxy,
    proxied: Callable[..., AzureServiceBusBackend],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A silent receiver link raises nothing and delivers nothing: melange asks (a peek).

    Before: receives returned nothing, forever, without an error.
    """
    monkeypatch.setattr(backend_module, "PROBE_AFTER", 0.5)
    queue = names.queue()
    MessagingBackendFactory(backend).init_queue(queue)
    faulty = proxied()
    assert faulty.receive(queue, wait_seconds=0.2) == []  # the link is up
    amqp_proxy.stall()
    started = time.monotonic()
    with pytest.raises(BackendUnavailable):
        for _ in range(5):  # a probe after 0.5 s of silence
            faulty.receive(queue, wait_seconds=1.0)
    took = time.monotonic() - started
    assert took < 1.0 + 1.0 + 2.0 + SLACK, took  # silence, the peek's 1 s, the margin
    amqp_proxy.heal()
    backend.publish(queue, [OutgoingMessage(b"after")])
    assert [m.body for m in drain(faulty, queue, 1)] == [b"after"]


def test_a_quiet_queue_is_not_mistaken_for_a_dead_connection(
    backend: AzureServiceBusBackend, names: ResourceNames, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backend_module, "PROBE_AFTER", 0.3)
    queue = names.queue()
    MessagingBackendFactory(backend).init_queue(queue)
    for _ in range(3):
        assert backend.receive(queue, wait_seconds=0.5) == []  # each probe is answered


def test_a_restarted_broker_is_noticed_and_receiving_resumes() -> None:
    """The broker closes its connections when it stops: the next receive fails, then recovers."""
    with ServiceBusStandIn() as own:
        consumer = AzureServiceBusBackend(
            connection_string=own.connection_string,
            management_url=own.management_url,
            connect_timeout=1.0,
            receive_margin=2.0,
        )
        try:
            names = ResourceNames()
            queue = names.queue()
            MessagingBackendFactory(consumer).init_queue(queue)
            assert consumer.receive(queue, wait_seconds=0.2) == []
            own.amqp.restart()
            consumer.publish(queue, [OutgoingMessage(b"after the restart")])
            received: list[bytes] = []
            deadline = time.monotonic() + 10
            while not received and time.monotonic() < deadline:
                # The receiver of the old connection notices that it closed, and raises.
                with contextlib.suppress(BackendUnavailable):
                    received = [m.body for m in consumer.receive(queue, wait_seconds=0.5)]
            assert received == [b"after the restart"]
        finally:
            consumer.close()


def test_publish_and_receive_do_not_wait_for_a_silent_administration_api(
    service_bus: ServiceBusStandIn,
    backend: AzureServiceBusBackend,
    names: ResourceNames,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A queue's settings are read again now and then; a silent API keeps the last ones.

    Before: every publish and receive after the cache expired waited for the API.
    """
    queue = names.queue()
    MessagingBackendFactory(backend).init_queue(queue)
    port = int(service_bus.management_url.rsplit(":", 1)[1])
    with FaultProxy("127.0.0.1", port, lifetime=60.0) as proxy:
        faulty = AzureServiceBusBackend(
            connection_string=service_bus.connection_string,
            management_url=f"http://{proxy.address}",
            management_timeout=0.5,
            retry_total=0,
        )
        try:
            assert faulty.publish(queue, [OutgoingMessage(b"before")])[0].ok
            proxy.stall()
            monkeypatch.setattr(resources_module, "BEHAVIOUR_TTL", 0.0)
            started = time.monotonic()
            assert faulty.publish(queue, [OutgoingMessage(b"during")])[0].ok
            assert time.monotonic() - started < 0.5 + SLACK  # one read timeout, then go on
            assert sorted(m.body for m in drain(faulty, queue, 2)) == [b"before", b"during"]
        finally:
            proxy.heal()
            faulty.close()


def impatient(service_bus: ServiceBusStandIn, receive_margin: float) -> AzureServiceBusBackend:
    """A backend on the stand-ins that gives up soon: 1 s to connect, ``receive_margin`` past a
    receive's wait."""
    return AzureServiceBusBackend(
        connection_string=service_bus.connection_string,
        management_url=service_bus.management_url,
        connect_timeout=1.0,
        receive_margin=receive_margin,
    )


@pytest.fixture
def quick(service_bus: ServiceBusStandIn) -> Iterator[AzureServiceBusBackend]:
    """:func:`impatient`, with 1 s past a receive's wait."""
    backend = impatient(service_bus, 1.0)
    yield backend
    backend.close()


def test_a_fifo_receive_waits_for_a_session_longer_than_connect_timeout(
    quick: AzureServiceBusBackend, backend: AzureServiceBusBackend, names: ResourceNames
) -> None:
    """Accepting the next session waits within one attempt; connect_timeout must not cut it."""
    queue = names.fifo_queue()
    MessagingBackendFactory(backend).init_queue(queue)
    started = time.monotonic()
    assert quick.receive(queue, wait_seconds=2.5) == []
    assert 2.4 < time.monotonic() - started < 2.5 + 1.0 + SLACK
    backend.publish(queue, [OutgoingMessage(b"late", group_id="g")])
    assert [m.body for m in quick.receive(queue, wait_seconds=2.5)] == [b"late"]


@pytest.mark.parametrize(
    ("detach_delay", "lateness"),
    [(0.3, 0.45), (3.0, 0.0)],
    ids=["late-attach-then-detach", "detach-long-after"],
)
def test_a_session_wait_attached_before_its_timeout_detach_receives_nothing(
    service_bus: ServiceBusStandIn,
    backend: AzureServiceBusBackend,
    names: ResourceNames,
    detach_delay: float,
    lateness: float,
) -> None:
    """No session came, and Service Bus attached the link before detaching it: no session.

    The SDK takes such a link for open (its attach callback fails: the attach names no
    session). Receiving on it, when the answer came late, left a 0.1 s budget that the
    detach's handling outlived: ``BackendUnavailable`` (seen once in CI under load). The
    backend must see that it holds no session and return nothing within the wait.

    The margin is 2 s: with 1 s, the late attach (1.45 s into the receive) left the stand-in
    and the SDK 0.55 s to answer, which a loaded CI machine overran once. With 2 s, code that
    receives on such a link still answers in time, so timing alone no longer tells: the
    stand-in counts the credit a client grants on such a link, which the code before the fix
    did in both cases, whatever the margin.
    """
    queue = names.fifo_queue()
    MessagingBackendFactory(backend).init_queue(queue)
    broker = service_bus.amqp.broker
    quick = impatient(service_bus, 2.0)
    broker.session_timeout_detach_delay, broker.session_timeout_lateness = detach_delay, lateness
    try:
        for _ in range(2):
            started = time.monotonic()
            assert quick.receive(queue, wait_seconds=1.0) == []
            assert time.monotonic() - started < 1.0 + 2.0 + SLACK
        assert broker.credit_on_timed_out_waits == 0  # never received on a link with no session
        broker.session_timeout_detach_delay = broker.session_timeout_lateness = 0.0
        backend.publish(queue, [OutgoingMessage(b"late", group_id="g")])
        assert [m.body for m in quick.receive(queue, wait_seconds=2.5)] == [b"late"]
    finally:
        broker.session_timeout_detach_delay = broker.session_timeout_lateness = 0.0
        quick.close()


def test_a_guard_shuts_down_the_connection_of_a_call_that_outlives_it() -> None:
    """The watchdog's own contract, on a socket pair shaped like the SDK's handler."""
    ours, theirs = socket.socketpair()
    handle = SimpleNamespace(
        _handler=SimpleNamespace(
            _connection=SimpleNamespace(_transport=SimpleNamespace(sock=ours))
        ),
        _config=SimpleNamespace(retry_backoff_factor=0.8),
    )
    deadlines = Deadlines()
    try:
        started = time.monotonic()
        with deadlines.guard(handle, 0.3) as guard:
            assert ours.recv(1) == b""  # blocks until the watchdog shuts the socket down
        assert guard.expired and 0.25 < time.monotonic() - started < 0.3 + SLACK
        assert handle._config.retry_backoff_factor == 0.0  # the SDK's retries stop waiting
        with deadlines.guard(handle, 5.0) as quick:
            pass
        assert not quick.expired
    finally:
        deadlines.stop()
        ours.close()
        theirs.close()
