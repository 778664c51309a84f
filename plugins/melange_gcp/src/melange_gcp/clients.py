"""Project, credentials and the Google clients, resolved the way Google's libraries do.

- Project: the ``project`` option, else ``GOOGLE_CLOUD_PROJECT`` (or the older
  ``GCLOUD_PROJECT``), else the project of Application Default Credentials.
- Endpoint: the ``emulator_host`` option, else ``PUBSUB_EMULATOR_HOST``; an
  emulator is reached over an insecure channel with no credentials, as the
  Google clients do. Otherwise ``api_endpoint`` (a regional endpoint) or the
  global one, with TLS.
- Credentials: ``credentials_file`` (a service-account key file), else
  Application Default Credentials (``GOOGLE_APPLICATION_CREDENTIALS``, gcloud's
  application-default login, or the attached service account).

The publisher and subscriber share one gRPC channel, with keepalive pings so
that a connection that stopped answering is dropped within seconds, and a
short reconnect backoff so that calls resume soon after the network heals.
:class:`Clients` replaces the channel when a call that is answered at once
ran out of time: the next call then opens a new connection instead of
waiting on a dead one until keepalive notices.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc  # type: ignore[import-untyped]
from google.auth import exceptions as auth_exceptions
from google.pubsub_v1 import PublisherClient, SubscriberClient
from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

from melange.exceptions import ConfigurationError
from melange_gcp.errors import CREDENTIALS_HINT
from melange_gcp.timeouts import CallTimeouts

logger = logging.getLogger("melange.gcp.clients")

EMULATOR_ENV = "PUBSUB_EMULATOR_HOST"
PROJECT_ENVS = ("GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT")
DEFAULT_ENDPOINT = "pubsub.googleapis.com:443"
SCOPES = (
    "https://www.googleapis.com/auth/cloud-platform",
    "https://www.googleapis.com/auth/pubsub",
)
"""The scopes Google's own Pub/Sub clients ask for; cloud-platform also lets the backend look
the project's number up in Cloud Resource Manager (:mod:`melange_gcp.project_number`)."""

CHANNEL_OPTIONS = (
    # 10 MB messages in both directions: gRPC's default receive limit is 4 MiB.
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_metadata_size", 4 * 1024 * 1024),
    # Pings only while calls are in flight (Google's front ends refuse idle pings), and not
    # held back when the client has no data to send (a black hole gets none of it anyway).
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    # A connection attempt gives up after 5 s, and attempts are at most 5 s apart (gRPC's
    # defaults, 20 s and 120 s, would keep a healed network unused for up to two minutes).
    ("grpc.min_reconnect_backoff_ms", 5_000),
    ("grpc.max_reconnect_backoff_ms", 5_000),
    # Subchannels of our own: a replaced channel must not share the dead connection through
    # gRPC's process-wide subchannel pool.
    ("grpc.use_local_subchannel_pool", 1),
)
"""gRPC channel options, besides the keepalive interval from :class:`CallTimeouts`."""


@dataclass(frozen=True)
class ClientSettings:
    """The resolved connection settings (no secret: credentials stay in the clients).

    Attributes:
        project: The Google Cloud project id.
        endpoint: ``host:port`` of Pub/Sub or the emulator.
        emulator: Whether ``endpoint`` is an emulator (insecure, no credentials).
    """

    project: str
    endpoint: str
    emulator: bool


def _without_user_info(value: str) -> str:
    """``value`` with whatever precedes an ``@`` (a user name, a password) masked."""
    head, at, tail = value.rpartition("@")
    if not at:
        return value
    scheme, sep, _ = head.partition("://")
    return f"{scheme}://***@{tail}" if sep else f"***@{tail}"


def _host_port(name: str, value: str, example: str) -> str:
    """Check that ``value`` is ``host:port``; the error never shows a user name or password."""
    host = value.strip()
    if "@" in host:
        raise ConfigurationError(
            f"{name} must be host:port without a user name or password (Pub/Sub takes "
            f"credentials from credentials_file or ADC, the emulator none), got "
            f"{_without_user_info(host)!r}; e.g. {example!r}"
        )
    if "://" in host or "/" in host or any(char.isspace() for char in host):
        raise ConfigurationError(f"{name} must be host:port (e.g. {example!r}), got {host!r}")
    return host


def _emulator_host(option: str | None) -> str | None:
    name = "emulator_host"
    host = option
    if host is None:
        host, name = os.environ.get(EMULATOR_ENV), f"{name} (from {EMULATOR_ENV})"
    if host is None or not host.strip():
        return None
    host = _host_port(name, host, "127.0.0.1:8085")
    # The emulator has no default port: gRPC would only fail at the first call.
    address, _, port = host.rpartition(":")
    if not address or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError(
            f"{name} must be host:port with a port number, as the emulator prints it "
            f"(e.g. '127.0.0.1:8085'), got {host!r}"
        )
    return host


def _check_project(project: str, source: str) -> str:
    if not project or any(char.isspace() or char == "/" for char in project):
        raise ConfigurationError(
            f"project {project!r} from {source} is not a Google Cloud project id; "
            "use the id shown by `gcloud projects list`"
        )
    return project


def _refuse_key_text(name: str, value: object) -> None:
    """Refuse a key's JSON text where the path of a key file belongs, never showing it.

    A secret store or CI variable often holds the key itself; passed on as a path,
    google-auth would quote it in its error, and log it at DEBUG while it looks
    for the file.
    """
    if isinstance(value, str) and value.lstrip().startswith("{"):
        raise ConfigurationError(
            f"{name} must be the path of a service-account key file, but its value looks "
            "like the key's JSON text itself (not shown: it holds a private key). Write the "
            f"key to a file readable only by the application and set {name} to that file's "
            "path (e.g. '/var/secrets/pubsub-key.json'), or use Application Default "
            "Credentials"
        )


def _default_credentials(credentials_file: str | None) -> tuple[Any, str | None]:
    """Return credentials and the project they name, or raise ConfigurationError."""
    _refuse_key_text("credentials_file", credentials_file)
    if credentials_file is None:
        _refuse_key_text(
            "GOOGLE_APPLICATION_CREDENTIALS", os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
        )
    try:
        if credentials_file is not None:
            from google.oauth2 import service_account

            credentials = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
                credentials_file, scopes=SCOPES
            )
            return credentials, getattr(credentials, "project_id", None)
        import google.auth

        credentials, project = google.auth.default(scopes=SCOPES)
        return credentials, project
    except (auth_exceptions.GoogleAuthError, OSError, ValueError) as error:
        # Summarized: google-auth's message may quote the key file.
        where = f"from credentials_file {credentials_file!r}" if credentials_file else "by ADC"
        raise ConfigurationError(
            f"no usable Google credentials {where} ({type(error).__name__}); {CREDENTIALS_HINT}"
        ) from None


def channel_options(timeouts: CallTimeouts) -> list[tuple[str, int]]:
    """Return the gRPC channel options for ``timeouts``' keepalive."""
    return [
        *CHANNEL_OPTIONS,
        ("grpc.keepalive_time_ms", round(timeouts.keepalive * 1000)),
        ("grpc.keepalive_timeout_ms", round(timeouts.keepalive_ack * 1000)),
        # Any ping, also gRPC's own flow-control (BDP) pings, waits as long as a keepalive one:
        # a keepalive ping due while another is unanswered waits for that one (60 s by default).
        ("grpc.http2.ping_timeout_ms", round(timeouts.keepalive_ack * 1000)),
    ]


class Clients:
    """The GAPIC publisher and subscriber over one gRPC channel, replaced when it stops answering.

    Args:
        open_channel: Makes a new channel to the same endpoint.
        grace: Seconds a replaced channel stays open for the calls still on it.
        credentials: The google-auth credentials in the channel (``None`` for an
            emulator), for the backend's calls outside Pub/Sub's API.

    Attributes:
        credentials: As given.
    """

    def __init__(
        self, open_channel: Callable[[], Any], grace: float, credentials: Any = None
    ) -> None:
        self.credentials = credentials
        self._open = open_channel
        self._grace = grace
        self._lock = threading.Lock()
        self._retired: list[tuple[float, Any]] = []  # (close after, channel)
        self._closed = False
        self.publisher, self.subscriber, self._channel = self._make()

    def _make(self) -> tuple[PublisherClient, SubscriberClient, Any]:
        channel = self._open()
        return (
            PublisherClient(transport=PublisherGrpcTransport(channel=channel)),
            SubscriberClient(transport=SubscriberGrpcTransport(channel=channel)),
            channel,
        )

    def renew(self, used: object) -> bool:
        """Replace the channel, if ``used`` (the client a timed-out call used) is still current.

        Calls still running on the old channel keep it for ``grace`` seconds;
        it is closed after that (on a later renewal, or by :meth:`close`).
        Returns whether the channel was replaced.
        """
        with self._lock:
            if self._closed or (used is not self.publisher and used is not self.subscriber):
                return False  # replaced already since that call began
            publisher, subscriber, channel = self._make()
            self._retired.append((time.monotonic() + self._grace, self._channel))
            self.publisher, self.subscriber, self._channel = publisher, subscriber, channel
            due = self._due()
        # DEBUG: in an outage this happens at every timeout; the caller reports the failure.
        logger.debug("a Pub/Sub call ran out of time: a new connection for the next ones")
        for old in due:
            _close_channel(old)
        return True

    def _due(self) -> list[Any]:
        now = time.monotonic()
        due = [channel for when, channel in self._retired if when <= now]
        self._retired = [(when, channel) for when, channel in self._retired if when > now]
        return due

    def close(self) -> None:
        """Close the channel and every replaced one; idempotent."""
        with self._lock:
            self._closed = True
            channels = [self._channel, *(channel for _, channel in self._retired)]
            self._retired = []
        for channel in channels:
            _close_channel(channel)


def _close_channel(channel: Any) -> None:
    try:
        channel.close()
    except Exception:  # closing must not fail; it may be closed already
        logger.debug("closing a gRPC channel failed", exc_info=True)


def make_clients(
    *,
    project: str | None,
    emulator_host: str | None,
    api_endpoint: str | None,
    credentials_file: str | None,
    timeouts: CallTimeouts,
) -> tuple[ClientSettings, Clients]:
    """Resolve the settings and make the GAPIC publisher and subscriber clients.

    Raises:
        ConfigurationError: No project can be found, options contradict each
            other, or no credentials are available for the real service.
    """
    if project is not None and not isinstance(project, str):
        # Google's project ids are strings, and so is a project number in a resource name.
        raise ConfigurationError(
            f"project must be a string: the project id (e.g. 'my-project') or the project's "
            f"number as digits; got {type(project).__name__} {project!r}, e.g. "
            f"project={str(project)!r}"
        )
    options = channel_options(timeouts)
    grace = timeouts.longest + 1.0
    if api_endpoint is not None:
        api_endpoint = _host_port("api_endpoint", api_endpoint, DEFAULT_ENDPOINT)
    host = _emulator_host(emulator_host)
    if host is not None and (api_endpoint or credentials_file):
        raise ConfigurationError(
            "emulator_host (or PUBSUB_EMULATOR_HOST) cannot be combined with api_endpoint or "
            "credentials_file: the emulator takes no credentials. Unset one of them"
        )
    resolved = project
    source = "the project option"
    if resolved is None:
        for name in PROJECT_ENVS:
            if os.environ.get(name):
                resolved, source = os.environ[name], name
                break
    if host is not None:
        if resolved is None:
            raise ConfigurationError(
                "no Google Cloud project: pass project=... or set GOOGLE_CLOUD_PROJECT (any id "
                "works with the emulator, e.g. 'melange-local')"
            )
        settings = ClientSettings(_check_project(resolved, source), host, True)
        emulator = host
        return settings, Clients(lambda: grpc.insecure_channel(emulator, options=options), grace)
    credentials, adc_project = _default_credentials(credentials_file)
    if resolved is None:
        resolved, source = adc_project, "Application Default Credentials"
    if not resolved:
        raise ConfigurationError(
            "no Google Cloud project: pass project=..., set GOOGLE_CLOUD_PROJECT, or use "
            "credentials that name one (`gcloud config set project ...`)"
        )
    endpoint = api_endpoint or DEFAULT_ENDPOINT
    settings = ClientSettings(_check_project(resolved, source), endpoint, False)

    def open_channel() -> Any:
        # TLS with the credentials, as the GAPIC transport would make it, with our options.
        return PublisherGrpcTransport.create_channel(
            endpoint, credentials=credentials, scopes=SCOPES, options=options
        )

    return settings, Clients(open_channel, grace, credentials)
