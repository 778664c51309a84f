"""melange: broker-agnostic messaging for Python services.

Create topics and queues with :class:`MessagingBackendFactory`, pick a broker by
name (:func:`melange.backends.load_backend`), publish and consume through the
:class:`~melange.backends.MessagingBackend` contract.
"""

from __future__ import annotations

from melange.exceptions import MelangeError
from melange.factory import MessagingBackendFactory
from melange.message import Message

__version__ = "8.0.0.dev0"

__all__ = ["MelangeError", "Message", "MessagingBackendFactory", "__version__"]
