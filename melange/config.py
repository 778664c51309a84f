"""Choosing a backend by configuration.

The first source that names a backend wins, in this order:

1. explicit arguments: ``load_backend_from_config("aws", region_name="eu-west-1")``;
2. the environment: ``MELANGE_BACKEND=aws`` with options as
   ``MELANGE_OPTION_<NAME>=value`` (``MELANGE_OPTION_REGION_NAME=eu-west-1``);
3. a ``melange.toml`` file, or a ``[tool.melange]`` table in ``pyproject.toml``,
   in the working directory or the nearest parent that has one::

       backend = "aws"
       [options]            # [tool.melange.options] in pyproject.toml
       region_name = "eu-west-1"

4. otherwise the embedded ``memory`` backend.

Options come from the source that named the backend; explicit keyword options
are added on top. Option values from the environment are strings, converted to
the type the backend's constructor declares (int, float, bool).
"""

from __future__ import annotations

import inspect
import os
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from melange.backends.base import MessagingBackend
from melange.backends.registry import accepted_options, check_options, get_backend_class
from melange.exceptions import ConfigurationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

DEFAULT_BACKEND = "memory"
ENV_BACKEND = "MELANGE_BACKEND"
ENV_OPTION_PREFIX = "MELANGE_OPTION_"
CONFIG_FILE_NAME = "melange.toml"
_FILE_KEYS = ("backend", "options")


@dataclass(frozen=True)
class BackendConfig:
    """A resolved backend choice.

    Attributes:
        backend: The backend name.
        options: Constructor options, already converted to the declared types.
        source: Where the choice came from, for messages (``"arguments"``,
            ``"environment"``, a file path, or ``"default"``).
    """

    backend: str
    options: dict[str, Any] = field(default_factory=dict)
    source: str = "default"


def resolve_backend_config(
    backend: str | None = None,
    *,
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    **options: Any,
) -> BackendConfig:
    """Work out which backend to use and with which options, without creating it.

    Args:
        backend: An explicit backend name.
        config_file: Read this file instead of searching for one.
        environ: The environment to read (default ``os.environ``).
        cwd: Where to start searching for a configuration file (default: the working directory).
        **options: Explicit backend options; they override configured ones.

    Raises:
        ConfigurationError: A configuration file is unreadable or malformed, or an
            option is not accepted by the backend (the message lists accepted ones).
        BackendNotFound: The configured backend is not installed.
    """
    env = os.environ if environ is None else environ
    if backend is not None:
        chosen = BackendConfig(backend, {}, "arguments")
    elif env.get(ENV_BACKEND):
        env_options = {
            key[len(ENV_OPTION_PREFIX) :].lower(): value
            for key, value in env.items()
            if key.startswith(ENV_OPTION_PREFIX)
        }
        chosen = BackendConfig(env[ENV_BACKEND], env_options, "environment")
    else:
        path = Path(config_file) if config_file is not None else find_config_file(cwd)
        from_file = read_config_file(path) if path is not None else None
        chosen = from_file or BackendConfig(DEFAULT_BACKEND, {}, "default")
    merged = {**chosen.options, **options}
    backend_class = get_backend_class(chosen.backend)
    try:
        check_options(backend_class, merged)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{exc} (backend chosen by {chosen.source})") from None
    return BackendConfig(
        chosen.backend, _convert(backend_class, merged, chosen.source), chosen.source
    )


def load_backend_from_config(
    backend: str | None = None,
    *,
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    **options: Any,
) -> MessagingBackend:
    """Create the configured backend (see the module docs for the order of sources).

    Takes the same arguments as :func:`resolve_backend_config`.
    """
    config = resolve_backend_config(
        backend, config_file=config_file, environ=environ, cwd=cwd, **options
    )
    return get_backend_class(config.backend)(**config.options)


def find_config_file(cwd: str | os.PathLike[str] | None = None) -> Path | None:
    """Return the nearest ``melange.toml``, or ``pyproject.toml`` with ``[tool.melange]``.

    The search goes from ``cwd`` up and stops at the first directory holding a
    ``pyproject.toml`` (the project root), whether or not it configures melange.
    """
    start = Path(cwd) if cwd is not None else Path.cwd()
    for directory in (start, *start.parents):
        candidate = directory / CONFIG_FILE_NAME
        if candidate.is_file():
            return candidate
        pyproject = directory / "pyproject.toml"
        if pyproject.is_file():
            return pyproject if "melange" in _tool_table(pyproject, _load_toml(pyproject)) else None
    return None


def read_config_file(path: Path) -> BackendConfig | None:
    """Read a backend choice from ``melange.toml`` or ``pyproject.toml``.

    Returns:
        The choice, or ``None`` when the file names no backend.

    Raises:
        ConfigurationError: The file is unreadable or malformed.
    """
    data = _load_toml(path)
    table: object = (
        _tool_table(path, data).get("melange") if path.name == "pyproject.toml" else data
    )
    where = f"[tool.melange] in {path}" if path.name == "pyproject.toml" else str(path)
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ConfigurationError(f"{where} must be a table with keys {', '.join(_FILE_KEYS)}")
    unknown = sorted(set(table) - set(_FILE_KEYS))
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown key(s) {', '.join(unknown)}; accepted keys: {', '.join(_FILE_KEYS)}"
        )
    name = table.get("backend")
    options = table.get("options", {})
    if name is None:
        return None
    if not isinstance(name, str) or not isinstance(options, dict):
        raise ConfigurationError(
            f'{where}: write backend = "<name>" and an [options] table, e.g. backend = "memory"'
        )
    return BackendConfig(name, dict(options), where)


def _tool_table(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    """The ``[tool]`` table of a ``pyproject.toml``'s ``data`` (empty when there is none)."""
    tool = data.get("tool", {})
    if not isinstance(tool, dict):
        raise ConfigurationError(
            f"{path}: tool must be a table of per-tool tables (such as [tool.melange]), "
            f"not a {type(tool).__name__}"
        )
    return tool


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            loaded: dict[str, Any] = tomllib.load(handle)
            return loaded
    except OSError as exc:
        raise ConfigurationError(f"cannot read configuration file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"configuration file {path} is not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:  # tomllib decodes the bytes before it parses them
        raise ConfigurationError(
            f"configuration file {path} is not UTF-8 (byte {exc.start}): a configuration "
            "file must be UTF-8 TOML; save it with UTF-8 encoding"
        ) from None


def _convert(
    backend_class: type[MessagingBackend], options: dict[str, Any], source: str
) -> dict[str, Any]:
    """Convert string option values to the types the constructor declares; check the others."""
    parameters = accepted_options(backend_class)
    hints = _parameter_types(backend_class.__init__, parameters)
    converted: dict[str, Any] = {}
    for name, value in options.items():
        if name not in parameters:  # taken by **options: the constructor checks (and names) it
            converted[name] = value
            continue
        target = hints.get(name, parameters[name].annotation)
        if isinstance(value, str):
            converted[name] = _coerce(name, value, target, source)
        else:
            converted[name] = _check_type(name, value, target, source)
    return converted


def _parameter_types(function: Any, parameters: dict[str, inspect.Parameter]) -> dict[str, object]:
    """The declared type of each parameter; one that cannot be resolved is left out.

    Resolved one by one: an annotation that names a type-checking-only import (such
    as the ``**options`` of a backend) must not hide the types of the others.
    """
    try:
        return dict(typing.get_type_hints(function))
    except Exception:
        pass
    namespace = getattr(function, "__globals__", {})
    types: dict[str, object] = {}
    for name, parameter in parameters.items():
        annotation = parameter.annotation
        if isinstance(annotation, str):
            try:
                # The class's own annotation text, evaluated as typing.get_type_hints would.
                annotation = eval(annotation, namespace)
            except Exception:
                continue
        types[name] = annotation
    return types


def _coerce(name: str, value: str, target: object, source: str) -> object:
    kinds = set(typing.get_args(target)) or {target}
    kinds.discard(type(None))
    if not kinds or kinds == {inspect.Parameter.empty} or kinds == {str}:
        return value
    for kind in (bool, int, float):
        if kind not in kinds:
            continue
        if kind is bool:
            lowered = value.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            continue
        try:
            return kind(value)
        except ValueError:
            continue
    if str in kinds:  # e.g. int | str: a number when it reads as one, else the text
        return value
    raise ConfigurationError(
        f"option {name}={value!r} from {source} is not a valid {_readable(kinds)}"
    )


def _check_type(name: str, value: object, target: object, source: str) -> object:
    """Return ``value`` (a number, list, table... from a file) if it fits the declared type."""
    union = typing.get_origin(target) in (typing.Union, types.UnionType)
    declared = set(typing.get_args(target)) if union else {target}
    declared.discard(type(None))
    kinds = {kind for kind in declared if _plain_class(kind)}
    # Undeclared, generic (list[str]) or not a class (a Callable): the constructor checks it.
    if not kinds or kinds != declared or inspect.Parameter.empty in kinds:
        return value
    if isinstance(value, bool):  # a bool is an int to isinstance, not to a user
        fits = bool in kinds
    elif isinstance(value, int):
        fits = bool(kinds & {int, float})
    else:
        fits = isinstance(value, tuple(kinds))
    if not fits:
        raise ConfigurationError(
            f"option {name}={value!r} from {source} is not a valid {_readable(kinds)}"
        )
    return value


def _plain_class(kind: object) -> typing.TypeGuard[type]:
    return isinstance(kind, type) and typing.get_origin(kind) is None


def _readable(kinds: set[Any]) -> str:
    return " or ".join(sorted(getattr(kind, "__name__", str(kind)) for kind in kinds))
