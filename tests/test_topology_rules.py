"""The topology rules the contract owns: one place, checked on every path, data per broker.

Reproduced before: ``MemoryBackend().declare_queue`` accepted a queue named ``bad name!`` and a
queue that is its own dead-letter queue; the dead-letter rules were written twice (the factory and
``check_dead_letter``), and the factory refused any FIFO/standard dead-letter pair before a broker
that allows it (Service Bus) could say so.
"""

from __future__ import annotations

import dataclasses

import pytest

from melange import MessagingBackendFactory
from melange.backends.base import Capabilities
from melange.backends.memory import MemoryBackend
from melange.backends.topology_rules import dead_letter_mismatch
from melange.exceptions import (
    InvalidArgument,
    InvalidName,
    InvalidTopology,
    UnsupportedCapability,
)
from melange.topology import DeadLetterPolicy, QueueSpec, SubscriptionSpec, TopicSpec


class Broker(MemoryBackend):
    """A memory backend that speaks of itself as another broker would."""

    broker_label = "TheBroker"
    receive_count_setting = "maxTries"


def with_caps(**changes: object) -> Broker:
    backend = Broker()
    backend.capabilities = dataclasses.replace(Capabilities(**vars(Broker.capabilities)), **changes)  # type: ignore[arg-type]
    return backend


@pytest.mark.parametrize(
    ("spec", "error", "fragment"),
    [
        (QueueSpec("bad name!"), InvalidName, "invalid queue name 'bad name!'"),
        (
            QueueSpec("q", dead_letter=DeadLetterPolicy("q")),
            InvalidTopology,
            "queue 'q' cannot be its own dead-letter queue",
        ),
        (
            QueueSpec("q.fifo", fifo=True, dead_letter=DeadLetterPolicy("d")),
            InvalidTopology,
            "needs a FIFO dead-letter queue",
        ),
        (
            QueueSpec("q", dead_letter=DeadLetterPolicy("bad dlq!")),
            InvalidName,
            "invalid dead-letter queue name 'bad dlq!'",
        ),
        (
            QueueSpec("q", dead_letter=DeadLetterPolicy("d", 0)),
            InvalidTopology,
            "max_receive_count must be a whole number from 1 to 1000 on backend 'memory' "
            "(TheBroker: maxTries), got 0",
        ),
        (
            QueueSpec("q", dead_letter=DeadLetterPolicy("d", "3")),  # type: ignore[arg-type]
            InvalidTopology,
            "got '3'",
        ),
        (QueueSpec("q", visibility_timeout=-1), InvalidTopology, "visibility_timeout must be"),
        (QueueSpec("q", delay_seconds=901), InvalidTopology, "delay_seconds must be"),
        (QueueSpec("q", visibility_timeout="5"), InvalidArgument, "visibility_timeout"),  # type: ignore[arg-type]
        (QueueSpec(None), InvalidArgument, "a string"),  # type: ignore[arg-type]
    ],
)
def test_direct_declare_queue_checks_every_rule_before_creating_anything(
    spec: QueueSpec, error: type[Exception], fragment: str
) -> None:
    backend = Broker()
    with pytest.raises(error) as raised:
        backend.declare_queue(spec)
    assert fragment in str(raised.value)
    assert backend.get_queue("q") is None and backend.get_queue("q.fifo") is None


@pytest.mark.parametrize("bad", [None, "orders", QueueSpec("q")])
def test_declare_topic_and_subscribe_refuse_what_is_not_their_spec(bad: object) -> None:
    backend = Broker()
    with pytest.raises(InvalidArgument):
        backend.declare_topic(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        backend.subscribe(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        backend.declare_queue(bad if not isinstance(bad, QueueSpec) else TopicSpec("t"))  # type: ignore[arg-type]


def test_direct_subscribe_checks_names_capabilities_and_broker_rules() -> None:
    backend = Broker()
    with pytest.raises(InvalidName):
        backend.subscribe(SubscriptionSpec("bad topic!", "q"))
    narrow = with_caps(filters=False)
    with pytest.raises(UnsupportedCapability):
        narrow.subscribe(
            SubscriptionSpec("t", "q", SubscriptionSpec.normalize_filter({"k": ["v"]}))
        )


def test_the_broker_decides_by_data_whether_a_dead_letter_queue_may_be_of_the_other_kind() -> None:
    spec = QueueSpec("q.fifo", fifo=True, dead_letter=DeadLetterPolicy("d"))
    with pytest.raises(InvalidTopology, match="needs a FIFO dead-letter queue"):
        Broker().check_queue(spec)
    lenient = with_caps(dead_letter_any_kind=True)
    lenient.check_queue(spec)  # allowed by data, and then the factory may declare it too
    factory = MessagingBackendFactory(lenient)
    factory.init_queue("q.fifo", dead_letter_queue_name="d")
    current = lenient.get_queue("q.fifo")
    assert current is not None and current.dead_letter == DeadLetterPolicy("d")


def test_case_insensitive_brokers_say_why_two_names_are_one() -> None:
    spec = QueueSpec("q", dead_letter=DeadLetterPolicy("Q"))
    Broker().check_queue(spec)  # distinct names by default
    with pytest.raises(InvalidTopology, match=r"\(TheBroker names compare case-insensitively\)"):
        with_caps(case_insensitive_names=True).check_queue(spec)


def test_the_factory_and_direct_declares_raise_the_same_error() -> None:
    factory_error = direct_error = None
    try:
        MessagingBackendFactory(Broker()).init_queue("q", dead_letter_queue_name="q")
    except InvalidTopology as error:
        factory_error = str(error)
    try:
        Broker().declare_queue(QueueSpec("q", dead_letter=DeadLetterPolicy("q")))
    except InvalidTopology as error:
        direct_error = str(error)
    assert factory_error is not None and factory_error == direct_error


@pytest.mark.parametrize(
    ("queue", "fifo", "dlq", "suggested"),
    [
        ("q.fifo", True, "q-dlq", "q-dlq.fifo"),
        ("q", False, "q-dlq.fifo", "q-dlq"),
        # Made outside melange, its type not in its name: the name cannot be the fix.
        ("q", False, "odd-dlq", "q-dlq"),
        ("q.fifo", True, "odd-dlq.fifo", "q-dlq.fifo"),
    ],
)
def test_a_dead_letter_type_mismatch_suggests_a_name_of_the_right_type(
    queue: str, fifo: bool, dlq: str, suggested: str
) -> None:
    assert dead_letter_mismatch(queue, fifo, dlq).endswith(f"Use e.g. {suggested!r}")
