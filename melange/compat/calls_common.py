"""What the 7.x call forms share: warnings that point at the caller's line, argument binding.

The 7.x call forms (publishers, dispatchers, consumers, the factory, the SQS
backends' keywords) are detected in the melange 8 classes by argument type and
handled by the ``melange.compat.calls_*`` modules; this one holds their helpers.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Mapping
from typing import Any

from melange.compat import deprecated
from melange.exceptions import ConfigurationError, did_you_mean

__all__ = ["bind_7x", "user_stacklevel", "warn_7x"]

# Frames of these modules are skipped, so a warning points at the application's line
# even when it is raised several calls deep (a plugin's constructor, a class statement).
_INTERNAL_PACKAGES = ("melange", "abc")


def _internal(module_name: str) -> bool:
    package = module_name.partition(".")[0]
    return package in _INTERNAL_PACKAGES or package.startswith("melange_")


def user_stacklevel() -> int:
    """Return the ``stacklevel`` that points at the first caller outside melange.

    Counted for a :func:`warnings.warn` call made by the caller of this function.
    """
    frame = sys._getframe(2)  # the caller's caller: stacklevel 2 for the caller's warn()
    level = 2
    while frame.f_back is not None and _internal(frame.f_globals.get("__name__", "")):
        frame = frame.f_back
        level += 1
    return level


def warn_7x(old: str, new: str) -> None:
    """Warn (``DeprecationWarning``) that ``old`` is a 7.x form; name the 8.x form ``new``.

    The warning points at the first line outside melange (the application's call).
    """
    # Both count from this function's caller: 2 is the line that called warn_7x.
    deprecated(old, new, stacklevel=user_stacklevel())


def bind_7x(
    call: str,
    signature: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    replacement: str,
) -> dict[str, Any]:
    """Bind a 7.x call's arguments to the 7.x signature; return them by name, defaults applied.

    Args:
        call: How the call is shown in errors, e.g. ``"QueuePublisher(...)"``.
        signature: A function with the 7.x signature (its body is never run).
        args: The positional arguments of the call.
        kwargs: The keyword arguments of the call.
        replacement: The melange 8 form, named in the error.

    Raises:
        ConfigurationError: The arguments do not fit the 7.x signature either.
    """
    sig = inspect.signature(signature)
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as exc:
        unknown = [name for name in kwargs if name not in sig.parameters]
        hint = did_you_mean(unknown[0], sig.parameters) if unknown else ""
        raise ConfigurationError(
            f"{call} was called with melange 7.x arguments that do not fit 7.x's "
            f"signature either ({exc}{hint}); the 7.x form is {call.partition('(')[0]}"
            f"{sig}, and melange 8's is {replacement}"
        ) from None
    bound.apply_defaults()
    return dict(bound.arguments)
