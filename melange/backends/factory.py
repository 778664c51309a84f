"""melange 7.x's import path of ``MessagingBackendFactory``; deprecated, use ``melange``."""

from melange.compat import deprecated
from melange.factory import MessagingBackendFactory

__all__ = ["MessagingBackendFactory"]

deprecated(
    "melange.backends.factory",
    "from melange import MessagingBackendFactory (or melange.factory)",
)
