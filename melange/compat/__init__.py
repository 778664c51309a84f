"""melange 7.x compatibility: the 7.x objects that have no melange 8 equivalent.

A melange 7.x application upgrades by changing its pin: every documented 7.x
import path, class, call form and option either keeps working with a
:class:`DeprecationWarning` that names the melange 8 form, or raises a
:class:`~melange.exceptions.MelangeError` that names the replacement.

The 7.x surface lives here and in thin alias modules at the 7.x import paths
(``melange.models``, ``melange.serializers.registry``,
``melange.backends.testing``, ...). Nothing in this package is imported by
``import melange`` or by any melange 8 code path: a module here loads only when
a 7.x name, path or call form is used. New code should not import it.

Modules:
    serialization: 7.x ``SerializerRegistry(config_dict)``, its lookup methods,
        7.x serializer ids and text bodies, 7.x-style custom serializers.
    models: 7.x ``Message``, ``QueueWrapper`` and ``TopicWrapper``.
    testing: 7.x ``InMemoryMessagingBackend`` and ``link_synchronously``.
    cache: 7.x ``RedisCache``, ``NullCache``, ``DeduplicationCache`` and
        :func:`~melange.compat.cache.dedup_from_7x`.
    backends: the 7.x ``MessagingBackend`` interface (``melange.backends.interfaces``).
"""

from __future__ import annotations

import warnings

from melange.exceptions import MelangeError

__all__ = ["RemovedIn8Error", "deprecated"]


class RemovedIn8Error(MelangeError, ImportError):
    """A melange 7.x module or name that melange 8 no longer has; the message names the way on.

    Also an :class:`ImportError`, as the failed import is one.
    """


def deprecated(old: str, new: str, *, stacklevel: int = 2) -> None:
    """Warn that ``old`` is a melange 7.x form and name its melange 8 replacement ``new``.

    Args:
        old: The 7.x form the caller used, e.g. ``"melange.models"``.
        new: What to write instead in melange 8.
        stacklevel: As for :func:`warnings.warn`, counted from the caller of this
            function: 2 points at the line that called the caller.
    """
    warnings.warn(
        f"{old} is a melange 7.x form, deprecated in melange 8 and kept only for upgrading; "
        f"use {new}",
        DeprecationWarning,
        stacklevel=stacklevel + 1,
    )
