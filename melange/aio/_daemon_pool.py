"""A thread pool whose threads never hold up the interpreter's exit.

:class:`concurrent.futures.ThreadPoolExecutor` joins every thread it started
when the interpreter exits, so one synchronous handler that never returns (the
asyncio dispatcher abandons it after the grace period) would keep the process
alive for good. The asyncio dispatcher runs its blocking calls in a
:class:`DaemonPool` instead: the same :class:`~concurrent.futures.Executor`
interface (``loop.run_in_executor`` takes it), with daemon threads that the
exit leaves behind.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

_T = TypeVar("_T")

_Job = tuple["Future[Any]", Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class DaemonPool(Executor):
    """Runs calls in up to ``max_workers`` daemon threads, started as calls need them.

    Args:
        max_workers: The most threads, hence calls running at once.
        thread_name_prefix: Each thread's name is this, a dash and its number.
    """

    def __init__(self, max_workers: int, thread_name_prefix: str) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers}")
        self._max_workers = max_workers
        self._name = thread_name_prefix
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)  # one count per thread waiting for a job
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> Future[_T]:
        """Run ``fn(*args, **kwargs)`` in a pool thread; its future gives the result."""
        future: Future[_T] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot run a call in a pool that was shut down")
            self._jobs.put((future, fn, args, kwargs))
            # A thread that is waiting takes the job; start one only when none is.
            if not self._idle.acquire(blocking=False) and len(self._threads) < self._max_workers:
                thread = threading.Thread(
                    target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                thread.start()
                self._threads.append(thread)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more calls; the threads end once the calls queued before are done.

        Args:
            wait: Wait for the threads to end (never do so from one of them).
            cancel_futures: Cancel the calls that have not started.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if cancel_futures:
                while True:
                    try:
                        job = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if job is not None:
                        job[0].cancel()
            for _ in self._threads:
                self._jobs.put(None)  # one stop sign per thread, behind the queued calls
        if wait:
            for thread in self._threads:
                if thread is not threading.current_thread():
                    thread.join()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, fn, args, kwargs = job
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:  # the caller sees it through the future
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del job, future, fn, args, kwargs  # do not keep the last call's objects alive
            self._idle.release()
