"""asyncio support: publish and consume from async code, over the same backend contract.

* :class:`AsyncQueuePublisher` and :class:`AsyncTopicPublisher` are the
  synchronous publishers with awaitable ``publish`` / ``publish_batch``.
* :class:`AsyncMessageDispatcher` runs consumers as event-loop tasks with the
  semantics of :class:`melange.dispatcher.MessageDispatcher`: acknowledge only
  after every accepting consumer succeeded, retries, dead-lettering, lease
  extension, deduplication, graceful shutdown.
* :class:`AsyncConsumer` is the base class of consumers whose ``process`` is a
  coroutine; ``async def`` functions decorated with
  :func:`melange.consumers.consumer` work too. Synchronous consumers run in a
  thread.

Backends are synchronous; their calls run in worker threads, so a
long-polling receive never blocks the event loop.
"""

from __future__ import annotations

from melange.aio.consumers import AsyncConsumer
from melange.aio.dispatcher import AsyncMessageDispatcher
from melange.aio.publishers import AsyncQueuePublisher, AsyncTopicPublisher

__all__ = [
    "AsyncConsumer",
    "AsyncMessageDispatcher",
    "AsyncQueuePublisher",
    "AsyncTopicPublisher",
]
