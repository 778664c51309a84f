"""The backend's options and the two Azure clients made from them.

Authentication is either a namespace connection string (``Endpoint=sb://...;
SharedAccessKeyName=...;SharedAccessKey=...``, the emulator's
``UseDevelopmentEmulator=true`` included) or a fully qualified namespace plus a
``TokenCredential`` (``DefaultAzureCredential`` from ``azure-identity`` when
none is given). The administration API is reached at the namespace over HTTPS,
or at ``management_url`` when it lives elsewhere (the emulator's is on port
5300): a transport rewrites each request's scheme and host.

Timeouts are sized to each kind of call (:class:`Timeouts`) and handed to the
SDKs' own settings: the AMQP client's ``try_timeout`` (one attempt at opening a
link, sending, or a management request), retry settings and socket timeout;
per-call ``timeout=`` where a call takes one (send, lock renewal, peek); the
receivers' settlement wait; azure-core's connection and read timeouts for the
administration client. What the synchronous SDK cannot bound (it blocks without
a timeout while it opens a connection) is bounded by :mod:`~melange_azure.deadlines`.
"""

from __future__ import annotations

import math
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

MANAGEMENT_ATTEMPTS = 2
"""An administration call gives up after this many times ``management_timeout``."""

RETRY_MODES = ("exponential", "fixed")
"""The SDKs' ``retry_mode`` values."""


@dataclass(frozen=True)
class Timeouts:
    """How long each kind of call may take, in seconds.

    Attributes:
        connect: One attempt to open an AMQP link (connect, authenticate, attach)
            or to run one AMQP management request (the SDK's ``try_timeout``),
            and to open an HTTP connection to the administration API.
        publish: One native send (a ``ServiceBusMessageBatch``), opening the
            link and the SDK's retries included. After that the messages are
            reported unknown (sent, not confirmed) or refused (never sent).
        receive_margin: What a receive may take beyond its wait: a receive
            returns (or raises) within ``wait_seconds + receive_margin``.
        settle: One complete, abandon or lock renewal, confirmation included.
        management: One administration request's wait for the answer
            (azure-core's read timeout); a call, its retries included, gives up
            after :data:`MANAGEMENT_ATTEMPTS` times this.
    """

    connect: float = 5.0
    publish: float = 10.0
    receive_margin: float = 5.0
    settle: float = 5.0
    management: float = 10.0

    @classmethod
    def make(cls, **values: float | None) -> Timeouts:
        """Check ``<name>_timeout`` style values (``None`` keeps the default).

        Raises:
            ConfigurationError: A value is not a positive, finite number of seconds.
        """
        options = {
            "connect": "connect_timeout",
            "publish": "publish_timeout",
            "receive_margin": "receive_margin",
            "settle": "settle_timeout",
            "management": "management_timeout",
        }
        checked: dict[str, float] = {}
        for name, option in options.items():
            value = values.get(name)
            if value is None:
                continue
            checked[name] = positive_seconds(option, value)
        return cls(**checked)


def positive_seconds(option: str, value: object) -> float:
    """Return ``value`` as seconds, or raise ConfigurationError naming ``option``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(
            f"{option} must be a positive number of seconds, e.g. {option}=5, got {value!r}"
        )
    return float(value)


DEFAULT_BACKOFF_FACTOR = 0.5
"""melange's default ``retry_backoff_factor`` (the SDKs': 0.8): backoffs of 1, 2 and 4 s
between the AMQP SDK's attempts (it doubles the factor from the first retry on)."""

DEFAULT_BACKOFF_MAX = 4.0
"""melange's default ``retry_backoff_max`` (the SDKs': 120 s): a call that was given a
few seconds must not sleep for minutes between attempts."""


@dataclass(frozen=True)
class Retries:
    """The SDKs' retry settings.

    Attributes:
        total: Retries of a failed call, ``None`` for the SDKs' default (3).
        backoff_factor: Seconds of the first backoff (doubled per retry when
            exponential).
        backoff_max: Longest backoff in seconds.
        mode: ``"exponential"`` or ``"fixed"``; ``None`` for the SDKs' default
            (exponential).
    """

    total: int | None = None
    backoff_factor: float = DEFAULT_BACKOFF_FACTOR
    backoff_max: float = DEFAULT_BACKOFF_MAX
    mode: str | None = None

    @classmethod
    def make(
        cls,
        total: int | None,
        backoff_factor: float | None,
        backoff_max: float | None,
        mode: str | None,
    ) -> Retries:
        """Check the options.

        Raises:
            ConfigurationError: A value is of the wrong type or out of range.
        """
        if total is not None and (
            isinstance(total, bool) or not isinstance(total, int) or total < 0
        ):
            raise ConfigurationError(
                f"retry_total must be a whole number of retries, 0 or more, got {total!r}"
            )
        for option, value in (
            ("retry_backoff_factor", backoff_factor),
            ("retry_backoff_max", backoff_max),
        ):
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
            ):
                raise ConfigurationError(
                    f"{option} must be a number of seconds, 0 or more, got {value!r}"
                )
        if mode is not None:
            if not isinstance(mode, str) or mode.strip().lower() not in RETRY_MODES:
                raise ConfigurationError(
                    f"retry_mode must be one of {', '.join(RETRY_MODES)}, got {mode!r}"
                )
            mode = mode.strip().lower()
        return cls(
            total,
            DEFAULT_BACKOFF_FACTOR if backoff_factor is None else float(backoff_factor),
            DEFAULT_BACKOFF_MAX if backoff_max is None else float(backoff_max),
            mode,
        )

    def kwargs(self) -> dict[str, Any]:
        """The settings given, as the SDKs' keyword arguments."""
        given = {
            "retry_total": self.total,
            "retry_backoff_factor": self.backoff_factor,
            "retry_backoff_max": self.backoff_max,
            "retry_mode": self.mode,
        }
        return {key: value for key, value in given.items() if value is not None}


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
        retries: The SDKs' retry settings.
        timeouts: How long each kind of call may take.
        socket_timeout: The AMQP transport's socket timeout (``None``: the SDK's, 0.2 s).
    """

    connection_string: str | None = field(default=None, repr=False)
    fully_qualified_namespace: str | None = None
    credential: Any = field(default=None, repr=False)
    management_url: str | None = field(default=None, repr=False)  # may hold credentials
    retries: Retries = field(default_factory=Retries)
    timeouts: Timeouts = field(default_factory=Timeouts)
    socket_timeout: float | None = None

    @property
    def retry_total(self) -> int | None:
        """Retries of a failed call by the SDKs, or ``None`` for their default (3)."""
        return self.retries.total

    @classmethod
    def make(
        cls,
        connection_string: str | None,
        fully_qualified_namespace: str | None,
        credential: Any,
        management_url: str | None,
        retry_total: int | None = None,
        *,
        retries: Retries | None = None,
        timeouts: Timeouts | None = None,
        socket_timeout: float | None = None,
    ) -> ClientSettings:
        """Check the options and fill in defaults.

        Raises:
            ConfigurationError: The options are missing, contradict each other or
                are malformed, or azure-identity is needed and not installed.
        """
        if retries is None:
            retries = Retries.make(retry_total, None, None, None)
        timeouts = timeouts or Timeouts()
        if socket_timeout is not None:
            socket_timeout = positive_seconds("socket_timeout", socket_timeout)
        tuning: dict[str, Any] = {
            "retries": retries,
            "timeouts": timeouts,
            "socket_timeout": socket_timeout,
        }
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
        if management_url is not None:
            parts = urlsplit(management_url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigurationError(
                    f"management_url must be an http(s) URL such as http://localhost:"
                    f"{EMULATOR_MANAGEMENT_PORT}, got {safe_url(management_url)!r}"
                )
        if connection_string:
            parsed = parse_connection_string(connection_string)
            if parsed.emulator and management_url is None:
                host = urlsplit(f"sb://{parsed.host}").hostname or "localhost"
                management_url = f"http://{host}:{EMULATOR_MANAGEMENT_PORT}"
            return cls(connection_string.strip(), None, None, management_url, **tuning)
        if not fully_qualified_namespace:
            raise ConfigurationError(
                "backend 'azure' needs a namespace: pass connection_string (or set "
                "MELANGE_OPTION_CONNECTION_STRING) or fully_qualified_namespace "
                "('<namespace>.servicebus.windows.net') with a credential"
            )
        namespace = fully_qualified_namespace.strip()
        if "://" in namespace:
            namespace = urlsplit(namespace).netloc
        namespace = namespace.strip("/").rpartition("@")[2]  # never keep credentials in a URL
        if not namespace or "/" in namespace or ";" in namespace:
            raise ConfigurationError(
                "fully_qualified_namespace must be a host name such as "
                "'<namespace>.servicebus.windows.net'"
            )
        if credential is None:
            credential = default_credential()
        return cls(None, namespace, credential, management_url, **tuning)

    def secrets(self) -> tuple[str, ...]:
        """The strings to keep out of every message and log line."""
        found: list[str | None] = []
        if self.connection_string:
            parsed = parse_connection_string(self.connection_string)
            found += [self.connection_string, parsed.key, parsed.signature]
        if self.management_url:
            parts = urlsplit(self.management_url)
            found += [parts.password, parts.netloc.rpartition("@")[0] if parts.password else None]
        return tuple(secret for secret in found if secret)

    @property
    def safe_management_url(self) -> str | None:
        """``management_url`` for messages and ``repr``: without credentials."""
        return None if self.management_url is None else safe_url(self.management_url)

    @property
    def namespace(self) -> str:
        """The namespace host (and port), for messages and ``repr``."""
        if self.connection_string:
            return parse_connection_string(self.connection_string).host
        return str(self.fully_qualified_namespace)

    def _data_kwargs(self, try_timeout: float | None) -> dict[str, Any]:
        kwargs = self.retries.kwargs()
        # One attempt at opening a link, sending or a management request (azure-servicebus
        # 7.15; older versions ignore it, and melange's deadlines still bound the call).
        kwargs["try_timeout"] = self.timeouts.connect if try_timeout is None else try_timeout
        return kwargs

    def sender_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``get_queue_sender`` / ``get_topic_sender``."""
        if self.socket_timeout is None:
            return {}
        return {"socket_timeout": self.socket_timeout}

    def _management_kwargs(self) -> dict[str, Any]:
        kwargs = self.retries.kwargs()
        # azure-core's RetryPolicy gives up on a call (its retries included) after this; a
        # silent API is otherwise read (retry_read + 1) times for management_timeout each.
        kwargs["timeout"] = MANAGEMENT_ATTEMPTS * self.timeouts.management
        timeouts = {
            "connection_timeout": self.timeouts.connect,
            "read_timeout": self.timeouts.management,
        }
        if self.management_url is not None:
            kwargs["transport"] = RedirectingTransport(self.management_url, **timeouts)
        else:
            kwargs["transport"] = RequestsTransport(**timeouts)
        return kwargs

    def data_client(self, try_timeout: float | None = None) -> ServiceBusClient:
        """A new data-plane client (AMQP).

        Args:
            try_timeout: One attempt's budget, if not ``connect_timeout``: a session
                receiver's attempt to open includes its wait for a session.
        """
        kwargs = self._data_kwargs(try_timeout)
        if self.connection_string:
            return ServiceBusClient.from_connection_string(self.connection_string, **kwargs)
        return ServiceBusClient(str(self.fully_qualified_namespace), self.credential, **kwargs)

    def receiver_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``get_queue_receiver``: how long a settlement waits.

        The SDK waits this long for Service Bus to confirm a complete or abandon
        on the receiver link, then tries the management link (one attempt of
        ``try_timeout``): half the settle timeout leaves room for that.
        """
        return {"timeout": self.timeouts.settle / 2, **self.sender_kwargs()}

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


def safe_url(url: str) -> str:
    """``url`` without the user name and password it may carry."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"<redacted>@{host}", parts.path, parts.query, ""))


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
