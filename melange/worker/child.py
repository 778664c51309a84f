"""One worker process: load the target, run its dispatchers until SIGTERM or SIGINT, stop them.

Started by the supervisor as ``python -m melange.worker CONFIG`` (a
JSON object), never by hand. Threaded dispatchers run on a thread each;
asyncio ones share one event loop on another thread. A signal (or the
supervisor disappearing) stops them all at once, each within its
``grace_period``; the process exits 0 when every dispatcher stopped
cleanly, 1 when one failed, and with the target's exit code
(:mod:`melange.worker.target`) when the target cannot be loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

from melange.exceptions import MelangeError
from melange.observability import Hooks
from melange.worker.logs import configure_logging
from melange.worker.target import WorkerTargetError, load_target

if TYPE_CHECKING:
    from melange.aio import AsyncMessageDispatcher
    from melange.dispatcher import MessageDispatcher
    from melange.worker.metrics import WorkerMetrics
    from melange.worker.target import AnyDispatcher

__all__ = ["LOADED", "current_metrics_hooks", "main"]

logger = logging.getLogger("melange.worker")

LOADED = b"L"
"""Written to the supervisor's pipe once the target is loaded and its dispatchers built."""

_metrics_hooks: Hooks | None = None


def current_metrics_hooks() -> Hooks:
    """The latency hooks of this worker process; a do-nothing :class:`Hooks` elsewhere."""
    return _metrics_hooks if _metrics_hooks is not None else Hooks()


def main(argv: Sequence[str] | None = None) -> int:
    """Run one worker process; return its exit code."""
    global _metrics_hooks
    config: dict[str, Any] = json.loads((sys.argv[1:] if argv is None else argv)[0])
    configure_logging(config["log_format"], config["log_level"])
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    # The supervisor starts this process with SIGINT blocked (see its _spawn); one that came
    # meanwhile is delivered now, to the handler.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if os.getcwd() not in sys.path:  # `MODULE:ATTR` of the current directory, as uvicorn does
        sys.path.insert(0, os.getcwd())
    metrics = None
    if config["metrics"]:
        from melange.worker.metrics import WorkerMetrics

        metrics = WorkerMetrics()
        _metrics_hooks = metrics.hooks()
    try:
        dispatchers = load_target(config["target"])
    except WorkerTargetError as exc:
        _report_target_error(config, exc)
        return exc.exit_code
    except MelangeError as exc:
        logger.error("building the dispatchers of %s failed: %s", config["target"], exc)
        return 1
    except Exception:
        logger.exception("building the dispatchers of %s failed", config["target"])
        return 1
    _tell_loaded(config.get("loaded_fd"))
    return _Runner(dispatchers, stop, metrics).run()


def _report_target_error(config: dict[str, Any], exc: WorkerTargetError) -> None:
    if config["log_format"] == "json":
        logger.error("%s", exc, extra={"error": type(exc).__name__, "exit_code": exc.exit_code})
    else:
        print(f"melange: error: {exc}", file=sys.stderr, flush=True)


def _tell_loaded(fd: int | None) -> None:
    if fd is None:
        return
    try:
        with contextlib.suppress(OSError):  # the supervisor stopped listening: it is stopping
            os.write(fd, LOADED)
    finally:
        os.close(fd)


class _Runner:
    """Runs the dispatchers of this process and stops them together."""

    def __init__(
        self,
        dispatchers: Sequence[AnyDispatcher],
        stop: threading.Event,
        metrics: WorkerMetrics | None,
    ) -> None:
        from melange.aio import AsyncMessageDispatcher

        self.dispatchers = list(dispatchers)
        self.stop = stop
        self.metrics = metrics
        self.threaded: list[MessageDispatcher] = []
        self.asynchronous: list[AsyncMessageDispatcher] = []
        for dispatcher in dispatchers:
            if isinstance(dispatcher, AsyncMessageDispatcher):
                self.asynchronous.append(dispatcher)
            else:
                self.threaded.append(dispatcher)
        self.failed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._async_stop: asyncio.Event | None = None

    def run(self) -> int:
        from melange.worker.metrics import SYNC_INTERVAL

        parent = os.getppid()
        threads = [
            _thread(self._run_threaded, f"melange-worker-{d.queue_name}", d) for d in self.threaded
        ]
        if self.asynchronous:
            self._loop = asyncio.new_event_loop()
            self._async_stop = asyncio.Event()
            threads.append(_thread(self._run_asyncio, "melange-worker-asyncio"))
        logger.info(
            "worker process %d running %d dispatcher(s): %s",
            os.getpid(),
            len(self.dispatchers),
            ", ".join(sorted({d.queue_name for d in self.dispatchers})),
        )
        while not self.stop.wait(SYNC_INTERVAL):
            if self.metrics is not None:
                self.metrics.sync(self.dispatchers)
            if os.getppid() != parent:  # the supervisor is gone: nobody would stop us
                logger.warning("the supervisor (pid %d) is gone; stopping", parent)
                break
        if self.metrics is not None:
            self.metrics.not_ready()
        self._stop_all()
        for thread in threads:
            thread.join()
        if self.metrics is not None:
            self.metrics.sync(self.dispatchers)
            self.metrics.not_ready()
        logger.info("worker process %d stopped%s", os.getpid(), " after a failure" * self.failed)
        return 1 if self.failed else 0

    def _run_threaded(self, dispatcher: MessageDispatcher) -> None:
        try:
            dispatcher.run(install_signal_handlers=False)
        except BaseException as exc:
            self._fail(dispatcher.queue_name, exc)
        finally:
            self.stop.set()  # one dispatcher ended: the process ends, the supervisor decides

    def _run_asyncio(self) -> None:
        assert self._loop is not None
        try:
            self._loop.run_until_complete(self._asyncio_main())
        finally:
            self._loop.close()
            self.stop.set()

    async def _asyncio_main(self) -> None:
        assert self._async_stop is not None
        tasks = [
            asyncio.ensure_future(d.run(install_signal_handlers=False)) for d in self.asynchronous
        ]
        stopper = asyncio.ensure_future(self._async_stop.wait())
        await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        await asyncio.gather(*(d.stop() for d in self.asynchronous), return_exceptions=True)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for dispatcher, result in zip(self.asynchronous, results, strict=True):
            if isinstance(result, BaseException):
                self._fail(dispatcher.queue_name, result)

    def _stop_all(self) -> None:
        if self._loop is not None and self._async_stop is not None:
            with contextlib.suppress(RuntimeError):  # RuntimeError: the loop already finished
                self._loop.call_soon_threadsafe(self._async_stop.set)
        # In parallel: each waits up to its own grace_period, not the sum of them.
        stoppers = [
            _thread(self._stop_one, f"melange-stop-{d.queue_name}", d) for d in self.threaded
        ]
        for thread in stoppers:
            thread.join()

    def _stop_one(self, dispatcher: MessageDispatcher) -> None:
        try:
            dispatcher.stop()
        except Exception as exc:
            self._fail(dispatcher.queue_name, exc)

    def _fail(self, queue: str, exc: BaseException) -> None:
        self.failed = True
        if isinstance(exc, MelangeError):
            logger.error("dispatcher of queue %r failed: %s", queue, exc, extra={"queue": queue})
        else:
            logger.error(
                "dispatcher of queue %r failed", queue, exc_info=exc, extra={"queue": queue}
            )


def _thread(target: Any, name: str, *args: Any) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    thread.start()
    return thread
