"""A catalogue of deliberately broken backends, to check that the conformance suite fails them.

Each mutant is a small subclass of :class:`~melange.backends.memory.MemoryBackend` that breaks
exactly one rule a backend must follow, and nothing else. Its docstring says what it does wrong,
the rule (``Rule:``) and where the documentation states it (``Guide:``);
``tests/test_conformance_mutants.py`` runs the conformance suite against every mutant and
requires at least one test to fail.

Mutants may use the memory backend's internals: they stand in for a backend author's mistakes.
The suite may not: it catches them through the public contract only.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from melange.backends.base import OutgoingMessage, PublishResult, ReceivedMessage
from melange.backends.memory import (
    MemoryBackend,
    _DedupWindow,
    _FifoQueue,
    _Queue,
    _Receipt,
    _Stored,
)
from melange.exceptions import BackendClosed, LeaseLost, MessageTooLarge
from melange.topology import QueueSpec, SubscriptionSpec, TopicSpec

GUIDE = "docs/writing-a-backend.md"

CATALOGUE: list[type[MemoryBackend]] = []
"""Every mutant, in the order the report lists them."""


def mutant(cls: type[MemoryBackend]) -> type[MemoryBackend]:
    """Add ``cls`` to :data:`CATALOGUE` (its docstring must say ``Rule:`` and ``Guide:``)."""
    rule_of(cls)  # fails at import when the docstring lacks either
    CATALOGUE.append(cls)
    return cls


def rule_of(cls: type) -> tuple[str, str]:
    """Return ``(rule, where the guide states it)`` from a mutant's docstring."""
    fields: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in (cls.__doc__ or "").splitlines():
        text = line.strip()
        key, _, rest = text.partition(":")
        if key in ("Rule", "Guide") and rest:
            current = fields.setdefault(key, [])
            current.append(rest.strip())
        elif current is not None and text:
            current.append(text)
        else:
            current = None
    if "Rule" not in fields or "Guide" not in fields:
        raise TypeError(f"mutant {cls.__name__} needs 'Rule:' and 'Guide:' lines in its docstring")
    return " ".join(fields["Rule"]), " ".join(fields["Guide"])


@contextmanager
def _spec_swapped(queue: _Queue, **changes: Any) -> Iterator[None]:
    """Let the memory backend see ``queue`` with other settings, for one call (lock held)."""
    spec = queue.spec
    queue.spec = dataclasses.replace(spec, **changes)
    try:
        yield
    finally:
        queue.spec = spec


# ------------------------------------------------------------------ receipts and leases
@mutant
class StaleAckRemoves(MemoryBackend):
    """An ack with a stale receipt removes the message its current holder is working on.

    Rule: acking with a stale receipt (the message was received again since) is a no-op; the
    current holder settles the message.
    Guide: docs/writing-a-backend.md, section 1, "Receipts".
    """

    def _ack(self, messages: list[ReceivedMessage]) -> None:
        with self._lock:
            for message in messages:
                self._current(message)  # still refuses a foreign receipt
                receipt = message.receipt
                queue = self._queues.get(receipt.queue_name)
                stored = None if queue is None else queue.messages.get(receipt.message_id)
                if queue is not None and stored is not None:
                    queue.remove(stored)
            self._wake()


@mutant
class StaleNackReleases(MemoryBackend):
    """A nack with a stale receipt makes the message visible while another receiver holds it.

    Rule: nacking with a stale receipt is a no-op; the current holder settles the message.
    Guide: docs/writing-a-backend.md, section 1, "Receipts".
    """

    def _nack(self, messages: list[ReceivedMessage], delay_seconds: float) -> None:
        with self._lock:
            now = self._clock.now()
            for message in messages:
                self._current(message)
                receipt = message.receipt
                queue = self._queues.get(receipt.queue_name)
                stored = None if queue is None else queue.messages.get(receipt.message_id)
                if queue is not None and stored is not None:
                    stored.visible_at = now + delay_seconds
                    queue.reschedule(stored, now)
            self._wake()


@mutant
class StaleLeaseNeverLost(MemoryBackend):
    """Extending a stale lease silently does nothing instead of raising LeaseLost.

    Rule: extending a stale lease (the message was received again since) raises LeaseLost.
    Guide: docs/writing-a-backend.md, section 1, "Receipts"; section 4, the errors table.
    """

    def _extend_lease(self, messages: list[ReceivedMessage], seconds: float) -> None:
        with self._lock:
            found = [self._current(message) for message in messages]
            now = self._clock.now()
            for current in found:
                if current is not None:
                    queue, stored = current
                    stored.visible_at = now + seconds
                    queue.reschedule(stored, now)


@mutant
class ForeignReceiptAccepted(MemoryBackend):
    """A message whose receipt this backend never issued is acked by its queue name and id.

    Rule: a message whose receipt is not yours (received from another backend) is an
    InvalidMessage.
    Guide: docs/writing-a-backend.md, section 1, "Receipts".
    """

    def _ack(self, messages: list[ReceivedMessage]) -> None:
        own = [message for message in messages if isinstance(message.receipt, _Receipt)]
        with self._lock:
            for message in messages:
                if isinstance(message.receipt, _Receipt):
                    continue
                queue = self._queues.get(message.queue_name)
                stored = None if queue is None else queue.messages.get(message.message_id)
                if queue is not None and stored is not None:
                    queue.remove(stored)
        super()._ack(own)


@mutant
class LeaseExtensionIgnored(MemoryBackend):
    """``extend_lease`` checks the receipts but does not move the message's visibility.

    Rule: ``_extend_lease`` keeps the messages invisible ``seconds`` from now.
    Guide: docs/writing-a-backend.md, section 1, the hooks table.
    """

    def _extend_lease(self, messages: list[ReceivedMessage], seconds: float) -> None:
        with self._lock:
            for message in messages:
                if self._current(message) is None:
                    raise LeaseLost(message.message_id, message.queue_name)


# ------------------------------------------------------------------ receive counts
@mutant
class ReceiveCountFrozen(MemoryBackend):
    """Every delivery reports ``receive_count == 1``.

    Rule: ``receive_count`` includes the current delivery, so it grows with every redelivery.
    Guide: docs/writing-a-backend.md, section 1, "Receive counts and dead letters".
    """

    def _receive(
        self, queue_name: str, max_messages: int, wait_seconds: float
    ) -> list[ReceivedMessage]:
        received = super()._receive(queue_name, max_messages, wait_seconds)
        return [dataclasses.replace(message, receive_count=1) for message in received]


@mutant
class ReceiveCountOffByOne(MemoryBackend):
    """``receive_count`` leaves out the current delivery (0 on the first receive).

    Rule: ``receive_count`` includes the current delivery.
    Guide: docs/writing-a-backend.md, section 1, "Receive counts and dead letters".
    """

    def _receive(
        self, queue_name: str, max_messages: int, wait_seconds: float
    ) -> list[ReceivedMessage]:
        received = super()._receive(queue_name, max_messages, wait_seconds)
        return [dataclasses.replace(m, receive_count=m.receive_count - 1) for m in received]


# ------------------------------------------------------------------ dead letters
class _ShiftedDeadLetter(MemoryBackend):
    """Dead-letters after ``max_receive_count + shift`` receives."""

    shift = 0

    def _deliver(self, queue_name: str, queue: _Queue, limit: int) -> list[ReceivedMessage]:
        policy = queue.spec.dead_letter
        if policy is None or policy.max_receive_count + self.shift < 1:
            return super()._deliver(queue_name, queue, limit)
        shifted = dataclasses.replace(
            policy, max_receive_count=policy.max_receive_count + self.shift
        )
        with _spec_swapped(queue, dead_letter=shifted):
            return super()._deliver(queue_name, queue, limit)


@mutant
class DeadLetterOneReceiveEarly(_ShiftedDeadLetter):
    """A message moves to the dead-letter queue after ``max_receive_count - 1`` receives.

    Rule: with ``max_receive_count=N`` a message is delivered N times; the receive that would be
    the (N+1)th moves it to the dead-letter queue instead.
    Guide: docs/writing-a-backend.md, section 1, "Receive counts and dead letters".
    """

    shift = -1


@mutant
class DeadLetterOneReceiveLate(_ShiftedDeadLetter):
    """A message is delivered ``max_receive_count + 1`` times before it moves.

    Rule: with ``max_receive_count=N`` a message is delivered N times; the receive that would be
    the (N+1)th moves it to the dead-letter queue instead.
    Guide: docs/writing-a-backend.md, section 1, "Receive counts and dead letters".
    """

    shift = 1


@mutant
class DeadLetterDropsAttributes(MemoryBackend):
    """The dead-letter copy arrives without the message's attributes.

    Rule: a message moved to the dead-letter queue keeps its body and attributes.
    Guide: docs/writing-a-backend.md, section 4, "Dead-letter copies are byte-exact"; the
    broker's own redrive moves the message itself (section 1, "Receive counts and dead letters").
    """

    def _dead_letter(self, queue: _Queue, stored: _Stored, now: float) -> bool:
        stored.attributes = {}
        return super()._dead_letter(queue, stored, now)


@mutant
class DeadLetterMangledBody(MemoryBackend):
    """The dead-letter copy's body went through a UTF-8 decode: invalid bytes are replaced.

    Rule: a message moved to the dead-letter queue keeps its body byte for byte.
    Guide: docs/writing-a-backend.md, section 4, "Dead-letter copies are byte-exact".
    """

    def _dead_letter(self, queue: _Queue, stored: _Stored, now: float) -> bool:
        stored.body = stored.body.decode("utf-8", "replace").encode()
        return super()._dead_letter(queue, stored, now)


@mutant
class MissingDeadLetterQueueDrops(MemoryBackend):
    """A message due for a dead-letter queue that no longer exists is dropped.

    Rule: a missing dead-letter queue must not swallow messages: they stay where they are.
    Guide: docs/writing-a-backend.md, section 1, "Receive counts and dead letters".
    """

    def _dead_letter(self, queue: _Queue, stored: _Stored, now: float) -> bool:
        policy = queue.spec.dead_letter
        if policy is not None and policy.queue_name not in self._queues:
            queue.remove(stored)
            return True
        return super()._dead_letter(queue, stored, now)


# ------------------------------------------------------------------ FIFO and dedup
@mutant
class FifoOrderReversed(MemoryBackend):
    """A FIFO queue hands each batch out in reverse order.

    Rule: a FIFO queue delivers each group's messages in publish order.
    Guide: docs/publishing.md ("group_id: the FIFO message group; order is kept within a
    group"); Capabilities.fifo in melange/backends/base.py.
    """

    def _receive(
        self, queue_name: str, max_messages: int, wait_seconds: float
    ) -> list[ReceivedMessage]:
        received = super()._receive(queue_name, max_messages, wait_seconds)
        return received[::-1] if queue_name.endswith(".fifo") else received


class _UnheldFifoQueue(_FifoQueue):
    """Hands out a group's next messages while an earlier one is in flight."""

    def take(self, now: float, limit: int) -> list[_Stored]:
        picked = [
            stored
            for group in self._groups.values()
            for stored in group
            if stored.visible_at <= now and not self.expired(stored, now)
        ]
        return sorted(picked, key=lambda stored: stored.seq)[:limit]


@mutant
class FifoGroupNotHeld(MemoryBackend):
    """A FIFO group's next message is delivered while an earlier one is still in flight.

    Rule: a FIFO group is held while one of its messages is in flight, so no message overtakes
    one that may yet be redelivered (per-group order, as SQS FIFO queues keep it).
    Guide: docs/publishing.md ("order is kept within a group"); the memory backend's FIFO queues
    (melange/backends/memory.py, _FifoQueue), which follow SQS.
    """

    def _declare_queue(self, spec: QueueSpec) -> None:
        super()._declare_queue(spec)
        with self._lock:
            queue = self._queues[spec.name]
            if type(queue) is _FifoQueue:
                queue.__class__ = _UnheldFifoQueue


@mutant
class DedupIgnored(MemoryBackend):
    """A repeated ``dedup_id`` is delivered again.

    Rule: messages with the same dedup id within the window are accepted but delivered once.
    Guide: docs/publishing.md, the options table (``dedup_id``); OutgoingMessage.dedup_id in
    melange/backends/base.py.
    """

    def _enqueue(self, queue: _Queue, message: OutgoingMessage, now: float) -> str:
        return super()._enqueue(queue, dataclasses.replace(message, dedup_id=None), now)


@mutant
class DedupAcrossQueues(MemoryBackend):
    """One dedup window is shared by all queues: a dedup id used on one queue drops it on another.

    Rule: deduplication is per destination: a dedup id repeats only within the same queue.
    Guide: docs/publishing.md (``dedup_id``: "repeats ... are accepted but delivered once"), the
    window being the queue's, as on SQS FIFO queues.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._shared_window = _DedupWindow()

    def _declare_queue(self, spec: QueueSpec) -> None:
        super()._declare_queue(spec)
        with self._lock:
            self._queues[spec.name].dedup = self._shared_window


@mutant
class IdenticalMessagesCollapsed(MemoryBackend):
    """Messages without a dedup id are deduplicated by content: a repeated body is dropped.

    Rule: only a repeated ``dedup_id`` makes a duplicate; every message published without one
    is delivered, however alike.
    Guide: docs/publishing.md, the options table (``dedup_id``) and "Results" (a message reported
    accepted was stored).
    """

    def _enqueue(self, queue: _Queue, message: OutgoingMessage, now: float) -> str:
        if message.dedup_id is None:
            content = repr((message.body, sorted(message.attributes.items()), message.group_id))
            message = dataclasses.replace(message, dedup_id=f"content:{content}")
        return super()._enqueue(queue, message, now)


# ------------------------------------------------------------------ filters
class _MatchEverything(SubscriptionSpec):
    def matches(self, attributes: Mapping[str, str]) -> bool:
        return True


class _MatchInverted(SubscriptionSpec):
    def matches(self, attributes: Mapping[str, str]) -> bool:
        return self.filter is None or not SubscriptionSpec.matches(self, attributes)


class _StoredSubscriptionClass(MemoryBackend):
    """Keeps subscriptions as another class; reports them as plain specs."""

    subscription_class: type[SubscriptionSpec] = SubscriptionSpec

    def _subscribe(self, spec: SubscriptionSpec) -> None:
        cls = self.subscription_class
        super()._subscribe(cls(spec.topic_name, spec.queue_name, spec.filter))

    def _get_subscription(self, topic_name: str, queue_name: str) -> SubscriptionSpec | None:
        found = super()._get_subscription(topic_name, queue_name)
        return None if found is None else SubscriptionSpec(*dataclasses.astuple(found))


@mutant
class FilterIgnored(_StoredSubscriptionClass):
    """Subscription filters are stored and reported but every message passes.

    Rule: a filtered subscription lets through only messages whose attributes match.
    Guide: Capabilities.filters in melange/backends/base.py; docs/publishing.md ("subscription
    filters match on it").
    """

    subscription_class = _MatchEverything


@mutant
class FilterInverted(_StoredSubscriptionClass):
    """A filtered subscription lets through exactly the messages that do not match.

    Rule: a filtered subscription lets through only messages whose attributes match.
    Guide: Capabilities.filters in melange/backends/base.py; docs/publishing.md ("subscription
    filters match on it").
    """

    subscription_class = _MatchInverted


# ------------------------------------------------------------------ delays and visibility
@mutant
class MessageDelayIgnored(MemoryBackend):
    """A per-message ``delay_seconds`` is ignored (the queue's delay still applies).

    Rule: a message published with ``delay_seconds`` cannot be received before the delay.
    Guide: docs/publishing.md, the options table (``delay_seconds``); Capabilities.delay.
    """

    def _enqueue(self, queue: _Queue, message: OutgoingMessage, now: float) -> str:
        return super()._enqueue(queue, dataclasses.replace(message, delay_seconds=0.0), now)


@mutant
class QueueDelayIgnored(MemoryBackend):
    """A queue's ``delay_seconds`` is stored and reported but new messages are visible at once.

    Rule: a queue's ``delay_seconds`` holds back every new message.
    Guide: QueueSpec.delay_seconds in melange/topology.py; docs/factory.md (the settings table).
    """

    def _enqueue(self, queue: _Queue, message: OutgoingMessage, now: float) -> str:
        with _spec_swapped(queue, delay_seconds=0.0):
            return super()._enqueue(queue, message, now)


@mutant
class VisibilityTimeoutIgnored(MemoryBackend):
    """A received message is receivable again at once, as if the visibility timeout were 0.

    Rule: each received message is invisible to other receivers until it is acked, nacked, or
    its visibility timeout passes.
    Guide: MessagingBackend.receive in melange/backends/base.py; docs/writing-a-backend.md,
    section 1 (the claim sets ``visible_at = now + visibility_timeout``).
    """

    def _deliver(self, queue_name: str, queue: _Queue, limit: int) -> list[ReceivedMessage]:
        with _spec_swapped(queue, visibility_timeout=0.0):
            return super()._deliver(queue_name, queue, limit)


@mutant
class VisibilityTimeoutNeverExpires(MemoryBackend):
    """An unacked message never comes back: the visibility timeout does not expire.

    Rule: an unacked message becomes receivable again once its visibility timeout passes.
    Guide: MessagingBackend.receive in melange/backends/base.py; QueueSpec.visibility_timeout.
    """

    def _deliver(self, queue_name: str, queue: _Queue, limit: int) -> list[ReceivedMessage]:
        with _spec_swapped(queue, visibility_timeout=1e9):
            return super()._deliver(queue_name, queue, limit)


@mutant
class NackDelayIgnored(MemoryBackend):
    """``nack(delay_seconds=...)`` releases the message at once.

    Rule: ``_nack`` makes the messages receivable again after ``delay`` (not before).
    Guide: docs/writing-a-backend.md, section 1, the hooks table.
    """

    def _nack(self, messages: list[ReceivedMessage], delay_seconds: float) -> None:
        super()._nack(messages, 0.0)


# ------------------------------------------------------------------ publishing
@mutant
class BatchResultsReversed(MemoryBackend):
    """Results are numbered 0..n-1 but carry the message ids in reverse order.

    Rule: one ``PublishResult`` per message, in order: result i is message i's.
    Guide: docs/writing-a-backend.md, section 1, the hooks table (``_publish_batch``).
    """

    def _publish_batch(self, queue_name: str, batch: list[OutgoingMessage]) -> list[PublishResult]:
        results = super()._publish_batch(queue_name, batch)
        ids = [result.message_id for result in results][::-1]
        return [
            PublishResult(result.index, message_id)
            for result, message_id in zip(results, ids, strict=True)
        ]


@mutant
class BatchIndexesFromOne(MemoryBackend):
    """Results are numbered from 1 instead of 0.

    Rule: ``PublishResult.index`` is the message's position within the chunk.
    Guide: docs/writing-a-backend.md, section 1, the hooks table (``_publish_batch``).
    """

    def _publish_batch(self, queue_name: str, batch: list[OutgoingMessage]) -> list[PublishResult]:
        results = super()._publish_batch(queue_name, batch)
        return [PublishResult(result.index + 1, result.message_id) for result in results]


@mutant
class AcceptedButDropped(MemoryBackend):
    """The last message of every chunk is reported accepted but never stored.

    Rule: a message reported accepted was stored; a dropped one must be reported refused.
    Guide: docs/writing-a-backend.md, section 4 ("When the broker refuses some messages of a
    batch ... return a PublishResult with error set"); docs/publishing.md, "Results".
    """

    def _publish_batch(self, queue_name: str, batch: list[OutgoingMessage]) -> list[PublishResult]:
        results = super()._publish_batch(queue_name, batch[:-1])
        return [*results, PublishResult(len(batch) - 1, "dropped-" + str(len(batch)))]


@mutant
class EmptyBodyPadded(MemoryBackend):
    """An empty body is stored as a single space (as if the broker refused empty bodies).

    Rule: bodies arrive byte for byte, the empty body included.
    Guide: ReceivedMessage.body in melange/backends/base.py; docs/conformance.md ("empty,
    unicode, binary ... bodies").
    """

    def _enqueue(self, queue: _Queue, message: OutgoingMessage, now: float) -> str:
        if not message.body:
            message = dataclasses.replace(message, body=b" ")
        return super()._enqueue(queue, message, now)


@mutant
class BinaryBodyMangled(MemoryBackend):
    """Bodies travel as text: bytes that are not UTF-8 are replaced.

    Rule: bodies are bytes and arrive byte for byte, binary ones included.
    Guide: ReceivedMessage.body in melange/backends/base.py; docs/writing-a-backend.md,
    section 4 (a backend that must send text encodes binary bodies and undoes it on receipt).
    """

    def _enqueue(self, queue: _Queue, message: OutgoingMessage, now: float) -> str:
        body = bytes(message.body).decode("utf-8", "replace").encode()
        return super()._enqueue(queue, dataclasses.replace(message, body=body), now)


@mutant
class UnicodeAttributesMangled(MemoryBackend):
    """Attribute values go through ASCII: every other character becomes ``?``.

    Rule: attributes are strings and arrive exactly as published, unicode included.
    Guide: OutgoingMessage.attributes and ReceivedMessage.attributes in
    melange/backends/base.py; docs/messages.md ("string metadata delivered with the message").
    """

    def _enqueue(self, queue: _Queue, message: OutgoingMessage, now: float) -> str:
        attributes = {
            key: value.encode("ascii", "replace").decode()
            for key, value in message.attributes.items()
        }
        return super()._enqueue(queue, dataclasses.replace(message, attributes=attributes), now)


# ------------------------------------------------------------------ receive
@mutant
class ReceiveOneTooMany(MemoryBackend):
    """``receive`` returns one message more than ``max_messages``.

    Rule: ``receive`` returns at most ``max_messages``.
    Guide: docs/writing-a-backend.md, section 1, the hooks table (``_receive``: "claim up to
    max_messages").
    """

    def _receive(
        self, queue_name: str, max_messages: int, wait_seconds: float
    ) -> list[ReceivedMessage]:
        return super()._receive(queue_name, max_messages + 1, wait_seconds)


@mutant
class ReceiveNeverWaits(MemoryBackend):
    """``receive`` ignores ``wait_seconds``: an empty queue answers at once.

    Rule: on an empty queue, ``_receive`` waits up to ``wait_seconds`` and returns as soon as a
    message arrives.
    Guide: docs/writing-a-backend.md, section 1, "Waiting".
    """

    def _receive(
        self, queue_name: str, max_messages: int, wait_seconds: float
    ) -> list[ReceivedMessage]:
        return super()._receive(queue_name, max_messages, 0.0)


@mutant
class ReceiveWaitsOutTheWait(MemoryBackend):
    """An empty queue is looked at again only when ``wait_seconds`` are over.

    Rule: ``_receive`` returns as soon as it has something.
    Guide: docs/writing-a-backend.md, section 1, "Waiting".
    """

    def _receive(
        self, queue_name: str, max_messages: int, wait_seconds: float
    ) -> list[ReceivedMessage]:
        received = super()._receive(queue_name, max_messages, 0.0)
        if received or not wait_seconds:
            return received
        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline and not self.closed:
            time.sleep(0.05)
        return super()._receive(queue_name, max_messages, 0.0)


@mutant
class ReceiveWaitsTooLong(MemoryBackend):
    """A waiting receive on an empty queue waits ``max_wait_seconds``, whatever it was asked.

    Rule: on an empty queue, ``_receive`` waits up to ``wait_seconds`` (not longer).
    Guide: docs/writing-a-backend.md, section 1, "Waiting" and the hooks table.
    """

    # 6 s rather than memory's 20: still past the 5 s the catching test allows a 1 s wait, and
    # each empty receive of the tests that run before it costs less (87 s of suite otherwise).
    capabilities = dataclasses.replace(MemoryBackend.capabilities, max_wait_seconds=6.0)

    def _receive(
        self, queue_name: str, max_messages: int, wait_seconds: float
    ) -> list[ReceivedMessage]:
        wait = self.capabilities.max_wait_seconds if wait_seconds else 0.0
        return super()._receive(queue_name, max_messages, wait)


# ------------------------------------------------------------------ forward
@mutant
class ForwardDropsOriginalAttributes(MemoryBackend):
    """``forward`` sends the body with the extra attributes only.

    Rule: a forwarded copy carries the original's attributes exactly as received.
    Guide: docs/writing-a-backend.md, section 4, "Dead-letter copies are byte-exact";
    MessagingBackend.forward.
    """

    def _forward(
        self, queue_name: str, message: ReceivedMessage, extra_attributes: dict[str, str]
    ) -> PublishResult:
        stripped = dataclasses.replace(message, attributes={})
        return super()._forward(queue_name, stripped, extra_attributes)


@mutant
class ForwardExtrasOverrideOriginals(MemoryBackend):
    """An extra attribute named like an original attribute replaces the original's value.

    Rule: extra attributes are added only where there is room, never in place of an original
    attribute.
    Guide: MessagingBackend.forward in melange/backends/base.py ("never in place of an original
    attribute"); docs/writing-a-backend.md, section 4.
    """

    def _forward(
        self, queue_name: str, message: ReceivedMessage, extra_attributes: dict[str, str]
    ) -> PublishResult:
        merged = dataclasses.replace(message, attributes={**message.attributes, **extra_attributes})
        return super()._forward(queue_name, merged, {})


@mutant
class ForwardExtrasBeyondLimits(MemoryBackend):
    """``forward`` adds every extra attribute, even when the copy then exceeds the size limit.

    The memory backend enforces its declared limits on the copy as a broker would, so the copy
    is refused: the message is lost to the dead-letter queue for the sake of its extras.

    Rule: extra attributes are added only where the broker has room (count and size); never at
    the expense of the original.
    Guide: docs/writing-a-backend.md, section 4, "Dead-letter copies are byte-exact";
    MessagingBackend.forward.
    """

    def _forward(
        self, queue_name: str, message: ReceivedMessage, extra_attributes: dict[str, str]
    ) -> PublishResult:
        copy = OutgoingMessage(message.body, {**extra_attributes, **message.attributes})
        try:
            self.validate_message(copy)
        except MessageTooLarge as refused:
            return PublishResult(0, error=refused)
        return self._publish_batch(queue_name, [copy])[0]


@mutant
class ForwardLosesGroup(MemoryBackend):
    """``forward`` sends the copy without the original's FIFO group.

    Rule: a forwarded copy has the original body bytes, attributes and group id.
    Guide: MessagingBackend.forward in melange/backends/base.py; docs/consuming.md (the
    dead-letter outcome keeps "the same body and attributes (and FIFO group)").
    """

    def _forward(
        self, queue_name: str, message: ReceivedMessage, extra_attributes: dict[str, str]
    ) -> PublishResult:
        return super()._forward(
            queue_name, dataclasses.replace(message, group_id=None), extra_attributes
        )


# ------------------------------------------------------------------ convergence
class _RedeclareKeeps(MemoryBackend):
    """Re-declaring an existing queue keeps what ``keep`` picks of its current settings."""

    def keep(self, current: QueueSpec, declared: QueueSpec) -> QueueSpec:
        return declared

    def _declare_queue(self, spec: QueueSpec) -> None:
        current = self._get_queue(spec.name)
        super()._declare_queue(spec if current is None else self.keep(current, spec))


@mutant
class RedeclareKeepsVisibilityTimeout(_RedeclareKeeps):
    """Re-declaring an existing queue does not change its visibility timeout.

    Rule: ``_declare_queue`` creates the queue, or sets an existing queue's mutable settings to
    the spec, so init converges every declared setting.
    Guide: docs/writing-a-backend.md, section 1, the hooks table (``_declare_queue``).
    """

    def keep(self, current: QueueSpec, declared: QueueSpec) -> QueueSpec:
        return dataclasses.replace(declared, visibility_timeout=current.visibility_timeout)


@mutant
class RedeclareKeepsRetention(_RedeclareKeeps):
    """Re-declaring an existing queue does not change its retention period.

    Rule: ``_declare_queue`` sets an existing queue's mutable settings to the spec.
    Guide: docs/writing-a-backend.md, section 1, the hooks table (``_declare_queue``).
    """

    def keep(self, current: QueueSpec, declared: QueueSpec) -> QueueSpec:
        retention = current.message_retention_period
        return dataclasses.replace(declared, message_retention_period=retention)


@mutant
class RedeclareKeepsDelay(_RedeclareKeeps):
    """Re-declaring an existing queue does not change its delivery delay.

    Rule: ``_declare_queue`` sets an existing queue's mutable settings to the spec.
    Guide: docs/writing-a-backend.md, section 1, the hooks table (``_declare_queue``).
    """

    def keep(self, current: QueueSpec, declared: QueueSpec) -> QueueSpec:
        return dataclasses.replace(declared, delay_seconds=current.delay_seconds)


@mutant
class RedeclareKeepsDeadLetterQueue(_RedeclareKeeps):
    """Re-declaring a queue updates its max receive count but keeps the old dead-letter queue.

    Rule: ``_declare_queue`` sets an existing queue's mutable settings to the spec, the
    dead-letter target included.
    Guide: docs/writing-a-backend.md, section 1, the hooks table (``_declare_queue``).
    """

    def keep(self, current: QueueSpec, declared: QueueSpec) -> QueueSpec:
        if current.dead_letter is None or declared.dead_letter is None:
            return declared
        policy = dataclasses.replace(
            declared.dead_letter, queue_name=current.dead_letter.queue_name
        )
        return dataclasses.replace(declared, dead_letter=policy)


@mutant
class RedeclareKeepsMaxReceiveCount(_RedeclareKeeps):
    """Re-declaring a queue keeps the old ``max_receive_count`` of its dead-letter policy.

    Rule: ``_declare_queue`` sets an existing queue's mutable settings to the spec.
    Guide: docs/writing-a-backend.md, section 1, the hooks table (``_declare_queue``).
    """

    def keep(self, current: QueueSpec, declared: QueueSpec) -> QueueSpec:
        if current.dead_letter is None or declared.dead_letter is None:
            return declared
        count = current.dead_letter.max_receive_count
        policy = dataclasses.replace(declared.dead_letter, max_receive_count=count)
        return dataclasses.replace(declared, dead_letter=policy)


@mutant
class RedeclareKeepsDeadLetterPolicy(_RedeclareKeeps):
    """A dead-letter policy, once set, survives a declaration without one.

    Rule: ``_declare_queue`` sets an existing queue's mutable settings to the spec: a queue
    declared without a dead-letter queue has none.
    Guide: docs/writing-a-backend.md, section 1, the hooks table (``_declare_queue``).
    """

    def keep(self, current: QueueSpec, declared: QueueSpec) -> QueueSpec:
        if declared.dead_letter is None and current.dead_letter is not None:
            return dataclasses.replace(declared, dead_letter=current.dead_letter)
        return declared


@mutant
class RedeclaredVisibilityNotApplied(MemoryBackend):
    """A re-declared visibility timeout is reported by ``get_queue`` but deliveries use the old one.

    Rule: ``_declare_queue`` sets an existing queue's mutable settings to the spec, so they
    govern what the queue does from then on.
    Guide: docs/writing-a-backend.md, section 1, the hooks table (``_declare_queue``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reported: dict[str, QueueSpec] = {}

    def _declare_queue(self, spec: QueueSpec) -> None:
        current = self._get_queue(spec.name)
        applied = spec
        if current is not None:
            applied = dataclasses.replace(spec, visibility_timeout=current.visibility_timeout)
        super()._declare_queue(applied)
        self._reported[spec.name] = spec

    def _get_queue(self, name: str) -> QueueSpec | None:
        found = super()._get_queue(name)
        return None if found is None else self._reported.get(name, found)

    def _delete_queue(self, name: str) -> None:
        super()._delete_queue(name)
        self._reported.pop(name, None)


@mutant
class GetQueueStale(MemoryBackend):
    """``get_queue`` reports a queue's settings as they were first declared.

    Rule: ``_get_queue`` returns the queue's current settings.
    Guide: docs/writing-a-backend.md, section 1, the hooks table (``_get_queue``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._first: dict[str, QueueSpec] = {}

    def _get_queue(self, name: str) -> QueueSpec | None:
        found = super()._get_queue(name)
        if found is None:
            self._first.pop(name, None)
            return None
        return self._first.setdefault(name, found)


@mutant
class SubscribeKeepsFilter(MemoryBackend):
    """Subscribing an already subscribed queue again keeps the subscription's old filter.

    Rule: ``subscribe`` subscribes the queue, or sets an existing subscription's filter.
    Guide: MessagingBackend.subscribe in melange/backends/base.py; docs/factory.md (init
    converges the subscription filter).
    """

    def _subscribe(self, spec: SubscriptionSpec) -> None:
        if self._get_subscription(spec.topic_name, spec.queue_name) is None:
            super()._subscribe(spec)


@mutant
class SubscribeCannotRemoveFilter(MemoryBackend):
    """A subscription's filter survives a subscribe without one.

    Rule: ``subscribe`` sets an existing subscription's filter, to none as well.
    Guide: MessagingBackend.subscribe in melange/backends/base.py; docs/factory.md.
    """

    def _subscribe(self, spec: SubscriptionSpec) -> None:
        current = self._get_subscription(spec.topic_name, spec.queue_name)
        if spec.filter is None and current is not None and current.filter is not None:
            return
        super()._subscribe(spec)


# ------------------------------------------------------------------ validation
@mutant
class DeclareQueueUnvalidated(MemoryBackend):
    """``declare_queue`` goes straight to the hook: a direct call skips the topology rules.

    Rule: the contract's public ``declare_queue`` validates the spec (names, dead-letter rules,
    capabilities, the backend's own rules) before the hook, so a direct call is held to the same
    rules as the factory.
    Guide: docs/writing-a-backend.md, section 3, "Names and the validate_* hooks"; section 1 ("do
    not override" the public methods).
    """

    def declare_queue(self, spec: QueueSpec) -> None:
        self._call("declare a queue", self._declare_queue, spec)


@mutant
class DeclareTopicUnvalidated(MemoryBackend):
    """``declare_topic`` goes straight to the hook: a direct call accepts any name.

    Rule: the contract's public ``declare_topic`` validates the spec before the hook.
    Guide: docs/writing-a-backend.md, section 3, "Names and the validate_* hooks".
    """

    def declare_topic(self, spec: TopicSpec) -> None:
        self._call("declare a topic", self._declare_topic, spec)


@mutant
class SubscribeUnvalidated(MemoryBackend):
    """``subscribe`` goes straight to the hook: a direct call skips the topology rules.

    Rule: the contract's public ``subscribe`` validates the subscription (names, capabilities,
    the backend's own rules) before the hook.
    Guide: docs/writing-a-backend.md, section 3, "Names and the validate_* hooks".
    """

    def subscribe(self, spec: SubscriptionSpec) -> None:
        self._call("subscribe", self._subscribe, spec)


@mutant
class DeadLetterRulesSkipped(MemoryBackend):
    """The contract's queue check leaves out the dead-letter rules: a queue may be its own DLQ.

    Rule: a queue cannot be its own dead-letter queue, its dead-letter queue is of its kind and
    ``max_receive_count`` is within range; ``check_queue``, the one place of the topology rules,
    says so for the factory and direct declarations alike.
    Guide: docs/writing-a-backend.md, section 3, "Names and the validate_* hooks";
    MessagingBackend.check_queue.
    """

    def check_queue(self, spec: QueueSpec) -> None:
        super().check_queue(dataclasses.replace(spec, dead_letter=None))


# ------------------------------------------------------------------ close
@mutant
class CloseNotIdempotent(MemoryBackend):
    """A second ``close`` raises BackendClosed.

    Rule: ``close()`` is idempotent.
    Guide: docs/writing-a-backend.md, section 1 (what the public methods check).
    """

    def close(self) -> None:
        if self.closed:
            raise BackendClosed(self.name, "close")
        super().close()


@mutant
class NackAfterCloseIgnored(MemoryBackend):
    """``nack`` after ``close`` silently does nothing.

    Rule: use after ``close()`` raises BackendClosed, for every operation.
    Guide: docs/writing-a-backend.md, section 1 (what the public methods check).
    """

    def nack(self, messages: Sequence[ReceivedMessage], delay_seconds: float = 0.0) -> None:
        if not self.closed:
            super().nack(messages, delay_seconds)


MUTANT_NAMES: dict[str, type[MemoryBackend]] = {cls.__name__: cls for cls in CATALOGUE}
