"""One AMQP connection per backend, owned by one I/O thread.

pika's ``BlockingConnection`` is not thread-safe, and a delivery must be acked
on the channel that received it. So one thread owns the connection and every
channel: other threads hand it jobs (a callable and a result slot) and wake it
with ``add_callback_threadsafe``, the one pika method made for that. Between
jobs the thread runs ``process_data_events``, which answers heartbeats and fills
each queue's prefetch buffer from its consumer, and returns the deliveries
whose lease is due.

Receivers read those buffers directly (under a lock), so a receive that finds
messages waiting costs no hop to the I/O thread. A lost connection is
reconnected with exponential backoff on the next job; the broker has returned
every unacked delivery of the old one by then, so their receipts turn stale.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties

from melange.exceptions import (
    BackendClosed,
    BackendUnavailable,
    ConfigurationError,
    MelangeError,
    OutcomeUnknown,
)
from melange_rabbitmq.confirms import ConfirmChannel
from melange_rabbitmq.leases import DeliveryKey, LeaseTable
from melange_rabbitmq.one_write import one_write
from melange_rabbitmq.unsettled import Unsettled

__all__ = ["CONNECTION_ERRORS", "Delivery", "Link"]

_T = TypeVar("_T")
log = logging.getLogger("melange.rabbitmq.link")

CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.ConnectionWrongStateError,
    pika.exceptions.StreamLostError,
    OSError,
)
"""What a lost or unusable connection raises inside pika."""

TICK = 0.05
"""Seconds the I/O thread waits for events between two looks at due leases."""

LINGER = 0.0005
"""Seconds the I/O thread waits for the next call after answering one, before it reads the
socket again: a caller that calls again at once (a publish loop) finds it awake, without a
wake through pika's pipe and a return from ``process_data_events`` (80 us a call, measured)."""

UNOPENED_CLOSE_WAIT = 0.5
"""Seconds :meth:`Link.close` waits for the I/O thread while no connection is open: it may be in
a connection attempt that lasts pika's stack timeout (15 s) against an endpoint that accepts and
never answers, and with no connection there is nothing to send. The thread is a daemon."""


@dataclass(slots=True)
class Delivery:
    """A message as a consumer (or ``basic.get``) received it, with the key to settle it."""

    key: DeliveryKey
    queue: str
    method: Basic.Deliver | Basic.GetOk
    properties: BasicProperties
    body: bytes


@dataclass
class _Consumer:
    queue: str
    channel: BlockingChannel
    generation: int
    buffer: collections.deque[Delivery] = field(default_factory=collections.deque)
    active: bool = True


class _Job(Generic[_T]):
    __slots__ = ("detached", "done", "error", "fn", "result", "settling")

    def __init__(self, fn: Callable[[], _T], *, detached: bool = False) -> None:
        self.fn = fn
        self.detached = detached  # nobody waits: an error is logged
        self.done = threading.Lock()  # held until the job ran: one wake, where an Event takes two
        self.done.acquire()
        self.result: _T | None = None
        self.error: BaseException | None = None
        # A settle_later job: the keys it settles (more may join until it starts), and requeue.
        self.settling: tuple[list[DeliveryKey], bool | None] | None = None


class Link:
    """The connection, its channels and its I/O thread.

    Args:
        parameters: pika's connection parameters (from the URL).
        where: The broker as errors name it, without credentials.
        prefetch: Deliveries each queue's consumer may hold unacknowledged.
        call_timeout: Seconds a caller waits for the I/O thread to do a job.
        backoff: ``(first, longest)`` seconds between reconnection attempts.
    """

    def __init__(
        self,
        parameters: pika.ConnectionParameters,
        where: str,
        *,
        prefetch: int,
        call_timeout: float,
        backoff: tuple[float, float] = (0.2, 10.0),
    ) -> None:
        self.parameters = parameters
        self.where = where
        self.prefetch = prefetch
        self.call_timeout = call_timeout
        self.leases = LeaseTable()
        self.generation = 0
        self.connects = 0
        self._backoff_range = backoff
        self._backoff = backoff[0]
        self._retry_at = 0.0
        self._last_error = ""
        self._conn: pika.BlockingConnection | None = None
        self._ops: BlockingChannel | None = None
        self._publisher: ConfirmChannel | None = None
        self._consumers: dict[str, _Consumer] = {}
        self._channels: dict[tuple[int, int], BlockingChannel] = {}
        self._unsettled = Unsettled()  # of the consumers' channels
        self._lock = threading.Lock()
        self._jobs: collections.deque[_Job[Any]] = collections.deque()
        self._work = threading.Condition(self._lock)
        self._arrived = threading.Condition(self._lock)
        self._stopping = False
        self._lingering = False
        self._thread = threading.Thread(target=self._loop, name="melange-rabbitmq-io", daemon=True)
        self._thread.start()
        _OPEN_LINKS.add(self)

    # -------------------------------------------------------------- callers
    def call(self, fn: Callable[[], _T], *, publishing: bool = False) -> _T:
        """Run ``fn`` on the I/O thread and return its result (or raise its error).

        Args:
            fn: Runs on the I/O thread; may use :meth:`channel`, :meth:`publisher` and so on.
            publishing: A timeout means the broker may have the message: OutcomeUnknown.
        """
        job: _Job[_T] = _Job(fn)
        self._enqueue(job)
        if not job.done.acquire(timeout=self.call_timeout):
            what = OutcomeUnknown if publishing else BackendUnavailable
            raise what(
                f"RabbitMQ at {self.where} did not answer within {self.call_timeout:g} s "
                "(call_timeout); the connection may be blocked by a resource alarm or lost"
            )
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    def submit(self, fn: Callable[[], object]) -> None:
        """Queue ``fn`` for the I/O thread and return at once; its error is logged, not raised.

        For acks and nacks: AMQP answers neither, so waiting for the frames to be
        written would tell the caller nothing more (a connection lost after the write
        loses them just the same, and the broker delivers those messages again).
        Jobs run in order, and :meth:`close` runs the ones queued before it.
        """
        self._enqueue(_Job(fn, detached=True))

    def settle_later(self, keys: list[DeliveryKey], *, requeue: bool | None) -> None:
        """:meth:`settle` on the I/O thread, without waiting for it (see :meth:`submit`).

        Keys settled the same way as the job queued last, which has not started, join
        it: one job and one flush for both, and one ``multiple`` frame when together
        they are every unsettled delivery of their channel.
        """
        with self._lock:
            last = self._jobs[-1] if self._jobs and not self._stopping else None
            if last is not None and last.settling is not None and last.settling[1] == requeue:
                last.settling[0].extend(keys)  # it reads them once the I/O thread took it
                return
        batch = list(keys)
        job: _Job[None] = _Job(lambda: self.settle(batch, requeue=requeue), detached=True)
        job.settling = (batch, requeue)
        self._enqueue(job)

    def _enqueue(self, job: _Job[Any]) -> None:
        """Queue ``job`` for the I/O thread and wake it."""
        with self._lock:
            if self._stopping:
                raise BackendClosed("rabbitmq", "use the connection")
            # A job queued before this one had its wake: the thread takes every queued job
            # before it goes back into pika. And a lingering thread waits on the condition.
            woken = bool(self._jobs) or self._lingering
            self._jobs.append(job)
            self._work.notify()
            if woken:
                return
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(Exception):  # closed meanwhile: the loop polls anyway
                conn.add_callback_threadsafe(_nothing)

    def take(self, queue: str, max_messages: int) -> list[Delivery]:
        """Pop up to ``max_messages`` buffered deliveries of ``queue``; any thread."""
        with self._lock:
            consumer = self._consumers.get(queue)
            if consumer is None or not consumer.buffer:
                return []
            if not consumer.channel.is_open:  # closed by the broker: it returned these already
                consumer.buffer.clear()
                consumer.active = False
                return []
            buffer = consumer.buffer
            count = min(max_messages, len(buffer))
            return [buffer.popleft() for _ in range(count)]

    def has_consumer(self, queue: str) -> bool:
        """Whether ``queue`` has a live consumer on the current connection."""
        consumer = self._consumers.get(queue)
        return consumer is not None and consumer.active

    def wait_for(self, queue: str, seconds: float) -> None:
        """Wait up to ``seconds`` for a delivery to ``queue``'s buffer (or a lost consumer)."""
        deadline = time.monotonic() + seconds
        with self._lock:
            while not self._stopping:
                consumer = self._consumers.get(queue)
                if consumer is None or consumer.buffer or not consumer.active:
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._arrived.wait(remaining)

    def close(self) -> None:
        """Close the connection and stop the I/O thread; idempotent."""
        _OPEN_LINKS.discard(self)
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            self._work.notify_all()
            self._arrived.notify_all()
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.add_callback_threadsafe(_nothing)
        opened = conn is not None and conn.is_open
        # Acks and nacks queued go out only on an open connection: without one, do not wait
        # for a connection attempt (the exit of a process would wait for it too).
        self._thread.join(self.call_timeout + 5.0 if opened else UNOPENED_CLOSE_WAIT)

    # ------------------------------------------- used on the I/O thread only
    def connection(self) -> pika.BlockingConnection:
        """The open connection, connecting (with backoff) when there is none."""
        conn = self._conn
        if conn is not None and conn.is_open:
            return conn
        if conn is not None:
            self._lost("the connection closed")
        now = time.monotonic()
        if now < self._retry_at:
            raise BackendUnavailable(
                f"cannot connect to RabbitMQ at {self.where}: {self._last_error}; the next "
                f"attempt is in {self._retry_at - now:.1f} s (reconnection backoff)"
            )
        try:
            conn = pika.BlockingConnection(self.parameters)
        except (
            pika.exceptions.ProbableAuthenticationError,
            pika.exceptions.ProbableAccessDeniedError,
        ) as error:
            denied = isinstance(error, pika.exceptions.ProbableAccessDeniedError)
            self._failed(
                "the user has no access to the virtual host"
                if denied
                else "the broker refused the user name or password"
            )
            raise ConfigurationError(
                f"RabbitMQ at {self.where} refused the connection: {self._last_error}; check the "
                "credentials in the url and the user's permissions on the virtual host"
            ) from None
        except (*CONNECTION_ERRORS, pika.exceptions.AMQPError) as error:
            self._failed(_describe(error))
            raise BackendUnavailable(
                f"cannot connect to RabbitMQ at {self.where}: {self._last_error}; retrying with "
                f"backoff (next attempt in {self._backoff:.1f} s)"
            ) from None
        self._conn = conn
        self._backoff = self._backoff_range[0]
        self._retry_at = 0.0
        self.connects += 1
        return conn

    def channel(self) -> BlockingChannel:
        """The channel for declarations and lookups, reopened after the broker closed it."""
        channel = self._ops
        if channel is None or not channel.is_open:
            channel = self._ops = self.connection().channel()
        return channel

    def publisher(self) -> ConfirmChannel:
        """The channel in confirm mode that every publish goes through."""
        publisher = self._publisher
        if publisher is None or not publisher.is_open:
            publisher = self._publisher = ConfirmChannel(self.connection().channel())
        return publisher

    def consume(self, queue: str) -> _Consumer:
        """The live consumer of ``queue``, started (on a channel of its own) when needed.

        Raises:
            pika.exceptions.ChannelClosedByBroker: e.g. 404 when the queue does not exist.
        """
        consumer = self._consumers.get(queue)
        if consumer is not None and consumer.active and consumer.channel.is_open:
            return consumer
        if consumer is not None:
            self._forget(consumer)
        conn = self.connection()
        channel = conn.channel()
        # The number may be one a closed channel had: this one's deliveries start at tag 1.
        self._unsettled.forget((self.generation, channel.channel_number))
        channel.basic_qos(prefetch_count=self.prefetch)
        consumer = _Consumer(queue, channel, self.generation)
        channel.add_on_cancel_callback(lambda _frame: self._cancelled(consumer))
        try:
            channel.basic_consume(
                queue,
                lambda _ch, method, properties, body: self._deliver(
                    consumer, method, properties, body
                ),
            )
        except pika.exceptions.ChannelClosedByBroker:
            raise
        key = (self.generation, channel.channel_number)
        self._channels[key] = channel
        with self._lock:
            self._consumers[queue] = consumer
        return consumer

    def get(self, queue: str) -> Delivery | None:
        """``basic.get`` one message on the queue's consumer channel (so it acks there).

        Also dispatches deliveries that arrived before the answer, so an empty
        result means the queue had nothing ready.
        """
        consumer = self.consume(queue)
        method, properties, body = consumer.channel.basic_get(queue)
        if method is None:
            self.connection().process_data_events(time_limit=0)
            return None
        key = (consumer.generation, consumer.channel.channel_number, method.delivery_tag)
        self._unsettled.delivered(key[:2], method.delivery_tag)
        return Delivery(key, queue, method, properties, body)

    def settle(self, keys: list[DeliveryKey], *, requeue: bool | None) -> None:
        """Ack (``requeue=None``) or nack the deliveries still on their channel.

        A channel's part of the batch that is every delivery of it unsettled up
        to its highest tag is settled with one ``multiple`` frame; otherwise
        each gets a frame. The frames are queued on pika's channel
        implementation and written with one write and one flush per channel:
        ``BlockingChannel.basic_ack`` would flush (a round of socket I/O) after
        every single frame.
        """
        by_channel: dict[tuple[int, int], list[int]] = {}
        for generation, number, tag in keys:
            by_channel.setdefault((generation, number), []).append(tag)
        for key, tags in by_channel.items():
            channel = self._channels.get(key)
            if key[0] != self.generation or channel is None or not channel.is_open:
                continue  # the broker returned them when the channel closed
            top = self._unsettled.settle(key, tags)
            impl = channel._impl
            with one_write(impl.connection):
                for tag in tags if top is None else [top]:
                    if requeue is None:
                        impl.basic_ack(delivery_tag=tag, multiple=top is not None)
                    else:
                        impl.basic_nack(delivery_tag=tag, multiple=top is not None, requeue=requeue)
            channel._flush_output()

    def forget_queue(self, queue: str) -> None:
        """Drop the consumer of a deleted queue; its unacked deliveries went with it."""
        consumer = self._consumers.get(queue)
        if consumer is not None:
            self._forget(consumer)
            with contextlib.suppress(*CONNECTION_ERRORS, pika.exceptions.AMQPError):
                if consumer.channel.is_open:
                    consumer.channel.close()

    # ---------------------------------------------------------------- loop
    def _loop(self) -> None:
        linger = False
        while True:
            with self._lock:
                if self._stopping:
                    break
                job = self._jobs.popleft() if self._jobs else None
                if job is None and linger:
                    self._lingering = True
                    self._work.wait(LINGER)
                    self._lingering = False
                    linger = False
                    continue
                if job is None and (self._conn is None or not self._conn.is_open):
                    self._work.wait(TICK)
                    continue
            if job is not None:
                self._run(job)
                linger = not job.detached  # its caller may call again at once
                continue
            try:
                self._return_due()
                conn = self._conn
                if conn is not None:
                    conn.process_data_events(time_limit=TICK)
            except CONNECTION_ERRORS as error:
                self._lost(_describe(error))
            except pika.exceptions.AMQPError as error:  # a channel closed under a consumer
                log.debug("rabbitmq: %s", _describe(error))
        self._shutdown()

    def _run(self, job: _Job[Any]) -> None:
        try:
            job.result = job.fn()
        except (
            MelangeError
        ) as error:  # already says what happened (BackendUnavailable is an OSError)
            job.error = error
        except CONNECTION_ERRORS as error:
            self._lost(_describe(error))
            job.error = BackendUnavailable(
                f"lost the connection to RabbitMQ at {self.where}: {_describe(error)}"
            )
        except BaseException as error:  # handed to the caller, who raises it
            job.error = error
        finally:
            if job.detached and job.error is not None:
                log.warning("rabbitmq: settling deliveries failed: %s", _describe(job.error))
            job.done.release()

    def _return_due(self) -> None:
        due = self.leases.due(time.monotonic())
        if due:
            self.settle(due, requeue=True)

    def _deliver(
        self, consumer: _Consumer, method: Basic.Deliver, properties: BasicProperties, body: bytes
    ) -> None:
        key = (consumer.generation, consumer.channel.channel_number, method.delivery_tag)
        self._unsettled.delivered(key[:2], method.delivery_tag)
        with self._lock:
            consumer.buffer.append(Delivery(key, consumer.queue, method, properties, body))
            self._arrived.notify_all()

    def _cancelled(self, consumer: _Consumer) -> None:
        self._forget(consumer)

    def _forget(self, consumer: _Consumer) -> None:
        with self._lock:
            consumer.active = False
            consumer.buffer.clear()
            if self._consumers.get(consumer.queue) is consumer:
                del self._consumers[consumer.queue]
            self._arrived.notify_all()
        self._channels.pop((consumer.generation, consumer.channel.channel_number), None)
        self._unsettled.forget((consumer.generation, consumer.channel.channel_number))
        self.leases.drop(consumer.generation, consumer.channel.channel_number)

    def _failed(self, reason: str) -> None:
        self._last_error = reason
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self._backoff_range[1])

    def _lost(self, reason: str) -> None:
        """The connection is gone: every channel, consumer and lease of it goes too."""
        log.warning("rabbitmq: connection to %s lost: %s", self.where, reason)
        conn, self._conn = self._conn, None
        old = self.generation
        self.generation += 1
        with self._lock:
            for consumer in self._consumers.values():
                consumer.active = False
                consumer.buffer.clear()
            self._consumers.clear()
            self._arrived.notify_all()
        self._channels.clear()
        self._unsettled.clear()
        self._ops = self._publisher = None
        self.leases.drop(old)
        self._last_error = reason
        if conn is not None:
            with contextlib.suppress(Exception):
                if conn.is_open:
                    conn.close()

    def _shutdown(self) -> None:
        with self._lock:
            jobs = list(self._jobs)
            self._jobs.clear()
        conn = self._conn
        for job in jobs:
            if job.detached and conn is not None and conn.is_open:
                self._run(job)  # acks and nacks queued before the close go out
            elif not job.detached:
                job.error = BackendClosed("rabbitmq", "finish a call")
                job.done.release()
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                if conn.is_open:
                    conn.close()


_OPEN_LINKS: weakref.WeakSet[Link] = weakref.WeakSet()
"""Links not closed yet; closed when the interpreter exits."""


@atexit.register
def _close_open_links() -> None:
    # The I/O thread is a daemon, stopped dead when the interpreter exits: close the
    # links before that, so acks and nacks still queued for it go out (a dispatcher
    # run from main() returns, and the process exits without closing its backend).
    for link in list(_OPEN_LINKS):
        link.close()


def _nothing() -> None:
    """Wakes the I/O thread; the job queue says what to do."""


def _describe(error: BaseException) -> str:
    text = str(error) or repr(error)
    return f"{type(error).__name__}: {text}"
