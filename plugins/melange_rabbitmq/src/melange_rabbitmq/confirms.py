"""A batch of publishes with pipelined publisher confirms, on pika's blocking adapter.

``BlockingChannel.basic_publish`` in confirm mode waits for each message's
confirm before it returns: a round trip per message, about a millisecond on a
quorum queue that writes to disk. RabbitMQ confirms asynchronously, one message
or several at once (``multiple``), so a batch can be sent whole and its confirms
awaited together. This module does that on the channel's implementation (the
frames are written in one socket write), as the link already does for acks, and keeps
each message's own outcome:

- ``basic.ack``: stored;
- ``basic.nack``: refused (e.g. a full queue with ``overflow: reject-publish``);
- ``basic.return`` before its ack: nothing to route it to (``mandatory``).

It runs on the link's I/O thread only, like every pika call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pika.adapters.blocking_connection import BlockingChannel
from pika.frame import Method
from pika.spec import Basic, BasicProperties

from melange_rabbitmq.one_write import one_write

__all__ = ["ConfirmChannel", "Confirmations", "Outcome"]

Outcome = Literal["ack", "nack", "returned"]
"""What the broker said of one published message."""


@dataclass
class Confirmations:
    """The outcome of each message of a batch, in order.

    Attributes:
        outcomes: Per message, the broker's answer; ``None`` when none came
            (see :attr:`error`).
        error: Why the wait ended before every message had its answer: the
            channel or the connection closed. ``None`` when all answered.
    """

    outcomes: list[Outcome | None]
    error: BaseException | None = None


class ConfirmChannel:
    """A channel in confirm mode whose publishes are sent as a batch, then confirmed together.

    Args:
        channel: A new channel of the link's connection, not in confirm mode yet.
    """

    def __init__(self, channel: BlockingChannel) -> None:
        self.channel = channel
        self._next_tag = 1  # the broker numbers a channel's publishes from 1 after confirm.select
        self._pending: dict[int, int] = {}  # delivery tag -> index in the batch being sent
        self._outcomes: list[Outcome | None] = []
        self._ids: list[str | None] = []
        self._returned: set[str] = set()
        selected: list[bool] = []
        impl = channel._impl
        impl.confirm_delivery(
            ack_nack_callback=self._on_confirm, callback=lambda _frame: selected.append(True)
        )
        channel._flush_output(lambda: bool(selected))
        impl.add_on_return_callback(self._on_return)

    @property
    def is_open(self) -> bool:
        """Whether the channel can publish."""
        return bool(self.channel.is_open)

    def publish_all(
        self,
        exchange: str,
        routing_key: str,
        messages: Sequence[tuple[bytes, BasicProperties]],
        *,
        mandatory: bool,
    ) -> Confirmations:
        """Send every message, then wait until the broker answered each one (or the channel closed).

        Each message's properties must carry a ``message_id`` unique in the batch:
        a ``basic.return`` names the message only by its content.
        """
        self._outcomes = [None] * len(messages)
        self._ids = [properties.message_id for _, properties in messages]
        self._returned.clear()
        self._pending.clear()
        impl = self.channel._impl
        try:
            with one_write(impl.connection):
                for index, (body, properties) in enumerate(messages):
                    impl.basic_publish(exchange, routing_key, body, properties, mandatory)
                    self._pending[self._next_tag] = index
                    self._next_tag += 1
            self.channel._flush_output(lambda: not self._pending)
        except Exception as error:  # closed by the broker, or the connection was lost
            return Confirmations(self._outcomes, error)
        return Confirmations(self._outcomes)

    # -------------------------------------------------------- broker callbacks
    def _on_return(
        self, _channel: object, _method: Basic.Return, properties: BasicProperties, _body: bytes
    ) -> None:
        # RabbitMQ sends a message's basic.return before its basic.ack.
        if properties.message_id is not None:
            self._returned.add(properties.message_id)

    def _on_confirm(self, frame: Method) -> None:
        method = frame.method
        outcome: Outcome = "nack" if isinstance(method, Basic.Nack) else "ack"
        tag = method.delivery_tag
        tags = [t for t in self._pending if t <= tag] if method.multiple else [tag]
        for confirmed in tags:
            index = self._pending.pop(confirmed, None)
            if index is None:
                continue  # a tag of an earlier batch that ended with an error
            if outcome == "ack" and self._ids[index] in self._returned:
                self._outcomes[index] = "returned"
            else:
                self._outcomes[index] = outcome
