"""``melange publish`` and ``melange tail``: messages from and to the command line.

``publish`` sends exactly the bytes it is given (an argument, a file or
standard input), with attributes and FIFO ids, to a queue or a topic.
``tail`` prints a queue's messages as they arrive and, unless told to
acknowledge them, releases every one it holds when it stops: it consumes
nothing by default. Registered lazily by :mod:`melange.cli`.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

import click

from melange.cli import (
    EXIT_CODES,
    EXIT_INTERRUPTED,
    CliState,
    _backend_options,
    _emit_json,
    _Holder,
    _json_option,
    _open_backend,
    _preview,
    _run_with_timeout,
    _timeout_option,
)
from melange.exceptions import (
    BackendUnavailable,
    InvalidMessage,
    MelangeError,
    QueueNotFound,
    TopicNotFound,
)

if TYPE_CHECKING:
    from melange.backends.base import MessagingBackend, ReceivedMessage

__all__ = ["publish", "tail"]

EXIT_TERMINATED = 143  # 128 + SIGTERM, as shells report it
DEFAULT_WAIT_SECONDS = 2.0


# ------------------------------------------------------------------ publish
def _parse_attributes(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str]:
    attributes: dict[str, str] = {}
    for text in values:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {text!r}")
        if key in attributes:
            raise click.BadParameter(f"attribute {key!r} is given twice")
        attributes[key] = value
    return attributes


@click.command(epilog=EXIT_CODES)
@click.argument("arguments", nargs=-1, metavar="[QUEUE] [BODY]")
@click.option("--topic", metavar="TOPIC", help="Publish to TOPIC instead of a queue.")
@click.option(
    "--file",
    "-f",
    "body_file",
    type=click.File("rb"),
    metavar="PATH",
    help="Read the body from PATH ('-' for standard input).",
)
@click.option(
    "--attribute",
    "-a",
    "attributes",
    multiple=True,
    metavar="KEY=VALUE",
    callback=_parse_attributes,
    help="A message attribute (repeatable).",
)
@click.option("--group-id", metavar="GROUP", help="The message group (FIFO queues and topics).")
@click.option("--dedup-id", metavar="ID", help="The deduplication id (where the broker has one).")
@_backend_options
@_timeout_option
@_json_option
@click.pass_obj
def publish(
    state: CliState | None,
    arguments: tuple[str, ...],
    topic: str | None,
    body_file: IO[bytes] | None,
    attributes: dict[str, str],
    group_id: str | None,
    dedup_id: str | None,
    backend: str | None,
    options: list[tuple[str, str]],
    timeout: float,
    as_json: bool,
) -> None:
    """Publish one message to QUEUE, or to --topic TOPIC.

    The body is BODY, the file --file PATH, or standard input when BODY or
    PATH is '-'; its bytes are sent exactly as given (no serialization, no
    attributes added). Prints the broker's message id.
    """
    queue, body_argument = _destination(arguments, topic)
    body = _read_body(body_argument, body_file)
    destination = f"topic {topic!r}" if topic is not None else f"queue {queue!r}"

    def work(holder: _Holder) -> str | None:
        from melange.backends.base import OutgoingMessage

        opened, owned = _open_backend(state, holder, backend, options)
        try:
            _check_destination(opened, queue, topic, group_id)
            message = OutgoingMessage(body, attributes, group_id=group_id, dedup_id=dedup_id)
            if topic is not None:
                results = opened.publish_to_topic(topic, [message])
            else:
                assert queue is not None  # _destination gives one or the other
                results = opened.publish(queue, [message])
            if results[0].error is not None:
                raise results[0].error  # refused, or unknown (said so in its message)
            return results[0].message_id
        finally:
            if owned:
                opened.close()

    message_id = _run_with_timeout(work, timeout, status=f"publishing to {destination}...")
    if as_json:
        where = {"topic": topic} if topic is not None else {"queue": queue}
        _emit_json({**where, "message_ids": [message_id], "size": len(body)})
    else:
        click.echo(f"published {len(body)} byte(s) to {destination}: message id {message_id}")


def _destination(arguments: tuple[str, ...], topic: str | None) -> tuple[str | None, str | None]:
    """Split the positional arguments into (queue, body) as --topic decides."""
    if topic is not None:
        if len(arguments) > 1:
            raise click.UsageError(
                f"with --topic, give at most the BODY; got {len(arguments)} arguments "
                f"({' '.join(arguments)!r}): a queue and a topic cannot both be the destination"
            )
        return None, arguments[0] if arguments else None
    if not arguments:
        raise click.UsageError("give a QUEUE (or --topic TOPIC) to publish to")
    if len(arguments) > 2:
        raise click.UsageError(
            f"expected QUEUE and BODY, got {len(arguments)} arguments; quote a body that "
            "holds spaces"
        )
    return arguments[0], arguments[1] if len(arguments) == 2 else None


def _read_body(argument: str | None, body_file: IO[bytes] | None) -> bytes:
    if argument is not None and body_file is not None:
        raise click.UsageError("give the body as BODY or with --file PATH, not both")
    if body_file is not None:
        return body_file.read()
    if argument is None:
        raise click.UsageError(
            "no body: give it as BODY, with --file PATH, or as '-' to read standard input"
        )
    if argument == "-":
        return sys.stdin.buffer.read()
    # The bytes the shell passed, even when they are not valid UTF-8 (surrogateescape).
    return os.fsencode(argument)


def _check_destination(
    backend: MessagingBackend, queue: str | None, topic: str | None, group_id: str | None
) -> None:
    """Refuse a missing destination, or a group id a standard queue would ignore."""
    if topic is not None:
        if backend.capabilities.topics and backend.get_topic(topic) is None:
            raise TopicNotFound(topic, "check the name, or create it (melange apply FILE)")
        return
    assert queue is not None
    spec = backend.get_queue(queue)
    if spec is None:
        raise QueueNotFound(queue, "check the name, or create it (melange apply FILE)")
    if group_id is not None and not spec.fifo:
        raise InvalidMessage(
            f"queue {queue!r} is a standard queue: it has no message groups; leave out "
            "--group-id, or publish to a FIFO queue"
        )


# --------------------------------------------------------------------- tail
@dataclass
class _Tail:
    """What a tail holds: every message shown and not acknowledged, by id (latest receipt)."""

    held: dict[str, ReceivedMessage] = field(default_factory=dict)
    # When each held message's lease ends (monotonic), while tail extends the leases.
    expires: dict[str, float] = field(default_factory=dict)
    shown: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)


@click.command(epilog=EXIT_CODES + " tail stopped by SIGTERM: 143.")
@click.argument("queue", metavar="QUEUE")
@click.option(
    "--ack",
    is_flag=True,
    help="Acknowledge (delete) each message once printed. Default: release them all at the end.",
)
@click.option(
    "--max",
    "max_messages",
    type=click.IntRange(min=1),
    help="Stop after this many messages (default: run until Ctrl-C or SIGTERM).",
)
@click.option(
    "--wait-seconds",
    type=click.FloatRange(min=0, max=20),
    default=DEFAULT_WAIT_SECONDS,
    show_default=True,
    help="How long each receive waits for messages (also how long stopping may take).",
)
@_backend_options
@_timeout_option
@_json_option
@click.pass_obj
def tail(
    state: CliState | None,
    queue: str,
    ack: bool,
    max_messages: int | None,
    wait_seconds: float,
    backend: str | None,
    options: list[tuple[str, str]],
    timeout: float,
    as_json: bool,
) -> None:
    """Print the messages of QUEUE as they arrive.

    One line per message: id, receive count, attributes and a body preview;
    with --json, one JSON object per line with the whole body (base64 when it
    is not UTF-8). Without --ack nothing is consumed: the messages shown are
    held (hidden from other consumers, each counting one receive) until tail
    stops, then released at once. Ctrl-C and SIGTERM stop it cleanly.
    """
    tailing = _Tail()

    def show(message: ReceivedMessage) -> None:
        if as_json:
            click.echo(json.dumps(_message_document(message)))
        else:
            attributes = ", ".join(f"{k}={v}" for k, v in sorted(message.attributes.items()))
            click.echo(
                f"{message.message_id}  receives={message.receive_count}  "
                f"[{attributes}]  {_preview(message.body)}"
            )
        sys.stdout.flush()  # a pipe reader sees each message as it arrives

    def work(holder: _Holder) -> None:
        try:
            opened, owned = _open_backend(state, holder, backend, options)
            try:
                spec = opened.get_queue(queue)
                if spec is None:
                    raise QueueNotFound(queue, "check the name, or create it (melange apply FILE)")
                lease = None
                if not ack and opened.capabilities.lease_extension and spec.visibility_timeout > 0:
                    lease = min(spec.visibility_timeout, opened.capabilities.max_visibility_timeout)
                try:
                    _receive_loop(
                        opened,
                        holder,
                        tailing,
                        queue,
                        show,
                        ack,
                        max_messages,
                        wait_seconds,
                        lease,
                    )
                finally:
                    _release_held(opened, tailing)
            finally:
                if owned:
                    opened.close()
        finally:
            tailing.finished.set()

    with _stop_on_signals() as received:
        try:
            _run_with_timeout(work, timeout, status=f"tailing {queue}...", quiet=True)
        except KeyboardInterrupt:
            if not received:
                received.append(signal.SIGINT)
            _finish_after_interrupt(tailing, wait_seconds + timeout)
    if received:
        released = "" if ack else ", released"
        click.echo(f"melange: stopped; {tailing.shown} message(s) shown{released}", err=True)
        code = EXIT_TERMINATED if received[0] == signal.SIGTERM else EXIT_INTERRUPTED
        raise click.exceptions.Exit(code)


def _receive_loop(
    backend: MessagingBackend,
    holder: _Holder,
    tailing: _Tail,
    queue: str,
    show: Callable[[ReceivedMessage], None],
    ack: bool,
    max_messages: int | None,
    wait_seconds: float,
    lease: float | None,
) -> None:
    """Receive and show messages until stopped; hold (and keep leasing) the ones shown.

    ``lease`` is how far each extension reaches (the queue's visibility timeout), or
    ``None`` when the backend cannot extend leases: a held message then becomes
    receivable again once its visibility timeout ends.
    """
    while not tailing.stop.is_set():
        if max_messages is not None and tailing.shown >= max_messages:
            return
        wait = wait_seconds
        if lease is not None and tailing.held:
            _extend_due(backend, tailing, lease)
            holder.last_progress = time.monotonic()
            # Back before the next extension is due, however long --wait-seconds is.
            wait = min(wait_seconds, lease / 4)
        room = 10 if max_messages is None else min(10, max_messages - tailing.shown)
        # The receive may wait by design: only silence beyond it is a timeout.
        started = time.monotonic()
        holder.last_progress = started + wait
        batch = backend.receive(queue, room, wait)
        holder.last_progress = time.monotonic()
        new = []
        for message in batch:
            if lease is not None:
                tailing.expires[message.message_id] = started + lease
            if message.message_id in tailing.held:  # redelivered to us after its lease ended
                tailing.held[message.message_id] = message  # the newest receipt releases it
            else:
                new.append(message)
                if not ack:
                    tailing.held[message.message_id] = message
        for message in new:
            show(message)
            tailing.shown += 1
        if ack and new:
            backend.ack(new)  # only once printed: a print that fails acknowledges nothing


def _extend_due(backend: MessagingBackend, tailing: _Tail, lease: float) -> None:
    """Extend the leases of held messages past half their lease, so none is received again.

    A held message received again counts one more receive: a long tail would move it
    to the dead-letter queue. A refused extension is not fatal: the message comes back
    to this tail, which holds its new receipt.
    """
    now = time.monotonic()
    due = [
        message
        for message_id, message in tailing.held.items()
        if tailing.expires.get(message_id, now) - now < lease / 2
    ]
    for start in range(0, len(due), 10):
        chunk = due[start : start + 10]
        try:
            backend.extend_lease(chunk, lease)
        except MelangeError:
            continue
        for message in chunk:
            tailing.expires[message.message_id] = now + lease


def _release_held(backend: MessagingBackend, tailing: _Tail) -> None:
    """Make every held message receivable again at once (else when its lease ends)."""
    held = list(tailing.held.values())
    if held and backend.capabilities.nack_delay:
        for start in range(0, len(held), 10):
            backend.nack(held[start : start + 10], 0.0)
    tailing.held.clear()
    tailing.expires.clear()


def _message_document(message: ReceivedMessage) -> dict[str, Any]:
    try:
        body = message.body.decode("utf-8")
        encoding = "utf-8"
    except UnicodeDecodeError:
        body = base64.b64encode(message.body).decode("ascii")
        encoding = "base64"
    return {
        "id": message.message_id,
        "queue": message.queue_name,
        "receive_count": message.receive_count,
        "attributes": dict(message.attributes),
        "group_id": message.group_id,
        "size": len(message.body),
        "body": body,
        "body_encoding": encoding,
    }


@contextmanager
def _stop_on_signals() -> Iterator[list[int]]:
    """Turn SIGTERM into a clean stop, as Ctrl-C is; yield the signals that came."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received  # handlers can only be set on the main thread: SIGTERM stays fatal
        return

    def on_term(signum: int, _frame: object) -> None:
        received.append(signum)
        raise KeyboardInterrupt  # leaves the wait in _run_with_timeout, as Ctrl-C does

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


def _finish_after_interrupt(tailing: _Tail, seconds: float) -> None:
    """Stop the receive loop and wait for it to release what it holds."""
    tailing.stop.set()
    if not tailing.finished.wait(seconds):
        # The broker did not answer in time: the leases end on their own, nothing is lost.
        raise BackendUnavailable(
            f"stopped without releasing {len(tailing.held)} message(s) within {seconds:g} s; "
            "they become receivable again when their visibility timeout ends"
        )
