"""Wrong argument types get a MelangeError naming the argument, before anything is done.

Reproduced before: ``init_queue(None)``, ``init_queue(123)``, ``init_queue(b"x")``,
``publish(None, ...)`` and ``delay_seconds="5"`` raised AttributeError or TypeError from
deep inside melange.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from melange import MessagingBackendFactory, QueuePublisher, TopicPublisher
from melange.backends.base import OutgoingMessage, ReceivedMessage
from melange.backends.memory import MemoryBackend
from melange.exceptions import InvalidArgument, MelangeError
from melange.observability import Hooks

Call = Callable[[MemoryBackend], Any]

CASES: dict[str, tuple[Call, str]] = {
    "init_queue(None)": (lambda b: MessagingBackendFactory(b).init_queue(None), "queue_name"),
    "init_queue(123)": (lambda b: MessagingBackendFactory(b).init_queue(123), "queue_name"),
    "init_queue(b'x')": (lambda b: MessagingBackendFactory(b).init_queue(b"x"), "queue_name"),
    "init_topic(None)": (lambda b: MessagingBackendFactory(b).init_topic(None), "topic_name"),
    "init_queue dlq 5": (
        lambda b: MessagingBackendFactory(b).init_queue("q", dead_letter_queue_name=5),
        "dead_letter_queue_name",
    ),
    "init_queue topics 7": (
        lambda b: MessagingBackendFactory(b).init_queue("q", 7),
        "topic_names_to_subscribe",
    ),
    "init_queue topics [None]": (
        lambda b: MessagingBackendFactory(b).init_queue("q", [None]),
        "topic_names_to_subscribe",
    ),
    "backend.publish(None)": (lambda b: b.publish(None, []), "queue_name"),
    "backend.publish one message": (
        lambda b: b.publish("orders", OutgoingMessage(b"x")),
        "messages",
    ),
    "backend.publish bytes": (lambda b: b.publish("orders", [b"x"]), "each message"),
    "backend.publish_to_topic(None)": (lambda b: b.publish_to_topic(None, []), "topic_name"),
    "delay_seconds='5' (contract)": (
        lambda b: b.publish("orders", [OutgoingMessage(b"x", delay_seconds="5")]),
        "delay_seconds",
    ),
    "publisher.publish(None)": (
        lambda b: QueuePublisher(b, hooks=Hooks()).publish(None, {"n": 1}),
        "queue_name",
    ),
    "topic publisher.publish(None)": (
        lambda b: TopicPublisher(b, hooks=Hooks()).publish(None, {"n": 1}),
        "topic_name",
    ),
    "publisher delay_seconds='5'": (
        lambda b: QueuePublisher(b, hooks=Hooks()).publish("orders", {}, delay_seconds="5"),
        "delay_seconds",
    ),
    "publisher producer_id=5": (
        lambda b: QueuePublisher(b, hooks=Hooks()).publish("orders", {}, producer_id=5),
        "producer_id",
    ),
    "receive(None)": (lambda b: b.receive(None), "queue_name"),
    "receive max_messages='3'": (lambda b: b.receive("orders", "3"), "max_messages"),
    "receive wait_seconds='1'": (lambda b: b.receive("orders", 1, "1"), "wait_seconds"),
    "get_queue(1)": (lambda b: b.get_queue(1), "name"),
    "nack delay_seconds='1'": (lambda b: b.nack([], "1"), "delay_seconds"),
    "forward(bytes)": (lambda b: b.forward(b"x", "orders"), "message"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_wrong_types_raise_invalid_argument_naming_it(case: str) -> None:
    call, argument = CASES[case]
    backend = MemoryBackend()
    MessagingBackendFactory(backend).init_queue("orders")
    before = backend.queue_depth("orders")

    with pytest.raises(InvalidArgument) as raised:
        call(backend)

    error = raised.value
    assert isinstance(error, MelangeError) and isinstance(error, TypeError)
    assert error.argument.startswith(argument) or argument in str(error)
    assert str(error).startswith(argument)
    assert backend.queue_depth("orders") == before
    assert backend.get_queue("q") is None, "created before the error"


def test_bytes_names_get_a_hint_to_decode() -> None:
    with pytest.raises(InvalidArgument, match=r"decode it first"):
        MessagingBackendFactory(MemoryBackend()).init_queue(b"orders")


def test_forward_checks_its_extra_attributes() -> None:
    backend = MemoryBackend()
    MessagingBackendFactory(backend).init_queue("orders")
    received = ReceivedMessage("orders", b"x", {}, "id-1", 1)
    with pytest.raises(InvalidArgument, match="reason"):
        backend.forward(received, "orders", extra_attributes={"reason": 3})
