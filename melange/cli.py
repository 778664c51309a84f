"""The ``melange`` command line.

Commands:

* ``melange backends [--json]``: every installed backend (and the first-party
  ones that are not installed), with distribution, version, capabilities, and
  whether it loads.
* ``melange plan FILE [--backend NAME]``: what applying a topology file would
  change, changing nothing.
* ``melange apply FILE [--backend NAME]``: apply a topology file and print what was done.
* ``melange demo``: the payments demo on the embedded memory backend.

Exit codes: 0 on success, 2 for a usage error or any
:class:`~melange.exceptions.MelangeError` (its message goes to standard error,
without a traceback), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from melange.exceptions import MelangeError

__all__ = ["main"]

EXIT_OK = 0
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``melange`` command.

    Args:
        argv: The arguments after the program name; ``sys.argv[1:]`` when ``None``.

    Returns:
        The exit code.
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    try:
        code: int = args.run(args, sys.stdout)
    except MelangeError as exc:
        print(f"melange: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("melange: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`melange backends | head`): stop quietly, and keep
        # Python's final flush of stdout from raising again at exit.
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    return code


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # stdout is not a real file (tests)
        pass


def _parser() -> argparse.ArgumentParser:
    from melange import __version__

    parser = argparse.ArgumentParser(
        prog="melange",
        description="Broker-agnostic messaging: backends, topologies and a demo.",
    )
    parser.add_argument("--version", action="version", version=f"melange {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    backends = commands.add_parser(
        "backends",
        help="list backends: distribution, version, capabilities, load status",
        description="List installed backends and the first-party ones that are not installed.",
    )
    backends.add_argument("--json", action="store_true", help="print JSON instead of a table")
    backends.set_defaults(run=_backends)

    for name, run, summary in (
        ("plan", _plan, "show what applying a topology file would change (changes nothing)"),
        ("apply", _apply, "create or converge the topics and queues of a topology file"),
    ):
        command = commands.add_parser(
            name,
            help=summary,
            description=f"{summary[0].upper()}{summary[1:]}. The file format is described "
            "in docs/cli.md and in melange.topology_file.",
        )
        command.add_argument("file", metavar="FILE", help="a TOML topology file")
        command.add_argument(
            "--backend",
            metavar="NAME",
            help="backend to use instead of the file's [backend] table or the configured one",
        )
        command.add_argument(
            "-o",
            "--option",
            metavar="KEY=VALUE",
            action="append",
            default=[],
            type=_option,
            help="a backend option (repeatable), e.g. -o region_name=eu-west-1",
        )
        command.set_defaults(run=run)

    demo = commands.add_parser(
        "demo",
        help="run the payments demo on the embedded memory backend",
        description="Declare a payments topology, publish and consume messages, and show a "
        "poison message ending in the dead-letter queue. Needs nothing installed or running.",
    )
    demo.set_defaults(run=_demo)
    return parser


def _option(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value


# ------------------------------------------------------------------ backends
def _backends(args: argparse.Namespace, out: TextIO) -> int:
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
    if args.json:
        json.dump(rows, out, indent=2)
        out.write("\n")
        return EXIT_OK
    table = [
        [
            row["name"],
            row["distribution"] or "-",
            row["version"] or "-",
            ",".join(row["capabilities"]) if row["capabilities"] is not None else "-",
            row["status"],
            row["error"] or (f"install with: {row['install']}" if row["install"] else ""),
        ]
        for row in rows
    ]
    _print_table(out, ["NAME", "DISTRIBUTION", "VERSION", "CAPABILITIES", "STATUS", "ERROR"], table)
    return EXIT_OK


def _print_table(out: TextIO, header: list[str], rows: list[list[str]]) -> None:
    # The last column is not padded: it holds free text of any length.
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        out.write(("  ".join([*cells, row[-1]])).rstrip() + "\n")


# ------------------------------------------------------------- plan / apply
def _plan(args: argparse.Namespace, out: TextIO) -> int:
    return _run_topology(args, out, apply=False)


def _apply(args: argparse.Namespace, out: TextIO) -> int:
    return _run_topology(args, out, apply=True)


def _run_topology(args: argparse.Namespace, out: TextIO, *, apply: bool) -> int:
    from melange.topology_file import load_topology

    topology = load_topology(args.file)
    factory = topology.factory(args.backend, **dict(args.option))
    backend = factory.backend
    try:
        plan = topology.apply(factory) if apply else topology.plan(factory)
    finally:
        backend.close()
    if apply:
        out.write(f"Applied {args.file} on backend {backend.name!r}:\n")
    else:
        out.write(f"Plan for {args.file} on backend {backend.name!r} (nothing was changed):\n")
    out.write(plan.describe() + "\n")
    if backend.name == "memory":
        out.write(
            "note: the memory backend lives inside this command and keeps nothing after it "
            "ends; pass --backend NAME or configure a backend (melange.toml) to reach a broker\n"
        )
    return EXIT_OK


# ---------------------------------------------------------------------- demo
def _demo(args: argparse.Namespace, out: TextIO) -> int:
    from melange.demo import run_demo

    run_demo(out)
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
