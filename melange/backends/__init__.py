"""Backends: the contract, and finding backends by name.

``from melange.backends import AWSBackend`` (or ``LocalSQSBackend``,
``GCPPubSubBackend``, ``AzureServiceBusBackend``, ``RabbitMQBackend``,
``MemoryBackend``) resolves the class from the installed plugins on first use; when
the plugin is missing the :class:`~melange.exceptions.BackendNotFound` (an
``ImportError``) names the command that installs it.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

from melange.backends.base import (
    Capabilities,
    MessagingBackend,
    OutgoingMessage,
    PublishResult,
    ReceivedMessage,
)
from melange.backends.registry import (
    ENTRY_POINT_GROUP,
    KNOWN_BACKENDS,
    available_backends,
    describe_backends,
    get_backend_class,
    load_backend,
    register_backend,
    unregister_backend,
)
from melange.exceptions import BackendNotFound

if TYPE_CHECKING:
    # For type checkers only: the classes' real types where the plugins are installed.
    # At run time __getattr__ resolves them through the entry points, so that importing
    # melange never imports a broker SDK. Without the plugin a type checker sees Any
    # (a missing import inside an installed package is not the user's error).
    from melange_aws import AWSBackend as AWSBackend
    from melange_azure import AzureServiceBusBackend as AzureServiceBusBackend
    from melange_gcp import GCPPubSubBackend as GCPPubSubBackend
    from melange_localsqs import LocalSQSBackend as LocalSQSBackend
    from melange_rabbitmq import RabbitMQBackend as RabbitMQBackend

    from melange.backends.memory import MemoryBackend as MemoryBackend

__all__ = [
    "ENTRY_POINT_GROUP",
    "Capabilities",
    "MessagingBackend",
    "OutgoingMessage",
    "PublishResult",
    "ReceivedMessage",
    "available_backends",
    "describe_backends",
    "get_backend_class",
    "load_backend",
    "load_backend_from_config",
    "register_backend",
    "unregister_backend",
]

_CLASS_TO_BACKEND = {known.class_name: known.name for known in KNOWN_BACKENDS.values()}

# melange 7.x's names in this package: (module that defines it, melange 8's form). Each
# use warns; the compat modules load only then.
_SEVEN_X = {
    "BackendManager": (
        "melange.compat.backend_manager",
        "an explicit backend: QueuePublisher(backend), MessageDispatcher(backend, queue_name, "
        "consumers), MessagingBackendFactory(backend)",
    ),
    "InMemoryMessagingBackend": (
        "melange.compat.testing",
        "melange.backends.MemoryBackend with MessageDispatcher(...).run_until_idle(stop=True)",
    ),
    "link_synchronously": (
        "melange.compat.testing",
        "melange.backends.MemoryBackend with MessageDispatcher(...).run_until_idle(stop=True)",
    ),
}


def __getattr__(attribute: str) -> Any:
    """Resolve backend classes such as ``AWSBackend`` through the entry points, lazily."""
    if attribute in _CLASS_TO_BACKEND:
        return get_backend_class(_CLASS_TO_BACKEND[attribute])
    if attribute == "load_backend_from_config":
        from melange.config import load_backend_from_config

        return load_backend_from_config
    if attribute in _SEVEN_X:
        # `from melange.backends import X` asks hasattr() in importlib first, then reads X:
        # warn once, on the read.
        probe = sys._getframe(1).f_code.co_name == "_handle_fromlist"
        return _seven_x(attribute, warn=not probe)
    if attribute == "KafkaBackend":
        raise BackendNotFound(
            "melange 8 has no Kafka backend (7.x's KafkaBackend was an unimplemented stub); "
            "use an installed backend (`melange backends` lists them) or write one for Kafka "
            "(docs/writing-a-backend.md)",
            backend_name="kafka",
        )
    raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")


def _seven_x(attribute: str, *, warn: bool) -> Any:
    """Return a melange 7.x name of this package, with a DeprecationWarning naming the 8.x form."""
    module, new = _SEVEN_X[attribute]
    if warn:
        from melange.compat import deprecated

        deprecated(f"melange.backends.{attribute}", new, stacklevel=3)
    return getattr(importlib.import_module(module), attribute)


def __dir__() -> list[str]:
    return sorted([*__all__, *_CLASS_TO_BACKEND])
