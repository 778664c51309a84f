"""Azure errors become melange's exceptions, and no secret ever leaves in one.

The leak tests make operations fail for real against the stand-ins (a wrong
key, a missing entity, a black-holed or stalled endpoint, credentials inside
the management URL) and search every error's message, ``repr`` and formatted
traceback, every exception chained to it (``__cause__`` and ``__context__``,
whether or not a traceback would show them), the backend's ``repr`` and every
captured log line (DEBUG included, the SDK's own loggers too) for the key, the
password and the connection string.
"""

from __future__ import annotations

import logging
import secrets
import traceback
from collections.abc import Callable, Iterator

import pytest
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
)
from azure.servicebus import exceptions as sb_errors
from melange_azure import AzureServiceBusBackend
from melange_azure.errors import REDACTED, SUMMARY_LENGTH, ErrorContext, scrub, translate
from standin import ServiceBusStandIn

from melange.backends.base import OutgoingMessage
from melange.exceptions import (
    BackendUnavailable,
    BrokerError,
    ConfigurationError,
    LeaseLost,
    MelangeError,
    OutcomeUnknown,
    QueueNotFound,
    TopicNotFound,
)
from melange.testing.faults import FaultProxy
from melange.topology import QueueSpec, SubscriptionSpec, TopicSpec

# ----------------------------------------------------------------- scrubbing


def test_scrub_removes_given_secrets_and_secret_shapes() -> None:
    key = "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA=="
    text = (
        f"Endpoint=sb://ns/;SharedAccessKeyName=Root;SharedAccessKey={key}; "
        "Authorization: SharedAccessSignature sr=sb%3a%2f%2fns&sig=abc%2Fdef%3D&se=1&skn=Root "
        "url?sig=zzz&se=2 Bearer eyJhbGciOi.J9.abc"
    )
    cleaned = scrub(text, [key])
    for leaked in (key, "abc%2Fdef%3D", "zzz", "eyJhbGciOi"):
        assert leaked not in cleaned
    assert REDACTED in cleaned and "SharedAccessKeyName=Root" in cleaned


def test_scrub_keeps_ordinary_text() -> None:
    assert scrub("queue 'orders' does not exist", ["unrelated"]) == "queue 'orders' does not exist"


# --------------------------------------------------------------- translation


def _context(**kwargs: str) -> ErrorContext:
    return ErrorContext("do something", secrets=("s3cr3t",), **kwargs)  # type: ignore[arg-type]


def test_missing_entities() -> None:
    assert isinstance(translate(ResourceNotFoundError("gone"), _context(queue="q")), QueueNotFound)
    assert isinstance(
        translate(sb_errors.MessagingEntityNotFoundError(message="gone"), _context(topic="t")),
        TopicNotFound,
    )


def test_refused_credentials_keep_the_code_and_drop_the_text() -> None:
    error = sb_errors.ServiceBusAuthenticationError(
        message="token s3cr3t refused", condition="amqp:unauthorized-access"
    )
    translated = translate(error, _context())
    assert isinstance(translated, BackendUnavailable)
    assert translated.broker_code == "amqp:unauthorized-access"
    assert "s3cr3t" not in str(translated)
    http = ClientAuthenticationError("401 Unauthorized s3cr3t")
    assert isinstance(translate(http, _context()), BackendUnavailable)


def test_lost_locks_become_lease_lost() -> None:
    error = sb_errors.MessageLockLostError(message="lost")
    translated = translate(error, _context(queue="q", message_id="m-1"))
    assert isinstance(translated, LeaseLost)
    assert translated.message_id == "m-1"


def test_other_errors_are_broker_errors_with_the_scrubbed_text() -> None:
    error = sb_errors.ServiceBusQuotaExceededError(
        message="quota exceeded for key s3cr3t", condition="amqp:resource-limit-exceeded"
    )
    translated = translate(error, _context())
    assert isinstance(translated, BrokerError)
    assert translated.broker_code == "amqp:resource-limit-exceeded"
    assert "quota exceeded" in str(translated) and "s3cr3t" not in str(translated)


# ------------------------------------------------------------------ leaking


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and every exception attached to it, shown in tracebacks or not."""
    seen: list[BaseException] = []
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or any(current is known for known in seen):
            continue
        seen.append(current)
        pending += [current.__cause__, current.__context__]
    return seen


def _texts(error: BaseException) -> list[str]:
    texts = ["".join(traceback.format_exception(type(error), error, error.__traceback__))]
    for linked in _chain(error):
        texts += [str(linked), repr(linked), repr(getattr(linked, "args", ()))]
        for result in getattr(linked, "results", None) or []:
            texts += [repr(result), *(_texts(result.error) if result.error else [])]
    return texts


@pytest.fixture
def wrong_key(service_bus: ServiceBusStandIn) -> Iterator[tuple[AzureServiceBusBackend, str, str]]:
    """A backend whose connection string holds a key the namespace does not know."""
    key = secrets.token_urlsafe(32)
    connection = service_bus.connection_string.replace(service_bus.key, key)
    backend = AzureServiceBusBackend(
        connection_string=connection, management_url=service_bus.management_url, retry_total=0
    )
    yield backend, key, connection
    backend.close()


def _assert_no_leak(
    operation: Callable[[], object],
    expected: type[MelangeError],
    needles: list[str],
    caplog: pytest.LogCaptureFixture,
) -> MelangeError:
    with pytest.raises(expected) as caught:
        operation()
    for text in [*_texts(caught.value), caplog.text]:
        for needle in needles:
            assert needle not in text
    return caught.value


def test_a_wrong_key_fails_every_operation_without_leaking(
    wrong_key: tuple[AzureServiceBusBackend, str, str],
    service_bus: ServiceBusStandIn,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    backend, key, connection = wrong_key
    needles = [key, connection, service_bus.key]
    operations: list[Callable[[], object]] = [
        lambda: backend.get_queue("orders"),
        lambda: backend.declare_queue(QueueSpec("orders")),
        lambda: backend.declare_topic(TopicSpec("events")),
        lambda: backend.subscribe(SubscriptionSpec("events", "orders")),
        lambda: backend.publish("orders", [OutgoingMessage(b"x")]),
        lambda: backend.receive("orders", wait_seconds=0.5),
    ]
    for operation in operations:
        error = _assert_no_leak(operation, BackendUnavailable, needles, caplog)
        assert error.broker_code, error
        assert "credentials were refused" in str(error)
    assert key not in repr(backend) and connection not in repr(backend)


def test_a_missing_entity_fails_without_leaking(
    backend: AzureServiceBusBackend,
    service_bus: ServiceBusStandIn,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    needles = [service_bus.key, service_bus.connection_string]
    _assert_no_leak(
        lambda: backend.publish("no-such-queue", [OutgoingMessage(b"x")]),
        QueueNotFound,
        needles,
        caplog,
    )
    _assert_no_leak(
        lambda: backend.publish_to_topic("no-such-topic", [OutgoingMessage(b"x")]),
        TopicNotFound,
        needles,
        caplog,
    )
    _assert_no_leak(
        lambda: backend.receive("no-such-queue", wait_seconds=0.5), QueueNotFound, needles, caplog
    )
    _assert_no_leak(lambda: backend.delete_queue("no-such-queue"), QueueNotFound, needles, caplog)
    _assert_no_leak(lambda: backend.delete_topic("no-such-topic"), TopicNotFound, needles, caplog)
    assert service_bus.key not in repr(backend)


@pytest.fixture(scope="module")
def amqp_only_checks_the_key() -> Iterator[ServiceBusStandIn]:
    """Stand-ins whose administration API checks only the shape of tokens.

    A wrong key then gets past the administration calls (queue lookups) and is
    refused by the AMQP broker's CBS, so the data-plane error path is exercised.
    """
    with ServiceBusStandIn() as stand_in:
        stand_in.management.key = None
        yield stand_in


def test_a_wrong_key_on_the_data_plane_fails_without_leaking(
    amqp_only_checks_the_key: ServiceBusStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    stand_in = amqp_only_checks_the_key
    good = AzureServiceBusBackend(
        connection_string=stand_in.connection_string, management_url=stand_in.management_url
    )
    good.declare_queue(QueueSpec("orders"))
    good.declare_topic(TopicSpec("events"))
    good.close()
    key = secrets.token_urlsafe(32)
    connection = stand_in.connection_string.replace(stand_in.key, key)
    backend = AzureServiceBusBackend(
        connection_string=connection, management_url=stand_in.management_url, retry_total=0
    )
    try:
        needles = [key, connection, stand_in.key, stand_in.connection_string]
        for operation in (
            lambda: backend.publish("orders", [OutgoingMessage(b"x")]),
            lambda: backend.publish_to_topic("events", [OutgoingMessage(b"x")]),
            lambda: backend.receive("orders", wait_seconds=0.5),
        ):
            error = _assert_no_leak(operation, BackendUnavailable, needles, caplog)
            assert error.broker_code, error
        assert key not in repr(backend)
    finally:
        backend.close()


def test_no_azure_exception_is_attached_to_a_melange_error(
    wrong_key: tuple[AzureServiceBusBackend, str, str],
) -> None:
    """``raise ... from None`` hides the context from tracebacks, yet keeps it on the error.

    Before: the SDK's exception (whose text or own chain may hold the token that
    was sent) stayed attached as ``__context__``.
    """
    backend, _, _ = wrong_key
    for operation in (
        lambda: backend.get_queue("orders"),
        lambda: backend.publish("orders", [OutgoingMessage(b"x")]),
    ):
        with pytest.raises(BackendUnavailable) as caught:
            operation()
        assert _chain(caught.value) == [caught.value], _chain(caught.value)


def test_credentials_in_the_management_url_never_show(
    service_bus: ServiceBusStandIn, black_hole: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A user name and password in management_url (a proxy in front of the API, say).

    Before: ``repr(backend)`` and the ConfigurationError of a malformed URL showed them.
    """
    caplog.set_level(logging.DEBUG)
    password = secrets.token_urlsafe(16)
    with pytest.raises(ConfigurationError) as caught:
        AzureServiceBusBackend(
            connection_string=service_bus.connection_string,
            management_url=f"ftp://admin:{password}@127.0.0.1:{black_hole}",
        )
    assert password not in "".join(_texts(caught.value))
    backend = AzureServiceBusBackend(
        connection_string=service_bus.connection_string,
        management_url=f"http://admin:{password}@127.0.0.1:{black_hole}",
        management_timeout=0.5,
        retry_total=0,
    )
    try:
        needles = [password, service_bus.key, service_bus.connection_string]
        for operation in (
            lambda: backend.get_queue("orders"),
            lambda: backend.declare_queue(QueueSpec("orders")),
        ):
            _assert_no_leak(operation, BackendUnavailable, needles, caplog)
        assert password not in repr(backend) and password not in repr(backend.settings)
        assert "127.0.0.1" in repr(backend)
    finally:
        backend.close()


def test_silent_endpoints_and_unknown_outcomes_do_not_leak(
    service_bus: ServiceBusStandIn,
    backend: AzureServiceBusBackend,
    black_hole: int,
    amqp_proxy: FaultProxy,
    proxied: Callable[..., AzureServiceBusBackend],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    needles = [service_bus.key, service_bus.connection_string]
    backend.declare_queue(QueueSpec("leak-check"))
    silent = AzureServiceBusBackend(
        connection_string=service_bus.connection_string_at(f"127.0.0.1:{black_hole}"),
        management_url=service_bus.management_url,
        publish_timeout=1.0,
        receive_margin=1.0,
    )
    try:
        _assert_no_leak(
            lambda: silent.publish("leak-check", [OutgoingMessage(b"x")]),
            BackendUnavailable,
            needles,
            caplog,
        )
        _assert_no_leak(
            lambda: silent.receive("leak-check", wait_seconds=0.5),
            BackendUnavailable,
            needles,
            caplog,
        )
    finally:
        silent.close()
    faulty = proxied()
    assert faulty.publish("leak-check", [OutgoingMessage(b"warm")])[0].ok
    amqp_proxy.cut(after_bytes=0)
    (result,) = faulty.publish("leak-check", [OutgoingMessage(b"cut")])
    assert isinstance(result.error, OutcomeUnknown)
    for text in [*_texts(result.error), caplog.text]:
        for needle in needles:
            assert needle not in text
    amqp_proxy.heal()
    backend.delete_queue("leak-check")


def test_broker_texts_are_summarised_to_one_line_and_logged_whole_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="melange.azure")
    page = (
        "Operation returned an invalid status 'Bad Request'\n"
        "Content: <Error><Code>400</Code><Detail>SubCode=40000. The value for the "
        "requires session property of an existing Queue cannot be changed. To know more "
        "visit https://aka.ms/sbResourceMgrExceptions. " + "TrackingId:0f1e, " * 40 + "key s3cr3t"
        "</Detail></Error>"
    )
    translated = translate(HttpResponseError(message=page), _context())
    text = str(translated)
    assert "\n" not in text and "<" not in text and "s3cr3t" not in text
    assert "Bad Request" in text and "requires session property" in text
    assert len(text) < len("Service Bus refused to do something: ") + SUMMARY_LENGTH + 1
    assert "TrackingId:0f1e, " * 40 in caplog.text and "s3cr3t" not in caplog.text
