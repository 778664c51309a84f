"""Arbitrary bytes and attributes through the decode path: only documented errors come out.

Whatever a producer puts on a queue, ``SerializerRegistry.decode`` returns a
``Message`` or raises ``SerializationError`` (never another exception, never
the body in the message), and a dispatcher on the memory backend settles every
such message by its policy (handled, retried into the broker's dead-letter
queue, or moved there as undecodable or unhandled) while it keeps going.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from melange.backends.base import OutgoingMessage, ReceivedMessage
from melange.backends.memory import MemoryBackend
from melange.consumers import Consumer, consumer
from melange.dispatcher import MessageDispatcher, RetryPolicy
from melange.exceptions import SerializationError
from melange.factory import MessagingBackendFactory
from melange.message import MANIFEST_ATTRIBUTE, RESERVED_ATTRIBUTES, SERIALIZER_ATTRIBUTE, Message
from melange.serializers import Serializer, SerializerRegistry

ORDER_MANIFEST = "decode.order.v1"
CHAOS_MANIFEST = "decode.chaos.v1"
SECRET = "tOp-S3cret-body-7f3a"
"""Put into bodies: no error message may repeat it."""


@dataclass(frozen=True)
class Order:
    n: int
    label: str


CHAOS_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    KeyError,
    TypeError,
    RecursionError,
    ZeroDivisionError,
    UnicodeDecodeError,
    AttributeError,
    SerializationError,
)


class ChaosSerializer(Serializer):
    """A buggy third-party serializer: raises a different exception for each body length."""

    identifier = "chaos"

    def serialize(self, obj: Any) -> bytes:
        return b"chaos"

    def deserialize(self, data: bytes, manifest: str | None) -> Any:
        error = CHAOS_ERRORS[len(data) % len(CHAOS_ERRORS)]
        if error is UnicodeDecodeError:
            raise UnicodeDecodeError("utf-8", data, 0, 1, f"bad {data!r}")
        if error is SerializationError:  # its own error: its message is passed on, so no body
            raise SerializationError(f"{len(data)} bytes it cannot read")
        raise error(f"cannot read {data!r}")  # a careless message: the registry must not pass it on


class Boom(Consumer):
    """Takes JSON objects with a "boom" key and always fails on them."""

    def accepts(self, message: Message) -> bool:
        return isinstance(message.body, dict) and "boom" in message.body

    def process(self, message: Message) -> None:
        raise RuntimeError("always fails")


def make_registry() -> SerializerRegistry:
    registry = SerializerRegistry()
    registry.bind(Order, ORDER_MANIFEST)
    registry.register(ChaosSerializer(), manifests=[CHAOS_MANIFEST])
    return registry


# ---------------------------------------------------------------- strategies
attribute_names = st.one_of(
    st.sampled_from(
        [MANIFEST_ATTRIBUTE, SERIALIZER_ATTRIBUTE, "melange.body-encoding", "event", "n"]
    ),
    st.text(min_size=1, max_size=16),
)
attribute_values = st.one_of(
    st.sampled_from(
        ["json", "pickle", "chaos", "avro", "", ORDER_MANIFEST, CHAOS_MANIFEST, "Order", "base64"]
    ),
    st.text(max_size=24),
)
attributes = st.dictionaries(attribute_names, attribute_values, max_size=5)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
order_like = st.dictionaries(
    st.sampled_from(["n", "label", "extra", "boom"]),
    st.one_of(st.integers(), st.text(max_size=12), st.none(), st.lists(st.integers(), max_size=2)),
    max_size=3,
)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda value: json.dumps(value).encode()),
    order_like.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=20).map(lambda noise: noise + SECRET.encode() + noise),
    st.sampled_from(
        [
            b"",
            b"1" * 5000,  # beyond Python's integer-string limit: ValueError, not JSONDecodeError
            b"[" * 5000,  # nested too deeply
            b"1e999",
            b"NaN",
            b"\xef\xbb\xbf{}",  # a byte-order mark
            b'"\\ud800"',  # a lone surrogate
            b'{"n": 1, "label": "' + SECRET.encode() + b'"',
        ]
    ),
)


def _dumps(value: object) -> bytes:
    return json.dumps(value).encode()


def _without_melange(attrs: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in attrs.items() if k not in RESERVED_ATTRIBUTES}


orders = st.fixed_dictionaries(
    {"n": st.integers(), "label": st.text(max_size=12)},
    optional={"extra": json_values, "boom": st.booleans()},
)
raw_messages = st.one_of(
    st.tuples(bodies, attributes),  # anything at all
    st.tuples(  # orders, well-formed or not
        st.one_of(orders, order_like).map(_dumps),
        attributes.map(lambda attrs: {**attrs, MANIFEST_ATTRIBUTE: ORDER_MANIFEST}),
    ),
    st.tuples(  # foreign JSON some handler fails on
        st.fixed_dictionaries({"boom": json_values}).map(_dumps), attributes.map(_without_melange)
    ),
)
"""``(body, attributes)`` as a producer, melange or not, may send them."""


def received(body: bytes, attrs: dict[str, str], message_id: str = "m-1") -> ReceivedMessage:
    return ReceivedMessage("decode-q", body, attrs, message_id, 1, None, None)


# ---------------------------------------------------------------- decoding
@settings(max_examples=400, deadline=None)
@given(raw=raw_messages)
def test_decode_returns_a_message_or_raises_serialization_error(
    raw: tuple[bytes, dict[str, str]],
) -> None:
    body, attrs = raw
    registry = make_registry()
    try:
        message = registry.decode(received(body, attrs, "m-42"))
    except SerializationError as error:
        text = str(error)
        assert "m-42" in text and "decode-q" in text, text
        assert SECRET not in text, text
        return
    manifest = attrs.get(MANIFEST_ATTRIBUTE)
    assert message.id == "m-42"
    assert message.manifest == manifest
    assert dict(message.attributes) == _without_melange(attrs)
    if manifest == ORDER_MANIFEST:
        assert isinstance(message.body, Order)
    if manifest == CHAOS_MANIFEST:
        pytest.fail("the chaos serializer never returns")


@given(body=bodies, attrs=attributes)
@settings(max_examples=100, deadline=None)
def test_pickle_named_by_a_producer_is_refused_without_unpickling(
    body: bytes, attrs: dict[str, str]
) -> None:
    attrs = {**attrs, SERIALIZER_ATTRIBUTE: "pickle"}
    attrs.pop(MANIFEST_ATTRIBUTE, None)
    with pytest.raises(SerializationError, match="pickle"):
        make_registry().decode(received(body, attrs))


def test_a_serializer_raising_anything_becomes_serialization_error() -> None:
    registry = make_registry()
    for length in range(len(CHAOS_ERRORS)):
        with pytest.raises(SerializationError) as caught:
            registry.decode(received(b"x" * length, {MANIFEST_ATTRIBUTE: CHAOS_MANIFEST}))
        assert "x" * max(length, 3) not in str(caught.value)


# ---------------------------------------------------------------- dispatching
class _Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def log_capture() -> Iterator[_Captured]:
    handler = _Captured()
    logger = logging.getLogger("melange")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(previous)


def expected_outcome(registry: SerializerRegistry, body: bytes, attrs: dict[str, str]) -> str:
    try:
        message = registry.decode(received(body, attrs))
    except SerializationError:
        return "dead"
    if isinstance(message.body, Order):
        return "handled"
    return "dead"  # unhandled, or a "boom" object that always fails: the DLQ either way


def describe_outcome(registry: SerializerRegistry, body: bytes, attrs: dict[str, str]) -> str:
    """What happens to a message, for hypothesis's statistics."""
    try:
        message = registry.decode(received(body, attrs))
    except SerializationError:
        return "undecodable"
    if isinstance(message.body, Order):
        return "handled"
    if isinstance(message.body, dict) and "boom" in message.body:
        return "failing handler"
    return "unhandled"


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(messages=st.lists(raw_messages, min_size=1, max_size=6))
def test_dispatcher_settles_arbitrary_messages_and_keeps_going(
    messages: list[tuple[bytes, dict[str, str]]], log_capture: _Captured
) -> None:
    log_capture.records.clear()
    registry = make_registry()
    messages = [
        *messages,
        (
            json.dumps({"n": -1, "label": "sentinel"}).encode(),
            {SERIALIZER_ATTRIBUTE: "json", MANIFEST_ATTRIBUTE: ORDER_MANIFEST},
        ),
    ]
    backend = MemoryBackend()
    MessagingBackendFactory(backend).init_queue(
        "q", dead_letter_queue_name="q-dlq", max_receive_count=2
    )
    results = backend.publish("q", [OutgoingMessage(body, attrs) for body, attrs in messages])
    expected = Counter(expected_outcome(registry, body, attrs) for body, attrs in messages)
    kinds = Counter(describe_outcome(registry, body, attrs) for body, attrs in messages[:-1])
    for kind in kinds:
        event(kind)

    handled: list[Order] = []
    lock = threading.Lock()

    @consumer(Order, name="orders")
    def orders(order: Order) -> None:
        with lock:
            handled.append(order)

    escaped: list[BaseException | None] = []
    previous_hook = threading.excepthook
    threading.excepthook = lambda args: escaped.append(args.exc_value)
    dead: list[ReceivedMessage] = []
    dispatcher = MessageDispatcher(
        backend,
        "q",
        [orders, Boom()],
        registry,
        workers=2,
        wait_seconds=0.02,
        retry=RetryPolicy(base=0.0),
        close_backend=False,
    )
    try:
        dispatcher.start()
        deadline = time.monotonic() + 10
        while len(handled) + len(dead) < len(messages) and time.monotonic() < deadline:
            batch = backend.receive("q-dlq", 10)
            backend.ack(batch)
            dead.extend(batch)
            time.sleep(0.005)
        dispatcher.stop(timeout=10)
    finally:
        threading.excepthook = previous_hook
    assert escaped == []
    assert Order(-1, "sentinel") in handled, "the loop stopped before the last message"
    assert (len(handled), len(dead)) == (expected["handled"], expected["dead"])
    by_id = {result.message_id: message for result, message in zip(results, messages, strict=True)}
    # A message moved by the dispatcher gets a new id; compare contents instead.
    # The copy is the original plus the reason attributes the dispatcher adds.
    reason = {"melange.dead-letter-reason", "melange.dead-letter-source"}
    assert sorted(
        (m.body, sorted((k, v) for k, v in m.attributes.items() if k not in reason)) for m in dead
    ) == sorted(
        (body, sorted(attrs.items()))
        for body, attrs in by_id.values()
        if expected_outcome(registry, body, attrs) == "dead"
    )
    assert backend.receive("q", 10) == []
    internal = [r for r in log_capture.records if "internal error" in r.getMessage()]
    assert internal == []
    assert not any(SECRET in record.getMessage() for record in log_capture.records)
    backend.close()
