"""``melange demo``: a payments flow through the real publishers and dispatcher.

The demo declares a topic ``payments`` and a queue ``payment-updates``
subscribed to it, with the dead-letter queue ``payment-updates-dlq``. It
publishes eight payment events with a :class:`~melange.publishers.TopicPublisher`,
and a buggy producer sends one poison message (truncated JSON) straight to the
broker. A :class:`~melange.dispatcher.MessageDispatcher` with four workers
handles them: the ledger times out once on one payment, which is retried and
then recorded; the poison message cannot be decoded and is moved to the
dead-letter queue, body and attributes intact, while the other messages go on.
A hooks object prints each step as it happens, and a summary table closes the run.

The backend runs on a :class:`~melange.clock.ManualClock`: where a real
consumer would wait for a retry delay, the demo moves the clock forward, so the
run takes well under a second. Everything here is plain text and the standard library.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from melange.backends.base import OutgoingMessage, ReceivedMessage
from melange.backends.memory import MemoryBackend
from melange.clock import ManualClock
from melange.consumers import SingleDispatchConsumer, handler
from melange.dispatcher import DispatchStats, MessageDispatcher
from melange.factory import MessagingBackendFactory
from melange.message import MANIFEST_ATTRIBUTE, SERIALIZER_ATTRIBUTE, Message
from melange.observability import Hooks
from melange.publishers import TopicPublisher
from melange.retry import RetryPolicy
from melange.serializers import SerializerRegistry

TOPIC = "payments"
QUEUE = "payment-updates"
DEAD_LETTER_QUEUE = "payment-updates-dlq"
MAX_RECEIVE_COUNT = 3
VISIBILITY_TIMEOUT = 30.0
WORKERS = 4
RETRY_DELAY = 2.0
"""Seconds (simulated) a failed message waits before it is delivered again: the nack delay."""
HANDLING_SECONDS = 0.02
"""Real seconds the ledger takes per payment, so that the workers visibly overlap."""
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
    PaymentEvent("pay-1005", 1999, "EUR", "paid"),
    PaymentEvent("pay-1006", 4500, "USD", "refunded"),
    PaymentEvent("pay-1007", 780, "EUR", "paid"),
    PaymentEvent("pay-1008", 15000, "GBP", "paid"),
)
FLAKY_PAYMENT = "pay-1002"
"""The ledger times out once on this payment, to show a retry that then succeeds."""

POISON_BODY = b'{"payment_id": "pay-1009", "amount_cents": 31'
"""A body cut short by a buggy producer: it can never be decoded."""


@dataclass
class DemoSummary:
    """What the demo counted; the numbers of its closing table.

    Attributes:
        published: Messages published to the topic (the events and the poison message).
        stats: The dispatcher's counters at the end of the run.
        workers_used: Distinct worker threads that ran the ledger.
        dead_letter_bodies: Bodies found in the dead-letter queue at the end.
        left_in_queues: Messages each queue still holds at the end.
        seconds: Real time the run took.
    """

    published: int = 0
    stats: DispatchStats = field(default_factory=DispatchStats)
    workers_used: int = 0
    dead_letter_bodies: list[bytes] = field(default_factory=list)
    left_in_queues: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def dead_lettered(self) -> int:
        """Messages found in the dead-letter queue at the end."""
        return len(self.dead_letter_bodies)


class Ledger(SingleDispatchConsumer):
    """The demo's consumer: records payments; times out once on :data:`FLAKY_PAYMENT`."""

    def __init__(self) -> None:
        super().__init__(name="ledger")
        self.recorded: list[PaymentEvent] = []
        self.deliveries: dict[str, int] = {}
        self.threads: set[str] = set()
        self._lock = threading.Lock()

    @handler
    def record(self, event: PaymentEvent) -> None:
        """Record the payment; raise on a transient failure so the message is retried."""
        with self._lock:
            self.deliveries[event.payment_id] = self.deliveries.get(event.payment_id, 0) + 1
            first_try = self.deliveries[event.payment_id] == 1
            self.threads.add(threading.current_thread().name)
        time.sleep(HANDLING_SECONDS)  # the database round trip
        if event.payment_id == FLAKY_PAYMENT and first_try:
            raise TimeoutError("ledger timed out")
        with self._lock:
            self.recorded.append(event)


class Progress(Hooks):
    """Prints each step as the dispatcher reports it: the demo's live display.

    It is also an example of a metrics hook: it counts what it is told, and
    never fails the dispatcher (an exception in a hook is logged and ignored).
    """

    def __init__(self, say: _Say, clock: ManualClock, ledger: Ledger, expected: int) -> None:
        self._say = say
        self._clock = clock
        self._ledger = ledger
        self._expected = expected
        self._settled = 0
        self._workers: dict[str, int] = {}
        self._lock = threading.Lock()

    def _line(self, label: str, text: str, settled: bool) -> None:
        with self._lock:
            if settled:
                self._settled += 1
            thread = threading.current_thread().name
            worker = self._workers.setdefault(thread, len(self._workers) + 1)
            self._say(
                f"  t={self._clock.now():>3.0f}s [{self._settled}/{self._expected}] "
                f"worker {worker}  {label:<12} {text}"
            )

    def _label(self, message: Message) -> tuple[str, int]:
        event = message.body
        payment_id = getattr(event, "payment_id", "?")
        return payment_id, self._ledger.deliveries.get(payment_id, 0)

    def on_handled(self, queue_name: str, message: Message, consumer: str, seconds: float) -> None:
        """A payment was recorded; it is acked next."""
        payment_id, delivery = self._label(message)
        event = message.body
        self._line(
            payment_id,
            f"delivery {delivery}: recorded {event.amount} {event.status} -> ack",
            settled=True,
        )

    def on_handler_error(
        self,
        queue_name: str,
        message: Message,
        consumer: str,
        error: BaseException,
        retry_in: float | None,
    ) -> None:
        """The ledger raised: the dispatcher nacks the message with the retry delay."""
        payment_id, delivery = self._label(message)
        when = "after the visibility timeout" if retry_in is None else f"in {retry_in:g}s"
        self._line(
            payment_id,
            f"delivery {delivery}: handler failed: {type(error).__name__}: {error}\n"
            f"{_CONTINUATION}-> nack, redelivered {when}",
            settled=False,
        )

    def on_undecodable(
        self, queue_name: str, received: ReceivedMessage, error: Exception, outcome: str
    ) -> None:
        """A poison message: the dispatcher applied its ``on_undecodable`` outcome."""
        reason = str(error).split(": ", 1)[-1]  # drop the "cannot decode message ..." prefix
        if outcome == "dead_letter":
            outcome = f"moved to {DEAD_LETTER_QUEUE!r}, then acked"
        self._line(
            _short(received),
            f"delivery {received.receive_count}: cannot decode it:\n"
            f"{_wrap(reason, _CONTINUATION)}\n{_CONTINUATION}-> on_undecodable: {outcome}",
            settled=outcome != "leave",
        )


class _Capture(logging.Handler):
    """Keeps the dispatcher's log records during the demo instead of printing them."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def run_demo(out: TextIO | None = None) -> DemoSummary:
    """Run the demo, printing to ``out`` (standard output by default).

    Returns:
        The counts shown in the closing summary.
    """
    stream = sys.stdout if out is None else out
    lock = threading.Lock()

    def say(text: str = "") -> None:
        with lock:
            print(text, file=stream, flush=True)

    started = time.monotonic()
    clock = ManualClock()
    summary = DemoSummary()
    capture = _Capture()
    with MemoryBackend(clock=clock) as backend, _captured_logs(capture):
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

        registry = SerializerRegistry()
        registry.bind(PaymentEvent, MANIFEST)
        summary.published = _publish(backend, registry, say)

        ledger = Ledger()
        progress = Progress(say, clock, ledger, expected=summary.published)
        _heading(say, f"3. Consume {QUEUE!r} with a MessageDispatcher")
        say(
            f'MessageDispatcher(backend, "{QUEUE}", [Ledger()], registry, workers={WORKERS},\n'
            f"                  retry=RetryPolicy(base={RETRY_DELAY:g}, jitter=0), "
            'on_undecodable="dead_letter")'
        )
        dispatcher = MessageDispatcher(
            backend,
            QUEUE,
            [ledger],
            registry,
            workers=WORKERS,
            wait_seconds=0.05,  # a short long-poll: the demo stops quickly
            retry=RetryPolicy(base=RETRY_DELAY, jitter=0.0),
            on_undecodable="dead_letter",
            hooks=progress,
            grace_period=5.0,
            close_backend=False,  # the demo reads the dead-letter queue afterwards
        )
        with dispatcher:
            _dispatch(backend, dispatcher, clock, say)
        summary.stats = dispatcher.stats.snapshot()
        summary.workers_used = len(ledger.threads)
        say(
            f"  {summary.stats.max_in_flight} messages in flight at once on {WORKERS} workers; "
            f"{summary.workers_used} worker threads ran the ledger"
        )

        _heading(say, f"4. Dead-letter queue {DEAD_LETTER_QUEUE!r}")
        _show_dead_letters(backend, summary, say)
        for name in (QUEUE, DEAD_LETTER_QUEUE):
            depth = backend.queue_depth(name)
            summary.left_in_queues[name] = depth.visible + depth.in_flight + depth.delayed

        _heading(say, "5. Log records (logger 'melange.dispatcher'; ids only, never bodies)")
        _show_logs(capture.records, say)

        summary.seconds = time.monotonic() - started
        _heading(say, "6. Summary")
        _summary_table(say, summary)
    return summary


def _publish(backend: MemoryBackend, registry: SerializerRegistry, say: _Say) -> int:
    _heading(say, f"2. Publish to topic {TOPIC!r} with a TopicPublisher")
    publisher = TopicPublisher(backend, registry, hooks=Hooks())
    say(f'publisher.publish_batch("{TOPIC}", [Message(event, attributes={{"event": ...}}), ...])')
    messages = [Message(event, attributes={"event": event.status}) for event in EVENTS]
    results = publisher.publish_batch(TOPIC, messages)
    for event, result in zip(EVENTS, results, strict=True):
        status = "accepted" if result.ok else f"refused: {result.error}"
        say(f"  {event!s:<28} -> {status}")
    # A producer that bypasses melange and writes a truncated body: the poison message.
    poison = OutgoingMessage(
        POISON_BODY,
        {MANIFEST_ATTRIBUTE: MANIFEST, SERIALIZER_ATTRIBUTE: "json", "event": "paid"},
    )
    [poison_result] = backend.publish_to_topic(TOPIC, [poison])
    say(
        f"  {'poison message':<28} -> {len(POISON_BODY)} bytes of truncated JSON, published raw "
        "by a buggy producer"
    )
    published = sum(result.ok for result in results) + poison_result.ok
    say(f"  {published} messages published; {QUEUE!r} holds {backend.queue_depth(QUEUE).visible}")
    return published


def _dispatch(
    backend: MemoryBackend, dispatcher: MessageDispatcher, clock: ManualClock, say: _Say
) -> None:
    """Run the dispatcher until the queue is empty, moving the clock over retry delays."""
    for _ in range(50):  # a bound, so a bug cannot make the demo spin forever
        dispatcher.run_until_idle(idle_seconds=0.15)
        depth = backend.queue_depth(QUEUE)
        if depth == (0, 0, 0):
            say(f"  t={clock.now():>3.0f}s {QUEUE!r} is empty: every message was settled")
            return
        if depth.visible == 0 and dispatcher.in_flight == 0:
            # Only messages waiting for their retry delay are left. A real consumer
            # would simply keep polling; the demo moves the simulated clock instead.
            say(
                f"  t={clock.now():>3.0f}s {depth.in_flight} message(s) waiting "
                f"{RETRY_DELAY:g}s for a retry: the demo moves the simulated clock forward"
            )
            clock.advance(RETRY_DELAY)
    raise RuntimeError(f"the demo dispatcher did not empty {QUEUE!r}; this is a bug")


def _show_dead_letters(backend: MemoryBackend, summary: DemoSummary, say: _Say) -> None:
    dead = backend.receive(DEAD_LETTER_QUEUE, max_messages=10)
    if dead:
        say(
            "  the dispatcher copied the poison message here as received (plus why), then acked it:"
        )
    for message in dead:
        attributes = ", ".join(f"{k}={v}" for k, v in sorted(message.attributes.items()))
        intact = "intact" if message.body == POISON_BODY else "CHANGED"
        say(f"  {_short(message)}: {len(message.body)} bytes (body {intact})\n    {attributes}")
        summary.dead_letter_bodies.append(message.body)
    if dead:
        say("  kept for inspection or replay; the dispatcher went on with the other messages")
        backend.nack(dead)  # leave them in the dead-letter queue
    else:
        say("  (empty)")


def _show_logs(records: Sequence[logging.LogRecord], say: _Say) -> None:
    shown = [r for r in records if r.levelno >= logging.WARNING]
    for record in shown:
        fields = " ".join(
            f"{name}={value}"
            for name in ("queue", "message_id", "consumer")
            if (value := getattr(record, name, None)) is not None
        )
        say(f"  {record.levelname} {record.name}: {fields}")
        say(_wrap(record.getMessage(), "    "))
    say(
        f"  ({len(records)} records in all; configure logging to see them, e.g. "
        "logging.basicConfig(level=logging.INFO))"
    )


@contextlib.contextmanager
def _captured_logs(handler: logging.Handler) -> Iterator[None]:
    """Route melange's log records to ``handler``, not to stderr, for the length of a block."""
    melange_logger = logging.getLogger("melange")
    propagate, level = melange_logger.propagate, melange_logger.level
    melange_logger.addHandler(handler)
    melange_logger.propagate = False
    melange_logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        melange_logger.removeHandler(handler)
        melange_logger.propagate = propagate
        melange_logger.setLevel(level)


def _heading(say: _Say, title: str) -> None:
    say()
    say(f"== {title} " + "=" * max(3, 74 - len(title)))


def _indent(say: _Say, text: str) -> None:
    for line in text.splitlines():
        say(f"  {line}")


_CONTINUATION = " " * 35
"""Indent of a progress line's continuation, under its text."""


def _wrap(text: str, indent: str) -> str:
    return textwrap.fill(
        text, width=100, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False
    )


def _short(received: ReceivedMessage) -> str:
    return f"msg {received.message_id[:8]}"


def _summary_table(say: _Say, summary: DemoSummary) -> None:
    stats = summary.stats
    left = ", ".join(f"{name}: {count}" for name, count in summary.left_in_queues.items())
    rows = [
        (
            "published",
            summary.published,
            f"{len(EVENTS)} payment events + 1 poison message, to topic {TOPIC!r}",
        ),
        ("received", stats.received, "deliveries, the retried one counted twice"),
        ("handled", stats.handled, "recorded by the ledger, then acked"),
        ("retried", stats.retried, "handler failed, nacked with a delay, received again"),
        (
            "dead-lettered",
            stats.dead_lettered,
            f"undecodable, moved to {DEAD_LETTER_QUEUE} by the dispatcher",
        ),
        ("acked", stats.acked, "handled + dead-lettered originals"),
        ("in flight", stats.max_in_flight, f"most messages held at once ({WORKERS} workers)"),
        ("left in queues", sum(summary.left_in_queues.values()), left),
    ]
    say(f"  {'':<15} {'count':>5}  details")
    for name, count, details in rows:
        say(f"  {name:<15} {count:>5}  {details}")
    say(f"  (ran in {summary.seconds:.2f}s of real time)")


def main() -> int:
    """Run the demo on standard output; return the exit code."""
    run_demo()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
