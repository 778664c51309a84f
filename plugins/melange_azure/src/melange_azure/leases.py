"""Leases longer or shorter than a Service Bus lock: renew until a deadline, then abandon.

Service Bus locks a received message for the queue's lock duration; renewing
the lock restarts that duration, and abandoning makes the message receivable at
once. melange's ``extend_lease(seconds)`` and ``nack(delay_seconds)`` both mean
"receivable again exactly ``seconds`` from now", so the keeper holds such
messages: it renews each lock shortly before it runs out while the deadline is
later, and abandons the message at the deadline. Abandoning counts a delivery,
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

logger = logging.getLogger(__name__)

RENEW_AHEAD = 1.0
"""Seconds before a lock runs out that the keeper renews it (locks last 5 s at least)."""


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
        """Monotonic time at which ``receipt``'s lock should be renewed."""
        until = receipt.locked_until
        if until is None:
            return time.monotonic()
        left = (until - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
        return time.monotonic() + left - RENEW_AHEAD

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
                try:
                    self._renew(receipt)
                except Exception:  # lost: the message is redelivered; stop holding it
                    logger.debug("renewing a held message's lock failed", exc_info=True)
                    self.forget(receipt)
