"""A memory queue holding one message, whose receive calls are counted: for short-poll tests."""

from __future__ import annotations

from typing import Any

from melange.backends.base import OutgoingMessage, ReceivedMessage
from melange.backends.memory import MemoryBackend
from melange.factory import MessagingBackendFactory


class CountedReceives:
    """A memory backend with queue ``short-polls`` holding ``{"n": 1}``; counts its receives."""

    queue = "short-polls"

    def __init__(self) -> None:
        self.backend = MemoryBackend()
        MessagingBackendFactory(self.backend).init_queue(self.queue)
        self.backend.publish(self.queue, [OutgoingMessage(b'{"n": 1}')])
        self.receives = 0
        receive = self.backend.receive

        def counted(*args: Any) -> list[ReceivedMessage]:
            self.receives += 1
            return receive(*args)

        self.backend.receive = counted  # type: ignore[method-assign,assignment]

    def at_most_one_receive_per(self, seconds: float, interval: float) -> bool:
        """Whether the receives were at most one per ``interval`` over ``seconds``, plus two."""
        return self.receives <= 2 + seconds / interval
