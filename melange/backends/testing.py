"""melange 7.x's synchronous test helpers; deprecated, use the ``memory`` backend.

``InMemoryMessagingBackend`` and ``link_synchronously`` are 7.x's
(:mod:`melange.compat.testing`), on melange 8's ``MemoryBackend``.
"""

from melange.compat import deprecated
from melange.compat.testing import InMemoryMessagingBackend, link_synchronously

__all__ = ["InMemoryMessagingBackend", "link_synchronously"]

deprecated(
    "melange.backends.testing",
    "melange.backends.MemoryBackend with MessageDispatcher(backend, queue_name, "
    "consumers).run_until_idle(stop=True)",
)
