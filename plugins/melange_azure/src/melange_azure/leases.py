"""Leases longer or shorter than a Service Bus lock: renew until a deadline, then abandon.

Service Bus locks a received message for the queue's lock duration; renewing
the lock restarts that duration, and abandoning makes the message receivable at
once. melange's ``extend_lease(seconds)`` and ``nack(delay_seconds)`` both mean
"receivable again exactly ``seconds`` from now", so the keeper holds such
messages: it renews each lock well before it runs out while the deadline is
later (:func:`renew_margin`: a quarter of the lock duration early, at least 10 s
for locks of 20 s and more, timed by the local clock from when the lock was
taken, since the broker's clock may differ and a renewal takes a round trip),
and abandons the message at the deadline. Abandoning counts a delivery,
as a lock expiry does, so the receive count stays honest; if the process dies
meanwhile, the lock simply expires and Service Bus delivers the message again,
so nothing is lost.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable

from melange_azure.receipts import AzureReceipt

logger = logging.getLogger("melange.azure.leases")

RENEW_FRACTION = 0.25
"""Share of the lock duration before its end at which the keeper renews a lock."""

RENEW_AHEAD = 10.0
"""...but at least this many seconds early (as the SDK's own renewer: clocks and
round trips vary), unless that is more than :data:`RENEW_MOST` of the lock."""

RENEW_MOST = 0.5
"""Share of the lock duration the keeper never renews earlier than (5 s locks: 2.5 s)."""

RENEW_INTERVAL = 1.0
"""Fewest seconds between two renewals of one lock, whatever the clocks say."""


def renew_margin(lock_seconds: float) -> float:
    """Seconds before a lock of ``lock_seconds`` ends that it is renewed."""
    return max(RENEW_FRACTION * lock_seconds, min(RENEW_AHEAD, RENEW_MOST * lock_seconds))


class LeaseKeeper:
    """A daemon thread that renews and releases held messages at their deadlines.

    Args:
        renew: Renews a message's lock; returns when the new lock ends (UTC).
        release: Abandons a message.
    """

    def __init__(
        self,
        renew: Callable[[AzureReceipt], datetime.datetime | None],
        release: Callable[[AzureReceipt], None],
    ) -> None:
        self._renew = renew
        self._release = release
        self._held: dict[int, tuple[AzureReceipt, float]] = {}
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def hold(self, receipt: AzureReceipt, seconds: float) -> None:
        """Keep ``receipt``'s message locked for ``seconds`` from now, then abandon it."""
        deadline = time.monotonic() + seconds
        logger.debug("holding a message for %.3f s", seconds)
        with self._condition:
            self._held[id(receipt)] = (receipt, deadline)
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(
                    target=self._run, name="melange-azure-leases", daemon=True
                )
                self._thread.start()
            self._condition.notify()

    def forget(self, receipt: AzureReceipt) -> None:
        """Stop holding ``receipt`` (it is being settled)."""
        with self._condition:
            self._held.pop(id(receipt), None)

    def holds(self, receipt: AzureReceipt) -> bool:
        """Whether ``receipt`` is being held."""
        with self._condition:
            return id(receipt) in self._held

    def stop(self) -> None:
        """Stop the thread; held messages keep their locks until those expire."""
        with self._condition:
            self._stopped = True
            self._held.clear()
            self._condition.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    @staticmethod
    def _renew_at(receipt: AzureReceipt) -> float:
        """Monotonic time at which ``receipt``'s lock should be renewed.

        By the local clock when the lock's length is known (see
        :meth:`AzureReceipt.lock_started`); for a session's lock, by the expiry
        Service Bus reported. Never sooner than :data:`RENEW_INTERVAL` after
        the last renewal, so a clock far off cannot make it renew in a loop.
        """
        if receipt.lock_ends is not None:
            renew_at = receipt.lock_ends - renew_margin(receipt.lock_seconds or 0.0)
        else:
            until = receipt.locked_until
            if until is None:
                renew_at = time.monotonic()
            else:
                left = (until - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
                lock = receipt.lock_seconds or max(left, 0.0)
                renew_at = time.monotonic() + left - renew_margin(lock)
        return max(renew_at, receipt.renewed_at + RENEW_INTERVAL)

    def _due(self) -> tuple[list[AzureReceipt], list[AzureReceipt], float]:
        """Split held messages into those to release and to renew now; return the next wake."""
        now = time.monotonic()
        release: list[AzureReceipt] = []
        renew: list[AzureReceipt] = []
        wake = now + 1.0
        for key, (receipt, deadline) in list(self._held.items()):
            renew_at = self._renew_at(receipt)
            if deadline <= now:
                release.append(receipt)
                del self._held[key]
            elif renew_at <= now and renew_at < deadline:
                renew.append(receipt)
            else:
                wake = min(wake, deadline, renew_at if renew_at < deadline else deadline)
        return release, renew, wake

    def _run(self) -> None:
        while True:
            with self._condition:
                if self._stopped:
                    return
                release, renew, wake = self._due()
                if not release and not renew:
                    self._condition.wait(max(0.0, wake - time.monotonic()))
                    continue
            for receipt in release:
                if self.holds(receipt):
                    continue  # held again meanwhile, with a later deadline
                logger.debug("releasing a held message at its deadline")
                try:
                    self._release(receipt)
                except Exception:  # the lock runs out instead: Service Bus redelivers
                    logger.debug("abandoning a held message failed", exc_info=True)
            for receipt in renew:
                receipt.renewed_at = time.monotonic()
                try:
                    self._renew(receipt)
                except Exception:  # lost: the message is redelivered; stop holding it
                    logger.debug("renewing a held message's lock failed", exc_info=True)
                    self.forget(receipt)
