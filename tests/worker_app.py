"""The application tests/test_worker*.py run with ``melange worker worker_app:ATTR``.

Configured by the environment, as a deployed service would be:
``WORKER_APP_ENDPOINT`` (a moto server), ``WORKER_APP_QUEUE`` and
``WORKER_APP_RECORD`` (a directory: each worker process appends the ``n`` of
every message it handles to ``<pid>.log`` there).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

from melange import MessageDispatcher, consumer
from melange.aio import AsyncMessageDispatcher
from melange.backends.memory import MemoryBackend
from melange.factory import MessagingBackendFactory
from melange.observability import CompositeHooks
from melange.worker import metrics_hooks


def dispatchers() -> list[MessageDispatcher]:
    """The recommended form: a factory, called in each worker process."""
    from melange.backends import LocalSQSBackend  # here: the other targets import no SDK

    backend = LocalSQSBackend(endpoint_url=os.environ["WORKER_APP_ENDPOINT"])
    record = Path(os.environ["WORKER_APP_RECORD"]) / f"{os.getpid()}.log"

    @consumer(name="recorder")
    def record_it(body: dict[str, Any]) -> None:
        with record.open("a") as file:
            file.write(f"{body['n']}\n")

    return [
        MessageDispatcher(
            backend,
            os.environ["WORKER_APP_QUEUE"],
            [record_it],
            hooks=CompositeHooks(metrics_hooks()),
            wait_seconds=0.5,
            grace_period=5.0,
            close_backend=True,
        )
    ]


def slow_async_dispatchers() -> list[AsyncMessageDispatcher]:
    """An asyncio dispatcher whose handler takes a second: ``started`` then ``n`` lines."""
    from melange.backends import LocalSQSBackend  # here: the other targets import no SDK

    backend = LocalSQSBackend(endpoint_url=os.environ["WORKER_APP_ENDPOINT"])
    record = Path(os.environ["WORKER_APP_RECORD"]) / f"{os.getpid()}.log"

    @consumer(name="slow")
    async def slow(body: dict[str, Any]) -> None:
        with record.open("a") as file:
            file.write(f"started-{body['n']}\n")
        await asyncio.sleep(1.0)
        with record.open("a") as file:
            file.write(f"{body['n']}\n")

    return [
        AsyncMessageDispatcher(
            backend,
            os.environ["WORKER_APP_QUEUE"],
            [slow],
            wait_seconds=0.5,
            grace_period=10.0,
            close_backend=True,
        )
    ]


def unreachable() -> MessageDispatcher:
    """A dispatcher whose broker never answers: it waits for it, so it never runs."""
    from melange.backends import LocalSQSBackend

    backend = LocalSQSBackend(endpoint_url=os.environ["WORKER_APP_ENDPOINT"], max_attempts=1)
    return MessageDispatcher(backend, "anything", [record_nothing], startup_timeout=60.0)


@consumer(name="nothing")
def record_nothing(body: dict[str, Any]) -> None:
    raise AssertionError("nothing is ever received")


def crashing() -> list[MessageDispatcher]:
    """A factory that fails every time: the worker process exits 1, again and again."""
    raise RuntimeError("the database is not there (on purpose)")


def idle() -> MessageDispatcher:
    """A dispatcher of an empty in-process queue: it runs until stopped."""
    backend = MemoryBackend()
    MessagingBackendFactory(backend).init_queue("orders")
    return MessageDispatcher(backend, "orders", [record_nothing], wait_seconds=0.1)


def dies_with_exit_code_4() -> MessageDispatcher:
    """Loads and runs, then its process ends with the exit code of an import error.

    A process that ran its target and then died crashed: the code it died with says nothing
    about the target, so the supervisor restarts it.
    """
    backend = MemoryBackend()
    MessagingBackendFactory(backend).init_queue("orders")

    def die() -> None:
        time.sleep(float(os.environ.get("WORKER_APP_DIE_AFTER", "0.5")))
        os._exit(4)

    threading.Thread(target=die, daemon=True).start()
    return MessageDispatcher(backend, "orders", [record_nothing], wait_seconds=0.1)


not_a_dispatcher = {"queue": "orders"}


def needs_arguments(backend: object) -> list[MessageDispatcher]:
    """Not a factory: a factory takes no arguments."""
    raise AssertionError("never called")
