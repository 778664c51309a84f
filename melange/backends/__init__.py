"""Backends: the contract, and finding backends by name.

``from melange.backends import AWSBackend`` (or ``LocalSQSBackend``,
``GCPPubSubBackend``, ``AzureServiceBusBackend``, ``MemoryBackend``) resolves the
class from the installed plugins on first use; when the plugin is missing the
:class:`~melange.exceptions.BackendNotFound` (an ``ImportError``) names the
command that installs it.
"""

from __future__ import annotations

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

if TYPE_CHECKING:
    # For type checkers only: the classes' real types where the plugins are installed.
    # At run time __getattr__ resolves them through the entry points, so that importing
    # melange never imports a broker SDK. Without the plugin a type checker sees Any
    # (a missing import inside an installed package is not the user's error).
    from melange_aws import AWSBackend as AWSBackend
    from melange_azure import AzureServiceBusBackend as AzureServiceBusBackend
    from melange_gcp import GCPPubSubBackend as GCPPubSubBackend
    from melange_localsqs import LocalSQSBackend as LocalSQSBackend

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


def __getattr__(attribute: str) -> Any:
    """Resolve backend classes such as ``AWSBackend`` through the entry points, lazily."""
    if attribute in _CLASS_TO_BACKEND:
        return get_backend_class(_CLASS_TO_BACKEND[attribute])
    if attribute == "load_backend_from_config":
        from melange.config import load_backend_from_config

        return load_backend_from_config
    raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")


def __dir__() -> list[str]:
    return sorted([*__all__, *_CLASS_TO_BACKEND])
