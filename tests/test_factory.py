"""The factory: validate everything, then plan, then apply; idempotent and converging."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from melange import MessagingBackendFactory
from melange.backends.memory import MemoryBackend
from melange.exceptions import (
    ConfigurationError,
    ImmutableSettingError,
    InvalidArgument,
    InvalidName,
    InvalidTopology,
    UnsupportedCapability,
)
from melange.topology import (
    Action,
    Change,
    DeadLetterPolicy,
    Plan,
    QueueSpec,
    SubscriptionSpec,
    TopicSpec,
)


class RecordingBackend(MemoryBackend):
    """The memory backend, recording every call that could change the broker."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.mutations: list[tuple[str, str]] = []

    def _declare_queue(self, spec: QueueSpec) -> None:
        self.mutations.append(("declare_queue", spec.name))
        super()._declare_queue(spec)

    def _declare_topic(self, spec: TopicSpec) -> None:
        self.mutations.append(("declare_topic", spec.name))
        super()._declare_topic(spec)

    def _subscribe(self, spec: SubscriptionSpec) -> None:
        self.mutations.append(("subscribe", f"{spec.topic_name}->{spec.queue_name}"))
        super()._subscribe(spec)


@pytest.fixture
def backend() -> RecordingBackend:
    return RecordingBackend()


@pytest.fixture
def factory(backend: RecordingBackend) -> MessagingBackendFactory:
    return MessagingBackendFactory(backend)


def assert_nothing_exists(backend: MemoryBackend, *names: str) -> None:
    for name in names:
        assert backend.get_queue(name) is None, f"queue {name!r} was created"
        assert backend.get_topic(name) is None, f"topic {name!r} was created"


# ------------------------------------------------------------------ creating
def test_init_queue_creates_topics_dlq_queue_and_subscriptions(
    factory: MessagingBackendFactory, backend: RecordingBackend
) -> None:
    plan = factory.init_queue(
        "orders", ["t1", "t2"], dead_letter_queue_name="orders-dlq", max_receive_count=3
    )
    assert [(a.kind, a.target) for a in plan] == [
        ("create_topic", "t1"),
        ("create_topic", "t2"),
        ("create_queue", "orders-dlq"),
        ("create_queue", "orders"),
        ("subscribe", "t1 -> orders"),
        ("subscribe", "t2 -> orders"),
    ]
    assert backend.get_queue("orders") == QueueSpec(
        "orders", dead_letter=DeadLetterPolicy("orders-dlq", 3)
    )
    assert backend.get_queue("orders-dlq") == QueueSpec("orders-dlq")
    assert backend.get_subscription("t2", "orders") == SubscriptionSpec("t2", "orders")


def test_fifo_follows_the_name(factory: MessagingBackendFactory, backend: MemoryBackend) -> None:
    factory.init_queue("pay.fifo", dead_letter_queue_name="pay-dlq.fifo")
    factory.init_topic("events.fifo")
    queue = backend.get_queue("pay.fifo")
    assert queue is not None and queue.fifo
    dlq = backend.get_queue("pay-dlq.fifo")
    assert dlq is not None and dlq.fifo
    topic = backend.get_topic("events.fifo")
    assert topic is not None and topic.fifo


def test_a_single_topic_name_string_is_one_topic(
    factory: MessagingBackendFactory, backend: MemoryBackend
) -> None:
    factory.init_queue("q", "payments")
    assert backend.get_subscription("payments", "q") is not None
    assert backend.get_topic("p") is None


# ---------------------------------------------------------- idempotent/converge
def test_converged_reinit_is_an_empty_plan_with_read_only_calls(
    factory: MessagingBackendFactory, backend: RecordingBackend
) -> None:
    args: dict[str, Any] = {
        "topic_names_to_subscribe": ["t"],
        "dead_letter_queue_name": "q-dlq",
        "visibility_timeout": 12,
        "subscription_filter": {"kind": ["a", "b"]},
    }
    factory.init_queue("q", **args)
    factory.init_topic("t")
    backend.mutations.clear()
    for _ in range(3):
        plan = factory.init_queue("q", **args)
        assert not plan
        assert set(plan.unchanged) == {"t", "q-dlq", "q"}
        assert not factory.init_topic("t")
    assert backend.mutations == []


def test_reinit_restores_settings_changed_by_hand(
    factory: MessagingBackendFactory, backend: RecordingBackend
) -> None:
    factory.init_queue("q", ["t"], visibility_timeout=10, subscription_filter={"k": ["v"]})
    current = backend.get_queue("q")
    assert current is not None
    backend.declare_queue(dataclasses.replace(current, visibility_timeout=99, delay_seconds=4))
    backend.subscribe(SubscriptionSpec("t", "q", None))

    plan = factory.plan_queue("q", ["t"], visibility_timeout=10, subscription_filter={"k": ["v"]})
    assert [str(a) for a in plan] == [
        "update queue 'q': visibility_timeout 99 -> 10, delay_seconds 4 -> 0",
        "update subscription 't -> q': filter None -> {'k': ['v']}",
    ]
    backend.mutations.clear()
    factory.apply(plan)
    assert backend.get_queue("q") == dataclasses.replace(current, visibility_timeout=10.0)
    subscription = backend.get_subscription("t", "q")
    assert subscription is not None and subscription.filter_dict() == {"k": ["v"]}
    assert backend.mutations == [("declare_queue", "q"), ("subscribe", "t->q")]


def test_plan_is_a_dry_run(factory: MessagingBackendFactory, backend: RecordingBackend) -> None:
    plan = factory.plan_queue("q", ["t"], dead_letter_queue_name="q-dlq")
    assert len(plan) == 4
    assert backend.mutations == []
    assert_nothing_exists(backend, "q", "t", "q-dlq")
    assert "dead_letter='q-dlq' after 5 receives)" in plan.describe()
    assert factory.plan_topic("t").actions[0].kind == "create_topic"


def test_a_filter_is_a_set_of_values_repeats_and_order_change_nothing(
    factory: MessagingBackendFactory, backend: MemoryBackend
) -> None:
    factory.init_queue("q", ["t"], subscription_filter={"kind": ["paid", "refund", "paid"]})
    same = factory.plan_queue("q", ["t"], subscription_filter={"kind": ["refund", "paid"]})
    assert len(same) == 0
    assert len(factory.init_queue("q", ["t"], subscription_filter={"kind": ["paid"]})) == 1


def test_reinit_without_dlq_removes_the_redrive(
    factory: MessagingBackendFactory, backend: MemoryBackend
) -> None:
    factory.init_queue("q", dead_letter_queue_name="q-dlq")
    plan = factory.init_queue("q")
    assert [c.setting for c in plan.actions[0].changes] == ["dead_letter"]
    queue = backend.get_queue("q")
    assert queue is not None and queue.dead_letter is None
    assert backend.get_queue("q-dlq") is not None  # the DLQ itself is kept, with its messages


def test_existing_dead_letter_queue_keeps_its_own_settings(
    factory: MessagingBackendFactory, backend: MemoryBackend
) -> None:
    factory.init_queue("q-dlq", message_retention_period=14 * 24 * 3600)
    factory.init_queue("q", dead_letter_queue_name="q-dlq")
    dlq = backend.get_queue("q-dlq")
    assert dlq is not None and dlq.message_retention_period == 14 * 24 * 3600


def test_immutable_drift_is_refused_and_nothing_changes(
    factory: MessagingBackendFactory, backend: RecordingBackend
) -> None:
    # Created outside melange: through the hook, past the contract's name rule.
    backend._declare_queue(QueueSpec("legacy", fifo=True, visibility_timeout=5))
    backend.mutations.clear()
    with pytest.raises(ImmutableSettingError) as error:
        factory.init_queue("legacy", visibility_timeout=10)
    assert "fifo=True" in str(error.value) and "fifo=False" in str(error.value)
    assert (error.value.current, error.value.declared) == (True, False)
    assert backend.mutations == []
    assert backend.get_queue("legacy") == QueueSpec("legacy", fifo=True, visibility_timeout=5)


def test_topic_fifo_drift_is_refused(
    factory: MessagingBackendFactory, backend: MemoryBackend
) -> None:
    backend._declare_topic(TopicSpec("t", fifo=True))  # created outside melange
    with pytest.raises(ImmutableSettingError, match="'t' exists with fifo=True"):
        factory.init_queue("q", ["t"])
    assert backend.get_queue("q") is None


# ------------------------------------------------------------------ bad input
BAD_QUEUE_REQUESTS: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("bad name!", {}, InvalidName, "invalid queue name 'bad name!'"),
    ("", {}, InvalidName, "non-empty"),
    ("x" * 81, {}, InvalidName, "1 to 80 characters"),
    ("q", {"fifo": True}, InvalidName, "must end with '.fifo'"),
    ("q.fifo", {"fifo": False}, InvalidName, "a standard queue name must not end with '.fifo'"),
    ("q", {"dead_letter_queue_name": "q"}, InvalidTopology, "cannot be its own dead-letter"),
    (
        "q.fifo",
        {"dead_letter_queue_name": "q-dlq"},
        InvalidTopology,
        "FIFO queue 'q.fifo' needs a FIFO dead-letter queue, but 'q-dlq' is standard",
    ),
    (
        "q",
        {"dead_letter_queue_name": "q-dlq.fifo"},
        InvalidTopology,
        "standard queue 'q' needs a standard dead-letter queue",
    ),
    (
        "q",
        {"dead_letter_queue_name": "bad dlq"},
        InvalidName,
        "invalid dead-letter queue name 'bad dlq'",
    ),
    ("q", {"topic_names_to_subscribe": ["ok", "bad topic"]}, InvalidName, "invalid topic name"),
    ("q", {"topic_names_to_subscribe": [""]}, InvalidTopology, "non-empty topic names"),
    ("q", {"visibilty_timeout": 3}, InvalidTopology, "did you mean 'visibility_timeout'"),
    ("q", {"visibility_timeout": -1}, InvalidTopology, "visibility_timeout must be a number"),
    ("q", {"visibility_timeout": "30"}, InvalidArgument, "got str '30'"),
    ("q", {"visibility_timeout": True}, InvalidArgument, "got bool True"),
    ("q", {"visibility_timeout": float("nan")}, InvalidTopology, "got nan"),
    ("q", {"delay_seconds": 10_000}, InvalidTopology, "delay_seconds must be"),
    ("q", {"message_retention_period": 1}, InvalidTopology, "from 60 to 1.2096e+06"),
    ("q", {"max_receive_count": 3}, InvalidTopology, "only with a dead-letter queue"),
    (
        "q",
        {"dead_letter_queue_name": "q-dlq", "max_receive_count": 0},
        InvalidTopology,
        "max_receive_count must be a whole number from 1 to 1000",
    ),
    ("q", {"subscription_filter": {"k": ["v"]}}, InvalidTopology, "pass topic_names_to_subscribe"),
    (
        "q",
        {"topic_names_to_subscribe": ["t"], "subscription_filter": {"k": "v"}},
        InvalidTopology,
        "lists of allowed string values",
    ),
    (
        "q",
        {"topic_names_to_subscribe": ["t"], "subscription_filter": {}},
        InvalidTopology,
        "lists of allowed string values",
    ),
    ("q", {"fifo": "yes"}, InvalidTopology, "fifo must be True or False"),
]


@pytest.mark.parametrize(("name", "kwargs", "error_type", "fragment"), BAD_QUEUE_REQUESTS)
def test_bad_queue_request_is_refused_before_anything_is_created(
    factory: MessagingBackendFactory,
    backend: RecordingBackend,
    name: str,
    kwargs: dict[str, Any],
    error_type: type[Exception],
    fragment: str,
) -> None:
    with pytest.raises(error_type) as error:
        factory.init_queue(name, **kwargs)
    assert fragment in str(error.value)
    assert backend.mutations == []
    created = [name, "q", "q-dlq", "t", "ok", *kwargs.get("topic_names_to_subscribe", [])]
    assert_nothing_exists(backend, *[n for n in created if n])


def test_existing_dlq_of_the_other_type_is_refused(
    factory: MessagingBackendFactory, backend: RecordingBackend
) -> None:
    backend._declare_queue(QueueSpec("odd-dlq.fifo", fifo=False))  # created outside melange
    backend.mutations.clear()
    with pytest.raises(InvalidTopology, match="needs a FIFO dead-letter queue"):
        factory.init_queue("q.fifo", dead_letter_queue_name="odd-dlq.fifo")
    assert backend.mutations == []


def test_bad_topic_requests(factory: MessagingBackendFactory, backend: RecordingBackend) -> None:
    with pytest.raises(InvalidName, match="invalid topic name 'a/b'"):
        factory.init_topic("a/b")
    with pytest.raises(InvalidTopology, match="unknown setting 'ordered'"):
        factory.init_topic("t", ordered=True)
    assert backend.mutations == []


def test_factory_needs_a_backend_instance() -> None:
    with pytest.raises(ConfigurationError, match="load_backend"):
        MessagingBackendFactory("memory")  # type: ignore[arg-type]


# -------------------------------------------------------------- capabilities
@pytest.mark.parametrize(
    ("capability", "call"),
    [
        ("topics", lambda f: f.init_topic("t")),
        ("topics", lambda f: f.init_queue("q", ["t"])),
        ("fifo", lambda f: f.init_queue("q.fifo")),
        ("dead_letter", lambda f: f.init_queue("q", dead_letter_queue_name="q-dlq")),
        ("delay", lambda f: f.init_queue("q", delay_seconds=5)),
        ("filters", lambda f: f.init_queue("q", ["t"], subscription_filter={"k": ["v"]})),
    ],
)
def test_request_the_backend_cannot_honour_names_backend_and_capability(
    backend: RecordingBackend, capability: str, call: Any
) -> None:
    backend.capabilities = dataclasses.replace(backend.capabilities, **{capability: False})
    with pytest.raises(UnsupportedCapability) as error:
        call(MessagingBackendFactory(backend))
    assert error.value.capability == capability
    assert f"backend 'memory' does not support {capability!r}" in str(error.value)
    assert backend.mutations == []


def test_backend_rules_run_before_any_call(backend: RecordingBackend) -> None:
    class NoFifoOnStandardTopics(RecordingBackend):
        def validate_subscription(
            self, topic: TopicSpec, queue: QueueSpec, subscription: SubscriptionSpec
        ) -> None:
            if queue.fifo and not topic.fifo:
                raise InvalidTopology(
                    f"FIFO queue {queue.name!r} cannot subscribe to {topic.name!r}"
                )

    strict = NoFifoOnStandardTopics()
    with pytest.raises(InvalidTopology, match="cannot subscribe to 'std'"):
        MessagingBackendFactory(strict).init_queue("q.fifo", ["ok.fifo", "std"])
    assert strict.mutations == []


class RefusesFilterChanges(RecordingBackend):
    """A broker that cannot change a subscription's filter, and says so in check_plan."""

    def __init__(self) -> None:
        super().__init__()
        self.checked: list[tuple[str, ...]] = []

    def _check_plan(self, actions: tuple[Action, ...]) -> None:
        self.checked.append(tuple(action.kind for action in actions))
        for action in actions:
            if action.kind == "update_subscription":
                raise ImmutableSettingError(action.target, "filter", "current", "declared")


def test_a_refusal_the_backend_finds_in_the_plan_comes_before_any_action() -> None:
    backend = RefusesFilterChanges()
    factory = MessagingBackendFactory(backend)
    factory.init_queue("q", ["t"], subscription_filter={"kind": ["paid"]}, visibility_timeout=30)
    backend.mutations.clear()
    backend.checked.clear()
    # The queue update and the new topic come first in the plan; the refusal is the last action.
    with pytest.raises(ImmutableSettingError):
        factory.init_queue(
            "q", ["t2", "t"], subscription_filter={"kind": ["other"]}, visibility_timeout=120
        )
    assert backend.mutations == []
    assert backend.get_topic("t2") is None
    assert backend.get_queue("q").visibility_timeout == 30  # type: ignore[union-attr]
    assert backend.checked == [
        ("create_topic", "update_queue", "subscribe", "update_subscription")
    ], "checked once, as a whole"
    # A dry run refuses it too; so does applying a plan made before the change.
    with pytest.raises(ImmutableSettingError):
        factory.plan_queue("q", ["t"], subscription_filter={"kind": ["other"]})
    plan = Plan((Action("update_subscription", SubscriptionSpec("t", "q", None)),))
    with pytest.raises(ImmutableSettingError):
        factory.apply(plan)
    assert backend.mutations == []


class DriftingBackend(MemoryBackend):
    """Keeps part of a queue's and a subscription's state where the specs cannot show it."""

    def __init__(self) -> None:
        super().__init__()
        self.admitted = True  # e.g. the dead-letter queue admits the queue
        self.raw_delivery = True  # e.g. SNS raw message delivery

    def _queue_drift(self, spec: QueueSpec) -> tuple[Change, ...]:
        return () if self.admitted else (Change("dead_letter_admission", "deny", "admit"),)

    def _subscription_drift(self, spec: SubscriptionSpec) -> tuple[Change, ...]:
        return () if self.raw_delivery else (Change("raw_delivery", False, True),)

    def _declare_queue(self, spec: QueueSpec) -> None:
        super()._declare_queue(spec)
        self.admitted = True

    def _subscribe(self, spec: SubscriptionSpec) -> None:
        super()._subscribe(spec)
        self.raw_delivery = True


def test_drift_outside_the_specs_is_planned_and_put_back() -> None:
    backend = DriftingBackend()
    factory = MessagingBackendFactory(backend)
    factory.init_queue("q", ["t"])
    assert len(factory.init_queue("q", ["t"])) == 0
    backend.admitted, backend.raw_delivery = False, False

    plan = factory.plan_queue("q", ["t"])
    assert [(a.kind, [str(c) for c in a.changes]) for a in plan] == [
        ("update_queue", ["dead_letter_admission: 'deny' -> 'admit'"]),
        ("update_subscription", ["raw_delivery: False -> True"]),
    ]
    factory.apply(plan)
    assert backend.admitted and backend.raw_delivery
    assert len(factory.init_queue("q", ["t"])) == 0
