"""melange 7.x's synchronous test helpers: ``InMemoryMessagingBackend`` and ``link_synchronously``.

In 7.x, ``link_synchronously(name, consumers, registry, backend)`` made every
message published to the queue or topic ``name`` on an
``InMemoryMessagingBackend`` reach ``consumers`` before ``publish()`` returned.
Here the backend is melange 8's :class:`~melange.backends.memory.MemoryBackend`
(so melange 8 publishers, factories and dispatchers take it too) and a publish
hands the linked queues' messages to their consumers on the caller's thread.

melange 8's form of such a test publishes to a ``MemoryBackend`` and runs
``MessageDispatcher(backend, queue_name, consumers).run_until_idle(stop=True)``
before asserting.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from melange.backends.base import OutgoingMessage, PublishResult, ReceivedMessage
from melange.backends.memory import MemoryBackend
from melange.clock import Clock
from melange.compat.calls_common import warn_7x
from melange.consumers import Consumer, is_async_consumer
from melange.exceptions import ConfigurationError, SerializationError
from melange.serializers import SerializerRegistry
from melange.topology import QueueSpec, SubscriptionSpec, TopicSpec

__all__ = ["InMemoryMessagingBackend", "link_synchronously"]

logger = logging.getLogger("melange.compat.testing")

_NEW_TEST = (
    "melange.backends.MemoryBackend(), then MessageDispatcher(backend, queue_name, "
    "consumers, registry).run_until_idle(stop=True) after publishing"
)


@dataclass(frozen=True)
class _Link:
    consumers: tuple[Consumer, ...]
    registry: SerializerRegistry

    def handle(self, queue_name: str, received: ReceivedMessage) -> bool:
        """Run the consumers that accept the message; return whether it can be acknowledged."""
        try:
            message = self.registry.decode(received)
        except SerializationError:
            # As 7.x did: an undecodable message is logged and dropped.
            logger.error(
                "dropping an undecodable message",
                exc_info=True,
                extra={"queue": queue_name, "message_id": received.message_id},
            )
            return True
        handled = True
        for consumer in self.consumers:
            try:
                if consumer.accepts(message):
                    consumer.process(message)
            except Exception:
                # As 7.x did: logged, not raised to the publisher; the message stays
                # in the queue and is handled again after the next publish.
                logger.exception(
                    "consumer failed",
                    extra={
                        "queue": queue_name,
                        "message_id": received.message_id,
                        "consumer": consumer.name,
                    },
                )
                handled = False
        return handled


def _check_consumers(consumers: Sequence[Consumer]) -> tuple[Consumer, ...]:
    # A dispatcher's checks, but for unique names: they key deduplication, which a
    # synchronous link does not do (7.x's doc example links two lambdas).
    if isinstance(consumers, (Consumer, str, bytes)) or not isinstance(consumers, Sequence):
        raise ConfigurationError(
            f"consumers must be a list of Consumer objects, got {type(consumers).__name__}"
        )
    for candidate in consumers:
        if not isinstance(candidate, Consumer):
            raise ConfigurationError(
                f"{candidate!r} is not a melange Consumer; decorate a function with "
                "@melange.consumers.consumer, or subclass melange.consumers.Consumer"
            )
        if is_async_consumer(candidate):
            raise ConfigurationError(
                f"consumer {candidate.name!r} is asynchronous (async def), which a synchronous "
                "link cannot run; run it with melange.aio.AsyncMessageDispatcher"
            )
        candidate.validate()
    return tuple(consumers)


class InMemoryMessagingBackend(MemoryBackend):
    """7.x's in-memory backend for tests: a :class:`MemoryBackend` that runs linked consumers.

    Publishing creates the queue or topic when it does not exist (7.x's backend
    needed none declared). After every publish, the messages waiting in queues
    linked by :func:`link_synchronously` are handed to their consumers before
    ``publish()`` returns. Deprecated: use :class:`MemoryBackend` and a dispatcher.

    Args:
        clock: As for :class:`MemoryBackend`.
        max_message_size: As for :class:`MemoryBackend`.
        dedup_window: As for :class:`MemoryBackend`.
    """

    def __init__(
        self,
        clock: Clock | None = None,
        max_message_size: int = 262144,
        dedup_window: float = 300.0,
    ) -> None:
        warn_7x("InMemoryMessagingBackend()", _NEW_TEST)
        super().__init__(clock, max_message_size, dedup_window)
        self._links: dict[str, _Link] = {}
        self._links_lock = threading.Lock()

    def link(self, name: str, consumers: Sequence[Consumer], registry: SerializerRegistry) -> None:
        """Hand what is published to the queue or topic ``name`` to ``consumers``, synchronously.

        Creates the queue ``name``, the topic ``name`` and the subscription of
        the one to the other, when they do not exist. Linking a name again
        replaces its consumers.
        """
        checked = _check_consumers(consumers)
        if not isinstance(registry, SerializerRegistry):
            raise ConfigurationError(
                f"serializer_registry must be a melange.serializers.SerializerRegistry, got "
                f"{type(registry).__name__}"
            )
        self._ensure_queue(name)
        self._ensure_topic(name)
        if self.get_subscription(name, name) is None:
            self.subscribe(SubscriptionSpec(name, name))
        with self._links_lock:
            self._links[name] = _Link(checked, registry)
        self._run_links()  # what was published before the link, as a dispatcher would

    def publish(self, queue_name: str, messages: Sequence[OutgoingMessage]) -> list[PublishResult]:
        """Publish (creating the queue if needed), then run the linked consumers."""
        self._ensure_queue(queue_name)
        results = super().publish(queue_name, messages)
        self._run_links()
        return results

    def publish_to_topic(
        self, topic_name: str, messages: Sequence[OutgoingMessage]
    ) -> list[PublishResult]:
        """Publish (creating the topic if needed), then run the linked consumers."""
        self._ensure_topic(topic_name)
        results = super().publish_to_topic(topic_name, messages)
        self._run_links()
        return results

    # ----------------------------------------------------------------- helpers
    def _ensure_queue(self, name: object) -> None:
        if isinstance(name, str) and self.get_queue(name) is None:
            self.declare_queue(QueueSpec(name, fifo=name.endswith(".fifo")))

    def _ensure_topic(self, name: object) -> None:
        if isinstance(name, str) and self.get_topic(name) is None:
            self.declare_topic(TopicSpec(name, fifo=name.endswith(".fifo")))

    def _run_links(self) -> None:
        with self._links_lock:
            links = list(self._links.items())
        for name, link in links:
            self._drain(name, link)

    def _drain(self, name: str, link: _Link) -> None:
        failed: list[ReceivedMessage] = []
        while not self.closed:
            received = self.receive(name, max_messages=10, wait_seconds=0)
            if not received:
                break
            for message in received:
                if link.handle(name, message):
                    self.ack([message])
                else:
                    failed.append(message)
        if failed and not self.closed:
            self.nack(failed)  # visible again: handled after the next publish


def link_synchronously(
    queue_name: str,
    consumers: Sequence[Consumer],
    serializer_registry: SerializerRegistry,
    backend: Any,
) -> None:
    """7.x's glue: messages published to ``queue_name`` reach ``consumers`` synchronously.

    Args:
        queue_name: The queue or topic name.
        consumers: The consumers that handle what is published there.
        serializer_registry: Decodes the messages.
        backend: The :class:`InMemoryMessagingBackend` the publishers use.

    Raises:
        ConfigurationError: ``backend`` is not an :class:`InMemoryMessagingBackend`,
            or a consumer or the registry is invalid.
    """
    warn_7x("link_synchronously()", _NEW_TEST)
    if not isinstance(backend, InMemoryMessagingBackend):
        raise ConfigurationError(
            f"link_synchronously() needs an InMemoryMessagingBackend, got "
            f"{type(backend).__name__}; in melange 8 use {_NEW_TEST}"
        )
    backend.link(queue_name, consumers, serializer_registry)
