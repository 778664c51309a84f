"""How long each kind of call may take, with google-api-core's own timeout and retry machinery.

Every call passes ``timeout=`` (the deadline of the attempt, shrinking to what
is left of the whole) and ``retry=google.api_core.retry.Retry(timeout=...)``
(retries with backoff, never past the whole), so a call returns or raises
within about its time, black hole or not:

- admin calls (get, create, update, delete, list, the IAM policies of
  dead-letter permissions): ``timeout``;
- Publish: ``publish_timeout`` (``timeout`` unless set);
- Acknowledge and ModifyAckDeadline (ack, nack, lease extension): ``ack_timeout``
  (``timeout`` unless set);
- Pull: its deadline is the wait itself, since Pub/Sub's Pull has no wait of
  its own: the server holds the call until messages come or the deadline
  passes (then nothing came, and the receive returns empty). Pulls never set
  ``return_immediately`` (the service may answer it empty while messages
  wait), so even ``receive(wait_seconds=0)`` gives each pull a short deadline
  (``MIN_PULL`` in :mod:`melange_gcp.backend`). A pull whose connection drops
  under it at once is retried on a new one (:data:`PULL_RETRY_WINDOW`).

A connection that stops answering under a waiting pull is noticed by gRPC
keepalive pings (:mod:`melange_gcp.clients`), every ``keepalive_seconds``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from google.api_core import exceptions as api_exceptions
from google.api_core.retry import Retry, if_exception_type

from melange.exceptions import ConfigurationError

DEFAULT_TIMEOUT = 10.0
"""Seconds an admin call, a publish or an ack may take by default, retries included."""

DEFAULT_KEEPALIVE = 30.0
"""Seconds between keepalive pings on a busy connection: what Google's own Pub/Sub clients
use, and the shortest interval Google's front ends accept (shorter ones are answered with
GOAWAY ``too_many_pings``, which fails the calls in flight)."""

MIN_KEEPALIVE = 1.0
"""gRPC sends at most one ping a second."""

KEEPALIVE_ACK_TIMEOUT = 10.0
"""Seconds a keepalive ping may wait for its answer before the connection is dropped
(at most the interval itself)."""

RETRIED: tuple[type[Exception], ...] = (
    api_exceptions.ServiceUnavailable,
    api_exceptions.DeadlineExceeded,
    api_exceptions.Aborted,
    api_exceptions.InternalServerError,
    api_exceptions.Unknown,
    api_exceptions.ResourceExhausted,
)
"""Transient gRPC failures retried with backoff, as Google's own retry settings for Publish do."""

PULL_RETRIED: tuple[type[Exception], ...] = (
    api_exceptions.ServiceUnavailable,
    api_exceptions.Aborted,
    api_exceptions.InternalServerError,
    api_exceptions.Unknown,
)
"""Failures of a pull that Google's own Pull settings retry (a pull's deadline is its wait)."""

PULL_RETRY_WINDOW = 1.0
"""Seconds from a pull's start within which a failure of :data:`PULL_RETRIED` is retried.

A pull that fails this fast met a connection dropped under it (reset, recycled
by a front end, or one gRPC was still closing): a new one answers. A pull that
fails later met an outage (keepalive gave up on a silent connection), which
receive reports rather than hides by pulling again for the rest of its wait."""

_BACKOFF_START = 0.1
_BACKOFF_MULTIPLIER = 1.3
_BACKOFF_MAX = 2.0


def seconds(name: str, value: object, default: float) -> float:
    """Return ``value`` as seconds (``default`` for ``None``), or raise ConfigurationError."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(
            f"{name} must be a number of seconds, got {type(value).__name__} {value!r}; "
            f"e.g. {name}={default:g}"
        )
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(
            f"{name} must be a positive, finite number of seconds, got {value!r}; "
            f"e.g. {name}={default:g}"
        )
    return float(value)


@dataclass(frozen=True)
class CallTimeouts:
    """The time each kind of call may take, in seconds, retries included.

    Attributes:
        admin: Get, create, update, delete and list calls, and IAM policy calls.
        publish: One Publish request.
        ack: One Acknowledge or ModifyAckDeadline request.
        keepalive: Seconds between keepalive pings while calls are in flight.
    """

    admin: float
    publish: float
    ack: float
    keepalive: float

    @classmethod
    def of(
        cls,
        *,
        timeout: object,
        publish_timeout: object,
        ack_timeout: object,
        keepalive_seconds: object,
    ) -> CallTimeouts:
        """Validate the backend's options and return the timeouts they give.

        Raises:
            ConfigurationError: An option is not a positive number of seconds, or
                ``keepalive_seconds`` is below one second.
        """
        admin = seconds("timeout", timeout, DEFAULT_TIMEOUT)
        keepalive = seconds("keepalive_seconds", keepalive_seconds, DEFAULT_KEEPALIVE)
        if keepalive < MIN_KEEPALIVE:
            raise ConfigurationError(
                f"keepalive_seconds must be at least {MIN_KEEPALIVE:g} (gRPC pings at most once "
                f"a second), got {keepalive!r}; Google's front ends want {DEFAULT_KEEPALIVE:g} "
                "or more"
            )
        return cls(
            admin=admin,
            publish=seconds("publish_timeout", publish_timeout, admin),
            ack=seconds("ack_timeout", ack_timeout, admin),
            keepalive=keepalive,
        )

    @property
    def keepalive_ack(self) -> float:
        """Seconds a keepalive ping waits for its answer."""
        return min(KEEPALIVE_ACK_TIMEOUT, self.keepalive)

    @property
    def longest(self) -> float:
        """The longest time a call other than a waiting pull may take."""
        return max(self.admin, self.publish, self.ack)


def retry(total: float, on_error: Callable[[Exception], None] | None = None) -> Retry:
    """Return Google's Retry for a call of ``total`` seconds, retries included.

    Args:
        total: Seconds the call may take in all (``Retry(timeout=...)``).
        on_error: Called with each failure that is retried (to tell later
            whether an earlier attempt may have reached the server).
    """
    return Retry(
        predicate=if_exception_type(*RETRIED),
        initial=_BACKOFF_START,
        maximum=min(_BACKOFF_MAX, total),
        multiplier=_BACKOFF_MULTIPLIER,
        timeout=total,
        on_error=on_error,
    )


def pull_retry(deadline: float) -> Retry:
    """Return Google's Retry for a pull of ``deadline`` seconds (see :data:`PULL_RETRY_WINDOW`)."""
    window = min(deadline, PULL_RETRY_WINDOW)
    return Retry(
        predicate=if_exception_type(*PULL_RETRIED),
        initial=_BACKOFF_START,
        maximum=window,
        multiplier=_BACKOFF_MULTIPLIER,
        timeout=window,
    )
