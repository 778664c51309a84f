"""melange 7.x's SQS backend keywords, turned into melange 8's.

7.x's ``LocalSQSBackend(host="http://localhost", port="4566", sns_host=...,
sns_port=...)`` built its endpoints as ``f"{host}:{port}"`` (so ``host`` carried
the scheme, and ``port`` often came from the environment as a string), and both
7.x SQS backends took boto3 resource arguments as ``extra_settings`` (SQS) and
``sns_settings`` (SNS), plus three receive options.

The ``localsqs`` and ``aws`` backends call :func:`sqs_options_from_7x` with the
keywords their constructor does not know (and ``host``/``port`` when they are in
7.x's form); it returns melange 8 keywords, warning for each 7.x one, or raises
:class:`~melange.exceptions.ConfigurationError` naming where an option went.
Secret values never appear in a message.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import Any, TypedDict

from melange.compat.calls_common import warn_7x
from melange.exceptions import ConfigurationError, did_you_mean

__all__ = ["KEYWORDS_7X", "MOVED_TO_DISPATCHER", "SQSOptions7x", "sqs_options_from_7x"]

CLASSES = {"localsqs": "LocalSQSBackend", "aws": "AWSBackend"}

KEYWORDS_7X = (
    "host",
    "port",
    "sns_host",
    "sns_port",
    "extra_settings",
    "sns_settings",
    "max_number_of_messages",
    "visibility_timeout",
    "wait_time_seconds",
)
"""The keywords 7.x's SQS backends read."""

MOVED_TO_DISPATCHER = {
    "wait_time_seconds": "MessageDispatcher(backend, queue_name, consumers, wait_seconds=...)",
    "max_number_of_messages": "MessageDispatcher(backend, queue_name, consumers, batch_size=...)",
    "visibility_timeout": (
        "the queue's setting, MessagingBackendFactory(backend).init_queue(queue_name, ..., "
        "visibility_timeout=...); the dispatcher extends the lease of a long-running handler "
        "(MessageDispatcher(..., lease=LeasePolicy(...)))"
    ),
}
"""7.x receive options, which melange 8 sets elsewhere."""

RESOURCE_ARGUMENTS = (
    "endpoint_url",
    "region_name",
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "use_ssl",
    "verify",
    "api_version",
    "config",
)
"""What boto3.resource() takes, hence what 7.x's extra_settings/sns_settings could hold."""

_SHARED = ("region_name", "aws_access_key_id", "aws_secret_access_key", "aws_session_token")
_SECRETS = frozenset({"aws_access_key_id", "aws_secret_access_key", "aws_session_token"})
_NO_EQUIVALENT = {
    "verify": (
        "melange 8 has no verify option: boto3 reads a CA bundle from the AWS_CA_BUNDLE "
        "environment variable"
    ),
    "api_version": "melange 8 uses the SDK's current API version; drop it",
    "config": (
        "pass its settings as melange 8 keywords: connect_timeout=, read_timeout=, "
        "max_attempts=, max_pool_connections= (or subclass the backend and override "
        "_client_config)"
    ),
}
_DEFAULT_HOST = "localhost"  # 7.x's defaults for host/port and sns_host/sns_port
_DEFAULT_PORT = 4566


def sqs_options_from_7x(backend: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Return the melange 8 keywords for a 7.x SQS backend's keywords.

    Each 7.x keyword that maps raises a ``DeprecationWarning`` naming the melange 8
    keyword, pointing at the application's line.

    Args:
        backend: ``"localsqs"`` or ``"aws"``.
        options: The keywords the backend's constructor does not take, plus ``host``
            and ``port`` when they are in 7.x's form (``host`` with a scheme, such
            as ``"http://localhost"``, or ``port`` as a string such as ``"4566"``).

    Returns:
        Keywords of the melange 8 backend: ``endpoint_url``, ``sns_endpoint_url``,
        ``sqs_endpoint_url`` (``aws`` only), ``region_name``, ``aws_access_key_id``,
        ``aws_secret_access_key``, ``aws_session_token``; only those that were set.

    Raises:
        ConfigurationError: A keyword is unknown (with a "did you mean"), moved to the
            dispatcher or the factory (the message says where), has no melange 8
            equivalent, is malformed, or contradicts another.
    """
    if backend not in CLASSES:
        raise ConfigurationError(f"backend must be 'localsqs' or 'aws', got {backend!r}")
    if not isinstance(options, Mapping):
        raise ConfigurationError(f"options must be a mapping, got {type(options).__name__}")
    cls = CLASSES[backend]
    _check_names(backend, cls, options)
    result: dict[str, Any] = {}
    notes: list[tuple[str, str]] = []  # warned once every option is known to be valid
    if backend == "localsqs":
        _local_endpoints(cls, options, result, notes)
    else:
        for name in ("host", "port", "sns_host", "sns_port"):
            if name in options:
                raise ConfigurationError(
                    f"{cls}() got {name}=, which 7.x's AWSBackend ignored; melange 8 takes the "
                    "whole URL: endpoint_url='https://...' (sns_endpoint_url= for SNS alone)"
                )
    _resource_settings(backend, cls, options, result, notes)
    for old, new in notes:
        warn_7x(old, new)
    return result


def _check_names(backend: str, cls: str, options: Mapping[str, Any]) -> None:
    for name in options:
        if name in MOVED_TO_DISPATCHER:
            raise ConfigurationError(
                f"{cls}({name}=...) is a melange 7.x receive option; melange 8 sets it in "
                f"{MOVED_TO_DISPATCHER[name]}"
            )
        if name not in KEYWORDS_7X:
            known = (*_options_8x(backend), *KEYWORDS_7X)
            raise ConfigurationError(
                f"{cls}() got an unknown option {name!r}{did_you_mean(name, known)}; "
                f"see `melange backends` for the options of {backend!r}"
            )


def _options_8x(backend: str) -> list[str]:
    """The backend's own keywords, for "did you mean" (none if it cannot be loaded)."""
    from melange.backends.registry import accepted_options, get_backend_class

    try:
        return list(accepted_options(get_backend_class(backend)))
    except Exception:  # only used for a hint: never hide the caller's real error
        return []


# ----------------------------------------------------------------- endpoints
def _local_endpoints(
    cls: str, options: Mapping[str, Any], result: dict[str, Any], notes: list[tuple[str, str]]
) -> None:
    for host_key, port_key, target in (
        ("host", "port", "endpoint_url"),
        ("sns_host", "sns_port", "sns_endpoint_url"),
    ):
        if host_key not in options and port_key not in options:
            continue
        host, port = options.get(host_key), options.get(port_key)
        url = _endpoint_url(cls, host_key, host, port_key, port)
        result[target] = url
        given = ", ".join(
            f"{key}={_shown_repr(options[key])}" for key in (host_key, port_key) if key in options
        )
        notes.append((f"{cls}({given})", f"{cls}({target}={_shown_repr(url)})"))


def _endpoint_url(cls: str, host_key: str, host: object, port_key: str, port: object) -> str:
    """Build the URL 7.x meant by ``f"{host}:{port}"`` (a scheme added if it had none)."""
    if host is None:
        host = _DEFAULT_HOST
    if not isinstance(host, str) or not host.strip():
        raise ConfigurationError(
            f"{cls}({host_key}=...) must be a host name, optionally with a scheme such as "
            f"'http://localhost', got {type(host).__name__}; melange 8 takes endpoint_url="
        )
    text = host.strip()
    parsed = urllib.parse.urlsplit(text if "://" in text else f"http://{text}")
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigurationError(
            f"{cls}({host_key}={_shown(text)!r}) is not an http:// or https:// host; pass "
            "endpoint_url='http://host:port'"
        )
    if parsed.path not in ("", "/") or parsed.query or parsed.fragment:
        raise ConfigurationError(
            f"{cls}({host_key}={_shown(text)!r}) has a path; pass the whole URL as endpoint_url="
        )
    try:
        in_host = parsed.port
    except ValueError:
        in_host = -1
    if in_host is not None:
        if port is not None or in_host < 1:
            raise ConfigurationError(
                f"{cls}({host_key}={_shown(text)!r}) already holds a port; pass the whole URL "
                "as endpoint_url= and no port"
            )
        number = in_host
    else:
        number = _port(cls, port_key, port)
    port_part = f":{number}" if in_host is None else ""
    return f"{parsed.scheme}://{parsed.netloc}{port_part}"


def _port(cls: str, key: str, port: object) -> int:
    if port is None:
        return _DEFAULT_PORT
    if isinstance(port, str) and port.strip().isdigit():
        port = int(port.strip())  # 7.x read ports from the environment, as strings
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigurationError(f"{cls}({key}=...) must be a port from 1 to 65535, got {port!r}")
    return port


def _shown_repr(value: object) -> str:
    return repr(_shown(value)) if isinstance(value, str) else repr(value)


def _shown(value: object) -> str:
    """A value for a message: URLs without their user info (it may hold a password)."""
    text = str(value)
    if "@" in text and "://" in text:
        scheme, _, rest = text.partition("://")
        text = f"{scheme}://***@{rest.rpartition('@')[2]}"
    return text


# ------------------------------------------------------ boto3 resource settings
def _resource_settings(
    backend: str,
    cls: str,
    options: Mapping[str, Any],
    result: dict[str, Any],
    notes: list[tuple[str, str]],
) -> None:
    given: dict[str, Mapping[str, Any]] = {}
    for key in ("extra_settings", "sns_settings"):
        if key not in options or options[key] is None:
            continue
        settings = options[key]
        if not isinstance(settings, Mapping):
            raise ConfigurationError(
                f"{cls}({key}=...) must be a dict of boto3 resource arguments, got "
                f"{type(settings).__name__}"
            )
        for name in settings:
            if name not in RESOURCE_ARGUMENTS:
                raise ConfigurationError(
                    f"{cls}({key}={{{name!r}: ...}}): {name!r} is not a boto3 resource "
                    f"argument{did_you_mean(str(name), RESOURCE_ARGUMENTS)}"
                )
            if name in _NO_EQUIVALENT and settings[name] is not None:
                raise ConfigurationError(f"{cls}({key}={{{name!r}: ...}}): {_NO_EQUIVALENT[name]}")
        given[key] = settings
    if not given:
        return
    sqs, sns = given.get("extra_settings", {}), given.get("sns_settings", {})
    mapped = dict(result)
    _endpoints_from_settings(backend, cls, sqs, sns, result)
    for name in _SHARED:
        values = [s[name] for s in (sqs, sns) if s.get(name) is not None]
        if not values:
            continue
        if any(v != values[0] for v in values):
            raise ConfigurationError(
                f"{cls}(): extra_settings and sns_settings give different {name} values; "
                f"melange 8 uses one {name} for SQS and SNS"
            )
        result[name] = values[0]
    for key, settings in given.items():
        use_ssl = settings.get("use_ssl")
        if use_ssl is False and not _has_endpoint(backend, key, result):
            raise ConfigurationError(
                f"{cls}({key}={{'use_ssl': False}}): melange 8 has no use_ssl; the endpoint "
                "URL's scheme decides: pass endpoint_url='http://...'"
            )
    new = ", ".join(
        f"{name}=***" if name in _SECRETS else f"{name}={_shown_repr(value)}"
        for name, value in result.items()
        if name not in mapped
    )
    old = ", ".join(f"{key}={{{', '.join(map(repr, s))}}}" for key, s in given.items())
    notes.append((f"{cls}({old})", f"{cls}({new}) (use_ssl: the URL's scheme decides)"))


def _endpoints_from_settings(
    backend: str,
    cls: str,
    sqs: Mapping[str, Any],
    sns: Mapping[str, Any],
    result: dict[str, Any],
) -> None:
    sqs_url, sns_url = sqs.get("endpoint_url"), sns.get("endpoint_url")
    if backend == "aws" and sqs_url is not None and sqs_url == sns_url:
        targets = [("endpoint_url", sqs_url, "extra_settings")]
    else:
        sqs_target = "endpoint_url" if backend == "localsqs" else "sqs_endpoint_url"
        targets = [
            (sqs_target, sqs_url, "extra_settings"),
            ("sns_endpoint_url", sns_url, "sns_settings"),
        ]
    for target, url, key in targets:
        if url is None:
            continue
        if target in result and result[target] != url:
            raise ConfigurationError(
                f"{cls}(): {key}['endpoint_url'] and the host/port keywords give different "
                f"{target} values; pass only {target}="
            )
        result[target] = url


def _has_endpoint(backend: str, key: str, result: Mapping[str, Any]) -> bool:
    if backend == "localsqs" or "endpoint_url" in result:
        return True  # a local endpoint is http:// unless its URL says otherwise
    return ("sqs_endpoint_url" if key == "extra_settings" else "sns_endpoint_url") in result


class SQSOptions7x(TypedDict, total=False):
    """The 7.x keywords the SQS backends' constructors still take (for type checkers)."""

    sns_host: str
    sns_port: int | str
    extra_settings: Mapping[str, Any]
    sns_settings: Mapping[str, Any]
    max_number_of_messages: int
    visibility_timeout: int
    wait_time_seconds: int
