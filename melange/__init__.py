"""melange: broker-agnostic messaging for Python services.

Create topics and queues with :class:`MessagingBackendFactory`, pick a broker by
name (:func:`melange.backends.load_backend`), publish and consume through the
:class:`~melange.backends.MessagingBackend` contract.

The names below are imported on first use, so ``import melange`` stays cheap
for command-line tools and short-lived processes.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from melange.consumers import Consumer, SingleDispatchConsumer, consumer, handler
    from melange.dispatcher import MessageDispatcher, SimpleMessageDispatcher
    from melange.dispatcher_config import DispatcherConfig
    from melange.exceptions import MelangeError
    from melange.factory import MessagingBackendFactory
    from melange.message import Message
    from melange.publishers import QueuePublisher, TopicPublisher

__version__ = "8.0.0"

_LAZY = {
    "Consumer": "melange.consumers",
    "DispatcherConfig": "melange.dispatcher_config",
    "MelangeError": "melange.exceptions",
    "Message": "melange.message",
    "MessageDispatcher": "melange.dispatcher",
    "MessagingBackendFactory": "melange.factory",
    "QueuePublisher": "melange.publishers",
    "SimpleMessageDispatcher": "melange.dispatcher",
    "SingleDispatchConsumer": "melange.consumers",
    "TopicPublisher": "melange.publishers",
    "consumer": "melange.consumers",
    "handler": "melange.consumers",
}

__all__ = [
    "Consumer",
    "DispatcherConfig",
    "MelangeError",
    "Message",
    "MessageDispatcher",
    "MessagingBackendFactory",
    "QueuePublisher",
    "SimpleMessageDispatcher",
    "SingleDispatchConsumer",
    "TopicPublisher",
    "__version__",
    "consumer",
    "handler",
]


def __getattr__(name: str) -> Any:
    """Import a public name on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
