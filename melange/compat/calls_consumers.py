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

import functools
import inspect
from collections.abc import Callable
from typing import Any

from melange.compat.calls_common import bind_7x, warn_7x
from melange.consumers import MARK_7X, Consumer
from melange.exceptions import ConfigurationError
from melange.message import Message

__all__ = ["OnMessageConsumer", "adapt_accepts_7x", "adapt_class_7x"]

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
