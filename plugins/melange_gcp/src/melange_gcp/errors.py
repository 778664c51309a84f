"""gRPC and google-auth errors translated into melange's exceptions.

Only the status code, the first words of the server's own message and what
melange was doing go into a message (the server's whole text is logged at
DEBUG): never credentials, tokens or key material. google-auth's messages may
quote a key file, so they are summarized by their kind and not chained.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import NoReturn

from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions

from melange.exceptions import (
    BackendUnavailable,
    BrokerError,
    InvalidMessage,
    InvalidTopology,
    MelangeError,
    OutcomeUnknown,
    QueueNotFound,
    TopicNotFound,
    raise_unchained,
)

logger = logging.getLogger("melange.gcp.errors")

GOOGLE_ERRORS: tuple[type[Exception], ...] = (
    api_exceptions.GoogleAPIError,
    auth_exceptions.GoogleAuthError,
)
"""What a call through the Google clients raises; everything else is a bug, not translated."""

CREDENTIALS_HINT = (
    "set up Application Default Credentials (`gcloud auth application-default login`, "
    "GOOGLE_APPLICATION_CREDENTIALS naming a service-account key file, or the attached "
    "service account on Google Cloud), or point the backend at an emulator with "
    "emulator_host / PUBSUB_EMULATOR_HOST"
)


@dataclass(frozen=True)
class ErrorContext:
    """What was being done when an error happened, for the message.

    Attributes:
        action: What melange tried, e.g. ``"create queue 'orders'"``.
        endpoint: The Pub/Sub endpoint (host:port) in use.
        queue: The queue concerned, for QueueNotFound.
        topic: The topic concerned, for TopicNotFound.
        about_messages: Whether a refusal is about the messages (InvalidMessage)
            rather than the topology (InvalidTopology).
    """

    action: str
    endpoint: str
    queue: str | None = None
    topic: str | None = None
    about_messages: bool = False


def status_name(error: Exception) -> str:
    """Return the gRPC status name of a Google API error (``"NOT_FOUND"``), or the class name."""
    code = getattr(error, "grpc_status_code", None)
    name = getattr(code, "name", None)
    return str(name) if name else type(error).__name__


def server_message(error: Exception) -> str:
    """Return the server's own explanation, without the client's decorations."""
    message = getattr(error, "message", None)
    return str(message) if message else type(error).__name__


SUMMARY_WORDS = 24
SUMMARY_CHARS = 160
_MARKUP = re.compile(r"<[^>]{0,200}>")


def summary(text: str) -> str:
    """Return the first words of ``text`` on one line (markup dropped), for an error message."""
    words = _MARKUP.sub(" ", text).split()
    line = " ".join(words[:SUMMARY_WORDS])
    if len(line) > SUMMARY_CHARS:
        line = line[:SUMMARY_CHARS].rsplit(" ", 1)[0] or line[:SUMMARY_CHARS]
    if len(words) > SUMMARY_WORDS or len(line) < len(" ".join(words)):
        line += " ..."
    return line or "(no text)"


def translate(
    error: Exception, context: ErrorContext, *, outcome_unknown: bool = False
) -> MelangeError:
    """Return the melange error for a Google client error raised trying ``context.action``.

    Args:
        error: What the Google client raised.
        context: What melange was doing.
        outcome_unknown: The request may have reached Pub/Sub and been stored
            (a publish without an answer): the error is an OutcomeUnknown.
    """
    where = f"trying to {context.action} (Pub/Sub at {context.endpoint})"
    if isinstance(error, auth_exceptions.GoogleAuthError):
        # google-auth messages can quote key files: keep only the kind of failure.
        return BackendUnavailable(
            f"Google credentials failed ({type(error).__name__}) {where}; {CREDENTIALS_HINT}"
        )
    if isinstance(error, api_exceptions.RetryError) and isinstance(error.cause, Exception):
        error = error.cause  # Google's retry gave up: the last attempt's error says why
        retried = " after retries"
    else:
        retried = ""
    code = status_name(error)
    full = server_message(error)
    logger.debug("Pub/Sub %s %s%s: %s", code, where, retried, full)
    detail = summary(full)
    if outcome_unknown:
        return _with_code(
            OutcomeUnknown(
                f"no answer from Pub/Sub {where}{retried} ({code}: {detail}): the request may "
                "have reached it, so the messages may have been stored; publishing them again "
                "may make duplicates, which a consumer with a deduplication cache handles once"
            ),
            code,
        )
    if isinstance(error, api_exceptions.NotFound):
        if context.queue is not None:
            return QueueNotFound(context.queue)
        if context.topic is not None:
            return TopicNotFound(context.topic)
    if isinstance(error, api_exceptions.Unauthenticated):
        return _with_code(
            BackendUnavailable(
                f"Pub/Sub refused the credentials {where}: {detail}; {CREDENTIALS_HINT}"
            ),
            code,
        )
    if isinstance(error, api_exceptions.PermissionDenied):
        return _with_code(
            BackendUnavailable(
                f"permission denied {where}: {detail}. Grant the principal a Pub/Sub role "
                "that allows it (e.g. roles/pubsub.editor), or check the project"
            ),
            code,
        )
    unreachable = (
        api_exceptions.ServiceUnavailable,
        api_exceptions.DeadlineExceeded,
        api_exceptions.RetryError,
    )
    if isinstance(error, unreachable):
        return _with_code(
            BackendUnavailable(
                f"Pub/Sub did not answer {where}{retried} ({code}: {detail}); check the "
                "network, or that the emulator is running when emulator_host / "
                "PUBSUB_EMULATOR_HOST is set"
            ),
            code,
        )
    if isinstance(error, (api_exceptions.InvalidArgument, api_exceptions.FailedPrecondition)):
        kind = InvalidMessage if context.about_messages else InvalidTopology
        return _with_code(kind(f"Pub/Sub refused {where}: {detail} ({code})"), code)
    return BrokerError(f"Pub/Sub failed {where}: {detail} ({code})", broker_code=code)


def _with_code(error: MelangeError, code: str) -> MelangeError:
    error.broker_code = code
    return error


def raise_translated(
    error: Exception, context: ErrorContext, *, outcome_unknown: bool = False
) -> NoReturn:
    """Raise :func:`translate`'s error, chained to ``error`` unless that may hold secrets."""
    translated = translate(error, context, outcome_unknown=outcome_unknown)
    if isinstance(error, auth_exceptions.GoogleAuthError):
        raise_unchained(translated)  # its text may quote key material
    raise translated from error
