"""The original melange docs' factory page, run on `memory`, unchanged but for the backend line.

Source: the factory page of the original melange documentation (kept in the
project's shared seed). Two snippets name a queue as its own dead-letter queue;
melange refuses that with a clear error before creating anything, and
docs/factory.md shows the valid form beside it, which is run here too.
"""

from __future__ import annotations

import textwrap

import pytest

from melange.exceptions import InvalidTopology

BACKEND_LINE = "backend = MemoryBackend()"
IMPORT_LINE = "from melange.backends import MemoryBackend"


def run_snippet(source: str) -> dict[str, object]:
    """Run a docs snippet after swapping its backend import and construction lines."""
    lines = []
    for line in textwrap.dedent(source).splitlines():
        if line.startswith("from melange.backends import"):
            line = IMPORT_LINE
        elif line.startswith("backend = "):
            line = BACKEND_LINE
        lines.append(line)
    namespace: dict[str, object] = {}
    exec("\n".join(lines), namespace)
    return namespace


CREATE_QUEUE = """
from melange import MessagingBackendFactory
from melange.backends import LocalSQSBackend

backend = LocalSQSBackend()
factory = MessagingBackendFactory(backend)
factory.init_queue("payment-updates.fifo")
"""

CREATE_TOPIC = """
from melange import MessagingBackendFactory
from melange.backends import AWSBackend

backend = AWSBackend()
factory = MessagingBackendFactory(backend)
factory.init_topic("my-topic")
"""

QUEUE_WITH_OWN_DLQ = (
    CREATE_QUEUE
    + """
factory.init_queue("payment-updates.fifo", dead_letter_queue_name="payment-updates.fifo")
"""
)

SUBSCRIBED_QUEUE = """
from melange import MessagingBackendFactory
from melange.backends import LocalSQSBackend

backend = LocalSQSBackend()
factory = MessagingBackendFactory(backend)
factory.init_queue(
    "payment-updates.fifo",
    ["my-topic-1", "my-topic-2", "my-topic-3"],
    dead_letter_queue_name="payment-updates.fifo",
)
"""


def test_create_a_fifo_queue() -> None:
    namespace = run_snippet(CREATE_QUEUE)
    queue = namespace["backend"].get_queue("payment-updates.fifo")  # type: ignore[attr-defined]
    assert queue is not None and queue.fifo


def test_create_a_topic() -> None:
    namespace = run_snippet(CREATE_TOPIC)
    topic = namespace["backend"].get_topic("my-topic")  # type: ignore[attr-defined]
    assert topic is not None and not topic.fifo


def test_queue_as_its_own_dead_letter_queue_is_refused() -> None:
    with pytest.raises(InvalidTopology, match="cannot be its own dead-letter queue") as error:
        run_snippet(QUEUE_WITH_OWN_DLQ)
    assert "'payment-updates-dlq.fifo'" in str(error.value)  # the fix is in the message


def test_subscribed_queue_with_own_dlq_is_refused_before_anything_is_created() -> None:
    namespace: dict[str, object] = {}
    source = SUBSCRIBED_QUEUE.replace(
        "factory.init_queue(", "try_init = lambda: factory.init_queue("
    )
    namespace = run_snippet(source)
    backend = namespace["backend"]
    with pytest.raises(InvalidTopology, match="cannot be its own dead-letter queue"):
        namespace["try_init"]()  # type: ignore[operator]
    for name in ("my-topic-1", "my-topic-2", "my-topic-3"):
        assert backend.get_topic(name) is None  # type: ignore[attr-defined]
    assert backend.get_queue("payment-updates.fifo") is None  # type: ignore[attr-defined]


def test_valid_forms_shown_in_the_docs() -> None:
    namespace = run_snippet(
        SUBSCRIBED_QUEUE.replace(
            'dead_letter_queue_name="payment-updates.fifo"',
            'dead_letter_queue_name="payment-updates-dlq.fifo"',
        )
    )
    backend = namespace["backend"]
    queue = backend.get_queue("payment-updates.fifo")  # type: ignore[attr-defined]
    assert queue.dead_letter.queue_name == "payment-updates-dlq.fifo"
    for name in ("my-topic-1", "my-topic-2", "my-topic-3"):
        assert backend.get_subscription(name, "payment-updates.fifo") is not None  # type: ignore[attr-defined]
