"""The backend contract every broker plugin implements.

A backend subclasses :class:`MessagingBackend`, declares what it can do in a
:class:`Capabilities` value, and implements the underscored hooks
(``_get_queue``, ``_publish_batch``, ...). The public methods around those hooks
are written once here, so every backend behaves the same at the edges: use
after :meth:`~MessagingBackend.close` fails clearly, messages are validated
(size, attributes, capabilities) before anything is sent, and batches are split
into the broker's limits.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from melange.backends import topology_rules
from melange.exceptions import (
    BackendClosed,
    BackendUnavailable,
    ConfigurationError,
    InvalidArgument,
    InvalidMessage,
    MelangeError,
    MessageTooLarge,
    OutcomeUnknown,
    RemovedIn8,
    UnsupportedCapability,
    require_number,
    require_str,
)
from melange.topology import (
    DEFAULT_MAX_RECEIVE_COUNT,
    Action,
    Change,
    NameRule,
    QueueSpec,
    SubscriptionSpec,
    TopicSpec,
    is_fifo_name,
)

_T = TypeVar("_T")
_B = TypeVar("_B", bound="MessagingBackend")


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, declared as data.

    The factory refuses a request that needs a capability the backend lacks,
    and the conformance suite skips tests by capability.

    Attributes:
        topics: Topics with fan-out to subscribed queues.
        dead_letter: Dead-letter queues after a maximum receive count.
        fifo: FIFO queues with per-group order (``group_id``).
        dedup: Deduplication by ``dedup_id`` within a window.
        delay: Delayed delivery, per queue and per message.
        batch: The broker accepts several messages in one publish call.
        lease_extension: A receiver can extend a message's visibility.
        nack_delay: A receiver can release a message, optionally after a delay.
        filters: Subscriptions filtered by message attributes.
        max_message_size: Bytes of body plus attributes one message may have.
        max_batch_size: Messages per native publish call.
        max_batch_bytes: Bytes per native publish call, if limited.
        max_attributes: Attributes per message, if limited.
        max_delay: Longest delay in seconds.
        max_visibility_timeout: Longest visibility timeout (and lease) in seconds.
        max_receive_count_range: Allowed ``max_receive_count`` values, inclusive.
        retention_range: Allowed ``message_retention_period`` in seconds, inclusive.
        max_wait_seconds: Longest long-poll wait of one receive call.
        immutable_queue_settings: Queue settings the broker cannot change after creation.
        dead_letter_any_kind: A dead-letter queue may be of the other kind (FIFO or
            standard) than its queue; by default it must be of the same kind.
        case_insensitive_names: Queue names compare case-insensitively, so
            ``"Orders"`` is also the own dead-letter queue of ``"orders"``.
    """

    topics: bool = False
    dead_letter: bool = False
    fifo: bool = False
    dedup: bool = False
    delay: bool = False
    batch: bool = False
    lease_extension: bool = False
    nack_delay: bool = False
    filters: bool = False
    max_message_size: int = 256 * 1024
    max_batch_size: int = 10
    max_batch_bytes: int | None = None
    max_attributes: int | None = None
    max_delay: float = 900.0
    max_visibility_timeout: float = 12 * 3600.0
    max_receive_count_range: tuple[int, int] = (1, 1000)
    retention_range: tuple[float, float] = (60.0, 14 * 24 * 3600.0)
    max_wait_seconds: float = 20.0
    immutable_queue_settings: frozenset[str] = frozenset({"fifo"})
    dead_letter_any_kind: bool = False
    case_insensitive_names: bool = False

    FEATURES = (
        "topics",
        "dead_letter",
        "fifo",
        "dedup",
        "delay",
        "batch",
        "lease_extension",
        "nack_delay",
        "filters",
    )

    def supported(self) -> list[str]:
        """Return the names of the features this backend supports."""
        return [name for name in self.FEATURES if getattr(self, name)]


@dataclass(frozen=True)
class OutgoingMessage:
    """A message to publish, already serialized.

    Attributes:
        body: The payload bytes.
        attributes: String key/value metadata delivered with the message.
        group_id: The FIFO message group; order is kept within a group.
        dedup_id: Messages with the same id within the dedup window are delivered once.
        delay_seconds: Seconds before the message can be received.
    """

    body: bytes
    attributes: Mapping[str, str] = field(default_factory=dict)
    group_id: str | None = None
    dedup_id: str | None = None
    delay_seconds: float = 0.0

    @property
    def size(self) -> int:
        """Bytes counted against the size limit: body plus attribute names and values."""
        return len(self.body) + sum(
            len(k.encode()) + len(v.encode()) for k, v in self.attributes.items()
        )


PublishStatus = Literal["accepted", "refused", "unknown"]
"""The three outcomes of publishing one message (see :attr:`PublishResult.status`)."""


@dataclass(slots=True)  # not frozen: frozen dataclasses cost ~0.4 us each on the hot path
class PublishResult:
    """The outcome of publishing one message of a batch (treat as read-only).

    Its :attr:`status` is one of three:

    - ``"accepted"``: the broker stored the message (``message_id`` is its id);
    - ``"refused"``: the message was not stored (the broker refused it, or it was
      never sent); ``error`` says why. Publishing it again makes no duplicate;
    - ``"unknown"``: the request was sent but no answer came (``error`` is an
      :class:`~melange.exceptions.OutcomeUnknown`): the message may have been
      stored. Publishing it again may make a duplicate, which a consumer with a
      deduplication cache handles once (it keys on the producer id).

    Attributes:
        index: The message's position in the batch that was passed in.
        message_id: The broker's id for the message, when it was accepted.
        error: Why the message was refused, or why its outcome is unknown.
    """

    index: int
    message_id: str | None = None
    error: MelangeError | None = None

    @property
    def ok(self) -> bool:
        """Whether the broker accepted the message."""
        return self.error is None

    @property
    def status(self) -> PublishStatus:
        """``"accepted"``, ``"refused"`` or ``"unknown"``, as described above."""
        if self.error is None:
            return "accepted"
        return "unknown" if isinstance(self.error, OutcomeUnknown) else "refused"


@dataclass(slots=True)  # not frozen: one is built per delivery, frozen costs ~0.8 us each
class ReceivedMessage:
    """A message handed to a receiver (treat as read-only); settle it through the backend.

    Attributes:
        queue_name: The queue it was received from.
        body: The payload bytes.
        attributes: The message's attributes.
        message_id: The broker's id, stable across redeliveries.
        receive_count: How many times it has been received, this time included.
        group_id: Its FIFO group, if any.
        receipt: Opaque token the backend needs to settle this delivery.
    """

    queue_name: str
    body: bytes
    attributes: Mapping[str, str]
    message_id: str
    receive_count: int
    group_id: str | None = None
    receipt: Any = field(default=None, repr=False, compare=False)


_METHODS_7X = {
    "retrieve_messages": "backend.receive(queue_name, max_messages, wait_seconds), or a "
    "MessageDispatcher",
    "yield_messages": "a MessageDispatcher (or a loop over backend.receive(queue_name, ...))",
    "publish_to_queue": "QueuePublisher(backend).publish(queue_name, payload)",
    "acknowledge": "backend.ack([received_message]) (a MessageDispatcher acknowledges for you)",
    "close_connection": "backend.close()",
}
"""Methods only a melange 7.x backend had, and what replaces each in melange 8."""


class MessagingBackend(abc.ABC):
    """The contract between melange and a message broker.

    Subclasses set :attr:`name` and :attr:`capabilities` and implement the
    abstract hooks; optional hooks (topics, nack, lease extension) need only be
    implemented when the matching capability is declared.

    A backend is thread-safe: the factory and the consumer runtime call it from
    several threads.
    """

    name: str = "unnamed"
    """The short name the backend is registered under (``"memory"``, ``"aws"``)."""

    capabilities: Capabilities = Capabilities()
    """What the backend can do. An instance may narrow or widen its class's value."""

    queue_name_rule: NameRule = NameRule()
    """Naming rule for queues, checked before any call."""

    topic_name_rule: NameRule = NameRule()
    """Naming rule for topics, checked before any call."""

    broker_label: str = ""
    """The broker as error messages name it (``"SQS"``); the backend's name when empty."""

    receive_count_setting: str = "max_receive_count"
    """The broker's own name for ``max_receive_count``, so a message maps one to the other."""

    calls_block: bool = True
    """Whether ``receive`` and ``ack`` may wait for I/O (a round trip, a file, a remote lock).

    ``False`` promises that ``receive`` with ``wait_seconds=0`` and ``ack`` are work in this
    process that returns at once, as the ``memory`` backend's are: the asyncio dispatcher then
    makes those calls on its event loop instead of in its thread pool (a trip there and back
    costs more than the call). Leave it ``True`` for any broker reached over a connection.
    """

    @property
    def default_max_receive_count(self) -> int:
        """Receives before dead-lettering when ``init_queue`` is not told; melange's default.

        A backend may differ (the SQS backends use melange 7.x's 4 while
        ``compatible_with_7x`` is on).
        """
        return DEFAULT_MAX_RECEIVE_COUNT

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A backend written for melange 7.x would only fail when instantiated, with
        # Python's "abstract methods" error; say what changed when it is defined.
        seven_x = [name for name in _METHODS_7X if name in cls.__dict__]
        if seven_x and not any(hook in cls.__dict__ for hook in ("_receive", "_publish_batch")):
            raise ConfigurationError(
                f"{cls.__qualname__} implements melange 7.x's backend interface "
                f"({', '.join(seven_x)}), which melange 8 cannot run: subclass "
                "melange.backends.MessagingBackend and implement melange 8's contract "
                "(_get_queue, _declare_queue, _publish_batch, _receive, _ack, ...); the guide "
                "is docs/writing-a-backend.md, and melange.testing.conformance checks the result"
            )

    def __getattr__(self, name: str) -> Any:
        replacement = _METHODS_7X.get(name)
        if replacement is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        raise RemovedIn8(
            f"backend.{name}() is melange 7.x's backend interface, which melange 8 replaced: "
            f"use {replacement}"
        )

    def __init__(self) -> None:
        self._closed = False
        self._close_lock = threading.Lock()

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<{type(self).__name__} {self.name!r}{state}>"

    def __enter__(self: _B) -> _B:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ----------------------------------------------------------------- checks
    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    def _call(self, operation: str, hook: Callable[..., _T], *args: Any) -> _T:
        self._refuse_if_closed(operation)
        return hook(*args)

    def _refuse_if_closed(self, operation: str) -> None:
        if self._closed:
            raise BackendClosed(self.name, operation)

    def require(self, capability: str, what: str) -> None:
        """Raise :class:`UnsupportedCapability` unless ``capability`` is declared.

        Args:
            capability: A :class:`Capabilities` feature name.
            what: What needs it, for the message.
        """
        if not getattr(self.capabilities, capability):
            raise UnsupportedCapability(self.name, capability, what)

    def check_queue(self, spec: QueueSpec) -> None:
        """Raise the specific error if ``spec`` cannot be declared on this backend.

        The one place of the topology rules for a queue, called by
        :meth:`declare_queue` and by the factory before anything is created: the
        capabilities it needs, the ranges of its settings, the dead-letter rules
        every broker shares (not its own dead-letter queue, of the same kind unless
        ``capabilities.dead_letter_any_kind``, ``max_receive_count`` in range), then
        :meth:`validate_queue` for the broker's own rules. Backends do not
        override it: they declare data and extend :meth:`validate_queue`.

        Raises:
            InvalidArgument: ``spec`` or one of its fields has the wrong type.
            InvalidTopology: A rule is broken (:class:`~melange.exceptions.InvalidName`
                for names).
            UnsupportedCapability: The queue needs a capability the backend lacks.
        """
        topology_rules.check_queue(self, spec)

    def check_topic(self, spec: TopicSpec) -> None:
        """Raise the specific error if the topic ``spec`` cannot be declared (as check_queue)."""
        topology_rules.check_topic(self, spec)

    def check_subscription(
        self,
        spec: SubscriptionSpec,
        topic: TopicSpec | None = None,
        queue: QueueSpec | None = None,
    ) -> None:
        """Raise the specific error if the subscription ``spec`` cannot be made.

        Args:
            spec: The subscription.
            topic: The topic as declared, if known (else inferred from its name).
            queue: The queue as declared, if known (else inferred from its name).
        """
        topology_rules.check_subscription(self, spec, topic, queue)

    def validate_queue(self, spec: QueueSpec) -> None:
        """Raise :class:`~melange.exceptions.InvalidTopology` if the broker would refuse ``spec``.

        A hook for the broker's own rules, called by :meth:`check_queue` after the
        shared ones. The default checks the name rule; backends extend it.
        """
        self.queue_name_rule.check("queue", spec.name, spec.fifo)

    def validate_topic(self, spec: TopicSpec) -> None:
        """Raise :class:`~melange.exceptions.InvalidTopology` if the broker refuses ``spec``."""
        self.topic_name_rule.check("topic", spec.name, spec.fifo)

    def validate_subscription(  # noqa: B027 - optional hook: most brokers accept every pair
        self, topic: TopicSpec, queue: QueueSpec, subscription: SubscriptionSpec
    ) -> None:
        """Raise :class:`~melange.exceptions.InvalidTopology` if the broker refuses it.

        The default accepts every subscription; e.g. SNS refuses a FIFO queue on a
        standard topic, and limits the size of filter policies.

        Args:
            topic: The topic subscribed to.
            queue: The subscribing queue.
            subscription: The subscription itself, with its filter.
        """

    def validate_batch(  # noqa: B027 - optional hook: most brokers accept what validate_message did
        self, destination: Literal["queue", "topic"], name: str, batch: Sequence[OutgoingMessage]
    ) -> None:
        """Raise a MelangeError if the broker would refuse ``batch`` at this destination.

        Called by :meth:`publish` and :meth:`publish_to_topic` after every message
        passed :meth:`validate_message` and before anything is sent, for rules that
        depend on where messages go (e.g. no per-message delay on a FIFO queue).

        Args:
            destination: ``"queue"`` or ``"topic"``.
            name: The queue or topic name.
            batch: Every message of the call.
        """

    # --------------------------------------------------------------- topology
    def get_queue(self, name: str) -> QueueSpec | None:
        """Return the queue's current state, or ``None`` if it does not exist."""
        return self._call("get a queue", self._get_queue, require_str("name", name))

    def declare_queue(self, spec: QueueSpec) -> None:
        """Create the queue, or set an existing one's mutable settings to ``spec``.

        ``spec`` is checked first (:meth:`check_queue`): an invalid one creates nothing.
        """
        self.check_queue(spec)
        self._call("declare a queue", self._declare_queue, spec)

    def delete_queue(self, name: str) -> None:
        """Delete the queue and its messages; raise QueueNotFound if it does not exist."""
        self._call("delete a queue", self._delete_queue, require_str("name", name))

    def get_topic(self, name: str) -> TopicSpec | None:
        """Return the topic's current state, or ``None`` if it does not exist."""
        self.require("topics", "topics")
        return self._call("get a topic", self._get_topic, require_str("name", name))

    def declare_topic(self, spec: TopicSpec) -> None:
        """Create the topic if it does not exist (idempotent); ``spec`` is checked first."""
        self.check_topic(spec)
        self._call("declare a topic", self._declare_topic, spec)

    def delete_topic(self, name: str) -> None:
        """Delete the topic and its subscriptions; raise TopicNotFound if it does not exist."""
        self.require("topics", "topics")
        self._call("delete a topic", self._delete_topic, require_str("name", name))

    def get_subscription(self, topic_name: str, queue_name: str) -> SubscriptionSpec | None:
        """Return the subscription of ``queue_name`` to ``topic_name``, or ``None``."""
        self.require("topics", "subscriptions")
        return self._call("get a subscription", self._get_subscription, topic_name, queue_name)

    def queue_drift(self, spec: QueueSpec) -> tuple[Change, ...]:
        """Return what differs from ``spec`` in settings :class:`QueueSpec` does not model.

        Read-only. Some brokers keep part of a queue's declared state on other
        resources the queue owns (SQS: the dead-letter queue's redrive allow
        policy; Pub/Sub: the fan-out subscriptions' settings). When one was
        changed by hand, the factory plans an ``update_queue`` with these
        changes, and :meth:`declare_queue` must put them back.

        Args:
            spec: The queue as declared (it exists).
        """
        return self._call("inspect a queue", self._queue_drift, spec)

    def subscription_drift(self, spec: SubscriptionSpec) -> tuple[Change, ...]:
        """Return what differs from ``spec`` in subscription settings the contract does not model.

        Read-only, like :meth:`queue_drift` (SNS: raw message delivery, the filter
        policy's scope, the queue policy admitting the topic); the factory plans an
        ``update_subscription``, and :meth:`subscribe` must put them back.

        Args:
            spec: The subscription as declared (it exists).
        """
        return self._call("inspect a subscription", self._subscription_drift, spec)

    def check_plan(self, actions: Sequence[Action]) -> None:
        """Raise what the broker would refuse in ``actions``, before any of them is applied.

        Read-only. The factory calls it with a whole plan before it applies the
        first action (and when it plans), so that a refusal that depends on the
        broker's current state (a setting the broker cannot change on a resource
        a later action touches, a name another kind of resource holds) leaves
        the broker as it was, rather than stopping half way through the plan.
        Each action is still checked again when it is applied.

        Args:
            actions: The plan's actions, in the order they will be applied.

        Raises:
            ImmutableSettingError: An action would change what the broker cannot.
            InvalidTopology: An action conflicts with what exists.
        """
        self._call("check a plan", self._check_plan, tuple(actions))

    def subscribe(self, spec: SubscriptionSpec) -> None:
        """Subscribe the queue to the topic, or set an existing subscription's filter.

        ``spec`` is checked first (:meth:`check_subscription`, with the topic's and
        the queue's kind inferred from their names).
        """
        self.check_subscription(spec)
        self._call("subscribe", self._subscribe, spec)

    # ------------------------------------------------------------------- data
    def publish(self, queue_name: str, messages: Sequence[OutgoingMessage]) -> list[PublishResult]:
        """Publish messages to a queue, returning one result per message in order.

        The whole batch is validated before anything is sent; it is split into
        the broker's batch limits.

        Raises:
            MessageTooLarge: A message exceeds ``capabilities.max_message_size``.
            InvalidMessage: A message is malformed.
            UnsupportedCapability: A message uses a group id, dedup id or delay
                the backend cannot honour.
            QueueNotFound: The queue does not exist.
        """
        return self._publish_all("queue", queue_name, messages, self._publish_batch)

    def publish_to_topic(
        self, topic_name: str, messages: Sequence[OutgoingMessage]
    ) -> list[PublishResult]:
        """Publish messages to a topic; every subscribed queue whose filter matches gets a copy.

        Same validation and batching as :meth:`publish`.
        """
        self.require("topics", "publishing to a topic")
        return self._publish_all("topic", topic_name, messages, self._publish_topic_batch)

    def receive(
        self, queue_name: str, max_messages: int = 10, wait_seconds: float = 0.0
    ) -> list[ReceivedMessage]:
        """Receive up to ``max_messages``, waiting up to ``wait_seconds`` for the first.

        Each returned message is invisible to other receivers until it is acked,
        nacked, or its visibility timeout passes.
        """
        if type(queue_name) is not str:  # exact type test: this is the hot path
            require_str("queue_name", queue_name)
        if type(max_messages) is not int:
            raise InvalidArgument("max_messages", "a whole number", max_messages)
        if max_messages < 1:
            raise InvalidMessage(f"max_messages must be at least 1, got {max_messages}")
        wait = min(
            max(require_number("wait_seconds", wait_seconds), 0.0),
            self.capabilities.max_wait_seconds,
        )
        if self._closed:  # inlined rather than self._call(): receive and ack are the hot path
            raise BackendClosed(self.name, "receive")
        return self._receive(queue_name, max_messages, wait)

    def ack(self, messages: Sequence[ReceivedMessage]) -> None:
        """Acknowledge messages: they are removed and never redelivered."""
        if self._closed:  # an empty batch too: every call after close() fails alike
            raise BackendClosed(self.name, "acknowledge")
        if messages:
            self._ack(list(messages))

    def nack(self, messages: Sequence[ReceivedMessage], delay_seconds: float = 0.0) -> None:
        """Release messages for redelivery after ``delay_seconds`` (0 = at once)."""
        self._refuse_if_closed("negatively acknowledge")
        self.require("nack_delay", "negative acknowledgement")
        self._check_duration(
            "delay_seconds", delay_seconds, self.capabilities.max_visibility_timeout
        )
        if messages:
            self._call("negatively acknowledge", self._nack, list(messages), delay_seconds)

    def extend_lease(self, messages: Sequence[ReceivedMessage], seconds: float) -> None:
        """Keep messages invisible to other receivers for ``seconds`` from now."""
        self._refuse_if_closed("extend a lease")
        self.require("lease_extension", "lease extension")
        self._check_duration("seconds", seconds, self.capabilities.max_visibility_timeout)
        if messages:
            self._call("extend a lease", self._extend_lease, list(messages), seconds)

    def forward(
        self,
        message: ReceivedMessage,
        queue_name: str,
        *,
        extra_attributes: Mapping[str, str] | None = None,
    ) -> PublishResult:
        """Send a copy of a received message, exactly as it was received, to another queue.

        For dead-lettering and redrive. The copy has the original body bytes,
        attributes and group id, whatever produced the message: melange's
        publish checks (its size and attribute limits, reserved names) do not
        apply, only the broker's own limits. ``extra_attributes`` (e.g. why the
        message is dead-lettered) are added only where the broker has room for
        them, never in place of an original attribute. The original stays where
        it is: acknowledge it once the copy is accepted.

        Args:
            message: A message this backend received.
            queue_name: The queue to send the copy to.
            extra_attributes: Attributes to add where they fit.

        Returns:
            The copy's result: accepted, refused (the broker cannot take it, e.g.
            it is over the target queue's limits) or unknown.

        Raises:
            InvalidArgument: ``message`` is not a ReceivedMessage, or a name or
                attribute is not a string.
            QueueNotFound: The target queue does not exist.
        """
        if not isinstance(message, ReceivedMessage):
            raise InvalidArgument("message", "a ReceivedMessage", message)
        require_str("queue_name", queue_name)
        extras = dict(extra_attributes or {})
        for key, value in extras.items():
            require_str("extra attribute name", key)
            if not isinstance(value, str):
                raise InvalidArgument(f"extra attribute {key!r}", "a string", value)
        try:
            return self._call("forward a message", self._forward, queue_name, message, extras)
        except OutcomeUnknown as unknown:
            return PublishResult(0, error=unknown)

    def move_all(
        self,
        source: str,
        target: str,
        *,
        on_progress: Callable[[int], None] | None = None,
    ) -> int | None:
        """Move every message of ``source`` to ``target`` with the broker's own operation.

        The native fast path of :func:`melange.deadletter.redrive`, which calls
        it only when asked to move a whole dead-letter queue (no
        ``max_messages``, not ``dry_run``), once it has checked that ``source``
        is a queue's dead-letter queue and that ``target`` exists and is of
        the same kind (FIFO or standard). Backends without such an operation
        return ``None`` (the default), and the redrive takes the generic
        receive-forward-ack path.

        Args:
            source: The dead-letter queue to empty.
            target: The queue to move its messages to.
            on_progress: Called with the number moved so far, as the broker reports it.

        Returns:
            How many messages were moved (the broker's count, which may be
            approximate), or ``None`` when there is no native path here and
            nothing was moved.

        Raises:
            MelangeError: The move could not finish; the messages not moved are
                still in ``source``.
        """
        require_str("source", source)
        require_str("target", target)
        return self._call("move messages", self._move_all, source, target, on_progress)

    def close(self) -> None:
        """Release connections and resources. Idempotent; later calls fail with BackendClosed."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._close()

    # ----------------------------------------------------------- validation
    @staticmethod
    def _check_duration(label: str, value: float, limit: float) -> None:
        if not 0 <= require_number(label, value) <= limit:
            raise InvalidMessage(f"{label} must be between 0 and {limit:g} seconds, got {value!r}")

    def validate_message(self, message: OutgoingMessage) -> int:
        """Raise the specific MelangeError if ``message`` cannot be sent as it is.

        Returns:
            The message's size in bytes, as counted against the limits.
        """
        caps = self.capabilities
        if not isinstance(message, OutgoingMessage):
            hint = (
                "publish serialized messages: OutgoingMessage(body_bytes, attributes), or use "
                "QueuePublisher/TopicPublisher for objects"
            )
            raise InvalidArgument("each message", "an OutgoingMessage", message, hint)
        if not isinstance(message.body, (bytes, bytearray)):
            raise InvalidMessage(
                f"message body must be bytes, got {type(message.body).__name__}; "
                "serialize it first (melange.serializers) or encode the string"
            )
        for key, value in message.attributes.items():
            if not isinstance(key, str) or not key or not isinstance(value, str):
                raise InvalidMessage(
                    f"attribute {key!r}={value!r} is invalid: names must be non-empty strings "
                    "and values strings; convert numbers with str()"
                )
        if caps.max_attributes is not None and len(message.attributes) > caps.max_attributes:
            raise InvalidMessage(
                f"message has {len(message.attributes)} attributes; backend {self.name!r} "
                f"allows at most {caps.max_attributes}"
            )
        size = message.size
        if size > caps.max_message_size:
            raise MessageTooLarge(size, caps.max_message_size, self.name)
        if message.group_id is not None:
            self.require("fifo", "a message group id")
        if message.dedup_id is not None:
            self.require("dedup", "a message deduplication id")
        if message.delay_seconds:
            require_number("delay_seconds", message.delay_seconds)
            self.require("delay", "a message delay")
            self._check_duration("delay_seconds", message.delay_seconds, caps.max_delay)
        return size

    def _publish_all(
        self,
        kind: Literal["queue", "topic"],
        destination: str,
        messages: Sequence[OutgoingMessage],
        hook: Callable[[str, list[OutgoingMessage]], list[PublishResult]],
    ) -> list[PublishResult]:
        if hasattr(destination, "serializer_id"):  # 7.x's (message, queue_or_topic) order
            publisher = "QueuePublisher" if kind == "queue" else "TopicPublisher"
            raise InvalidArgument(
                f"{kind}_name",
                "a string",
                destination,
                f"that is melange 7.x's call; publish with {publisher}(backend).publish("
                f"{kind}_name, payload)",
            )
        require_str(f"{kind}_name", destination)
        if isinstance(messages, (OutgoingMessage, str, bytes, bytearray)) or not isinstance(
            messages, Sequence
        ):
            raise InvalidArgument(
                "messages", "a list of OutgoingMessage", messages, "wrap one message in a list"
            )
        batch = list(messages)
        sizes = [self.validate_message(message) for message in batch]
        self.validate_batch(kind, destination, batch)
        operation = "publish" if kind == "queue" else "publish to a topic"
        caps = self.capabilities
        fits = caps.max_batch_bytes is None or sum(sizes) <= caps.max_batch_bytes
        if self._closed:
            raise BackendClosed(self.name, operation)
        if len(batch) <= caps.max_batch_size and fits:  # the common case: one native call
            try:
                return hook(destination, batch)
            except OutcomeUnknown as unknown:  # sent, no answer: report, do not raise
                return [PublishResult(index, error=unknown) for index in range(len(batch))]
        return self._publish_chunks(operation, destination, batch, sizes, hook)

    def _publish_chunks(
        self,
        operation: str,
        destination: str,
        batch: list[OutgoingMessage],
        sizes: list[int],
        hook: Callable[[str, list[OutgoingMessage]], list[PublishResult]],
    ) -> list[PublishResult]:
        """Send ``batch`` in native chunks; never let a later chunk's error hide earlier results.

        An error before anything was sent is raised. After that, a chunk whose
        call raised is reported per message (unknown when the request may have
        reached the broker, refused otherwise) and the chunks after it are not
        sent: they are refused with an error saying so, and can be sent again.
        """
        results: list[PublishResult] = []
        for offset, chunk in self._chunks(batch, sizes):
            try:
                chunk_results = self._call(operation, hook, destination, chunk)
            except MelangeError as error:
                if not results and not isinstance(error, OutcomeUnknown):
                    raise  # nothing was sent: the call fails as a whole
                failed = [PublishResult(offset + i, error=error) for i in range(len(chunk))]
                return results + failed + self._not_sent(batch, offset + len(chunk), error)
            if offset:  # hooks number results within their chunk
                for result in chunk_results:
                    result.index += offset
            results.extend(chunk_results)
        return results

    def _not_sent(
        self, batch: list[OutgoingMessage], start: int, cause: MelangeError
    ) -> list[PublishResult]:
        """Refused results for ``batch[start:]``, held back after an earlier chunk failed."""
        if start >= len(batch):
            return []
        error = BackendUnavailable(
            f"not sent: an earlier part of the same publish call failed ({type(cause).__name__}); "
            "these messages were never sent, so publishing them again makes no duplicate"
        )
        error.__cause__ = cause
        return [PublishResult(index, error=error) for index in range(start, len(batch))]

    def _chunks(
        self, batch: list[OutgoingMessage], sizes: list[int]
    ) -> Iterator[tuple[int, list[OutgoingMessage]]]:
        """Split ``batch`` by the broker's count and byte limits, keeping order."""
        caps = self.capabilities
        start, total, chunk = 0, 0, []  # type: tuple[int, int, list[OutgoingMessage]]
        for index, (message, size) in enumerate(zip(batch, sizes, strict=True)):
            too_many = len(chunk) >= caps.max_batch_size
            too_big = caps.max_batch_bytes is not None and total + size > caps.max_batch_bytes
            if chunk and (too_many or too_big):
                yield start, chunk
                start, total, chunk = index, 0, []
            chunk.append(message)
            total += size
        if chunk:
            yield start, chunk

    # ------------------------------------------------------------------ hooks
    @abc.abstractmethod
    def _get_queue(self, name: str) -> QueueSpec | None:
        """Return the current state of the queue, or ``None``."""

    @abc.abstractmethod
    def _declare_queue(self, spec: QueueSpec) -> None:
        """Create the queue or bring its mutable settings to ``spec``; safe under races."""

    @abc.abstractmethod
    def _delete_queue(self, name: str) -> None:
        """Delete the queue; raise QueueNotFound if it does not exist."""

    def _get_topic(self, name: str) -> TopicSpec | None:
        raise UnsupportedCapability(self.name, "topics", "topics")

    def _declare_topic(self, spec: TopicSpec) -> None:
        raise UnsupportedCapability(self.name, "topics", "topics")

    def _delete_topic(self, name: str) -> None:
        raise UnsupportedCapability(self.name, "topics", "topics")

    def _get_subscription(self, topic_name: str, queue_name: str) -> SubscriptionSpec | None:
        raise UnsupportedCapability(self.name, "topics", "subscriptions")

    def _subscribe(self, spec: SubscriptionSpec) -> None:
        raise UnsupportedCapability(self.name, "topics", "subscriptions")

    def _check_plan(self, actions: tuple[Action, ...]) -> None:  # noqa: B027 - optional hook
        """Hook of :meth:`check_plan`; the default finds nothing beyond the factory's own diff."""

    def _queue_drift(self, spec: QueueSpec) -> tuple[Change, ...]:
        return ()  # every setting the backend manages is in QueueSpec

    def _subscription_drift(self, spec: SubscriptionSpec) -> tuple[Change, ...]:
        return ()  # every setting the backend manages is in SubscriptionSpec

    @abc.abstractmethod
    def _publish_batch(self, queue_name: str, batch: list[OutgoingMessage]) -> list[PublishResult]:
        """Send one chunk (within the batch limits) to a queue; one result per message.

        ``PublishResult.index`` is the position within ``batch``.
        """

    def _publish_topic_batch(
        self, topic_name: str, batch: list[OutgoingMessage]
    ) -> list[PublishResult]:
        raise UnsupportedCapability(self.name, "topics", "publishing to a topic")

    @abc.abstractmethod
    def _receive(
        self, queue_name: str, max_messages: int, wait_seconds: float
    ) -> list[ReceivedMessage]:
        """Receive up to ``max_messages``; ``wait_seconds`` is already clamped."""

    @abc.abstractmethod
    def _ack(self, messages: list[ReceivedMessage]) -> None:
        """Remove the messages for good."""

    def _nack(self, messages: list[ReceivedMessage], delay_seconds: float) -> None:
        raise UnsupportedCapability(self.name, "nack_delay", "negative acknowledgement")

    def _extend_lease(self, messages: list[ReceivedMessage], seconds: float) -> None:
        raise UnsupportedCapability(self.name, "lease_extension", "lease extension")

    def _forward(
        self, queue_name: str, message: ReceivedMessage, extra_attributes: dict[str, str]
    ) -> PublishResult:
        """Send ``message`` as received to ``queue_name`` (see :meth:`forward`).

        The default rebuilds an :class:`OutgoingMessage` from the received body,
        attributes and group id and sends it with :meth:`_publish_batch`, skipping
        melange's publish checks. Override it when the received form differs
        from what the broker was sent (a body encoding undone on receipt, typed
        attributes read as strings): send the raw wire form instead.
        """
        attributes = self._with_extras(message.body, message.attributes, extra_attributes)
        fifo = self.capabilities.fifo and is_fifo_name(queue_name)
        outgoing = OutgoingMessage(
            body=message.body,
            attributes=attributes,
            group_id=message.group_id if self.capabilities.fifo else None,
            # A FIFO target drops a second copy if the caller crashes before its ack.
            dedup_id=message.message_id if fifo and self.capabilities.dedup else None,
        )
        return self._publish_batch(queue_name, [outgoing])[0]

    def _move_all(
        self, source: str, target: str, on_progress: Callable[[int], None] | None
    ) -> int | None:
        """Move all of ``source`` to ``target`` natively; ``None``: no native path (the default).

        Override it only with an operation that loses nothing (a message leaves
        ``source`` only once ``target`` has it) and keeps each message's body,
        attributes and group id byte for byte, and that has finished when it
        returns. Return ``None`` only when nothing was moved: the caller then
        moves the messages itself.
        """
        return None

    def _with_extras(
        self, body: bytes, attributes: Mapping[str, str], extras: Mapping[str, str]
    ) -> dict[str, str]:
        """Return ``attributes`` plus those ``extras`` that fit within the declared limits."""
        caps = self.capabilities
        result = dict(attributes)
        size = OutgoingMessage(body, result).size
        for key, value in extras.items():
            if key in result:
                continue  # the original's own value wins
            grown = size + len(key.encode()) + len(value.encode())
            if caps.max_attributes is not None and len(result) >= caps.max_attributes:
                break
            if grown > caps.max_message_size:
                continue  # a shorter one may still fit
            result[key] = value
            size = grown
        return result

    def _close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release resources; called once."""
