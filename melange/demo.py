"""``melange demo``: a payments flow on the embedded memory backend, dead-letter path included.

The demo declares a topic ``payments`` and a queue ``payment-updates``
subscribed to it, with the dead-letter queue ``payment-updates-dlq`` after 3
receives. It publishes four payment events and one poison message (a body that
is not JSON) through the serializer registry, consumes them with a small
receive -> decode -> handle -> ack loop, and shows the poison message ending in
the dead-letter queue.

The backend runs on a :class:`~melange.clock.ManualClock`: where a real
consumer would wait for a retry delay, the demo moves the clock forward, so the
whole run is instant. Everything here is plain text and the standard library.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from melange.backends.base import OutgoingMessage, ReceivedMessage
from melange.backends.memory import MemoryBackend
from melange.clock import ManualClock
from melange.exceptions import SerializationError
from melange.factory import MessagingBackendFactory
from melange.message import MANIFEST_ATTRIBUTE, SERIALIZER_ATTRIBUTE, Message
from melange.serializers import SerializerRegistry

TOPIC = "payments"
QUEUE = "payment-updates"
DEAD_LETTER_QUEUE = "payment-updates-dlq"
MAX_RECEIVE_COUNT = 3
VISIBILITY_TIMEOUT = 10.0
RETRY_DELAY = 2.0
"""Seconds a failed message waits before it is delivered again (the nack delay)."""
MANIFEST = "payment.v1"

_Say = Callable[..., None]


@dataclass(frozen=True)
class PaymentEvent:
    """The demo's payload: something happened to a payment."""

    payment_id: str
    amount_cents: int
    currency: str
    status: str

    @property
    def amount(self) -> str:
        """The amount with its currency, e.g. ``"12.50 EUR"``."""
        return f"{self.amount_cents // 100}.{self.amount_cents % 100:02d} {self.currency}"

    def __str__(self) -> str:
        return f"{self.payment_id} {self.amount:>10} {self.status}"


EVENTS = (
    PaymentEvent("pay-1001", 1250, "EUR", "paid"),
    PaymentEvent("pay-1002", 9900, "USD", "paid"),
    PaymentEvent("pay-1003", 525, "EUR", "refunded"),
    PaymentEvent("pay-1004", 24000, "GBP", "paid"),
)
FLAKY_PAYMENT = "pay-1002"
"""The ledger times out once on this payment, to show a retry that then succeeds."""

POISON_BODY = b'{"payment_id": "pay-1005", "amount_cents": 31'
"""A body cut short by a buggy producer: it can never be decoded."""


@dataclass
class DemoSummary:
    """What the demo counted; the numbers of its closing table.

    Attributes:
        published: Messages published to the topic.
        processed: Messages handled and acked.
        retried: Deliveries after the first (a message nacked and received again).
        dead_lettered: Messages found in the dead-letter queue at the end.
        left_in_queues: Messages each queue still holds at the end.
    """

    published: int = 0
    processed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    left_in_queues: dict[str, int] = field(default_factory=dict)


class Ledger:
    """The demo's handler: records payments; times out once on :data:`FLAKY_PAYMENT`."""

    def __init__(self) -> None:
        self.recorded: list[PaymentEvent] = []
        self._timed_out = False

    def handle(self, message: Message) -> str:
        """Record the payment; raise on a transient failure so the message is retried."""
        event = message.body
        if not isinstance(event, PaymentEvent):
            raise TypeError(f"expected a PaymentEvent, got {type(event).__name__}")
        if event.payment_id == FLAKY_PAYMENT and not self._timed_out:
            self._timed_out = True
            raise TimeoutError("ledger database timed out")
        self.recorded.append(event)
        return f"recorded {event.amount} {event.status}"


def run_demo(out: TextIO | None = None) -> DemoSummary:
    """Run the demo, printing to ``out`` (standard output by default).

    Returns:
        The counts shown in the closing summary.
    """
    stream = sys.stdout if out is None else out

    def say(text: str = "") -> None:
        print(text, file=stream)

    clock = ManualClock()
    summary = DemoSummary()
    with MemoryBackend(clock=clock) as backend:
        say('melange demo: payments on the embedded "memory" backend')
        say("(in-process broker, simulated clock: nothing to install, no waiting)")

        _heading(say, "1. Topology")
        factory = MessagingBackendFactory(backend)
        say(f'factory.init_topic("{TOPIC}")')
        _indent(say, factory.init_topic(TOPIC).describe())
        say(
            f'factory.init_queue("{QUEUE}", ["{TOPIC}"], dead_letter_queue_name='
            f'"{DEAD_LETTER_QUEUE}",\n                   max_receive_count={MAX_RECEIVE_COUNT}, '
            f"visibility_timeout={VISIBILITY_TIMEOUT:g})"
        )
        plan = factory.init_queue(
            QUEUE,
            [TOPIC],
            dead_letter_queue_name=DEAD_LETTER_QUEUE,
            max_receive_count=MAX_RECEIVE_COUNT,
            visibility_timeout=VISIBILITY_TIMEOUT,
        )
        _indent(say, plan.describe())

        _heading(say, f"2. Publish to topic {TOPIC!r}")
        registry = SerializerRegistry()
        registry.bind(PaymentEvent, MANIFEST)
        batch = [
            registry.encode(Message(event, attributes={"event": event.status})) for event in EVENTS
        ]
        for event, outgoing in zip(EVENTS, batch, strict=True):
            say(f"  {event!s:<28} -> {len(outgoing.body)} bytes of JSON, manifest {MANIFEST!r}")
        poison = OutgoingMessage(
            POISON_BODY,
            {MANIFEST_ATTRIBUTE: MANIFEST, SERIALIZER_ATTRIBUTE: "json", "event": "paid"},
        )
        batch.append(poison)
        say(
            f"  {'poison message':<28} -> {len(POISON_BODY)} bytes of truncated JSON, "
            f"manifest {MANIFEST!r}"
        )
        results = backend.publish_to_topic(TOPIC, batch)
        summary.published = sum(result.ok for result in results)
        say(
            f"  published {summary.published} messages in one batch; {QUEUE!r} holds "
            f"{backend.queue_depth(QUEUE).visible}"
        )

        _heading(say, f"3. Consume {QUEUE!r}: receive -> decode -> handle -> ack, nack on failure")
        _consume(backend, registry, Ledger(), clock, summary, say)

        _heading(say, f"4. Dead-letter queue {DEAD_LETTER_QUEUE!r}")
        dead = backend.receive(DEAD_LETTER_QUEUE, max_messages=10)
        for message in dead:
            attributes = ", ".join(f"{k}={v}" for k, v in sorted(message.attributes.items()))
            intact = "intact" if message.body == POISON_BODY else "CHANGED"
            say(f"  {_short(message)}: {len(message.body)} bytes (body {intact}), {attributes}")
        if dead:
            say("  kept for inspection or replay; the consumer went on with the other messages")
            backend.nack(dead)  # leave them in the dead-letter queue
        else:
            say("  (empty)")
        summary.dead_lettered = len(dead)
        for name in (QUEUE, DEAD_LETTER_QUEUE):
            depth = backend.queue_depth(name)
            summary.left_in_queues[name] = depth.visible + depth.in_flight + depth.delayed

        _heading(say, "5. Summary")
        _summary_table(say, summary)
    return summary


def _consume(
    backend: MemoryBackend,
    registry: SerializerRegistry,
    ledger: Ledger,
    clock: ManualClock,
    summary: DemoSummary,
    say: _Say,
) -> None:
    """Receive until the queue is empty; ack only after the handler succeeded."""
    reasons: dict[str, str] = {}

    def failed(received: ReceivedMessage, label: str, reason: str) -> None:
        backend.nack([received], delay_seconds=RETRY_DELAY)
        # Print each message's failure in full once; a repeat only says so.
        if reasons.get(received.message_id) == reason:
            reason = "same failure again"
        else:
            reasons[received.message_id] = reason
        say(f"{_at(clock)}{label} delivery {received.receive_count}: {reason}")
        if received.receive_count >= MAX_RECEIVE_COUNT:
            say(
                f"{'':9}-> nack; that was receive {received.receive_count} of "
                f"max_receive_count={MAX_RECEIVE_COUNT}, so the queue moves it\n"
                f"{'':12}to {DEAD_LETTER_QUEUE!r} instead of delivering it again"
            )
        else:
            say(f"{'':9}-> nack, redelivered in {RETRY_DELAY:g}s")

    for _ in range(100):  # a bound, so a bug cannot make the demo spin forever
        batch = backend.receive(QUEUE, max_messages=10)
        if not batch:
            depth = backend.queue_depth(QUEUE)
            if depth == (0, 0, 0):
                say(f"{_at(clock)}{QUEUE!r} is empty: every message was acked or dead-lettered")
                return
            # A real consumer would poll again; the demo moves the clock instead of waiting.
            clock.advance(RETRY_DELAY)
            continue
        for received in batch:
            if received.receive_count > 1:
                summary.retried += 1
            try:
                message = registry.decode(received)
            except SerializationError as exc:
                failed(received, _short(received), f"cannot decode it:\n{'':9}{exc}")
                continue
            label = getattr(message.body, "payment_id", _short(received))
            try:
                outcome = ledger.handle(message)
            except Exception as exc:  # any handler failure: retry later, never lose it
                failed(received, label, f"handler failed: {type(exc).__name__}: {exc}")
                continue
            backend.ack([received])
            summary.processed += 1
            say(f"{_at(clock)}{label} delivery {received.receive_count}: {outcome} -> ack")
    raise RuntimeError(f"the demo consumer did not empty {QUEUE!r}; this is a bug")


def _heading(say: _Say, title: str) -> None:
    say()
    say(f"== {title} " + "=" * max(3, 74 - len(title)))


def _indent(say: _Say, text: str) -> None:
    for line in text.splitlines():
        say(f"  {line}")


def _at(clock: ManualClock) -> str:
    return f"  t={clock.now():>3.0f}s "


def _short(received: ReceivedMessage) -> str:
    return f"msg {received.message_id[:8]}"


def _summary_table(say: _Say, summary: DemoSummary) -> None:
    left = ", ".join(f"{name}: {count}" for name, count in summary.left_in_queues.items())
    rows = [
        (
            "published",
            str(summary.published),
            f"{len(EVENTS)} payment events + 1 poison message, to topic {TOPIC!r}",
        ),
        ("processed", str(summary.processed), "handled, then acked"),
        ("retried", str(summary.retried), "deliveries after a nack (receive count > 1)"),
        (
            "dead-lettered",
            str(summary.dead_lettered),
            f"{QUEUE} -> {DEAD_LETTER_QUEUE} after {MAX_RECEIVE_COUNT} receives",
        ),
        ("left in queues", str(sum(summary.left_in_queues.values())), left),
    ]
    say(f"  {'':<15} {'count':>5}  details")
    for name, count, details in rows:
        say(f"  {name:<15} {count:>5}  {details}")


def main() -> int:
    """Run the demo on standard output; return the exit code."""
    run_demo()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
