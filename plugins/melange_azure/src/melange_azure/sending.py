"""Sending over one sender link, with an honest outcome for every message.

A publish opens the entity's sender link first, then sends its messages in as
few ``ServiceBusMessageBatch`` transfers as fit. Where it fails decides what
the caller is told:

- opening the link failed (refused, unreachable, credentials refused, no
  such entity, no answer): nothing went out, so the error is raised and every
  message counts as refused;
- a transfer failed: Service Bus refused it outright (too large, no such
  entity), so its messages are refused; or no confirmation came (a timeout, a
  connection lost or closed mid-send, a detached link): its messages are
  *unknown* (:class:`~melange.exceptions.OutcomeUnknown`), they may be
  stored. The SDK retries a transfer over a new connection, so a last attempt
  that could not even connect says nothing about the first one;
- the transfers after a failed one are not attempted: their messages are
  refused ("not sent"), safe to publish again.

Each transfer (opening the link included for the first) has
``Timeouts.publish`` seconds: the SDK's own send timeout, and melange's
deadline (:mod:`~melange_azure.deadlines`) past it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from azure.core.exceptions import AzureError
from azure.servicebus import exceptions as sb_errors

from melange.backends.base import PublishResult
from melange.exceptions import BackendUnavailable, MelangeError, OutcomeUnknown
from melange_azure.clients import Timeouts
from melange_azure.deadlines import Deadlines
from melange_azure.errors import ErrorContext, did_not_answer, send_outcome, translate

GRACE = 1.0
"""Seconds melange's deadline leaves the SDK's own timeout to end a call first."""

SDK_ERRORS = (AzureError, ValueError, TypeError, RuntimeError)
"""What an SDK call may raise for a failed call (its own checks raise ValueError)."""


@dataclass(eq=False)
class Sender:
    """One SDK sender (of a queue or a topic) and the lock that serializes its use.

    Attributes:
        kind: ``"queue"`` or ``"topic"``.
        name: The entity's name.
        handle: The SDK's ``ServiceBusSender``.
        lock: Held while the sender is used: the SDK's senders are not thread-safe.
        broken: Set when a call failed: the link is dropped and a new one made.
    """

    kind: Literal["queue", "topic"]
    name: str
    handle: Any = field(repr=False)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    broken: bool = False


class NothingSent(MelangeError):
    """Internal: the link could not be opened, so nothing went out (wraps the real error)."""

    def __init__(self, error: MelangeError) -> None:
        super().__init__(str(error))
        self.error = error


def open_link(sender: Sender, deadlines: Deadlines, seconds: float, context: ErrorContext) -> None:
    """Open the sender's link if it is not open (call with :attr:`Sender.lock` held).

    Raises:
        NothingSent: The link could not be opened; nothing was sent.
    """
    with deadlines.guard(sender.handle, seconds + GRACE) as guard:
        try:
            sender.handle.__enter__()  # opens the link once; a no-op while it is open
            return
        except SDK_ERRORS as error:
            failure = error
    sender.broken = True
    raise NothingSent(
        did_not_answer(context, seconds) if guard.expired else translate(failure, context)
    )


def transfer(
    sender: Sender, payload: Any, deadlines: Deadlines, seconds: float, context: ErrorContext
) -> MelangeError | None:
    """Send one message or batch on the open link; return the failure's error, if any.

    The error is refused (:func:`~melange_azure.errors.translate`) or unknown
    (:class:`~melange.exceptions.OutcomeUnknown`), see :func:`~melange_azure.errors.send_outcome`.
    """
    with deadlines.guard(sender.handle, seconds + GRACE) as guard:
        try:
            sender.handle.send_messages(payload, timeout=seconds)
            return None
        except SDK_ERRORS as error:
            failure = error
    sender.broken = True
    return send_outcome(failure, context, expired=guard.expired, seconds=seconds)


def send_batches(
    sender: Sender,
    messages: Sequence[Any],
    ids: Sequence[str],
    deadlines: Deadlines,
    timeouts: Timeouts,
    context: ErrorContext,
) -> list[PublishResult]:
    """Send ``messages`` in as few transfers as fit; one result per message, in order.

    Args:
        sender: The entity's sender (its lock is taken here).
        messages: ``ServiceBusMessage`` objects.
        ids: Each message's id, for its accepted result.
        deadlines: Bounds each SDK call.
        timeouts: ``publish`` bounds each transfer.
        context: What is being done, for errors.

    Raises:
        NothingSent: Nothing was sent (the link could not be opened, or the
            first transfer was refused as a whole).
    """
    results: list[PublishResult] = []
    with sender.lock:
        started = time.monotonic()
        open_link(sender, deadlines, timeouts.publish, context)
        start = 0
        while start < len(messages):
            try:
                batch, end = _fill(sender, messages, start)
            except SDK_ERRORS as error:  # one message alone does not fit: it is not sent
                refused = translate(error, context)
                if not results:
                    raise NothingSent(refused) from None
                return results + _refused(start, len(messages), refused)
            spent = time.monotonic() - started if start == 0 else 0.0
            failure = transfer(
                sender, batch, deadlines, max(timeouts.publish - spent, 0.1), context
            )
            if failure is None:
                results += [PublishResult(i, ids[i]) for i in range(start, end)]
                start = end
                continue
            if not results and not isinstance(failure, OutcomeUnknown):
                raise NothingSent(failure)  # refused as a whole: nothing of the call was stored
            return results + _refused(start, end, failure) + _not_sent(end, len(messages), failure)
    return results


def send_one(
    sender: Sender,
    message: Any,
    message_id: str | None,
    deadlines: Deadlines,
    timeouts: Timeouts,
    context: ErrorContext,
) -> PublishResult:
    """Send one message on its own (not in a batch); its result.

    Raises:
        NothingSent: The link could not be opened.
    """
    with sender.lock:
        started = time.monotonic()
        open_link(sender, deadlines, timeouts.publish, context)
        spent = time.monotonic() - started
        failure = transfer(sender, message, deadlines, max(timeouts.publish - spent, 0.1), context)
    return PublishResult(0, message_id) if failure is None else PublishResult(0, error=failure)


def _fill(sender: Sender, messages: Sequence[Any], start: int) -> tuple[Any, int]:
    """A batch of ``messages[start:end]``, as many as the link takes; ``(batch, end)``."""
    batch = sender.handle.create_message_batch()
    end = start
    while end < len(messages):
        try:
            batch.add_message(messages[end])
        except (sb_errors.MessageSizeExceededError, ValueError):
            if end == start:  # one message alone does not fit
                raise
            break
        end += 1
    return batch, end


def _refused(start: int, end: int, error: MelangeError) -> list[PublishResult]:
    return [PublishResult(index, error=error) for index in range(start, end)]


def _not_sent(start: int, end: int, cause: MelangeError) -> list[PublishResult]:
    """Refused results of the messages after a failed transfer: they were never sent."""
    if start >= end:
        return []
    error = BackendUnavailable(
        f"not sent: an earlier transfer of the same publish call failed ({type(cause).__name__}); "
        "these messages were never sent, so publishing them again makes no duplicate"
    )
    return _refused(start, end, error)
