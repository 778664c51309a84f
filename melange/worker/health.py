"""The supervisor's HTTP endpoint: ``/livez``, ``/readyz`` and ``/metrics``.

- ``/livez``: 200 while the supervisor runs (its pid and the workers' pids, as JSON).
- ``/readyz``: 200 when every worker process is up and each says all its
  dispatchers are running; 503 otherwise (and while stopping), with the reason.
- ``/metrics``: the workers' metrics added up (prometheus-client's
  multiprocess collector over the directory they write to), plus the
  supervisor's own: worker processes up and restarts.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from melange.exceptions import MelangeError
from melange.worker.metrics import READY

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = ["HealthServer", "MetricsUnreadable", "WorkerStatus"]

logger = logging.getLogger("melange.worker")


class MetricsUnreadable(MelangeError):
    """A worker process's metrics file cannot be read (torn or corrupted)."""


@dataclass(frozen=True)
class WorkerStatus:
    """What the supervisor knows at one instant.

    Attributes:
        pid: The supervisor's process id.
        processes: How many worker processes it keeps.
        workers: The pids of the worker processes alive now.
        restarts: Worker processes restarted so far.
        stopping: Whether a stop was requested.
    """

    pid: int
    processes: int
    workers: list[int] = field(default_factory=list)
    restarts: int = 0
    stopping: bool = False


class HealthServer:
    """Serves the health and metrics endpoints on a thread of the supervisor.

    Args:
        host: The address to listen on.
        port: The port; 0 picks a free one (see :attr:`port` once started).
        metrics_dir: The workers' ``PROMETHEUS_MULTIPROC_DIR``.
        status: Returns the supervisor's :class:`WorkerStatus`.
    """

    def __init__(
        self, host: str, port: int, metrics_dir: str, status: Callable[[], WorkerStatus]
    ) -> None:
        from prometheus_client import CollectorRegistry

        self.metrics_dir = metrics_dir
        self.status = status
        self.registry = CollectorRegistry()
        self._workers = _WorkerFilesCollector(metrics_dir)
        self.registry.register(self._workers)
        self.registry.register(_SupervisorCollector(status))
        self._server = ThreadingHTTPServer((host, port), _handler(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port listened on."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Start serving on a daemon thread."""
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="melange-worker-health", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def readiness(self) -> tuple[bool, str]:
        """Whether every worker process is up and ready, and why not."""
        status = self.status()
        if status.stopping:
            return False, "stopping"
        if len(status.workers) < status.processes:
            return False, f"{len(status.workers)} of {status.processes} worker processes up"
        try:
            ready = self._ready_pids()
        except MetricsUnreadable as exc:
            return False, str(exc)
        waiting = [pid for pid in status.workers if pid not in ready]
        if waiting:
            return False, f"worker processes not running all their dispatchers: {waiting}"
        return True, f"{status.processes} worker processes ready"

    def _ready_pids(self) -> set[int]:
        ready: set[int] = set()
        for metric in self._workers.collect():
            if metric.name == READY:
                for sample in metric.samples:
                    if sample.value == 1 and "pid" in sample.labels:
                        ready.add(int(sample.labels["pid"]))
        return ready

    def metrics(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _WorkerFilesCollector:
    """The worker processes' files added up, skipping a file its process is still creating.

    prometheus-client creates a process's file empty and sizes it a moment
    later; its own collector fails on the empty file, which would drop the
    health request of a supervisor polled while a worker starts. An empty file
    holds no value yet, so leaving it out loses nothing.
    """

    def __init__(self, metrics_dir: str) -> None:
        self._dir = metrics_dir

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.multiprocess import MultiProcessCollector

        files = [f for f in glob.glob(os.path.join(self._dir, "*.db")) if _has_header(f)]
        try:
            return MultiProcessCollector.merge(files, accumulate=True)  # type: ignore[no-any-return,no-untyped-call]
        except Exception as exc:
            raise MetricsUnreadable(_which_unreadable(files, exc)) from exc


def _has_header(path: str) -> bool:
    try:
        return os.path.getsize(path) >= 8  # the used-bytes count and its padding
    except FileNotFoundError:  # its process died and the supervisor cleared its live gauges
        return False


def _which_unreadable(files: list[str], error: Exception) -> str:
    from prometheus_client.multiprocess import MultiProcessCollector

    for path in files:
        try:
            MultiProcessCollector.merge([path])  # type: ignore[no-untyped-call]
        except Exception as exc:
            return (
                f"cannot read the worker metrics file {path} ({exc}); "
                "delete it if no running worker process owns it"
            )
    return f"cannot read the worker metrics files ({error})"


class _SupervisorCollector:
    def __init__(self, status: Callable[[], WorkerStatus]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        status = self._status()
        yield GaugeMetricFamily(
            "melange_worker_processes", "Worker processes alive.", value=len(status.workers)
        )
        yield CounterMetricFamily(
            "melange_worker_restarts", "Worker processes restarted.", value=status.restarts
        )


def _handler(server: HealthServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            try:
                self._route(self.path.split("?", 1)[0])
            except Exception as exc:  # answer rather than drop the connection
                logger.exception("health: %s failed", self.path)
                self._send(500, {"error": str(exc)})

        def _route(self, path: str) -> None:
            if path == "/livez":
                status = server.status()
                self._send(200, {"status": "alive", "pid": status.pid, "workers": status.workers})
            elif path == "/readyz":
                ready, reason = server.readiness()
                self._send(200 if ready else 503, {"ready": ready, "reason": reason})
            elif path == "/metrics":
                body, content_type = server.metrics()
                self._reply(200, body, content_type)
            else:
                self._send(404, {"error": f"no {path}; try /livez, /readyz or /metrics"})

        def _send(self, code: int, document: dict[str, Any]) -> None:
            self._reply(code, json.dumps(document).encode(), "application/json")

        def _reply(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("health: " + format, *args)

    return Handler
