"""Asynchronous publishers: the synchronous ones, called off the event loop.

Serializing and sending happen in a worker thread (:func:`asyncio.to_thread`),
because the backend contract is synchronous: the event loop keeps running
while the broker answers. The thread sees the caller's context variables, so
hooks that read them (OpenTelemetry's current span) work as they do in
synchronous code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from melange.backends.base import MessagingBackend, PublishResult
from melange.message import Message
from melange.observability import Hooks
from melange.publishers import QueuePublisher, TopicPublisher
from melange.serializers import SerializerRegistry

__all__ = ["AsyncQueuePublisher", "AsyncTopicPublisher"]


class _AsyncPublisher:
    """Awaitable wrapper of a synchronous publisher; subclasses pick which one."""

    _sync_publisher: type[QueuePublisher | TopicPublisher]

    def __init__(
        self,
        backend: MessagingBackend,
        serializers: SerializerRegistry | None = None,
        *,
        hooks: Hooks | None = None,
        producer_ids: bool = True,
    ) -> None:
        self.publisher = self._sync_publisher(
            backend, serializers, hooks=hooks, producer_ids=producer_ids
        )
        """The synchronous publisher doing the work, for code that is not async."""

    @property
    def backend(self) -> MessagingBackend:
        """The backend messages are published through."""
        return self.publisher.backend

    @property
    def serializers(self) -> SerializerRegistry:
        """The registry serializing payloads."""
        return self.publisher.serializers

    def __repr__(self) -> str:
        return f"<{type(self).__name__} backend={self.backend.name!r}>"

    async def publish(
        self,
        destination: str,
        data: Message | Any,
        *,
        attributes: Mapping[str, str] | None = None,
        group_id: str | None = None,
        dedup_id: str | None = None,
        delay_seconds: float = 0.0,
        producer_id: str | None = None,
    ) -> PublishResult:
        """Serialize and publish one message.

        See the synchronous publisher's ``publish`` for the arguments and the errors.

        Args:
            destination: The queue (or, for a topic publisher, the topic).
            data: A :class:`~melange.message.Message` or a bare payload object.
            attributes: Attributes added to the message's own; these win on a clash.
            group_id: The FIFO message group; replaces the message's.
            dedup_id: The deduplication id; replaces the message's.
            delay_seconds: Seconds before the message can be received.
            producer_id: The message's producer id; a new one by default.

        Returns:
            The result of the accepted message, with the broker's message id.
        """
        return await asyncio.to_thread(
            self.publisher.publish,
            destination,
            data,
            attributes=attributes,
            group_id=group_id,
            dedup_id=dedup_id,
            delay_seconds=delay_seconds,
            producer_id=producer_id,
        )

    async def publish_batch(
        self, destination: str, items: Sequence[Message | Any]
    ) -> list[PublishResult]:
        """Serialize and publish several messages; nothing is sent if one is invalid.

        Args:
            destination: The queue (or, for a topic publisher, the topic).
            items: The messages or payloads, in order.

        Returns:
            One result per item, in order.
        """
        return await asyncio.to_thread(self.publisher.publish_batch, destination, items)


class AsyncQueuePublisher(_AsyncPublisher):
    """Publishes messages straight to a queue, from asyncio code.

    Behaves exactly like :class:`~melange.publishers.QueuePublisher` (same
    arguments, results and errors); only the calls are awaited.

    Examples:
        >>> publisher = AsyncQueuePublisher(backend)  # doctest: +SKIP
        >>> result = await publisher.publish("payment-updates", event)  # doctest: +SKIP

    Args:
        backend: The backend to publish through.
        serializers: The registry that serializes payloads; a new JSON registry
            when omitted.
        hooks: Called before each message is encoded and after each publish; by
            default :func:`melange.tracing.default_hooks`. Pass ``Hooks()`` for none.
    """

    _sync_publisher = QueuePublisher


class AsyncTopicPublisher(_AsyncPublisher):
    """Publishes messages to a topic from asyncio code; every matching subscribed queue gets a copy.

    Behaves exactly like :class:`~melange.publishers.TopicPublisher`; only the
    calls are awaited.

    Examples:
        >>> publisher = AsyncTopicPublisher(backend)  # doctest: +SKIP
        >>> await publisher.publish("payments", event)  # doctest: +SKIP

    Args:
        backend: The backend to publish through; it must support topics.
        serializers: The registry that serializes payloads; a new JSON registry
            when omitted.
        hooks: Called before each message is encoded and after each publish; by
            default :func:`melange.tracing.default_hooks`. Pass ``Hooks()`` for none.
    """

    _sync_publisher = TopicPublisher
