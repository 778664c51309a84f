"""Translation of botocore errors into melange's exceptions.

Every error the backend raises because of AWS goes through :func:`translate`:
the specific melange exception when there is one (QueueNotFound,
TopicNotFound, MessageTooLarge, BackendUnavailable), else
:class:`~melange.exceptions.BrokerError`; AWS's error code is kept as
``broker_code``. Messages never contain a credential: errors about
credentials and permissions carry only the error code (AWS's text and the
botocore exception are dropped), other AWS texts are scrubbed of anything that
looks like an access key, and endpoints are shown without user info.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NoReturn
from urllib.parse import urlsplit, urlunsplit

from botocore import exceptions as botocore_errors  # type: ignore[import-untyped]

from melange.exceptions import (
    BackendUnavailable,
    BrokerError,
    InvalidMessage,
    MelangeError,
    MessageTooLarge,
    QueueNotFound,
    TopicNotFound,
)
from melange_aws.wire import MESSAGE_LIMIT

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

# Access key ids (AKIA... long-term, ASIA... temporary) are not secret keys, but stay out too.
_ACCESS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{12,}\b")


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


def safe_endpoint(url: str | None) -> str:
    """Return ``url`` without user info or query (which could hold credentials)."""
    if not url:
        return "the default AWS endpoint"
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable endpoint>"
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """Remove credentials (given ``secrets`` and anything shaped like an access key id)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<redacted>")
    return _ACCESS_KEY_ID.sub("<redacted>", text)


def error_code(error: BaseException) -> str | None:
    """Return AWS's error code of a ClientError, else ``None``."""
    if isinstance(error, botocore_errors.ClientError):
        code = error.response.get("Error", {}).get("Code")
        return str(code) if code else "Unknown"
    return None


def entry_error(code: str, message: str, context: ErrorContext) -> MelangeError:
    """Translate an error AWS reports for one entry of a batch (or for one call)."""
    text = scrub(message or "no details", context.secrets)
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
            f"{context.action} ({code}: {text}), even after botocore's retries; "
            "retry later, or raise the max_attempts option"
        )
    elif code in TOO_LARGE or (
        context.size is not None and any(words in text.lower() for words in ("too long", "large"))
    ):
        error = (
            MessageTooLarge(context.size, MESSAGE_LIMIT, context.backend_name)
            if context.size is not None
            else BrokerError(
                f"{context.service} refused to {context.action} as too large ({code}: {text})",
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
        error = BrokerError(
            f"{context.service} refused to {context.action} ({code}: {text})", broker_code=code
        )
    error.broker_code = code
    return error


def translate(error: Exception, context: ErrorContext) -> MelangeError:
    """Translate a botocore exception raised while doing ``context.action``."""
    code = error_code(error)
    if code is not None:
        assert isinstance(error, botocore_errors.ClientError)
        message = str(error.response.get("Error", {}).get("Message") or "")
        return entry_error(code, message, context)
    if isinstance(error, CONNECTION_ERRORS):
        return BackendUnavailable(
            f"cannot reach the {context.service} endpoint {safe_endpoint(context.endpoint)} "
            f"to {context.action} ({type(error).__name__}). {context.unreachable_hint}"
        )
    if isinstance(error, CREDENTIAL_ERRORS):
        return BackendUnavailable(
            f"no usable AWS credentials to {context.action} ({type(error).__name__}). "
            f"{CREDENTIALS_HINT}"
        )
    if isinstance(error, botocore_errors.ParamValidationError):
        return InvalidMessage(
            f"botocore refused the parameters to {context.action}: "
            f"{scrub(str(error), context.secrets)}"
        )
    return BrokerError(
        f"unexpected error from botocore while trying to {context.action}: "
        f"{type(error).__name__}: {scrub(str(error), context.secrets)}"
    )


def is_sensitive(error: BaseException, secrets: Iterable[str] = ()) -> bool:
    """Whether ``error``'s own text could reveal credentials, so it must not be chained.

    Errors about credentials or permissions are, and so is any error whose text
    contains one of ``secrets`` or something shaped like an access key id.
    """
    if isinstance(error, CREDENTIAL_ERRORS) or error_code(error) in ACCESS_REFUSED:
        return True
    text = str(error)
    return scrub(text, secrets) != text


def raise_translated(error: Exception, context: ErrorContext) -> NoReturn:
    """Raise :func:`translate`'s error, chained to ``error`` unless that could leak credentials."""
    translated = translate(error, context)
    if is_sensitive(error, context.secrets):
        raise translated from None
    raise translated from error
