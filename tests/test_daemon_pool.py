"""The asyncio dispatcher's thread pool: an Executor whose threads never hold up the exit.

That a stuck handler's thread does not keep the process alive is checked end to end, on
every backend and both drivers, by the runtime conformance test
``test_handlers_stuck_past_the_grace_period_do_not_keep_the_process_alive``; here, the
pool's own contract.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading

import pytest

from melange.aio._daemon_pool import DaemonPool


def test_calls_give_their_results_and_errors_through_futures() -> None:
    pool = DaemonPool(2, thread_name_prefix="test-pool")
    try:
        assert pool.submit(pow, 2, 10).result(5) == 1024
        with pytest.raises(ZeroDivisionError):
            pool.submit(lambda: 1 / 0).result(5)
        assert pool.submit(threading.current_thread).result(5).daemon
    finally:
        pool.shutdown()


def test_it_starts_threads_only_as_calls_need_them_and_never_more_than_max() -> None:
    pool = DaemonPool(3, thread_name_prefix="test-pool")
    try:
        for _ in range(20):  # one after another: the first thread, idle again, takes each
            pool.submit(lambda: None).result(5)
        assert len(pool._threads) == 1

        release = threading.Event()
        running = threading.Semaphore(0)

        def block() -> str:
            running.release()
            release.wait(5)
            return threading.current_thread().name

        futures = [pool.submit(block) for _ in range(5)]
        for _ in range(3):
            assert running.acquire(timeout=5)
        assert not running.acquire(timeout=0.2), "a fourth call ran with max_workers=3"
        release.set()
        names = {future.result(5) for future in futures}
        assert names <= {"test-pool-0", "test-pool-1", "test-pool-2"}
        assert len(pool._threads) == 3
    finally:
        pool.shutdown()


def test_shutdown_runs_what_was_queued_or_cancels_it_and_refuses_new_calls() -> None:
    pool = DaemonPool(1, thread_name_prefix="test-pool")
    gate = threading.Event()
    first = pool.submit(gate.wait, 5)
    queued = pool.submit(lambda: "ran")
    gate.set()
    pool.shutdown(wait=True)
    assert first.result(0) is True and queued.result(0) == "ran"
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(lambda: None)

    pool = DaemonPool(1, thread_name_prefix="test-pool")
    gate.clear()
    blocking = pool.submit(gate.wait, 5)
    cancelled = pool.submit(lambda: "ran")
    pool.shutdown(wait=False, cancel_futures=True)
    assert cancelled.cancelled()
    gate.set()
    assert blocking.result(5) is True


def test_run_in_executor_works_with_it() -> None:
    pool = DaemonPool(2, thread_name_prefix="test-pool")

    async def main() -> int:
        return await asyncio.get_running_loop().run_in_executor(pool, sum, [1, 2, 3])

    try:
        assert asyncio.run(main()) == 6
    finally:
        pool.shutdown()


def test_a_call_that_never_returns_does_not_keep_the_process_alive() -> None:
    script = textwrap.dedent(
        """
        import threading
        from melange.aio._daemon_pool import DaemonPool
        pool = DaemonPool(1, thread_name_prefix="stuck")
        pool.submit(threading.Event().wait)
        pool.shutdown(wait=False)
        print("exiting", flush=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=20, check=False
    )
    assert (done.returncode, done.stdout.strip()) == (0, "exiting"), done.stderr
