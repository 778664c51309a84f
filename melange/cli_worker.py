"""``melange worker MODULE:ATTR``: the click command; the work is in :mod:`melange.worker`.

Registered on the ``melange`` group by :mod:`melange.cli`. Only the console
script imports this module, and it imports the supervisor only when run.
"""

from __future__ import annotations

import logging

import click

from melange.exceptions import MelangeError

__all__ = ["worker"]

WORKER_EXIT_CODES = (
    "Exit codes: 0 stopped cleanly by SIGTERM/SIGINT; 1 failure (crash loop, a worker "
    "that did not stop cleanly, missing prometheus-client, health port in use); 2 usage "
    "error (including a target that is not MODULE:ATTR); 4 the module cannot be imported; "
    "5 the module has no such attribute; 6 the attribute is not a dispatcher, a list of "
    "them or a factory."
)


@click.command(epilog=WORKER_EXIT_CODES)
@click.argument("target", metavar="MODULE:ATTR")
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes, each running every dispatcher of the target.",
)
@click.option(
    "--health-port",
    type=click.IntRange(0, 65535),
    default=None,
    metavar="PORT",
    help="Serve /livez, /readyz and /metrics on this port (0: a free one, logged). "
    'Needs prometheus-client: pip install "melange[worker]".',
)
@click.option(
    "--health-host",
    default="0.0.0.0",
    show_default=True,
    help="Address the health port listens on.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Logs on standard error as text, or as JSON lines.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    show_default=True,
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help=(
        "The same as --log-format json (errors too are JSON lines); a usage error is a "
        "JSON document on standard output, as with every command's --json."
    ),
)
@click.option(
    "--max-restarts",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Restarts allowed within --restart-window before the worker gives up (exit 1).",
)
@click.option(
    "--restart-window",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    metavar="SECONDS",
)
def worker(
    target: str,
    processes: int,
    health_port: int | None,
    health_host: str,
    log_format: str,
    log_level: str,
    as_json: bool,
    max_restarts: int,
    restart_window: float,
) -> None:
    """Run the dispatchers of MODULE:ATTR until SIGTERM or SIGINT, like `uvicorn module:app`.

    ATTR is a MessageDispatcher or AsyncMessageDispatcher, a list of them, or
    (recommended) a function taking no arguments that returns one of those: it
    is called in each worker process. A supervisor keeps --processes worker
    processes running, restarts one that dies, and stops them all gracefully on
    SIGTERM or SIGINT. See docs/worker.md.
    """
    from melange.worker.logs import configure_logging
    from melange.worker.supervisor import WorkerOptions, run_supervisor
    from melange.worker.target import WorkerTargetError

    if as_json:
        log_format = "json"
    configure_logging(log_format, log_level)
    try:
        options = WorkerOptions(
            target=target,
            processes=processes,
            health_port=health_port,
            health_host=health_host,
            log_format=log_format,
            log_level=log_level.lower(),
            max_restarts=max_restarts,
            restart_window=restart_window,
        )
        code = run_supervisor(options)
    except MelangeError as exc:
        code = exc.exit_code if isinstance(exc, WorkerTargetError) else 1
        _error(exc, log_format, code)
        raise click.exceptions.Exit(code) from None
    raise click.exceptions.Exit(code)


def _error(exc: MelangeError, log_format: str, code: int) -> None:
    if log_format == "json":  # a line with every field of the others (melange.worker.logs)
        extra = {"error": type(exc).__name__, "exit_code": code}
        logging.getLogger("melange.worker").error("%s", exc, extra=extra)
    else:
        click.echo(f"melange: error: {exc}", err=True)
