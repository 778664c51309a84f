"""Whether a failed Publish may have stored its messages: refused or unknown.

melange's publish outcomes (docs/publishing.md): *refused* promises that
nothing was stored, *unknown* says the messages may have been. gRPC's status
codes do not always say which, so the rule leans to unknown, as an
at-least-once library must: calling a stored message "refused" invites a
silent duplicate or a lost trace of it, while calling a refused one "unknown"
only costs a retry that a deduplicating consumer absorbs.

Refused (nothing sent, or the service said no):

- ``UNAVAILABLE`` whose gRPC text says the channel never connected ("failed to
  connect to all addresses", a name that does not resolve): gRPC sends a
  request only on a connected transport, and says so in exactly these words;
- ``INVALID_ARGUMENT``, ``NOT_FOUND``, ``PERMISSION_DENIED``,
  ``UNAUTHENTICATED``, ``FAILED_PRECONDITION``, ``RESOURCE_EXHAUSTED``,
  ``OUT_OF_RANGE``, ``UNIMPLEMENTED``, ``ALREADY_EXISTS``: the service read the
  request and refused it;
- google-auth failures: the credentials were refreshed before anything was sent.

Unknown: everything else, namely ``DEADLINE_EXCEEDED`` (the answer may be on its
way), ``UNAVAILABLE`` on a connection that was up (reset, closed, GOAWAY after
the request was written; or the service's own "try again", which does not
promise that nothing was stored), ``CANCELLED``, ``INTERNAL``, ``UNKNOWN``,
``ABORTED``, ``DATA_LOSS``. And when Google's retry gave up after several
attempts, the outcome is unknown if *any* attempt may have reached the service:
a later "connection refused" does not undo an earlier lost answer.
"""

from __future__ import annotations

from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions

NEVER_CONNECTED = (
    "failed to connect to all addresses",
    "errors resolving",
    "dns resolution failed",
    "name resolution failure",
)
"""gRPC's words (lowercase) for a call that failed before any transport was up."""

REFUSALS: tuple[type[Exception], ...] = (
    api_exceptions.InvalidArgument,
    api_exceptions.NotFound,
    api_exceptions.PermissionDenied,
    api_exceptions.Unauthenticated,
    api_exceptions.FailedPrecondition,
    api_exceptions.ResourceExhausted,
    api_exceptions.OutOfRange,
    api_exceptions.MethodNotImplemented,
    api_exceptions.AlreadyExists,
)
"""Errors that say the service read the request and refused it (nothing stored)."""


def last_error(error: Exception) -> Exception:
    """Return the error of the last attempt (Google's RetryError wraps it)."""
    if isinstance(error, api_exceptions.RetryError) and isinstance(error.cause, Exception):
        return error.cause
    return error


def never_connected(error: Exception) -> bool:
    """Whether gRPC says the call failed before any connection was up."""
    if not isinstance(error, api_exceptions.ServiceUnavailable):
        return False
    text = str(getattr(error, "message", "") or "").lower()
    return any(words in text for words in NEVER_CONNECTED)


def may_have_been_stored(error: Exception) -> bool:
    """Whether the request that failed with ``error`` may have been stored by Pub/Sub."""
    error = last_error(error)
    if isinstance(error, auth_exceptions.GoogleAuthError):
        return False
    if isinstance(error, api_exceptions.ServiceUnavailable):
        return not never_connected(error)
    return not isinstance(error, REFUSALS)


class Attempts:
    """Records the failed attempts of one call, as Google's Retry reports them (``on_error``)."""

    __slots__ = ("reached",)

    def __init__(self) -> None:
        self.reached = False

    def failed(self, error: Exception) -> None:
        """Note one failed attempt that Retry is about to retry."""
        if not self.reached and may_have_been_stored(error):
            self.reached = True

    def may_have_been_stored(self, final: Exception) -> bool:
        """Whether any attempt, the final one ``final`` included, may have been stored."""
        return self.reached or may_have_been_stored(final)
