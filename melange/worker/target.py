"""Load a worker target, ``MODULE:ATTR``, into the dispatchers it stands for.

The attribute is a dispatcher (threaded or asyncio), a list or tuple of them,
or a function taking no arguments that returns either: the recommended form,
since then every worker process builds its own dispatchers (and backend
connections) after it starts.

Each way a target can be wrong has its own :class:`WorkerTargetError`
subclass and exit code, so a script or a process manager can tell them apart.
"""

from __future__ import annotations

import difflib
import importlib
import traceback
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias, Union

from melange.exceptions import ConfigurationError

if TYPE_CHECKING:
    from melange.aio import AsyncMessageDispatcher
    from melange.dispatcher import MessageDispatcher

__all__ = [
    "EXIT_NOT_A_DISPATCHER",
    "EXIT_TARGET_ATTRIBUTE",
    "EXIT_TARGET_IMPORT",
    "EXIT_TARGET_SYNTAX",
    "AnyDispatcher",
    "NotADispatcher",
    "TargetAttributeError",
    "TargetImportError",
    "TargetSyntaxError",
    "WorkerTargetError",
    "load_target",
    "parse_target",
]

AnyDispatcher: TypeAlias = Union["MessageDispatcher", "AsyncMessageDispatcher"]

EXIT_TARGET_SYNTAX = 2  # a usage error, like any other bad argument of the CLI
EXIT_TARGET_IMPORT = 4
EXIT_TARGET_ATTRIBUTE = 5
EXIT_NOT_A_DISPATCHER = 6

_EXAMPLE = "e.g. myapp.consumers:dispatchers"
_WHAT = (
    "a MessageDispatcher, an AsyncMessageDispatcher, a list or tuple of them, "
    "or a function taking no arguments that returns one of those"
)


class WorkerTargetError(ConfigurationError):
    """The ``MODULE:ATTR`` given to ``melange worker`` cannot be run.

    Attributes:
        exit_code: The exit code of ``melange worker`` for this kind of error.
    """

    exit_code: ClassVar[int] = 1


class TargetSyntaxError(WorkerTargetError):
    """The target is not of the form ``MODULE:ATTR`` (exit code 2)."""

    exit_code = EXIT_TARGET_SYNTAX


class TargetImportError(WorkerTargetError):
    """The target's module cannot be imported, or raised while imported (exit code 4)."""

    exit_code = EXIT_TARGET_IMPORT


class TargetAttributeError(WorkerTargetError):
    """The target's module has no such attribute (exit code 5)."""

    exit_code = EXIT_TARGET_ATTRIBUTE


class NotADispatcher(WorkerTargetError):
    """The target is not a dispatcher, a list of them or a factory of them (exit code 6)."""

    exit_code = EXIT_NOT_A_DISPATCHER


def parse_target(spec: str) -> tuple[str, str]:
    """Split ``MODULE:ATTR`` into the module name and the (possibly dotted) attribute path.

    Raises:
        TargetSyntaxError: ``spec`` is not two dotted Python names joined by one colon.
    """
    module, colon, attribute = spec.partition(":")
    if not colon:
        raise TargetSyntaxError(
            f"worker target {spec!r} has no ':'; write MODULE:ATTR ({_EXAMPLE})"
        )
    for label, value in (("module", module), ("attribute", attribute)):
        if not value or not all(part.isidentifier() for part in value.split(".")):
            raise TargetSyntaxError(
                f"worker target {spec!r}: {label} {value!r} is not a dotted Python name; "
                f"write MODULE:ATTR ({_EXAMPLE})"
            )
    return module, attribute


def load_target(spec: str) -> list[AnyDispatcher]:
    """Import ``MODULE:ATTR``, call it if it is a factory, and return its dispatchers.

    Args:
        spec: ``MODULE:ATTR``; the module is imported with the current
            ``sys.path`` (the worker process puts the current directory first).

    Returns:
        The dispatchers, at least one, none started.

    Raises:
        TargetSyntaxError: ``spec`` is not ``MODULE:ATTR``.
        TargetImportError: The module cannot be imported (the message names it
            and the import error, with the file and line it came from).
        TargetAttributeError: The module has no such attribute (the message
            lists the closest names it has).
        NotADispatcher: The attribute (or what the factory returned) is not
            a dispatcher or a list of them.
    """
    module_name, attribute = parse_target(spec)
    value = _attribute(_import(module_name), module_name, attribute)
    if _is_factory(value):
        try:
            value = value()
        except TypeError as exc:
            if _takes_arguments(value):
                raise NotADispatcher(
                    f"worker target {spec!r} is a function that needs arguments; a factory "
                    f"takes none ({exc})"
                ) from None
            raise
        return _dispatchers(value, f"{spec}() returned")
    return _dispatchers(value, f"worker target {spec!r} is")


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(f"{exc.name}.")):
            raise TargetImportError(
                f"cannot import module {name!r}: {exc}; check the name, and run from the "
                "directory that contains it or add that directory to PYTHONPATH"
            ) from None
        raise TargetImportError(_failed_import(name, exc)) from None
    except Exception as exc:  # the module itself raised: say where, without a traceback
        raise TargetImportError(_failed_import(name, exc)) from None


def _failed_import(name: str, exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = ""
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f" at {exc.filename}:{exc.lineno}"
    elif frames:
        where = f" at {frames[-1].filename}:{frames[-1].lineno}"
    return f"importing module {name!r} failed{where}: {type(exc).__name__}: {exc}"


def _attribute(module: ModuleType, module_name: str, path: str) -> Any:
    value: Any = module
    walked = module_name
    for part in path.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            names = [n for n in dir(value) if not n.startswith("_")]
            raise TargetAttributeError(
                f"{walked!r} has no attribute {part!r}{_nearby(part, names)}"
            ) from None
        walked = f"{walked}:{part}" if walked == module_name else f"{walked}.{part}"
    return value


def _nearby(name: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    shown = close or sorted(names)[:10]
    if not shown:
        return "; it defines no public names"
    label = "the closest names" if close else "its names include"
    return f"; {label}: {', '.join(shown)}"


def _dispatcher_classes() -> tuple[type, ...]:
    from melange.aio import AsyncMessageDispatcher
    from melange.dispatcher import MessageDispatcher

    return (MessageDispatcher, AsyncMessageDispatcher)


def _is_factory(value: Any) -> bool:
    return (
        callable(value)
        and not isinstance(value, type)
        and not isinstance(value, _dispatcher_classes())
    )


def _takes_arguments(function: Any) -> bool:
    import inspect

    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return False
    return any(
        p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        for p in signature.parameters.values()
    )


def _dispatchers(value: Any, described: str) -> list[AnyDispatcher]:
    classes = _dispatcher_classes()
    if isinstance(value, classes):
        return [value]  # type: ignore[list-item]
    if isinstance(value, (list, tuple)):
        if not value:
            raise NotADispatcher(f"{described} an empty {type(value).__name__}; give {_WHAT}")
        for index, item in enumerate(value):
            if not isinstance(item, classes):
                raise NotADispatcher(
                    f"{described} a {type(value).__name__} whose item {index} is "
                    f"{_kind(item)}, not a dispatcher; give {_WHAT}"
                )
        return list(value)
    raise NotADispatcher(f"{described} {_kind(value)}; give {_WHAT}")


def _kind(value: Any) -> str:
    if isinstance(value, type):
        return f"the class {value.__name__} (a class, not an instance)"
    return f"a {type(value).__module__}.{type(value).__qualname__}"
