"""Conformance tests for declaring topology: topics, queues, dead-letter queues, subscriptions.

What every backend must show through :class:`~melange.MessagingBackendFactory`:
init is idempotent and converging, drift in a setting the broker cannot change
is refused with nothing changed, every bad request is refused before anything
exists, missing resources raise the specific error, deletes work, and several
threads may init the same topology at once.
"""

from __future__ import annotations

import dataclasses
import re
import threading
from collections.abc import Callable
from typing import Any

import pytest

from melange.backends.base import MessagingBackend, OutgoingMessage
from melange.exceptions import (
    ImmutableSettingError,
    InvalidName,
    InvalidTopology,
    MelangeError,
    QueueNotFound,
    TopicNotFound,
    UnsupportedCapability,
)
from melange.factory import MessagingBackendFactory
from melange.testing.conformance._support import (
    MARGIN,
    VISIBILITY_TIMEOUT,
    ConformanceBase,
    ResourceNames,
    Wait,
    assert_empty,
    drain,
    drain_bodies,
    in_range,
    messages,
    requires,
)
from melange.topology import DeadLetterPolicy, QueueSpec, SubscriptionSpec, TopicSpec

THREADS = 8


def _receive_counts(backend: MessagingBackend) -> tuple[int, int]:
    """Two different ``max_receive_count`` values the backend accepts."""
    low, high = backend.capabilities.max_receive_count_range
    first = int(in_range(3, (low, high)))
    second = first + 1 if first + 1 <= high else first - 1
    return first, second


def _run_in_threads(count: int, work: Callable[[int], object]) -> list[BaseException]:
    """Start ``count`` threads together on ``work(index)``; return what they raised."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=10)
            work(index)
        except BaseException as error:  # reported by the test
            with lock:
                errors.append(error)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "an init thread did not finish"
    return errors


@dataclasses.dataclass(frozen=True)
class _BadRequest:
    """An init request the factory must refuse before creating anything."""

    error: type[MelangeError]
    fragments: tuple[str, ...]
    queue: str | None = None
    topics: tuple[str, ...] = ()
    dead_letter_queue: str | None = None
    topic_only: str | None = None
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    must_not_exist: tuple[tuple[str, str], ...] = ()
    """``("queue" | "topic", name)`` pairs of valid names that must still not exist."""

    def send(self, factory: MessagingBackendFactory) -> object:
        if self.topic_only is not None:
            return factory.init_topic(self.topic_only, **self.settings)
        assert self.queue is not None
        return factory.init_queue(
            self.queue, list(self.topics) or None, self.dead_letter_queue, **self.settings
        )


_BuildBadRequest = Callable[[ResourceNames, MessagingBackend], _BadRequest]


def _invalid_queue_name(names: ResourceNames, backend: MessagingBackend) -> _BadRequest:
    bad = names.queue() + " has spaces!"
    return _BadRequest(InvalidName, (bad,), queue=bad)


def _queue_name_too_long(names: ResourceNames, backend: MessagingBackend) -> _BadRequest:
    valid = names.queue("long")
    bad = valid + "x" * (backend.queue_name_rule.max_length + 1 - len(valid))
    return _BadRequest(InvalidName, (bad,), queue=bad)


def _fifo_flag_contradicts_name(names: ResourceNames, backend: MessagingBackend) -> _BadRequest:
    queue = names.queue()
    return _BadRequest(
        InvalidName,
        (queue, ".fifo"),
        queue=queue,
        settings={"fifo": True},
        must_not_exist=(("queue", queue),),
    )


def _invalid_topic_name(names: ResourceNames, backend: MessagingBackend) -> _BadRequest:
    queue, bad = names.queue(), names.topic() + " bad/topic!"
    return _BadRequest(
        InvalidName, (bad,), queue=queue, topics=(bad,), must_not_exist=(("queue", queue),)
    )


def _invalid_topic_name_alone(names: ResourceNames, backend: MessagingBackend) -> _BadRequest:
    bad = names.topic() + " bad/topic!"
    return _BadRequest(InvalidName, (bad,), topic_only=bad)


def _invalid_dead_letter_name(names: ResourceNames, backend: MessagingBackend) -> _BadRequest:
    queue, bad = names.queue(), names.queue("dlq") + " bad dlq!"
    return _BadRequest(
        InvalidName,
        (bad,),
        queue=queue,
        dead_letter_queue=bad,
        must_not_exist=(("queue", queue),),
    )


def _own_dead_letter_queue(names: ResourceNames, backend: MessagingBackend) -> _BadRequest:
    queue = names.queue()
    return _BadRequest(
        InvalidTopology,
        (queue, "own dead-letter queue"),
        queue=queue,
        dead_letter_queue=queue,
        must_not_exist=(("queue", queue),),
    )


def _fifo_queue_standard_dlq(names: ResourceNames, backend: MessagingBackend) -> _BadRequest:
    if backend.capabilities.dead_letter_any_kind:
        pytest.skip(
            f"backend {backend.name!r} declares dead_letter_any_kind: its broker moves messages "
            "from a FIFO queue to a standard dead-letter queue"
        )
    queue, dlq = names.fifo_queue(), names.queue("dlq")
    return _BadRequest(
        InvalidTopology,
        (queue, dlq, "FIFO", "standard"),
        queue=queue,
        dead_letter_queue=dlq,
        must_not_exist=(("queue", queue), ("queue", dlq)),
    )


def _standard_queue_fifo_dlq(names: ResourceNames, backend: MessagingBackend) -> _BadRequest:
    queue, dlq = names.queue(), names.fifo_queue("dlq")
    return _BadRequest(
        InvalidTopology,
        (queue, dlq, "FIFO", "standard"),
        queue=queue,
        dead_letter_queue=dlq,
        must_not_exist=(("queue", queue), ("queue", dlq)),
    )


def _unknown_setting(names: ResourceNames, backend: MessagingBackend) -> _BadRequest:
    queue = names.queue()
    return _BadRequest(
        InvalidTopology,
        ("visiblity_timeout", "visibility_timeout"),
        queue=queue,
        settings={"visiblity_timeout": 5},
        must_not_exist=(("queue", queue),),
    )


def _max_receive_count_without_dlq(names: ResourceNames, backend: MessagingBackend) -> _BadRequest:
    queue = names.queue()
    return _BadRequest(
        InvalidTopology,
        ("max_receive_count", "dead_letter_queue_name"),
        queue=queue,
        settings={"max_receive_count": 3},
        must_not_exist=(("queue", queue),),
    )


def _negative_visibility_timeout(names: ResourceNames, backend: MessagingBackend) -> _BadRequest:
    queue = names.queue()
    return _BadRequest(
        InvalidTopology,
        ("visibility_timeout", "-1"),
        queue=queue,
        settings={"visibility_timeout": -1.0},
        must_not_exist=(("queue", queue),),
    )


def _visibility_timeout_too_long(names: ResourceNames, backend: MessagingBackend) -> _BadRequest:
    queue = names.queue()
    too_long = backend.capabilities.max_visibility_timeout + 1
    return _BadRequest(
        InvalidTopology,
        ("visibility_timeout", f"{too_long!r}"),
        queue=queue,
        settings={"visibility_timeout": too_long},
        must_not_exist=(("queue", queue),),
    )


def _retention_out_of_range(names: ResourceNames, backend: MessagingBackend) -> _BadRequest:
    queue = names.queue()
    too_long = backend.capabilities.retention_range[1] + 1
    return _BadRequest(
        InvalidTopology,
        ("message_retention_period",),
        queue=queue,
        settings={"message_retention_period": too_long},
        must_not_exist=(("queue", queue),),
    )


def _max_receive_count_above(names: ResourceNames, backend: MessagingBackend) -> _BadRequest:
    queue, dlq = names.queue(), names.queue("dlq")
    count = backend.capabilities.max_receive_count_range[1] + 1
    return _BadRequest(
        InvalidTopology,
        ("max_receive_count", str(count)),
        queue=queue,
        dead_letter_queue=dlq,
        settings={"max_receive_count": count},
        must_not_exist=(("queue", queue), ("queue", dlq)),
    )


def _max_receive_count_below(names: ResourceNames, backend: MessagingBackend) -> _BadRequest:
    queue, dlq = names.queue(), names.queue("dlq")
    count = backend.capabilities.max_receive_count_range[0] - 1
    return _BadRequest(
        InvalidTopology,
        ("max_receive_count", str(count)),
        queue=queue,
        dead_letter_queue=dlq,
        settings={"max_receive_count": count},
        must_not_exist=(("queue", queue), ("queue", dlq)),
    )


def _filter_without_topics(names: ResourceNames, backend: MessagingBackend) -> _BadRequest:
    queue = names.queue()
    return _BadRequest(
        InvalidTopology,
        ("subscription_filter",),
        queue=queue,
        settings={"subscription_filter": {"kind": ["a"]}},
        must_not_exist=(("queue", queue),),
    )


def _bad_request_with_everything(names: ResourceNames, backend: MessagingBackend) -> _BadRequest:
    # Valid topic and dead-letter queue, one bad setting at the end: nothing may be created.
    queue, dlq, topic = names.queue(), names.queue("dlq"), names.topic()
    return _BadRequest(
        InvalidTopology,
        ("delay_seconds",),
        queue=queue,
        topics=(topic,),
        dead_letter_queue=dlq,
        settings={"delay_seconds": -5.0},
        must_not_exist=(("queue", queue), ("queue", dlq), ("topic", topic)),
    )


BAD_REQUESTS = [
    pytest.param(_invalid_queue_name, id="invalid-queue-name"),
    pytest.param(_queue_name_too_long, id="queue-name-too-long"),
    pytest.param(
        _fifo_flag_contradicts_name, marks=requires("fifo"), id="fifo-flag-without-fifo-name"
    ),
    pytest.param(_invalid_topic_name, marks=requires("topics"), id="invalid-topic-name"),
    pytest.param(
        _invalid_topic_name_alone, marks=requires("topics"), id="invalid-topic-name-init-topic"
    ),
    pytest.param(
        _invalid_dead_letter_name, marks=requires("dead_letter"), id="invalid-dead-letter-name"
    ),
    pytest.param(_own_dead_letter_queue, marks=requires("dead_letter"), id="own-dead-letter-queue"),
    pytest.param(
        _fifo_queue_standard_dlq,
        marks=requires("fifo", "dead_letter"),
        id="fifo-queue-standard-dead-letter-queue",
    ),
    pytest.param(
        _standard_queue_fifo_dlq,
        marks=requires("fifo", "dead_letter"),
        id="standard-queue-fifo-dead-letter-queue",
    ),
    pytest.param(_unknown_setting, id="unknown-setting"),
    pytest.param(
        _max_receive_count_without_dlq,
        marks=requires("dead_letter"),
        id="max-receive-count-without-dead-letter-queue",
    ),
    pytest.param(_negative_visibility_timeout, id="negative-visibility-timeout"),
    pytest.param(_visibility_timeout_too_long, id="visibility-timeout-above-limit"),
    pytest.param(_retention_out_of_range, id="retention-above-range"),
    pytest.param(
        _max_receive_count_above, marks=requires("dead_letter"), id="max-receive-count-above-range"
    ),
    pytest.param(
        _max_receive_count_below, marks=requires("dead_letter"), id="max-receive-count-below-range"
    ),
    pytest.param(_filter_without_topics, id="subscription-filter-without-topics"),
    pytest.param(
        _bad_request_with_everything,
        marks=requires("topics", "dead_letter"),
        id="bad-setting-with-topic-and-dead-letter-queue",
    ),
]


@dataclasses.dataclass(frozen=True)
class _HandChange:
    """A queue declared by init, one of its settings changed by hand, and what init restores."""

    declared: QueueSpec
    changed: QueueSpec
    request: dict[str, Any]
    """The ``init_queue`` arguments (dead-letter queue and settings) that declare ``declared``."""
    extra_queues: tuple[str, ...] = ()
    """Queues to create first: a dead-letter queue the hand change points to."""


_HandChangeCase = Callable[[ResourceNames, MessagingBackend], _HandChange]


def _retention_by_hand(names: ResourceNames, backend: MessagingBackend) -> _HandChange:
    bounds = backend.capabilities.retention_range
    declared, other = in_range(3600.0, bounds), in_range(7200.0, bounds)
    if other == declared:
        other = in_range(1800.0, bounds)
    queue = QueueSpec(names.queue(), message_retention_period=declared)
    return _HandChange(
        queue,
        dataclasses.replace(queue, message_retention_period=other),
        {"message_retention_period": declared},
    )


def _delay_by_hand(names: ResourceNames, backend: MessagingBackend) -> _HandChange:
    queue = QueueSpec(names.queue(), delay_seconds=1.0)
    return _HandChange(queue, dataclasses.replace(queue, delay_seconds=2.0), {"delay_seconds": 1.0})


def _dead_letter_queue_by_hand(names: ResourceNames, backend: MessagingBackend) -> _HandChange:
    dlq, other = names.queue("dlq"), names.queue("other-dlq")
    count = _receive_counts(backend)[0]
    queue = QueueSpec(names.queue(), dead_letter=DeadLetterPolicy(dlq, count))
    return _HandChange(
        queue,
        dataclasses.replace(queue, dead_letter=DeadLetterPolicy(other, count)),
        {"dead_letter_queue_name": dlq, "max_receive_count": count},
        extra_queues=(other,),
    )


def _dead_letter_policy_by_hand(names: ResourceNames, backend: MessagingBackend) -> _HandChange:
    other = names.queue("other-dlq")
    queue = QueueSpec(names.queue())
    count = _receive_counts(backend)[0]
    return _HandChange(
        queue,
        dataclasses.replace(queue, dead_letter=DeadLetterPolicy(other, count)),
        {},
        extra_queues=(other,),
    )


HAND_CHANGES = [
    pytest.param(_retention_by_hand, id="message-retention-period"),
    pytest.param(_delay_by_hand, marks=requires("delay"), id="delay-seconds"),
    pytest.param(_dead_letter_queue_by_hand, marks=requires("dead_letter"), id="dead-letter-queue"),
    pytest.param(
        _dead_letter_policy_by_hand,
        marks=requires("dead_letter"),
        id="dead-letter-policy-added",
    ),
]


def _absent(lookup: Callable[[], object]) -> bool:
    """Whether ``lookup`` finds nothing; a name the broker refuses to look up is absent too."""
    try:
        return lookup() is None
    except (InvalidTopology, QueueNotFound, TopicNotFound):
        return True


@dataclasses.dataclass(frozen=True)
class _Direct:
    """A declaration made directly on the backend, which it must refuse, creating nothing."""

    call: Callable[[], object]
    error: type[MelangeError]
    lookups: tuple[Callable[[], object], ...]
    """Each returns what the refused call must not have created (``None`` when absent)."""


_DirectCase = Callable[[ResourceNames, MessagingBackend], _Direct]


def _direct_bad_queue_name(names: ResourceNames, backend: MessagingBackend) -> _Direct:
    bad = names.queue() + " bad name!"
    return _Direct(
        lambda: backend.declare_queue(QueueSpec(bad)),
        InvalidName,
        (lambda: backend.get_queue(bad),),
    )


def _direct_own_dead_letter_queue(names: ResourceNames, backend: MessagingBackend) -> _Direct:
    queue = names.queue()
    spec = QueueSpec(queue, dead_letter=DeadLetterPolicy(queue, _receive_counts(backend)[0]))
    return _Direct(
        lambda: backend.declare_queue(spec), InvalidTopology, (lambda: backend.get_queue(queue),)
    )


def _direct_bad_dead_letter_name(names: ResourceNames, backend: MessagingBackend) -> _Direct:
    queue, bad = names.queue(), names.queue("dlq") + " bad dlq!"
    spec = QueueSpec(queue, dead_letter=DeadLetterPolicy(bad, _receive_counts(backend)[0]))
    return _Direct(
        lambda: backend.declare_queue(spec),
        InvalidName,
        (lambda: backend.get_queue(queue), lambda: backend.get_queue(bad)),
    )


def _direct_bad_topic_name(names: ResourceNames, backend: MessagingBackend) -> _Direct:
    bad = names.topic() + " bad/topic!"
    return _Direct(
        lambda: backend.declare_topic(TopicSpec(bad)),
        InvalidName,
        (lambda: backend.get_topic(bad),),
    )


def _direct_subscription_to_a_bad_topic_name(
    names: ResourceNames, backend: MessagingBackend
) -> _Direct:
    queue, bad = names.queue(), names.topic() + " bad/topic!"
    MessagingBackendFactory(backend).init_queue(queue)
    return _Direct(
        lambda: backend.subscribe(SubscriptionSpec(bad, queue)),
        InvalidName,
        (lambda: backend.get_subscription(bad, queue),),
    )


DIRECT_DECLARATIONS = [
    pytest.param(_direct_bad_queue_name, id="declare_queue-invalid-name"),
    pytest.param(
        _direct_own_dead_letter_queue,
        marks=requires("dead_letter"),
        id="declare_queue-own-dead-letter-queue",
    ),
    pytest.param(
        _direct_bad_dead_letter_name,
        marks=requires("dead_letter"),
        id="declare_queue-invalid-dead-letter-name",
    ),
    pytest.param(_direct_bad_topic_name, marks=requires("topics"), id="declare_topic-invalid-name"),
    pytest.param(
        _direct_subscription_to_a_bad_topic_name,
        marks=requires("topics"),
        id="subscribe-invalid-topic-name",
    ),
]


def _same_settings(current: QueueSpec, expected: QueueSpec) -> bool:
    """Whether every setting of ``current`` is ``expected``'s (seconds compared approximately)."""
    found = current.settings()
    for setting, value in expected.settings().items():
        if isinstance(value, float):
            if found[setting] != pytest.approx(value):
                return False
        elif found[setting] != value:
            return False
    return True


class TopologyConformance(ConformanceBase):
    """Declaring, converging, validating and deleting topology through the factory."""

    # ------------------------------------------------------------ creation
    def test_init_queue_creates_the_declared_queue(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
    ) -> None:
        """``init_queue`` creates a queue with the declared settings."""
        queue = melange_names.queue()
        retention = in_range(3600.0, melange_backend.capabilities.retention_range)
        plan = melange_factory.init_queue(
            queue, visibility_timeout=2.0, message_retention_period=retention
        )
        assert [(action.kind, action.target) for action in plan] == [("create_queue", queue)]
        spec = melange_backend.get_queue(queue)
        assert spec is not None
        assert (spec.name, spec.fifo, spec.dead_letter) == (queue, False, None)
        assert spec.visibility_timeout == pytest.approx(2.0)
        assert spec.message_retention_period == pytest.approx(retention)

    @requires("fifo")
    def test_init_queue_with_fifo_name_creates_a_fifo_queue(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
    ) -> None:
        """A ``.fifo`` queue name makes a FIFO queue."""
        queue = melange_names.fifo_queue()
        melange_factory.init_queue(queue)
        spec = melange_backend.get_queue(queue)
        assert spec is not None and spec.fifo is True

    @requires("topics")
    def test_init_topic_creates_the_topic(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
    ) -> None:
        """``init_topic`` creates a standard topic."""
        topic = melange_names.topic()
        plan = melange_factory.init_topic(topic)
        assert [(action.kind, action.target) for action in plan] == [("create_topic", topic)]
        assert melange_backend.get_topic(topic) == TopicSpec(topic, fifo=False)

    @requires("topics", "fifo")
    def test_init_topic_with_fifo_name_creates_a_fifo_topic(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
    ) -> None:
        """A ``.fifo`` topic name makes a FIFO topic."""
        topic = melange_names.fifo_topic()
        melange_factory.init_topic(topic)
        assert melange_backend.get_topic(topic) == TopicSpec(topic, fifo=True)

    @requires("topics", "dead_letter")
    def test_init_queue_creates_topics_dead_letter_queue_and_subscriptions(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
    ) -> None:
        """One ``init_queue`` creates its topics, DLQ and subscriptions."""
        queue, dlq = melange_names.queue(), melange_names.queue("dlq")
        topics = [melange_names.topic("a"), melange_names.topic("b")]
        count = _receive_counts(melange_backend)
        plan = melange_factory.init_queue(
            queue, topics, dead_letter_queue_name=dlq, max_receive_count=count[0]
        )
        assert sorted(action.kind for action in plan) == sorted(
            ["create_topic"] * 2 + ["create_queue"] * 2 + ["subscribe"] * 2
        )
        spec = melange_backend.get_queue(queue)
        assert spec is not None and spec.dead_letter == DeadLetterPolicy(dlq, count[0])
        assert melange_backend.get_queue(dlq) is not None
        for topic in topics:
            assert melange_backend.get_topic(topic) == TopicSpec(topic)
            assert melange_backend.get_subscription(topic, queue) == SubscriptionSpec(topic, queue)

    # --------------------------------------------------------- idempotence
    def test_reinit_of_a_converged_queue_returns_an_empty_plan(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
    ) -> None:
        """Re-init of an unchanged queue plans and changes nothing."""
        queue = melange_names.queue()
        settings: dict[str, Any] = {"visibility_timeout": 2.0}
        assert melange_factory.init_queue(queue, **settings)
        before = melange_backend.get_queue(queue)
        assert not melange_factory.plan_queue(queue, **settings)
        for _ in range(2):
            assert len(melange_factory.init_queue(queue, **settings)) == 0
        assert melange_backend.get_queue(queue) == before

    @requires("topics")
    def test_init_topic_is_idempotent(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
    ) -> None:
        """Repeated ``init_topic`` creates the topic once."""
        topic = melange_names.topic()
        assert len(melange_factory.init_topic(topic)) == 1
        for _ in range(3):
            assert len(melange_factory.init_topic(topic)) == 0
        assert melange_backend.get_topic(topic) == TopicSpec(topic)

    @requires("topics")
    def test_repeated_init_keeps_one_queue_and_one_subscription(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
    ) -> None:
        """Repeated init leaves one subscription per queue: one copy per message."""
        topic = melange_names.topic()
        queues = [melange_names.queue("a"), melange_names.queue("b")]
        for _ in range(3):
            for queue in queues:
                melange_factory.init_queue(queue, [topic])
        for queue in queues:
            assert len(melange_factory.init_queue(queue, [topic])) == 0
            assert melange_backend.get_subscription(topic, queue) == SubscriptionSpec(topic, queue)
        # A duplicated queue or subscription would show as a second copy of the message.
        melange_backend.publish_to_topic(topic, messages(b"exactly once"))
        for queue in queues:
            assert drain_bodies(melange_backend, queue, 1) == [b"exactly once"]
            assert_empty(melange_backend, queue)

    @requires("topics", "dead_letter")
    def test_reinit_of_a_converged_topology_returns_an_empty_plan(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
    ) -> None:
        """Re-init of queue, DLQ and topic returns an empty plan naming them unchanged."""
        queue, dlq, topic = melange_names.queue(), melange_names.queue("dlq"), melange_names.topic()
        count = _receive_counts(melange_backend)
        request: dict[str, Any] = {
            "dead_letter_queue_name": dlq,
            "max_receive_count": count[0],
            "visibility_timeout": 3.0,
        }
        melange_factory.init_queue(queue, [topic], **request)
        plan = melange_factory.init_queue(queue, [topic], **request)
        assert len(plan) == 0, plan.describe()
        assert set(plan.unchanged) >= {queue, dlq, topic}

    # --------------------------------------------------------- convergence
    def test_init_restores_settings_changed_by_hand(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
    ) -> None:
        """A setting changed by hand shows in the plan and init restores it."""
        queue = melange_names.queue()
        melange_factory.init_queue(queue, visibility_timeout=2.0)
        declared = melange_backend.get_queue(queue)
        assert declared is not None
        melange_backend.declare_queue(dataclasses.replace(declared, visibility_timeout=5.0))
        changed = melange_backend.get_queue(queue)
        assert changed is not None and changed.visibility_timeout == pytest.approx(5.0)

        preview = melange_factory.plan_queue(queue, visibility_timeout=2.0)
        assert [(action.kind, action.target) for action in preview] == [("update_queue", queue)]
        (change,) = preview.actions[0].changes
        assert change.setting == "visibility_timeout"
        assert change.current == pytest.approx(5.0)
        assert change.declared == pytest.approx(2.0)
        assert melange_backend.get_queue(queue) == changed, "plan_queue must change nothing"

        applied = melange_factory.init_queue(queue, visibility_timeout=2.0)
        assert [action.kind for action in applied] == ["update_queue"]
        restored = melange_backend.get_queue(queue)
        assert restored is not None and restored.visibility_timeout == pytest.approx(2.0)
        assert len(melange_factory.init_queue(queue, visibility_timeout=2.0)) == 0

    @requires("dead_letter")
    def test_init_restores_a_dead_letter_policy_changed_by_hand(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
    ) -> None:
        """A dead-letter policy changed by hand is restored."""
        queue, dlq = melange_names.queue(), melange_names.queue("dlq")
        declared_count, other_count = _receive_counts(melange_backend)
        melange_factory.init_queue(
            queue, dead_letter_queue_name=dlq, max_receive_count=declared_count
        )
        spec = melange_backend.get_queue(queue)
        assert spec is not None
        melange_backend.declare_queue(
            dataclasses.replace(spec, dead_letter=DeadLetterPolicy(dlq, other_count))
        )
        plan = melange_factory.init_queue(
            queue, dead_letter_queue_name=dlq, max_receive_count=declared_count
        )
        assert [(action.kind, action.target) for action in plan] == [("update_queue", queue)]
        restored = melange_backend.get_queue(queue)
        assert restored is not None
        assert restored.dead_letter == DeadLetterPolicy(dlq, declared_count)

    @requires("topics", "filters")
    def test_init_restores_a_subscription_filter_changed_by_hand(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
    ) -> None:
        """A subscription filter changed by hand is restored."""
        queue, topic = melange_names.queue(), melange_names.topic()
        wanted = {"kind": ["paid"]}
        melange_factory.init_queue(queue, [topic], subscription_filter=wanted)
        melange_backend.subscribe(
            SubscriptionSpec(topic, queue, SubscriptionSpec.normalize_filter({"kind": ["other"]}))
        )
        plan = melange_factory.init_queue(queue, [topic], subscription_filter=wanted)
        assert [action.kind for action in plan] == ["update_subscription"]
        subscription = melange_backend.get_subscription(topic, queue)
        assert subscription is not None and subscription.filter_dict() == wanted
        melange_backend.publish_to_topic(topic, messages(b"other", kind="other"))
        melange_backend.publish_to_topic(topic, messages(b"paid", kind="paid"))
        assert drain_bodies(melange_backend, queue, 1) == [b"paid"]
        assert_empty(melange_backend, queue)

    @pytest.mark.parametrize("case", HAND_CHANGES)
    def test_init_restores_each_queue_setting_changed_by_hand(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
        case: _HandChangeCase,
    ) -> None:
        """``declare_queue`` applies a hand change to an existing queue; init then restores it."""
        change = case(melange_names, melange_backend)
        for extra in change.extra_queues:
            melange_factory.init_queue(extra)
        queue = change.declared.name
        melange_factory.init_queue(queue, **change.request)
        declared = melange_backend.get_queue(queue)
        assert declared is not None
        assert _same_settings(declared, change.declared), declared

        melange_backend.declare_queue(change.changed)
        changed = melange_backend.get_queue(queue)
        assert changed is not None
        assert _same_settings(changed, change.changed), (
            f"declare_queue did not change the existing queue: {changed} after declaring "
            f"{change.changed}"
        )

        plan = melange_factory.init_queue(queue, **change.request)
        assert [(action.kind, action.target) for action in plan] == [("update_queue", queue)]
        restored = melange_backend.get_queue(queue)
        assert restored is not None
        assert _same_settings(restored, change.declared), (
            f"init did not restore the declared settings: {restored}"
        )
        assert len(melange_factory.init_queue(queue, **change.request)) == 0

    @requires("topics", "filters")
    def test_init_removes_a_subscription_filter_added_by_hand(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
    ) -> None:
        """A filter set by hand on an unfiltered subscription is removed by init."""
        queue, topic = melange_names.queue(), melange_names.topic()
        melange_factory.init_queue(queue, [topic])
        filtered = SubscriptionSpec.normalize_filter({"kind": ["other"]})
        melange_backend.subscribe(SubscriptionSpec(topic, queue, filtered))
        current = melange_backend.get_subscription(topic, queue)
        assert current is not None and current.filter == filtered
        plan = melange_factory.init_queue(queue, [topic])
        assert [action.kind for action in plan] == ["update_subscription"]
        assert melange_backend.get_subscription(topic, queue) == SubscriptionSpec(topic, queue)
        melange_backend.publish_to_topic(topic, messages(b"paid", kind="paid"))
        assert drain_bodies(melange_backend, queue, 1) == [b"paid"]

    def test_a_changed_visibility_timeout_governs_later_deliveries(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
        melange_wait: Wait,
    ) -> None:
        """After init changes a queue's visibility timeout, redelivery follows the new one."""
        queue = melange_names.queue()
        melange_factory.init_queue(queue, visibility_timeout=60.0)
        melange_factory.init_queue(queue, visibility_timeout=VISIBILITY_TIMEOUT)
        melange_backend.publish(queue, messages(b"leased"))
        (first,) = drain(melange_backend, queue, 1, ack=False)
        melange_wait(VISIBILITY_TIMEOUT + MARGIN)
        again = drain(melange_backend, queue, 1)
        assert [(m.message_id, m.receive_count) for m in again] == [(first.message_id, 2)], (
            "the message did not come back after the new visibility timeout"
        )

    @requires("fifo")
    def test_immutable_drift_is_refused_and_nothing_changes(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
    ) -> None:
        """FIFO drift is refused, naming both values, and the queue is untouched."""
        # A FIFO queue under a standard name: what a hand-made queue may look like.
        queue = melange_names.queue()
        hand_made = QueueSpec(queue, fifo=True, visibility_timeout=4.0)
        try:
            melange_backend.declare_queue(hand_made)
        except InvalidTopology:
            # The contract refuses that pair; a queue made by hand never went through it,
            # so make it with the backend's own hook, past the contract's checks.
            try:
                melange_backend._declare_queue(hand_made)
            except MelangeError as refused:
                pytest.skip(
                    f"backend {melange_backend.name!r} refuses a FIFO queue without the .fifo "
                    f"suffix ({refused}), so FIFO drift under one name cannot happen there"
                )
        before = melange_backend.get_queue(queue)
        assert before is not None and before.fifo is True

        with pytest.raises(ImmutableSettingError) as caught:
            melange_factory.init_queue(queue, visibility_timeout=2.0)
        error = caught.value
        assert (error.resource, error.setting, error.current, error.declared) == (
            queue,
            "fifo",
            True,
            False,
        )
        message = str(error)
        assert queue in message and "fifo=True" in message and "fifo=False" in message
        assert melange_backend.get_queue(queue) == before, "the refused init changed the queue"

    # ---------------------------------------------------------- validation
    @pytest.mark.parametrize("build", BAD_REQUESTS)
    def test_invalid_request_is_refused_before_anything_is_created(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
        build: _BuildBadRequest,
    ) -> None:
        """Each invalid request raises its specific error and creates nothing."""
        request = build(melange_names, melange_backend)
        with pytest.raises(request.error) as caught:
            request.send(melange_factory)
        message = str(caught.value)
        for fragment in request.fragments:
            assert fragment.lower() in message.lower(), (
                f"error message should mention {fragment!r}: {message}"
            )
        for kind, name in request.must_not_exist:
            found = (
                melange_backend.get_queue(name)
                if kind == "queue"
                else melange_backend.get_topic(name)
            )
            assert found is None, f"{kind} {name!r} was created by a refused request"

    @pytest.mark.parametrize("case", DIRECT_DECLARATIONS)
    def test_direct_declarations_are_validated_like_the_factory_s(
        self,
        melange_backend: MessagingBackend,
        melange_names: ResourceNames,
        case: _DirectCase,
    ) -> None:
        """Direct ``declare_queue``/``declare_topic``/``subscribe`` refuse what init refuses.

        The contract's public methods validate before their hooks, so a call without the
        factory is held to the same rules, and creates nothing.
        """
        direct = case(melange_names, melange_backend)
        with pytest.raises(direct.error):
            direct.call()
        for lookup in direct.lookups:
            assert _absent(lookup), "a refused declaration created something"

    @pytest.mark.parametrize("hook", ["validate_queue", "validate_topic", "validate_subscription"])
    @requires("topics", "dead_letter")
    def test_request_the_broker_would_refuse_creates_nothing(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
        monkeypatch: pytest.MonkeyPatch,
        hook: str,
    ) -> None:
        """A request the backend's own rules refuse creates nothing."""
        # Stand in for a broker rule refusing one part of an otherwise valid request.
        queue, dlq, topic = melange_names.queue(), melange_names.queue("dlq"), melange_names.topic()
        original: Callable[..., None] = getattr(melange_backend, hook)
        refused = dlq if hook == "validate_queue" else topic

        def refuse(*specs: Any) -> None:
            if any(getattr(spec, "name", None) == refused for spec in specs):
                raise InvalidTopology(f"broker rule refuses {refused!r} (conformance stand-in)")
            original(*specs)

        monkeypatch.setattr(melange_backend, hook, refuse)
        with pytest.raises(InvalidTopology, match=re.escape(refused)):
            melange_factory.init_queue(queue, [topic], dead_letter_queue_name=dlq)
        monkeypatch.undo()
        assert melange_backend.get_queue(queue) is None
        assert melange_backend.get_queue(dlq) is None
        assert melange_backend.get_topic(topic) is None

    @pytest.mark.parametrize(
        "capability",
        [
            "dead_letter",
            "fifo",
            "topics",
            pytest.param("filters", marks=requires("topics")),
            "delay",
        ],
    )
    def test_request_needing_a_missing_capability_is_refused(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
        capability: str,
    ) -> None:
        """A request needing a capability the backend lacks is refused, naming both."""
        # Narrow this backend instance, so the refusal is tested on every backend.
        queue = melange_names.fifo_queue() if capability == "fifo" else melange_names.queue()
        requests: dict[str, dict[str, Any]] = {
            "dead_letter": {"dead_letter_queue_name": melange_names.queue("dlq")},
            "fifo": {},
            "topics": {"topic_names_to_subscribe": [melange_names.topic()]},
            "filters": {
                "topic_names_to_subscribe": [melange_names.topic()],
                "subscription_filter": {"kind": ["a"]},
            },
            "delay": {"delay_seconds": 1.0},
        }
        request = requests[capability]
        original = melange_backend.capabilities
        narrowed: dict[str, Any] = {capability: False}
        melange_backend.capabilities = dataclasses.replace(original, **narrowed)
        try:
            with pytest.raises(UnsupportedCapability) as caught:
                melange_factory.init_queue(queue, **request)
        finally:
            melange_backend.capabilities = original
        assert (caught.value.backend_name, caught.value.capability) == (
            melange_backend.name,
            capability,
        )
        assert melange_backend.name in str(caught.value) and capability in str(caught.value)
        assert melange_backend.get_queue(queue) is None

    # ---------------------------------------------------- missing resources
    def test_missing_queue_errors(
        self, melange_backend: MessagingBackend, melange_names: ResourceNames
    ) -> None:
        """Publish, receive and delete on a missing queue raise QueueNotFound."""
        queue = melange_names.queue("missing")
        assert melange_backend.get_queue(queue) is None
        operations: list[Callable[[], object]] = [
            lambda: melange_backend.publish(queue, messages(b"x")),
            lambda: melange_backend.receive(queue),
            lambda: melange_backend.delete_queue(queue),
        ]
        for operation in operations:
            with pytest.raises(QueueNotFound, match=re.escape(queue)):
                operation()

    @requires("topics")
    def test_missing_topic_errors(
        self, melange_backend: MessagingBackend, melange_names: ResourceNames
    ) -> None:
        """Publish and delete on a missing topic raise TopicNotFound."""
        topic, queue = melange_names.topic("missing"), melange_names.queue("missing")
        assert melange_backend.get_topic(topic) is None
        assert melange_backend.get_subscription(topic, queue) is None
        with pytest.raises(TopicNotFound, match=re.escape(topic)):
            melange_backend.publish_to_topic(topic, messages(b"x"))
        with pytest.raises(TopicNotFound, match=re.escape(topic)):
            melange_backend.delete_topic(topic)

    # --------------------------------------------------------------- delete
    def test_delete_queue(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
    ) -> None:
        """A deleted queue is gone, and only that queue."""
        queue, other = melange_names.queue(), melange_names.queue("other")
        melange_factory.init_queue(queue)
        melange_factory.init_queue(other)
        melange_backend.publish(queue, messages(b"gone with the queue"))
        melange_backend.delete_queue(queue)
        assert melange_backend.get_queue(queue) is None
        assert melange_backend.get_queue(other) is not None, "deleting one queue removed another"
        with pytest.raises(QueueNotFound):
            melange_backend.receive(queue)
        with pytest.raises(QueueNotFound):
            melange_backend.publish(queue, messages(b"x"))

    @requires("topics")
    def test_delete_topic_keeps_its_queues(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
    ) -> None:
        """Deleting a topic removes its subscriptions but not its queues."""
        queue, topic = melange_names.queue(), melange_names.topic()
        melange_factory.init_queue(queue, [topic])
        melange_backend.delete_topic(topic)
        assert melange_backend.get_topic(topic) is None
        assert melange_backend.get_subscription(topic, queue) is None
        assert melange_backend.get_queue(queue) is not None
        with pytest.raises(TopicNotFound):
            melange_backend.publish_to_topic(topic, messages(b"x"))
        # Re-init brings back the topic and the subscription.
        kinds = sorted(action.kind for action in melange_factory.init_queue(queue, [topic]))
        assert kinds == ["create_topic", "subscribe"]
        melange_backend.publish_to_topic(topic, messages(b"back"))
        assert drain_bodies(melange_backend, queue, 1) == [b"back"]

    @requires("topics")
    def test_deleting_a_subscribed_queue_leaves_the_topic_working(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
    ) -> None:
        """A topic keeps fanning out after one subscribed queue is deleted."""
        topic = melange_names.topic()
        deleted, kept = melange_names.queue("deleted"), melange_names.queue("kept")
        melange_factory.init_queue(deleted, [topic])
        melange_factory.init_queue(kept, [topic])
        melange_backend.delete_queue(deleted)
        results = melange_backend.publish_to_topic(topic, messages(b"still fanned out"))
        assert [result.ok for result in results] == [True]
        assert drain_bodies(melange_backend, kept, 1) == [b"still fanned out"]

    # ----------------------------------------------------------- concurrency
    def test_concurrent_init_of_one_queue(
        self,
        melange_backend: MessagingBackend,
        melange_names: ResourceNames,
    ) -> None:
        """Threads initializing one queue at once all succeed; one queue results."""
        queue = melange_names.queue()

        def init(_: int) -> None:
            MessagingBackendFactory(melange_backend).init_queue(queue, visibility_timeout=2.0)

        assert _run_in_threads(THREADS, init) == []
        spec = melange_backend.get_queue(queue)
        assert spec is not None and spec.visibility_timeout == pytest.approx(2.0)
        melange_backend.publish(queue, messages(b"one"))
        assert drain_bodies(melange_backend, queue, 1) == [b"one"]
        assert_empty(melange_backend, queue)

    @requires("topics", "dead_letter")
    def test_concurrent_init_of_queue_topic_and_dead_letter_queue(
        self,
        melange_backend: MessagingBackend,
        melange_factory: MessagingBackendFactory,
        melange_names: ResourceNames,
    ) -> None:
        """Threads initializing queue, topic and DLQ at once leave one subscription."""
        queue, dlq, topic = melange_names.queue(), melange_names.queue("dlq"), melange_names.topic()
        count = _receive_counts(melange_backend)

        def init(_: int) -> None:
            MessagingBackendFactory(melange_backend).init_queue(
                queue, [topic], dead_letter_queue_name=dlq, max_receive_count=count[0]
            )

        assert _run_in_threads(THREADS, init) == []
        spec = melange_backend.get_queue(queue)
        assert spec is not None and spec.dead_letter == DeadLetterPolicy(dlq, count[0])
        assert melange_backend.get_queue(dlq) is not None
        assert melange_backend.get_topic(topic) == TopicSpec(topic)
        assert melange_backend.get_subscription(topic, queue) == SubscriptionSpec(topic, queue)
        assert (
            len(
                melange_factory.init_queue(
                    queue, [topic], dead_letter_queue_name=dlq, max_receive_count=count[0]
                )
            )
            == 0
        )
        # One subscription: one copy.
        melange_backend.publish_to_topic(topic, [OutgoingMessage(b"fan-out once")])
        assert drain_bodies(melange_backend, queue, 1) == [b"fan-out once"]
        assert_empty(melange_backend, queue)
