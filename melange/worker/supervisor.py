"""The supervisor of ``melange worker``: keeps N worker processes running, stops them together.

- Worker processes are fresh interpreters (``python -m melange.worker``), not
  forks: each imports the target and builds its own dispatchers and broker
  connections, and nothing of the supervisor's threads leaks into them.
- The first process is started alone and must load the target before the
  others start, so a bad target is reported once, with its exit code. Once
  it loaded, an exit with one of those codes is a crash like any other.
- A process that exits while not asked to is restarted after a backoff
  (0.5 s, doubling up to 10 s, by the restarts in the window). More than
  ``max_restarts`` restarts within ``restart_window`` seconds is a crash loop:
  the others are stopped and the supervisor exits 1, saying why.
- SIGTERM or SIGINT is forwarded as SIGTERM to every process, which stops its
  dispatchers gracefully; the supervisor exits 0 once all exited with 0. A
  second signal kills the processes still running (SIGKILL).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

from melange.exceptions import ConfigurationError
from melange.worker.child import LOADED
from melange.worker.health import WorkerStatus
from melange.worker.target import (
    EXIT_NOT_A_DISPATCHER,
    EXIT_TARGET_ATTRIBUTE,
    EXIT_TARGET_IMPORT,
    EXIT_TARGET_SYNTAX,
    parse_target,
)

if TYPE_CHECKING:
    from melange.worker.health import HealthServer

__all__ = ["WorkerOptions", "run_supervisor"]

logger = logging.getLogger("melange.worker")

EXIT_CRASH_LOOP = 1
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 10.0
POLL = 0.05
_TARGET_EXITS = frozenset(
    {EXIT_TARGET_SYNTAX, EXIT_TARGET_IMPORT, EXIT_TARGET_ATTRIBUTE, EXIT_NOT_A_DISPATCHER}
)


@dataclass(frozen=True)
class WorkerOptions:
    """What ``melange worker`` was asked to do.

    Attributes:
        target: ``MODULE:ATTR`` (see :mod:`melange.worker.target`).
        processes: Worker processes to keep running.
        health_port: Port of ``/livez``, ``/readyz`` and ``/metrics``; 0 picks
            a free one; ``None`` serves nothing (and collects no metrics).
        health_host: Address the health port listens on.
        log_format: ``"text"`` or ``"json"``.
        log_level: ``"debug"``, ``"info"``, ``"warning"`` or ``"error"``.
        max_restarts: Restarts allowed within ``restart_window`` before giving up.
        restart_window: Seconds over which restarts are counted.
    """

    target: str
    processes: int = 1
    health_port: int | None = None
    health_host: str = "0.0.0.0"  # probes come from outside the container
    log_format: str = "text"
    log_level: str = "info"
    max_restarts: int = 5
    restart_window: float = 60.0

    def __post_init__(self) -> None:
        if self.processes < 1:
            raise ConfigurationError(f"--processes must be at least 1, got {self.processes}")
        if self.health_port is not None and not 0 <= self.health_port <= 65535:
            raise ConfigurationError(
                f"--health-port must be between 0 and 65535, got {self.health_port}"
            )
        if self.max_restarts < 0 or self.restart_window <= 0:
            raise ConfigurationError(
                "--max-restarts must be >= 0 and --restart-window > 0, got "
                f"{self.max_restarts} and {self.restart_window}"
            )


def run_supervisor(options: WorkerOptions) -> int:
    """Run the worker processes until a signal stops them or they crash in a loop.

    Returns:
        0 after a graceful stop in which every process exited with 0; 1 after a
        crash loop or an unclean stop; the target's exit code when it cannot be
        loaded (2 syntax, 4 import, 5 attribute, 6 not a dispatcher).

    Raises:
        TargetSyntaxError: ``options.target`` is not ``MODULE:ATTR`` (nothing started).
        MetricsUnavailable: ``health_port`` is set without prometheus-client.
        ConfigurationError: The health port cannot be listened on (nothing started).
    """
    parse_target(options.target)
    metrics_dir = None
    if options.health_port is not None:
        from melange.worker.metrics import require_prometheus

        require_prometheus()
        metrics_dir = tempfile.mkdtemp(prefix="melange-worker-metrics-")
    try:
        return _Supervisor(options, metrics_dir).run()
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


class _Supervisor:
    def __init__(self, options: WorkerOptions, metrics_dir: str | None) -> None:
        self.options = options
        self.metrics_dir = metrics_dir
        self.slots: list[subprocess.Popen[bytes] | None] = [None] * options.processes
        self.due: dict[int, float] = {}  # slot -> when to restart it
        self.restarts: deque[float] = deque()  # times of the restarts in the window
        # Once a process loaded the target, an exit code of a bad target is a crash like any.
        self.target_loaded = False
        self.restart_count = 0
        self.signals = 0
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ run
    def run(self) -> int:
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        health = self._start_health()
        try:
            return self._supervise()
        finally:
            self._kill_all()
            if health is not None:
                health.stop()
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals += 1

    def _start_health(self) -> HealthServer | None:
        if self.metrics_dir is None or self.options.health_port is None:
            return None
        from melange.worker.health import HealthServer

        host, port = self.options.health_host, self.options.health_port
        try:
            health = HealthServer(host, port, self.metrics_dir, self.status)
        except OSError as exc:
            raise ConfigurationError(
                f"--health-port {port}: cannot listen on {host}:{port} "
                f"({exc.strerror or exc}); choose a free port, or 0 to pick one"
            ) from None
        health.start()
        logger.info(
            "health and metrics on http://%s:%d (/livez, /readyz, /metrics)",
            self.options.health_host,
            health.port,
            extra={"port": health.port},
        )
        return health

    def status(self) -> WorkerStatus:
        with self._lock:
            workers = [p.pid for p in self.slots if p is not None and p.poll() is None]
            return WorkerStatus(
                pid=os.getpid(),
                processes=self.options.processes,
                workers=workers,
                restarts=self.restart_count,
                stopping=self.signals > 0,
            )

    def _supervise(self) -> int:
        code = self._start_first()
        if code is not None:
            return code
        if self.signals:
            return self._stop()
        for slot in range(1, self.options.processes):
            self._spawn(slot)
        while True:
            if self.signals:
                return self._stop()
            for slot, process in enumerate(self.slots):
                if process is None or process.poll() is None:
                    continue
                verdict = self._exited(slot, process)
                if verdict is not None:
                    return verdict
            now = time.monotonic()
            for slot, when in list(self.due.items()):
                if when <= now:
                    del self.due[slot]
                    self._spawn(slot)
            time.sleep(POLL)

    def _start_first(self) -> int | None:
        """Start slot 0 and wait until it loaded the target; an exit code if the target is bad."""
        while True:
            read_end, write_end = os.pipe()
            process = self._spawn(0, loaded_fd=write_end)
            os.close(write_end)
            try:
                loaded = self._wait_loaded(read_end, process)
            finally:
                os.close(read_end)
            if loaded or self.signals:
                self.target_loaded = loaded
                return None
            process.wait()  # it closed the pipe without a word: it is exiting
            verdict = self._exited(0, process)
            if verdict is not None:
                return verdict
            delay = self.due.pop(0) - time.monotonic()
            if self._sleep(delay):
                return None

    def _wait_loaded(self, fd: int, process: subprocess.Popen[bytes]) -> bool:
        while not self.signals:
            readable, _, _ = select.select([fd], [], [], POLL)
            if readable:
                return os.read(fd, 1) == LOADED  # b"" when the process exited first
        return False

    def _sleep(self, seconds: float) -> bool:
        """Sleep; ``True`` when a signal came meanwhile."""
        deadline = time.monotonic() + seconds
        while not self.signals and time.monotonic() < deadline:
            time.sleep(POLL)
        return self.signals > 0

    # ------------------------------------------------------------ processes
    def _spawn(self, slot: int, loaded_fd: int | None = None) -> subprocess.Popen[bytes]:
        config = {
            "target": self.options.target,
            "log_format": self.options.log_format,
            "log_level": self.options.log_level,
            "metrics": self.metrics_dir is not None,
            "loaded_fd": loaded_fd,
        }
        env = dict(os.environ)
        if self.metrics_dir is not None:
            env["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
        # A terminal's Ctrl-C goes to the worker processes too. A new process inherits this
        # thread's signal mask: SIGINT stays blocked (pending, not lost) until it has its
        # handler (melange.worker.child), so one during its start-up is not a traceback.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "melange.worker", json.dumps(config)],
                env=env,
                pass_fds=() if loaded_fd is None else (loaded_fd,),
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        with self._lock:
            self.slots[slot] = process
        logger.info(
            "worker process %d started (slot %d)",
            process.pid,
            slot,
            extra={"worker_pid": process.pid},
        )
        return process

    def _exited(self, slot: int, process: subprocess.Popen[bytes]) -> int | None:
        """A process exited unasked: schedule its restart, or return the supervisor's exit code."""
        code = process.returncode
        self._forget(slot, process)
        if code in _TARGET_EXITS and not self.target_loaded:
            logger.error(
                "worker process %d cannot load %s (exit code %d); stopping",
                process.pid,
                self.options.target,
                code,
            )
            self._stop()
            return code
        now = time.monotonic()
        while self.restarts and self.restarts[0] < now - self.options.restart_window:
            self.restarts.popleft()
        if len(self.restarts) >= self.options.max_restarts:
            logger.error(
                "crash loop: worker process %d %s, after %d restarts within %g s; "
                "stopping the others and giving up",
                process.pid,
                _how(code),
                len(self.restarts),
                self.options.restart_window,
                extra={"exit_code": code},
            )
            self._stop()
            return EXIT_CRASH_LOOP
        delay = min(FIRST_BACKOFF * 2 ** len(self.restarts), MAX_BACKOFF)
        self.restarts.append(now)
        with self._lock:
            self.restart_count += 1
        self.due[slot] = now + delay
        logger.warning(
            "worker process %d %s; restarting it in %.1f s",
            process.pid,
            _how(code),
            delay,
            extra={"exit_code": code},
        )
        return None

    def _forget(self, slot: int, process: subprocess.Popen[bytes]) -> None:
        with self._lock:
            if self.slots[slot] is process:
                self.slots[slot] = None
        if self.metrics_dir is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(process.pid, self.metrics_dir)  # type: ignore[no-untyped-call]

    def _stop(self) -> int:
        """Forward SIGTERM to every process, wait for all; 0 if every one exited with 0."""
        self.due.clear()
        running = [p for p in self.slots if p is not None and p.poll() is None]
        logger.info("stopping %d worker process(es)", len(running))
        for process in running:
            _signal(process, signal.SIGTERM)
        killed = False
        clean = True
        for slot, waited in enumerate(self.slots):
            if waited is None:
                continue
            process = waited
            while process.poll() is None:
                if self.signals > 1 and not killed:
                    logger.warning("second signal: killing the worker processes still running")
                    for other in self.slots:
                        if other is not None:
                            _signal(other, signal.SIGKILL)
                    killed = True
                time.sleep(POLL)
            # -SIGTERM: it got the signal before it could handle it, so before it received anything.
            if process.returncode not in (0, -signal.SIGTERM):
                clean = False
                logger.warning("worker process %d %s", process.pid, _how(process.returncode))
            self._forget(slot, process)
        logger.info("all worker processes stopped%s", "" if clean else " (not all cleanly)")
        return 0 if clean else 1

    def _kill_all(self) -> None:
        """Leave no process behind, whatever happened (the normal paths already waited)."""
        for process in self.slots:
            if process is not None and process.poll() is None:
                _signal(process, signal.SIGKILL)
                process.wait()


def _signal(process: subprocess.Popen[Any], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it just exited
        process.send_signal(signum)


def _how(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"
