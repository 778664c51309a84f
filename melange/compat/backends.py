"""melange 7.x's backend interface, ``melange.backends.interfaces.MessagingBackend``.

7.x backends implemented ``declare_topic(name)``, ``get_queue(name)``,
``declare_queue(name, *topics)``, ``retrieve_messages``/``yield_messages``,
``publish_to_queue``/``publish_to_topic``, ``acknowledge`` and
``close_connection``, passing :class:`~melange.compat.models.QueueWrapper`,
:class:`~melange.compat.models.TopicWrapper` and 7.x
:class:`~melange.compat.models.Message` objects. melange 8's contract
(:class:`melange.backends.MessagingBackend`) is spec-based and cannot be filled
in from those methods, so a class written against the 7.x interface is refused
when it is defined, with the way to port it; annotations and ``isinstance``
checks against the 7.x name keep working with melange 8 backends.
"""

from __future__ import annotations

from typing import Any

from melange.backends import base

__all__ = ["MessagingBackend"]


class MessagingBackend(base.MessagingBackend):
    """7.x's name for the backend interface: melange 8's :class:`melange.backends.MessagingBackend`.

    Every melange 8 backend is an instance of it (``isinstance`` and annotations
    keep working). Subclassing it the 7.x way (``retrieve_messages``,
    ``acknowledge``, ...) raises :class:`~melange.exceptions.ConfigurationError`
    naming melange 8's contract (:class:`melange.backends.MessagingBackend`
    checks that for every subclass); a subclass written for melange 8 works.
    """

    @classmethod
    def __subclasshook__(cls, other: type) -> Any:
        if cls is MessagingBackend:
            # An MRO test, not issubclass(): that would ask this hook again, without end.
            return base.MessagingBackend in getattr(other, "__mro__", ())
        return NotImplemented
