"""A consumer process for the runtime conformance tests that kill or stop one.

Run as ``python -m melange.testing.conformance._consumer_process CONFIG`` where
CONFIG is a JSON file naming the backend (``backend``, ``options`` for
:func:`~melange.backends.load_backend`), the ``queue``, the dispatcher
``driver`` (``"threads"``: :class:`~melange.dispatcher.MessageDispatcher`,
``"asyncio"``: :class:`~melange.aio.AsyncMessageDispatcher` under
``asyncio.run``), a ``progress_file``, a ``release_file`` and the
dispatcher's ``workers`` (the asyncio dispatcher's ``concurrency``),
``wait_seconds`` and ``grace_period``.

Every message must be a JSON object with a number ``n``. The handler appends
``started <n>`` to the progress file, blocks until the release file exists,
then appends ``finished <n>`` and returns (a synchronous consumer: the asyncio
dispatcher runs it in a thread). The dispatcher runs with its own
SIGTERM/SIGINT handling, so the process exits with status 0 after a graceful
stop; it logs to stderr.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

from melange.aio import AsyncMessageDispatcher
from melange.backends import load_backend
from melange.consumers import consumer
from melange.dispatcher import MessageDispatcher
from melange.message import Message

_RELEASE_POLL = 0.01


def main(argv: list[str] | None = None) -> int:
    """Run the dispatcher described by the config file until SIGTERM/SIGINT; return 0."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(f"usage: python -m {__spec__.name if __spec__ else __name__} CONFIG", file=sys.stderr)
        return 2
    config: dict[str, Any] = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    progress_file = Path(config["progress_file"])
    release = Path(config["release_file"])
    lock = threading.Lock()

    def note(event: str, number: int) -> None:
        # One line per write, flushed at once: the test reads the file while we run.
        with lock, progress_file.open("a", encoding="utf-8") as progress:
            progress.write(f"{event} {number}\n")

    @consumer(name="conformance-process")
    def hold(message: Message) -> None:
        number = int(message.body["n"])
        note("started", number)
        while not release.exists():
            time.sleep(_RELEASE_POLL)
        note("finished", number)

    backend = load_backend(config["backend"], **config["options"])
    options: dict[str, Any] = {
        "wait_seconds": float(config["wait_seconds"]),
        "grace_period": float(config["grace_period"]),
    }
    driver = config.get("driver", "threads")
    if driver == "asyncio":
        dispatcher = AsyncMessageDispatcher(
            backend, config["queue"], [hold], concurrency=int(config["workers"]), **options
        )
        asyncio.run(dispatcher.run())
    elif driver == "threads":
        MessageDispatcher(
            backend, config["queue"], [hold], workers=int(config["workers"]), **options
        ).run()
    else:
        print(f"unknown dispatcher driver {driver!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
