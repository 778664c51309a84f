"""The melange 7.2.0 side of the rolling-upgrade test: one job per run, JSON lines on stdout.

Run it with the python of the 7.x venv that ``make test`` builds (build/melange7-venv), in
isolated mode so that the melange 8 of the working directory cannot be imported::

    build/melange7-venv/bin/python -I side.py ENDPOINT init QUEUE --dead-letter DLQ --topic T
    build/melange7-venv/bin/python -I side.py ENDPOINT publish < items.jsonl
    build/melange7-venv/bin/python -I side.py ENDPOINT consume QUEUE --expect 20 --timeout 30

Everything it does goes through melange 7.2.0's own public API (MessagingBackendFactory,
QueuePublisher, TopicPublisher, SimpleMessageDispatcher.consume_loop) with the serializer
registry configuration 7.x documented; nothing of melange 7.x is reimplemented here.

Lines printed (one JSON object each, ``event`` says which):

- ``melange``: first, always: the version and the file of the melange package imported.
- ``published``: one per message published (``publish`` reads ``{"queue"|"topic": name,
  "payload": {...}}`` lines from stdin).
- ``ready``: ``consume`` is about to poll.
- ``handled``: what the 7.x consumer got: the payload and the message id.
- ``error``: an exception 7.x's dispatcher passed to ``on_exception`` (the message stays in
  the queue), or a log record of level ERROR (7.x logs and drops messages its serializer
  refuses).
- ``done``: the job ended; for ``consume``, why (``expected``, ``stopped``, ``timeout``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
import urllib.parse
from typing import Any

# isort: off
# This melange is 7.2.0, from the venv the script runs in. The sorter would split these lines by
# what melange 8's tree happens to hold, so they keep the order of 7.x's own modules.
import melange
from melange import MessagingBackendFactory, QueuePublisher, SimpleMessageDispatcher, TopicPublisher
from melange.backends.sqs.localsqs import LocalSQSBackend
from melange.consumers import Consumer
from melange.serializers.json import JsonSerializer
from melange.serializers.pickle import PickleSerializer
from melange.serializers.registry import SerializerRegistry

# isort: on

# The configuration 7.x's docs (components/serialization.md) show: dicts as JSON, the rest pickle.
REGISTRY_CONFIG = {
    "serializers": {"json": JsonSerializer, "pickle": PickleSerializer},
    "serializer_bindings": {dict: "json"},
    "default": "pickle",
}

_print_lock = threading.Lock()


def emit(event: str, **fields: Any) -> None:
    """Print one JSON line; payloads that are not JSON (a mangled message) print as repr."""
    line = json.dumps({"event": event, **fields}, default=repr, ensure_ascii=True)
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class _ErrorLines(logging.Handler):
    """Turns 7.x's ERROR log records into ``error`` lines: it logs a message it drops."""

    def emit(self, record: logging.LogRecord) -> None:
        emit("error", source=record.name, error=record.getMessage())


def make_backend(endpoint: str, **options: Any) -> LocalSQSBackend:
    """7.x's LocalSQSBackend for ``endpoint``: it takes a host (scheme included) and a port."""
    url = urllib.parse.urlsplit(endpoint)
    host = f"{url.scheme}://{url.hostname}"
    return LocalSQSBackend(host=host, port=url.port, sns_host=host, sns_port=url.port, **options)


def init(endpoint: str, args: argparse.Namespace) -> None:
    """Create the queue, its dead-letter queue and topics as 7.x's factory does."""
    factory = MessagingBackendFactory(make_backend(endpoint))
    factory.init_queue(args.queue, args.topic, dlq_name=args.dead_letter)
    emit("done", job="init")


def publish(endpoint: str, args: argparse.Namespace) -> None:
    """Publish each stdin line's payload with 7.x's QueuePublisher or TopicPublisher."""
    backend = make_backend(endpoint)
    registry = SerializerRegistry(REGISTRY_CONFIG)
    queues = QueuePublisher(registry, backend=backend)
    topics = TopicPublisher(registry, backend=backend)
    count = 0
    for line in sys.stdin:
        if not line.strip():
            continue
        item = json.loads(line)
        if "queue" in item:
            queues.publish(item["queue"], item["payload"])
        else:
            topics.publish(item["topic"], item["payload"])
        count += 1
        emit("published", id=item["payload"].get("id"))
    emit("done", job="publish", published=count)


class _Stop(Exception):
    """Raised from ``after_consume`` to leave 7.x's endless consume_loop between messages."""


def consume(endpoint: str, args: argparse.Namespace) -> None:
    """Run 7.x's consume_loop until the expected payloads, stdin's end or the timeout."""
    # A short long-poll; a visibility timeout long enough that nothing comes back mid-test.
    backend = make_backend(endpoint, wait_time_seconds=1, visibility_timeout=60)
    seen: set[str] = set()
    processed = 0  # consumer calls: the message is acknowledged after them
    finished = 0  # after_consume calls: one per message, acknowledged or failed
    expected_reached = threading.Event()
    stop = threading.Event()
    ended = threading.Event()
    counts_lock = threading.Lock()

    def on_message(payload: Any) -> None:
        nonlocal processed
        with counts_lock:
            processed += 1
            seen.add(json.dumps(payload, sort_keys=True, default=repr))
            if args.expect and len(seen) >= args.expect:
                expected_reached.set()
        emit("handled", payload=payload)

    def on_exception(error: Exception) -> None:
        emit("error", source="on_exception", error=f"{type(error).__name__}: {error}")

    def after_consume() -> None:
        nonlocal finished
        with counts_lock:
            finished += 1
        if stop.is_set() or expected_reached.is_set():
            raise _Stop

    dispatcher = SimpleMessageDispatcher(
        Consumer(on_message=on_message), SerializerRegistry(REGISTRY_CONFIG), backend=backend
    )

    def loop() -> None:
        try:
            emit("ready", queue=args.queue)
            dispatcher.consume_loop(
                args.queue, on_exception=on_exception, after_consume=after_consume
            )
        except _Stop:
            pass
        except Exception as error:  # the loop itself failed (e.g. no such queue)
            emit("error", source="consume_loop", error=f"{type(error).__name__}: {error}")
        finally:
            ended.set()

    # consume_loop never returns while the queue is empty: it runs on a daemon thread, and
    # the process exits once the job is over.
    threading.Thread(target=loop, name="melange7-consume", daemon=True).start()
    if not args.expect:  # the test closes stdin to stop a consumer that runs beside others
        threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    deadline = time.monotonic() + args.timeout
    reason = "timeout"
    while time.monotonic() < deadline:
        if expected_reached.wait(0.05):
            reason = "expected"
            break
        if stop.is_set():
            reason = "stopped"
            break
        if ended.is_set():
            reason = "ended"
            break
    stop.set()
    # Let a message being handled be acknowledged before exiting, so none is left in flight.
    settle = time.monotonic() + 5.0
    while time.monotonic() < settle and not ended.is_set():
        with counts_lock:
            if finished >= processed:
                break
        time.sleep(0.02)
    emit("done", job="consume", reason=reason, handled=processed)


def main() -> None:
    """Run the job the command line names."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("endpoint", help="the SQS/SNS endpoint, e.g. http://127.0.0.1:5000")
    jobs = parser.add_subparsers(dest="job", required=True)
    job = jobs.add_parser("init", help="create a queue, its dead-letter queue and topics")
    job.add_argument("queue")
    job.add_argument("--dead-letter")
    job.add_argument("--topic", action="append", default=[])
    jobs.add_parser("publish", help="publish the {queue|topic, payload} lines of stdin")
    job = jobs.add_parser("consume", help="consume a queue, printing what is handled")
    job.add_argument("queue")
    job.add_argument("--expect", type=int, default=0, help="stop after this many distinct payloads")
    job.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()

    emit("melange", version=melange.__version__, file=os.path.realpath(melange.__file__))
    logs = logging.getLogger("melange")  # 7.x's loggers; its tracebacks are not needed
    logs.setLevel(logging.ERROR)
    logs.addHandler(_ErrorLines())
    logs.propagate = False
    {"init": init, "publish": publish, "consume": consume}[args.job](args.endpoint, args)
    sys.stdout.flush()
    os._exit(0)  # a consume_loop thread may still be polling


if __name__ == "__main__":
    main()
