"""Failing broker calls, logged once per outage and retried with capped backoff.

Both dispatchers use :class:`Outage` for their receives and :class:`StartupWait`
for the queue lookup at start-up: the first failure of a run logs a WARNING with
its cause, later ones only DEBUG, and the first success after it one INFO saying
how long it lasted. Without this, an outage of a minute logs hundreds of errors,
and nothing says when it is over.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

from melange.retry import RetryPolicy

__all__ = ["RECONNECT_BACKOFF", "Outage", "StartupWait"]

logger = logging.getLogger("melange.dispatcher")

RECONNECT_BACKOFF = RetryPolicy(base=0.1, factor=2.0, max_delay=5.0, jitter=0.2)
"""Default waits between attempts while the broker fails: 0.1 s doubling, at most 5 s.

The cap is small on purpose: it bounds how long a dispatcher stays idle after
the broker is back.
"""


class Outage:
    """A run of failed calls of one kind (receives from a queue, a start-up lookup).

    Thread-safe: the receivers of a dispatcher share one outage, so a run of
    failures logs one WARNING however many receivers see it. A failure of a new
    kind within the run (the queue vanished while the broker was unreachable)
    warns once more, since it needs another fix.

    Args:
        action: What fails, as the subject of the log lines ("receiving from queue 'orders'").
        backoff: Waits between attempts.
        extra: The ``extra`` fields of the log records.
    """

    def __init__(self, action: str, backoff: RetryPolicy, extra: Mapping[str, Any]) -> None:
        self.action = action
        self.backoff = backoff
        self.extra = dict(extra)
        self._lock = threading.Lock()
        self._since: float | None = None  # when the first failure of the run happened
        self._attempts = 0
        self._causes: set[type[BaseException]] = set()

    @property
    def active(self) -> bool:
        """Whether the last call failed."""
        return self._since is not None

    def failed(self, attempt: int, error: BaseException, note: str = "") -> float:
        """Log a failed call; return the seconds to wait before the next attempt.

        Args:
            attempt: How many calls of the caller failed in a row, this one
                included (it sets the backoff).
            error: Why it failed; its type and message are logged.
            note: Appended to the WARNING (what the dispatcher does meanwhile).
        """
        delay = self.backoff.delay(attempt)
        with self._lock:
            if self._since is None:
                self._since = time.monotonic()
                self._attempts = 0
                self._causes = set()
            self._attempts += 1
            attempts = self._attempts
            new_cause = type(error) not in self._causes
            self._causes.add(type(error))
        if new_cause:
            logger.warning(
                "%s fails (%s: %s)%s; retrying at most %gs apart, further failures at DEBUG",
                self.action,
                type(error).__name__,
                error,
                note,
                self.backoff.max_delay,
                extra=self.extra,
            )
        else:
            logger.debug(
                "%s failed again (attempt %d: %s: %s); retrying in %.2fs",
                self.action,
                attempts,
                type(error).__name__,
                error,
                delay,
                extra=self.extra,
            )
        return delay

    def recovered(self) -> None:
        """Record a successful call: ends the outage, if any, with one INFO."""
        if self._since is None:  # the hot path: no lock while all is well
            return
        with self._lock:
            since, attempts = self._since, self._attempts
            if since is None:  # another receiver ended it first
                return
            self._since = None
        logger.info(
            "%s works again after %.1fs (%d failed attempt%s)",
            self.action,
            time.monotonic() - since,
            attempts,
            "" if attempts == 1 else "s",
            extra=self.extra,
        )


class StartupWait:
    """Waiting at start-up for a broker that does not answer yet, up to a deadline.

    Args:
        queue_name: The dispatcher's queue.
        timeout: Seconds to wait from now; 0 gives up at the first failure.
        backoff: Waits between attempts.
        extra: The ``extra`` fields of the log records.
    """

    def __init__(
        self, queue_name: str, timeout: float, backoff: RetryPolicy, extra: Mapping[str, Any]
    ) -> None:
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.attempts = 0
        self._outage = Outage(f"looking up queue {queue_name} at start-up", backoff, extra)

    def failed(self, error: BaseException) -> float | None:
        """Log a failed lookup; return the seconds to wait, or ``None`` to give up and raise.

        Args:
            error: Why the lookup failed (a ``BackendUnavailable``).
        """
        self.attempts += 1
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            if self.attempts > 1 and sys.version_info >= (3, 11):
                error.add_note(
                    f"melange waited {self.timeout:g}s (startup_timeout) for the broker, "
                    f"{self.attempts} attempts"
                )
            return None
        note = f"; waiting up to {self.timeout:g}s (startup_timeout) for the broker"
        return min(self._outage.failed(self.attempts, error, note), remaining)

    def succeeded(self) -> None:
        """Record the successful lookup (one INFO if it had failed before)."""
        self._outage.recovered()
