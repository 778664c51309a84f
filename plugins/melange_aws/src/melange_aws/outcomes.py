"""Whether a send that failed may still have stored its messages.

A call that stores messages (SendMessageBatch, SendMessage, SNS PublishBatch)
fails in one of two ways:

- before anything went out: no connection could be made (refused, no route,
  DNS, connect timeout, the proxy), the TLS handshake failed, no credentials,
  parameters botocore refused. Nothing was stored: the publish is *refused*.
- after the request was written: no answer within the read timeout, the
  connection closed or reset before the answer, an answer botocore could not
  read, or a 5xx answer (which does not say that nothing was stored). The
  messages may be in the queue: the outcome is *unknown*
  (:class:`~melange.exceptions.OutcomeUnknown`).

botocore retries both kinds. One attempt that may have reached the broker is
enough for the whole call to be unknown, even when the last attempt could not
connect at all (the endpoint went down after storing the first attempt), so
:class:`SendTracker` watches every attempt, not only the final exception.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from botocore import exceptions as botocore_errors  # type: ignore[import-untyped]
from botocore.parsers import ResponseParserError  # type: ignore[import-untyped]

from melange.exceptions import OutcomeUnknown
from melange_aws.errors import (
    NOT_CONNECTED,
    ErrorContext,
    connection_failure,
    describe,
    error_code,
    http_status,
    safe_endpoint,
)

__all__ = ["SEND_OPERATIONS", "SendTracker", "may_have_reached", "outcome_unknown"]

SEND_OPERATIONS = ("sqs.SendMessageBatch", "sqs.SendMessage", "sns.PublishBatch", "sns.Publish")
"""The calls that store messages, as ``<service>.<operation>`` in botocore's event names."""

# TLS failures that happen in the handshake, before any request byte is sent.
_HANDSHAKE = re.compile(
    r"certificate|handshake|wrong.version.number|unknown.protocol|hostname", re.IGNORECASE
)


def may_have_reached(error: BaseException) -> bool:
    """Whether the request may have reached the broker before ``error`` ended the attempt."""
    if isinstance(error, botocore_errors.ClientError):
        status = http_status(error)
        return status is not None and status >= 500
    if isinstance(error, (*NOT_CONNECTED, botocore_errors.ProxyConnectionError)):
        return False
    if isinstance(error, botocore_errors.SSLError):
        return not _HANDSHAKE.search(str(error))
    # Read timeouts, closed or reset connections, any other failure of the HTTP library
    # while the request was on its way, and answers botocore could not parse.
    return isinstance(error, (botocore_errors.HTTPClientError, ResponseParserError))


class SendTracker:
    """Records, per thread, whether an attempt of the current send may have reached the broker.

    botocore runs a call's attempts in the calling thread and fires
    ``needs-retry`` after each one, the last included; :meth:`watch` hooks it
    on a client for :data:`SEND_OPERATIONS`. Call :meth:`start` before each
    send and read :attr:`reached` and :attr:`attempts` after a failure.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def watch(self, client: Any) -> None:
        """Watch the send attempts of ``client``."""
        for operation in SEND_OPERATIONS:
            client.meta.events.register(f"needs-retry.{operation}", self._attempted)

    def start(self) -> None:
        """Forget the previous send of this thread."""
        self._local.reached = False
        self._local.failures = []

    @property
    def reached(self) -> bool:
        """Whether an attempt of this thread's current send may have reached the broker."""
        return bool(getattr(self._local, "reached", False))

    @property
    def failures(self) -> list[str]:
        """How each failed attempt of this thread's current send ended, in order."""
        failures: list[str] = getattr(self._local, "failures", [])
        return failures

    def _attempted(
        self, response: Any = None, caught_exception: BaseException | None = None, **_: Any
    ) -> None:
        if not hasattr(self._local, "failures"):
            self.start()
        if caught_exception is not None:
            reached = may_have_reached(caught_exception)
            self._local.failures.append(type(caught_exception).__name__)
        else:
            status = getattr(response[0], "status_code", None) if response else None
            reached = isinstance(status, int) and status >= 500
            if isinstance(status, int) and status >= 300:
                self._local.failures.append(f"HTTP {status}")
        if reached:
            self._local.reached = True
        # None: botocore's own retry handler decides whether to retry.


def outcome_unknown(
    error: BaseException, context: ErrorContext, failures: list[str]
) -> OutcomeUnknown:
    """The error of a send that may have stored its messages.

    Args:
        error: The exception the call finally raised.
        context: What was being done.
        failures: How each attempt ended (:attr:`SendTracker.failures`).
    """
    where = f"the {context.service} endpoint {safe_endpoint(context.endpoint)}"
    code = error_code(error)
    if code is not None:
        assert isinstance(error, botocore_errors.ClientError)
        text = str(error.response.get("Error", {}).get("Message") or "")
        what = f"it answered {describe(code, text, http_status(error), context)}"
    elif may_have_reached(error):
        what = f"{connection_failure(error, context)} ({type(error).__name__})"
    else:  # the last attempt went nowhere, an earlier one may have been stored
        what = (
            f"an earlier attempt may have reached it, the last one failed: "
            f"{connection_failure(error, context)} ({type(error).__name__})"
        )
    attempts = f"; attempts: {', '.join(failures)}" if len(failures) > 1 else ""
    unknown = OutcomeUnknown(
        f"the request to {context.action} was sent to {where}, but its outcome is unknown: "
        f"{what}{attempts}. The messages may have been stored; sent again, they may arrive twice "
        "(a consumer's deduplication cache handles that: it keys on the producer id)"
    )
    unknown.broker_code = code
    return unknown
