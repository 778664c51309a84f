"""Translation of azure-core and azure-servicebus errors into melange's exceptions.

Every error the backend raises because of Service Bus goes through
:func:`translate`: QueueNotFound / TopicNotFound for a missing entity,
BackendUnavailable for an unreachable namespace or refused credentials,
LeaseLost for a lost lock, else :class:`~melange.exceptions.BrokerError`. The
Azure error code (the HTTP status of the administration API, or the AMQP error
condition such as ``amqp:not-found``) is kept as ``broker_code``. A send that
failed after its messages went out is :func:`send_outcome`'s business: its
messages may have been stored (:class:`~melange.exceptions.OutcomeUnknown`).

No message carries a secret: every text that leaves this module is passed
through :func:`scrub`, which removes the configured connection string and key
and anything shaped like a SAS key or signature, and the Azure exception is
neither chained nor left as the context of the melange error (its text and its
own chain may hold the token that was sent). A broker's text is summarised to
one line in the message (markup dropped, at most :data:`SUMMARY_LENGTH`
characters); the whole text, scrubbed, is logged at DEBUG.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from azure.core import exceptions as core_errors
from azure.servicebus import exceptions as sb_errors

from melange.exceptions import (
    BackendUnavailable,
    BrokerError,
    LeaseLost,
    MelangeError,
    OutcomeUnknown,
    QueueNotFound,
    TopicNotFound,
)

logger = logging.getLogger("melange.azure.errors")

REDACTED = "<redacted>"

SUMMARY_LENGTH = 200
"""Characters of a broker's text kept in an error message."""

_MARKUP = re.compile(r"<[^>]{0,200}>")
_SPACE = re.compile(r"\s+")

_SECRET_SHAPES = (
    # Connection-string fields: the key and a pre-made signature.
    re.compile(r"(?i)(SharedAccessKey\s*=\s*)[^;\s\"'&]+"),
    re.compile(r"(?i)(SharedAccessSignature\s*=\s*)[^;\s\"']+"),
    # A SAS token as sent in headers and CBS puts: "SharedAccessSignature sr=...&sig=...".
    re.compile(r"(?i)(SharedAccessSignature\s+)[^\s\"',;]+"),
    re.compile(r"(?i)((?:^|[?&\s])sig=)[^&\s\"',;]+"),
    # OAuth bearer tokens from a credential.
    re.compile(r"(?i)(Bearer\s+)[A-Za-z0-9._~+/=-]+"),
    # The password of credentials inside a URL: scheme://user:password@host.
    re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^@\s/]+(?=@)"),
)

CREDENTIALS_HINT = (
    "Check the connection string (MELANGE_OPTION_CONNECTION_STRING or the connection_string "
    "option): its SharedAccessKeyName and SharedAccessKey must name a policy of this namespace "
    "with Manage rights; with fully_qualified_namespace, the credential needs the 'Azure Service "
    "Bus Data Owner' role"
)
UNREACHABLE_HINT = (
    "Check the namespace in the connection string or fully_qualified_namespace (and "
    "management_url when the administration API is elsewhere), and that it is reachable from "
    "this process"
)

MISSING_CONDITIONS = frozenset({"amqp:not-found", "com.microsoft:entity-not-found"})
QUOTA_CONDITIONS = frozenset({"amqp:resource-limit-exceeded", "com.microsoft:quota-exceeded"})
QUOTA_HINT = (
    "The entity is full (MaxSizeInMegabytes): receive and acknowledge its messages; for a "
    "topic, look for a subscription that keeps messages nobody receives, such as one "
    "forwarding to a queue deleted outside melange, and delete it"
)
LOCK_LOST_CONDITIONS = frozenset(
    {"com.microsoft:message-lock-lost", "com.microsoft:session-lock-lost"}
)


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """Return ``text`` without the given secrets and without anything shaped like one."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    for shape in _SECRET_SHAPES:
        text = shape.sub(lambda match: match.group(1) + REDACTED, text)
    return text


@dataclass(frozen=True)
class ErrorContext:
    """What the backend was doing when Service Bus refused, for the message.

    Attributes:
        action: What was attempted, e.g. ``"create queue 'orders'"``.
        queue: The queue involved, for QueueNotFound.
        topic: The topic involved, for TopicNotFound.
        message_id: The message involved, for LeaseLost.
        secrets: Strings to keep out of the message.
    """

    action: str
    queue: str | None = None
    topic: str | None = None
    message_id: str | None = None
    secrets: tuple[str, ...] = field(default=(), repr=False)


def error_code(error: BaseException) -> str | None:
    """Return Azure's code for ``error``: the AMQP condition or the HTTP status, if any."""
    condition = getattr(error, "_condition", None)
    if condition:
        return str(condition)
    status = getattr(error, "status_code", None)
    if status is None:
        status = getattr(error, "_status_code", None)
    return None if status is None else str(status)


def summarize(text: str) -> str:
    """One line of a broker's text: markup dropped, spaces collapsed, cut at SUMMARY_LENGTH."""
    line = _SPACE.sub(" ", _MARKUP.sub(" ", text)).strip()
    if len(line) > SUMMARY_LENGTH:
        line = line[: SUMMARY_LENGTH - 3].rstrip() + "..."
    return line


def _detail(error: BaseException, secrets: Iterable[str]) -> str:
    """The error's text for a message: scrubbed, on one line; the whole of it at DEBUG."""
    text = str(getattr(error, "message", None) or error or "").strip()
    if not text:
        return type(error).__name__
    cleaned = scrub(text, secrets)
    short = summarize(cleaned) or type(error).__name__
    if short != cleaned.strip():
        logger.debug("Service Bus said (%s): %s", type(error).__name__, cleaned)
    return short


def did_not_answer(context: ErrorContext, seconds: float) -> BackendUnavailable:
    """The error of a call that melange's deadline ended (nothing answered in ``seconds``)."""
    return BackendUnavailable(
        f"could not {context.action}: Service Bus did not answer within "
        f"{round(seconds, 1):g} s (the connection was closed). {UNREACHABLE_HINT}"
    )


REFUSED_SENDS = (
    sb_errors.MessageSizeExceededError,
    sb_errors.MessagingEntityNotFoundError,
    sb_errors.ServiceBusQuotaExceededError,
)
"""What a send raises when Service Bus (or the SDK, before sending) refused the messages:
nothing was stored."""


def send_outcome(
    error: BaseException, context: ErrorContext, *, expired: bool, seconds: float
) -> MelangeError:
    """The error of a send that failed after its link was open.

    The messages went out (or may have): unless Service Bus refused them
    outright (too large, no such entity) or the SDK refused them before
    sending, the outcome is unknown: no confirmation came, they may be stored.
    The SDK retries a send over a new connection, so even a last attempt that
    could not connect says nothing about the earlier ones.

    Args:
        error: What the send raised.
        context: What was being done.
        expired: Whether melange's deadline ended the send.
        seconds: The send's budget.
    """
    if isinstance(error, REFUSED_SENDS) or (
        # The SDK's own checks, before anything went out (not an Azure error).
        isinstance(error, (ValueError, TypeError)) and not isinstance(error, core_errors.AzureError)
    ):
        return translate(error, context)
    if expired:
        why = f"no confirmation came within {round(seconds, 1):g} s (melange closed the connection)"
    else:
        code = error_code(error)
        cause = f"{type(error).__name__}{f' {code}' if code else ''}"
        why = f"no confirmation came ({cause}: {_detail(error, context.secrets)})"
    unknown = OutcomeUnknown(
        f"{context.action}: the message(s) were sent but {why}; they may have been stored. "
        "Publishing them again may store duplicates, which consumers with a deduplication "
        "cache handle once (they key on the producer id)"
    )
    unknown.broker_code = error_code(error)
    return unknown


def translate(error: BaseException, context: ErrorContext) -> MelangeError:
    """Return the melange exception for ``error``, which happened during ``context.action``."""
    if isinstance(error, MelangeError):
        return error
    code = error_code(error)
    detail = _detail(error, context.secrets)
    where = f"Service Bus refused to {context.action}"
    translated: MelangeError
    missing = isinstance(
        error, (core_errors.ResourceNotFoundError, sb_errors.MessagingEntityNotFoundError)
    ) or (code in MISSING_CONDITIONS)
    if missing and (context.queue is not None or context.topic is not None):
        if context.topic is not None:
            translated = TopicNotFound(context.topic)
        else:
            translated = QueueNotFound(str(context.queue))
    elif isinstance(
        error,
        (
            core_errors.ClientAuthenticationError,
            sb_errors.ServiceBusAuthenticationError,
            sb_errors.ServiceBusAuthorizationError,
        ),
    ) or code in {"401", "403", "amqp:unauthorized-access"}:
        translated = BackendUnavailable(
            f"{where}: the credentials were refused ({code or type(error).__name__}). "
            f"{CREDENTIALS_HINT}"
        )
    elif isinstance(
        error,
        (
            core_errors.ServiceRequestError,
            core_errors.ServiceResponseError,
            sb_errors.ServiceBusConnectionError,
            sb_errors.ServiceBusCommunicationError,
            sb_errors.OperationTimeoutError,
            sb_errors.ServiceBusServerBusyError,
        ),
    ):
        translated = BackendUnavailable(
            f"could not {context.action}: Service Bus did not answer ({detail}). {UNREACHABLE_HINT}"
        )
    elif (
        isinstance(error, (sb_errors.MessageLockLostError, sb_errors.SessionLockLostError))
        or code in LOCK_LOST_CONDITIONS
    ) and context.message_id is not None:
        translated = LeaseLost(
            context.message_id,
            str(context.queue),
            "Service Bus no longer holds its lock (it expired and the message was delivered "
            "again, or it was settled)",
        )
    elif isinstance(error, sb_errors.ServiceBusQuotaExceededError) or code in QUOTA_CONDITIONS:
        translated = BrokerError(f"{where}: {detail}. {QUOTA_HINT}", broker_code=code)
    else:
        translated = BrokerError(f"{where}: {detail}", broker_code=code)
    translated.broker_code = code
    return translated
