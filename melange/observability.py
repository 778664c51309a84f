"""Hooks for metrics, tracing and logging around publishing and consuming.

Publishers and dispatchers call a :class:`Hooks` object at each step. The base
class does nothing, so an implementation overrides only what it needs::

    class Counting(Hooks):
        def on_handled(self, queue_name, message, consumer, seconds):
            HANDLED.labels(queue_name, consumer).inc()

    dispatcher = MessageDispatcher(backend, "orders", [consumer], hooks=Counting())

Several hook objects combine with :class:`CompositeHooks`. A hook that raises
is logged and ignored: observability never changes what happens to a message.

Hooks receive message ids, queue names, consumer names and errors. They receive
bodies only through the :class:`~melange.message.Message` objects they are
given, and the default logging never writes a body.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from melange.backends.base import OutgoingMessage, PublishResult, ReceivedMessage
    from melange.message import Message

logger = logging.getLogger("melange.observability")

NO_CONTEXT: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
"""What :meth:`Hooks.handling` returns when there is nothing to do: dispatchers skip entering it."""


class Hooks:
    """Called by publishers and dispatchers; every method is a no-op by default."""

    # ---------------------------------------------------------------- publish
    def prepare_attributes(self, attributes: MutableMapping[str, str]) -> None:
        """Add attributes (e.g. trace context) to a message about to be published."""

    def on_publish(
        self,
        destination: str,
        messages: Sequence[OutgoingMessage],
        results: Sequence[PublishResult],
    ) -> None:
        """A batch was published to a queue or topic; ``results`` match ``messages``."""

    # ---------------------------------------------------------------- consume
    def on_receive(self, queue_name: str, messages: Sequence[ReceivedMessage]) -> None:
        """A receive call returned ``messages`` (never called with an empty batch)."""

    def handling(
        self, queue_name: str, message: Message, consumer: str
    ) -> contextlib.AbstractContextManager[None]:
        """Wrap one consumer handling one message (e.g. a tracing span).

        Returns a context manager, entered just before the consumer is called and
        left just after; it sees the consumer's exception. Override it with a
        ``@contextlib.contextmanager`` generator. The default does nothing.
        """
        return NO_CONTEXT

    def on_handled(self, queue_name: str, message: Message, consumer: str, seconds: float) -> None:
        """A consumer handled a message successfully in ``seconds``."""

    def on_handler_error(
        self,
        queue_name: str,
        message: Message,
        consumer: str,
        error: BaseException,
        retry_in: float | None,
    ) -> None:
        """A consumer raised; ``retry_in`` is the redelivery delay, ``None`` if unknown."""

    def on_undecodable(
        self, queue_name: str, received: ReceivedMessage, error: Exception, outcome: str
    ) -> None:
        """A message could not be decoded; ``outcome`` is the policy applied."""

    def on_unhandled(self, queue_name: str, message: Message, outcome: str) -> None:
        """No consumer accepted a message; ``outcome`` is the policy applied."""

    def on_dead_lettered(self, queue_name: str, received: ReceivedMessage, reason: str) -> None:
        """The dispatcher moved a message to the dead-letter queue itself."""

    def on_acked(self, queue_name: str, messages: Sequence[ReceivedMessage]) -> None:
        """Messages were acknowledged after every accepting consumer succeeded."""

    def on_lease_extended(self, queue_name: str, received: ReceivedMessage, seconds: float) -> None:
        """A running handler's message was kept invisible for ``seconds`` more."""

    def on_lease_lost(self, queue_name: str, received: ReceivedMessage, error: Exception) -> None:
        """A running handler's message could not be kept: it may be delivered again."""


class CompositeHooks(Hooks):
    """Calls several hook objects in order; one that raises is logged and skipped."""

    def __init__(self, *hooks: Hooks) -> None:
        self.hooks = list(hooks)

    def _each(self, method: str, *args: Any) -> None:
        for hook in self.hooks:
            try:
                getattr(hook, method)(*args)
            except Exception:
                logger.exception("hook %s.%s failed; ignored", type(hook).__name__, method)

    def prepare_attributes(self, attributes: MutableMapping[str, str]) -> None:  # noqa: D102
        self._each("prepare_attributes", attributes)

    def on_publish(  # noqa: D102
        self,
        destination: str,
        messages: Sequence[OutgoingMessage],
        results: Sequence[PublishResult],
    ) -> None:
        self._each("on_publish", destination, messages, results)

    def on_receive(self, queue_name: str, messages: Sequence[ReceivedMessage]) -> None:  # noqa: D102
        self._each("on_receive", queue_name, messages)

    def handling(  # noqa: D102
        self, queue_name: str, message: Message, consumer: str
    ) -> contextlib.AbstractContextManager[None]:
        hooks = self.hooks
        if len(hooks) == 1:  # the usual case (see safe()): no ExitStack around it
            return hooks[0].handling(queue_name, message, consumer)
        if not hooks:
            return NO_CONTEXT
        return self._nested(queue_name, message, consumer)

    @contextlib.contextmanager
    def _nested(self, queue_name: str, message: Message, consumer: str) -> Iterator[None]:
        # Each hook on its own: one that fails to enter is skipped, one that fails to exit
        # is logged, and neither closes the others early or hands them its error.
        with contextlib.ExitStack() as stack:
            for hook in self.hooks:
                try:
                    context = hook.handling(queue_name, message, consumer)
                    context.__enter__()
                except Exception:
                    logger.exception("hook %s.handling failed; ignored", type(hook).__name__)
                    continue
                stack.push(_exit_guarded(hook, context))
            yield

    def on_handled(self, queue_name: str, message: Message, consumer: str, seconds: float) -> None:  # noqa: D102
        self._each("on_handled", queue_name, message, consumer, seconds)

    def on_handler_error(  # noqa: D102
        self,
        queue_name: str,
        message: Message,
        consumer: str,
        error: BaseException,
        retry_in: float | None,
    ) -> None:
        self._each("on_handler_error", queue_name, message, consumer, error, retry_in)

    def on_undecodable(  # noqa: D102
        self, queue_name: str, received: ReceivedMessage, error: Exception, outcome: str
    ) -> None:
        self._each("on_undecodable", queue_name, received, error, outcome)

    def on_unhandled(self, queue_name: str, message: Message, outcome: str) -> None:  # noqa: D102
        self._each("on_unhandled", queue_name, message, outcome)

    def on_dead_lettered(self, queue_name: str, received: ReceivedMessage, reason: str) -> None:  # noqa: D102
        self._each("on_dead_lettered", queue_name, received, reason)

    def on_acked(self, queue_name: str, messages: Sequence[ReceivedMessage]) -> None:  # noqa: D102
        self._each("on_acked", queue_name, messages)

    def on_lease_extended(self, queue_name: str, received: ReceivedMessage, seconds: float) -> None:  # noqa: D102
        self._each("on_lease_extended", queue_name, received, seconds)

    def on_lease_lost(self, queue_name: str, received: ReceivedMessage, error: Exception) -> None:  # noqa: D102
        self._each("on_lease_lost", queue_name, received, error)


_CALLBACKS = (
    "prepare_attributes",
    "on_publish",
    "on_receive",
    "on_handled",
    "on_handler_error",
    "on_undecodable",
    "on_unhandled",
    "on_dead_lettered",
    "on_acked",
    "on_lease_extended",
    "on_lease_lost",
)
"""The hook methods that return nothing (every one but ``handling``)."""


def _skip(*args: Any, **kwargs: Any) -> None:
    """Stands for a hook method the wrapped object does not override: nothing to call."""


def _no_context(*args: Any, **kwargs: Any) -> contextlib.AbstractContextManager[None]:
    """Stands for a ``handling`` the wrapped object does not override."""
    return NO_CONTEXT


def _guarded(hook: Hooks, method: str) -> Any:
    """Return a function calling ``hook.<method>`` that logs and ignores an exception."""

    def call(*args: Any, **kwargs: Any) -> None:
        try:
            getattr(hook, method)(*args, **kwargs)  # looked up on each call, as CompositeHooks does
        except Exception:
            logger.exception("hook %s.%s failed; ignored", type(hook).__name__, method)

    return call


def _overrides(hook: Hooks, method: str) -> bool:
    """Whether ``hook`` has its own ``method`` rather than the no-op of :class:`Hooks`."""
    if method in getattr(hook, "__dict__", ()):
        return True
    return getattr(type(hook), method, None) is not getattr(Hooks, method)


class _Guarded(CompositeHooks):
    """What :func:`safe` makes of one hook object; every call costs as little as it can.

    Dispatchers call hooks several times per message. A method the object does
    not override is the base class's no-op, so it is replaced by a function that
    does nothing (the object is inspected once, here); the others are called
    inside a ``try`` as :meth:`CompositeHooks._each` does, without its loop.
    """

    def __init__(self, hook: Hooks) -> None:
        super().__init__(hook)
        if type(hook).__getattribute__ is not object.__getattribute__:
            return  # attributes computed on each access: keep looking them up every call
        for method in _CALLBACKS:
            setattr(self, method, _guarded(hook, method) if _overrides(hook, method) else _skip)
        if not _overrides(hook, "handling"):
            self.handling = _no_context  # type: ignore[method-assign]


def safe(hooks: Hooks) -> Hooks:
    """Return ``hooks`` wrapped so that an exception in a hook never escapes.

    Methods the object does not override (on its class or on the instance) when
    it is wrapped are skipped: they are the base class's no-ops.
    """
    return hooks if isinstance(hooks, CompositeHooks) else _Guarded(hooks)


def _exit_guarded(hook: Hooks, context: contextlib.AbstractContextManager[None]) -> Any:
    """``context``'s exit, with its own failure logged: it never replaces the body's error."""

    def exit_(*exc_info: Any) -> bool:
        try:
            context.__exit__(*exc_info)
        except Exception as error:
            if error is not exc_info[1]:  # re-raising the body's own error is no failure
                logger.exception("hook %s.handling failed; ignored", type(hook).__name__)
        return False  # a hook never swallows the consumer's error

    return exit_
