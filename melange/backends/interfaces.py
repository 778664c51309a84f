"""melange 7.x's import path of the backend interface; deprecated, use ``melange.backends``.

``MessagingBackend`` here is :class:`melange.compat.backends.MessagingBackend`:
every melange 8 backend is an instance of it, and a subclass written against
7.x's interface is refused with the way to port it.
"""

from melange.compat import deprecated
from melange.compat.backends import MessagingBackend

__all__ = ["MessagingBackend"]

deprecated(
    "melange.backends.interfaces",
    "from melange.backends import MessagingBackend (melange 8's contract: "
    "docs/writing-a-backend.md)",
)
