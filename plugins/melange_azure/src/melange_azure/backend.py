"""The ``azure`` backend: queues and topics on Azure Service Bus.

How each part of melange's contract maps to Service Bus (details, with the
documentation it follows, in docs/backends/azure.md):

- queue: a queue (``.fifo`` names are session-enabled, with duplicate detection);
- topic: a topic; subscription: a subscription that forwards (ForwardTo) to the
  queue, its filter a SQL rule;
- dead-letter queue: MaxDeliveryCount plus ForwardDeadLetteredMessagesTo;
- publish: ServiceBusMessageBatch, split where the sender's link says it is full,
  each message's id its producer id (duplicate detection catches retries);
- receive: peek-lock; ack: complete; nack: abandon (after a delay, see
  :mod:`~melange_azure.leases`); lease extension: lock renewal;
- forward (dead-lettering): a copy of the message as Service Bus delivered it.

The helpers live next to this module, one idea each: :mod:`~melange_azure.clients`
(options, timeouts and clients), :mod:`~melange_azure.names` and
:mod:`~melange_azure.validation` (what Service Bus refuses),
:mod:`~melange_azure.resources` (the administration API), :mod:`~melange_azure.filters`
(SQL rules), :mod:`~melange_azure.wire` (messages on the wire),
:mod:`~melange_azure.sending` (senders and publish outcomes),
:mod:`~melange_azure.forwarding` (byte-exact copies), :mod:`~melange_azure.receipts`
(receivers), :mod:`~melange_azure.leases`, :mod:`~melange_azure.deadlines` (bounds the
SDK cannot keep) and :mod:`~melange_azure.errors`.
"""

from __future__ import annotations

import datetime
import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, NoReturn

from azure.core.exceptions import AzureError
from azure.servicebus import NEXT_AVAILABLE_SESSION, ServiceBusReceivedMessage
from azure.servicebus import exceptions as sb_errors

from melange.backends.base import (
    Capabilities,
    MessagingBackend,
    OutgoingMessage,
    PublishResult,
    ReceivedMessage,
)
from melange.exceptions import (
    BackendClosed,
    BackendUnavailable,
    InvalidMessage,
    LeaseLost,
    MelangeError,
    QueueNotFound,
    TopicNotFound,
    raise_unchained,
)
from melange.topology import (
    Action,
    Change,
    QueueSpec,
    SubscriptionSpec,
    TopicSpec,
    is_fifo_name,
)
from melange_azure import filters, forwarding
from melange_azure.clients import ClientSettings, Retries, Timeouts
from melange_azure.deadlines import Deadlines
from melange_azure.errors import ErrorContext, did_not_answer, translate
from melange_azure.leases import LeaseKeeper
from melange_azure.names import QUEUE_NAME_RULE, TOPIC_NAME_RULE
from melange_azure.receipts import AzureReceipt, Receiver, ReceiverPool
from melange_azure.resources import Topology
from melange_azure.sending import GRACE, SDK_ERRORS, NothingSent, Sender, send_batches, send_one
from melange_azure.validation import (
    MAX_DELAY,
    MAX_DELIVERY_COUNT_RANGE,
    MAX_LOCK_DURATION,
    RETENTION_RANGE,
    check_destination,
    check_message,
    check_queue,
    check_subscription,
)
from melange_azure.wire import MAX_ATTRIBUTES, MAX_MESSAGE_SIZE, from_service_bus, to_service_bus

__all__ = ["AzureReceipt", "AzureServiceBusBackend"]

logger = logging.getLogger("melange.azure.backend")

BATCH_SIZE = 100
"""Messages melange hands to one publish hook call; bytes are split by ServiceBusMessageBatch."""

RECEIVE_SLICE = 0.25
"""Longest stretch a receive holds its receiver, so settlements over it wait at most this long."""

PROBE_AFTER = 10.0
"""Seconds a receiver may go without any sign of life (a delivery, a settlement, an answer)
before a receive asks Service Bus something (a peek): a connection that went silent
(black-holed) is noticed then, instead of receiving nothing forever."""

SESSION_WAIT = 0.5
"""Shortest wait for the next available session when accepting one."""

MIN_WAIT = 0.1
"""Shortest receive wait: the SDK returns at once without one, before the broker could answer."""

LOCK_GONE = (
    sb_errors.MessageLockLostError,
    sb_errors.SessionLockLostError,
    sb_errors.MessageAlreadySettled,
    sb_errors.MessageNotFoundError,
)
"""What settling a delivery Service Bus no longer holds raises."""

NO_SESSION = (sb_errors.OperationTimeoutError, sb_errors.SessionCannotBeLockedError)
"""What accepting the next session raises when no session has messages."""


class AzureServiceBusBackend(MessagingBackend):
    """Queues and topics on Azure Service Bus, through azure-servicebus.

    Authenticate with a namespace connection string (also the emulator's, with
    ``UseDevelopmentEmulator=true``) or a fully qualified namespace and a
    credential. In configuration files and the environment the options are
    plain values, e.g. ``MELANGE_OPTION_CONNECTION_STRING``.

    Args:
        connection_string: A namespace-level connection string; never shown in
            errors, logs or ``repr``.
        fully_qualified_namespace: ``<namespace>.servicebus.windows.net``, instead
            of a connection string.
        credential: An ``azure.core.credentials.TokenCredential`` for
            ``fully_qualified_namespace``; ``DefaultAzureCredential`` from
            azure-identity (``pip install "melange-azure[identity]"``) when omitted.
        management_url: Where the administration API is when not at the
            namespace over HTTPS, e.g. ``http://localhost:5300`` for Microsoft's
            emulator (the default with an emulator connection string).
        retry_total: How often the SDKs retry a failed call (with exponential
            backoff) before melange raises; their default (3) when omitted.
        retry_backoff_factor: Seconds of the SDKs' first backoff (0.5; the SDKs'
            own default is 0.8).
        retry_backoff_max: The SDKs' longest backoff in seconds (4; theirs is 120).
        retry_mode: ``"exponential"`` (the default) or ``"fixed"`` backoff.
        connect_timeout: Seconds for one attempt to open an AMQP link (connect,
            authenticate, attach) or to run one AMQP management request (the
            SDK's ``try_timeout``), and to connect to the administration API (5).
        publish_timeout: Seconds one native send may take, opening the link and
            the SDK's retries included (10). Then its messages are reported
            unknown (sent, not confirmed) or refused (never sent).
        receive_margin: Seconds a receive may take beyond its wait (5): it
            returns or raises within ``wait_seconds + receive_margin``.
        settle_timeout: Seconds an ack, nack or lock renewal of one message may
            take, Service Bus's confirmation included (5).
        management_timeout: Seconds an administration request waits for its
            answer (10).
        socket_timeout: The AMQP transport's socket timeout (the SDK's 0.2 s
            when omitted).

    Raises:
        ConfigurationError: The options are missing, contradictory or malformed.
    """

    name = "azure"
    capabilities = Capabilities(
        topics=True,
        dead_letter=True,
        fifo=True,
        dedup=True,
        delay=True,
        batch=True,
        lease_extension=True,
        nack_delay=True,
        filters=True,
        max_message_size=MAX_MESSAGE_SIZE,
        max_batch_size=BATCH_SIZE,
        max_batch_bytes=None,
        max_attributes=MAX_ATTRIBUTES,
        max_delay=MAX_DELAY,
        max_visibility_timeout=MAX_LOCK_DURATION,
        max_receive_count_range=MAX_DELIVERY_COUNT_RANGE,
        retention_range=RETENTION_RANGE,
        max_wait_seconds=20.0,
        immutable_queue_settings=frozenset({"fifo"}),
        dead_letter_any_kind=True,
        case_insensitive_names=True,
    )
    queue_name_rule = QUEUE_NAME_RULE
    topic_name_rule = TOPIC_NAME_RULE
    broker_label = "Service Bus"
    receive_count_setting = "MaxDeliveryCount"

    def __init__(
        self,
        *,
        connection_string: str | None = None,
        fully_qualified_namespace: str | None = None,
        credential: Any = None,
        management_url: str | None = None,
        retry_total: int | None = None,
        retry_backoff_factor: float | None = None,
        retry_backoff_max: float | None = None,
        retry_mode: str | None = None,
        connect_timeout: float | None = None,
        publish_timeout: float | None = None,
        receive_margin: float | None = None,
        settle_timeout: float | None = None,
        management_timeout: float | None = None,
        socket_timeout: float | None = None,
    ) -> None:
        settings = ClientSettings.make(
            connection_string,
            fully_qualified_namespace,
            credential,
            management_url,
            retries=Retries.make(retry_total, retry_backoff_factor, retry_backoff_max, retry_mode),
            timeouts=Timeouts.make(
                connect=connect_timeout,
                publish=publish_timeout,
                receive_margin=receive_margin,
                settle=settle_timeout,
                management=management_timeout,
            ),
            socket_timeout=socket_timeout,
        )
        super().__init__()
        self._settings = settings
        self._timeouts = settings.timeouts
        self._secrets = settings.secrets()
        self._client = settings.data_client()
        # Accepting the next session waits up to the receive's wait for one, within one attempt.
        self._session_client = settings.data_client(
            self.capabilities.max_wait_seconds + settings.timeouts.connect
        )
        self._admin = settings.admin_client()
        self._topology = Topology(self._admin, self._fail)
        self._lock = threading.Lock()
        self._senders: dict[str, Sender] = {}
        self._pools: dict[str, ReceiverPool] = {}
        self._deadlines = Deadlines()
        self._keeper = LeaseKeeper(self._renew, self._release)

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        where = (
            f" management={self._settings.safe_management_url!r}"
            if self._settings.management_url
            else ""
        )
        return (
            f"<{type(self).__name__} {self.name!r} namespace={self._settings.namespace!r}"
            f"{where}{state}>"
        )

    @property
    def namespace(self) -> str:
        """The namespace host the backend talks to."""
        return self._settings.namespace

    @property
    def settings(self) -> ClientSettings:
        """The validated options; :meth:`ClientSettings.data_client` makes more clients."""
        return self._settings

    # ---------------------------------------------------------------- errors
    def _fail(
        self,
        error: BaseException,
        action: str,
        *,
        queue: str | None = None,
        topic: str | None = None,
        message_id: str | None = None,
    ) -> NoReturn:
        """Raise the melange error for ``error``, which happened trying to ``action``."""
        if self.closed:
            raise_unchained(BackendClosed(self.name, action))
        raise_unchained(translate(error, self._context(action, queue, topic, message_id)))

    def _silent(self, seconds: float, action: str, queue: str | None = None) -> NoReturn:
        """Raise the error of a call melange's deadline ended after ``seconds``."""
        if self.closed:
            raise_unchained(BackendClosed(self.name, action))
        raise_unchained(did_not_answer(self._context(action, queue), seconds))

    def _context(
        self,
        action: str,
        queue: str | None = None,
        topic: str | None = None,
        message_id: str | None = None,
    ) -> ErrorContext:
        return ErrorContext(action, queue, topic, message_id, self._secrets)

    # ------------------------------------------------------------ validation
    def validate_queue(self, spec: QueueSpec) -> None:
        """Check the name and Service Bus's ranges and rules (:mod:`~melange_azure.validation`).

        The rules every broker shares ran before (``check_queue``); a dead-letter queue
        of either kind passed them, and check_queue refuses the pair Service Bus cannot
        forward (standard into FIFO).
        """
        super().validate_queue(spec)
        check_queue(spec)

    def validate_subscription(
        self, topic: TopicSpec, queue: QueueSpec, subscription: SubscriptionSpec
    ) -> None:
        """Refuse a filter Service Bus cannot hold and a FIFO queue on a standard topic."""
        filters.check(subscription)
        check_subscription(topic, queue, subscription)

    def validate_message(self, message: OutgoingMessage) -> int:
        """The common checks, plus Service Bus's limits on ids and properties."""
        size = super().validate_message(message)
        check_message(message)
        return size

    def validate_batch(
        self, destination: Literal["queue", "topic"], name: str, batch: Sequence[OutgoingMessage]
    ) -> None:
        """Refuse a ``dedup_id`` where duplicate detection is off (standard queues and topics)."""
        check_destination(destination, name, batch)

    # -------------------------------------------------------------- topology
    def _get_queue(self, name: str) -> QueueSpec | None:
        return self._topology.get_queue(name)

    def _check_plan(self, actions: tuple[Action, ...]) -> None:
        # A setting fixed at creation that QueueSpec does not show (partitioning) is
        # refused before the plan's topics are made, not when the queue's turn comes.
        for action in actions:
            if action.kind == "update_queue" and isinstance(action.spec, QueueSpec):
                props = self._topology.queue_properties(action.spec.name)
                if props is not None:
                    Topology.check_immutable(props, action.spec)

    def _declare_queue(self, spec: QueueSpec) -> None:
        self._topology.declare_queue(spec)  # the contract checked spec (check_queue)

    def _queue_drift(self, spec: QueueSpec) -> tuple[Change, ...]:
        return self._topology.queue_drift(spec)

    def _subscription_drift(self, spec: SubscriptionSpec) -> tuple[Change, ...]:
        return self._topology.subscription_drift(spec)

    def _delete_queue(self, name: str) -> None:
        self._topology.delete_queue(name)
        self._drop_pool(name)
        self._drop_sender(name)

    def _get_topic(self, name: str) -> TopicSpec | None:
        return self._topology.get_topic(name)

    def _declare_topic(self, spec: TopicSpec) -> None:
        self._topology.declare_topic(spec)

    def _delete_topic(self, name: str) -> None:
        self._topology.delete_topic(name)
        self._drop_sender(name)

    def _get_subscription(self, topic_name: str, queue_name: str) -> SubscriptionSpec | None:
        return self._topology.get_subscription(topic_name, queue_name)

    def _subscribe(self, spec: SubscriptionSpec) -> None:
        # The contract checked names, kinds and the filter (check_subscription).
        self._topology.subscribe(spec)

    # --------------------------------------------------------------- publish
    def _sender(self, kind: Literal["queue", "topic"], name: str) -> Sender:
        key = f"{kind}:{name.lower()}"
        with self._lock:
            if self.closed:
                raise BackendClosed(self.name, f"publish to {kind} {name!r}")
            sender = self._senders.get(key)
            if sender is None:
                options = self._settings.sender_kwargs()
                if kind == "queue":
                    handle = self._client.get_queue_sender(name, **options)
                else:
                    handle = self._client.get_topic_sender(name, **options)
                sender = self._senders[key] = Sender(kind, name, handle)
            return sender

    def _drop_sender(self, name: str) -> None:
        with self._lock:
            entries = [
                self._senders.pop(k)
                for k in list(self._senders)
                if k.split(":", 1)[1] == name.lower()
            ]
        # The entity is gone: its links are dead, closing them need not hold the caller up.
        _close_all([_sender_closer(sender) for sender in entries], wait=False)

    def _forget_broken(self, sender: Sender) -> None:
        """Drop a sender whose call failed: the next publish opens a new link."""
        with self._lock:
            key = f"{sender.kind}:{sender.name.lower()}"
            if self._senders.get(key) is sender:
                del self._senders[key]
        _close_all([_sender_closer(sender)], wait=False)

    def _send(
        self, kind: Literal["queue", "topic"], name: str, batch: list[OutgoingMessage], delay: float
    ) -> list[PublishResult]:
        fifo = is_fifo_name(name)
        outgoing = [to_service_bus(message, fifo, delay) for message in batch]
        ids = [str(message.message_id) for message in outgoing]
        sender = self._sender(kind, name)
        context = self._context(f"publish to {kind} {name!r}", **{kind: name})
        try:
            return send_batches(sender, outgoing, ids, self._deadlines, self._timeouts, context)
        except NothingSent as nothing:
            self._refused(sender, nothing.error)
        finally:
            if sender.broken:
                self._forget_broken(sender)

    def _refused(self, sender: Sender, error: MelangeError) -> NoReturn:
        """Raise the error of a send that stored nothing; forget a missing entity."""
        if isinstance(error, (QueueNotFound, TopicNotFound)):
            if sender.kind == "queue":
                self._topology.forget_queue(sender.name)
            else:
                self._topology.forget_topic(sender.name)
        if self.closed:
            raise_unchained(BackendClosed(self.name, f"publish to {sender.kind} {sender.name!r}"))
        raise_unchained(error)

    def _publish_batch(self, queue_name: str, batch: list[OutgoingMessage]) -> list[PublishResult]:
        delay = self._topology.behaviour(queue_name).delay
        return self._send("queue", queue_name, batch, delay)

    def _publish_topic_batch(
        self, topic_name: str, batch: list[OutgoingMessage]
    ) -> list[PublishResult]:
        self._topology.require_topic(topic_name)  # a clear TopicNotFound before any link
        return self._send("topic", topic_name, batch, 0.0)

    def _forward(
        self, queue_name: str, message: ReceivedMessage, extra_attributes: dict[str, str]
    ) -> PublishResult:
        """Send a copy of ``message`` as Service Bus delivered it (see :mod:`.forwarding`).

        A message this backend did not receive (no raw Service Bus message to
        copy) takes the contract's default path.
        """
        receipt = message.receipt
        if not isinstance(receipt, AzureReceipt):
            return super()._forward(queue_name, message, extra_attributes)
        self._topology.behaviour(queue_name)  # a clear QueueNotFound before any link
        fifo = is_fifo_name(queue_name)
        raw = receipt.message
        sender = self._sender("queue", queue_name)
        context = self._context(f"forward a message to queue {queue_name!r}", queue=queue_name)

        def fits(candidate: Any) -> bool:
            """Whether ``candidate`` fits the link, as the SDK measures a batch."""
            with sender.lock, self._deadlines.guard(sender.handle, self._timeouts.publish) as guard:
                try:
                    sender.handle.create_message_batch().add_message(candidate)
                except SDK_ERRORS:
                    return False
                finally:
                    sender.broken = sender.broken or guard.expired
            return True

        try:
            extras = (
                forwarding.with_room(raw, extra_attributes, fifo, fits) if extra_attributes else {}
            )
            if sender.broken:  # measuring outlived its deadline: nothing was sent
                raise NothingSent(did_not_answer(context, self._timeouts.publish))
            copy = forwarding.copy_of(raw, fifo=fifo, extras=extras)
            return send_one(
                sender,
                copy,
                forwarding.copy_id(copy),
                self._deadlines,
                self._timeouts,
                context,
            )
        except NothingSent as nothing:
            self._refused(sender, nothing.error)
        finally:
            if sender.broken:
                self._forget_broken(sender)

    # --------------------------------------------------------------- receive
    def _pool(self, queue_name: str) -> ReceiverPool:
        key = queue_name.lower()
        with self._lock:
            if self.closed:
                raise BackendClosed(self.name, "receive")
            pool = self._pools.get(key)
            if pool is None:
                sessions = is_fifo_name(queue_name)

                def make(wait: float, budget: float) -> Any:
                    return self._open_receiver(queue_name, sessions, wait, budget)

                pool = self._pools[key] = ReceiverPool(queue_name, sessions, make)
            return pool

    def _open_receiver(self, queue_name: str, sessions: bool, wait: float, budget: float) -> Any:
        """A new SDK receiver with its link open (a session receiver holding a session).

        Args:
            queue_name: The queue.
            sessions: Whether to accept the next available session (FIFO queue).
            wait: How long a session receiver waits for a session.
            budget: Seconds the whole opening may take (melange's deadline).

        Raises:
            OperationTimeoutError: No session became available within ``wait``.
            MelangeError: Service Bus did not answer within ``budget``.
        """
        options = self._settings.receiver_kwargs()
        if sessions:
            handle = self._session_client.get_queue_receiver(
                queue_name,
                session_id=NEXT_AVAILABLE_SESSION,
                max_wait_time=max(wait, SESSION_WAIT),
                **options,
            )
        else:
            handle = self._client.get_queue_receiver(queue_name, **options)
        with self._deadlines.guard(handle, budget) as guard:
            try:
                handle.__enter__()  # opens the link now: a receive's own wait may be too short
            except BaseException:
                _close_quietly(handle)
                if not guard.expired:
                    raise
                failed = True
            else:
                failed = False
        if failed:
            self._silent(budget, f"receive from queue {queue_name!r}", queue_name)
        if sessions and not isinstance(handle.session.session_id, str):
            # Service Bus may attach the link of a wait that timed out before it detaches it
            # (the attach names no session): the SDK takes it for open, but it holds nothing.
            _close_all([functools.partial(_close_quietly, handle)], wait=False)  # may take 1 s
            raise sb_errors.OperationTimeoutError(message="no session became available")
        return handle

    def _drop_pool(self, queue_name: str) -> None:
        with self._lock:
            pool = self._pools.pop(queue_name.lower(), None)
        if pool is not None:
            closers = [_receiver_closer(receiver) for receiver in pool.close()]
            _close_all(closers, wait=False)

    def _receive(
        self, queue_name: str, max_messages: int, wait_seconds: float
    ) -> list[ReceivedMessage]:
        visibility = self._topology.behaviour(queue_name).visibility
        pool = self._pool(queue_name)
        deadline = time.monotonic() + wait_seconds
        if pool.sessions:
            received = self._receive_sessions(pool, max_messages, deadline)
        else:
            received = self._receive_plain(pool, max_messages, deadline)
        if visibility is not None:
            # Shorter than Service Bus's shortest lock: released when it ends.
            for message in received:
                self._keeper.hold(message.receipt, visibility)
        return received

    def _budget(self, deadline: float) -> float:
        """Seconds left of a receive whose wait ends at ``deadline``, its margin included."""
        return max(deadline + self._timeouts.receive_margin - time.monotonic(), MIN_WAIT)

    def _receive_plain(
        self, pool: ReceiverPool, max_messages: int, deadline: float
    ) -> list[ReceivedMessage]:
        queue_name = pool.queue_name
        try:
            receiver = pool.borrow(deadline - time.monotonic(), self._budget(deadline))
        except (AzureError, ValueError, RuntimeError) as error:
            self._fail(error, f"receive from queue {queue_name!r}", queue=queue_name)
        try:
            while True:
                received = self._receive_from(receiver, max_messages, deadline)
                if received or time.monotonic() >= deadline:
                    return received
        finally:
            pool.give_back(receiver)

    def _receive_from(
        self, receiver: Receiver, max_messages: int, deadline: float
    ) -> list[ReceivedMessage]:
        """One slice of a receive on ``receiver``; marks it broken when it fails."""
        receiver.yield_to_settlements()
        wait = min(max(deadline - time.monotonic(), MIN_WAIT), RECEIVE_SLICE)
        queue_name = receiver.queue_name
        action = f"receive from queue {queue_name!r}"
        budget = self._budget(deadline)
        with receiver.lock:
            if receiver.closed:
                return []
            failure: BaseException | None = None
            with self._deadlines.guard(receiver.handle, budget) as guard:
                try:
                    raw = receiver.handle.receive_messages(
                        max_message_count=max_messages, max_wait_time=wait
                    )
                    if not raw and receiver.silent_for() > PROBE_AFTER:
                        failure = self._probe(receiver)
                except NO_SESSION as error:
                    if not receiver.sessions:
                        failure = error
                    else:  # the session is gone: the next receive accepts another
                        receiver.broken = True
                        return []
                except (AzureError, ValueError, RuntimeError) as error:
                    failure = error
            if guard.expired:
                receiver.broken = True
                self._silent(budget, action, queue_name)
            if failure is not None:
                receiver.broken = True
                if isinstance(failure, sb_errors.SessionLockLostError):
                    return []
                if isinstance(failure, sb_errors.MessagingEntityNotFoundError):
                    self._topology.forget_queue(queue_name)
                self._fail(failure, action, queue=queue_name)
            lock = self._lock_seconds(queue_name) if raw else None
            received = [self._received(receiver, message, lock) for message in raw]
            fresh = [message for message in received if message is not None]
            if raw:
                receiver.alive()
            receiver.unsettled += len(fresh)
        return fresh

    def _probe(self, receiver: Receiver) -> BaseException | None:
        """Ask Service Bus something on a receiver that has been silent for long (a peek).

        A connection that went silent (an endpoint black-holed after the link
        opened) delivers nothing and raises nothing; the peek's answer, or its
        timeout, tells a quiet queue from a dead connection.

        Returns:
            ``None`` when Service Bus answered, else the error (the connection is dead).
        """
        try:
            receiver.handle.peek_messages(max_message_count=1, timeout=self._timeouts.connect)
        except (AzureError, ValueError, RuntimeError) as error:
            return error
        receiver.alive()
        return None

    def _received(
        self, receiver: Receiver, raw: ServiceBusReceivedMessage, lock: float | None
    ) -> ReceivedMessage | None:
        """The melange view of a delivery; ``None`` for one whose lock ran out in the buffer.

        Called with ``receiver.lock`` held. Whether the lock ran out is Service
        Bus's to say: when its reported expiry has passed by the local clock
        (which may only mean the clocks differ), the lock is renewed, and the
        delivery dropped only if Service Bus answers that the lock is gone.
        """
        receipt = AzureReceipt(receiver, raw, lock_seconds=lock)
        started = time.monotonic()
        locked_until = raw.locked_until_utc
        if (
            not receiver.sessions
            and isinstance(locked_until, datetime.datetime)
            and locked_until <= datetime.datetime.now(datetime.timezone.utc)
        ):
            if not self._confirm_lock(receiver, raw):
                # Service Bus delivers it again; handing this copy out would duplicate it.
                logger.debug("dropped a delivery of %r whose lock ran out", receiver.queue_name)
                return None
            receipt.lock_started(started)
        else:
            receipt.lock_started(started, locked_until)
        decoded = from_service_bus(raw)
        return ReceivedMessage(
            receiver.queue_name,
            decoded.body,
            decoded.attributes,
            decoded.message_id,
            decoded.receive_count,
            decoded.group_id,
            receipt,
        )

    def _lock_seconds(self, queue_name: str) -> float | None:
        """The queue's lock duration (cached); ``None`` if it cannot be read now."""
        try:
            return self._topology.behaviour(queue_name).lock
        except MelangeError:
            return None  # the deliveries are handed out all the same, timed by reported expiry

    def _confirm_lock(self, receiver: Receiver, raw: ServiceBusReceivedMessage) -> bool:
        """Whether Service Bus still holds the lock of a delivery (renewing it)."""
        seconds = self._timeouts.settle
        with self._deadlines.guard(receiver.handle, seconds + GRACE) as guard:
            try:
                receiver.handle.renew_message_lock(raw, timeout=seconds)
            except (AzureError, ValueError, RuntimeError) as error:
                logger.debug("the lock of a delivery could not be renewed: %s", type(error))
                return False
        if guard.expired:
            receiver.broken = True
            return False
        return True

    def _receive_sessions(
        self, pool: ReceiverPool, max_messages: int, deadline: float
    ) -> list[ReceivedMessage]:
        """Receive from the sessions this backend holds, else accept the next one."""
        received: list[ReceivedMessage] = []
        held = pool.free_receivers()
        try:
            for receiver in held:
                # A session with a message in flight (unsettled) delivers nothing more: a
                # later message of the group must not overtake one that may come back.
                if not received and not receiver.broken and receiver.unsettled == 0:
                    received = self._receive_from(receiver, max_messages, time.monotonic())
        finally:
            for receiver in held:
                if receiver.broken or (receiver.unsettled == 0 and not received):
                    pool.discard(receiver)  # a drained session: free it for others
                else:
                    pool.give_back(receiver)
        while not received:
            try:
                receiver = pool.new_receiver(deadline - time.monotonic(), self._budget(deadline))
            except NO_SESSION:
                return []
            except (AzureError, ValueError, RuntimeError) as error:
                self._fail(error, f"receive from queue {pool.queue_name!r}", queue=pool.queue_name)
            try:
                received = self._receive_from(receiver, max_messages, deadline)
            finally:
                if received:
                    pool.give_back(receiver)
                else:
                    pool.discard(receiver)
            if time.monotonic() >= deadline:
                break
        return received

    # ---------------------------------------------------------------- settle
    def _settle(self, message: ReceivedMessage, operation: Literal["complete", "abandon"]) -> bool:
        """Complete or abandon one delivery; ``False`` if Service Bus no longer holds it."""
        receipt = _receipt_of(message)
        self._keeper.forget(receipt)
        receiver = receipt.receiver
        action = f"{operation} message {message.message_id!r}"
        seconds = self._timeouts.settle
        with receiver.turn():
            if receipt.settled:
                return False
            if receiver.closed:
                receipt.settled = True
                return False
            if receiver.broken:
                # Its connection failed: Service Bus delivers the message again when the
                # lock expires, as after a lost lock, which settles nothing either.
                logger.debug("cannot %s: the connection that delivered it failed", action)
                receipt.settled = True
                receiver.settled()
                return False
            failure: BaseException | None = None
            with self._deadlines.guard(receiver.handle, seconds + GRACE) as guard:
                try:
                    if operation == "complete":
                        receiver.handle.complete_message(receipt.message)
                    else:
                        receiver.handle.abandon_message(receipt.message)
                except LOCK_GONE:
                    settled = False
                except (AzureError, ValueError, RuntimeError) as error:
                    settled = False
                    if not _lock_lost(error):
                        failure = error
                else:
                    settled = True
                    receiver.alive()
            receipt.settled = True
            receiver.settled()
            if guard.expired:
                receiver.broken = True
                raise_unchained(_unconfirmed(action, seconds))
            if failure is not None:
                receiver.broken = True
                self._fail(failure, action, queue=message.queue_name)
        return settled

    def _ack(self, messages: list[ReceivedMessage]) -> None:
        # A delivery Service Bus no longer holds settles nothing, as on the memory
        # backend: whoever received the message since holds the current lock.
        self._settle_all(messages, "complete")

    def _settle_all(
        self, messages: list[ReceivedMessage], operation: Literal["complete", "abandon"]
    ) -> None:
        first_error: MelangeError | None = None
        for message in messages:
            try:
                self._settle(message, operation)
            except MelangeError as error:
                if isinstance(error, BackendClosed):
                    raise
                first_error = first_error or error
        if first_error is not None:
            raise first_error

    def _nack(self, messages: list[ReceivedMessage], delay_seconds: float) -> None:
        for message in messages:
            _receipt_of(message)  # a receipt of another backend settles nothing here
        if not delay_seconds:
            self._settle_all(messages, "abandon")
            return
        for message in messages:
            receipt = self._live_receipt(message)
            if receipt is not None:
                self._keeper.hold(receipt, delay_seconds)

    def _extend_lease(self, messages: list[ReceivedMessage], seconds: float) -> None:
        # The keeper takes the new deadline at once (so a release due meanwhile does not
        # happen) and renews the lock when it would run out before the deadline. A lock
        # that ran out by the local clock is renewed now: Service Bus says whether it is lost.
        for message in messages:
            _receipt_of(message)
        for message in messages:
            receipt = self._live_receipt(message)
            if receipt is None or (self._looks_expired(receipt) and not self._renewed(receipt)):
                raise LeaseLost(
                    message.message_id,
                    message.queue_name,
                    "Service Bus no longer holds its lock: it was settled, released, or its lock "
                    "ran out and the message may have been delivered again",
                )
            self._keeper.hold(receipt, seconds)

    @staticmethod
    def _looks_expired(receipt: AzureReceipt) -> bool:
        """Whether the lock ran out by the local clock (Service Bus may disagree)."""
        if receipt.lock_ends is not None:
            return receipt.lock_ends <= time.monotonic()
        locked_until = receipt.locked_until
        now = datetime.datetime.now(datetime.timezone.utc)
        return locked_until is not None and locked_until <= now

    def _renewed(self, receipt: AzureReceipt) -> bool:
        """Renew the lock now; ``False`` if Service Bus says it is lost."""
        try:
            self._renew(receipt)
        except (AzureError, ValueError, RuntimeError) as error:
            if isinstance(error, LOCK_GONE) or _lock_lost(error):
                return False
            self._fail(error, "renew a message lock", queue=receipt.receiver.queue_name)
        return True

    @staticmethod
    def _live_receipt(message: ReceivedMessage) -> AzureReceipt | None:
        receipt = message.receipt
        if not isinstance(receipt, AzureReceipt) or receipt.settled or receipt.receiver.closed:
            return None
        return receipt

    def _renew(self, receipt: AzureReceipt) -> datetime.datetime | None:
        """Renew a delivery's lock (its session's, on a FIFO queue)."""
        receiver = receipt.receiver
        seconds = self._timeouts.settle
        started = time.monotonic()
        with receiver.turn():
            if receipt.settled or receiver.closed or receiver.broken:
                raise sb_errors.MessageLockLostError(message="the delivery was settled")
            with self._deadlines.guard(receiver.handle, seconds + GRACE):
                if receiver.sessions:
                    value = receiver.handle.session.renew_lock(timeout=seconds)
                else:
                    value = receiver.handle.renew_message_lock(receipt.message, timeout=seconds)
            receiver.alive()
        receipt.lock_started(started)
        return value if isinstance(value, datetime.datetime) else None

    def _release(self, receipt: AzureReceipt) -> None:
        """Abandon a held delivery at its deadline (called by the lease keeper)."""
        receiver = receipt.receiver
        with receiver.turn():
            if receipt.settled or receiver.closed or receiver.broken:
                return
            try:
                with self._deadlines.guard(receiver.handle, self._timeouts.settle + GRACE):
                    receiver.handle.abandon_message(receipt.message)
            finally:
                receipt.settled = True
                receiver.settled()

    # ----------------------------------------------------------------- close
    def _close(self) -> None:
        self._keeper.stop()
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
            senders, self._senders = list(self._senders.values()), {}
        closers = [_receiver_closer(r) for pool in pools for r in pool.close()]
        closers += [_sender_closer(sender) for sender in senders]
        # Side by side: the SDK takes up to a second per link (its keep-alive thread).
        _close_all(closers, wait=True)
        self._deadlines.stop()
        _close_quietly(self._client)
        _close_quietly(self._session_client)
        _close_quietly(self._admin)


def _receipt_of(message: ReceivedMessage) -> AzureReceipt:
    """The message's receipt, if an azure backend issued it.

    Raises:
        InvalidMessage: Another backend received the message.
    """
    receipt = message.receipt
    if not isinstance(receipt, AzureReceipt):
        raise InvalidMessage(
            f"message {message.message_id!r} was not received by an azure backend; settle "
            "messages with the backend that received them"
        )
    return receipt


def _lock_lost(error: BaseException) -> bool:
    """Whether ``error`` says the lock is gone (the SDK words some of these as ValueError)."""
    text = str(error).lower()
    return ("lock" in text and ("lost" in text or "expired" in text)) or "settled" in text


CLOSE_TIMEOUT = 10.0
"""Seconds close() waits for the SDK to close its links."""


def _receiver_closer(receiver: Receiver) -> Callable[[], None]:
    def close() -> None:
        with receiver.lock:
            receiver.close()

    return close


def _unconfirmed(action: str, seconds: float) -> MelangeError:
    """The error of a settlement melange's deadline ended: it may or may not have happened."""
    return BackendUnavailable(
        f"could not {action}: Service Bus did not confirm it within {round(seconds, 1):g} s "
        "(the connection was closed). If it did not happen, Service Bus delivers the message "
        "again once its lock expires"
    )


def _sender_closer(sender: Sender) -> Callable[[], None]:
    def close() -> None:
        with sender.lock:
            _close_quietly(sender.handle)

    return close


def _close_all(closers: list[Callable[[], None]], *, wait: bool) -> None:
    """Run ``closers`` side by side in daemon threads, waiting for them if ``wait``."""
    threads = [
        threading.Thread(target=closer, name="melange-azure-close", daemon=True)
        for closer in closers
    ]
    for thread in threads:
        thread.start()
    if wait:
        deadline = time.monotonic() + CLOSE_TIMEOUT
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def _close_quietly(resource: Any) -> None:
    try:
        resource.close()
    except Exception:  # closing must not fail close(); the connection dies with it anyway
        logger.debug("closing %s failed", type(resource).__name__, exc_info=True)
