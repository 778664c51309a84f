"""melange 7.x's ``BackendManager``: one process-wide default backend.

In 7.x, ``BackendManager().set_default_backend(backend)`` let publishers,
dispatchers and the factory be created without a backend. melange 8 takes the
backend explicitly (``QueuePublisher(backend)``, ``MessageDispatcher(backend,
queue_name, consumers)``, ``MessagingBackendFactory(backend)``); this module keeps
the 7.x form working, with a ``DeprecationWarning`` at every use.

The 7.x import path ``melange.backends.backend_manager`` re-exports it.
"""

from __future__ import annotations

import threading

from melange.backends.base import MessagingBackend
from melange.compat.calls_common import warn_7x
from melange.exceptions import ConfigurationError

__all__ = ["BackendManager"]

EXPLICIT = (
    "an explicit backend: QueuePublisher(backend), TopicPublisher(backend), "
    "MessageDispatcher(backend, queue_name, consumers), MessagingBackendFactory(backend)"
)


class BackendManager:
    """melange 7.x's holder of the default backend; every ``BackendManager()`` is the same object.

    Deprecated: pass the backend to each publisher, dispatcher and factory instead.

    Examples:
        >>> BackendManager().set_default_backend(MemoryBackend())  # doctest: +SKIP
        >>> QueuePublisher(serializer_registry)  # 7.x form: uses that backend  # doctest: +SKIP
    """

    _instance: BackendManager | None = None
    _lock = threading.Lock()
    _backend: MessagingBackend | None

    def __new__(cls) -> BackendManager:
        """Return the one instance, created on first use."""
        with cls._lock:
            if cls._instance is None:
                instance = super().__new__(cls)
                instance._backend = None
                cls._instance = instance
            return cls._instance

    def __repr__(self) -> str:
        return f"<BackendManager default={self._backend!r}>"

    def set_default_backend(self, backend: MessagingBackend) -> None:
        """Make ``backend`` the default of publishers, dispatchers and factories given none.

        Args:
            backend: A melange 8 backend.

        Raises:
            ConfigurationError: ``backend`` is not a melange 8 ``MessagingBackend``.
        """
        warn_7x("BackendManager().set_default_backend(backend)", EXPLICIT)
        if not isinstance(backend, MessagingBackend):
            raise ConfigurationError(
                f"set_default_backend() needs a melange.backends.MessagingBackend, got "
                f"{type(backend).__name__}; melange 7.x backends do not work with melange 8: "
                "create one with melange.backends.load_backend(name) (or LocalSQSBackend(), "
                "AWSBackend(), MemoryBackend())"
            )
        with self._lock:
            self._backend = backend

    def get_default_backend(self) -> MessagingBackend:
        """Return the default backend.

        Raises:
            ConfigurationError: No default backend was set.
        """
        warn_7x("BackendManager().get_default_backend()", EXPLICIT)
        return _required(self, "BackendManager().get_default_backend()")


def _required(manager: BackendManager, using: str) -> MessagingBackend:
    backend = manager._backend
    if backend is None:
        raise ConfigurationError(
            f"{using} needs a backend, and none was given or set as the default; pass "
            f"{EXPLICIT} (or, the 7.x way, call BackendManager().set_default_backend(backend) "
            "first)"
        )
    return backend


def default_backend(using: str) -> MessagingBackend:
    """Return the default backend for a 7.x-form call made without one, with a warning.

    Args:
        using: The call, e.g. ``"QueuePublisher(serializer_registry)"``, for the
            warning and the error.

    Raises:
        ConfigurationError: No default backend was set.
    """
    backend = _required(BackendManager(), using)
    warn_7x(f"{using} without a backend (the BackendManager default)", EXPLICIT)
    return backend


def default_backend_if_set(using: str) -> MessagingBackend | None:
    """Return the default backend if one was set (with a warning), else ``None``.

    For calls whose melange 8 form also works without a backend
    (``MessagingBackendFactory()`` loads the configured one): a 7.x application
    that set a default keeps using it.
    """
    backend = BackendManager()._backend
    if backend is not None:
        warn_7x(f"{using} without a backend (the BackendManager default)", EXPLICIT)
    return backend
