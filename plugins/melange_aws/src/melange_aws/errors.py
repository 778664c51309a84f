"""Translation of botocore errors into melange's exceptions.

Every error the backend raises because of AWS goes through :func:`translate`:
the specific melange exception when there is one (QueueNotFound,
TopicNotFound, MessageTooLarge, BackendUnavailable), else
:class:`~melange.exceptions.BrokerError`; AWS's error code is kept as
``broker_code``. Messages never contain a credential: errors about
credentials and permissions carry only the error code (AWS's text and the
botocore exception are dropped), other AWS texts are scrubbed of anything that
looks like an access key and of the user info of the endpoint URLs, endpoints
are shown without user info, and a botocore exception whose text (or whose own
causes) held a secret is not chained.

What the broker said is summarised to one line (HTTP status when it is not a
regular AWS error, the code, the first words, at most :data:`SUMMARY_LIMIT`
characters): an HTML error page of a proxy or load balancer does not end up in
a message whole. The full text is logged at DEBUG on this module's logger.
"""

from __future__ import annotations

import html
import http
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NoReturn
from urllib.parse import unquote, urlsplit, urlunsplit

from botocore import exceptions as botocore_errors  # type: ignore[import-untyped]

from melange.exceptions import (
    BackendUnavailable,
    BrokerError,
    InvalidMessage,
    MelangeError,
    MessageTooLarge,
    QueueNotFound,
    TopicNotFound,
    raise_unchained,
)
from melange_aws.wire import MESSAGE_LIMIT

logger = logging.getLogger("melange.aws.errors")

SUMMARY_LIMIT = 160
"""The most characters of the broker's own text that a message quotes."""

QUEUE_MISSING = frozenset(
    {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "NonExistentQueue"}
)
TOPIC_MISSING = frozenset({"NotFound", "NotFoundException", "ResourceNotFound"})
ACCESS_REFUSED = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "AuthorizationError",
        "AuthFailure",
        "ExpiredToken",
        "ExpiredTokenException",
        "IncompleteSignature",
        "InvalidAccessKeyId",
        "InvalidClientTokenId",
        "InvalidSecurity",
        "KMSAccessDenied",
        "MissingAuthenticationToken",
        "OptInRequired",
        "RequestExpired",
        "SignatureDoesNotMatch",
        "UnrecognizedClientException",
    }
)
UNAVAILABLE = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "ServiceUnavailable",
        "InternalError",
        "InternalFailure",
        "KMSThrottling",
        "KMSThrottlingException",
    }
)
TOO_LARGE = frozenset(
    {
        "AWS.SimpleQueueService.BatchRequestTooLong",
        "BatchRequestTooLong",
        "MessageTooLong",
        "AWS.SimpleQueueService.MessageTooLong",
    }
)
RECEIPT_INVALID = frozenset(
    {
        "ReceiptHandleIsInvalid",
        "AWS.SimpleQueueService.ReceiptHandleIsInvalid",
        "MessageNotInflight",
        "AWS.SimpleQueueService.MessageNotInflight",
    }
)
DELETED_RECENTLY = frozenset(
    {"AWS.SimpleQueueService.QueueDeletedRecently", "QueueDeletedRecently"}
)

CONNECTION_ERRORS = (
    botocore_errors.EndpointConnectionError,
    botocore_errors.ConnectionClosedError,
    botocore_errors.ConnectTimeoutError,
    botocore_errors.ReadTimeoutError,
    botocore_errors.ProxyConnectionError,
    botocore_errors.SSLError,
    botocore_errors.HTTPClientError,
)
"""Every botocore error of the network, whether or not a request went out."""

NOT_CONNECTED = (botocore_errors.EndpointConnectionError, botocore_errors.ConnectTimeoutError)
"""No connection could be made (refused, no route, DNS, connect timeout): nothing answers there."""

CREDENTIAL_ERRORS = (
    botocore_errors.NoCredentialsError,
    botocore_errors.PartialCredentialsError,
    botocore_errors.CredentialRetrievalError,
    botocore_errors.TokenRetrievalError,
    botocore_errors.SSOError,
    botocore_errors.ProfileNotFound,
)

CREDENTIALS_HINT = (
    "Configure credentials the usual AWS way (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
    "AWS_PROFILE or ~/.aws/config, an instance or container role) or pass profile_name or "
    "aws_access_key_id and aws_secret_access_key; the IAM permissions melange needs are "
    "listed in docs/backends/aws.md"
)
DEFAULT_UNREACHABLE_HINT = (
    "Check the region_name and endpoint_url options (or AWS_REGION, AWS_ENDPOINT_URL and "
    "AWS_ENDPOINT_URL_<SERVICE>), and that the endpoint is up and reachable from this process"
)
NO_ANSWER_HINT = (
    "The endpoint took the connection, so something runs there: check that it is the SQS/SNS "
    "endpoint and that it is healthy, or raise the read_timeout or max_attempts option"
)

# Access key ids (AKIA... long-term, ASIA... temporary) are not secret keys, but stay out too.
_ACCESS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{12,}\b")
_HIDDEN_MARKUP = re.compile(r"<(script|style)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]*>")


@dataclass(frozen=True)
class ErrorContext:
    """What the backend was doing when AWS answered with an error.

    Attributes:
        action: What was attempted, as a verb phrase (``"publish to queue 'orders'"``).
        endpoint: The endpoint called, for connection errors.
        queue: The queue involved, for QueueNotFound.
        topic: The topic involved, for TopicNotFound.
        size: The message's size on the wire, for MessageTooLarge.
        unreachable_hint: How to fix an endpoint that cannot be reached.
        backend_name: The backend's registered name, for messages.
        secrets: Strings that must never appear in a message.
        service: Who was called, as messages name it: ``"SQS"``, ``"SNS"`` or
            ``"STS"`` (an emulator answers for AWS, so "AWS" would mislead).
        read_timeout: The client's read timeout in seconds (a long poll's includes
            its wait), for read timeouts.
    """

    action: str
    endpoint: str
    queue: str | None = None
    topic: str | None = None
    size: int | None = None
    unreachable_hint: str = DEFAULT_UNREACHABLE_HINT
    backend_name: str = "aws"
    secrets: tuple[str, ...] = field(default=(), repr=False)
    service: str = "AWS"
    read_timeout: float | None = None


def safe_endpoint(url: str | None) -> str:
    """Return ``url`` without user info or query (which could hold credentials)."""
    if not url:
        return "the default AWS endpoint"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<unparsable endpoint>"
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def without_user_info(url: str) -> str:
    """Return ``url`` as written, but for its user info (``user:password@``) and query, as ``***``.

    For URLs too malformed for :func:`safe_endpoint` to parse, quoted in their error.
    """
    url = re.sub(r"\?[^#]*", "?***", url, count=1)  # a query string may hold a token
    return re.sub(r"^([^/@]*//)?[^/@]*@", lambda match: f"{match.group(1) or ''}***@", url)


def url_secrets(url: str | None) -> tuple[str, ...]:
    """Return the secrets of an endpoint URL, as written and decoded.

    They are its user info and password, and its query string, which may hold
    a token: ``http://admin:pw@host`` gives ``admin:pw`` and ``pw``;
    ``http://token@host`` gives ``token``; ``http://host/?token=t`` gives
    ``token=t``. A user name alone is not secret when a password follows it
    (redacting a common word such as ``admin`` everywhere would garble messages).
    """
    if not url:
        return ()
    try:
        parts = urlsplit(url)
    except ValueError:
        return ()
    found = []
    userinfo, at, _ = parts.netloc.rpartition("@")
    if at and userinfo:
        found.append(userinfo)
        if ":" in userinfo:
            found.append(userinfo.split(":", 1)[1])
    if parts.query:
        found.append(parts.query)
    found += [unquote(value) for value in found]
    return tuple(dict.fromkeys(value for value in found if value))


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """Remove credentials (given ``secrets`` and anything shaped like an access key id)."""
    for secret in sorted(secrets, key=len, reverse=True):  # "user:pw" before "pw"
        if secret:
            text = text.replace(secret, "<redacted>")
    return _ACCESS_KEY_ID.sub("<redacted>", text)


def summarize(text: str, limit: int = SUMMARY_LIMIT) -> str:
    """Return ``text`` as one line of at most ``limit`` characters.

    Markup (an HTML error page) loses its tags, scripts and styles, and its
    entities are decoded; whitespace is collapsed; a longer text is cut at a
    word and ends with an ellipsis.
    """
    if text.lstrip().startswith("<"):
        text = html.unescape(_TAG.sub(" ", _HIDDEN_MARKUP.sub(" ", text)))
    line = " ".join(text.split())
    if len(line) <= limit:
        return line
    cut = line[: limit - 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut) + "\u2026"


def http_status(error: BaseException) -> int | None:
    """Return the HTTP status of a ClientError's answer, when known."""
    if isinstance(error, botocore_errors.ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return status if isinstance(status, int) else None
    return None


def describe(code: str, text: str, status: int | None, context: ErrorContext) -> str:
    """Return what the broker answered, for the parentheses of a message.

    ``InvalidParameterValue: Value x is invalid`` for a regular AWS error; the
    HTTP status leads when the answer is not one (a 5xx, or no AWS error code):
    ``HTTP 502 Bad Gateway: <first words of the page>``. The full text, when
    the summary left part of it out, is logged at DEBUG.
    """
    full = scrub(text, context.secrets)
    summary = summarize(full)
    regular = code not in ("", "Unknown") and not code.isdigit()
    if status is not None and (status >= 500 or not regular):
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        head = " ".join(part for part in (f"HTTP {status}", code if regular else phrase) if part)
    else:
        head = code or "Unknown"
    if summary != " ".join(full.split()):
        logger.debug(
            "%s answered %s to %s; its whole text: %s", context.service, head, context.action, full
        )
    return f"{head}: {summary}" if summary else head


def error_code(error: BaseException) -> str | None:
    """Return AWS's error code of a ClientError, else ``None``."""
    if isinstance(error, botocore_errors.ClientError):
        code = error.response.get("Error", {}).get("Code")
        return str(code) if code else "Unknown"
    return None


def entry_error(
    code: str, message: str, context: ErrorContext, status: int | None = None
) -> MelangeError:
    """Translate an error AWS reports for one entry of a batch (or for one call).

    Args:
        code: AWS's error code.
        message: AWS's text (summarised; logged whole at DEBUG).
        context: What was being done.
        status: The HTTP status of the answer, for a whole call.
    """
    # Without a status (a batch entry) an empty text is said to be empty; with one, the
    # status's phrase says enough.
    said = describe(code, message or ("" if status is not None else "no details"), status, context)
    error: MelangeError
    if code in QUEUE_MISSING and context.queue is not None:
        error = QueueNotFound(context.queue)
    elif code in TOPIC_MISSING and context.topic is not None:
        error = TopicNotFound(context.topic)
    elif code in ACCESS_REFUSED:
        error = BackendUnavailable(
            f"{context.service} refused to {context.action} ({code}): the credentials are "
            f"missing, invalid or expired, or lack a permission. {CREDENTIALS_HINT}"
        )
    elif code in UNAVAILABLE:
        error = BackendUnavailable(
            f"{context.service} at {safe_endpoint(context.endpoint)} could not "
            f"{context.action} ({said}), even after botocore's retries; "
            "retry later, or raise the max_attempts option"
        )
    elif code in TOO_LARGE or (
        context.size is not None
        and any(words in message.lower() for words in ("too long", "large"))
    ):
        error = (
            MessageTooLarge(context.size, MESSAGE_LIMIT, context.backend_name)
            if context.size is not None
            else BrokerError(
                f"{context.service} refused to {context.action} as too large ({said})",
                broker_code=code,
            )
        )
    elif code in DELETED_RECENTLY:
        error = BrokerError(
            f"{context.service} refused to {context.action} ({code}): SQS does not let a queue be "
            "created within 60 seconds of deleting one of the same name; wait a minute and init "
            "again",
            broker_code=code,
        )
    else:
        # A 5xx is a failure on the broker's side, not a refusal of the request.
        verb = "failed to" if status is not None and status >= 500 else "refused to"
        error = BrokerError(f"{context.service} {verb} {context.action} ({said})", broker_code=code)
    error.broker_code = code
    return error


def connection_failure(error: BaseException, context: ErrorContext) -> str:
    """Say what went wrong on the network, in words: ``no answer within read_timeout=10 s``."""
    if isinstance(error, NOT_CONNECTED):
        return "no connection could be made"
    if isinstance(error, botocore_errors.ReadTimeoutError):
        if context.read_timeout is None:
            return "no answer within the read timeout"
        return f"no answer within {context.read_timeout:g} s (the read timeout)"
    if isinstance(error, botocore_errors.ConnectionClosedError):
        return "the connection was closed or reset before an answer came"
    if isinstance(error, botocore_errors.ProxyConnectionError):
        return "no connection could be made through the HTTP(S) proxy"
    if isinstance(error, botocore_errors.SSLError):
        return "the TLS connection failed"
    return "the HTTP connection failed"


def translate(error: Exception, context: ErrorContext) -> MelangeError:
    """Translate a botocore exception raised while doing ``context.action``."""
    code = error_code(error)
    if code is not None:
        assert isinstance(error, botocore_errors.ClientError)
        message = str(error.response.get("Error", {}).get("Message") or "")
        return entry_error(code, message, context, http_status(error))
    where = f"the {context.service} endpoint {safe_endpoint(context.endpoint)}"
    name = type(error).__name__
    if isinstance(error, NOT_CONNECTED):
        # Only here: "nothing answers there" would mislead after a reset or a timeout.
        return BackendUnavailable(
            f"cannot reach {where} to {context.action} ({name}). {context.unreachable_hint}"
        )
    if isinstance(error, (botocore_errors.ProxyConnectionError, botocore_errors.SSLError)):
        return BackendUnavailable(
            f"cannot reach {where} to {context.action}: {connection_failure(error, context)} "
            f"({name}). {DEFAULT_UNREACHABLE_HINT}"
        )
    if isinstance(error, CONNECTION_ERRORS):
        return BackendUnavailable(
            f"{where} did not answer the request to {context.action}: "
            f"{connection_failure(error, context)} ({name}), even after botocore's retries. "
            f"{NO_ANSWER_HINT}"
        )
    if isinstance(error, CREDENTIAL_ERRORS):
        return BackendUnavailable(
            f"no usable AWS credentials to {context.action} ({name}). {CREDENTIALS_HINT}"
        )
    if isinstance(error, botocore_errors.ParamValidationError):
        return InvalidMessage(
            f"botocore refused the parameters to {context.action}: "
            f"{summarize(scrub(str(error), context.secrets))}"
        )
    return BrokerError(
        f"unexpected error from botocore while trying to {context.action}: "
        f"{name}: {summarize(scrub(str(error), context.secrets))}"
    )


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and every exception chained to it (causes and contexts), each once."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending += [e for e in (current.__cause__, current.__context__) if e is not None]
        # botocore keeps the HTTP library's exception as an argument, not always chained.
        kwargs = getattr(current, "kwargs", None)
        inner = kwargs.get("error") if isinstance(kwargs, dict) else None
        if isinstance(inner, BaseException):
            pending.append(inner)


def is_sensitive(error: BaseException, secrets: Iterable[str] = ()) -> bool:
    """Whether ``error`` or an exception chained to it could reveal credentials.

    Such an error must not be chained. Errors about credentials or permissions
    are, and so is any error whose text, or the text of one of its causes,
    contains one of ``secrets`` or something shaped like an access key id.
    """
    if isinstance(error, CREDENTIAL_ERRORS) or error_code(error) in ACCESS_REFUSED:
        return True
    secrets = tuple(secrets)
    for link in _chain(error):
        for text in (str(link), repr(link)):
            if scrub(text, secrets) != text:
                return True
    return False


def raise_translated(error: Exception, context: ErrorContext) -> NoReturn:
    """Raise :func:`translate`'s error, chained to ``error`` unless that could leak credentials.

    When it could, the error is raised with neither a cause nor a context: not
    even a traceback printer that ignores ``from None`` reaches ``error``.
    """
    translated = translate(error, context)
    if not is_sensitive(error, context.secrets):
        raise translated from error
    raise_unchained(translated)
