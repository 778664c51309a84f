"""melange 7.x's models (``Message``, ``QueueWrapper``, ``TopicWrapper``); deprecated.

The classes are 7.x's (:mod:`melange.compat.models`). melange 8's message is
:class:`melange.Message` (the payload object); backends send
:class:`~melange.backends.OutgoingMessage` and receive
:class:`~melange.backends.ReceivedMessage`, and name queues and topics by string.
"""

from melange.compat import deprecated
from melange.compat.models import Message, QueueWrapper, TopicWrapper

__all__ = ["Message", "QueueWrapper", "TopicWrapper"]

deprecated(
    "melange.models",
    "melange.Message for payloads, and melange.backends.OutgoingMessage / ReceivedMessage "
    "with queue and topic names for backends",
)
