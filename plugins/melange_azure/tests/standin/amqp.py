"""A small AMQP 1.0 broker that answers the Service Bus SDK like the service does.

Built on python-qpid-proton: a :class:`proton.reactor.Container` runs in a daemon
thread and this module's :class:`Broker` handles its events. Everything the broker
owns (message boxes, locks, links) is touched on that thread only; the shared
:class:`~.namespace.Namespace` is read under its lock.

Covered, for a ``UseDevelopmentEmulator=true`` connection string (plain TCP, SASL
ANONYMOUS), as the azure-servicebus SDK and the backend use it:

- CBS ``put-token`` on ``$cbs``: the SAS signature, key name and expiry are checked
  (401 otherwise); links are refused (``amqp:unauthorized-access``) without a token
  for their entity;
- sender links to queues and topics: single and batched transfers (format
  0x80013700), 256 KB standard-tier size limit, ``amqp:not-found`` for a missing
  entity, a session-enabled queue refusing a message without a session id;
- receiver links in peek-lock (lock token as delivery tag and annotations, header
  delivery-count) and receive-and-delete; settlement confirmed with the outcome the
  SDK awaits: complete, abandon, dead-letter, defer, release; a lost lock answers
  ``com.microsoft:message-lock-lost``;
- lock expiry and abandon count a delivery; after MaxDeliveryCount deliveries the
  message is dead-lettered (MaxDeliveryCountExceeded) to ``<entity>/$DeadLetterQueue``
  or forwarded to ForwardDeadLetteredMessagesTo; time to live (message or
  DefaultMessageTimeToLive) drops or dead-letters (TTLExpiredException);
- topics copy to each subscription with a matching rule (see :mod:`.amqp_filters`);
  ForwardTo on subscriptions and queues (new sequence number, delivery count reset); a
  subscription whose ForwardTo target was deleted keeps its messages, and a topic whose
  subscriptions hold ``MaxSizeInMegabytes`` refuses sends (``amqp:resource-limit-exceeded``;
  ``Namespace.megabyte`` scales the quota for tests);
- lock expiry times reported on the broker's clock, ``Namespace.clock_skew`` off the host's;
- sessions: ``com.microsoft:session-filter`` with an id or next available (waiting
  up to the link's ``com.microsoft:timeout``), one receiver per session, order kept
  within a session, session lock expiry and renewal;
- duplicate detection on the message id within the entity's window; scheduled
  messages (annotation or ``schedule-message``), cancelling them;
- ``$management``: renew-lock, renew-session-lock, peek-message, schedule-message,
  cancel-scheduled-message, update-disposition, get/set-session-state.

Not covered (the backend does not use them): transactions, deferred-message
retrieval by sequence number, rule management over AMQP, partitioned entities,
"Session ID is null" dead-lettering of forwarded messages, max forwarding hop
dead-lettering (such messages are dropped and listed in :attr:`AMQPBroker.dropped`).
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from proton import (
    Condition,
    Connection,
    Data,
    Delivery,
    Described,
    Endpoint,
    Event,
    Handler,
    Link,
    Message,
    Terminus,
    symbol,
    timestamp,
)
from proton.reactor import ApplicationEvent, Container, EventInjector

from . import amqp_management
from .amqp_router import Address, BrokerError, Router, clone, entity_path
from .amqp_store import MessageBox, SessionLock, StoredMessage
from .namespace import Namespace

_LOG = logging.getLogger(__name__)
# Standard tier limits: what the service advertises on sender links.
MAX_MESSAGE_SIZE = 256 * 1024
SESSION_FILTER = symbol("com.microsoft:session-filter")
LOCKED_UNTIL_UTC = symbol("com.microsoft:locked-until-utc")
OPERATION_TIMEOUT = symbol("com.microsoft:timeout")
DATETIMEOFFSET_EPOCH = 621355968000000000  # .NET ticks at the Unix epoch
DEFAULT_SESSION_WAIT = 60.0
TICK = 0.05
INCOMING_CREDIT = 200
LOCK_LOST = (
    "com.microsoft:message-lock-lost",
    "The lock supplied is invalid. Either the lock expired, or the message has already "
    "been removed from the queue.",
)
BATCH_SECTION_CODES = set(range(0x70, 0x79))


@dataclass
class Consumer:
    """A receiver link of the SDK (a proton Sender on our side) reading one box."""

    link: Link
    box: MessageBox
    session_id: str | None = None
    receive_and_delete: bool = False


@dataclass
class PendingSessionAttach:
    """A NEXT_AVAILABLE session receiver waiting for a session to become free."""

    link: Link
    box: MessageBox
    deadline: float


class _Later(Handler):
    """A timer task: ``action()`` once it is due, unless ``link`` was closed meanwhile."""

    def __init__(self, action: Callable[[], None], link: Link) -> None:
        super().__init__()
        self.action = action
        self.link = link

    def on_timer_task(self, event: Event) -> None:
        if not self.link.state & Endpoint.LOCAL_CLOSED:
            self.action()


@dataclass
class _ConnectionState:
    audiences: set[str] = field(default_factory=set)


def _ticks(seconds: float) -> int:
    return int(seconds * 10_000_000) + DATETIMEOFFSET_EPOCH


def split_transfer(payload: bytes) -> list[Message]:
    """Decode a transfer: one message, or the messages of a batch (format 0x80013700).

    proton does not expose the transfer's message format, so a batch is recognised by
    its shape: a body of data sections that each hold a complete encoded message.
    """
    message = Message()
    data = Data()
    position = 0
    inner: list[bytes] = []
    other_body = False
    while position < len(payload):
        data.clear()
        used = data.decode(payload[position:])
        position += used
        data.rewind()
        data.next()
        section = data.get_object()
        if isinstance(section, Described) and section.descriptor == 0x75:
            inner.append(bytes(section.value))
        elif isinstance(section, Described) and section.descriptor in (0x76, 0x77):
            other_body = True
    if inner and not other_body and all(_looks_like_message(b) for b in inner):
        messages = []
        for raw in inner:
            one = Message()
            one.decode(raw)
            messages.append(one)
        return messages
    message.decode(payload)
    return [message]


def _looks_like_message(raw: bytes) -> bool:
    """Whether ``raw`` is entirely a sequence of AMQP message sections (0x70..0x78)."""
    data = Data()
    position = 0
    try:
        while position < len(raw):
            if (
                raw[position : position + 2] != b"\x00\x53"
                or raw[position + 2] not in BATCH_SECTION_CODES
            ):
                return False
            data.clear()
            position += data.decode(raw[position:])
    except Exception:  # proton raises several types for undecodable bytes
        return False
    return position == len(raw) and len(raw) > 0


class Broker(Handler):
    """The proton event handler: links, transfers, dispositions, timers."""

    def __init__(self, namespace: Namespace, key_name: str, key: str) -> None:
        super().__init__()
        self.namespace = namespace
        self.key_name = key_name
        self.key = key
        self.router = Router(namespace, self._wake)
        self.consumers: dict[str, list[Consumer]] = {}
        self.pending_sessions: list[PendingSessionAttach] = []
        self.acceptor: Any = None
        self.container: Any = None
        self.connections: list[Connection] = []
        self.transports: list[Any] = []
        """Transports of accepted connections, to close their sockets when the broker stops."""
        self._dirty: set[str] = set()
        self._last_sweep = 0.0
        self.session_timeout_detach_delay = 0.0
        """Seconds between the attach and the detach that turn down a session wait that timed
        out. 0 sends both at once; Service Bus has been seen to attach such a link first
        (azure-sdk-for-js#9775), and an SDK may take it for open in between."""
        self.session_timeout_lateness = 0.0
        """Seconds the answer to a session wait that timed out comes late (a slow network)."""
        self.credit_on_timed_out_waits = 0
        """Times a client granted credit on a link attached to turn down a session wait: it
        took the link for open and tried to receive on a link that holds no session."""

    # -- lifecycle -------------------------------------------------------------------------

    def on_reactor_init(self, event: Event) -> None:
        self.container = event.container
        event.container.schedule(TICK, self)

    def on_timer_task(self, event: Event) -> None:
        now = time.time()
        for box in list(self.router.boxes.values()):
            for stored in box.expired_locks(now):
                if stored.lock_token is not None:
                    box.unlock(stored.lock_token)
                self.router.delivery_failed(box, stored)
            for session_id, lock in list(box.session_locks.items()):
                if lock.locked_until <= now:
                    self._lose_session(box, session_id, "com.microsoft:session-lock-lost")
        self.router.release_due(now)
        for pending in list(self.pending_sessions):
            if pending.deadline <= now:
                self.pending_sessions.remove(pending)
                self._time_out_session_wait(pending.link)
        if now - self._last_sweep > 1.0:
            self._last_sweep = now
            self.router.drop_deleted()
        self._flush()
        event.container.schedule(TICK, self)

    def on_stop(self, event: Event) -> None:
        if self.acceptor is not None:
            self.acceptor.close()
        for connection in self.connections:
            connection.close()
        self.container.stop()

    def on_connection_init(self, event: Event) -> None:
        self.connections.append(event.connection)
        event.connection.sb_state = _ConnectionState()

    def on_connection_bound(self, event: Event) -> None:
        self.transports.append(event.transport)
        sasl = event.transport.sasl()
        sasl.allowed_mechs("ANONYMOUS PLAIN")
        sasl.allow_insecure_mechs = True

    def on_connection_remote_open(self, event: Event) -> None:
        if event.connection.state & Endpoint.LOCAL_UNINIT:
            event.connection.open()

    def on_session_remote_open(self, event: Event) -> None:
        if event.session.state & Endpoint.LOCAL_UNINIT:
            event.session.open()

    def on_link_remote_close(self, event: Event) -> None:
        self._forget_link(event.link)
        if not event.link.state & Endpoint.LOCAL_CLOSED:
            event.link.close()

    def on_session_remote_close(self, event: Event) -> None:
        if not event.session.state & Endpoint.LOCAL_CLOSED:
            event.session.close()

    def on_connection_remote_close(self, event: Event) -> None:
        if not event.connection.state & Endpoint.LOCAL_CLOSED:
            event.connection.close()

    def on_connection_unbound(self, event: Event) -> None:
        self._drop_connection(event.connection)

    def on_transport_closed(self, event: Event) -> None:
        if event.connection is not None:
            self._drop_connection(event.connection)

    def _drop_connection(self, connection: Connection) -> None:
        link = connection.link_head(0)
        while link:
            self._forget_link(link)
            link = link.next(0)
        if connection in self.connections:
            self.connections.remove(connection)

    # -- attach ----------------------------------------------------------------------------

    def on_link_remote_open(self, event: Event) -> None:
        link = event.link
        if not link.state & Endpoint.LOCAL_UNINIT:
            return
        link.source.copy(link.remote_source)
        link.target.copy(link.remote_target)
        terminus = link.remote_target if link.is_receiver else link.remote_source
        address_text = terminus.address or ""
        link.sb_role = "entity"
        if address_text == "$cbs":
            link.sb_role = "cbs"
            self._open(link)
            return
        try:
            address = self.router.resolve(address_text)
        except BrokerError as error:
            self._refuse(link, error.condition, error.description)
            return
        state: _ConnectionState = link.connection.sb_state
        requested = entity_path(address_text)
        if not amqp_management.authorized(state.audiences, requested):
            self._refuse(
                link,
                "amqp:unauthorized-access",
                f"Unauthorized access to '{requested}': put a token on $cbs first.",
            )
            return
        link.sb_address = address
        if address.management:
            link.sb_role = "management"
            self._open(link)
        elif link.is_receiver:
            if address.kind == "subscription" or address.dead_letter:
                self._refuse(link, "amqp:not-allowed", f"Cannot send to '{address.box_path}'.")
                return
            link.max_message_size = MAX_MESSAGE_SIZE
            self._open(link)
        else:
            self._attach_consumer(link, address)

    def _open(self, link: Link) -> None:
        link.open()
        if link.is_receiver:
            link.flow(INCOMING_CREDIT)

    def _refuse(
        self, link: Link, condition: str, description: str, *, keep_terminus: bool = False
    ) -> None:
        """Attach then detach with an error: how the service turns a link down.

        The attach carries no terminus for the entity, so the SDK never takes the link for
        ready (and sends nothing on it) before it reads the detach and its error.
        """
        if link.state & Endpoint.LOCAL_UNINIT:
            if not keep_terminus:
                (link.target if link.is_receiver else link.source).type = Terminus.UNSPECIFIED
            link.open()
        link.condition = error_condition(condition, description)
        link.close()

    def _time_out_session_wait(self, link: Link) -> None:
        refuse = functools.partial(
            self._refuse,
            link,
            "com.microsoft:timeout",
            "No session available to complete the request.",
            keep_terminus=True,
        )
        delay = self.session_timeout_detach_delay
        if delay <= 0:
            refuse()
            return
        link.open()  # the attach now, the detach after the delay
        link.sb_timed_out_wait = True
        self.container.schedule(delay, _Later(refuse, link))

    def _attach_consumer(self, link: Link, address: Address) -> None:
        box = self.router.box(address)
        consumer = Consumer(
            link, box, receive_and_delete=link.remote_snd_settle_mode == Link.SND_SETTLED
        )
        if not box.requires_session:
            self._start_consumer(consumer)
            return
        requested = self._session_filter(link)
        if requested is not None:
            if box.session_locked(requested, time.time()):
                self._refuse(
                    link,
                    "com.microsoft:session-cannot-be-locked",
                    f"The requested session '{requested}' cannot be accepted. It may be locked by "
                    "another receiver.",
                    keep_terminus=True,
                )
                return
            self._lock_session(consumer, requested)
            return
        free = box.free_sessions()
        if free:
            self._lock_session(consumer, free[0])
            return
        wait = self._link_timeout(link) + self.session_timeout_lateness
        self.pending_sessions.append(PendingSessionAttach(link, box, time.time() + wait))

    def _session_filter(self, link: Link) -> str | None:
        filters = link.remote_source.filter
        filters.rewind()
        if not filters.next():
            return None
        value = filters.get_object()
        if not isinstance(value, dict):
            return None
        requested = value.get(SESSION_FILTER)
        if isinstance(requested, Described):
            requested = requested.value
        return None if requested is None else str(requested)

    @staticmethod
    def _link_timeout(link: Link) -> float:
        properties = link.remote_properties or {}
        timeout_ms = properties.get(OPERATION_TIMEOUT)
        return int(timeout_ms) / 1000 if timeout_ms else DEFAULT_SESSION_WAIT

    def _lock_session(self, consumer: Consumer, session_id: str) -> None:
        box = consumer.box
        until = time.time() + box.entity.lock_duration.total_seconds()
        box.session_locks[session_id] = SessionLock(consumer.link, until)
        consumer.session_id = session_id
        filters = consumer.link.source.filter
        filters.clear()
        filters.put_map()
        filters.enter()
        filters.put_symbol(SESSION_FILTER)
        filters.put_string(session_id)
        filters.exit()
        consumer.link.properties = {LOCKED_UNTIL_UTC: _ticks(until + self.namespace.clock_skew)}
        self._start_consumer(consumer)

    def _start_consumer(self, consumer: Consumer) -> None:
        consumer.link.sb_consumer = consumer
        consumer.link.open()
        self.consumers.setdefault(consumer.box.path.lower(), []).append(consumer)
        self._wake(consumer.box)

    def _forget_link(self, link: Link) -> None:
        consumer: Consumer | None = getattr(link, "sb_consumer", None)
        if consumer is None:
            for pending in list(self.pending_sessions):
                if pending.link == link:
                    self.pending_sessions.remove(pending)
            return
        del link.sb_consumer
        key = consumer.box.path.lower()
        consumers = self.consumers.get(key, [])
        if consumer in consumers:
            consumers.remove(consumer)
        if consumer.session_id is not None:
            lock = consumer.box.session_locks.get(consumer.session_id)
            if lock is not None and lock.holder == link:
                self._lose_session(consumer.box, consumer.session_id, None)

    def _lose_session(self, box: MessageBox, session_id: str, condition: str | None) -> None:
        """Release a session lock: its locked messages count a failed delivery."""
        lock = box.session_locks.pop(session_id, None)
        for stored in [s for s in box.locked.values() if s.session_id == session_id]:
            if stored.lock_token is not None:
                box.unlock(stored.lock_token)
            self.router.delivery_failed(box, stored)
        if lock is not None and condition is not None:
            link = lock.holder
            assert isinstance(link, Link)
            if hasattr(link, "sb_consumer"):
                self._forget_link(link)
            if not link.state & Endpoint.LOCAL_CLOSED:
                self._refuse(link, condition, "The session lock has expired.")
        self._wake(box)

    # -- delivering ------------------------------------------------------------------------

    def _wake(self, box: MessageBox) -> None:
        self._dirty.add(box.path.lower())

    def _flush(self) -> None:
        """Deliver to consumers with credit, and start waiting session receivers."""
        while self._dirty:
            key = self._dirty.pop()
            box = self.router.boxes.get(key)
            if box is None:
                continue
            if box.requires_session:
                self._serve_pending_sessions(box)
            self._pump(box)

    def _serve_pending_sessions(self, box: MessageBox) -> None:
        for pending in [p for p in self.pending_sessions if p.box is box]:
            free = box.free_sessions()
            if not free:
                return
            self.pending_sessions.remove(pending)
            consumer = Consumer(
                pending.link,
                box,
                receive_and_delete=pending.link.remote_snd_settle_mode == Link.SND_SETTLED,
            )
            self._lock_session(consumer, free[0])

    def _pump(self, box: MessageBox) -> None:
        consumers = [c for c in self.consumers.get(box.path.lower(), []) if c.link.credit > 0]
        while consumers:
            for consumer in list(consumers):
                if consumer.link.credit <= 0:
                    consumers.remove(consumer)
                    continue
                stored = box.take(consumer.session_id)
                if stored is None:
                    consumers.remove(consumer)
                    continue
                if self.router.expired(box, stored, time.time()):
                    continue
                self._deliver(consumer, stored)
            # Rotate so concurrent consumers share the messages.
            if consumers:
                consumers.append(consumers.pop(0))
        for consumer in self.consumers.get(box.path.lower(), []):
            if consumer.link.drain_mode and consumer.link.credit > 0:
                consumer.link.drained()

    def _deliver(self, consumer: Consumer, stored: StoredMessage) -> None:
        box, link = consumer.box, consumer.link
        now = time.time()
        if consumer.session_id is not None:
            until = box.session_locks[consumer.session_id].locked_until
        else:
            until = now + box.entity.lock_duration.total_seconds()
        # receive-and-delete: the message is gone once sent, so nothing to lock.
        token = uuid.uuid4() if consumer.receive_and_delete else box.lock(stored, link, until)
        message = stored.message
        annotations = dict(message.annotations or {})
        annotations[symbol("x-opt-sequence-number")] = stored.sequence_number
        annotations[symbol("x-opt-enqueued-time")] = timestamp(int(stored.enqueued_time * 1000))
        if not consumer.receive_and_delete:
            annotations[symbol("x-opt-lock-token")] = token
            reported = until + self.namespace.clock_skew
            annotations[symbol("x-opt-locked-until")] = timestamp(int(reported * 1000))
        message.annotations = annotations
        delivery = link.delivery(token.bytes_le)
        delivery.sb_token = token
        delivery.sb_box = box
        link.send(encode_with_header(message, stored.delivery_count))
        link.advance()
        if consumer.receive_and_delete:
            delivery.settle()

    def encode_for_peek(self, stored: StoredMessage) -> bytes:
        message = clone(stored.message)
        annotations = dict(message.annotations or {})
        annotations[symbol("x-opt-sequence-number")] = stored.sequence_number
        annotations[symbol("x-opt-enqueued-time")] = timestamp(int(stored.enqueued_time * 1000))
        annotations.pop(symbol("x-opt-lock-token"), None)
        message.annotations = annotations
        return encode_with_header(message, stored.delivery_count)

    def encode_scheduled(self, sequence_number: int, message: Message) -> bytes:
        copy = clone(message)
        annotations = dict(copy.annotations or {})
        annotations[symbol("x-opt-sequence-number")] = sequence_number
        annotations[symbol("x-opt-message-state")] = 2
        copy.annotations = annotations
        return bytes(copy.encode())

    # -- transfers and dispositions --------------------------------------------------------

    def on_delivery(self, event: Event) -> None:
        delivery, link = event.delivery, event.link
        if link.is_receiver:
            if delivery.readable and not delivery.partial:
                self._incoming(link, delivery)
        elif delivery.updated:
            self._disposition(delivery)
        self._flush()

    def on_link_flow(self, event: Event) -> None:
        if getattr(event.link, "sb_timed_out_wait", False) and event.link.credit > 0:
            self.credit_on_timed_out_waits += 1
        consumer: Consumer | None = getattr(event.link, "sb_consumer", None)
        if consumer is not None and event.link.is_sender:
            self._wake(consumer.box)
            self._flush()

    def _incoming(self, link: Link, delivery: Delivery) -> None:
        payload = link.recv(delivery.pending)
        link.advance()
        if link.credit < INCOMING_CREDIT // 2:
            link.flow(INCOMING_CREDIT - link.credit)
        role = getattr(link, "sb_role", "entity")
        try:
            if role == "cbs":
                self._respond(link, _decode(payload), "cbs")
            elif role == "management":
                self._respond(link, _decode(payload), "management")
            else:
                if len(payload) > MAX_MESSAGE_SIZE:
                    raise BrokerError(
                        "amqp:link:message-size-exceeded",
                        f"The received message (size {len(payload)} bytes) exceeds the limit "
                        f"({MAX_MESSAGE_SIZE} bytes) currently allowed on the link.",
                    )
                address: Address | None = getattr(link, "sb_address", None)
                if address is None:  # a transfer on a link we are refusing
                    raise BrokerError("amqp:not-found", "The link was refused.", 404)
                with self.namespace.lock:
                    for message in split_transfer(payload):
                        self.router.send(address, message)
            delivery.update(Delivery.ACCEPTED)
        except BrokerError as error:
            delivery.local.condition = error_condition(error.condition, error.description)
            delivery.update(Delivery.REJECTED)
        delivery.settle()

    def _respond(self, link: Link, request: Message, role: str) -> None:
        if role == "cbs":
            state: _ConnectionState = link.connection.sb_state
            response = amqp_management.put_token(self, request, state.audiences)
        else:
            response = amqp_management.handle(self, link.sb_address, request)
        reply = response.to_message(request)
        sender = self._reply_link(link)
        if sender is None:
            return
        reply.address = request.reply_to
        delivery = sender.delivery(uuid.uuid4().bytes)
        sender.send(reply.encode())
        sender.advance()
        delivery.settle()

    @staticmethod
    def _reply_link(request_link: Link) -> Link | None:
        """The SDK's response link on the same node: same address, opposite direction."""
        node = request_link.remote_target.address
        candidates = []
        link = request_link.connection.link_head(Endpoint.LOCAL_ACTIVE)
        while link:
            if link.is_sender and link.remote_source.address == node:
                candidates.append(link)
            link = link.next(Endpoint.LOCAL_ACTIVE)
        same_session = [c for c in candidates if c.session == request_link.session]
        return (same_session or candidates or [None])[0]

    def _disposition(self, delivery: Delivery) -> None:
        token: uuid.UUID | None = getattr(delivery, "sb_token", None)
        box: MessageBox | None = getattr(delivery, "sb_box", None)
        if token is None or box is None or (delivery.settled and delivery.remote_state == 0):
            delivery.settle()
            return
        state = delivery.remote_state
        outcome = {
            Delivery.ACCEPTED: "complete",
            Delivery.RELEASED: "release",
            Delivery.REJECTED: "dead-letter",
            Delivery.MODIFIED: "defer" if delivery.remote.undeliverable else "abandon",
        }.get(state)
        if outcome is None:
            return  # a non-terminal state (received): wait for the outcome
        reason = description = None
        if outcome == "dead-letter" and delivery.remote.condition is not None:
            info = delivery.remote.condition.info or {}
            reason = _text(info.get("DeadLetterReason", info.get(symbol("DeadLetterReason"))))
            description = _text(
                info.get(
                    "DeadLetterErrorDescription", info.get(symbol("DeadLetterErrorDescription"))
                )
            )
        applied = self.settle(box, token, outcome, reason, description)
        if not delivery.settled:
            if applied:
                if state == Delivery.MODIFIED:
                    delivery.local.failed = delivery.remote.failed
                    delivery.local.undeliverable = delivery.remote.undeliverable
                delivery.update(state)
            else:
                delivery.local.condition = error_condition(*LOCK_LOST)
                delivery.update(Delivery.REJECTED)
        delivery.settle()

    def settle(
        self,
        box: MessageBox,
        token: uuid.UUID,
        outcome: str,
        reason: str | None = None,
        description: str | None = None,
    ) -> bool:
        """Apply a settlement to a locked message; ``False`` when the lock is gone."""
        stored = box.unlock(token)
        if stored is None:
            return False
        if outcome == "release":
            box.add(stored)
            self._wake(box)
        elif outcome == "abandon":
            self.router.delivery_failed(box, stored)
        elif outcome == "defer":
            stored.deferred = True
            box.deferred[stored.sequence_number] = stored
        elif outcome == "dead-letter":
            self.router.dead_letter(box, stored, reason, description)
        return True

    def renew_message_lock(self, box: MessageBox, token: uuid.UUID) -> float | None:
        stored = box.locked.get(token)
        if stored is None or stored.locked_until <= time.time():
            return None
        stored.locked_until = time.time() + box.entity.lock_duration.total_seconds()
        return stored.locked_until

    def renew_session_lock(self, box: MessageBox, session_id: str) -> float:
        lock = box.session_locks.get(session_id)
        if lock is None or lock.locked_until <= time.time():
            raise BrokerError(
                "com.microsoft:session-lock-lost",
                "The session lock has expired on the MessageSession.",
                410,
            )
        lock.locked_until = time.time() + box.entity.lock_duration.total_seconds()
        for stored in box.locked.values():
            if stored.session_id == session_id:
                stored.locked_until = lock.locked_until
        return lock.locked_until


def error_condition(name: str, description: str) -> Condition:
    """An AMQP error with an info map: the SDK reads all three fields of a rejected outcome."""
    return Condition(name, description, {symbol("com.microsoft:tracking-id"): str(uuid.uuid4())})


def encode_with_header(message: Message, delivery_count: int) -> bytes:
    """Encode with a header that always carries delivery-count, as the service sends it.

    proton leaves out fields at their default (a count of 0), and the SDK then reports
    ``delivery_count=None``; so the header section is written here.
    """
    encoded = bytes(message.encode())
    rest = encoded
    header = Data()
    if encoded[:3] == b"\x00\x53\x70":
        used = header.decode(encoded)
        rest = encoded[used:]
    header.rewind()
    fields = header.get_object().value if header.next() else []
    fields = list(fields) + [None] * (4 - len(fields))
    out = Data()
    out.put_described()
    out.enter()
    out.put_ulong(0x70)
    out.put_list()
    out.enter()
    out.put_bool(bool(fields[0]))
    out.put_ubyte(4 if fields[1] is None else int(fields[1]))
    if fields[2] is None:
        out.put_null()
    else:
        out.put_uint(int(fields[2]))
    out.put_bool(delivery_count == 0)
    out.put_uint(delivery_count)
    out.exit()
    out.exit()
    return bytes(out.encode()) + rest


def _guarded(method: Callable[[Broker, Event], None]) -> Callable[[Broker, Event], None]:
    """Keep the reactor alive on a bug, and record it so the test run fails instead of hanging."""

    @functools.wraps(method)
    def guarded(self: Broker, event: Event) -> None:
        try:
            method(self, event)
        except Exception as error:
            _LOG.exception("the AMQP stand-in failed in %s", method.__name__)
            self.router.errors.append(f"{method.__name__}: {error!r}")

    return guarded


for _name, _method in list(vars(Broker).items()):
    if _name.startswith("on_") and callable(_method):
        setattr(Broker, _name, _guarded(_method))


def _decode(payload: bytes) -> Message:
    message = Message()
    message.decode(payload)
    return message


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class AMQPBroker:
    """The AMQP stand-in: a :class:`Broker` on a proton container in a daemon thread.

    Args:
        namespace: The entities to serve (shared with the management stand-in).
        host: Interface to listen on.
        port: TCP port, or 0 for a free one (read :attr:`port` after :meth:`start`).
        key_name: The SharedAccessKeyName tokens must be signed for.
        key: The SharedAccessKey tokens must be signed with.
    """

    def __init__(
        self,
        namespace: Namespace,
        host: str = "127.0.0.1",
        port: int = 0,
        key_name: str = "RootManageSharedAccessKey",
        key: str = "",
    ) -> None:
        self.namespace = namespace
        self.host = host
        self.port = port
        self.broker = Broker(namespace, key_name, key)
        self._container: Container | None = None
        self._injector: EventInjector | None = None
        self._thread: threading.Thread | None = None

    @property
    def errors(self) -> list[str]:
        """Problems a test should fail on (e.g. a SQL filter outside the supported subset)."""
        return self.broker.router.errors

    @property
    def dropped(self) -> list[str]:
        """Messages dropped where the service would dead-letter or discard them."""
        return self.broker.router.dropped

    def start(self) -> None:
        if self.port == 0:
            self.port = _free_port(self.host)
        container = Container(self.broker)
        container.container_id = "melange-servicebus-standin"
        injector = EventInjector()
        container.selectable(injector)
        self.broker.acceptor = container.listen(f"{self.host}:{self.port}")
        self._container, self._injector = container, injector
        self._thread = threading.Thread(target=container.run, name="sb-amqp-standin", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._injector is None or self._thread is None:
            return
        self._injector.trigger(ApplicationEvent("stop"))
        self._thread.join(timeout=5)
        self._injector.close()
        self._injector = None
        self._thread = None
        # A stopped proton container leaves its sockets open: clients would wait on them
        # forever, as on a black-holed endpoint. Close them, as an exiting process would.
        for transport in self.broker.transports:
            selectable = getattr(transport, "_selectable", None)
            if selectable is not None:
                selectable.close()
        self.broker.transports.clear()

    def restart(self) -> None:
        """Stop, then start again on the same port as a new process would: messages are lost.

        Open connections are closed; the entities stay (they live in the shared
        namespace, like the management stand-in's), the messages, locks and
        sessions do not. Problems recorded so far are kept.
        """
        errors, dropped = self.errors, self.dropped
        self.stop()
        self.broker = Broker(self.namespace, self.broker.key_name, self.broker.key)
        self.broker.router.errors = errors
        self.broker.router.dropped = dropped
        self.start()
