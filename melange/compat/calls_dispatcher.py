"""melange 7.x's dispatcher call forms, run by melange 8's dispatcher.

7.x created a dispatcher without a queue::

    dispatcher = MessageDispatcher(serializer_registry, cache=None, backend=None, always_ack=False)
    dispatcher.attach_consumer(consumer)
    dispatcher.consume_loop("payment-updates")   # never returned

    SimpleMessageDispatcher(consumer, serializer_registry, backend=backend).consume_loop(queue)

:class:`~melange.dispatcher.MessageDispatcher` and
:class:`~melange.dispatcher.SimpleMessageDispatcher` detect that form (a
:class:`~melange.serializers.SerializerRegistry` where melange 8 takes the
backend) and create a :class:`LegacyMessageDispatcher` instead. It collects the
consumers, and ``consume_loop(queue_name)`` builds the melange 8 dispatcher for
that queue and runs it (until SIGTERM/SIGINT or :meth:`LegacyMessageDispatcher.stop`).

What 7.x did is kept: one message is handled at a time (``workers=1``); a message
that no consumer accepts is acknowledged and dropped (``on_unhandled="ack"``); a
message that cannot be decoded is left to come back, and so reaches the queue's
dead-letter queue (``on_undecodable="leave"``); a message whose consumer failed
comes back later, unless ``always_ack=True``, which acknowledges it anyway.
A 7.x deduplication cache becomes melange 8's (``melange.compat.cache``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from melange.backends.base import MessagingBackend, ReceivedMessage
from melange.compat.backend_manager import default_backend
from melange.compat.calls_common import bind_7x, warn_7x
from melange.consumers import Consumer, is_async_consumer
from melange.dispatcher import MessageDispatcher, SimpleMessageDispatcher
from melange.exceptions import ConfigurationError
from melange.message import Message
from melange.observability import CompositeHooks, Hooks
from melange.serializers import SerializerRegistry

__all__ = [
    "CONSUME_EVENT_IDLE_SECONDS",
    "DEFAULT_OPTIONS",
    "LegacyDispatcherError",
    "LegacyMessageDispatcher",
    "LegacySimpleMessageDispatcher",
    "dispatcher_7x",
]

logger = logging.getLogger("melange.dispatcher")

DEFAULT_OPTIONS: Mapping[str, Any] = {
    "workers": 1,
    "on_undecodable": "leave",
    "on_unhandled": "ack",
}
"""The melange 8 dispatcher options that keep 7.x's behaviour (see the module docs).

Undecodable messages are left to come back (and reach the dead-letter queue):
7.2.0 acknowledged only a ``SerializationError`` its serializer raised, and left
corrupt JSON or base64, unpicklable bodies and unknown serializer ids, which
melange 8 reports alike. Leaving them all loses none.
"""

CONSUME_EVENT_IDLE_SECONDS = 0.1
"""``consume_event`` returns once nothing was received or handled for this long."""

_CONSUME_EVENT_WAIT_SECONDS = 0.05  # short receives: a pass ends soon after the queue is empty

NEW_FORM = "MessageDispatcher(backend, queue_name, consumers, serializers), then .run()"

# Attributes of a melange 8 dispatcher: read from the one consume_loop runs, once it runs.
_FORWARDED = frozenset(
    {"stats", "config", "consumers", "queue_name", "running", "workers", "in_flight", "serializers"}
)
_NOT_IN_7X_FORM = frozenset({"start", "run", "run_until_idle"})


class LegacyDispatcherError(ConfigurationError, AttributeError):
    """A melange 8 dispatcher attribute was used on a dispatcher created the 7.x way."""


def _dispatcher_7x(
    serializer_registry: Any, cache: Any = None, backend: Any = None, always_ack: Any = False
) -> None:
    """7.x's ``MessageDispatcher`` signature, for argument binding."""


def _simple_dispatcher_7x(
    consumer: Any,
    serializer_registry: Any,
    cache: Any = None,
    backend: Any = None,
    always_ack: Any = False,
) -> None:
    """7.x's ``SimpleMessageDispatcher`` signature, for argument binding."""


def dispatcher_7x(
    cls: type[MessageDispatcher], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> LegacyMessageDispatcher:
    """Create the 7.x-form dispatcher for a ``cls(*args, **kwargs)`` call made the 7.x way."""
    if issubclass(cls, SimpleMessageDispatcher):
        return LegacySimpleMessageDispatcher(*args, **kwargs)
    return LegacyMessageDispatcher(*args, **kwargs)


class LegacyMessageDispatcher:
    """melange 7.x's ``MessageDispatcher(serializer_registry, cache, backend, always_ack)``.

    Deprecated: create ``MessageDispatcher(backend, queue_name, consumers,
    serializers)`` and call ``run()``.

    Args:
        serializer_registry: Decodes the bodies.
        cache: A 7.x deduplication cache (``melange.compat.cache``), or ``None``.
        backend: The backend; ``None`` uses the ``BackendManager`` default.
        always_ack: Acknowledge a message even when a consumer failed on it.

    Attributes:
        dispatcher_options: The melange 8 :class:`~melange.dispatcher_config.DispatcherConfig`
            options ``consume_loop`` builds its dispatcher with; change them before
            calling it (e.g. ``wait_seconds``).
        dispatcher: The melange 8 dispatcher the last ``consume_loop`` or
            ``consume_event`` built, or ``None``.

    Raises:
        ConfigurationError: An argument is invalid, or no backend was given and no
            default is set.
    """

    _form = "MessageDispatcher"
    _old = "MessageDispatcher(serializer_registry, cache, backend, always_ack)"
    _new = NEW_FORM
    _signature: Callable[..., None] = staticmethod(_dispatcher_7x)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        bound = bind_7x(f"{self._form}(...)", self._signature, args, kwargs, self._new)
        registry = bound["serializer_registry"]
        if not isinstance(registry, SerializerRegistry):
            raise ConfigurationError(
                f"{self._form}(serializer_registry=...) needs a "
                f"melange.serializers.SerializerRegistry, got {type(registry).__name__}; "
                f"melange 8's form is {self._new}"
            )
        always_ack = bound["always_ack"]
        if not isinstance(always_ack, bool):
            raise ConfigurationError(f"always_ack must be True or False, got {always_ack!r}")
        backend = bound["backend"]
        if backend is None:
            backend = default_backend(self._old.partition(", cache")[0] + ")")
        else:
            warn_7x(self._old, self._new)
            if not isinstance(backend, MessagingBackend):
                raise ConfigurationError(
                    f"{self._form}(..., backend=...) needs a melange 8 "
                    f"melange.backends.MessagingBackend, got {type(backend).__name__}; "
                    "melange 7.x backends do not work with melange 8"
                )
        if always_ack:
            warn_7x(
                f"{self._form}(..., always_ack=True) (acknowledge a message whose consumer failed)",
                "a consumer that catches its own exceptions: melange 8 has no such option, it "
                "acknowledges a message once every consumer returned without raising",
            )
        self.serializer_registry: SerializerRegistry = registry
        self.backend: MessagingBackend = backend
        self.cache: Any = bound["cache"]
        self.always_ack = always_ack
        self.dispatcher_options: dict[str, Any] = {
            **DEFAULT_OPTIONS,
            **_dedup_options(self.cache),
        }
        self.dispatcher: MessageDispatcher | None = None
        self._consumers: list[Any] = []
        self._lock = threading.Lock()
        self._stop_requested = False
        self._after_init(bound)

    def _after_init(self, bound: dict[str, Any]) -> None:
        """Hook for the single-consumer form."""

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} (melange 7.x form) backend={self.backend.name!r} "
            f"consumers={len(self._consumers)}>"
        )

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes not found: the melange 8 dispatcher API.
        if name in _FORWARDED:
            dispatcher = self.__dict__.get("dispatcher")
            if dispatcher is not None:
                return getattr(dispatcher, name)
        if name in _FORWARDED or name in _NOT_IN_7X_FORM:
            raise LegacyDispatcherError(
                f"this dispatcher was created the melange 7.x way ({self._form}("
                "serializer_registry, ...)), which has no queue until consume_loop(queue_name) "
                f"runs, so it has no {name}; create the melange 8 dispatcher, {self._new}"
            )
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ------------------------------------------------------------- consumers
    def attach_consumer(self, consumer: Any) -> None:
        """Add a consumer (7.x); it gets the messages it accepts.

        Raises:
            ConfigurationError: ``consumer`` is not a consumer, or ``consume_loop`` runs.
        """
        warn_7x(
            f"{self._form}.attach_consumer(consumer)",
            "MessageDispatcher(backend, queue_name, [consumer, ...])",
        )
        self._attach(consumer)

    def _attach(self, consumer: Any) -> None:
        if not isinstance(consumer, Consumer) and not (
            callable(getattr(consumer, "process", None))
            and callable(getattr(consumer, "accepts", None))
        ):
            hint = (
                " (decorate the function with @melange.consumers.consumer)"
                if callable(consumer)
                else ""
            )
            raise ConfigurationError(f"{consumer!r} is not a melange Consumer{hint}")
        with self._lock:
            self._check_idle("attach a consumer")
            if consumer not in self._consumers:
                self._consumers.append(consumer)

    def unattach_consumer(self, consumer: Any) -> None:
        """Remove a consumer (7.x); nothing happens if it is not attached.

        Raises:
            ConfigurationError: ``consume_loop`` runs.
        """
        warn_7x(
            f"{self._form}.unattach_consumer(consumer)",
            "MessageDispatcher(backend, queue_name, consumers) with the consumers you want",
        )
        with self._lock:
            self._check_idle("unattach a consumer")
            if consumer in self._consumers:
                self._consumers.remove(consumer)

    def _check_idle(self, what: str) -> None:
        dispatcher = self.dispatcher
        if dispatcher is not None and dispatcher.running:
            raise ConfigurationError(
                f"cannot {what} while consume_loop runs: a melange 8 dispatcher's consumers "
                "are fixed when it starts; stop() it first"
            )

    # ------------------------------------------------------------- consuming
    def consume_loop(
        self,
        queue_name: str,
        on_exception: Callable[[Exception], Any] | None = None,
        after_consume: Callable[[], Any] | None = None,
    ) -> None:
        """Consume ``queue_name`` until SIGTERM/SIGINT (in the main thread) or :meth:`stop`.

        Args:
            queue_name: The queue; it must exist.
            on_exception: Called with each exception a consumer raises.
            after_consume: Called after each consumer call.

        Raises:
            QueueNotFound: The queue does not exist.
            ConfigurationError: No consumer is attached, or an option is invalid.
        """
        warn_7x(f"{self._form}.consume_loop(queue_name)", self._new)
        dispatcher = self._build(queue_name, on_exception, after_consume, {})
        if dispatcher is None:
            return
        try:
            dispatcher.run()
        except ConfigurationError:
            with self._lock:
                stopped, self._stop_requested = self._stop_requested, False
            if not stopped:  # else stop() came before it started: done
                raise
        else:
            with self._lock:
                self._stop_requested = False

    def consume_event(
        self,
        queue_name: str,
        on_exception: Callable[[Exception], Any] | None = None,
        after_consume: Callable[[], Any] | None = None,
    ) -> None:
        """Handle the messages ``queue_name`` holds, then return (one pass).

        Takes the arguments of :meth:`consume_loop`. 7.x's ``consume_event`` was
        the loop itself on SQS and one pass on its in-memory backend; here it is
        one pass everywhere.
        """
        warn_7x(
            f"{self._form}.consume_event(queue_name)",
            "MessageDispatcher(backend, queue_name, consumers, serializers)"
            ".run_until_idle(stop=True)",
        )
        self._stop_requested = False  # a pass after a stop() is a new pass
        dispatcher = self._build(
            queue_name, on_exception, after_consume, {"wait_seconds": _CONSUME_EVENT_WAIT_SECONDS}
        )
        if dispatcher is not None:
            dispatcher.run_until_idle(CONSUME_EVENT_IDLE_SECONDS, stop=True)

    def stop(self, timeout: float | None = None) -> None:
        """Stop ``consume_loop`` gracefully (see ``MessageDispatcher.stop``); idempotent.

        Called before ``consume_loop`` starts, ``consume_loop`` returns at once.

        Args:
            timeout: Longest time to wait for the shutdown; ``None`` waits until done.
        """
        with self._lock:
            self._stop_requested = True
            dispatcher = self.dispatcher
        if dispatcher is not None:
            dispatcher.stop(timeout)

    def _build(
        self,
        queue_name: str,
        on_exception: Callable[[Exception], Any] | None,
        after_consume: Callable[[], Any] | None,
        overrides: dict[str, Any],
    ) -> MessageDispatcher | None:
        for label, value in (("on_exception", on_exception), ("after_consume", after_consume)):
            if value is not None and not callable(value):
                raise ConfigurationError(f"{label} must be a callable or None, got {value!r}")
        with self._lock:
            if self._stop_requested:  # stop() came first: this call ends at once
                self._stop_requested = False
                return None
            if not self._consumers:
                raise ConfigurationError(
                    f"no consumer is attached to this {self._form}: call attach_consumer(consumer) "
                    f"before consuming (melange 8: {self._new})"
                )
            consumers = _calls(self._consumers, on_exception, after_consume, self.always_ack)
            options = {**self.dispatcher_options, **overrides}
            if after_consume is not None:
                options["hooks"] = _with_after_consume(options.get("hooks"), after_consume)
            dispatcher = MessageDispatcher(
                self.backend, queue_name, consumers, self.serializer_registry, **options
            )
            self.dispatcher = dispatcher
        return dispatcher


class LegacySimpleMessageDispatcher(LegacyMessageDispatcher):
    """melange 7.x's ``SimpleMessageDispatcher(consumer, serializer_registry, ...)``.

    Deprecated: create ``SimpleMessageDispatcher(consumer, backend, queue_name,
    serializers)`` and call ``run()``.
    """

    _form = "SimpleMessageDispatcher"
    _old = "SimpleMessageDispatcher(consumer, serializer_registry, cache, backend, always_ack)"
    _new = "SimpleMessageDispatcher(consumer, backend, queue_name, serializers), then .run()"
    _signature = staticmethod(_simple_dispatcher_7x)

    def _after_init(self, bound: dict[str, Any]) -> None:
        self._attach(bound["consumer"])


# ------------------------------------------------------------------ consumers
def _dedup_options(cache: Any) -> dict[str, Any]:
    """Return the melange 8 dispatcher options for a 7.x deduplication cache (none for None)."""
    if cache is None:
        return {}
    from melange.compat.cache import dedup_from_7x

    found = dedup_from_7x(cache)
    if found is None:
        return {}
    if isinstance(found, Mapping):
        return dict(found)
    return {"dedup": found}


def _calls(
    consumers: list[Any],
    on_exception: Callable[[Exception], Any] | None,
    after_consume: Callable[[], Any] | None,
    always_ack: bool,
) -> list[Consumer]:
    """Wrap the attached consumers for the melange 8 dispatcher, with distinct names."""
    wrapped: list[Consumer] = []
    names: set[str] = set()
    for candidate in consumers:
        inner = candidate if isinstance(candidate, Consumer) else _Duck7x(candidate)
        name, number = inner.name, 1
        while name in names:  # 7.x allowed two instances of one class; 8.x keys dedup by name
            number += 1
            name = f"{inner.name}#{number}"
        names.add(name)
        wrapped.append(_Call7x(inner, name, on_exception, after_consume, always_ack))
    return wrapped


class _Call7x(Consumer):
    """Calls a consumer as 7.x did: callbacks around it, failures dropped on always_ack."""

    def __init__(
        self,
        inner: Consumer,
        name: str,
        on_exception: Callable[[Exception], Any] | None,
        after_consume: Callable[[], Any] | None,
        always_ack: bool,
    ) -> None:
        super().__init__(name)
        self.inner = inner
        self.on_exception = on_exception
        self.after_consume = after_consume
        self.always_ack = always_ack

    @property
    def is_async(self) -> bool:
        """Whether the wrapped consumer is asynchronous (refused by the threaded dispatcher)."""
        return is_async_consumer(self.inner)

    def validate(self) -> None:
        """Validate the wrapped consumer."""
        self.inner.validate()

    def accepts_every_message(self) -> bool:
        """As the wrapped consumer says."""
        return self.inner.accepts_every_message()

    def accepts(self, message: Message) -> bool:
        """As the wrapped consumer says."""
        return self.inner.accepts(message)

    def process(self, message: Message) -> object:
        """Call the wrapped consumer, report a failure to on_exception, then call after_consume."""
        try:
            return self.inner.process(message)
        except Exception as exc:
            if self.on_exception is not None:
                self.on_exception(exc)
            if not self.always_ack:
                raise
            logger.warning(
                "consumer %s failed on message %s: %s; acknowledged anyway (always_ack=True)",
                self.name,
                message.id,
                type(exc).__name__,
                exc_info=exc,
            )
            return None
        finally:
            if self.after_consume is not None:
                self.after_consume()


class _AfterConsume7x(Hooks):
    """Calls 7.x's ``after_consume`` for messages no consumer call covers.

    7.x called it once per message, in a ``finally``: after a message that could
    not be decoded or that no consumer accepted too. Consumer calls call it
    themselves (:class:`_Call7x`).
    """

    def __init__(self, after_consume: Callable[[], Any]) -> None:
        self.after_consume = after_consume

    def on_undecodable(
        self, queue_name: str, received: ReceivedMessage, error: Exception, outcome: str
    ) -> None:
        """Call ``after_consume``."""
        self.after_consume()

    def on_unhandled(self, queue_name: str, message: Message, outcome: str) -> None:
        """Call ``after_consume``."""
        self.after_consume()


def _with_after_consume(hooks: Hooks | None, after_consume: Callable[[], Any]) -> Hooks:
    """The dispatcher's hooks (the default ones if none were set) plus 7.x's after_consume."""
    if hooks is None:
        from melange.tracing import default_hooks

        hooks = default_hooks()
    return CompositeHooks(hooks, _AfterConsume7x(after_consume))


class _Duck7x(Consumer):
    """A 7.x consumer that is not a melange Consumer, but has 7.x's process and accepts."""

    def __init__(self, obj: Any) -> None:
        # 7.x keyed deduplication by the consumer's module and class name.
        super().__init__(f"{type(obj).__module__}.{type(obj).__qualname__}")
        self.obj = obj

    def accepts(self, message: Message) -> bool:
        """Call the 7.x ``accepts`` with the payload."""
        return bool(self.obj.accepts(message.body))

    def process(self, message: Message) -> object:
        """Call the 7.x ``process`` with the payload and ``message_id=``."""
        return self.obj.process(message.body, message_id=message.id)
