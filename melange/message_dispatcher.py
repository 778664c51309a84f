"""melange 7.x's import path of the dispatchers; deprecated, use ``melange.dispatcher``."""

from melange.compat import deprecated
from melange.dispatcher import MessageDispatcher, SimpleMessageDispatcher

__all__ = ["MessageDispatcher", "SimpleMessageDispatcher"]

deprecated(
    "melange.message_dispatcher",
    "from melange import MessageDispatcher, SimpleMessageDispatcher (or melange.dispatcher)",
)
