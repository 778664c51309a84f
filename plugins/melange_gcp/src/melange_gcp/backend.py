"""The ``gcp`` backend: queues and topics on Google Cloud Pub/Sub.

How melange's contract maps to Pub/Sub (details and links in docs/backends/gcp.md):

- topic: a Pub/Sub topic;
- queue: a topic plus a subscription of the same name, so a queue can be
  published to directly; its settings are the subscription's fields
  (:mod:`~melange_gcp.resources`);
- subscribing a queue to a topic: a subscription ``<queue>~<topic>`` on that
  topic, with the queue's settings and the filter; the queue's receivers pull
  it together with the queue's own subscription;
- dead-letter queue: a ``dead_letter_policy`` to the dead-letter queue's topic,
  once Pub/Sub's service agent may use it (:mod:`~melange_gcp.permissions`);
- FIFO (``.fifo`` names): message ordering on the subscriptions, the group id
  as ordering key;
- publish: Publish with up to 1,000 messages and 10 MB per request;
- receive: synchronous Pull, never ``return_immediately`` (the service may
  answer it empty while messages wait); ack: Acknowledge; nack, lease extension
  and visibility timeouts below Pub/Sub's 10 s minimum: ModifyAckDeadline.
- a subscription detached from its deleted topic, or on another topic, is
  recreated or refused (:mod:`~melange_gcp.attachment`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from typing import Any, Literal, NoReturn

from google.api_core import exceptions as api_exceptions
from google.api_core.retry import Retry
from google.protobuf import field_mask_pb2  # type: ignore[import-untyped]
from google.pubsub_v1 import types

from melange.backends.base import (
    Capabilities,
    MessagingBackend,
    OutgoingMessage,
    PublishResult,
    ReceivedMessage,
)
from melange.exceptions import (
    BackendClosed,
    ConfigurationError,
    ImmutableSettingError,
    InvalidMessage,
    InvalidTopology,
    MessageTooLarge,
    QueueNotFound,
    TopicNotFound,
)
from melange.topology import (
    Action,
    Change,
    QueueSpec,
    SubscriptionSpec,
    TopicSpec,
    is_fifo_name,
)
from melange_gcp import filters, forwarding, receipts, wire
from melange_gcp.attachment import DELETED_TOPIC, SubscriptionDetached, lost_messages
from melange_gcp.clients import make_clients
from melange_gcp.errors import GOOGLE_ERRORS, ErrorContext, raise_translated
from melange_gcp.names import (
    QUEUE_NAME_RULE,
    TOPIC_NAME_RULE,
    fan_out_prefix,
    fan_out_subscription,
    short_name,
    subscription_path,
    topic_path,
)
from melange_gcp.outcomes import Attempts, last_error
from melange_gcp.permissions import MODES, DeadLetterPermissions, Mode, ResourceKind
from melange_gcp.project_number import ProjectNumber, check_project_number
from melange_gcp.receipts import DeliveryCounter, GCPReceipt
from melange_gcp.resources import (
    MAX_ACK_DEADLINE,
    ROLE_LABEL,
    Desired,
    queue_spec,
    short_deadline,
)
from melange_gcp.timeouts import (
    DEFAULT_KEEPALIVE,
    DEFAULT_TIMEOUT,
    CallTimeouts,
    pull_retry,
    retry,
)

__all__ = ["GCPPubSubBackend", "GCPReceipt", "SubscriptionDetached"]

logger = logging.getLogger("melange.gcp.backend")


MAX_PULL = 1_000
"""Messages one Pull may return."""

MIN_PULL = 0.5
"""Shortest deadline a pull gets: time for Pub/Sub to answer with the messages that wait.

Pulls never set ``return_immediately``, which the service may answer empty while
messages wait; without it the service answers as soon as messages are there, else
holds the call until its deadline. So ``receive(wait_seconds=0)`` pulls each of the
queue's subscriptions once with this deadline."""

PULL_TURN = 1.0
"""Longest deadline of one pull while other subscriptions of the queue wait their turn."""

POLL_INTERVAL = 0.1
"""Shortest time between two rounds of pulls that found nothing (the emulator answers a
pull with a deadline of a second or less at once)."""


class GCPPubSubBackend(MessagingBackend):
    """Queues and topics on Google Cloud Pub/Sub, through the google-cloud-pubsub clients.

    Every option is optional; with none, Google's usual chain applies: the
    project from ``GOOGLE_CLOUD_PROJECT`` or Application Default Credentials,
    credentials from ADC, and the emulator from ``PUBSUB_EMULATOR_HOST``.

    Args:
        project: The Google Cloud project id.
        emulator_host: ``host:port`` of a Pub/Sub emulator (as
            ``PUBSUB_EMULATOR_HOST``): insecure channel, no credentials.
        api_endpoint: ``host:port`` of the service, e.g. a regional endpoint
            (``europe-west1-pubsub.googleapis.com:443``).
        credentials_file: A service-account key file, instead of ADC.
        timeout: Seconds an admin call (get, create, update, delete, list, IAM)
            may take, retries included; also the default of the next two
            (docs/backends/gcp.md, "Timeouts").
        publish_timeout: Seconds one Publish request may take, retries
            included. A publish that runs out of time has an unknown outcome.
        ack_timeout: Seconds one Acknowledge or ModifyAckDeadline request (ack,
            nack, lease extension) may take, retries included.
        keepalive_seconds: Seconds between gRPC keepalive pings while calls are
            in flight; a ping unanswered for 10 s (at most this) drops the
            connection. Google's front ends refuse pings more often than every 30 s.
        recreate_subscriptions: Delete and recreate a subscription whose
            filter or message ordering differs from the declaration (Pub/Sub
            cannot change them), or that is detached from its deleted topic or
            on another topic (Pub/Sub cannot move it). Its unacknowledged
            messages are lost (a WARNING names them), so the default
            (``False``) refuses with ImmutableSettingError (SubscriptionDetached
            for the topic) instead.
        fan_out_refresh_seconds: How long the list of a queue's fan-out
            subscriptions, found by listing the project's subscriptions, is
            reused before it is listed again. Subscriptions made through this
            backend object are seen at once.
        dead_letter_permissions: What init does about Pub/Sub's service agent's
            permissions on a dead-letter queue's topic and the source
            subscriptions, without which no dead letter moves: ``"grant"``
            what is missing when the caller may, ``"check"`` only, or
            ``"skip"``. Missing ones raise ConfigurationError with the gcloud
            commands. The emulator has no IAM: not checked there.
        project_number: The project's number, which the service agent is named
            after; looked up in Cloud Resource Manager when needed otherwise.

    Raises:
        ConfigurationError: No project, no credentials, contradicting options, a
            timeout that is not a positive number of seconds, a user name or
            password in ``emulator_host`` / ``api_endpoint``, or an unknown
            ``dead_letter_permissions`` or malformed ``project_number``.
    """

    name = "gcp"
    capabilities = Capabilities(
        topics=True,
        dead_letter=True,
        fifo=True,
        dedup=False,  # Pub/Sub has no publish-side deduplication id
        delay=False,  # no delayed delivery
        batch=True,
        lease_extension=True,
        nack_delay=True,
        filters=True,
        max_message_size=wire.MAX_MESSAGE_SIZE,
        max_batch_size=wire.MAX_BATCH_SIZE,
        max_batch_bytes=wire.MAX_REQUEST_BYTES - wire.REQUEST_OVERHEAD,
        max_attributes=wire.MAX_ATTRIBUTES,
        max_visibility_timeout=float(MAX_ACK_DEADLINE),
        max_receive_count_range=(5, 100),
        retention_range=(600.0, 31 * 24 * 3600.0),
        max_wait_seconds=20.0,
        immutable_queue_settings=frozenset({"fifo"}),
    )
    queue_name_rule = QUEUE_NAME_RULE
    topic_name_rule = TOPIC_NAME_RULE
    broker_label = "Pub/Sub"
    receive_count_setting = "max_delivery_attempts"

    def __init__(
        self,
        *,
        project: str | None = None,
        emulator_host: str | None = None,
        api_endpoint: str | None = None,
        credentials_file: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        publish_timeout: float | None = None,
        ack_timeout: float | None = None,
        keepalive_seconds: float = DEFAULT_KEEPALIVE,
        recreate_subscriptions: bool = False,
        fan_out_refresh_seconds: float = 30.0,
        dead_letter_permissions: Mode = "grant",
        project_number: int | str | None = None,
    ) -> None:
        timeouts = CallTimeouts.of(
            timeout=timeout,
            publish_timeout=publish_timeout,
            ack_timeout=ack_timeout,
            keepalive_seconds=keepalive_seconds,
        )
        if (
            isinstance(fan_out_refresh_seconds, bool)
            or not isinstance(fan_out_refresh_seconds, (int, float))
            or not fan_out_refresh_seconds >= 0
        ):
            raise ConfigurationError(
                "fan_out_refresh_seconds must be 0 or more seconds, got "
                f"{fan_out_refresh_seconds!r}"
            )
        if not isinstance(recreate_subscriptions, bool):
            # bool("false") is True: a string must not switch recreating (message loss) on.
            raise ConfigurationError(
                f"recreate_subscriptions must be True or False, got {recreate_subscriptions!r}; "
                "from the environment or a configuration file, true/false (yes/no, on/off, "
                "1/0) are converted for you"
            )
        if dead_letter_permissions not in MODES:
            raise ConfigurationError(
                f"dead_letter_permissions must be one of {', '.join(map(repr, MODES))}, got "
                f"{dead_letter_permissions!r}"
            )
        number = check_project_number(project_number)
        settings, clients = make_clients(
            project=project,
            emulator_host=emulator_host,
            api_endpoint=api_endpoint,
            credentials_file=credentials_file,
            timeouts=timeouts,
        )
        super().__init__()
        self._settings = settings
        self._project = settings.project
        self._clients = clients
        self._timeouts = timeouts
        # Google's retry machinery, each bounded by its kind of call's time as a whole.
        self._admin_retry = retry(timeouts.admin)
        self._ack_retry = retry(timeouts.ack)
        self._recreate = recreate_subscriptions
        self._refresh = float(fan_out_refresh_seconds)
        self._lock = threading.Lock()
        self._fan_outs: dict[str, tuple[float, list[str]]] = {}
        self._short_deadlines: dict[str, tuple[float, float | None]] = {}
        self._counter = DeliveryCounter()
        self._rotation = 0
        self._permissions: DeadLetterPermissions | None = None
        if not settings.emulator and dead_letter_permissions != "skip":
            self._permissions = DeadLetterPermissions(
                self._project,
                ProjectNumber(self._project, number, clients.credentials, timeouts.admin),
                _BackendIam(self),
                grant=dead_letter_permissions == "grant",
            )

    # ------------------------------------------------------------ properties
    @property
    def project(self) -> str:
        """The Google Cloud project the resources live in."""
        return self._project

    @property
    def timeouts(self) -> CallTimeouts:
        """How long each kind of call may take (from the timeout options)."""
        return self._timeouts

    @property
    def publisher_client(self) -> Any:
        """The GAPIC ``google.pubsub_v1.PublisherClient`` in use now.

        It is replaced, with its channel, when a call runs out of time (see
        docs/backends/gcp.md, "Timeouts").
        """
        return self._clients.publisher

    @property
    def subscriber_client(self) -> Any:
        """The GAPIC ``google.pubsub_v1.SubscriberClient`` in use now (as publisher_client)."""
        return self._clients.subscriber

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        kind = "emulator" if self._settings.emulator else "endpoint"
        return (
            f"<{type(self).__name__} {self.name!r} project={self._project!r} "
            f"{kind}={self._settings.endpoint!r}{state}>"
        )

    # ---------------------------------------------------------------- calls
    def _rpc(
        self,
        service: Literal["publisher", "subscriber"],
        method: str,
        request: Any,
        timeout: float,
        retry: Retry | None,
    ) -> Any:
        """Call ``method`` of the current client with a deadline; renew a channel that timed out.

        A call that Pub/Sub answers at once and that ran out of time says the
        connection under it may be dead: the next call gets a new one.
        """
        clients = self._clients
        client = clients.publisher if service == "publisher" else clients.subscriber
        try:
            return getattr(client, method)(request=request, timeout=timeout, retry=retry)
        except (api_exceptions.DeadlineExceeded, api_exceptions.RetryError) as error:
            if isinstance(last_error(error), api_exceptions.DeadlineExceeded) and not self.closed:
                clients.renew(client)
            raise

    def _admin(self, service: Literal["publisher", "subscriber"], method: str, request: Any) -> Any:
        """An admin call (get, create, update, delete, list), within ``timeout``."""
        return self._rpc(service, method, request, self._timeouts.admin, self._admin_retry)

    def _fail(
        self,
        error: Exception,
        action: str,
        *,
        queue: str | None = None,
        topic: str | None = None,
        about_messages: bool = False,
    ) -> NoReturn:
        if self.closed:  # the channel was closed under a call in flight
            raise BackendClosed(self.name, action) from None
        context = ErrorContext(action, self._settings.endpoint, queue, topic, about_messages)
        raise_translated(error, context)

    def _topic(self, name: str) -> types.Topic | None:
        try:
            topic: types.Topic = self._admin(
                "publisher", "get_topic", {"topic": topic_path(self._project, name)}
            )
            return topic
        except api_exceptions.NotFound:
            return None
        except GOOGLE_ERRORS as error:
            self._fail(error, f"read topic {name!r}")

    def _subscription(self, name: str) -> types.Subscription | None:
        try:
            subscription: types.Subscription = self._admin(
                "subscriber",
                "get_subscription",
                {"subscription": subscription_path(self._project, name)},
            )
            return subscription
        except api_exceptions.NotFound:
            return None
        except GOOGLE_ERRORS as error:
            self._fail(error, f"read subscription {name!r}")

    # ------------------------------------------------------------ validation
    def validate_queue(self, spec: QueueSpec) -> None:
        """Refuse what Pub/Sub would refuse: names, dead-letter settings, delays."""
        super().validate_queue(spec)
        if spec.delay_seconds:
            raise InvalidTopology(
                f"delay_seconds={spec.delay_seconds!r} on queue {spec.name!r}: Pub/Sub has no "
                "delayed delivery; declare delay_seconds=0"
            )
        if not 0 < spec.visibility_timeout <= MAX_ACK_DEADLINE:
            raise InvalidTopology(
                f"visibility_timeout={spec.visibility_timeout!r} on queue {spec.name!r}: "
                f"Pub/Sub ack deadlines are up to {MAX_ACK_DEADLINE} seconds and above 0"
            )
        low, high = self.capabilities.retention_range
        if not low <= spec.message_retention_period <= high:
            raise InvalidTopology(
                f"message_retention_period={spec.message_retention_period!r} on queue "
                f"{spec.name!r}: Pub/Sub keeps messages from {low:g} s (10 minutes) to "
                f"{high:g} s (31 days)"
            )

    def validate_subscription(
        self, topic: TopicSpec, queue: QueueSpec, subscription: SubscriptionSpec
    ) -> None:
        """Refuse filters Pub/Sub refuses, and a FIFO queue on a standard topic.

        Ordering needs ordering keys, which only a FIFO topic's publishers set.
        """
        filters.check(subscription)
        if queue.fifo and not topic.fifo:
            raise InvalidTopology(
                f"FIFO queue {queue.name!r} cannot subscribe to standard topic {topic.name!r}: "
                "its messages carry no ordering key, so no order could be kept. Subscribe it "
                f"to a FIFO topic (e.g. {topic.name + '.fifo'!r}) or use a standard queue"
            )

    def validate_message(self, message: OutgoingMessage) -> int:
        """Check ``message`` against Pub/Sub's limits; return its size on the wire."""
        body = message.body
        if (
            type(body) is bytes
            and not message.attributes
            and message.group_id is None
            and message.dedup_id is None
            and not message.delay_seconds
        ):
            # The common case, checked as the base class would, without its general path.
            if len(body) > wire.MAX_MESSAGE_SIZE:
                raise MessageTooLarge(len(body), wire.MAX_MESSAGE_SIZE, self.name)
            return wire.body_only_bytes(len(body))
        return wire.check_message(message, super().validate_message(message))

    def validate_batch(
        self, destination: Literal["queue", "topic"], name: str, batch: Sequence[OutgoingMessage]
    ) -> None:
        """Refuse a group id towards a standard queue or topic (no ordering there)."""
        if is_fifo_name(name):
            return
        for message in batch:
            if message.group_id is not None:
                raise InvalidTopology(
                    f"group_id {message.group_id!r} sent to standard {destination} {name!r}: "
                    "ordering keys only keep order on FIFO (.fifo) queues and topics; drop "
                    "the group id or use a FIFO destination"
                )

    # ------------------------------------------------------------ plan check
    def _check_plan(self, actions: tuple[Action, ...]) -> None:
        """Refuse, before anything is applied, what applying ``actions`` would refuse half way.

        Reads what the actions touch: a queue or topic name the other kind holds;
        unless ``recreate_subscriptions``, a subscription detached or on another
        topic, or differing in its filter or ordering (Pub/Sub can change
        neither); a dead-letter queue, queue or topic an action needs that
        neither exists nor is created by an earlier action.
        """
        topics = {a.spec.name for a in actions if isinstance(a.spec, TopicSpec)}
        queues = {a.spec.name: a.spec for a in actions if isinstance(a.spec, QueueSpec)}
        both = sorted(topics & queues.keys())
        if both:
            raise InvalidTopology(
                f"{both[0]!r} is declared both as a topic and as a queue; on Pub/Sub a queue is "
                "a topic plus a subscription of the same name, so they cannot share a name. "
                "Choose another name for one of them"
            )
        for action in actions:
            spec = action.spec
            if isinstance(spec, TopicSpec):
                current = self._topic(spec.name)
                if current is not None and self._is_queue_topic(current):
                    raise _queue_name_taken(spec.name)
            elif isinstance(spec, QueueSpec):
                self._check_queue_action(spec, queues)
            else:
                self._check_subscribe_action(spec, topics, queues)

    def _check_queue_action(self, spec: QueueSpec, planned: dict[str, QueueSpec]) -> None:
        """What :meth:`_declare_queue` would refuse, read-only."""
        own = self._subscription(spec.name)
        topic = self._topic(spec.name)
        if topic is not None and topic.labels.get(ROLE_LABEL) != "queue" and own is None:
            raise _topic_name_taken(spec.name)
        dead_letter = spec.dead_letter
        if (
            dead_letter is not None
            and dead_letter.queue_name not in planned
            and self._topic(dead_letter.queue_name) is None
        ):
            raise QueueNotFound(
                dead_letter.queue_name,
                f"it is the dead-letter queue of {spec.name!r}; create it first "
                "(MessagingBackendFactory.init_queue creates both)",
            )
        if self._recreate:
            return  # what differs is recreated, not refused
        desired = Desired.of(self._project, spec)
        if own is not None:
            self._check_attached(spec.name, own, spec.name, spec.name)
            self._refuse_immutable_drift(spec.name, own, desired, "")
        for name in self._fan_out_names(spec.name, fresh=True):
            current = self._subscription(name)
            if current is not None and current.topic != DELETED_TOPIC:
                # Converged with its own filter: only its ordering can differ.
                self._refuse_immutable_drift(name, current, desired, current.filter)

    def _check_subscribe_action(
        self, spec: SubscriptionSpec, topics: set[str], planned: dict[str, QueueSpec]
    ) -> None:
        """What :meth:`_subscribe` would refuse, read-only."""
        queue = planned.get(spec.queue_name)
        if queue is None:
            own = self._subscription(spec.queue_name)
            if own is None or own.topic != topic_path(self._project, spec.queue_name):
                raise QueueNotFound(spec.queue_name)
            queue = queue_spec(spec.queue_name, own)
        topic = TopicSpec(spec.topic_name, is_fifo_name(spec.topic_name))
        self.validate_subscription(topic, queue, spec)
        if spec.topic_name not in topics and self._get_topic(spec.topic_name) is None:
            raise TopicNotFound(spec.topic_name)
        if self._recreate:
            return
        name = fan_out_subscription(spec.queue_name, spec.topic_name)
        current = self._subscription(name)
        if current is None:
            return
        self._check_attached(name, current, spec.topic_name, spec.queue_name)
        desired = Desired.of(self._project, queue)
        self._refuse_immutable_drift(name, current, desired, filters.to_expression(spec.filter))

    def _refuse_immutable_drift(
        self, name: str, current: types.Subscription, desired: Desired, expression: str
    ) -> None:
        immutable = self._immutable_drift(name, current, desired, expression)
        if immutable is not None:
            raise immutable

    # ---------------------------------------------------------------- queues
    def _get_queue(self, name: str) -> QueueSpec | None:
        subscription = self._subscription(name)
        if subscription is None or subscription.topic != topic_path(self._project, name):
            return None
        return queue_spec(name, subscription)

    def _declare_queue(self, spec: QueueSpec) -> None:
        if spec.dead_letter is not None and self._topic(spec.dead_letter.queue_name) is None:
            raise QueueNotFound(
                spec.dead_letter.queue_name,
                f"it is the dead-letter queue of {spec.name!r}; create it first "
                "(MessagingBackendFactory.init_queue creates both)",
            )
        desired = Desired.of(self._project, spec)
        own = self._subscription(spec.name)
        if own is not None and not self._recreate:
            self._check_attached(spec.name, own, spec.name, spec.name)  # before any change
        self._ensure_queue_topic(spec.name)
        self._converge(spec.name, spec.name, desired, "", queue=spec.name)
        for name in self._fan_out_names(spec.name, fresh=True):
            current = self._subscription(name)
            if current is None or current.topic == DELETED_TOPIC:
                # Its topic is gone: init_queue's subscribe recreates (or refuses) it.
                continue
            topic = short_name(current.topic)
            self._converge(name, topic, desired, current.filter, spec.name)
        with self._lock:  # known now: the first receive need not read it back
            short = spec.visibility_timeout if desired.visibility_label is not None else None
            self._short_deadlines[spec.name] = (time.monotonic() + self._refresh, short)

    def _ensure_queue_topic(self, name: str) -> None:
        current = self._topic(name)
        if current is not None:
            if current.labels.get(ROLE_LABEL) != "queue" and self._subscription(name) is None:
                raise _topic_name_taken(name)
            return
        try:
            self._admin(
                "publisher",
                "create_topic",
                {"name": topic_path(self._project, name), "labels": {ROLE_LABEL: "queue"}},
            )
            logger.debug("created the topic of queue %r", name)
        except api_exceptions.AlreadyExists:
            pass  # made meanwhile by a concurrent init
        except GOOGLE_ERRORS as error:
            self._fail(error, f"create the topic of queue {name!r}", queue=name)

    def _check_attached(
        self, name: str, current: types.Subscription, topic: str, queue: str
    ) -> SubscriptionDetached | None:
        """Refuse a subscription that is not on ``topic``; with recreate_subscriptions, return why.

        Raises:
            SubscriptionDetached: It is not on ``topic`` and recreating is off.
        """
        if current.topic == topic_path(self._project, topic):
            return None
        error = SubscriptionDetached(name, current.topic, topic, queue, self._project)
        if not self._recreate:
            raise error
        return error

    def _converge(
        self, name: str, topic: str, desired: Desired, expression: str, queue: str
    ) -> None:
        """Create subscription ``name`` on ``topic``, or bring it to ``desired``.

        One on another topic (or detached from its deleted one), or differing
        in a setting Pub/Sub cannot change, is refused, or recreated with
        ``recreate_subscriptions``.
        """
        body = desired.subscription(self._project, name, topic, expression)
        current = self._subscription(name)
        if current is None:
            current = self._create_subscription(name, desired, body, queue)
            if current is None:
                return  # created as declared
        detached = self._check_attached(name, current, topic, queue)
        if detached is not None:
            logger.warning("%s", lost_messages(detached))
            self._recreate_subscription(name, desired, body, queue)
            return
        immutable = self._immutable_drift(name, current, desired, expression)
        if immutable is not None:
            if not self._recreate:
                raise immutable
            logger.warning(
                "recreating subscription %r of queue %r: Pub/Sub cannot change its %s "
                "(recreate_subscriptions=True); the messages still unacknowledged in it are lost",
                name,
                queue,
                immutable.setting,
            )
            self._recreate_subscription(name, desired, body, queue)
            return
        self._update_subscription(name, current, desired, queue)

    def _create_subscription(
        self, name: str, desired: Desired, body: dict[str, Any], queue: str
    ) -> types.Subscription | None:
        """Create subscription ``name``; return it when it still needs converging, else ``None``.

        With the dead-letter permissions checked, the subscription is created
        without its dead-letter policy (the subscriber role is granted on the
        subscription itself, so it must exist first) and returned: the policy
        is set by the update once the permissions are in place. One made
        meanwhile by a concurrent init is returned to be converged.
        """
        action = f"create subscription {name!r} of queue {queue!r}"
        pending = desired.dead_letter_topic is not None and self._permissions is not None
        if pending:
            body = desired.without_dead_letter().subscription(
                self._project, name, short_name(body["topic"]), body.get("filter", "")
            )
        try:
            created: types.Subscription = self._admin("subscriber", "create_subscription", body)
        except api_exceptions.AlreadyExists as error:
            current = self._subscription(name)  # made meanwhile: converge it
            if current is None:  # and deleted again since
                self._fail(error, action, queue=queue)
            return current
        except api_exceptions.NotFound as error:
            self._fail(error, action, topic=short_name(body["topic"]))
        except GOOGLE_ERRORS as error:
            self._fail(error, action, queue=queue)
        logger.debug("created subscription %r", name)
        self._forget_fan_outs(queue)
        if pending:
            return created
        self._dead_letter_permissions(name, desired, queue)  # the emulator's DEBUG line
        return None

    def _update_subscription(
        self, name: str, current: types.Subscription, desired: Desired, queue: str
    ) -> None:
        """Send one UpdateSubscription with the fields that differ, if any do."""
        self._dead_letter_permissions(name, desired, queue)
        paths, update = desired.changes(current)
        if not paths:
            return
        try:
            self._admin(
                "subscriber",
                "update_subscription",
                {
                    "subscription": update,
                    "update_mask": field_mask_pb2.FieldMask(paths=paths),
                },
            )
        except GOOGLE_ERRORS as error:
            self._fail(error, f"update subscription {name!r} ({', '.join(paths)})", queue=queue)
        logger.debug("updated %s of subscription %r", paths, name)

    def _dead_letter_permissions(self, name: str, desired: Desired, queue: str) -> None:
        """Make sure Pub/Sub's service agent may move dead letters from subscription ``name``.

        Raises:
            ConfigurationError: They are missing and could not be granted; the
                message has the gcloud commands (see :mod:`.permissions`).
        """
        target = desired.dead_letter_topic
        if target is None:
            return
        if self._permissions is None:
            logger.debug(
                "dead-letter permissions of subscription %r not checked: %s",
                name,
                "the emulator has no IAM"
                if self._settings.emulator
                else 'dead_letter_permissions="skip"',
            )
            return
        try:
            self._permissions.ensure(queue, short_name(target), name)
        except GOOGLE_ERRORS as error:
            self._fail(error, f"check the dead-letter permissions of subscription {name!r}")

    def _immutable_drift(
        self, name: str, current: types.Subscription, desired: Desired, expression: str
    ) -> ImmutableSettingError | None:
        """Return the error for a setting Pub/Sub cannot change that differs, if one does."""
        now: object
        wanted: object
        if bool(current.enable_message_ordering) != desired.ordering:
            setting = "enable_message_ordering"
            now, wanted = bool(current.enable_message_ordering), desired.ordering
        elif current.filter != expression:
            setting, now, wanted = "filter", current.filter, expression
        else:
            return None
        error = ImmutableSettingError(name, setting, now, wanted)
        error.args = (
            f"{error.args[0]}; or let the backend recreate it (recreate_subscriptions=True), "
            "which loses the messages not yet acknowledged in it",
        )
        return error

    def _recreate_subscription(
        self, name: str, desired: Desired, body: dict[str, Any], queue: str
    ) -> None:
        path = subscription_path(self._project, name)
        try:
            self._admin("subscriber", "delete_subscription", {"subscription": path})
        except api_exceptions.NotFound:
            pass
        except GOOGLE_ERRORS as error:
            self._fail(error, f"delete subscription {name!r} to recreate it", queue=queue)
        self._forget_fan_outs(queue)
        # Its IAM policy went with it: the dead-letter permissions are checked again.
        self._forget_permissions("subscription", name)
        created = self._create_subscription(name, desired, body, queue)
        if created is not None:
            self._update_subscription(name, created, desired, queue)

    def _delete_queue(self, name: str) -> None:
        if self._get_queue(name) is None:
            raise QueueNotFound(name, "nothing was deleted; check the name")
        for subscription in [*self._fan_out_names(name, fresh=True), name]:
            try:
                self._admin(
                    "subscriber",
                    "delete_subscription",
                    {"subscription": subscription_path(self._project, subscription)},
                )
            except api_exceptions.NotFound:
                pass
            except GOOGLE_ERRORS as error:
                self._fail(error, f"delete subscription {subscription!r} of queue {name!r}")
            self._forget_permissions("subscription", subscription)
        try:
            self._admin("publisher", "delete_topic", {"topic": topic_path(self._project, name)})
        except api_exceptions.NotFound:
            pass
        except GOOGLE_ERRORS as error:
            self._fail(error, f"delete the topic of queue {name!r}")
        self._forget_permissions("topic", name)
        self._forget_fan_outs(name)

    # ---------------------------------------------------------------- topics
    def _is_queue_topic(self, topic: types.Topic) -> bool:
        """Whether ``topic`` is a queue's own: labelled so, or with its name's subscription on it.

        The label marks the topics melange made for queues; a queue made by hand and
        adopted by init_queue has none, and is told by its subscription.
        """
        if topic.labels.get(ROLE_LABEL) == "queue":
            return True
        own = self._subscription(short_name(topic.name))
        return own is not None and own.topic == topic.name

    def _get_topic(self, name: str) -> TopicSpec | None:
        topic = self._topic(name)
        if topic is None or self._is_queue_topic(topic):
            return None
        return TopicSpec(name, fifo=is_fifo_name(name))

    def _declare_topic(self, spec: TopicSpec) -> None:
        try:
            self._admin("publisher", "create_topic", {"name": topic_path(self._project, spec.name)})
            logger.debug("created topic %r", spec.name)
        except api_exceptions.AlreadyExists:
            current = self._topic(spec.name)
            if current is not None and self._is_queue_topic(current):
                raise _queue_name_taken(spec.name) from None
        except GOOGLE_ERRORS as error:
            self._fail(error, f"create topic {spec.name!r}", topic=spec.name)

    def _delete_topic(self, name: str) -> None:
        if self._get_topic(name) is None:
            raise TopicNotFound(name, "nothing was deleted; check the name")
        path = topic_path(self._project, name)
        try:
            pager = self._admin("publisher", "list_topic_subscriptions", {"topic": path})
            attached = [short_name(item) for item in pager]
            self._admin("publisher", "delete_topic", {"topic": path})
        except api_exceptions.NotFound:
            raise TopicNotFound(name, "nothing was deleted; check the name") from None
        except GOOGLE_ERRORS as error:
            self._fail(error, f"delete topic {name!r}", topic=name)
        # Its fan-out subscriptions would stay detached: remove them (other ones are not ours).
        for subscription in attached:
            queue, sep, _ = subscription.partition("~")
            if not sep or fan_out_subscription(queue, name) != subscription:
                continue
            try:
                self._admin(
                    "subscriber",
                    "delete_subscription",
                    {"subscription": subscription_path(self._project, subscription)},
                )
            except api_exceptions.NotFound:
                pass
            except GOOGLE_ERRORS as error:
                self._fail(error, f"delete subscription {subscription!r} of topic {name!r}")
            self._forget_permissions("subscription", subscription)
            self._forget_fan_outs(queue)

    # --------------------------------------------------------- subscriptions
    def _get_subscription(self, topic_name: str, queue_name: str) -> SubscriptionSpec | None:
        """The queue's fan-out subscription on the topic, with its filter.

        One detached from its deleted topic, or on another topic, counts as
        missing, so init subscribes again (refusing, or recreating with
        ``recreate_subscriptions``). A changed filter is a change of filter.
        """
        name = fan_out_subscription(queue_name, topic_name)
        current = self._subscription(name)
        if current is None or current.topic != topic_path(self._project, topic_name):
            return None
        return SubscriptionSpec(topic_name, queue_name, filters.from_expression(current.filter))

    def _subscription_drift(self, spec: SubscriptionSpec) -> tuple[Change, ...]:
        """The fan-out subscription's fields that no longer hold its queue's settings.

        Ack deadline, retention, dead-letter policy, ordering, melange's label,
        no retry policy, no expiration: what ``_subscribe`` converges.
        """
        name = fan_out_subscription(spec.queue_name, spec.topic_name)
        current = self._subscription(name)
        own = self._subscription(spec.queue_name)
        if (
            current is None
            or own is None
            or own.topic != topic_path(self._project, spec.queue_name)
        ):
            return ()
        drift = Desired.of(self._project, queue_spec(spec.queue_name, own)).drift(current)
        return tuple(Change(field, "changed by hand", "as its queue's") for field in drift)

    def _queue_drift(self, spec: QueueSpec) -> tuple[Change, ...]:
        """Fields of the queue's own subscription that QueueSpec does not show (retry, expiry)."""
        own = self._subscription(spec.name)
        if own is None or own.topic != topic_path(self._project, spec.name):
            return ()
        shown = {"ack_deadline_seconds", "message_retention_duration", "dead_letter_policy"}
        drift = Desired.of(self._project, spec).drift(own)
        return tuple(
            Change(field, "changed by hand", "as declared")
            for field in drift
            if field not in shown and field != "enable_message_ordering"
        )

    def _subscribe(self, spec: SubscriptionSpec) -> None:
        topic = TopicSpec(spec.topic_name, is_fifo_name(spec.topic_name))
        queue_name = spec.queue_name
        own = self._subscription(queue_name)
        if own is None:
            raise QueueNotFound(queue_name)
        if own.topic != topic_path(self._project, queue_name):
            raise QueueNotFound(
                queue_name,
                f"its subscription {queue_name!r} is not on its topic (detached from a deleted "
                f"one?); MessagingBackendFactory.init_queue({queue_name!r}) repairs it",
            )
        current = queue_spec(queue_name, own)
        # The contract checked names and kinds; this rule depends on the queue as it is.
        self.validate_subscription(topic, current, spec)
        if self._get_topic(spec.topic_name) is None:
            raise TopicNotFound(spec.topic_name)
        desired = Desired.of(self._project, current)
        name = fan_out_subscription(queue_name, spec.topic_name)
        self._converge(
            name, spec.topic_name, desired, filters.to_expression(spec.filter), queue_name
        )
        self._forget_fan_outs(queue_name)

    def _fan_out_names(self, queue_name: str, *, fresh: bool = False) -> list[str]:
        """Return the queue's fan-out subscriptions, listed at most every refresh period."""
        now = time.monotonic()
        with self._lock:
            cached = self._fan_outs.get(queue_name)
        if cached is not None and not fresh and now < cached[0]:
            return cached[1]
        prefix = fan_out_prefix(queue_name)
        try:
            pager = self._admin(
                "subscriber", "list_subscriptions", {"project": f"projects/{self._project}"}
            )
            names = [
                short_name(item.name) for item in pager if short_name(item.name).startswith(prefix)
            ]
        except GOOGLE_ERRORS as error:
            self._fail(error, f"list the subscriptions of queue {queue_name!r}", queue=queue_name)
        with self._lock:
            self._fan_outs[queue_name] = (now + self._refresh, names)
        return names

    def _forget_fan_outs(self, queue_name: str) -> None:
        with self._lock:
            self._fan_outs.pop(queue_name, None)
            self._short_deadlines.pop(queue_name, None)

    def _forget_permissions(self, kind: ResourceKind, name: str) -> None:
        """Forget the dead-letter permissions found on a deleted (or recreated) resource."""
        if self._permissions is not None:
            self._permissions.forget(kind, name)

    # --------------------------------------------------------------- publish
    def _publish(self, kind: str, name: str, batch: list[OutgoingMessage]) -> list[PublishResult]:
        request = wire.publish_request(
            topic_path(self._project, name), [wire.to_pubsub(message) for message in batch]
        )
        return self._send(kind, name, request)

    def _send(self, kind: str, name: str, request: types.PublishRequest) -> list[PublishResult]:
        """Send one Publish request; one result per message, or raise (see :mod:`.outcomes`).

        Raises:
            OutcomeUnknown: The request may have reached Pub/Sub (no answer, a
                connection lost after sending, in this attempt or an earlier one).
            BackendUnavailable: Nothing was sent (no connection, credentials).
            QueueNotFound, TopicNotFound, InvalidMessage: Pub/Sub refused it.
        """
        attempts = Attempts()
        try:
            response = self._rpc(
                "publisher",
                "publish",
                request,
                self._timeouts.publish,
                retry(self._timeouts.publish, attempts.failed),
            )
        except api_exceptions.NotFound:
            if kind == "queue":
                raise QueueNotFound(name) from None
            raise TopicNotFound(name) from None
        except GOOGLE_ERRORS as error:
            unknown = attempts.may_have_been_stored(error)
            action = f"publish to {kind} {name!r}"
            if self.closed and not unknown:
                raise BackendClosed(self.name, action) from None
            context = ErrorContext(action, self._settings.endpoint, about_messages=True)
            raise_translated(error, context, outcome_unknown=unknown)
        ids = types.PublishResponse.pb(response).message_ids
        return [PublishResult(index, message_id) for index, message_id in enumerate(ids)]

    def _publish_batch(self, queue_name: str, batch: list[OutgoingMessage]) -> list[PublishResult]:
        return self._publish("queue", queue_name, batch)

    def _publish_topic_batch(
        self, topic_name: str, batch: list[OutgoingMessage]
    ) -> list[PublishResult]:
        return self._publish("topic", topic_name, batch)

    def _forward(
        self, queue_name: str, message: ReceivedMessage, extra_attributes: dict[str, str]
    ) -> PublishResult:
        """Send the message on as it came over the wire (see :mod:`.forwarding`).

        A copy Pub/Sub refuses comes back as a refused result; one that may
        have been stored raises OutcomeUnknown (the contract reports it).
        """
        request = forwarding.copy_request(
            topic_path(self._project, queue_name), message, extra_attributes
        )
        try:
            return self._send("queue", queue_name, request)[0]
        except InvalidMessage as refused:
            return PublishResult(0, error=refused)

    # --------------------------------------------------------------- receive
    def _short_deadline(self, queue_name: str, subscription: str) -> float | None:
        """Return the queue's visibility timeout when it is below the native ack deadline."""
        now = time.monotonic()
        with self._lock:
            cached = self._short_deadlines.get(queue_name)
        if cached is not None and now < cached[0]:
            return cached[1]
        current = self._subscription(subscription)
        if current is None:
            raise QueueNotFound(queue_name)
        value = short_deadline(current)
        with self._lock:
            self._short_deadlines[queue_name] = (now + self._refresh, value)
        return value

    def _pull(
        self, queue_name: str, subscription: str, max_messages: int, deadline: float
    ) -> list[ReceivedMessage]:
        """Pull once: Pub/Sub answers when messages are there, else when ``deadline`` runs out.

        Never with ``return_immediately``, which the service may answer empty
        while messages wait (Google deprecates it for that).
        """
        path = subscription_path(self._project, subscription)
        try:
            response = self._clients.subscriber.pull(
                request={"subscription": path, "max_messages": max_messages},
                timeout=deadline,
                retry=pull_retry(deadline),
            )
        except api_exceptions.DeadlineExceeded:
            return []  # the wait ended with nothing to pull
        except api_exceptions.NotFound:
            self._forget_fan_outs(queue_name)
            if subscription == queue_name:
                raise QueueNotFound(queue_name) from None
            return []  # a fan-out subscription was removed meanwhile
        except GOOGLE_ERRORS as error:
            self._fail(error, f"pull from queue {queue_name!r}", queue=queue_name)
        # The raw protobuf response: proto-plus wrappers cost more per field than the rest.
        items = types.PullResponse.pb(response).received_messages
        counts = self._counter.delivered_many(
            path, [item.message.message_id for item in items if not item.delivery_attempt]
        )
        received: list[ReceivedMessage] = []
        for item in items:
            message = item.message
            body, attributes, hidden = wire.from_pubsub(message.data, message.attributes)
            received.append(
                ReceivedMessage(
                    queue_name,
                    body,
                    attributes,
                    message.message_id,
                    item.delivery_attempt or counts[message.message_id],
                    message.ordering_key or None,
                    GCPReceipt(path, item.ack_id, hidden),
                )
            )
        return received

    def _receive(
        self, queue_name: str, max_messages: int, wait_seconds: float
    ) -> list[ReceivedMessage]:
        limit = min(max_messages, MAX_PULL)
        subscriptions = [queue_name, *self._fan_out_names(queue_name)]
        if len(subscriptions) > 1:
            with self._lock:  # a different one first each call, so that none starves
                self._rotation += 1
                start = self._rotation % len(subscriptions)
            subscriptions = subscriptions[start:] + subscriptions[:start]
        received = self._pull_within(queue_name, subscriptions, limit, wait_seconds)
        if received:
            short = self._short_deadline(queue_name, queue_name)
            if short is not None:
                # Pub/Sub's ack deadline is 10 s at least; a shorter timeout is applied here.
                self._modify(received, short, "apply the visibility timeout of")
        return received

    def _pull_within(
        self, queue_name: str, subscriptions: list[str], limit: int, wait: float
    ) -> list[ReceivedMessage]:
        """Pull the subscriptions in turn until one gives messages or ``wait`` is over.

        Each pull waits on the server: one subscription for the whole wait,
        several for at most :data:`PULL_TURN` each, so that messages waiting in
        any of them are found within a round. The first round pulls every
        subscription, sharing the wait but each for at least :data:`MIN_PULL`,
        so a receive ends within ``max(wait, MIN_PULL * subscriptions)``.
        """
        ends = time.monotonic() + wait
        count = len(subscriptions)
        turn = PULL_TURN if count > 1 else math.inf
        first: float | None = min(max(wait / count, MIN_PULL), turn)  # each pull of round one
        while True:
            started = time.monotonic()
            for subscription in subscriptions:
                remaining = ends - time.monotonic()
                if first is None and remaining <= 0:
                    return []
                deadline = first if first is not None else min(remaining, turn)
                received = self._pull(queue_name, subscription, limit, deadline)
                if received:
                    return received
            first = None
            remaining = ends - time.monotonic()
            if remaining <= 0:
                return []
            pause = POLL_INTERVAL - (time.monotonic() - started)
            if pause > 0:  # the emulator answers short pulls at once: do not spin
                time.sleep(min(pause, remaining))

    # ---------------------------------------------------------------- settle
    def _modify(self, messages: list[ReceivedMessage], seconds: float, operation: str) -> None:
        """Set the ack deadline of deliveries to ``seconds`` from now (0 releases them)."""
        deadline = min(math.ceil(seconds), MAX_ACK_DEADLINE)
        for path, ack_ids in receipts.by_subscription(messages).items():
            for chunk in receipts.chunks(ack_ids):
                try:
                    self._rpc(
                        "subscriber",
                        "modify_ack_deadline",
                        {"subscription": path, "ack_ids": chunk, "ack_deadline_seconds": deadline},
                        self._timeouts.ack,
                        self._ack_retry,
                    )
                except api_exceptions.NotFound:
                    continue  # the subscription is gone, and its messages with it
                except GOOGLE_ERRORS as error:
                    queue = messages[0].queue_name
                    self._fail(error, f"{operation} messages of queue {queue!r}", queue=queue)

    def _ack(self, messages: list[ReceivedMessage]) -> None:
        for path, ack_ids in receipts.by_subscription(messages).items():
            for chunk in receipts.chunks(ack_ids):
                try:
                    self._rpc(
                        "subscriber",
                        "acknowledge",
                        {"subscription": path, "ack_ids": chunk},
                        self._timeouts.ack,
                        self._ack_retry,
                    )
                except api_exceptions.NotFound:
                    continue  # the subscription is gone, and its messages with it
                except GOOGLE_ERRORS as error:
                    queue = messages[0].queue_name
                    self._fail(error, f"acknowledge messages of queue {queue!r}", queue=queue)
        self._counter.settled_many(messages)

    def _nack(self, messages: list[ReceivedMessage], delay_seconds: float) -> None:
        self._modify(messages, delay_seconds, "release")

    def _extend_lease(self, messages: list[ReceivedMessage], seconds: float) -> None:
        # Whole seconds, rounded up: the lease lasts at least as long as asked.
        self._modify(messages, seconds, "extend the lease of")

    def _close(self) -> None:
        self._clients.close()


def _topic_name_taken(name: str) -> InvalidTopology:
    return InvalidTopology(
        f"{name!r} exists as a topic; on Pub/Sub a queue is a topic plus a "
        "subscription of the same name, so a queue cannot take a topic's name. "
        "Choose another queue name"
    )


def _queue_name_taken(name: str) -> InvalidTopology:
    return InvalidTopology(
        f"{name!r} is a queue; on Pub/Sub a queue is a topic of the same "
        "name, so a topic cannot take a queue's name. Choose another topic name"
    )


class _BackendIam:
    """GetIamPolicy and SetIamPolicy of topics and subscriptions through the backend's clients."""

    def __init__(self, backend: GCPPubSubBackend) -> None:
        self._backend = backend

    def _where(
        self, kind: ResourceKind, name: str
    ) -> tuple[Literal["publisher", "subscriber"], str]:
        project = self._backend.project
        if kind == "topic":
            return "publisher", topic_path(project, name)
        return "subscriber", subscription_path(project, name)

    def get_policy(self, kind: ResourceKind, name: str) -> Any:
        service, path = self._where(kind, name)
        # Version 3, so that conditional bindings are shown (and kept when written back).
        request = {"resource": path, "options": {"requested_policy_version": 3}}
        return self._backend._admin(service, "get_iam_policy", request)

    def set_policy(self, kind: ResourceKind, name: str, policy: Any) -> Any:
        service, path = self._where(kind, name)
        backend = self._backend
        # Not retried: a write with a stale etag must be read again, not sent again.
        return backend._rpc(
            service,
            "set_iam_policy",
            {"resource": path, "policy": policy},
            backend.timeouts.admin,
            None,
        )
