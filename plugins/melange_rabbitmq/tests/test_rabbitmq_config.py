"""Options, the default URL (the RabbitMQ service on 5672), secrets kept out of errors."""

from __future__ import annotations

import re

import pytest
from melange_rabbitmq import DEFAULT_URL, RabbitMQBackend
from melange_rabbitmq.testing import RabbitMQNode

from melange import MessagingBackendFactory
from melange.backends.base import OutgoingMessage
from melange.config import load_backend_from_config
from melange.exceptions import BackendUnavailable, ConfigurationError
from melange.testing.conformance import drain_bodies

SECRET = "s3cr3t-Pa55"


def test_the_default_url_reaches_the_local_service(
    monkeypatch: pytest.MonkeyPatch, unique: str
) -> None:
    monkeypatch.delenv("MELANGE_OPTION_URL", raising=False)
    backend = RabbitMQBackend()
    try:
        assert backend.where == "amqp://localhost:5672/%2F"
        MessagingBackendFactory(backend).init_queue(unique)
        backend.publish(unique, [OutgoingMessage(b"via 5672")])
        assert drain_bodies(backend, unique, 1) == [b"via 5672"]
        backend.delete_queue(unique)
    finally:
        backend.close()
    assert DEFAULT_URL.startswith("amqp://guest:guest@localhost:5672/")


def test_melange_option_url_is_the_default(
    monkeypatch: pytest.MonkeyPatch, rabbitmq_node: RabbitMQNode
) -> None:
    monkeypatch.setenv("MELANGE_OPTION_URL", rabbitmq_node.url)
    backend = RabbitMQBackend()
    try:
        assert backend.where == f"amqp://127.0.0.1:{rabbitmq_node.port}/%2F"
    finally:
        backend.close()


@pytest.mark.parametrize(
    ("options", "wrong"),
    [
        ({"url": f"http://guest:{SECRET}@localhost"}, "amqp://"),
        ({"prefetch": -1}, "prefetch"),
        ({"call_timeout": 0}, "call_timeout"),
        ({"management_url": f"ftp://guest:{SECRET}@localhost"}, "management_url"),
    ],
)
def test_bad_options_are_refused_without_echoing_secrets(
    options: dict[str, object], wrong: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        RabbitMQBackend(**options)  # type: ignore[arg-type]
    assert wrong in str(caught.value)
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    ("options", "allowed"),
    [
        ({"prefetch": 0}, "prefetch must be a whole number from 1 to 65535"),
        ({"prefetch": 65536}, "prefetch must be a whole number from 1 to 65535"),
        ({"prefetch": True}, "prefetch must be a whole number from 1 to 65535"),
        ({"heartbeat": 0}, "heartbeat must be a whole number of seconds from 1 to 65535"),
        ({"heartbeat": -1}, "heartbeat must be a whole number of seconds from 1 to 65535"),
        ({"policy_priority": -3}, "policy_priority must be a whole number >= 0"),
        ({"policy_priority": "high"}, "policy_priority must be a whole number >= 0"),
        ({"policy_priority": 1.5}, "policy_priority must be a whole number >= 0"),
        ({"call_timeout": float("nan")}, "call_timeout must be a finite number of seconds > 0"),
        ({"call_timeout": float("inf")}, "call_timeout must be a finite number of seconds > 0"),
        ({"connect_timeout": float("inf")}, "connect_timeout must be a finite"),
        ({"default_visibility_timeout": float("nan")}, "default_visibility_timeout must be"),
        ({"default_visibility_timeout": 1501.0}, "at most 1500"),
        ({"default_visibility_timeout": 10**9}, "at most 1500"),
    ],
)
def test_out_of_range_options_are_refused_saying_what_is_allowed(
    options: dict[str, object], allowed: str
) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(allowed)):
        RabbitMQBackend(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("variable", "value", "allowed"),
    [
        ("MELANGE_OPTION_PREFETCH", "0", "prefetch"),
        ("MELANGE_OPTION_HEARTBEAT", "0", "heartbeat"),
        ("MELANGE_OPTION_POLICY_PRIORITY", "-3", "policy_priority"),
        ("MELANGE_OPTION_CALL_TIMEOUT", "nan", "call_timeout"),
        ("MELANGE_OPTION_CALL_TIMEOUT", "inf", "call_timeout"),
        ("MELANGE_OPTION_DEFAULT_VISIBILITY_TIMEOUT", "1501", "default_visibility_timeout"),
    ],
)
def test_out_of_range_options_from_the_environment_are_refused(
    variable: str, value: str, allowed: str
) -> None:
    environ = {"MELANGE_BACKEND": "rabbitmq", variable: value}
    with pytest.raises(ConfigurationError, match=allowed):
        load_backend_from_config(environ=environ)


def test_the_edges_of_the_options_are_accepted() -> None:
    backend = RabbitMQBackend(
        prefetch=1, heartbeat=1, policy_priority=0, default_visibility_timeout=1500.0
    )
    backend.close()


def test_the_url_s_query_options_win_over_melange_s_defaults() -> None:
    url = (
        "amqp://guest:guest@127.0.0.1:5672/%2F?heartbeat=7&socket_timeout=3&stack_timeout=4"
        "&blocked_connection_timeout=9&connection_attempts=2&retry_delay=0.5"
    )
    backend = RabbitMQBackend(url)
    try:
        parameters = backend.link.parameters
        assert parameters.heartbeat == 7
        assert parameters.socket_timeout == 3
        assert parameters.stack_timeout == 4
        assert parameters.blocked_connection_timeout == 9
        assert (parameters.connection_attempts, parameters.retry_delay) == (2, 0.5)
        assert parameters.client_properties == {"connection_name": "melange"}
    finally:
        backend.close()
    # Options passed explicitly win over the URL's; without either, melange's defaults apply.
    backend = RabbitMQBackend(url, heartbeat=11, connect_timeout=5.0)
    try:
        assert (backend.link.parameters.heartbeat, backend.link.parameters.socket_timeout) == (
            11,
            5.0,
        )
    finally:
        backend.close()
    backend = RabbitMQBackend("amqp://guest:guest@127.0.0.1:5672/%2F", call_timeout=12.0)
    try:
        parameters = backend.link.parameters
        assert (parameters.heartbeat, parameters.socket_timeout, parameters.stack_timeout) == (
            30,
            10.0,
            15.0,
        )
        assert (parameters.blocked_connection_timeout, parameters.connection_attempts) == (12.0, 1)
    finally:
        backend.close()


def test_an_unreachable_broker_is_backend_unavailable_without_the_password() -> None:
    backend = RabbitMQBackend(
        f"amqp://guest:{SECRET}@127.0.0.1:1/%2F", connect_timeout=0.5, call_timeout=2.0
    )
    try:
        assert SECRET not in repr(backend)
        with pytest.raises(BackendUnavailable) as caught:
            backend.receive("anything", 1)
        assert SECRET not in str(caught.value)
        assert "127.0.0.1:1" in str(caught.value)
    finally:
        backend.close()


def test_a_wrong_password_is_a_configuration_error_without_the_password(
    rabbitmq_node: RabbitMQNode,
) -> None:
    url = f"amqp://guest:{SECRET}@127.0.0.1:{rabbitmq_node.port}/%2F"
    backend = RabbitMQBackend(url, call_timeout=5.0)
    try:
        with pytest.raises(ConfigurationError) as caught:
            backend.get_topic("anything")
        assert "refused" in str(caught.value) and SECRET not in str(caught.value)
    finally:
        backend.close()
