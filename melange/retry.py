"""How long a failed message waits before it is delivered again."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from melange.exceptions import ConfigurationError

__all__ = ["RetryPolicy"]


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, capped, for messages whose handler raised.

    The n-th delivery that fails waits ``base * factor ** (n - 1)`` seconds,
    capped at ``max_delay``, then spread by up to ``jitter`` (a fraction) either
    way so that messages that failed together do not all come back together.
    The broker's dead-letter queue takes a message after the queue's maximum
    receive count; the policy does not count attempts itself.

    Examples:
        >>> policy = RetryPolicy(base=1.0, factor=2.0, max_delay=300.0, jitter=0.0)
        >>> [policy.delay(n) for n in (1, 2, 3, 10)]
        [1.0, 2.0, 4.0, 300.0]

    Args:
        base: Seconds after the first failed delivery.
        factor: Growth per further delivery (1 = constant delay).
        max_delay: Longest delay in seconds (the backend's own limit applies too).
        jitter: Fraction of the delay added or removed at random, 0 to 1.

    Raises:
        ConfigurationError: A value is negative, ``factor`` is below 1 or
            ``jitter`` is outside 0..1.
    """

    base: float = 1.0
    factor: float = 2.0
    max_delay: float = 300.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        for label, value in (("base", self.base), ("max_delay", self.max_delay)):
            if not _is_number(value) or not 0 <= value < math.inf:
                raise ConfigurationError(
                    f"RetryPolicy {label} must be a finite number of seconds >= 0, got {value!r}"
                )
        if not _is_number(self.factor) or not 1 <= self.factor < math.inf:
            raise ConfigurationError(
                f"RetryPolicy factor must be a number >= 1 (1 keeps the delay constant), "
                f"got {self.factor!r}"
            )
        if not _is_number(self.jitter) or not 0 <= self.jitter <= 1:
            raise ConfigurationError(
                f"RetryPolicy jitter must be a fraction between 0 and 1, got {self.jitter!r}"
            )

    def delay(self, receive_count: int) -> float:
        """Return the seconds to wait before delivering a message again.

        Args:
            receive_count: How many times the message has been received, the
                failed delivery included (1 after the first failure).

        Returns:
            A delay between 0 and :attr:`max_delay`.
        """
        attempt = max(int(receive_count), 1) - 1
        try:
            delay = min(self.base * self.factor**attempt, self.max_delay) if self.base else 0.0
        except OverflowError:  # factor ** attempt beyond floats: far past the cap anyway
            delay = self.max_delay
        if self.jitter and delay:
            delay *= 1 + self.jitter * (2 * random.random() - 1)
        return min(max(delay, 0.0), self.max_delay)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
