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
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import grpc  # type: ignore[import-untyped]
from google.auth import exceptions as auth_exceptions
from google.pubsub_v1 import PublisherClient, SubscriberClient
from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

from melange.exceptions import ConfigurationError
from melange_gcp.errors import CREDENTIALS_HINT

EMULATOR_ENV = "PUBSUB_EMULATOR_HOST"
PROJECT_ENVS = ("GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT")
DEFAULT_ENDPOINT = "pubsub.googleapis.com:443"
SCOPES = ("https://www.googleapis.com/auth/pubsub",)

CHANNEL_OPTIONS = (
    # 10 MB messages in both directions: gRPC's default receive limit is 4 MiB.
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
)


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


def _emulator_host(option: str | None) -> str | None:
    host = option if option is not None else os.environ.get(EMULATOR_ENV)
    if host is None or not host.strip():
        return None
    host = host.strip()
    if "://" in host or "/" in host:
        raise ConfigurationError(
            f"emulator_host must be host:port (e.g. '127.0.0.1:8085'), got {host!r}"
        )
    return host


def _check_project(project: str, source: str) -> str:
    if not project or any(char.isspace() or char == "/" for char in project):
        raise ConfigurationError(
            f"project {project!r} from {source} is not a Google Cloud project id; "
            "use the id shown by `gcloud projects list`"
        )
    return project


def _default_credentials(credentials_file: str | None) -> tuple[Any, str | None]:
    """Return credentials and the project they name, or raise ConfigurationError."""
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


def make_clients(
    *,
    project: str | None,
    emulator_host: str | None,
    api_endpoint: str | None,
    credentials_file: str | None,
) -> tuple[ClientSettings, PublisherClient, SubscriberClient]:
    """Resolve the settings and make the GAPIC publisher and subscriber clients.

    Raises:
        ConfigurationError: No project can be found, options contradict each
            other, or no credentials are available for the real service.
    """
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
        channel = grpc.insecure_channel(host, options=list(CHANNEL_OPTIONS))
        publisher = PublisherClient(transport=PublisherGrpcTransport(channel=channel))
        subscriber = SubscriberClient(transport=SubscriberGrpcTransport(channel=channel))
        return ClientSettings(_check_project(resolved, source), host, True), publisher, subscriber
    credentials, adc_project = _default_credentials(credentials_file)
    if resolved is None:
        resolved, source = adc_project, "Application Default Credentials"
    if not resolved:
        raise ConfigurationError(
            "no Google Cloud project: pass project=..., set GOOGLE_CLOUD_PROJECT, or use "
            "credentials that name one (`gcloud config set project ...`)"
        )
    endpoint = api_endpoint or DEFAULT_ENDPOINT
    options = {"api_endpoint": endpoint}
    publisher = PublisherClient(credentials=credentials, client_options=options)
    subscriber = SubscriberClient(credentials=credentials, client_options=options)
    return ClientSettings(_check_project(resolved, source), endpoint, False), publisher, subscriber
