"""Options of the azure backend: connection strings, namespaces, credentials, management URL."""

from __future__ import annotations

import builtins
import sys
from typing import Any

import pytest
from melange_azure import AzureServiceBusBackend
from melange_azure.clients import (
    EMULATOR_MANAGEMENT_PORT,
    ClientSettings,
    RedirectingTransport,
    parse_connection_string,
)
from standin import ServiceBusStandIn

from melange.backends import load_backend
from melange.exceptions import ConfigurationError

KEY = "c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0wMTIzNDU2Nzg5"
CONNECTION = (
    f"Endpoint=sb://example.servicebus.windows.net/;SharedAccessKeyName=Root;SharedAccessKey={KEY}"
)


class FakeCredential:
    """A TokenCredential that is never asked for a token in these tests."""

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        raise AssertionError("no token should be needed")


def test_the_registry_finds_the_backend() -> None:
    from melange.backends import AzureServiceBusBackend as resolved

    assert resolved is AzureServiceBusBackend


def test_load_backend_by_name(service_bus: ServiceBusStandIn) -> None:
    backend = load_backend(
        "azure",
        connection_string=service_bus.connection_string,
        management_url=service_bus.management_url,
    )
    try:
        assert isinstance(backend, AzureServiceBusBackend)
        assert backend.get_queue("nothing-here") is None
    finally:
        backend.close()


def test_no_options_says_what_to_pass() -> None:
    with pytest.raises(ConfigurationError) as caught:
        AzureServiceBusBackend()
    message = str(caught.value)
    assert "connection_string" in message and "MELANGE_OPTION_CONNECTION_STRING" in message


def test_both_auth_options_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="not both"):
        AzureServiceBusBackend(
            connection_string=CONNECTION, fully_qualified_namespace="x.servicebus.windows.net"
        )


def test_a_credential_with_a_connection_string_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="credential"):
        AzureServiceBusBackend(connection_string=CONNECTION, credential=FakeCredential())


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("just some text", "malformed"),
        ("SharedAccessKeyName=Root;SharedAccessKey=abc", "Endpoint"),
        ("Endpoint=sb://ns.servicebus.windows.net/", "credentials"),
        ("Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=Root", "credentials"),
        (CONNECTION + ";EntityPath=orders", "EntityPath"),
        ("Endpoint=sb:///;SharedAccessKeyName=Root;SharedAccessKey=abc", "no host"),
    ],
)
def test_malformed_connection_strings(value: str, expected: str) -> None:
    with pytest.raises(ConfigurationError, match=expected) as caught:
        AzureServiceBusBackend(connection_string=value)
    assert "abc" not in str(caught.value) or "abc" not in value


def test_a_bad_connection_string_error_never_echoes_the_key() -> None:
    value = f"Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKey={KEY};Garbage"
    with pytest.raises(ConfigurationError) as caught:
        AzureServiceBusBackend(connection_string=value)
    assert KEY not in str(caught.value) and KEY not in repr(caught.value)


def test_emulator_connection_strings_default_to_the_emulators_management_port() -> None:
    emulator = (
        "Endpoint=sb://localhost;SharedAccessKeyName=RootManageSharedAccessKey;"
        "SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true;"
    )
    settings = ClientSettings.make(emulator, None, None, None)
    assert settings.management_url == f"http://localhost:{EMULATOR_MANAGEMENT_PORT}"
    assert parse_connection_string(emulator).emulator


@pytest.mark.parametrize("value", [-1, 1.5, True, "3"])
def test_retry_total_must_be_a_count(value: object) -> None:
    with pytest.raises(ConfigurationError, match="retry_total"):
        AzureServiceBusBackend(connection_string=CONNECTION, retry_total=value)  # type: ignore[arg-type]


def test_management_url_must_be_http() -> None:
    with pytest.raises(ConfigurationError, match="management_url"):
        AzureServiceBusBackend(connection_string=CONNECTION, management_url="ftp://x")


def test_fully_qualified_namespace_with_a_credential() -> None:
    backend = AzureServiceBusBackend(
        fully_qualified_namespace="https://example.servicebus.windows.net/",
        credential=FakeCredential(),
    )
    try:
        assert backend.namespace == "example.servicebus.windows.net"
        assert "example.servicebus.windows.net" in repr(backend)
    finally:
        backend.close()


@pytest.mark.parametrize("value", ["a/b/c", "ns;x", "   "])
def test_bad_fully_qualified_namespaces(value: str) -> None:
    with pytest.raises(ConfigurationError):
        AzureServiceBusBackend(fully_qualified_namespace=value, credential=FakeCredential())


def test_default_credential_needs_azure_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_identity(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "azure.identity" or name.startswith("azure.identity."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "azure.identity", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_identity)
    with pytest.raises(ConfigurationError) as caught:
        AzureServiceBusBackend(fully_qualified_namespace="example.servicebus.windows.net")
    assert 'pip install "melange-azure[identity]"' in str(caught.value)


def test_default_credential_is_used_when_azure_identity_is_installed() -> None:
    pytest.importorskip("azure.identity", reason="azure-identity is an optional extra")
    settings = ClientSettings.make(None, "example.servicebus.windows.net", None, None)
    assert type(settings.credential).__name__ == "DefaultAzureCredential"


def test_repr_shows_the_namespace_and_never_the_key() -> None:
    backend = AzureServiceBusBackend(connection_string=CONNECTION)
    try:
        text = repr(backend)
        assert "example.servicebus.windows.net" in text
        assert KEY not in text and "SharedAccessKey" not in text
        assert KEY not in repr(backend._settings)
    finally:
        backend.close()
    assert "closed" in repr(backend)


def test_the_management_transport_rewrites_scheme_and_host(service_bus: ServiceBusStandIn) -> None:
    transport = RedirectingTransport(service_bus.management_url)
    from azure.core.pipeline.transport import HttpRequest

    request = HttpRequest("GET", "https://example.servicebus.windows.net/$Resources/queues?x=1")
    response = transport.send(request)
    assert request.url == f"{service_bus.management_url}/$Resources/queues?x=1"
    assert response.status_code == 401  # the stand-in wants a SAS token: it was reached


def test_the_sdk_floor_is_the_release_the_tests_run() -> None:
    """Settlement and try_timeout differ before 7.15: the plugin must not admit what is untested.

    Reproduced before: pyproject.toml admitted azure-servicebus 7.14 while the tests ran 7.15.
    """
    import importlib.metadata

    from packaging.requirements import Requirement
    from packaging.version import Version

    (requirement,) = [
        Requirement(text)
        for text in importlib.metadata.requires("melange-azure") or []
        if Requirement(text).name == "azure-servicebus"
    ]
    floors = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
    tested = Version(importlib.metadata.version("azure-servicebus"))
    assert floors, f"no floor for azure-servicebus in {requirement}"
    assert (floors[0].major, floors[0].minor) == (tested.major, tested.minor), (
        f"melange-azure admits azure-servicebus {requirement.specifier} but the tests run "
        f"{tested}: raise the floor to what is tested"
    )
