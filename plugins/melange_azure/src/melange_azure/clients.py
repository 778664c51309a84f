"""The backend's options and the two Azure clients made from them.

Authentication is either a namespace connection string (``Endpoint=sb://...;
SharedAccessKeyName=...;SharedAccessKey=...``, the emulator's
``UseDevelopmentEmulator=true`` included) or a fully qualified namespace plus a
``TokenCredential`` (``DefaultAzureCredential`` from ``azure-identity`` when
none is given). The administration API is reached at the namespace over HTTPS,
or at ``management_url`` when it lives elsewhere (the emulator's is on port
5300): a transport rewrites each request's scheme and host.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from azure.core.pipeline.transport import RequestsTransport
from azure.servicebus import ServiceBusClient
from azure.servicebus.management import ServiceBusAdministrationClient

from melange.exceptions import ConfigurationError

EMULATOR_MANAGEMENT_PORT = 5300
"""Where Microsoft's Service Bus emulator serves the administration API."""

IDENTITY_HINT = 'pip install "melange-azure[identity]"'


class RedirectingTransport(RequestsTransport):  # type: ignore[misc]
    """An HTTP transport that sends every request to another scheme and host.

    The administration client builds ``https://<namespace>/<entity>`` URLs; with
    an emulator or a local stand-in the API is at e.g. ``http://localhost:5300``.
    Only the scheme and the network location change; path and query stay.
    """

    def __init__(self, base_url: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        parts = urlsplit(base_url)
        self._scheme = parts.scheme
        self._netloc = parts.netloc

    def send(self, request: Any, **kwargs: Any) -> Any:  # noqa: D102 - see RequestsTransport
        parts = urlsplit(request.url)
        request.url = urlunsplit((self._scheme, self._netloc, parts.path, parts.query, ""))
        return super().send(request, **kwargs)


@dataclass(frozen=True)
class ConnectionString:
    """The parts of a namespace connection string the backend looks at.

    Attributes:
        host: The namespace host, with a port if one was given.
        key_name: The SharedAccessKeyName, if any.
        key: The SharedAccessKey, if any (never shown).
        signature: A SharedAccessSignature, if any (never shown).
        emulator: Whether ``UseDevelopmentEmulator=true`` is set.
    """

    host: str
    key_name: str | None = None
    key: str | None = field(default=None, repr=False)
    signature: str | None = field(default=None, repr=False)
    emulator: bool = False


def parse_connection_string(value: str) -> ConnectionString:
    """Check a namespace connection string; never echo it in the error.

    Raises:
        ConfigurationError: It is not ``key=value`` pairs, has no ``Endpoint``,
            no credentials, or names one entity (``EntityPath``).
    """
    pairs: dict[str, str] = {}
    for part in value.strip().strip(";").split(";"):
        name, sep, item = part.partition("=")
        if not sep or not name.strip():
            raise ConfigurationError(
                "connection_string is malformed: it must be 'Key=value' pairs separated by ';' "
                "(copy it from the namespace's 'Shared access policies' in the Azure portal)"
            )
        pairs[name.strip().lower()] = item.strip()
    endpoint = pairs.get("endpoint") or ""
    if not endpoint:
        raise ConfigurationError(
            "connection_string has no Endpoint=sb://<namespace>.servicebus.windows.net/; "
            "use the namespace's connection string"
        )
    host = urlsplit(endpoint if "://" in endpoint else f"sb://{endpoint}").netloc
    if not host:
        raise ConfigurationError(
            "connection_string's Endpoint names no host; expected "
            "Endpoint=sb://<namespace>.servicebus.windows.net/"
        )
    if pairs.get("entitypath"):
        raise ConfigurationError(
            "connection_string is scoped to one entity (EntityPath=...); melange manages "
            "queues and topics, so use a namespace-level connection string"
        )
    key_name, key = pairs.get("sharedaccesskeyname"), pairs.get("sharedaccesskey")
    signature = pairs.get("sharedaccesssignature")
    if not signature and not (key_name and key):
        raise ConfigurationError(
            "connection_string has no credentials: it needs SharedAccessKeyName and "
            "SharedAccessKey (or SharedAccessSignature)"
        )
    emulator = pairs.get("usedevelopmentemulator", "").lower() == "true"
    return ConnectionString(host, key_name, key, signature, emulator)


@dataclass(frozen=True)
class ClientSettings:
    """Validated options of :class:`~melange_azure.AzureServiceBusBackend`.

    Attributes:
        connection_string: The namespace connection string, if that is the auth (never shown).
        fully_qualified_namespace: ``<namespace>.servicebus.windows.net`` otherwise.
        credential: The TokenCredential for ``fully_qualified_namespace``.
        management_url: Where the administration API is, if not at the namespace.
        retry_total: Retries of a failed call by the SDKs, or ``None`` for their default (3).
    """

    connection_string: str | None = field(default=None, repr=False)
    fully_qualified_namespace: str | None = None
    credential: Any = field(default=None, repr=False)
    management_url: str | None = None
    retry_total: int | None = None

    @classmethod
    def make(
        cls,
        connection_string: str | None,
        fully_qualified_namespace: str | None,
        credential: Any,
        management_url: str | None,
        retry_total: int | None = None,
    ) -> ClientSettings:
        """Check the options and fill in defaults.

        Raises:
            ConfigurationError: The options are missing, contradict each other or
                are malformed, or azure-identity is needed and not installed.
        """
        for label, value in (
            ("connection_string", connection_string),
            ("fully_qualified_namespace", fully_qualified_namespace),
            ("management_url", management_url),
        ):
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ConfigurationError(f"{label} must be a non-empty string or None")
        if connection_string and fully_qualified_namespace:
            raise ConfigurationError(
                "pass either connection_string or fully_qualified_namespace (with a credential), "
                "not both"
            )
        if connection_string and credential is not None:
            raise ConfigurationError(
                "a credential goes with fully_qualified_namespace; a connection string carries "
                "its own key"
            )
        if retry_total is not None and (
            isinstance(retry_total, bool) or not isinstance(retry_total, int) or retry_total < 0
        ):
            raise ConfigurationError(
                f"retry_total must be a whole number of retries, 0 or more, got {retry_total!r}"
            )
        if management_url is not None:
            parts = urlsplit(management_url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigurationError(
                    f"management_url must be an http(s) URL such as http://localhost:"
                    f"{EMULATOR_MANAGEMENT_PORT}, got {management_url!r}"
                )
        if connection_string:
            parsed = parse_connection_string(connection_string)
            if parsed.emulator and management_url is None:
                host = urlsplit(f"sb://{parsed.host}").hostname or "localhost"
                management_url = f"http://{host}:{EMULATOR_MANAGEMENT_PORT}"
            return cls(connection_string.strip(), None, None, management_url, retry_total)
        if not fully_qualified_namespace:
            raise ConfigurationError(
                "backend 'azure' needs a namespace: pass connection_string (or set "
                "MELANGE_OPTION_CONNECTION_STRING) or fully_qualified_namespace "
                "('<namespace>.servicebus.windows.net') with a credential"
            )
        namespace = fully_qualified_namespace.strip()
        if "://" in namespace:
            namespace = urlsplit(namespace).netloc
        namespace = namespace.strip("/")
        if not namespace or "/" in namespace or ";" in namespace:
            raise ConfigurationError(
                "fully_qualified_namespace must be a host name such as "
                "'<namespace>.servicebus.windows.net'"
            )
        if credential is None:
            credential = default_credential()
        return cls(None, namespace, credential, management_url, retry_total)

    def secrets(self) -> tuple[str, ...]:
        """The strings to keep out of every message and log line."""
        if not self.connection_string:
            return ()
        parsed = parse_connection_string(self.connection_string)
        return tuple(s for s in (self.connection_string, parsed.key, parsed.signature) if s)

    @property
    def namespace(self) -> str:
        """The namespace host (and port), for messages and ``repr``."""
        if self.connection_string:
            return parse_connection_string(self.connection_string).host
        return str(self.fully_qualified_namespace)

    def _retry_kwargs(self) -> dict[str, Any]:
        return {} if self.retry_total is None else {"retry_total": self.retry_total}

    def _management_kwargs(self) -> dict[str, Any]:
        kwargs = self._retry_kwargs()
        if self.management_url is not None:
            kwargs["transport"] = RedirectingTransport(self.management_url)
        return kwargs

    def data_client(self) -> ServiceBusClient:
        """A new data-plane client (AMQP)."""
        kwargs = self._retry_kwargs()
        if self.connection_string:
            return ServiceBusClient.from_connection_string(self.connection_string, **kwargs)
        return ServiceBusClient(str(self.fully_qualified_namespace), self.credential, **kwargs)

    def admin_client(self) -> ServiceBusAdministrationClient:
        """A new administration client (ATOM over HTTP)."""
        kwargs = self._management_kwargs()
        if self.connection_string:
            return ServiceBusAdministrationClient.from_connection_string(
                self.connection_string, **kwargs
            )
        return ServiceBusAdministrationClient(
            str(self.fully_qualified_namespace), self.credential, **kwargs
        )


def default_credential() -> Any:
    """Return ``azure.identity.DefaultAzureCredential()``.

    Raises:
        ConfigurationError: azure-identity is not installed.
    """
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError:
        raise ConfigurationError(
            "fully_qualified_namespace without a credential uses DefaultAzureCredential from "
            f"azure-identity, which is not installed: {IDENTITY_HINT} (or pass credential=..., "
            "or use connection_string)"
        ) from None
    return DefaultAzureCredential()
