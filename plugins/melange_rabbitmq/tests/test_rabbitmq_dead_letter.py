"""Dead-lettering on RabbitMQ: quorum queues count deliveries, at-least-once dead-lettering.

The conformance suite's ``test_a_dead_letter_queue_that_is_gone_swallows_nothing``
expects the message to stay receivable in its queue; on RabbitMQ it is held,
not receivable, by the queue's at-least-once dead-letter worker until a queue
routes it. These tests prove that it is held, not lost, and moves once the
dead-letter queue exists again.
"""

from __future__ import annotations

import time

from melange_rabbitmq import RabbitMQBackend

from melange import MessagingBackendFactory
from melange.backends.base import OutgoingMessage
from melange.testing.conformance import drain

VISIBILITY = 1.0


def _bounce(backend: RabbitMQBackend, queue: str, times: int) -> list[int]:
    """Receive and nack ``queue``'s one message ``times`` times; return the receive counts."""
    counts = []
    for _ in range(times):
        (received,) = drain(backend, queue, 1, ack=False)
        counts.append(received.receive_count)
        backend.nack([received])
    return counts


def test_a_message_over_its_delivery_limit_moves_with_body_attributes_and_count(
    backend: RabbitMQBackend, unique: str
) -> None:
    queue, dlq = f"{unique}-orders", f"{unique}-dlq"
    MessagingBackendFactory(backend).init_queue(
        queue, dead_letter_queue_name=dlq, max_receive_count=3, visibility_timeout=VISIBILITY
    )
    backend.publish(queue, [OutgoingMessage(b"\x00poison\xff", {"kind": "paid"})])
    assert _bounce(backend, queue, 3) == [1, 2, 3]
    (moved,) = drain(backend, dlq, 1)
    assert (moved.body, dict(moved.attributes)) == (b"\x00poison\xff", {"kind": "paid"})
    assert drain(backend, queue, 1, timeout=0.5) == []


def test_a_message_due_for_a_missing_dead_letter_queue_is_held_until_it_exists(
    backend: RabbitMQBackend, unique: str
) -> None:
    queue, dlq = f"{unique}-orders", f"{unique}-dlq"
    factory = MessagingBackendFactory(backend)
    factory.init_queue(
        queue, dead_letter_queue_name=dlq, max_receive_count=2, visibility_timeout=VISIBILITY
    )
    backend.delete_queue(dlq)
    backend.publish(queue, [OutgoingMessage(b"kept", {"k": "v"})])
    assert _bounce(backend, queue, 2) == [1, 2]
    assert backend.management is not None
    deadline = time.monotonic() + 10
    held = 0
    while time.monotonic() < deadline and not held:
        held = int((backend.management.queue(queue) or {}).get("messages_dlx", 0))
        time.sleep(0.2)
    assert held == 1, "the message due for the missing dead-letter queue is not held"
    assert drain(backend, queue, 1, timeout=0.5) == []  # held by the dead-letter worker

    factory.init_queue(
        queue, dead_letter_queue_name=dlq, max_receive_count=2, visibility_timeout=VISIBILITY
    )  # recreates the dead-letter queue: the held message moves there
    moved = drain(backend, dlq, 1, timeout=15)
    assert [(m.body, dict(m.attributes)) for m in moved] == [(b"kept", {"k": "v"})]
