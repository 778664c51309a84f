"""boto3 sessions and clients for the backend, built from the standard AWS configuration.

With no option given, boto3's own chain decides everything: credentials from
the environment, ``~/.aws`` profiles, SSO or an instance/container role; the
region from ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` or the profile; endpoints
from ``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_SQS`` and ``AWS_ENDPOINT_URL_SNS``.
Options given to the backend override the matching link of that chain.

Retries are botocore's "standard" mode (exponential backoff with jitter on
throttling and transient errors), and timeouts are sized to the call (a few
seconds to connect and to wait for an answer; a long poll's wait plus that
margin for ReceiveMessage), both configured with :class:`botocore.config.Config`.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import boto3  # type: ignore[import-untyped]
import botocore.loaders  # type: ignore[import-untyped]
import botocore.session  # type: ignore[import-untyped]
import botocore.utils  # type: ignore[import-untyped]
from botocore import exceptions as botocore_errors
from botocore.config import Config  # type: ignore[import-untyped]

from melange.exceptions import ConfigurationError
from melange_aws.errors import without_user_info

USER_AGENT_EXTRA = "melange"
"""Appended to the User-Agent header, so melange's calls can be told apart in CloudTrail."""

DEFAULT_CONNECT_TIMEOUT = 5.0
"""Seconds to wait for a TCP (and TLS) connection; botocore's own default is 60."""

DEFAULT_READ_TIMEOUT = 10.0
"""Seconds to wait for an answer to a call that does not long-poll (publish, settle,
topology); botocore's own default is 60, which held a publish to a silent endpoint for
three minutes (3 attempts). A long poll waits its own wait time plus this margin."""

LONG_POLL_SECONDS = 20.0
"""The longest wait of a ReceiveMessage long poll (SQS's limit)."""


@dataclass(frozen=True)
class ClientSettings:
    """The backend's connection options, checked by :meth:`validate`.

    Credentials are kept out of ``repr``.
    """

    region_name: str | None = None
    endpoint_url: str | None = None
    sns_endpoint_url: str | None = None
    sqs_endpoint_url: str | None = None
    profile_name: str | None = None
    aws_access_key_id: str | None = field(default=None, repr=False)
    aws_secret_access_key: str | None = field(default=None, repr=False)
    aws_session_token: str | None = field(default=None, repr=False)
    max_attempts: int | None = None
    max_pool_connections: int | None = None
    session: Any = field(default=None, repr=False)
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT

    def validate(self) -> None:
        """Raise :class:`ConfigurationError` for inconsistent or mistyped options."""
        for name in (
            "region_name",
            "endpoint_url",
            "sns_endpoint_url",
            "sqs_endpoint_url",
            "profile_name",
            "aws_access_key_id",
            "aws_secret_access_key",
            "aws_session_token",
        ):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                shown = "a secret" if "secret" in name or "token" in name else repr(value)
                raise ConfigurationError(f"{name} must be a non-empty string or None, got {shown}")
        for name in ("endpoint_url", "sns_endpoint_url", "sqs_endpoint_url"):
            value = getattr(self, name)
            if value is not None and not _is_endpoint_url(value):
                raise ConfigurationError(
                    f"{name} must be an http:// or https:// URL, e.g. 'http://localhost:4566'; "
                    f"got {without_user_info(value)!r}"
                )
        if (self.aws_access_key_id is None) != (self.aws_secret_access_key is None):
            raise ConfigurationError(
                "aws_access_key_id and aws_secret_access_key go together: pass both, or neither "
                "to use the standard AWS credential chain"
            )
        if self.aws_session_token is not None and self.aws_access_key_id is None:
            raise ConfigurationError(
                "aws_session_token needs aws_access_key_id and aws_secret_access_key as well"
            )
        if self.aws_access_key_id is not None and self.profile_name is not None:
            raise ConfigurationError(
                "pass either profile_name or explicit keys (aws_access_key_id, "
                "aws_secret_access_key), not both"
            )
        if self.session is not None:
            if not isinstance(self.session, boto3.session.Session):
                raise ConfigurationError(
                    f"session must be a boto3.session.Session, got {type(self.session).__name__}"
                )
            if self.profile_name is not None or self.aws_access_key_id is not None:
                raise ConfigurationError(
                    "a boto3 session brings its own credentials: drop profile_name and the "
                    "aws_* keys, or drop session"
                )
        for name in ("max_attempts", "max_pool_connections"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ConfigurationError(
                    f"{name} must be a whole number of at least 1, got {value!r}"
                )
        for name in ("connect_timeout", "read_timeout"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ConfigurationError(
                    f"{name} must be a positive number of seconds, e.g. {name}=5, got {value!r}"
                )

    def secrets(self) -> tuple[str, ...]:
        """The credential strings that must never appear in a message."""
        return tuple(
            value
            for value in (
                self.aws_access_key_id,
                self.aws_secret_access_key,
                self.aws_session_token,
            )
            if value
        )

    def endpoint_for(self, service: str) -> str | None:
        """Return the explicit endpoint for ``"sqs"``, ``"sns"`` or ``"sts"``, if any.

        ``None`` leaves the choice to botocore (``AWS_ENDPOINT_URL_<SERVICE>``,
        ``AWS_ENDPOINT_URL``, then AWS's public endpoint for the region).
        """
        specific = {"sqs": self.sqs_endpoint_url, "sns": self.sns_endpoint_url}.get(service)
        return specific or self.endpoint_url


def client_config(settings: ClientSettings) -> Config:
    """Return the botocore configuration: standard retries, timeouts, pool size, user agent."""
    retries: dict[str, Any] = {"mode": "standard"}
    if settings.max_attempts is not None:
        # botocore's "max_attempts" counts retries; "total_max_attempts" counts the first
        # call too, like AWS_MAX_ATTEMPTS and this option.
        retries["total_max_attempts"] = settings.max_attempts
    options: dict[str, Any] = {
        "retries": retries,
        "user_agent_extra": USER_AGENT_EXTRA,
        "connect_timeout": settings.connect_timeout,
        "read_timeout": settings.read_timeout,
    }
    if settings.max_pool_connections is not None:
        options["max_pool_connections"] = settings.max_pool_connections
    return Config(**options)


def long_poll_config(settings: ClientSettings, wait_seconds: int) -> Config:
    """Return what a ReceiveMessage client changes: a read timeout that outlasts its long poll.

    SQS answers a long poll only when a message arrives or the wait (up to
    :data:`LONG_POLL_SECONDS`) is over, so the read timeout is that wait plus the
    usual margin: an answer that is merely waited for is never cut off, and a
    dead connection is still noticed within the margin after the wait.

    Args:
        settings: The backend's options (``read_timeout`` is the margin).
        wait_seconds: The long poll's whole seconds, 0 to 20.
    """
    wait = min(max(wait_seconds, 0), int(LONG_POLL_SECONDS))
    return Config(read_timeout=wait + settings.read_timeout)


_PROFILE_VARIABLES = ("AWS_DEFAULT_PROFILE", "AWS_PROFILE")
"""Where botocore reads the profile from, first match wins (botocore's ``profile`` variable)."""

_shared_loaders: dict[str | None, Any] = {}
_shared_loaders_lock = threading.Lock()


def shared_data_loader(data_path: str | None = None) -> Any:
    """Return the process's botocore data loader for ``data_path`` (``AWS_DATA_PATH``).

    A loader parses and caches the service models and endpoint rules; a fresh
    one per session makes every new backend parse them again (tens of
    milliseconds). What it caches is read-only, so sessions of any thread may
    share it; credentials, region and every other setting stay per session.
    """
    with _shared_loaders_lock:
        loader = _shared_loaders.get(data_path)
        if loader is None:
            loader = _shared_loaders[data_path] = botocore.loaders.create_loader(data_path)
        return loader


def make_session(
    settings: ClientSettings, *, environment_profile: bool = True
) -> boto3.session.Session:
    """Return the boto3 session the clients are made from.

    ``settings.session`` is returned as it is. Otherwise the session is new,
    with its own credentials and region, and shares only the process's
    read-only data loader (:func:`shared_data_loader`) with other sessions.

    Args:
        settings: The connection options.
        environment_profile: Whether ``AWS_PROFILE`` / ``AWS_DEFAULT_PROFILE``
            select a profile. ``False`` ignores them, for a session that must
            not depend on the machine's AWS setup (a local emulator).

    Raises:
        ConfigurationError: The profile named by ``profile_name`` or the
            environment does not exist.
    """
    if settings.session is not None:
        session: boto3.session.Session = settings.session
        return session
    # An empty list of variables for "profile" makes botocore ignore AWS_PROFILE.
    session_vars: dict[str, Any] = (
        {} if environment_profile else {"profile": (None, [], None, None)}
    )
    core = botocore.session.Session(session_vars=session_vars)
    try:
        session = boto3.session.Session(
            aws_access_key_id=settings.aws_access_key_id,
            aws_secret_access_key=settings.aws_secret_access_key,
            aws_session_token=settings.aws_session_token,
            region_name=settings.region_name or _region_from_aws_region(),
            profile_name=settings.profile_name,
            botocore_session=core,
        )
        data_path = core.get_config_variable("data_path")
    except botocore_errors.ProfileNotFound as error:
        raise _unknown_profile(str(error.kwargs.get("profile", "")), settings) from None
    # After boto3's own setup, which adds its resource models to the session's first loader:
    # clients read only botocore's data, from the shared loader.
    core.register_component("data_loader", shared_data_loader(data_path))
    return session


def _region_from_aws_region() -> str | None:
    """``AWS_REGION``, which botocore does not read (it reads ``AWS_DEFAULT_REGION``).

    The AWS SDKs and tools reference names ``AWS_REGION`` as the region's
    variable, and the other SDKs, the AWS CLI v2 and Lambda's runtime set or
    read it ahead of ``AWS_DEFAULT_REGION``; passing it as the session's region
    gives it that place: after ``region_name``, before ``AWS_DEFAULT_REGION``
    and the profile. Empty means unset.
    """
    return os.environ.get("AWS_REGION") or None


def _unknown_profile(profile: str, settings: ClientSettings) -> ConfigurationError:
    """The error for a profile no AWS config file defines, naming where the name came from."""
    files = (
        f"{os.environ.get('AWS_CONFIG_FILE', '~/.aws/config')} or "
        f"{os.environ.get('AWS_SHARED_CREDENTIALS_FILE', '~/.aws/credentials')}"
    )
    if settings.profile_name is not None:
        source = "the profile_name option"
        fix = "check the name, or drop profile_name to use the standard credential chain"
    else:
        variable = next(
            (name for name in _PROFILE_VARIABLES if os.environ.get(name) == profile),
            "AWS_PROFILE",
        )
        source = f"the environment variable {variable}"
        fix = (
            f"create it (e.g. `aws configure --profile {profile}`), or unset {variable} "
            "to use the standard credential chain"
        )
    return ConfigurationError(
        f"AWS profile {profile!r}, named by {source}, is not defined in {files}: {fix}"
    )


def make_client(
    session: boto3.session.Session,
    service: str,
    *,
    endpoint_url: str | None,
    region_name: str | None,
    config: Config,
) -> Any:
    """Return a boto3 client for ``service``; ``Any`` because no boto3 stubs are required.

    Raises:
        ConfigurationError: No region is configured.
    """
    try:
        return session.client(
            service,
            endpoint_url=endpoint_url,
            region_name=region_name,
            config=config,
        )
    except botocore_errors.NoRegionError:
        raise ConfigurationError(
            f"no AWS region is configured for {service.upper()}: pass region_name "
            "(e.g. region_name='eu-west-1'), set AWS_REGION or AWS_DEFAULT_REGION, or set "
            "region in the AWS profile"
        ) from None


def _is_endpoint_url(url: str) -> bool:
    """Whether botocore takes ``url`` as an endpoint (its own test), with a numeric port."""
    if not url.startswith(("http://", "https://")):
        return False
    try:
        _ = urlsplit(url).port  # a port that is not a number raises
    except ValueError:
        return False
    return bool(
        botocore.utils.is_valid_endpoint_url(url) or botocore.utils.is_valid_ipv6_endpoint_url(url)
    )
