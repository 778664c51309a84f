"""Queues, topics and subscriptions through the Service Bus administration client.

Each melange resource maps to one Service Bus entity (see docs/backends/azure.md):

- queue: a queue; ``fifo`` is RequiresSession plus RequiresDuplicateDetection,
  ``visibility_timeout`` the LockDuration, ``message_retention_period`` the
  DefaultMessageTimeToLive, the dead-letter policy MaxDeliveryCount plus
  ForwardDeadLetteredMessagesTo. What Service Bus has no setting for is kept in
  the queue's UserMetadata (``{"melange": {...}}``) and applied by melange:
  ``delay_seconds`` (scheduled at publish) and a visibility timeout below the
  5 s minimum lock (the lock is 5 s, and melange abandons each delivery when its
  visibility timeout ends);
- topic: a topic (``.fifo`` topics have RequiresDuplicateDetection);
- subscription: a subscription of the topic, named after the queue, that
  forwards (ForwardTo) to the queue, its filter the ``$Default`` rule.

Declaring is create-or-converge: a missing entity is created with the declared
settings; an existing one is read, compared, and updated only where it differs,
so a converged re-init reads and writes nothing else. Settings Service Bus cannot
change after creation raise ImmutableSettingError before anything is updated.
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.servicebus.management import (
    QueueProperties,
    ServiceBusAdministrationClient,
    SqlRuleFilter,
    SubscriptionProperties,
    TrueRuleFilter,
)

from melange.exceptions import (
    BackendUnavailable,
    ImmutableSettingError,
    InvalidTopology,
    QueueNotFound,
    ResourceNotFound,
    TopicNotFound,
)
from melange.topology import Change, DeadLetterPolicy, QueueSpec, SubscriptionSpec, TopicSpec
from melange_azure import filters
from melange_azure.conflicts import retry_conflicts
from melange_azure.names import entity_from_address, same_entity, subscription_name
from melange_azure.validation import MIN_LOCK_DURATION

logger = logging.getLogger("melange.azure.resources")

NO_DEAD_LETTER_COUNT = 2_147_483_647
"""MaxDeliveryCount of a queue without a dead-letter queue: Service Bus's largest, so a
message is redelivered (practically) forever instead of dead-lettered, as melange promises."""

METADATA_KEY = "melange"
"""Key of melange's settings in a queue's UserMetadata (a JSON object)."""

BEHAVIOUR_TTL = 30.0
"""Seconds a queue's delay and short visibility timeout are cached before being read again."""

Fail = Callable[..., NoReturn]
"""Raises the melange error for an Azure error: ``fail(error, action, queue=, topic=)``."""

Kind = Literal["queue", "topic"]


class KindClash(InvalidTopology):
    """The name is taken by an entity of the other kind (a topic where a queue is wanted).

    Service Bus queues and topics share one namespace of names, compared
    case-insensitively. Raised by topology reads and declarations; data calls turn it into
    :class:`~melange.exceptions.QueueNotFound` / :class:`~melange.exceptions.TopicNotFound`
    with :meth:`not_found`.

    Attributes:
        name: The name that was asked for.
        wanted: The kind that was asked for.
        found: The kind the entity of that name is.
    """

    def __init__(self, name: str, wanted: Kind, found: Kind) -> None:
        super().__init__(
            f"{name!r} is a {found} on this Service Bus namespace, so it cannot be a {wanted}: "
            "queues and topics share one namespace of names, compared case-insensitively. "
            f"Give the {wanted} another name, or delete the {found} {name!r} first"
        )
        self.name = name
        self.wanted = wanted
        self.found = found

    def not_found(self) -> ResourceNotFound:
        """The QueueNotFound or TopicNotFound a data call on this name raises."""
        error = QueueNotFound if self.wanted == "queue" else TopicNotFound
        return error(
            self.name,
            f"{self.name!r} is a {self.found} (queues and topics share one namespace of "
            f"names); use the {self.found} calls for it, or another {self.wanted}'s name",
        )


def seconds(value: datetime.timedelta | str | None, default: float) -> float:
    """Seconds of a duration the administration client returns."""
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    return default


def _melange_settings(metadata: str | None) -> dict[str, float]:
    """The settings melange keeps in a queue's UserMetadata (``{"melange": {...}}``)."""
    if not metadata:
        return {}
    try:
        document = json.loads(metadata)
        settings = document[METADATA_KEY]
        return {str(k): float(v) for k, v in settings.items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}


def _metadata(current: str | None, settings: dict[str, float]) -> str | None:
    """UserMetadata holding ``settings``, keeping whatever else a JSON document held."""
    try:
        document = json.loads(current) if current else {}
        if not isinstance(document, dict):
            document = {}
    except ValueError:
        document = {}
    if settings:
        document[METADATA_KEY] = settings
    else:
        document.pop(METADATA_KEY, None)
    return json.dumps(document, sort_keys=True) if document else None


def lock_duration_of(spec: QueueSpec) -> float:
    """The LockDuration a queue gets: its visibility timeout, at least Service Bus's minimum."""
    return max(spec.visibility_timeout, MIN_LOCK_DURATION)


def _managed_metadata(spec: QueueSpec) -> dict[str, float]:
    """What melange keeps in UserMetadata: what Service Bus has no setting for."""
    settings: dict[str, float] = {}
    if spec.delay_seconds:
        settings["delay_seconds"] = spec.delay_seconds
    if spec.visibility_timeout < MIN_LOCK_DURATION:
        settings["visibility_timeout"] = spec.visibility_timeout
    return settings


@dataclass(frozen=True)
class QueueBehaviour:
    """What publish and receive need to know about a queue, beyond its name.

    Attributes:
        delay: Seconds every message waits before it can be received (0 for none).
        visibility: The visibility timeout when it is shorter than the lock
            (melange abandons each delivery then), else ``None``.
        lock: The queue's LockDuration in seconds.
    """

    delay: float = 0.0
    visibility: float | None = None
    lock: float = 60.0


class Topology:
    """Reads and changes entities through one administration client (thread-safe).

    Args:
        admin: The administration client.
        fail: Raises the melange error for an Azure error.
    """

    def __init__(self, admin: ServiceBusAdministrationClient, fail: Fail) -> None:
        self._admin = admin
        self._fail = fail
        self._behaviours: dict[str, tuple[float, QueueBehaviour]] = {}
        self._topics: dict[str, float] = {}
        self._lock = threading.Lock()

    # --------------------------------------------------------------- queues
    def queue_properties(self, name: str) -> QueueProperties | None:
        """The queue's properties, or ``None`` if it does not exist."""
        try:
            return self._admin.get_queue(name)
        except ResourceNotFoundError:
            return None
        except AttributeError:
            # The SDK reads whatever entity has the name: a topic has no queue description.
            self._check_other_kind(name, "queue")
            raise
        except AzureError as error:
            self._fail(error, f"read queue {name!r}", queue=name)

    def _check_other_kind(self, name: str, wanted: Kind) -> None:
        """Raise KindClash if ``name`` is an entity of the other kind; else return.

        Called when the SDK could not read the entity as the kind wanted; only an
        entity the SDK does read as the other kind counts, anything else is left
        to the caller's error.
        """
        found: Kind = "topic" if wanted == "queue" else "queue"
        read = self._admin.get_topic if found == "topic" else self._admin.get_queue
        try:
            read(name)
        except Exception:  # not the other kind either: the caller's error stands
            return
        raise KindClash(name, wanted, found) from None

    @staticmethod
    def queue_spec(props: QueueProperties) -> QueueSpec:
        """The melange view of a queue's properties."""
        target = entity_from_address(props.forward_dead_lettered_messages_to)
        count = int(props.max_delivery_count or 10)
        dead_letter: DeadLetterPolicy | None = None
        if target is not None:
            dead_letter = DeadLetterPolicy(target, count)
        elif count != NO_DEAD_LETTER_COUNT:
            # Dead-lettered into the queue's own $DeadLetterQueue, not what melange declares.
            dead_letter = DeadLetterPolicy(f"{props.name}/$DeadLetterQueue", count)
        managed = _melange_settings(props.user_metadata)
        visibility = seconds(props.lock_duration, 60.0)
        if visibility == MIN_LOCK_DURATION and "visibility_timeout" in managed:
            visibility = managed["visibility_timeout"]
        return QueueSpec(
            str(props.name),
            fifo=bool(props.requires_session),
            visibility_timeout=visibility,
            message_retention_period=seconds(props.default_message_time_to_live, 0.0),
            delay_seconds=managed.get("delay_seconds", 0.0),
            dead_letter=dead_letter,
        )

    def get_queue(self, name: str) -> QueueSpec | None:
        """The queue's current state, or ``None``."""
        props = self.queue_properties(name)
        if props is None:
            return None
        spec = self.queue_spec(props)
        self._remember(spec)
        return spec

    def _remember(self, spec: QueueSpec) -> None:
        short = spec.visibility_timeout if spec.visibility_timeout < MIN_LOCK_DURATION else None
        behaviour = QueueBehaviour(spec.delay_seconds, short, lock_duration_of(spec))
        with self._lock:
            self._behaviours[spec.name.lower()] = (time.monotonic() + BEHAVIOUR_TTL, behaviour)

    def behaviour(self, name: str) -> QueueBehaviour:
        """The queue's delay and short visibility timeout, cached for a while.

        When the cache is stale and the administration API does not answer, the
        stale value is used: publishing and receiving (over AMQP) do not depend
        on the administration API being reachable every :data:`BEHAVIOUR_TTL`.

        Raises:
            QueueNotFound: The queue does not exist.
            BackendUnavailable: The administration API did not answer and
                nothing is known about the queue.
        """
        with self._lock:
            cached = self._behaviours.get(name.lower())
        if cached is not None and time.monotonic() < cached[0]:
            return cached[1]
        try:
            found = self.get_queue(name)
        except KindClash as clash:
            raise clash.not_found() from None
        except BackendUnavailable:
            if cached is None:
                raise
            logger.debug("the settings of queue %r could not be read again; using them", name)
            return cached[1]
        if found is None:
            raise QueueNotFound(name)
        with self._lock:
            return self._behaviours[name.lower()][1]

    def forget_queue(self, name: str) -> None:
        """Drop what is cached about the queue (it was deleted or is missing)."""
        with self._lock:
            self._behaviours.pop(name.lower(), None)

    @staticmethod
    def _settings(spec: QueueSpec, current_metadata: str | None) -> dict[str, Any]:
        dead_letter = spec.dead_letter
        return {
            "lock_duration": datetime.timedelta(seconds=lock_duration_of(spec)),
            "default_message_time_to_live": datetime.timedelta(
                seconds=spec.message_retention_period
            ),
            "max_delivery_count": (
                dead_letter.max_receive_count if dead_letter else NO_DEAD_LETTER_COUNT
            ),
            "forward_dead_lettered_messages_to": dead_letter.queue_name if dead_letter else None,
            "user_metadata": _metadata(current_metadata, _managed_metadata(spec)),
        }

    def _require_dead_letter_queue(self, spec: QueueSpec) -> None:
        if spec.dead_letter is None:
            return
        if self.queue_properties(spec.dead_letter.queue_name) is None:
            raise QueueNotFound(
                spec.dead_letter.queue_name,
                f"it is the dead-letter queue of {spec.name!r}; create it first "
                "(MessagingBackendFactory.init_queue creates both)",
            )

    @staticmethod
    def check_immutable(props: QueueProperties, spec: QueueSpec) -> None:
        """Raise ImmutableSettingError where the queue differs in a setting fixed at creation."""
        fixed = (
            ("requires_session", bool(props.requires_session), spec.fifo),
            ("requires_duplicate_detection", bool(props.requires_duplicate_detection), spec.fifo),
            ("enable_partitioning", bool(props.enable_partitioning), False),
        )
        for setting, current, declared in fixed:
            if current != declared:
                raise ImmutableSettingError(spec.name, setting, current, declared)

    def declare_queue(self, spec: QueueSpec) -> None:
        """Create the queue, or converge an existing one's settings to ``spec``."""
        props = self.queue_properties(spec.name)
        if props is not None:
            self.check_immutable(props, spec)  # before anything else is read or changed
        self._require_dead_letter_queue(spec)
        if props is None:
            settings = self._settings(spec, None)
            try:
                retry_conflicts(
                    lambda: self._admin.create_queue(
                        spec.name,
                        requires_session=spec.fifo,
                        requires_duplicate_detection=spec.fifo,
                        enable_partitioning=False,
                        **settings,
                    ),
                    f"create queue {spec.name!r}",
                )
            except ResourceExistsError:
                props = self.queue_properties(spec.name)  # made meanwhile: converge it
                if props is None:
                    raise QueueNotFound(spec.name, "it was deleted while being created") from None
                self.check_immutable(props, spec)
            except AzureError as error:
                self._fail(error, f"create queue {spec.name!r}", queue=spec.name)
            else:
                logger.debug("created queue %r", spec.name)
                self._remember(spec)
                return
        self._converge_queue(props, spec)

    def queue_drift(self, spec: QueueSpec) -> tuple[Change, ...]:
        """What differs from ``spec`` beyond QueueSpec: forwarding and status (read-only).

        The queue's own ForwardTo (set, every message would go elsewhere) and
        status (not Active, it refuses sends or receives), and the same two of
        its dead-letter queue, which the factory otherwise uses as it is: a
        dead-letter queue forwarding elsewhere would swallow the dead letters.
        """
        props = self.queue_properties(spec.name)
        if props is None:
            return ()
        changes = _entity_drift(props, "queue")
        if spec.dead_letter is not None:
            dead_letter = self.queue_properties(spec.dead_letter.queue_name)
            if dead_letter is not None:
                changes += _entity_drift(dead_letter, "dead-letter queue")
        return changes

    def _repair_dead_letter_queue(self, spec: QueueSpec) -> None:
        """Put the dead-letter queue's forwarding and status back (see :meth:`queue_drift`)."""
        if spec.dead_letter is None:
            return
        name = spec.dead_letter.queue_name
        props = self.queue_properties(name)
        if props is None or not _entity_drift(props, "dead-letter queue"):
            return
        _restore_entity(props)
        try:
            retry_conflicts(lambda: self._admin.update_queue(props), f"update queue {name!r}")
        except ResourceNotFoundError:
            raise QueueNotFound(name, "it was deleted while being updated") from None
        except AzureError as error:
            self._fail(error, f"update queue {name!r}", queue=name)
        logger.debug("restored the forwarding and status of dead-letter queue %r", name)

    def _converge_queue(self, props: QueueProperties, spec: QueueSpec) -> None:
        self._repair_dead_letter_queue(spec)
        current = self.queue_spec(props)
        wanted = self._settings(spec, props.user_metadata)
        differs = bool(_entity_drift(props, "queue")) or (
            current.visibility_timeout != spec.visibility_timeout
            or current.message_retention_period != spec.message_retention_period
            or current.delay_seconds != spec.delay_seconds
            or int(props.max_delivery_count or 0) != wanted["max_delivery_count"]
            or not _same_target(
                entity_from_address(props.forward_dead_lettered_messages_to),
                wanted["forward_dead_lettered_messages_to"],
            )
        )
        self._remember(spec)
        if not differs:
            return
        for key, value in wanted.items():
            setattr(props, key, value)
        _restore_entity(props)
        try:
            retry_conflicts(lambda: self._admin.update_queue(props), f"update queue {spec.name!r}")
        except ResourceNotFoundError:
            raise QueueNotFound(spec.name, "it was deleted while being updated") from None
        except AzureError as error:
            self._fail(error, f"update queue {spec.name!r}", queue=spec.name)
        logger.debug("converged the settings of queue %r", spec.name)

    def delete_queue(self, name: str) -> None:
        """Delete the queue and the subscriptions that forward to it.

        A subscription left forwarding to a deleted queue keeps every message
        it matches, counted against its topic's size quota: once the topic is
        full, every publish to it fails. So they go first (those of a queue
        deleted outside melange too, then QueueNotFound still tells).

        Raises:
            QueueNotFound: The queue does not exist.
        """
        self.forget_queue(name)
        try:
            self.queue_properties(name)  # Service Bus deletes any entity of the name
        except KindClash as clash:
            raise clash.not_found() from None
        self._delete_forwarding_subscriptions(name)
        try:
            self._admin.delete_queue(name)
        except ResourceNotFoundError:
            raise QueueNotFound(name, "nothing was deleted; check the name") from None
        except AzureError as error:
            self._fail(error, f"delete queue {name!r}", queue=name)

    def _delete_forwarding_subscriptions(self, queue_name: str) -> None:
        action = f"delete the subscriptions forwarding to queue {queue_name!r}"
        try:
            for topic in [str(topic.name) for topic in self._admin.list_topics()]:
                try:
                    subscriptions = list(self._admin.list_subscriptions(topic))
                except ResourceNotFoundError:
                    continue  # the topic was deleted meanwhile, its subscriptions with it
                for sub in subscriptions:
                    if not _same_target(entity_from_address(sub.forward_to), queue_name):
                        continue
                    try:
                        self._admin.delete_subscription(topic, sub.name)
                    except ResourceNotFoundError:
                        continue  # deleted meanwhile (with its topic, or by another init)
                    logger.debug("deleted subscription %r of topic %r", sub.name, topic)
        except AzureError as error:
            self._fail(error, action, queue=queue_name)

    # --------------------------------------------------------------- topics
    def get_topic(self, name: str) -> TopicSpec | None:
        """The topic's current state, or ``None``."""
        try:
            props = self._admin.get_topic(name)
        except ResourceNotFoundError:
            self.forget_topic(name)
            return None
        except AttributeError:
            # The SDK reads whatever entity has the name: a queue has no topic description.
            self._check_other_kind(name, "topic")
            raise
        except AzureError as error:
            self._fail(error, f"read topic {name!r}", topic=name)
        self._remember_topic(name)
        return TopicSpec(str(props.name), fifo=bool(props.requires_duplicate_detection))

    def _remember_topic(self, name: str) -> None:
        with self._lock:
            self._topics[name.lower()] = time.monotonic() + BEHAVIOUR_TTL

    def forget_topic(self, name: str) -> None:
        """Drop the cached knowledge that the topic exists."""
        with self._lock:
            self._topics.pop(name.lower(), None)

    def require_topic(self, name: str) -> None:
        """Raise TopicNotFound unless the topic exists (known for a while, or read now)."""
        with self._lock:
            known = self._topics.get(name.lower())
        if known is not None and time.monotonic() < known:
            return
        try:
            found = self.get_topic(name)
        except KindClash as clash:
            raise clash.not_found() from None
        if found is None:
            raise TopicNotFound(name)

    def declare_topic(self, spec: TopicSpec) -> None:
        """Create the topic if it does not exist; refuse one of the other kind."""
        current = self.get_topic(spec.name)
        if current is None:
            try:
                retry_conflicts(
                    lambda: self._admin.create_topic(
                        spec.name,
                        requires_duplicate_detection=spec.fifo,
                        support_ordering=spec.fifo or None,
                        enable_partitioning=False,
                    ),
                    f"create topic {spec.name!r}",
                )
            except ResourceExistsError:
                current = self.get_topic(spec.name)  # made meanwhile
            except AzureError as error:
                self._fail(error, f"create topic {spec.name!r}", topic=spec.name)
            else:
                logger.debug("created topic %r", spec.name)
                self._remember_topic(spec.name)
                return
        if current is not None and current.fifo != spec.fifo:
            raise ImmutableSettingError(
                spec.name, "requires_duplicate_detection", current.fifo, spec.fifo
            )

    def delete_topic(self, name: str) -> None:
        """Delete the topic and its subscriptions; TopicNotFound if it does not exist."""
        try:
            self.get_topic(name)  # Service Bus deletes any entity of the name
        except KindClash as clash:
            raise clash.not_found() from None
        self.forget_topic(name)
        try:
            self._admin.delete_topic(name)
        except ResourceNotFoundError:
            raise TopicNotFound(name, "nothing was deleted; check the name") from None
        except AzureError as error:
            self._fail(error, f"delete topic {name!r}", topic=name)

    # -------------------------------------------------------- subscriptions
    def _subscription(self, topic_name: str, queue_name: str) -> SubscriptionProperties | None:
        try:
            return self._admin.get_subscription(topic_name, subscription_name(queue_name))
        except ResourceNotFoundError:
            return None
        except AzureError as error:
            self._fail(error, f"read the subscription of {queue_name!r}", topic=topic_name)

    def _rule_filter(self, topic_name: str, queue_name: str) -> tuple[bool, Any]:
        """``(melange-shaped, filter)`` of the subscription's rules."""
        try:
            rules = list(self._admin.list_rules(topic_name, subscription_name(queue_name)))
        except ResourceNotFoundError:
            return False, None
        except AzureError as error:
            self._fail(error, f"read the rules of {queue_name!r}'s subscription", topic=topic_name)
        if len(rules) != 1 or rules[0].name != filters.RULE_NAME or rules[0].action is not None:
            return False, None
        rule_filter = rules[0].filter
        if isinstance(rule_filter, TrueRuleFilter):
            return True, None
        if not isinstance(rule_filter, SqlRuleFilter):
            return False, None
        try:
            return True, filters.parse(rule_filter.sql_expression)
        except ValueError:
            return False, None

    def get_subscription(self, topic_name: str, queue_name: str) -> SubscriptionSpec | None:
        """The subscription forwarding ``topic_name`` to ``queue_name``, as melange made it.

        One that does not forward to the queue or whose rules melange did not
        write counts as missing, so init subscribes again and puts it right.
        """
        props = self._subscription(topic_name, queue_name)
        if props is None or not _same_target(entity_from_address(props.forward_to), queue_name):
            return None
        shaped, rule_filter = self._rule_filter(topic_name, queue_name)
        if not shaped:
            return None
        return SubscriptionSpec(topic_name, queue_name, rule_filter)

    def subscription_drift(self, spec: SubscriptionSpec) -> tuple[Change, ...]:
        """What differs from ``spec`` beyond SubscriptionSpec: the status (read-only).

        A subscription that is not Active forwards nothing.
        """
        props = self._subscription(spec.topic_name, spec.queue_name)
        if props is None:
            return ()
        status = _status(props.status)
        if status == ACTIVE:
            return ()
        return (Change("subscription status", status, ACTIVE),)

    def subscribe(self, spec: SubscriptionSpec) -> None:
        """Create the forwarding subscription or converge its target and rule."""
        if self.queue_properties(spec.queue_name) is None:
            raise QueueNotFound(spec.queue_name)
        name = subscription_name(spec.queue_name)
        action = f"subscribe queue {spec.queue_name!r} to topic {spec.topic_name!r}"
        props = self._subscription(spec.topic_name, spec.queue_name)
        if props is None:
            try:
                props = retry_conflicts(
                    lambda: self._admin.create_subscription(
                        spec.topic_name, name, forward_to=spec.queue_name
                    ),
                    action,
                )
            except ResourceExistsError:
                props = self._subscription(spec.topic_name, spec.queue_name)
            except ResourceNotFoundError:
                raise TopicNotFound(spec.topic_name) from None
            except AzureError as error:
                self._fail(error, action, topic=spec.topic_name)
            if props is None:
                raise TopicNotFound(spec.topic_name, "it was deleted while being subscribed to")
        forwards = _same_target(entity_from_address(props.forward_to), spec.queue_name)
        if not forwards or _status(props.status) != ACTIVE:
            props.forward_to = spec.queue_name
            props.status = ACTIVE
            try:
                self._admin.update_subscription(spec.topic_name, props)
            except AzureError as error:
                self._fail(error, action, topic=spec.topic_name)
        self._converge_rules(spec, name, action)
        logger.debug("subscribed queue %r to topic %r", spec.queue_name, spec.topic_name)

    def _converge_rules(self, spec: SubscriptionSpec, name: str, action: str) -> None:
        shaped, current = self._rule_filter(spec.topic_name, spec.queue_name)
        if shaped and current == spec.filter:
            return
        wanted: Any = (
            TrueRuleFilter() if spec.filter is None else SqlRuleFilter(filters.to_sql(spec.filter))
        )
        try:
            rules = list(self._admin.list_rules(spec.topic_name, name))
            default = next((rule for rule in rules if rule.name == filters.RULE_NAME), None)
            # Replace the filter in place: with no rule at all the subscription would
            # drop whatever is published meanwhile.
            if default is None:
                retry_conflicts(
                    lambda: self._admin.create_rule(
                        spec.topic_name, name, filters.RULE_NAME, filter=wanted
                    ),
                    action,
                )
            else:
                default.filter = wanted
                default.action = None
                self._admin.update_rule(spec.topic_name, name, default)
            for rule in rules:
                if rule.name != filters.RULE_NAME:
                    self._admin.delete_rule(spec.topic_name, name, rule.name)
        except (ResourceExistsError, ResourceNotFoundError):
            pass  # a concurrent init wrote or removed the same rule
        except AzureError as error:
            self._fail(error, action, topic=spec.topic_name)


ACTIVE = "Active"
"""The status of an entity melange creates (Service Bus's default)."""


def _status(value: object) -> str:
    """An entity status as text (the SDK gives an ``EntityStatus`` or a string)."""
    return str(getattr(value, "value", value) or ACTIVE)


def _entity_drift(props: QueueProperties, label: str) -> tuple[Change, ...]:
    """A queue's forwarding and status where they differ from what melange creates."""
    changes: list[Change] = []
    target = entity_from_address(props.forward_to)
    if target is not None:
        changes.append(Change(f"{label} forward_to", target, None))
    status = _status(props.status)
    if status != ACTIVE:
        changes.append(Change(f"{label} status", status, ACTIVE))
    return tuple(changes)


def _restore_entity(props: QueueProperties) -> None:
    props.forward_to = None
    props.status = ACTIVE


def _same_target(current: str | None, declared: str | None) -> bool:
    if current is None or declared is None:
        return current is None and declared is None
    return same_entity(current, declared)
