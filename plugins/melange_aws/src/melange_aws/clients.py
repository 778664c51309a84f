"""boto3 sessions and clients for the backend, built from the standard AWS configuration.

With no option given, boto3's own chain decides everything: credentials from
the environment, ``~/.aws`` profiles, SSO or an instance/container role; the
region from ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` or the profile; endpoints
from ``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_SQS`` and ``AWS_ENDPOINT_URL_SNS``.
Options given to the backend override the matching link of that chain.

Retries are botocore's "standard" mode (exponential backoff with jitter on
throttling and transient errors), configured with :class:`botocore.config.Config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import boto3  # type: ignore[import-untyped]
from botocore import exceptions as botocore_errors  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]

from melange.exceptions import ConfigurationError

USER_AGENT_EXTRA = "melange"
"""Appended to the User-Agent header, so melange's calls can be told apart in CloudTrail."""


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
            if value is not None and not value.startswith(("http://", "https://")):
                raise ConfigurationError(
                    f"{name} must be an http:// or https:// URL, e.g. 'http://localhost:4566'; "
                    f"got {value!r}"
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
    """Return the botocore configuration: standard retries, pool size, user agent."""
    retries: dict[str, Any] = {"mode": "standard"}
    if settings.max_attempts is not None:
        # botocore's "max_attempts" counts retries; "total_max_attempts" counts the first
        # call too, like AWS_MAX_ATTEMPTS and this option.
        retries["total_max_attempts"] = settings.max_attempts
    options: dict[str, Any] = {"retries": retries, "user_agent_extra": USER_AGENT_EXTRA}
    if settings.max_pool_connections is not None:
        options["max_pool_connections"] = settings.max_pool_connections
    return Config(**options)


def make_session(settings: ClientSettings) -> boto3.session.Session:
    """Return the boto3 session the clients are made from.

    Raises:
        ConfigurationError: The named profile does not exist.
    """
    if settings.session is not None:
        session: boto3.session.Session = settings.session
        return session
    try:
        return boto3.session.Session(
            aws_access_key_id=settings.aws_access_key_id,
            aws_secret_access_key=settings.aws_secret_access_key,
            aws_session_token=settings.aws_session_token,
            region_name=settings.region_name,
            profile_name=settings.profile_name,
        )
    except botocore_errors.ProfileNotFound:
        raise ConfigurationError(
            f"AWS profile {settings.profile_name!r} is not defined in ~/.aws/config or "
            "~/.aws/credentials (or AWS_CONFIG_FILE / AWS_SHARED_CREDENTIALS_FILE); "
            "check the name or drop profile_name"
        ) from None


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
