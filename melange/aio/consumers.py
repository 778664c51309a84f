"""The base class of asynchronous consumers."""

from __future__ import annotations

import abc

from melange.consumers import Consumer
from melange.message import Message

__all__ = ["AsyncConsumer"]


class AsyncConsumer(Consumer):
    """A consumer whose :meth:`process` is a coroutine; run by the asyncio dispatcher.

    Everything else is :class:`~melange.consumers.Consumer`'s: :attr:`name`,
    :meth:`accepts` (every message by default; keep it quick, it runs on the
    event loop) and :meth:`validate`. Functions decorated with
    :func:`melange.consumers.consumer` and :class:`~melange.consumers.SingleDispatchConsumer`
    handlers written with ``async def`` are asynchronous consumers too.

    Examples:
        >>> class Ledger(AsyncConsumer):
        ...     async def process(self, message):
        ...         await database.record(message.body)

    Args:
        name: Overrides :attr:`name` for this instance.
    """

    @abc.abstractmethod
    async def process(self, message: Message) -> None:
        """Handle ``message``; raise to have it retried.

        The message is acknowledged only after every accepting consumer finished
        without raising. Awaiting is fine; blocking calls are not (they stall
        every other handler): use a plain :class:`~melange.consumers.Consumer`
        for blocking code, which the dispatcher runs in a thread.

        Args:
            message: The decoded message; ``message.id`` is the broker's id.
        """
