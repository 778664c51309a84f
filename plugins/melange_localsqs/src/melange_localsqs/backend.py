"""The ``localsqs`` backend: the ``aws`` backend pointed at a local SQS/SNS endpoint.

LocalStack, a moto server and ElasticMQ speak the SQS (and, except ElasticMQ,
the SNS) API, so :class:`LocalSQSBackend` is :class:`~melange_aws.AWSBackend`
with local defaults: ``http://localhost:4566`` (LocalStack's port), the dummy
credentials ``test``/``test`` and region ``us-east-1``. Nothing is read from the
machine's AWS configuration, so real credentials never go to a local endpoint.

Whether the endpoint has SNS is found out once, on first need, unless the
``sns`` option says so: an SQS-only endpoint (ElasticMQ) then reports topics as
unsupported, and the factory refuses topic requests up front.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]
from melange_aws import AWSBackend
from melange_aws.backend import options_from_7x
from melange_aws.clients import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_READ_TIMEOUT,
    ClientSettings,
    make_session,
)
from melange_aws.errors import CONNECTION_ERRORS, safe_endpoint

from melange.backends.base import Capabilities
from melange.exceptions import ConfigurationError, UnsupportedCapability

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from melange.compat.sqs_options import SQSOptions7x

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_PORT",
    "DEFAULT_REGION",
    "DUMMY_CREDENTIALS",
    "LocalSQSBackend",
]

logger = logging.getLogger("melange.localsqs.backend")

DEFAULT_HOST = "localhost"
"""Where a local endpoint listens unless told otherwise."""

DEFAULT_PORT = 4566
"""LocalStack's port (moto server and ElasticMQ take a ``-p`` / port option)."""

DEFAULT_REGION = "us-east-1"
"""The region local endpoints use by default."""

DUMMY_CREDENTIALS = ("test", "test")
"""Access key id and secret key: local endpoints accept any, and AWS's SDKs need some."""

DEFAULT_MAX_ATTEMPTS = 3
"""Attempts per call unless ``max_attempts`` says otherwise: botocore's standard-mode default.

Passed to botocore explicitly, because botocore reads ``AWS_MAX_ATTEMPTS`` and the
``max_attempts`` of the config file's profile when its Config sets no count."""

START_HINT = (
    "Nothing answers there: start a local endpoint, e.g. `localstack start` "
    "(or `docker run --rm -p 4566:4566 localstack/localstack`), or a moto server with "
    '`python -m moto.server -p 4566` (pip install "moto[server]"), or ElasticMQ for SQS only '
    "(`docker run --rm -p 9324:9324 softwaremill/elasticmq-native`, then "
    "LocalSQSBackend(port=9324, sns=False)); or point the backend at yours with "
    "host/port or endpoint_url"
)
"""How to fix an endpoint nothing listens on; ends every BackendUnavailable of that kind.

Only when no connection could be made: a reset, closed or silent connection
comes from something that runs there, and says so instead."""

# How an endpoint without SNS answers an SNS call: ElasticMQ InvalidAction (400),
# LocalStack without sns in SERVICES 501, other servers 404 or an unknown-operation code.
_NO_SERVICE_CODES = frozenset(
    {"InvalidAction", "UnknownOperation", "UnknownOperationException", "NotImplemented"}
)
_NO_SERVICE_STATUS = frozenset({404, 501})

PROBE_RETRY_SECONDS = 5.0
"""While nothing answers at the endpoint, seconds before SNS is asked about again."""

# One quick attempt each: the probe asks "is SNS there?", not "is it up yet?". botocore's
# "max_attempts" counts retries, "total_max_attempts" the first request too.
_PROBE_CONFIG = Config(
    retries={"mode": "standard", "total_max_attempts": 1}, connect_timeout=2, read_timeout=5
)


class _ProbedCapabilities:
    """``capabilities`` of a LocalSQSBackend: probed per instance, the full set on the class.

    On the class (``melange backends`` reads it there) it is everything the
    implementation can do; on an instance it is what the endpoint supports.
    """

    def __get__(self, instance: LocalSQSBackend | None, owner: type[Any]) -> Capabilities:
        if instance is None:
            return AWSBackend.capabilities
        return instance._current_capabilities()

    def __set__(self, instance: LocalSQSBackend, value: Capabilities) -> None:
        instance._fixed_capabilities = value


class LocalSQSBackend(AWSBackend):
    """SQS queues and SNS topics on a local endpoint: LocalStack, a moto server, ElasticMQ.

    With no option it talks to LocalStack's default, ``http://localhost:4566``,
    as ``us-east-1`` with dummy credentials. Everything else behaves as the
    ``aws`` backend does (see docs/backends/aws.md).

    Args:
        host: The endpoint's host name or address, without a port; ``localhost``
            by default.
        port: The endpoint's port; 4566 by default.
        endpoint_url: The whole endpoint URL, e.g. ``"http://127.0.0.1:5000"``;
            when given, ``host`` and ``port`` are ignored.
        sns_endpoint_url: A separate SNS endpoint, when SNS is served elsewhere
            than SQS.
        sns: Whether the endpoint has SNS. ``None`` (default) asks it once, on
            the first look at :attr:`capabilities`, with one quick SNS call;
            ``False`` declares an SQS-only endpoint (ElasticMQ), so topics and
            subscription filters are reported as unsupported; ``True`` skips the
            question.
        region_name: The region; ``us-east-1`` by default.
        aws_access_key_id: The access key id; ``test`` by default.
        aws_secret_access_key: The secret key; ``test`` by default.
        aws_session_token: A session token, if the endpoint checks one.
        max_attempts: Attempts per call, first one included, of botocore's
            standard retry mode; 3 (botocore's default) when ``None``, whatever
            ``AWS_MAX_ATTEMPTS`` or an AWS config file says.
        max_pool_connections: HTTP connections kept per client.
        connect_timeout: Seconds to wait for a connection, per attempt (5 by default).
        read_timeout: Seconds to wait for an answer, per attempt (10 by
            default); a long poll waits its wait time plus this.
        **options_7x: melange 7.x's keywords (``sns_host``, ``sns_port``,
            ``extra_settings``, ...; also ``host``/``port`` in 7.x's form, such as
            ``host="http://localhost", port="4566"``): each is turned into the
            melange 8 keyword it meant, with a ``DeprecationWarning``, or refused
            naming where it went.
        compatible_with_7x: Publish and subscribe so that melange 7.x consumers
            still read the queues, during a rolling upgrade (see ``AWSBackend``).

    Raises:
        ConfigurationError: An option is malformed.
    """

    name = "localsqs"
    capabilities = _ProbedCapabilities()

    def __init__(
        self,
        *,
        host: str | None = None,
        port: int | str | None = None,
        endpoint_url: str | None = None,
        sns_endpoint_url: str | None = None,
        sns: bool | None = None,
        region_name: str = DEFAULT_REGION,
        aws_access_key_id: str = DUMMY_CREDENTIALS[0],
        aws_secret_access_key: str = DUMMY_CREDENTIALS[1],
        aws_session_token: str | None = None,
        max_attempts: int | None = None,
        max_pool_connections: int | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        compatible_with_7x: bool = False,
        **options_7x: Unpack[SQSOptions7x],
    ) -> None:
        legacy: dict[str, Any] = dict(options_7x)
        if (isinstance(host, str) and "://" in host) or isinstance(port, str):
            legacy.update({"host": host, "port": port})  # 7.x's f"{host}:{port}" form
            host = port = None
        if legacy:  # melange 7.x's keywords: turned into these, with a warning each
            given = {"endpoint_url": endpoint_url, "sns_endpoint_url": sns_endpoint_url}
            converted = options_from_7x(self.name, legacy, given)
            endpoint_url = converted.get("endpoint_url", endpoint_url)
            sns_endpoint_url = converted.get("sns_endpoint_url", sns_endpoint_url)
            region_name = converted.get("region_name", region_name)
            aws_access_key_id = converted.get("aws_access_key_id", aws_access_key_id)
            aws_secret_access_key = converted.get("aws_secret_access_key", aws_secret_access_key)
            aws_session_token = converted.get("aws_session_token", aws_session_token)
        if sns is not None and not isinstance(sns, bool):
            raise ConfigurationError(f"sns must be True, False or None (ask), got {sns!r}")
        given = {
            "aws_access_key_id": aws_access_key_id,
            "aws_secret_access_key": aws_secret_access_key,
            "aws_session_token": aws_session_token,
        }
        for label, value in given.items():
            if (value is not None or label != "aws_session_token") and (
                not isinstance(value, str) or not value
            ):
                raise ConfigurationError(f"{label} must be a non-empty string")
        self._fixed_capabilities: Capabilities | None = None
        self._probed: Capabilities | None = None
        self._probe_lock = threading.Lock()
        self._next_probe = 0.0
        self._no_sns_reason: str | None = None
        super().__init__(
            endpoint_url=endpoint_url or _endpoint(host, port),
            sns_endpoint_url=sns_endpoint_url,
            region_name=region_name,
            # The machine's AWS retry settings are meant for AWS, not for a local endpoint.
            max_attempts=DEFAULT_MAX_ATTEMPTS if max_attempts is None else max_attempts,
            max_pool_connections=max_pool_connections,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            compatible_with_7x=compatible_with_7x,
            session=make_session(
                ClientSettings(
                    region_name=region_name,
                    aws_access_key_id=aws_access_key_id,
                    aws_secret_access_key=aws_secret_access_key,
                    aws_session_token=aws_session_token,
                ),
                # A profile named in the environment is meant for AWS: a missing one must not
                # stop a local backend, and its settings must not apply here.
                environment_profile=False,
            ),
        )
        if sns is True:
            self._probed = AWSBackend.capabilities
        elif sns is False:
            self._no_sns(f"sns=False was passed for {safe_endpoint(self.endpoint_url)}")

    @property
    def endpoint_url(self) -> str:
        """The SQS endpoint this backend talks to."""
        return str(self.sqs_client.meta.endpoint_url)

    @property
    def sns_endpoint_url(self) -> str:
        """The SNS endpoint (the same as :attr:`endpoint_url` unless set apart)."""
        return str(self.sns_client.meta.endpoint_url)

    # ------------------------------------------------------------ capabilities
    def _current_capabilities(self) -> Capabilities:
        fixed = self._fixed_capabilities
        if fixed is not None:
            return fixed
        probed = self._probed
        if probed is not None:
            return probed
        with self._probe_lock:
            if self._probed is None and not self.closed and time.monotonic() >= self._next_probe:
                has_sns = self._probe_sns()
                if has_sns is None:
                    # Nothing answers: assume SNS (the first real call raises BackendUnavailable
                    # naming the endpoint) and ask again later, not on every look.
                    self._next_probe = time.monotonic() + PROBE_RETRY_SECONDS
                elif has_sns:
                    self._probed = AWSBackend.capabilities
                # has_sns False: _probe_sns already narrowed _probed, with the reason.
            return self._probed or AWSBackend.capabilities

    def _no_sns(self, reason: str) -> None:
        self._no_sns_reason = reason
        self._probed = dataclasses.replace(AWSBackend.capabilities, topics=False, filters=False)

    def _probe_sns(self) -> bool | None:
        """Ask the SNS endpoint whether it serves SNS.

        Returns:
            ``True`` if it answers as SNS, ``False`` if it does not (and SQS
            does), ``None`` if nothing answers at all.
        """
        sns = self._create_client("sns", config=_PROBE_CONFIG)
        where = safe_endpoint(self.sns_endpoint_url)
        try:
            sns.list_topics()
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in _NO_SERVICE_CODES or status in _NO_SERVICE_STATUS:
                self._no_sns(f"the endpoint {where} has no SNS: it answered {code or status}")
                logger.info("%s; topics are not supported", self._no_sns_reason)
                return False
            return True  # an SNS error (credentials, throttling): SNS is there
        except CONNECTION_ERRORS:
            if self.sns_endpoint_url != self.endpoint_url and self._sqs_answers():
                self._no_sns(f"nothing answers at the SNS endpoint {where}")
                logger.info("%s; topics are not supported", self._no_sns_reason)
                return False
            return None
        except BotoCoreError:
            return None
        finally:
            sns.close()
        return True

    def _sqs_answers(self) -> bool:
        sqs = self._create_client("sqs", config=_PROBE_CONFIG)
        try:
            sqs.list_queues(MaxResults=1)
        except ClientError:
            return True  # it answered, even if with an error
        except BotoCoreError:
            return False
        finally:
            sqs.close()
        return True

    def require(self, capability: str, what: str) -> None:
        """Raise UnsupportedCapability unless ``capability`` is declared; say why SNS is off."""
        try:
            super().require(capability, what)
        except UnsupportedCapability as error:
            if capability in ("topics", "filters") and self._no_sns_reason is not None:
                error.args = (
                    f"{error} ({self._no_sns_reason}; an SQS-only endpoint such as ElasticMQ "
                    "has queues only)",
                )
            raise

    # ----------------------------------------------------------------- errors
    def _unreachable_hint(self) -> str:
        """Say how to start a local endpoint (AWSBackend's extension point)."""
        return START_HINT

    def _known_secrets(self) -> tuple[str, ...]:
        """Leave out the dummy credentials (AWSBackend's extension point).

        They are no secret, and redacting ``"test"`` would mangle names in messages.
        """
        return tuple(s for s in super()._known_secrets() if s not in DUMMY_CREDENTIALS)


def _endpoint(host: str | None, port: int | None) -> str:
    if host is not None and (
        not isinstance(host, str) or not host or "/" in host or "@" in host or host != host.strip()
    ):
        shown = "a value with user info ('...@')" if "@" in str(host) else repr(host)
        raise ConfigurationError(
            f"host must be a host name or address such as 'localhost', got {shown}; "
            "pass a whole URL as endpoint_url instead"
        )
    if port is not None and (
        isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536
    ):
        raise ConfigurationError(f"port must be a whole number from 1 to 65535, got {port!r}")
    host = host or DEFAULT_HOST
    if ":" in host:
        address = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not _is_ipv6(address):
            raise _port_in_host(host)
        host = f"[{address}]"
    return f"http://{host}:{port or DEFAULT_PORT}"


def _is_ipv6(address: str) -> bool:
    try:
        ipaddress.IPv6Address(address)
    except ValueError:
        return False
    return True


def _port_in_host(host: str) -> ConfigurationError:
    """The error for ``host="localhost:4566"``: the port goes in ``port``."""
    name, _, port = host.rpartition(":")
    name = name[1:-1] if name.startswith("[") and name.endswith("]") else name
    split = name and port.isdigit() and (":" not in name or _is_ipv6(name))
    fix = f"host={name!r}, port={port}" if split else "host='localhost', port=4566"
    return ConfigurationError(
        f"host must be a host name or address without a port, got {host!r}; give the port "
        f"as port, e.g. LocalSQSBackend({fix}), or the whole URL as endpoint_url"
    )
