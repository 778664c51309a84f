"""Options, the default URL (the RabbitMQ service on 5672), secrets kept out of errors."""

from __future__ import annotations

import pytest
from melange_rabbitmq import DEFAULT_URL, RabbitMQBackend
from melange_rabbitmq.testing import RabbitMQNode

from melange import MessagingBackendFactory
from melange.backends.base import OutgoingMessage
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
