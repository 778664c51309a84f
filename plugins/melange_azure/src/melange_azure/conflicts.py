"""Waiting out Service Bus's 409 "conflicting operation in progress".

Right after an entity is deleted, Service Bus may still be removing it: creating
(or changing) an entity of the same name is answered 409, SubCode 40901,
"Another conflicting operation is in progress". That is not "already exists",
which is also a 409: read as such, init would go on to converge an entity that
is not there. :func:`retry_conflicts` retries such a call with backoff; once the
conflict is over the call succeeds, or fails with its own answer (a real
"already exists" is then read again by the caller).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from azure.core.exceptions import HttpResponseError

from melange.exceptions import BackendUnavailable

logger = logging.getLogger("melange.azure.conflicts")

T = TypeVar("T")

CONFLICT_BUDGET = 60.0
"""Seconds a call is retried while Service Bus reports a conflicting operation."""

FIRST_DELAY = 0.1
MAX_DELAY = 5.0

_MARKERS = ("subcode=40901", "conflicting operation")


def in_progress(error: BaseException) -> bool:
    """Whether ``error`` is the 409 of an operation still in progress on the entity."""
    if not isinstance(error, HttpResponseError) or error.status_code != 409:
        return False
    text = str(error).lower()
    return any(marker in text for marker in _MARKERS)


def retry_conflicts(
    call: Callable[[], T],
    action: str,
    *,
    budget: float = CONFLICT_BUDGET,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``call()``, retried with backoff while it fails with a conflicting operation.

    Args:
        call: The administration call.
        action: What it does, for the error ("create queue 'orders'").
        budget: Seconds to keep retrying.
        sleep: Waits between attempts (tests pass a fake).

    Raises:
        BackendUnavailable: The conflict lasted longer than ``budget``.
    """
    deadline = time.monotonic() + budget
    delay = FIRST_DELAY
    while True:
        try:
            return call()
        except HttpResponseError as error:
            if not in_progress(error):
                raise
            if time.monotonic() + delay > deadline:
                raise BackendUnavailable(
                    f"could not {action}: Service Bus still reports another conflicting "
                    f"operation in progress after {budget:g} s (usually a delete of the same "
                    "name that has not finished); try again in a minute"
                ) from None
            logger.debug("%s: a conflicting operation is in progress; retrying", action)
        sleep(delay)
        delay = min(delay * 2, MAX_DELAY)
