"""The deliveries of each channel not settled yet, so that a batch can be settled in one frame.

``basic.ack`` and ``basic.nack`` take ``multiple``: one frame settles every delivery
of the channel up to a delivery tag that is still unsettled. That is right only when
each of those is in the batch: one received earlier and still being handled, or
still in the consumer's buffer, must stay unsettled. So must one that reached the
client but not this tracker yet: pika hands a pushed delivery to its callback later
than the ``basic.get`` answer that came after it. A channel numbers its deliveries
1, 2, 3, ... (pushed or answered to ``basic.get``), so the tracker knows which tags
it has seen all of. :class:`Unsettled` says when a batch is exactly the unsettled
deliveries up to its highest tag, all of them seen. Used on the I/O thread only: no lock.
"""

from __future__ import annotations

ChannelKey = tuple[int, int]
"""A channel of one connection: ``(generation, channel number)``."""


class _Channel:
    """What one channel delivered: the unsettled tags, and up to which tag all were seen."""

    __slots__ = ("ahead", "seen_through", "unsettled")

    def __init__(self) -> None:
        self.unsettled: set[int] = set()
        self.seen_through = 0  # every tag from 1 to this one was delivered here
        self.ahead: set[int] = set()  # delivered tags past a gap (one not seen yet)

    def delivered(self, tag: int) -> None:
        self.unsettled.add(tag)
        if tag != self.seen_through + 1:
            self.ahead.add(tag)
            return
        self.seen_through = tag
        while self.seen_through + 1 in self.ahead:
            self.seen_through += 1
            self.ahead.remove(self.seen_through)


class Unsettled:
    """Delivery tags delivered on each channel and not settled yet."""

    def __init__(self) -> None:
        self._channels: dict[ChannelKey, _Channel] = {}

    def delivered(self, channel: ChannelKey, tag: int) -> None:
        """Note a delivery (pushed to the consumer, or answered to ``basic.get``)."""
        state = self._channels.get(channel)
        if state is None:
            state = self._channels[channel] = _Channel()
        state.delivered(tag)

    def settle(self, channel: ChannelKey, tags: list[int]) -> int | None:
        """Forget ``tags``; return the tag one ``multiple`` frame may settle them with.

        Returns:
            The highest of ``tags`` when every delivery of the channel up to it
            was seen and those still unsettled are exactly ``tags`` (one frame
            settles them all), else ``None``: settle each on its own.
        """
        state = self._channels.get(channel)
        if state is None or not tags:
            return None
        batch = set(tags)
        top = max(batch)
        unsettled = state.unsettled
        whole = (
            top <= state.seen_through
            and batch <= unsettled
            and sum(1 for tag in unsettled if tag <= top) == len(batch)
        )
        unsettled -= batch
        return top if whole else None

    def forget(self, channel: ChannelKey) -> None:
        """The channel closed: the broker took back what it had not settled."""
        self._channels.pop(channel, None)

    def clear(self) -> None:
        """The connection closed: every channel went with it."""
        self._channels.clear()
