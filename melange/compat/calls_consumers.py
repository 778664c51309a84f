"""melange 7.x's consumer forms, on melange 8's :class:`~melange.consumers.Consumer`.

7.x consumers received the payload, not a message:

* ``Consumer(on_message=callable)``: the callable got each payload;
* subclasses overrode ``process(self, message, **kwargs)`` (called with the
  payload and ``message_id=``) and ``accepts(self, manifest)`` (called with the
  payload too, whatever the parameter's name).

melange 8 calls ``process(message)`` and ``accepts(message)`` with a
:class:`~melange.message.Message`. ``Consumer(on_message=...)`` creates an
:class:`OnMessageConsumer`; a subclass whose ``process`` takes ``**kwargs`` or
a ``message_id`` parameter (which only 7.x passed) is adapted when the class is
created, so it works under both the 7.x-form and the melange 8 dispatchers.
Both warn, naming the melange 8 form.
"""

from __future__ import annotations

import abc
import functools
import inspect
import threading
import weakref
from collections.abc import Callable
from typing import Any

from melange.compat.calls_common import bind_7x, warn_7x
from melange.consumers import MARK_7X, Consumer
from melange.exceptions import ConfigurationError
from melange.message import Message

__all__ = [
    "Consumer7x",
    "OnMessageConsumer",
    "ProcessMissing",
    "adapt_accepts_7x",
    "adapt_class_7x",
    "class_with_7x_base",
]

_MARK = MARK_7X  # set on a class adapted here, and on its adapted methods

NEW_SIGNATURE = (
    "process(self, message: Message) -> None, which gets the whole melange 8 Message "
    "(payload in message.body, broker id in message.id), and accepts(self, message: "
    "Message) -> bool; or a SingleDispatchConsumer with @handler methods that take the payload"
)


def _consumer_7x(on_message: Any = None) -> None:
    """7.x's ``Consumer`` signature, for argument binding."""


class OnMessageConsumer(Consumer):
    """melange 7.x's ``Consumer(on_message=callable)``: calls ``on_message(payload)``.

    Accepts every message. Its :attr:`~melange.consumers.Consumer.name` is the
    callable's qualified name.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        new = "the @consumer decorator on the function (@consumer def handle(payload): ...)"
        bound = bind_7x("Consumer(...)", _consumer_7x, args, kwargs, new)
        on_message = bound["on_message"]
        warn_7x("Consumer(on_message=callable)", new)
        if not callable(on_message):
            raise ConfigurationError(
                f"Consumer(on_message=...) needs a callable that takes the payload, got "
                f"{on_message!r}; in melange 8 decorate that function with @consumer "
                "(from melange.consumers import consumer)"
            )
        super().__init__(getattr(on_message, "__qualname__", None) or "on_message")
        self.on_message: Callable[[Any], object] = on_message

    def process(self, message: Message) -> None:
        """Call ``on_message`` with the payload (``message`` itself if it is not a Message)."""
        self.on_message(message.body if isinstance(message, Message) else message)


class ProcessMissing(ConfigurationError, TypeError):
    """A consumer class has no ``process()`` and was given no ``on_message``.

    Also a ``TypeError``, which is what instantiating such an abstract class raised.
    """


class Consumer7x(Consumer):
    """melange 7.x's base ``Consumer``: ``process()`` calls ``on_message(payload)``.

    7.x consumer classes get it as their base instead of melange 8's
    :class:`~melange.consumers.Consumer`, so that ``Sub(on_message=callable)``
    and ``super().process(message, **kwargs)`` work as in 7.x. A class that
    leaves ``process`` to it needs ``on_message``: without one it would drop
    every message it accepts.

    Args:
        on_message: Called with each payload by :meth:`process`.
        name: melange 8's consumer name.

    Raises:
        ConfigurationError: ``on_message`` is not callable, or is missing while
            the class has no ``process`` of its own.
    """

    __melange_7x__ = True  # adapted already: no class-definition warning for this base

    def __init__(
        self, on_message: Callable[[Any], object] | None = None, *, name: str | None = None
    ) -> None:
        super().__init__(name)
        if on_message is not None and not callable(on_message):
            raise ConfigurationError(
                f"{type(self).__qualname__}(on_message=...) needs a callable that takes the "
                f"payload, got {on_message!r}"
            )
        if not _uses_base_process(type(self)):
            pass
        elif on_message is not None:
            warn_7x(
                f"{type(self).__qualname__}(on_message=callable) with no process() of its own "
                "(melange 7.x's base Consumer, whose process() called on_message with the "
                "payload)",
                "the @consumer decorator on the function, or a Consumer subclass that defines "
                + NEW_SIGNATURE,
            )
        else:
            raise ProcessMissing(
                f"{type(self).__qualname__} has no process() and no on_message, so it would drop "
                "every message it accepts (melange 7.x's base Consumer did nothing with them); "
                "pass on_message=callable, or define process(self, message: Message) -> None "
                "(or decorate a function with @consumer)"
            )
        self.on_message = on_message


def _process_7x(self: Consumer7x, message: Any, **kwargs: Any) -> None:
    """Call ``on_message`` with the payload, as 7.x's base ``Consumer.process`` did."""
    on_message = getattr(self, "on_message", None)  # None if a subclass skipped __init__
    if on_message is not None:
        on_message(message.body if isinstance(message, Message) else message)


# Set after the class statement: a process() taking **kwargs in it would be adapted as a 7.x one.
Consumer7x.process = _process_7x  # type: ignore[assignment,method-assign]
abc.update_abstractmethods(Consumer7x)  # type: ignore[type-abstract]


def _uses_base_process(cls: type) -> bool:
    mro = cls.__mro__
    return all("process" not in vars(klass) for klass in mro[: mro.index(Consumer7x)])


_WITH_7X_BASE: weakref.WeakKeyDictionary[type, type[Consumer]] = weakref.WeakKeyDictionary()
_WITH_7X_BASE_LOCK = threading.Lock()


def class_with_7x_base(cls: type[Consumer]) -> type[Consumer]:
    """Return the class to instantiate for ``cls``, which has no ``process`` of its own.

    ``Consumer()`` and subclasses that only override ``accepts`` (7.x's
    ``accepts(self, manifest)``, called with the payload) relied on 7.x's base
    ``process()``, which called ``on_message``. The returned subclass of ``cls``
    has :class:`Consumer7x` as a base, ``cls``'s name, and an ``accepts`` that
    gets the payload. Creating an instance warns, naming the melange 8 form,
    or raises :class:`ProcessMissing` without ``on_message``.
    """
    with _WITH_7X_BASE_LOCK:
        found = _WITH_7X_BASE.get(cls)
        if found is not None:
            return found
        namespace: dict[str, Any] = {
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "__doc__": cls.__doc__,
            "name": cls.name,
            _MARK: True,
        }
        accepts = cls.accepts
        if accepts is not Consumer.accepts and not getattr(accepts, _MARK, False):
            namespace["accepts"] = _payload_accepts(accepts)
        bases = (Consumer7x,) if cls is Consumer else (cls, Consumer7x)
        found = type(cls.__name__, bases, namespace)
        _WITH_7X_BASE[cls] = found
        return found


def adapt_class_7x(cls: type[Consumer]) -> None:
    """Make the 7.x-style ``process``/``accepts`` of ``cls`` take a melange 8 Message.

    They are called with the payload (and ``message_id=`` for ``process``), as
    7.x's dispatcher called them; a direct call with something other than a
    :class:`~melange.message.Message` passes through unchanged.
    """
    if not getattr(cls, _MARK, False):
        warn_7x(
            f"{cls.__qualname__}.process(self, message, **kwargs) (a melange 7.x consumer, "
            "called with the payload)",
            NEW_SIGNATURE,
        )
    process = cls.__dict__.get("process")
    if inspect.isfunction(process) and not getattr(process, _MARK, False):
        cls.process = _payload_process(process)  # type: ignore[method-assign]
    accepts = cls.__dict__.get("accepts")
    if inspect.isfunction(accepts) and not getattr(accepts, _MARK, False):
        if list(inspect.signature(accepts).parameters)[1:2] == ["manifest"]:
            # 7.x's docs named the parameter manifest, but 7.x passed the payload: say so.
            warn_7x(
                f"{cls.__qualname__}.accepts(self, manifest), which 7.x (and melange 8 for "
                "this class) calls with the payload, not the manifest,",
                "accepts(self, message: Message) -> bool, with the manifest in "
                "message.manifest and the payload in message.body",
            )
        cls.accepts = _payload_accepts(accepts)  # type: ignore[method-assign]
    if Consumer in cls.__bases__:
        # 7.x's base Consumer under it: Sub(on_message=...) and super().process(...) work.
        cls.__bases__ = tuple(Consumer7x if base is Consumer else base for base in cls.__bases__)
    setattr(cls, _MARK, True)


def adapt_accepts_7x(cls: type[Consumer]) -> None:
    """Make the 7.x-style ``accepts`` of a ``SingleDispatchConsumer`` subclass take a Message.

    7.x called it with the payload; it still gets the payload (a direct call
    with something other than a :class:`~melange.message.Message` passes
    through unchanged). Warns, naming the melange 8 form.
    """
    warn_7x(
        f"{cls.__qualname__}.accepts(self, message) in a SingleDispatchConsumer with @consumer "
        "handlers (a melange 7.x consumer, called with the payload)",
        "accepts(self, message: Message) -> bool, annotated, which gets the melange 8 Message "
        "(payload in message.body), and @handler methods",
    )
    cls.accepts = _payload_accepts(cls.__dict__["accepts"])  # type: ignore[method-assign]


def _payload_process(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def process(self: Consumer, message: Any, **kwargs: Any) -> Any:
        if isinstance(message, Message) and not kwargs:
            return func(self, message.body, message_id=message.id)
        return func(self, message, **kwargs)

    setattr(process, _MARK, True)
    return process


def _payload_accepts(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def accepts(self: Consumer, message: Any) -> bool:
        return bool(func(self, message.body if isinstance(message, Message) else message))

    setattr(accepts, _MARK, True)
    return accepts
