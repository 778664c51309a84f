"""Lease extension: keep a message invisible to other receivers while its handler runs.

A received message is hidden from other receivers for the queue's visibility
timeout. A handler that runs longer would see the message delivered again,
to another worker, while it is still busy with it. The dispatcher's
:class:`LeaseKeeper` heartbeat extends the lease of every message it holds
once a fraction (:attr:`LeasePolicy.extend_at`) of the current lease has
passed, up to :attr:`LeasePolicy.max_lease` in total, through the backend's
:meth:`~melange.backends.MessagingBackend.extend_lease`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from melange._outage import Outage
from melange.backends.base import MessagingBackend, ReceivedMessage
from melange.exceptions import ConfigurationError, LeaseLost
from melange.observability import Hooks
from melange.retry import RetryPolicy

__all__ = ["Lease", "LeaseKeeper", "LeasePolicy"]

logger = logging.getLogger("melange.dispatcher")


@dataclass(frozen=True)
class LeasePolicy:
    """When and how far the dispatcher extends the lease of a message being handled.

    Args:
        extend_at: Fraction of the visibility timeout after which the lease is
            extended (by one visibility timeout), between 0 and 1 exclusive.
            0.5 extends a 30 s lease after 15 s, leaving 15 s for the call.
        max_lease: Longest time in seconds a message is kept from the moment
            it was received; a handler running longer loses its lease and the
            message may be delivered again.

    Raises:
        ConfigurationError: ``extend_at`` is not strictly between 0 and 1, or
            ``max_lease`` is not positive.
    """

    extend_at: float = 0.5
    max_lease: float = 3600.0

    def __post_init__(self) -> None:
        if not _is_number(self.extend_at) or not 0 < self.extend_at < 1:
            raise ConfigurationError(
                f"LeasePolicy extend_at must be a fraction strictly between 0 and 1, "
                f"got {self.extend_at!r}; 0.5 extends halfway through the visibility timeout"
            )
        if not _is_number(self.max_lease) or not 0 < self.max_lease < math.inf:
            raise ConfigurationError(
                f"LeasePolicy max_lease must be a positive number of seconds, "
                f"got {self.max_lease!r}"
            )


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Lease:
    """The lease on one received message, as the keeper sees it.

    Attributes:
        received: The message.
        received_at: Monotonic time just before the receive call that returned it
            (the broker's timeout started no earlier).
        expires_at: Monotonic time the current lease ends.
        lost: The broker refused an extension: the message may be delivered again.
        capped: ``max_lease`` was reached; no further extension is made.
    """

    __slots__ = ("capped", "expires_at", "lost", "received", "received_at")

    def __init__(self, received: ReceivedMessage, received_at: float, expires_at: float) -> None:
        self.received = received
        self.received_at = received_at
        self.expires_at = expires_at
        self.lost = False
        self.capped = False


class LeaseKeeper:
    """The heartbeat thread extending the leases of messages a dispatcher holds.

    Args:
        backend: Must declare the ``lease_extension`` capability.
        queue_name: The queue the messages come from.
        visibility_timeout: The queue's visibility timeout in seconds (> 0).
        policy: When to extend and the cap.
        hooks: Told about extensions and lost leases.
        on_extended: Called with the leases of each extension that succeeded.
        on_lost: Called once per lost lease (statistics).
        held: Returns the leases held now, a new collection on each call (the
            dispatcher's own set of held messages: a message leaves it when it
            is settled, so the keeper keeps no set of its own to update).
    """

    def __init__(
        self,
        backend: MessagingBackend,
        queue_name: str,
        visibility_timeout: float,
        policy: LeasePolicy,
        hooks: Hooks,
        on_extended: Callable[[list[Lease]], None],
        on_lost: Callable[[Lease], None],
        held: Callable[[], Iterable[Lease]],
    ) -> None:
        self.backend = backend
        self.queue_name = queue_name
        self.visibility_timeout = visibility_timeout
        self.policy = policy
        self._hooks = hooks
        self._on_extended = on_extended
        self._on_lost = on_lost
        self._held = held
        # Extend when this much of a lease remains: the rest of the visibility timeout.
        self._remaining_trigger = visibility_timeout * (1 - policy.extend_at)
        self._extension = min(visibility_timeout, backend.capabilities.max_visibility_timeout)
        self.interval = min(1.0, max(0.02, self._remaining_trigger / 4))
        # A broker outage fails every beat: warn once, not once a second.
        self._outage = Outage(
            f"extending leases on queue {queue_name}",
            RetryPolicy(base=self.interval, factor=1.0, max_delay=self.interval, jitter=0.0),
            {"queue": queue_name, "message_id": None, "consumer": None},
        )
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"melange-lease-{queue_name}", daemon=True
        )

    def start(self) -> None:
        """Start the heartbeat thread."""
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the heartbeat thread and wait up to ``timeout`` seconds for it."""
        self._stopping.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            try:
                self.extend_due(time.monotonic())
            except Exception:  # never let the heartbeat die: leases would silently expire
                logger.exception(
                    "lease heartbeat failed; retrying",
                    extra={"queue": self.queue_name, "message_id": None, "consumer": None},
                )

    def extend_due(self, now: float) -> None:
        """Extend every tracked lease whose remaining time fell below the trigger.

        Args:
            now: The current monotonic time.
        """
        due = [
            lease
            for lease in self._held()
            if not lease.lost
            and not lease.capped
            and lease.expires_at - now <= self._remaining_trigger
        ]
        by_seconds: dict[float, list[Lease]] = {}
        for lease in due:
            left = lease.received_at + self.policy.max_lease - now
            seconds = min(self._extension, left)
            if seconds <= 0.001:  # the cap is reached
                lease.capped = True
                logger.warning(
                    "message %s reached max_lease (%gs) while its handler still runs; it may "
                    "be delivered again. Raise LeasePolicy.max_lease for longer handlers",
                    lease.received.message_id,
                    self.policy.max_lease,
                    extra={
                        "queue": self.queue_name,
                        "message_id": lease.received.message_id,
                        "consumer": None,
                    },
                )
                continue
            by_seconds.setdefault(round(seconds, 3), []).append(lease)
        for seconds, leases in by_seconds.items():
            self._extend(leases, seconds, now)

    def _extend(self, leases: list[Lease], seconds: float, now: float) -> None:
        try:
            self.backend.extend_lease([lease.received for lease in leases], seconds)
        except LeaseLost as exc:
            if len(leases) == 1:
                self._lost(leases[0], exc)
                return
            # Find out which ones were lost; extending the others again is harmless.
            for lease in leases:
                self._extend_one(lease, seconds, now)
            return
        except Exception as exc:
            self._outage.failed(1, exc, note=f" ({len(leases)} lease(s) due)")
            return
        self._extended(leases, seconds, now)

    def _extend_one(self, lease: Lease, seconds: float, now: float) -> None:
        try:
            self.backend.extend_lease([lease.received], seconds)
        except LeaseLost as exc:
            self._lost(lease, exc)
        except Exception as exc:
            self._outage.failed(1, exc)
        else:
            self._extended([lease], seconds, now)

    def _extended(self, leases: list[Lease], seconds: float, now: float) -> None:
        self._outage.recovered()
        for lease in leases:
            lease.expires_at = now + seconds
            self._hooks.on_lease_extended(self.queue_name, lease.received, seconds)
            logger.debug(
                "extended the lease of message %s by %gs",
                lease.received.message_id,
                seconds,
                extra={
                    "queue": self.queue_name,
                    "message_id": lease.received.message_id,
                    "consumer": None,
                },
            )
        self._on_extended(leases)

    def _lost(self, lease: Lease, error: LeaseLost) -> None:
        lease.lost = True
        logger.warning(
            "lost the lease of message %s while handling it: it may be delivered again",
            lease.received.message_id,
            extra={
                "queue": self.queue_name,
                "message_id": lease.received.message_id,
                "consumer": None,
            },
        )
        self._hooks.on_lease_lost(self.queue_name, lease.received, error)
        self._on_lost(lease)
