"""The ``melange`` command line, on click (parsing, help) and rich (tables, progress).

Commands:

* ``melange backends``: installed backends (and first-party ones that are not),
  with distribution, version, capabilities and load status.
* ``melange plan FILE`` / ``melange apply FILE``: what applying a topology file
  would change / apply it.
* ``melange dlq peek|redrive|purge QUEUE``: look at, send back or empty a
  queue's dead-letter queue (:mod:`melange.deadletter`).
* ``melange publish`` / ``melange tail QUEUE``: send a message, watch a queue
  (:mod:`melange.cli_messages`).
* ``melange doctor``: check the configured backend end to end (:mod:`melange.cli_doctor`).
* ``melange demo``: the payments demo on the embedded memory backend.

Every command takes ``--json`` (one JSON document on standard output, errors
included); every command that talks to a broker takes ``--timeout SECONDS``.
Exit codes are :data:`EXIT_CODES`. Only the console script imports this
module: ``import melange`` never loads click or rich.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import click

from melange.exceptions import BackendUnavailable, MelangeError

if TYPE_CHECKING:
    from melange.backends.base import MessagingBackend, ReceivedMessage

__all__ = ["EXIT_CODES", "CliState", "cli", "main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CHANGES_PENDING = 3
EXIT_INTERRUPTED = 130

EXIT_CODES = (
    "Exit codes: 0 success; 1 failure (broker error, timeout, refused operation); "
    "2 usage error (bad option or argument); 3 `plan --detailed-exitcode` with changes "
    "pending; 130 interrupted."
)
DEFAULT_TIMEOUT = 30.0
TABLE_WIDTH = 100  # tables never grow wider than this, whatever the terminal
PREVIEW_CHARS = 60

_T = TypeVar("_T")
_JSON_KEY = "melange.json"
_ARGV_KEY = "melange.argv"


@dataclass
class CliState:
    """What a caller embedding the CLI (or a test) can hand to it as click's ``obj``.

    Attributes:
        backend: Used by the broker commands instead of the configured backend
            (the caller keeps ownership: the CLI does not close it). The memory
            backend lives in one process, so this is how to reach it in-process.
    """

    backend: MessagingBackend | None = None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``melange`` command (the console script's entry point).

    Args:
        argv: The arguments after the program name; ``sys.argv[1:]`` when ``None``.

    Returns:
        The exit code (see :data:`EXIT_CODES`).
    """
    try:
        cli.main(args=None if argv is None else list(argv), prog_name="melange")
    except SystemExit as exc:
        if exc.code is None:
            return EXIT_OK
        return exc.code if isinstance(exc.code, int) else EXIT_FAILURE
    return EXIT_OK


class _MelangeGroup(click.Group):
    """Turns melange's errors into messages and exit codes, never tracebacks.

    ``lazy_commands`` maps a command name to ``"module:attribute"``: the module
    is imported only when that command runs (or help lists it), so the CLI
    starts fast and each command can live in its own module.
    """

    def __init__(self, *args: Any, lazy_commands: dict[str, str] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in self.lazy_commands:
            import importlib

            module, _, attribute = self.lazy_commands[cmd_name].partition(":")
            command = getattr(importlib.import_module(module), attribute)
            self.add_command(command, cmd_name)
        return command

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta[_ARGV_KEY] = list(args)  # to honour --json even when parsing fails
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            if not _json_mode(ctx):
                raise
            _emit_json({"error": exc.format_message(), "type": "UsageError"})
            raise click.exceptions.Exit(EXIT_USAGE) from None
        except MelangeError as exc:
            _fail(ctx, exc)
        except KeyboardInterrupt:
            click.echo("melange: interrupted", err=True)
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None


def _json_mode(ctx: click.Context) -> bool:
    argv: list[str] = ctx.meta.get(_ARGV_KEY, [])
    options = argv[: argv.index("--")] if "--" in argv else argv
    return bool(ctx.meta.get(_JSON_KEY)) or "--json" in options


def _fail(ctx: click.Context, exc: MelangeError) -> NoReturn:
    if _json_mode(ctx):
        _emit_json({"error": str(exc), "type": type(exc).__name__})
    else:
        click.echo(f"melange: error: {exc}", err=True)
    raise click.exceptions.Exit(EXIT_FAILURE)


def _emit_json(document: object) -> None:
    click.echo(json.dumps(document, indent=2))


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.meta[_JSON_KEY] = True
    return value


_F = TypeVar("_F", bound=Callable[..., Any])


def _json_option(function: _F) -> _F:
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        is_eager=True,  # set before other options are checked, so their errors are JSON too
        callback=_set_json,
        expose_value=True,
        help="Print one JSON document on standard output (errors too).",
    )(function)


def _timeout_option(function: _F) -> _F:
    return click.option(
        "--timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=DEFAULT_TIMEOUT,
        show_default=True,
        metavar="SECONDS",
        help="Fail (exit 1) when the broker has not answered within this time.",
    )(function)


def _parse_option(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> Any:
    pairs: list[tuple[str, str]] = []
    for text in values:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {text!r}")
        pairs.append((key.strip(), value))
    return pairs


def _backend_options(function: _F) -> _F:
    function = click.option(
        "-o",
        "--option",
        "options",
        multiple=True,
        metavar="KEY=VALUE",
        callback=_parse_option,
        help="A backend option (repeatable), e.g. -o region_name=eu-west-1.",
    )(function)
    return click.option(
        "--backend",
        metavar="NAME",
        help="Backend to use instead of the configured one (see docs/configuration.md).",
    )(function)


def _version() -> str:
    from melange import __version__

    return __version__


@click.group(
    cls=_MelangeGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": TABLE_WIDTH},
    epilog=EXIT_CODES,
    lazy_commands={
        "publish": "melange.cli_messages:publish",
        "tail": "melange.cli_messages:tail",
        "doctor": "melange.cli_doctor:doctor",
    },
)
@click.version_option(_version(), "--version", prog_name="melange", message="%(prog)s %(version)s")
def cli() -> None:
    """Broker-agnostic messaging: backends, topologies, messages, dead-letter queues, checks."""


# ------------------------------------------------------------------ backends
@cli.command(epilog=EXIT_CODES)
@_json_option
def backends(as_json: bool) -> None:
    """List backends: distribution, version, capabilities, load status."""
    from melange.backends import describe_backends
    from melange.backends.registry import KNOWN_BACKENDS

    rows: list[dict[str, Any]] = []
    for info in describe_backends():
        known = KNOWN_BACKENDS.get(info.name)
        distribution = info.distribution or (known.distribution if known else None)
        installed = info.status != "not installed"
        rows.append(
            {
                "name": info.name,
                "distribution": distribution,
                "version": info.version,
                "capabilities": info.capabilities.supported() if info.capabilities else None,
                "status": info.status,
                "error": info.error if installed else None,
                "install": None if installed else info.error,
            }
        )
    if as_json:
        _emit_json(rows)
        return
    table = _table(
        "NAME",
        "DISTRIBUTION",
        "VERSION",
        "CAPABILITIES",
        "STATUS",
        "ERROR",
        wrap=("CAPABILITIES", "ERROR"),
    )
    for row in rows:
        _add_row(
            table,
            row["name"],
            row["distribution"] or "-",
            row["version"] or "-",
            # A space after each comma lets a narrow column wrap between names.
            ", ".join(row["capabilities"]) if row["capabilities"] is not None else "-",
            row["status"],
            row["error"] or (f"install with: {row['install']}" if row["install"] else ""),
        )
    _print(table)


def _table(*headers: str, wrap: Sequence[str] = ()) -> Any:
    """A rich table whose ``wrap`` columns wrap; the others keep their text on one line."""
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for header in headers:
        table.add_column(header, overflow="fold", no_wrap=header not in wrap, min_width=len(header))
    return table


def _add_row(table: Any, *cells: str) -> None:
    from rich.text import Text

    # Text, not str: a cell such as 'pip install "melange[aws]"' is not rich markup.
    table.add_row(*(Text(cell) for cell in cells))


def _print(renderable: Any) -> None:
    import io

    from rich.console import Console

    # Never wider than TABLE_WIDTH; narrower when the terminal is (COLUMNS when piped).
    width = min(Console(file=sys.stdout).width, TABLE_WIDTH)
    buffer = io.StringIO()
    # crop=False: a table that cannot shrink to the width (its headers) comes out wider;
    # cropped, the end of each line (characters of a cell) would be lost.
    Console(file=buffer, width=width, highlight=False, color_system=None).print(
        renderable, crop=False
    )
    for line in buffer.getvalue().splitlines():
        click.echo(line.rstrip())  # no padding after the last cell: easier to grep and diff


# ------------------------------------------------------------- the broker work
class _Holder:
    """The backend a worker thread created, for the timeout message."""

    def __init__(self) -> None:
        self.backend: MessagingBackend | None = None
        self.name: str | None = None
        self.endpoint: str | None = None  # from the options, when the backend does not say
        # Loading the backend's plugin (its SDK) is local work: the clock starts after it.
        self.preparing = True
        self.last_progress = time.monotonic()

    def prepared(self) -> None:
        """Start the --timeout clock: from now on the work waits on the broker."""
        self.preparing = False
        self.last_progress = time.monotonic()


# Options that name where a backend connects, most specific first.
# ``url`` is RabbitMQ's (amqp://user:password@host:port/vhost): only scheme, host and port show.
_ENDPOINT_OPTIONS = ("endpoint_url", "sqs_endpoint_url", "emulator_host", "api_endpoint", "url")


def endpoint_of(options: dict[str, Any]) -> str | None:
    """Where the options say the backend connects, without user info, path or query.

    Args:
        options: Backend constructor options.

    Returns:
        ``scheme://host:port`` or ``host:port``, or ``None`` when no option names one.
    """
    for key in _ENDPOINT_OPTIONS:
        value = options.get(key)
        if isinstance(value, str) and value:
            return _safe_endpoint(value)
    host, port = options.get("host"), options.get("port")
    if isinstance(host, str) and host:
        return f"{host}:{port}" if port else host
    connection = options.get("connection_string")
    if isinstance(connection, str):
        # Only the Endpoint=... part: the rest of a connection string holds the key.
        for part in connection.split(";"):
            key, _, value = part.partition("=")
            if key.strip().lower() == "endpoint" and value:
                return _safe_endpoint(value.strip())
    return None


def _safe_endpoint(text: str) -> str:
    # Scheme, host and port only: user info and query strings may hold secrets.
    parts = urlsplit(text if "://" in text else f"//{text}")
    host = parts.hostname or ""
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # not a number: leave it out rather than fail on the way to an error
        port = ""
    return f"{parts.scheme}://{host}{port}" if parts.scheme else f"{host}{port}"


def _describe(holder: _Holder) -> str:
    backend = holder.backend
    if backend is None:
        where = f"backend {holder.name!r} (still being created)" if holder.name else "the backend"
        return f"{where} at {holder.endpoint}" if holder.endpoint else where
    where = f"backend {backend.name!r}"
    try:
        endpoint = getattr(backend, "endpoint_url", None) or getattr(backend, "namespace", None)
    except Exception:  # a property that itself needs the broker: name the backend alone
        endpoint = None
    if isinstance(endpoint, str) and endpoint:
        where += f" at {_safe_endpoint(endpoint)}"
    elif holder.endpoint:
        where += f" at {holder.endpoint}"
    return where


def _run_with_timeout(
    work: Callable[[_Holder], _T], timeout: float, *, status: str, quiet: bool = False
) -> _T:
    """Run ``work`` on a daemon thread; fail when it makes no progress for ``timeout`` s.

    A broker that accepts connections and never answers would otherwise hold the
    command for the client library's own (long) timeouts and retries. The thread
    is abandoned on timeout: the process is about to exit anyway.
    """
    holder = _Holder()
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            outcome["value"] = work(holder)
        except BaseException as exc:  # handed to the main thread, which re-raises it
            outcome["error"] = exc
        finally:
            done.set()

    thread = threading.Thread(target=target, name="melange-cli-broker", daemon=True)
    # With --json, standard error stays quiet even on a terminal (docs/cli.md).
    context = click.get_current_context(silent=True)
    quiet = quiet or (context is not None and _json_mode(context))
    spinner = None if quiet or not sys.stderr.isatty() else _spinner(status)
    try:
        thread.start()
        while not done.wait(0.05):
            if not holder.preparing and time.monotonic() - holder.last_progress > timeout:
                raise BackendUnavailable(
                    f"no answer from {_describe(holder)} within {timeout:g} s; check that the "
                    "broker is running and reachable, or give it longer with --timeout SECONDS"
                )
    finally:
        if spinner is not None:
            spinner.stop()
    if "error" in outcome:
        raise outcome["error"]
    value: _T = outcome["value"]
    return value


def _spinner(text: str) -> Any:
    from rich.console import Console

    status = Console(stderr=True).status(text)
    status.start()
    return status


def _open_backend(
    state: CliState | None, holder: _Holder, backend: str | None, options: list[tuple[str, str]]
) -> tuple[MessagingBackend, bool]:
    """The injected backend (not ours to close), else the configured one (ours)."""
    if state is not None and state.backend is not None:
        holder.backend = state.backend
        holder.prepared()
        return state.backend, False
    from melange.backends.registry import get_backend_class
    from melange.config import resolve_backend_config

    given: dict[str, Any] = dict(options)
    config = resolve_backend_config(backend, **given)  # imports the plugin
    holder.name = config.backend
    holder.endpoint = endpoint_of(config.options)
    holder.prepared()
    created = get_backend_class(config.backend)(**config.options)
    holder.backend = created
    return created, True


# ------------------------------------------------------------- plan / apply
def _topology_command(name: str, summary: str) -> Callable[[_F], click.Command]:
    def decorate(function: _F) -> click.Command:
        function = _json_option(_timeout_option(_backend_options(function)))
        function = click.argument("file", metavar="FILE")(function)
        return cli.command(
            name,
            help=f"{summary}\n\nFILE is a TOML topology file (format: docs/cli.md). The backend "
            "is --backend NAME, else the file's [backend] table, else the configured one.",
            short_help=summary,
            epilog=EXIT_CODES,
        )(function)

    return decorate


@_topology_command("plan", "Show what applying a topology file would change (changes nothing).")
@click.option(
    "--detailed-exitcode",
    is_flag=True,
    help="Exit 3 when the plan has changes pending (0 when there are none), as terraform does.",
)
@click.pass_obj
def plan(
    state: CliState | None,
    file: str,
    backend: str | None,
    options: list[tuple[str, str]],
    timeout: float,
    as_json: bool,
    detailed_exitcode: bool,
) -> None:
    pending = _run_topology(state, file, backend, options, timeout, as_json, apply=False)
    if detailed_exitcode and pending:
        raise click.exceptions.Exit(EXIT_CHANGES_PENDING)


@_topology_command("apply", "Create or converge the topics and queues of a topology file.")
@click.pass_obj
def apply(
    state: CliState | None,
    file: str,
    backend: str | None,
    options: list[tuple[str, str]],
    timeout: float,
    as_json: bool,
) -> None:
    _run_topology(state, file, backend, options, timeout, as_json, apply=True)


def _run_topology(
    state: CliState | None,
    file: str,
    backend_name: str | None,
    options: list[tuple[str, str]],
    timeout: float,
    as_json: bool,
    *,
    apply: bool,
) -> bool:
    from melange.factory import MessagingBackendFactory
    from melange.topology_file import load_topology

    topology = load_topology(file)

    def work(holder: _Holder) -> tuple[Any, str]:
        injected = state.backend if state is not None else None
        if injected is not None:
            holder.backend = injected
            holder.prepared()
            factory = MessagingBackendFactory(injected)
        else:
            holder.name, holder.endpoint = _topology_target(topology, backend_name, options)
            holder.prepared()
            factory = topology.factory(backend_name, **dict(options))
            holder.backend = factory.backend
        try:
            result = topology.apply(factory) if apply else topology.plan(factory)
        finally:
            if injected is None:
                factory.backend.close()
        return result, factory.backend.name

    result, used = _run_with_timeout(
        work, timeout, status=f"{'applying' if apply else 'planning'} {file}..."
    )
    if as_json:
        _emit_json(
            {
                "file": file,
                "backend": used,
                "applied": apply,
                "changes_pending": bool(result) and not apply,
                "actions": [
                    {
                        "kind": action.kind,
                        "target": action.target,
                        "changes": [
                            {
                                "setting": c.setting,
                                "current": _json_value(c.current),
                                "declared": _json_value(c.declared),
                            }
                            for c in action.changes
                        ],
                        "description": str(action),
                    }
                    for action in result.actions
                ],
                "unchanged": list(result.unchanged),
            }
        )
        return bool(result)
    if apply:
        click.echo(f"Applied {file} on backend {used!r}:")
    else:
        click.echo(f"Plan for {file} on backend {used!r} (nothing was changed):")
    click.echo(result.describe())
    if used == "memory" and (state is None or state.backend is None):
        click.echo(
            "note: the memory backend lives inside this command and keeps nothing after it "
            "ends; pass --backend NAME or configure a backend (melange.toml) to reach a broker"
        )
    return bool(result)


def _json_value(value: object) -> object:
    """A plan change's value as JSON: a dead-letter policy becomes an object.

    ``{"queue_name": ..., "max_receive_count": ...}`` for a dead-letter policy (``null`` for
    none), lists for tuples and sets, and the text of anything else JSON cannot hold, so
    ``apply --json`` never fails after it has changed the broker.
    """
    from melange.topology import DeadLetterPolicy

    if isinstance(value, DeadLetterPolicy):
        return {"queue_name": value.queue_name, "max_receive_count": value.max_receive_count}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict):
        return {str(key): _json_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [_json_value(item) for item in value]
        return sorted(items, key=str) if isinstance(value, set | frozenset) else items
    return str(value)


def _topology_target(
    topology: Any, backend_name: str | None, options: list[tuple[str, str]]
) -> tuple[str | None, str | None]:
    """The backend and endpoint a topology file's command will use, for a timeout message."""
    from melange.config import resolve_backend_config

    entry = topology.backend
    given: dict[str, Any] = dict(options)
    if entry is not None and (backend_name is None or backend_name == entry.name):
        given = {**entry.options, **given}
        backend_name = entry.name
    try:
        config = resolve_backend_config(backend_name, **given)  # imports the plugin
    except MelangeError:  # topology.factory reports a bad configuration
        return backend_name, None
    return config.backend, endpoint_of(config.options)


# ---------------------------------------------------------------------- dlq
@cli.group(cls=_MelangeGroup, epilog=EXIT_CODES)
def dlq() -> None:
    """Look at, send back or empty a queue's dead-letter queue.

    QUEUE is the queue whose dead-letter queue to work on (not the dead-letter
    queue itself). The backend comes from --backend/-o, else the configuration.
    """


def _dlq_command(function: _F) -> _F:
    function = _json_option(_timeout_option(_backend_options(function)))
    return click.argument("queue", metavar="QUEUE")(function)


@dlq.command("peek", epilog=EXIT_CODES)
@_dlq_command
@click.option(
    "--max",
    "max_messages",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="The most messages to show.",
)
@click.pass_obj
def dlq_peek(
    state: CliState | None,
    queue: str,
    backend: str | None,
    options: list[tuple[str, str]],
    timeout: float,
    as_json: bool,
    max_messages: int,
) -> None:
    """Show messages of QUEUE's dead-letter queue; they stay there."""
    from melange.deadletter import dead_letter_queue, peek

    def work(holder: _Holder) -> tuple[str, list[ReceivedMessage]]:
        opened, owned = _open_backend(state, holder, backend, options)
        try:
            return dead_letter_queue(opened, queue), peek(opened, queue, max_messages=max_messages)
        finally:
            if owned:
                opened.close()

    source, messages = _run_with_timeout(work, timeout, status=f"reading {queue}'s DLQ...")
    rows: list[dict[str, Any]] = [
        {
            "id": m.message_id,
            "receive_count": m.receive_count,
            "attributes": dict(m.attributes),
            "group_id": m.group_id,
            "size": len(m.body),
            "body_preview": _preview(m.body),
        }
        for m in messages
    ]
    if as_json:
        _emit_json({"queue": queue, "dead_letter_queue": source, "messages": rows})
        return
    if not rows:
        click.echo(f"{source!r} (the dead-letter queue of {queue!r}) is empty")
        return
    table = _table("ID", "RECEIVES", "SIZE", "ATTRIBUTES", "BODY", wrap=("ATTRIBUTES", "BODY"))
    for row in rows:
        attributes = ", ".join(f"{k}={v}" for k, v in sorted(row["attributes"].items()))
        _add_row(
            table,
            row["id"],
            str(row["receive_count"]),
            str(row["size"]),
            attributes,
            row["body_preview"],
        )
    click.echo(f"{len(rows)} message(s) of {source!r} (the dead-letter queue of {queue!r}):")
    _print(table)


def _preview(body: bytes) -> str:
    text = body[: PREVIEW_CHARS * 4].decode("utf-8", errors="replace")
    text = text.replace("\n", " ").replace("\r", " ")
    return (
        text
        if len(text) <= PREVIEW_CHARS and len(body) <= PREVIEW_CHARS * 4
        else (text[:PREVIEW_CHARS] + "...")
    )


@dlq.command("redrive", epilog=EXIT_CODES)
@_dlq_command
@click.option("--to", "to", metavar="OTHER", help="Move the messages to OTHER instead of QUEUE.")
@click.option(
    "--max", "max_messages", type=click.IntRange(min=1), help="The most messages to move."
)
@click.option("--dry-run", is_flag=True, help="Only count what would be moved; move nothing.")
@click.pass_obj
def dlq_redrive(
    state: CliState | None,
    queue: str,
    backend: str | None,
    options: list[tuple[str, str]],
    timeout: float,
    as_json: bool,
    to: str | None,
    max_messages: int | None,
    dry_run: bool,
) -> None:
    """Move the messages of QUEUE's dead-letter queue back to QUEUE (or to --to OTHER).

    Each message is copied byte for byte and removed from the dead-letter queue
    only once the copy is accepted. --timeout is the longest wait for the next
    batch, so a long redrive is not cut short.
    """
    from melange.deadletter import RedriveResult, redrive

    progress = None if as_json or not sys.stderr.isatty() else _counter("moved")
    pause = _test_pause()

    def work(holder: _Holder) -> RedriveResult:
        def on_progress(result: RedriveResult) -> None:
            if progress is not None:
                progress(result.moved)
            if pause:
                click.echo(f"melange: test pause after {result.moved} moved", err=True)
                sys.stderr.flush()
                time.sleep(pause)
            holder.last_progress = time.monotonic()  # each batch restarts the --timeout clock

        opened, owned = _open_backend(state, holder, backend, options)
        try:
            return redrive(
                opened,
                queue,
                to=to,
                max_messages=max_messages,
                dry_run=dry_run,
                on_progress=on_progress,
            )
        finally:
            if owned:
                opened.close()

    result = _run_with_timeout(work, timeout, status="redriving...", quiet=progress is not None)
    if progress is not None:
        progress(None)
    failed = [{"id": message_id, "reason": reason} for message_id, reason in result.failed]
    if as_json:
        _emit_json(
            {
                "source": result.source,
                "target": result.target,
                "dry_run": dry_run,
                "moved": result.moved,
                "failed": failed,
            }
        )
    else:
        verb = "would move" if dry_run else "moved"
        click.echo(f"{verb} {result.moved} message(s) from {result.source!r} to {result.target!r}")
        for row in failed:
            click.echo(f"  not moved {row['id']}: {row['reason']}")
    if failed:
        raise click.exceptions.Exit(EXIT_FAILURE)


TEST_PAUSE_VARIABLE = "MELANGE_CLI_TEST_PAUSE_AFTER_BATCH"


def _test_pause() -> float:
    """Seconds to pause after each redrive batch: a test hook, to kill a redrive half-way."""
    import os

    try:
        return max(float(os.environ.get(TEST_PAUSE_VARIABLE, "0")), 0.0)
    except ValueError:
        return 0.0


def _counter(label: str) -> Callable[[int | None], None]:
    """A live ``N <label>`` line on standard error; call with ``None`` to end it."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn

    # Standard error: standard output holds only the result (a piped one too).
    bar = Progress(
        SpinnerColumn(),
        TextColumn("{task.completed} " + label),
        transient=True,
        console=Console(stderr=True),
    )
    task = bar.add_task(label, total=None)
    bar.start()

    def update(count: int | None) -> None:
        if count is None:
            bar.stop()
        else:
            bar.update(task, completed=count)

    return update


@dlq.command("purge", epilog=EXIT_CODES)
@_dlq_command
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (for scripts).")
@click.pass_obj
def dlq_purge(
    state: CliState | None,
    queue: str,
    backend: str | None,
    options: list[tuple[str, str]],
    timeout: float,
    as_json: bool,
    yes: bool,
) -> None:
    """Delete every message of QUEUE's dead-letter queue (asks first; --yes to skip).

    --timeout bounds the whole purge: give a very large queue a larger one.
    """
    from melange.deadletter import dead_letter_queue, purge

    if not yes:
        if as_json or not sys.stdin.isatty():
            # A script cannot answer a prompt: refuse rather than hang or guess.
            raise click.UsageError("purge needs --yes when there is no terminal to confirm on")
        click.confirm(
            f"Delete every message of the dead-letter queue of {queue!r}?", abort=True, err=True
        )

    def work(holder: _Holder) -> tuple[str, int]:
        opened, owned = _open_backend(state, holder, backend, options)
        try:
            return dead_letter_queue(opened, queue), purge(opened, queue)
        finally:
            if owned:
                opened.close()

    source, deleted = _run_with_timeout(work, timeout, status=f"purging {queue}'s DLQ...")
    if as_json:
        _emit_json({"queue": queue, "dead_letter_queue": source, "deleted": deleted})
    else:
        click.echo(f"deleted {deleted} message(s) from {source!r}")


# ---------------------------------------------------------------------- demo
@cli.command(epilog=EXIT_CODES)
@_json_option
def demo(as_json: bool) -> None:
    """Run the payments demo on the embedded memory backend.

    Declares a payments topology, publishes and consumes messages, and shows a
    poison message ending in the dead-letter queue. Needs nothing installed or
    running. With --json, prints only the closing counts.
    """
    import io

    from melange.demo import run_demo

    if not as_json:
        run_demo(sys.stdout)
        return
    summary = run_demo(io.StringIO())
    stats = summary.stats
    _emit_json(
        {
            "published": summary.published,
            "received": stats.received,
            "handled": stats.handled,
            "retried": stats.retried,
            "dead_lettered": stats.dead_lettered,
            "acked": stats.acked,
            "undecodable": stats.undecodable,
            "max_in_flight": stats.max_in_flight,
            "workers_used": summary.workers_used,
            "left_in_queues": summary.left_in_queues,
        }
    )


def _add_worker_command() -> None:
    from melange.cli_worker import worker  # its own module: docs/worker.md

    cli.add_command(worker)


_add_worker_command()

if __name__ == "__main__":
    raise SystemExit(main())
