"""melange 7.x's models: the wire-level ``Message`` and the queue and topic wrappers.

In 7.x a backend received a ``Message`` whose ``content`` was already
serialized (a string), with the serializer's numeric id and the manifest, and
handed out queues and topics wrapped in ``QueueWrapper`` and ``TopicWrapper``.
melange 8 splits that into :class:`~melange.message.Message` (the payload object
an application publishes and handles), :class:`~melange.backends.OutgoingMessage`
and :class:`~melange.backends.ReceivedMessage` (the bytes a backend sends and
receives), and names queues and topics by string. These classes remain for 7.x
code that builds or inspects 7.x messages (``melange.models``).
"""

from __future__ import annotations

from typing import Any

from melange.compat import deprecated

__all__ = ["Message", "QueueWrapper", "TopicWrapper"]


class _Wrapper:
    """Holds a broker's own queue or topic object for a 7.x backend."""

    _new = ""

    def __init__(self, obj: Any) -> None:
        deprecated(f"melange.models.{type(self).__name__}", self._new)
        self.obj = obj

    @property
    def unwrapped_obj(self) -> Any:
        """The wrapped broker object."""
        return self.obj

    def unwrap(self) -> Any:
        """Return the wrapped broker object."""
        return self.obj

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.obj!r})"


class TopicWrapper(_Wrapper):
    """A 7.x backend's topic object; melange 8 names topics by string."""

    _new = (
        "the topic's name: melange 8 backends take topic names "
        "(backend.get_topic(name) returns its TopicSpec)"
    )


class QueueWrapper(_Wrapper):
    """A 7.x backend's queue object; melange 8 names queues by string."""

    _new = (
        "the queue's name: melange 8 backends take queue names "
        "(backend.get_queue(name) returns its QueueSpec)"
    )


_NEW_MESSAGE = (
    "melange.Message(body, manifest=..., attributes=...) for a payload (the SerializerRegistry "
    "turns it into bytes), or melange.backends.OutgoingMessage / ReceivedMessage for what a "
    "backend sends and receives"
)


def _size(content: object) -> str:
    return f"{len(content)} chars" if isinstance(content, (str, bytes)) else type(content).__name__


class Message:
    """A 7.x message as a backend carried it: serialized content, serializer id and manifest.

    Args:
        message_id: The broker's message id; ``None`` before publishing.
        content: The serialized payload (text).
        metadata: What the backend needs to acknowledge the message (e.g. the SQS message).
        serializer_id: The 7.x numeric id of the serializer that wrote ``content``
            (JSON is 1, pickle 2).
        manifest: What kind of payload ``content`` holds.
    """

    def __init__(
        self,
        message_id: str | None,
        content: str,
        metadata: Any,
        serializer_id: int | None,
        manifest: str | None = None,
    ) -> None:
        deprecated("melange.models.Message", _NEW_MESSAGE)
        self._set(message_id, content, metadata, serializer_id, manifest)

    def _set(
        self,
        message_id: str | None,
        content: str,
        metadata: Any,
        serializer_id: int | None,
        manifest: str | None,
    ) -> None:
        self.message_id = message_id
        self.content = content
        self.metadata = metadata
        self.serializer_id = serializer_id
        self.manifest = manifest

    @staticmethod
    def create(
        content: str, manifest: str | None, serializer_id: int, metadata: Any = None
    ) -> Message:
        """Return a message to publish (no id yet), as 7.x's publishers built it."""
        deprecated("melange.models.Message.create()", _NEW_MESSAGE)
        message = Message.__new__(Message)
        message._set(None, content, metadata, serializer_id, manifest)
        return message

    def get_message_manifest(self) -> str | None:
        """Return the manifest."""
        return self.manifest

    def __repr__(self) -> str:
        # The content is the payload: described by its size only, never shown.
        return (
            f"Message(message_id={self.message_id!r}, content=<{_size(self.content)}>, "
            f"serializer_id={self.serializer_id!r}, manifest={self.manifest!r})"
        )
