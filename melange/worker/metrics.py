"""The Prometheus metrics a worker process writes, in prometheus-client's multiprocess mode.

Each worker process runs with ``PROMETHEUS_MULTIPROC_DIR`` set by the
supervisor, so every value lands in a file of that directory and the
supervisor's ``/metrics`` adds them up (:mod:`melange.worker.health`).
Counters of a process that died stay in the sum: totals never go back when a
process is restarted.

The message counters and the in-flight gauge are read from each dispatcher's
public ``stats`` and ``in_flight`` every :data:`SYNC_INTERVAL` seconds (and
once more after the dispatchers stopped), so they need no hooks and cover
every dispatcher. The handler-latency histogram needs the hooks of
:func:`melange.worker.metrics_hooks` in the dispatcher's config.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from melange.exceptions import MelangeError
from melange.observability import Hooks

if TYPE_CHECKING:
    from melange.message import Message
    from melange.worker.target import AnyDispatcher

__all__ = [
    "INSTALL_HINT",
    "SYNC_INTERVAL",
    "MetricsUnavailable",
    "WorkerMetrics",
    "require_prometheus",
]

INSTALL_HINT = 'pip install "melange[worker]"'
SYNC_INTERVAL = 0.2
"""Seconds between two readings of the dispatchers' counters."""

READY = "melange_worker_ready"
"""Per-process gauge (a ``pid`` label): 1 while every dispatcher of the process runs."""

# DispatchStats counter -> exported counter (without Prometheus's "_total" suffix).
COUNTERS = {
    "received": ("melange_messages_received", "Messages returned by the broker."),
    "handled": (
        "melange_messages_handled",
        "Messages every accepting consumer succeeded with (or had already handled).",
    ),
    "failed": ("melange_messages_failed", "Consumer calls that raised."),
    "dead_lettered": (
        "melange_messages_dead_lettered",
        "Messages the dispatcher moved to the dead-letter queue itself.",
    ),
}


class MetricsUnavailable(MelangeError, ImportError):
    """``--health-port`` was given but prometheus-client is not installed."""


def require_prometheus() -> None:
    """Raise :class:`MetricsUnavailable`, naming the extra to install, without prometheus-client."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise MetricsUnavailable(
            "melange worker --health-port serves Prometheus metrics and needs "
            f"prometheus-client; install it with: {INSTALL_HINT}"
        ) from None


class WorkerMetrics:
    """The metrics of one worker process; create it once, with ``PROMETHEUS_MULTIPROC_DIR`` set."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self._counters = {
            stat: Counter(name, text, ["queue"]) for stat, (name, text) in COUNTERS.items()
        }
        self._in_flight = Gauge(
            "melange_messages_in_flight",
            "Messages received and not finished yet.",
            ["queue"],
            multiprocess_mode="livesum",
        )
        self._running = Gauge(
            "melange_dispatchers_running",
            "Dispatchers started and not stopping.",
            ["queue"],
            multiprocess_mode="livesum",
        )
        self._ready = Gauge(
            READY, "1 while every dispatcher of the process runs.", multiprocess_mode="liveall"
        )
        self.latency = Histogram(
            "melange_handler_seconds",
            "Time a consumer took to handle a message (with metrics_hooks()).",
            ["queue", "consumer", "outcome"],
        )
        self._seen: dict[int, dict[str, int]] = {}

    def sync(self, dispatchers: Sequence[AnyDispatcher]) -> bool:
        """Add what the dispatchers counted since the last call; return whether all run."""
        in_flight: dict[str, int] = {}
        running: dict[str, int] = {}
        for dispatcher in dispatchers:
            queue = dispatcher.queue_name
            now = dispatcher.stats.as_dict()
            before = self._seen.get(id(dispatcher))
            if before is None:  # every series exists from the start, at 0
                before = self._seen[id(dispatcher)] = dict.fromkeys(COUNTERS, 0)
                for counter in self._counters.values():
                    counter.labels(queue)
            for stat, counter in self._counters.items():
                if now[stat] > before[stat]:
                    counter.labels(queue).inc(now[stat] - before[stat])
                    before[stat] = now[stat]
            in_flight[queue] = in_flight.get(queue, 0) + dispatcher.in_flight
            running[queue] = running.get(queue, 0) + int(dispatcher.running)
        for queue, count in in_flight.items():
            self._in_flight.labels(queue).set(count)
            self._running.labels(queue).set(running[queue])
        ready = all(dispatcher.running for dispatcher in dispatchers)
        self._ready.set(int(ready))
        return ready

    def not_ready(self) -> None:
        """Say this process is not ready (it is stopping)."""
        self._ready.set(0)

    def hooks(self) -> Hooks:
        """Hooks that time each consumer call into the latency histogram."""
        return _LatencyHooks(self)


class _LatencyHooks(Hooks):
    def __init__(self, metrics: WorkerMetrics) -> None:
        self._histogram = metrics.latency

    def handling(
        self, queue_name: str, message: Message, consumer: str
    ) -> contextlib.AbstractContextManager[None]:
        return self._timed(queue_name, consumer)

    @contextlib.contextmanager
    def _timed(self, queue_name: str, consumer: str) -> Iterator[None]:
        started = time.perf_counter()
        outcome = "error"
        try:
            yield
            outcome = "ok"
        finally:
            elapsed = time.perf_counter() - started
            self._histogram.labels(queue_name, consumer, outcome).observe(elapsed)
