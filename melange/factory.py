"""MessagingBackendFactory: declare topics and queues, idempotently.

Every ``init_*`` call runs in three steps:

1. build the declared specs from the request and validate all of them (names,
   settings, dead-letter rules, capabilities, the backend's own rules) without
   touching the broker;
2. read the broker's current state and plan the difference, refusing drift in
   settings the broker cannot change, then let the backend refuse what it would
   refuse about the plan as a whole (:meth:`MessagingBackend.check_plan`);
3. apply the plan. A converged resource needs no step 3 at all.

So a refusal leaves the broker as it was: nothing is applied before every check passed.

``plan_topic`` and ``plan_queue`` stop after step 2 (dry run).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypedDict

from melange.backends.base import MessagingBackend
from melange.backends.topology_rules import dead_letter_mismatch
from melange.exceptions import (
    ConfigurationError,
    ImmutableSettingError,
    InvalidArgument,
    InvalidTopology,
    did_you_mean,
    require_str,
)
from melange.topology import (
    Action,
    Change,
    DeadLetterPolicy,
    Plan,
    QueueSpec,
    SubscriptionSpec,
    TopicSpec,
    is_fifo_name,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11


class QueueSettings(TypedDict, total=False):
    """The keyword settings of :meth:`MessagingBackendFactory.init_queue`.

    Declared so that a type checker flags a misspelt setting
    (``visibilty_timeout=30``) in the caller's code; at run time the same
    mistake raises :class:`~melange.exceptions.InvalidTopology` with a
    "did you mean".

    Attributes:
        fifo: Per-group order (and deduplication); default: whether the name
            ends with ``.fifo``.
        visibility_timeout: Seconds a received message stays hidden before
            redelivery (default 30).
        message_retention_period: Seconds an unreceived message is kept
            (default 4 days).
        delay_seconds: Seconds every new message waits before it can be
            received (default 0).
        max_receive_count: Receives before a message moves to the dead-letter
            queue; needs ``dead_letter_queue_name`` (default 5).
        subscription_filter: ``{attribute: [allowed values]}`` applied to each
            subscription; needs topics.
    """

    fifo: bool
    visibility_timeout: float
    message_retention_period: float
    delay_seconds: float
    max_receive_count: int
    subscription_filter: Mapping[str, Sequence[str]]


class TopicSettings(TypedDict, total=False):
    """The keyword settings of :meth:`MessagingBackendFactory.init_topic`.

    Attributes:
        fifo: Per-group order; default: whether the name ends with ``.fifo``.
    """

    fifo: bool


QUEUE_SETTINGS = tuple(QueueSettings.__annotations__)
"""Keyword settings accepted by :meth:`MessagingBackendFactory.init_queue`."""

TOPIC_SETTINGS = tuple(TopicSettings.__annotations__)
"""Keyword settings accepted by :meth:`MessagingBackendFactory.init_topic`."""

SETTINGS_7X = frozenset({"dlq_name", "filter_events"})
"""melange 7.x ``init_queue`` keywords, handled by ``melange.compat.calls_factory``."""


@dataclasses.dataclass(frozen=True)
class _QueueRequest:
    """Everything one ``init_queue`` call declares, validated."""

    queue: QueueSpec
    dead_letter: QueueSpec | None
    topics: tuple[TopicSpec, ...]
    subscriptions: tuple[SubscriptionSpec, ...]


class MessagingBackendFactory:
    """Creates and converges topics, queues, dead-letter queues and subscriptions.

    Examples:
        >>> from melange import MessagingBackendFactory
        >>> from melange.backends import MemoryBackend
        >>> factory = MessagingBackendFactory(MemoryBackend())
        >>> plan = factory.init_queue("payment-updates", ["payments"],
        ...                           dead_letter_queue_name="payment-updates-dlq")
        >>> [action.kind for action in plan]
        ['create_topic', 'create_queue', 'create_queue', 'subscribe']
        >>> len(factory.init_queue("payment-updates", ["payments"],
        ...                        dead_letter_queue_name="payment-updates-dlq"))
        0

    Args:
        backend: The backend to manage. ``None`` loads the configured one
            (see :func:`melange.config.load_backend_from_config`), which is the
            embedded ``memory`` backend when nothing is configured.
    """

    def __init__(self, backend: MessagingBackend | None = None) -> None:
        if backend is None:
            # A melange 7.x application may have set BackendManager's default: it keeps it.
            legacy = sys.modules.get("melange.compat.backend_manager")
            if legacy is not None:
                backend = legacy.default_backend_if_set("MessagingBackendFactory()")
        if backend is None:
            from melange.config import load_backend_from_config

            backend = load_backend_from_config()
        if not isinstance(backend, MessagingBackend):
            raise ConfigurationError(
                f"MessagingBackendFactory needs a MessagingBackend instance, got "
                f"{type(backend).__name__}; create one with melange.backends.load_backend(name)"
            )
        self._backend = backend

    @classmethod
    def from_config(
        cls,
        backend: str | None = None,
        *,
        config_file: str | None = None,
        **options: Any,
    ) -> MessagingBackendFactory:
        """Create a factory over a backend chosen by name or configuration.

        Args:
            backend: A backend name; ``None`` reads the environment, then
                ``melange.toml`` / ``pyproject.toml``, else ``memory``.
            config_file: An explicit configuration file to read.
            **options: Backend options; they override configured ones.
        """
        from melange.config import load_backend_from_config

        return cls(load_backend_from_config(backend, config_file=config_file, **options))

    @property
    def backend(self) -> MessagingBackend:
        """The backend this factory manages."""
        return self._backend

    def __repr__(self) -> str:
        return f"MessagingBackendFactory({self._backend!r})"

    # ------------------------------------------------------------------ topics
    def plan_topic(self, topic_name: str, **settings: Unpack[TopicSettings]) -> Plan:
        """Return what :meth:`init_topic` would do, changing nothing.

        Args:
            topic_name: The topic; a ``.fifo`` name is a FIFO topic.
            **settings: ``fifo``.
        """
        spec = self._topic_spec(topic_name, settings)
        actions = self._diff_topic(spec)
        if actions:
            self._backend.check_plan(actions)
        return Plan(actions, () if actions else (spec.name,))

    def init_topic(self, topic_name: str, **settings: Unpack[TopicSettings]) -> Plan:
        """Create the topic if it does not exist.

        Args:
            topic_name: The topic; a ``.fifo`` name is a FIFO topic.
            **settings: ``fifo`` (default: whether the name ends with ``.fifo``).

        Returns:
            The plan that was applied (empty when the topic already matched).

        Raises:
            InvalidTopology: Invalid name or setting; nothing was created.
            UnsupportedCapability: The backend has no topics (or no FIFO topics).
            ImmutableSettingError: The topic exists with another ``fifo`` value.
        """
        return self._run(self.plan_topic(topic_name, **settings))  # plan_topic checked it

    # ------------------------------------------------------------------ queues
    def plan_queue(
        self,
        queue_name: str,
        topic_names_to_subscribe: Sequence[str] | str | None = None,
        dead_letter_queue_name: str | None = None,
        **settings: Unpack[QueueSettings],
    ) -> Plan:
        """Return what :meth:`init_queue` would do, changing nothing.

        Takes the same arguments as :meth:`init_queue`.
        """
        request = self._queue_request(
            queue_name, topic_names_to_subscribe, dead_letter_queue_name, settings
        )
        actions: list[Action] = []
        unchanged: list[str] = []
        for topic in request.topics:
            found = self._diff_topic(topic)
            actions.extend(found)
            if not found:
                unchanged.append(topic.name)
        if request.dead_letter is not None:
            found = self._diff_dead_letter(request.dead_letter, request.queue)
            actions.extend(found)
            if not found:
                unchanged.append(request.dead_letter.name)
        found = self._diff_queue(request.queue)
        actions.extend(found)
        if not found:
            unchanged.append(request.queue.name)
        new_topics = {a.spec.name for a in actions if isinstance(a.spec, TopicSpec)}
        queue_is_new = any(a.kind == "create_queue" and a.spec == request.queue for a in actions)
        for subscription in request.subscriptions:
            is_new = queue_is_new or subscription.topic_name in new_topics
            actions.extend(self._diff_subscription(subscription, is_new))
        if actions:
            # What the broker would refuse, for the plan as a whole: e.g. a setting it
            # cannot change on a subscription, refused before the topics are created.
            self._backend.check_plan(actions)
        return Plan(tuple(actions), tuple(unchanged))

    def init_queue(
        self,
        queue_name: str,
        topic_names_to_subscribe: Sequence[str] | str | None = None,
        dead_letter_queue_name: str | None = None,
        **settings: Unpack[QueueSettings],
    ) -> Plan:
        """Create or converge a queue, its dead-letter queue and its subscriptions.

        Idempotent: an existing queue keeps its identity, and every setting
        melange manages is set back to what is declared here. Topics that do
        not exist are created. An existing dead-letter queue is used as it is.

        Args:
            queue_name: The queue; a ``.fifo`` name is a FIFO queue.
            topic_names_to_subscribe: Topics whose messages the queue receives.
            dead_letter_queue_name: Where messages go after ``max_receive_count``
                receives; must be another queue of the same type (FIFO or standard).
            **settings: ``fifo``, ``visibility_timeout``, ``message_retention_period``,
                ``delay_seconds`` (seconds), ``max_receive_count`` (needs a dead-letter
                queue; default 5) and ``subscription_filter``
                (``{attribute: [allowed values]}``, needs topics).

        Returns:
            The plan that was applied (empty when everything already matched).

        Raises:
            InvalidTopology: Invalid names, settings or dead-letter queue; nothing was created.
            UnsupportedCapability: The request needs something the backend cannot do.
            ImmutableSettingError: The queue or a topic exists with a setting the
                broker cannot change; nothing was changed.
        """
        return self._run(  # plan_queue checked it
            self.plan_queue(
                queue_name, topic_names_to_subscribe, dead_letter_queue_name, **settings
            )
        )

    # ------------------------------------------------------------------- apply
    def apply(self, plan: Plan) -> Plan:
        """Check a plan as a whole, then carry out its actions in order; return it.

        The backend checks every action against the broker's current state first
        (:meth:`MessagingBackend.check_plan`), so a refusal it can know of leaves
        the broker as it was.

        Args:
            plan: A plan from :meth:`plan_queue`, :meth:`plan_topic` or a topology file.

        Raises:
            ImmutableSettingError: An action would change what the broker cannot;
                nothing was applied.
            InvalidTopology: An action conflicts with what exists; nothing was applied.
        """
        if plan.actions:
            self._backend.check_plan(plan.actions)
        return self._run(plan)

    def _run(self, plan: Plan) -> Plan:
        """Carry out a checked plan's actions in order and return it."""
        backend = self._backend
        for action in plan:
            spec = action.spec
            if isinstance(spec, TopicSpec):
                backend.declare_topic(spec)
            elif isinstance(spec, QueueSpec):
                backend.declare_queue(spec)
            else:
                backend.subscribe(spec)
        return plan

    # ------------------------------------------------------- building specs
    def _topic_spec(self, topic_name: str, settings: Mapping[str, Any]) -> TopicSpec:
        require_str("topic_name", topic_name)
        _reject_unknown("init_topic", settings, TOPIC_SETTINGS)
        spec = TopicSpec(topic_name, _flag(settings, "fifo", topic_name))
        self._backend.check_topic(spec)
        return spec

    def _queue_request(
        self,
        queue_name: str,
        topic_names: Sequence[str] | str | None,
        dead_letter_queue_name: str | None,
        settings: Mapping[str, Any],
    ) -> _QueueRequest:
        backend = self._backend
        require_str("queue_name", queue_name)
        if not settings.keys().isdisjoint(SETTINGS_7X):
            from melange.compat.calls_factory import queue_settings_7x

            dead_letter_queue_name, settings = queue_settings_7x(
                queue_name, dead_letter_queue_name, settings
            )
        if dead_letter_queue_name is not None:
            require_str("dead_letter_queue_name", dead_letter_queue_name)
        _reject_unknown("init_queue", settings, QUEUE_SETTINGS)
        fifo = _flag(settings, "fifo", queue_name)
        default = QueueSpec(queue_name, fifo=fifo)
        queue = dataclasses.replace(
            default,
            visibility_timeout=_seconds(settings, "visibility_timeout", default),
            message_retention_period=_seconds(settings, "message_retention_period", default),
            delay_seconds=_seconds(settings, "delay_seconds", default),
        )

        dead_letter_spec = None
        if dead_letter_queue_name is not None:
            count = settings.get("max_receive_count", backend.default_max_receive_count)
            queue = dataclasses.replace(
                queue, dead_letter=DeadLetterPolicy(dead_letter_queue_name, count)
            )
            dead_letter_spec = QueueSpec(
                dead_letter_queue_name, fifo=is_fifo_name(dead_letter_queue_name)
            )
        elif "max_receive_count" in settings:
            raise InvalidTopology(
                "max_receive_count applies only with a dead-letter queue: pass "
                f"dead_letter_queue_name to init_queue({queue_name!r}, ...) "
                "or drop max_receive_count"
            )
        topics = tuple(TopicSpec(name, is_fifo_name(name)) for name in _topic_names(topic_names))
        subscription_filter = _subscription_filter(settings.get("subscription_filter"), topics)
        subscriptions = tuple(
            SubscriptionSpec(topic.name, queue_name, subscription_filter) for topic in topics
        )

        # The contract's checks (capabilities, ranges, dead-letter rules, the backend's
        # own rules), all before any broker call.
        backend.check_queue(queue)
        if dead_letter_spec is not None:
            backend.check_queue(dead_letter_spec)
        for topic, subscription in zip(topics, subscriptions, strict=True):
            backend.check_topic(topic)
            backend.check_subscription(subscription, topic, queue)
        return _QueueRequest(queue, dead_letter_spec, topics, subscriptions)

    # --------------------------------------------------------------- diffing
    def _diff_topic(self, spec: TopicSpec) -> tuple[Action, ...]:
        current = self._backend.get_topic(spec.name)
        if current is None:
            return (Action("create_topic", spec),)
        if current.fifo != spec.fifo:
            raise ImmutableSettingError(spec.name, "fifo", current.fifo, spec.fifo)
        return ()

    def _diff_dead_letter(self, spec: QueueSpec, queue: QueueSpec) -> tuple[Action, ...]:
        current = self._backend.get_queue(spec.name)
        if current is None:
            return (Action("create_queue", spec),)
        if current.fifo != queue.fifo:
            raise InvalidTopology(dead_letter_mismatch(queue.name, queue.fifo, spec.name))
        return ()  # an existing dead-letter queue keeps its own settings

    def _diff_queue(self, spec: QueueSpec) -> tuple[Action, ...]:
        current = self._backend.get_queue(spec.name)
        if current is None:
            return (Action("create_queue", spec),)
        immutable = self._backend.capabilities.immutable_queue_settings
        changes: list[Change] = []
        declared = spec.settings()
        for setting, value in current.settings().items():
            if _same(value, declared[setting]):
                continue
            if setting in immutable:
                raise ImmutableSettingError(spec.name, setting, value, declared[setting])
            changes.append(Change(setting, value, declared[setting]))
        changes.extend(self._backend.queue_drift(spec))  # what QueueSpec cannot show
        return (Action("update_queue", spec, tuple(changes)),) if changes else ()

    def _diff_subscription(self, spec: SubscriptionSpec, is_new: bool) -> tuple[Action, ...]:
        current = (
            None if is_new else self._backend.get_subscription(spec.topic_name, spec.queue_name)
        )
        if current is None:
            return (Action("subscribe", spec),)
        changes: list[Change] = []
        if current.filter != spec.filter:
            changes.append(Change("filter", current.filter_dict(), spec.filter_dict()))
        changes.extend(self._backend.subscription_drift(spec))  # what SubscriptionSpec cannot show
        return (Action("update_subscription", spec, tuple(changes)),) if changes else ()


# ---------------------------------------------------------------- helpers
def _reject_unknown(call: str, settings: Mapping[str, Any], accepted: Sequence[str]) -> None:
    for name in settings:
        if name not in accepted:
            raise InvalidTopology(
                f"{call}() got an unknown setting {name!r}{did_you_mean(name, accepted)}; "
                f"accepted settings: {', '.join(accepted)}"
            )


def _flag(settings: Mapping[str, Any], name: str, resource: str) -> bool:
    value = settings.get(name, is_fifo_name(resource))
    if not isinstance(value, bool):
        raise InvalidTopology(f"{name} must be True or False, got {value!r}")
    return value


def _seconds(settings: Mapping[str, Any], name: str, default: QueueSpec) -> float:
    if name not in settings:
        return float(getattr(default, name))
    value = settings[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgument(name, "a number of seconds", value)
    return float(value)  # the range is the contract's rule (check_queue)


def _topic_names(names: Sequence[str] | str | None) -> list[str]:
    if names is None:
        return []
    if isinstance(names, str):
        names = [names]  # init_queue("q", "topic") means one topic, not five letters
    unique: list[str] = []
    if not isinstance(names, Sequence):
        raise InvalidArgument(
            "topic_names_to_subscribe", "a list of topic names", names, "or one name, or None"
        )
    for name in names:
        if not isinstance(name, str):
            require_str("topic_names_to_subscribe (each name)", name)
        if not name:
            raise InvalidTopology(
                f"topic_names_to_subscribe must hold non-empty topic names, got {name!r}"
            )
        if name not in unique:
            unique.append(name)
    return unique


def _subscription_filter(
    value: object, topics: tuple[TopicSpec, ...]
) -> tuple[tuple[str, tuple[str, ...]], ...] | None:
    if value is None:
        return None
    if not topics:
        raise InvalidTopology(
            "subscription_filter applies to subscriptions: pass topic_names_to_subscribe too"
        )
    shape = "subscription_filter must map attribute names to lists of allowed string values"
    if not isinstance(value, Mapping) or not value:
        raise InvalidTopology(f"{shape}, e.g. {{'event': ['paid']}}; got {value!r}")
    for key, allowed in value.items():
        if (
            not isinstance(key, str)
            or not key
            or isinstance(allowed, str)
            or not isinstance(allowed, Sequence)
            or not allowed
            or not all(isinstance(v, str) for v in allowed)
        ):
            raise InvalidTopology(f"{shape}; entry {key!r}: {allowed!r} is not")
    return SubscriptionSpec.normalize_filter(value)


def _same(current: object, declared: object) -> bool:
    if isinstance(current, float) and isinstance(declared, float):
        return math.isclose(current, declared, rel_tol=0, abs_tol=1e-6)
    return current == declared
