"""Clocks: where a backend reads the time.

Backends that keep time themselves (the embedded ``memory`` backend) read it
from a :class:`Clock` instead of calling :mod:`time` directly, so tests can
replace it with a :class:`ManualClock` and move time forward on demand:
visibility timeouts, delays, deduplication windows and retention then expire
exactly when a test says so, without sleeping.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """A source of time in seconds.

    Only differences between readings matter; the origin is arbitrary.
    """

    def now(self) -> float:
        """Return the current time in seconds."""
        ...


class SystemClock:
    """The real clock: :func:`time.monotonic`, unaffected by changes to the wall clock."""

    def now(self) -> float:
        """Return the current monotonic time in seconds."""
        return time.monotonic()

    def __repr__(self) -> str:
        return "SystemClock()"


class ManualClock:
    """A clock that moves only when told to; for tests. Thread-safe.

    Examples:
        >>> clock = ManualClock()
        >>> clock.advance(30)
        >>> clock.now()
        30.0

    Args:
        start: The initial reading in seconds.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        """Return the current reading in seconds."""
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward.

        Args:
            seconds: How far to move; zero is allowed.

        Raises:
            ValueError: ``seconds`` is negative; a clock never goes back, because
                backends rely on time being monotonic.
        """
        if seconds < 0:
            raise ValueError(
                f"a clock cannot go back: advance() needs seconds >= 0, got {seconds!r}"
            )
        with self._lock:
            self._now += float(seconds)

    def __repr__(self) -> str:
        return f"ManualClock(now={self.now()!r})"
