"""``melange doctor``: check the configured backend end to end, one line per check.

Each check says what it found and, when it fails, how to fix it: where the
configuration comes from, whether the backend's plugin is installed (and its
version), which credentials the backend will use (named, never shown), whether
the broker answers within ``--timeout``, and what the broker lets melange do
(reading every entity of a topology file, creating and deleting a throwaway
queue, Pub/Sub's dead-letter permissions). Registered lazily by :mod:`melange.cli`.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import click

from melange.cli import (
    EXIT_CODES,
    EXIT_FAILURE,
    CliState,
    _backend_options,
    _emit_json,
    _Holder,
    _json_option,
    _run_with_timeout,
    _timeout_option,
    endpoint_of,
)
from melange.exceptions import MelangeError

if TYPE_CHECKING:
    from melange.backends.base import MessagingBackend

__all__ = ["Check", "doctor"]

Status = Literal["ok", "warn", "fail", "skip"]
PROBE_PREFIX = "melange-doctor-"


@dataclass
class Check:
    """The outcome of one check.

    Attributes:
        name: What was checked.
        status: ``ok``, ``warn`` (works, but worth a look), ``fail`` or ``skip``
            (not run: an earlier check failed, or it does not apply).
        detail: What was found.
        fix: How to fix a failure or a warning; empty otherwise.
    """

    name: str
    status: Status
    detail: str
    fix: str = ""


# Credentials, by backend: (options that carry them, environment variables, files).
_CREDENTIAL_SOURCES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "aws": (
        ("aws_access_key_id", "profile_name", "session"),
        ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE"),
        ("~/.aws/credentials", "~/.aws/config"),
    ),
    "gcp": (("credentials_file",), ("GOOGLE_APPLICATION_CREDENTIALS",), ()),
    "azure": (("connection_string", "credential"), ("AZURE_CLIENT_ID", "AZURE_TENANT_ID"), ()),
}
_CREDENTIAL_FIX = {
    "aws": "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, or the options "
    "aws_access_key_id/aws_secret_access_key or profile_name",
    "gcp": "run `gcloud auth application-default login`, set GOOGLE_APPLICATION_CREDENTIALS, "
    "or give the option credentials_file",
    "azure": "give the option connection_string, or fully_qualified_namespace with Azure "
    "identity environment variables (AZURE_CLIENT_ID, AZURE_TENANT_ID, ...)",
}


@click.command(epilog=EXIT_CODES)
@click.argument("topology_file", metavar="[FILE]", required=False)
@click.option(
    "--write-check",
    is_flag=True,
    help=f"Also create and delete a throwaway queue ({PROBE_PREFIX}...) to test that permission.",
)
@_backend_options
@_timeout_option
@_json_option
@click.pass_obj
def doctor(
    state: CliState | None,
    topology_file: str | None,
    write_check: bool,
    backend: str | None,
    options: list[tuple[str, str]],
    timeout: float,
    as_json: bool,
) -> None:
    """Check the configured backend end to end, one line per check.

    Configuration and where it comes from, the backend's plugin and version,
    credentials (never printed), the broker answering within --timeout, and
    permissions: with FILE (a topology file) every entity it declares must be
    readable; with --write-check a throwaway queue is created and deleted.
    Exits 1 when any check fails.
    """
    checks = run_checks(state, backend, dict(options), timeout, topology_file, write_check)
    failed = any(check.status == "fail" for check in checks)
    if as_json:
        _emit_json({"ok": not failed, "checks": [asdict(check) for check in checks]})
    else:
        _print_checks(checks)
    if failed:
        raise click.exceptions.Exit(EXIT_FAILURE)


def run_checks(
    state: CliState | None,
    backend: str | None,
    options: dict[str, Any],
    timeout: float,
    topology_file: str | None = None,
    write_check: bool = False,
) -> list[Check]:
    """Run every check in order; a failed one skips those that depend on it.

    Args:
        state: The CLI's state; an injected backend skips the configuration checks.
        backend: A backend name given on the command line.
        options: Backend options given on the command line.
        timeout: Seconds the broker has to answer each step.
        topology_file: A topology file whose entities must be readable.
        write_check: Also create and delete a throwaway queue.

    Returns:
        The checks, in the order they ran.
    """
    checks: list[Check] = []
    injected = state.backend if state is not None else None
    if injected is not None:
        checks.append(
            Check("configuration", "ok", f"backend {injected.name!r} given by the caller")
        )
        name, config_options = injected.name, dict[str, Any]()
    else:
        resolved = _check_configuration(backend, options, checks)
        if resolved is None:
            return _skip_rest(checks)
        name, config_options = resolved
        if not _check_plugin(name, checks):
            return _skip_rest(checks)
        checks.append(_check_credentials(name, config_options))
    _check_broker(injected, name, config_options, timeout, topology_file, write_check, checks)
    return checks


_LATER = ("plugin", "credentials", "backend created", "reachable", "permissions")


def _skip_rest(checks: list[Check]) -> list[Check]:
    done = {check.name for check in checks}
    for name in _LATER:
        if name not in done:
            checks.append(Check(name, "skip", "not checked: an earlier check failed"))
    return checks


def _check_configuration(
    backend: str | None, options: dict[str, Any], checks: list[Check]
) -> tuple[str, dict[str, Any]] | None:
    from melange.config import ENV_BACKEND, find_config_file, resolve_backend_config

    try:
        config = resolve_backend_config(backend, **options)
    except MelangeError as exc:
        if backend:
            where = "--backend"
        elif os.environ.get(ENV_BACKEND):
            where = f"the environment ({ENV_BACKEND})"
        else:
            try:
                where = str(find_config_file() or "the default")
            except MelangeError:  # the file is the problem: the message names it
                where = "the configuration file"
        # The plugin errors carry the name, also when a configuration file gave it.
        name = getattr(exc, "backend_name", None) or backend or os.environ.get(ENV_BACKEND) or "?"
        if type(exc).__name__ == "BackendNotFound":
            # The configuration is readable; the plugin check says what to install.
            checks.append(Check("configuration", "ok", f"backend {name!r} from {where}"))
            checks.append(Check("plugin", "fail", str(exc), _install_hint(name)))
            return None
        if type(exc).__name__ == "BackendLoadError":
            # Installed but does not import (or is not a backend): the plugin is at fault.
            checks.append(Check("configuration", "ok", f"backend {name!r} from {where}"))
            checks.append(Check("plugin", "fail", str(exc), _REINSTALL))
            return None
        checks.append(
            Check(
                "configuration",
                "fail",
                f"{exc} (read from {where})",
                "correct the configuration (docs/configuration.md lists the sources)",
            )
        )
        return None
    source = {
        "arguments": "--backend on the command line",
        "environment": f"the environment ({ENV_BACKEND}, MELANGE_OPTION_*)",
        "default": "no configuration found: the embedded default",
    }.get(config.source, config.source)
    keys = ", ".join(sorted(config.options)) or "none"
    if config.source == "default":
        checks.append(
            Check(
                "configuration",
                "warn",
                f"backend {config.backend!r}: {source} (options: {keys})",
                f"set {ENV_BACKEND}=NAME or write a melange.toml (docs/configuration.md) to "
                "use a broker",
            )
        )
    else:
        checks.append(
            Check(
                "configuration",
                "ok",
                f"backend {config.backend!r} from {source} (options: {keys})",
            )
        )
    return config.backend, dict(config.options)


def _install_hint(name: str) -> str:
    from melange.backends.registry import KNOWN_BACKENDS

    known = KNOWN_BACKENDS.get(name)
    if known is not None:
        return f"install it: {known.install_hint}"
    return "install the distribution that provides it (melange backends lists what is installed)"


_REINSTALL = "reinstall the plugin; the error above says what failed to import"


def _check_plugin(name: str, checks: list[Check]) -> bool:
    from melange import __version__
    from melange.backends import describe_backends

    info = next((info for info in describe_backends() if info.name == name), None)
    if info is None or info.status != "ok":
        error = info.error if info is not None else f"backend {name!r} is not registered"
        fix = _install_hint(name) if info is None or info.status == "not installed" else _REINSTALL
        checks.append(Check("plugin", "fail", error or "unknown error", fix))
        return False
    version = f"{info.distribution} {info.version}" if info.version else str(info.distribution)
    checks.append(Check("plugin", "ok", f"{name!r} from {version} (melange {__version__})"))
    return True


def _check_credentials(name: str, options: dict[str, Any]) -> Check:
    base = "aws" if name == "localsqs" else name
    if name == "memory":
        return Check("credentials", "ok", "none needed (in-process backend)")
    if name == "localsqs" and "aws_access_key_id" not in options:
        return Check("credentials", "ok", "none needed (local server: placeholder credentials)")
    if name == "gcp" and (options.get("emulator_host") or os.environ.get("PUBSUB_EMULATOR_HOST")):
        return Check("credentials", "ok", "none needed (Pub/Sub emulator)")
    sources = _CREDENTIAL_SOURCES.get(base)
    if sources is None:
        return Check(
            "credentials",
            "skip",
            f"not known for backend {name!r}: the reachability check uses them",
        )
    option_names, variables, files = sources
    found = [f"option {key}" for key in option_names if options.get(key)]
    found += [f"${variable}" for variable in variables if os.environ.get(variable)]
    found += [path for path in files if Path(path).expanduser().is_file()]
    if name == "gcp":
        adc = Path("~/.config/gcloud/application_default_credentials.json").expanduser()
        if adc.is_file():
            found.append("gcloud application default credentials")
    if found:
        # Names of the sources only: their values are secrets.
        return Check("credentials", "ok", "found in " + ", ".join(found))
    return Check(
        "credentials",
        "warn",
        "none found in the options, environment or usual files (a cloud instance's own "
        "identity is only seen by the reachability check)",
        _CREDENTIAL_FIX[base],
    )


def _check_broker(
    injected: MessagingBackend | None,
    name: str,
    options: dict[str, Any],
    timeout: float,
    topology_file: str | None,
    write_check: bool,
    checks: list[Check],
) -> None:
    """Create the backend and talk to the broker; each step within ``timeout``."""
    stage = ["backend created"]

    def work(holder: _Holder) -> None:
        from melange.backends.registry import get_backend_class

        holder.name, holder.endpoint = name, endpoint_of(options)
        holder.prepared()  # the plugin was loaded by the plugin check
        if injected is not None:
            opened, owned = injected, False
        else:
            opened, owned = get_backend_class(name)(**options), True
        holder.backend = opened
        try:
            checks.append(Check("backend created", "ok", repr(opened)))
            stage[0] = "reachable"
            started = time.monotonic()
            probe = f"{PROBE_PREFIX}{uuid.uuid4().hex[:8]}"
            opened.get_queue(probe)
            elapsed = time.monotonic() - started
            checks.append(Check("reachable", "ok", f"the broker answered in {elapsed:.2f} s"))
            holder.last_progress = time.monotonic()
            stage[0] = "permissions"
            for check in _permission_checks(opened, topology_file, write_check, probe):
                checks.append(check())
                holder.last_progress = time.monotonic()
        finally:
            if owned:
                opened.close()

    try:
        _run_with_timeout(work, timeout, status="checking the broker...", quiet=True)
    except MelangeError as exc:
        fix = {
            "backend created": "correct the options the message names (docs/backends/)",
            "reachable": "check that the broker runs and that the endpoint, network and "
            "credentials are right; or give it longer with --timeout SECONDS",
            "permissions": "grant the permissions the message names",
        }[stage[0]]
        checks.append(Check(stage[0], "fail", str(exc), fix))
        _skip_rest(checks)
        return
    if not any(check.name == "permissions" for check in checks):
        checks.append(
            Check(
                "permissions",
                "skip",
                "not checked: give a topology FILE or --write-check",
            )
        )


def _permission_checks(
    backend: MessagingBackend, topology_file: str | None, write_check: bool, probe: str
) -> list[Callable[[], Check]]:
    checks: list[Callable[[], Check]] = []
    if topology_file is not None:
        checks.append(lambda: _check_topology(backend, topology_file))
    if write_check:
        checks.append(lambda: _check_write(backend, probe))
    if backend.name == "gcp":
        checks.append(lambda: _check_gcp_dead_letters(backend))
    return checks


def _check_topology(backend: MessagingBackend, topology_file: str) -> Check:
    from melange.factory import MessagingBackendFactory
    from melange.topology_file import load_topology

    try:
        plan = load_topology(topology_file).plan(MessagingBackendFactory(backend))
    except MelangeError as exc:
        return Check(
            "permissions",
            "fail",
            f"reading the entities of {topology_file}: {exc}",
            "grant read access to the queues and topics it declares, or correct the file",
        )
    pending = len(plan.actions)
    detail = f"every entity of {topology_file} is readable"
    if pending:
        return Check(
            "permissions",
            "warn",
            f"{detail}; {pending} change(s) pending",
            f"run `melange plan {topology_file}` to see them, `melange apply` to make them",
        )
    return Check("permissions", "ok", f"{detail}; it is applied")


def _check_write(backend: MessagingBackend, probe: str) -> Check:
    from melange.topology import QueueSpec

    try:
        backend.declare_queue(QueueSpec(probe))
        backend.delete_queue(probe)
    except MelangeError as exc:
        return Check(
            "permissions",
            "fail",
            f"creating and deleting queue {probe!r}: {exc}",
            "grant the permission to create and delete queues (melange apply needs it)",
        )
    return Check("permissions", "ok", f"created and deleted a throwaway queue {probe!r}")


def _check_gcp_dead_letters(backend: MessagingBackend) -> Check:
    text = repr(backend)
    if "emulator=" in text:
        return Check(
            "dead-letter permissions",
            "skip",
            "the Pub/Sub emulator has no IAM: nothing to check",
        )
    return Check(
        "dead-letter permissions",
        "skip",
        "not checked here: the backend checks (and grants, unless "
        "dead_letter_permissions='check') Pub/Sub's service agent roles for each queue with a "
        "dead-letter queue when `melange apply` creates it, and prints the gcloud commands for "
        "what is missing",
    )


_MARKS = {"ok": "ok  ", "warn": "warn", "fail": "FAIL", "skip": "skip"}


def _print_checks(checks: list[Check]) -> None:
    width = max(len(check.name) for check in checks)
    for check in checks:
        click.echo(f"[{_MARKS[check.status]}] {check.name:<{width}}  {check.detail}")
        if check.fix:
            click.echo(f"       {'':<{width}}  fix: {check.fix}")
    failed = sum(check.status == "fail" for check in checks)
    warned = sum(check.status == "warn" for check in checks)
    click.echo(f"{failed} failed, {warned} warning(s), {len(checks)} check(s)")
