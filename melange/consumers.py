"""Consumers: the application code a dispatcher calls for each received message.

A consumer says which messages it wants (:meth:`Consumer.accepts`) and handles
one (:meth:`Consumer.process`). A :class:`~melange.dispatcher.MessageDispatcher`
calls every consumer that accepts a message and acknowledges the message only
after all of them succeeded.

Three ways to write one:

* a plain function with the :func:`consumer` decorator::

      @consumer
      def record_payment(event: PaymentEvent) -> None: ...

  It is chosen by the type of its first parameter (or by the types and
  manifests given to the decorator) and receives the payload, or the whole
  :class:`~melange.message.Message` when that parameter is annotated ``Message``;
* a :class:`SingleDispatchConsumer` subclass whose :func:`handler` methods are
  chosen by the payload type of their first parameter;
* a :class:`Consumer` subclass that overrides :meth:`~Consumer.accepts` and
  :meth:`~Consumer.process`.

Coroutine functions (``async def``) make asynchronous consumers, which only the
asyncio dispatcher (``melange.aio``) runs.
"""

from __future__ import annotations

import abc
import functools
import inspect
import sys
import threading
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast, overload

from melange.exceptions import ConfigurationError
from melange.message import Message

__all__ = [
    "Consumer",
    "FunctionConsumer",
    "SingleDispatchConsumer",
    "consumer",
    "handler",
    "is_async_consumer",
]

_F = TypeVar("_F", bound=Callable[..., Any])
_C = TypeVar("_C", bound="Consumer")

MARK_7X = "__melange_7x__"
"""Set on consumer classes (and their methods) adapted from melange 7.x's form."""

Selector = type | str
"""What a consumer or handler is chosen by: a payload type, or a manifest string."""


class Consumer(abc.ABC):
    """Base class of everything a dispatcher calls; override :meth:`process` (and :meth:`accepts`).

    Examples:
        >>> class AuditLog(Consumer):
        ...     def accepts(self, message):
        ...         return message.attributes.get("audited") == "yes"
        ...     def process(self, message):
        ...         print("audit", message.id)

    Args:
        name: Overrides :attr:`name` for this instance, e.g. when one dispatcher
            runs two instances of the same class.
    """

    name: str = "Consumer"
    """A stable identifier, used in deduplication keys (``f"{name}:{message_id}"``), logs and hooks.

    Defaults to the class's qualified name. Changing it makes a deduplication
    cache forget what this consumer already handled.
    """

    def __new__(cls: type[_C], *args: Any, **kwargs: Any) -> _C:
        """Create the consumer; ``Consumer(on_message=callable)`` (melange 7.x) makes a 7.x one."""
        # melange 7.x's Consumer(on_message=callable), handled in melange.compat (loaded only then).
        if cls is Consumer and ("on_message" in kwargs or (args and callable(args[0]))):
            from melange.compat.calls_consumers import OnMessageConsumer

            # A subclass of cls, so Python then runs its __init__ with these arguments.
            return cast(_C, super().__new__(OnMessageConsumer))
        if "process" in getattr(cls, "__abstractmethods__", ()):
            # No process() of its own: only melange 7.x's base Consumer, whose process() called
            # on_message, made such a class work (Consumer(), or a subclass overriding accepts).
            from melange.compat.calls_consumers import class_with_7x_base

            return cast(_C, super().__new__(class_with_7x_base(cls)))
        return super().__new__(cls)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__qualname__
        if _written_for_7x(cls):
            from melange.compat.calls_consumers import adapt_class_7x

            adapt_class_7x(cls)

    def __init__(self, name: str | None = None) -> None:
        if name is not None:
            self.name = _check_name(name)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    def accepts(self, message: Message) -> bool:
        """Return whether this consumer wants ``message``; every message by default.

        Args:
            message: The decoded message.
        """
        return True

    @abc.abstractmethod
    def process(self, message: Message) -> object:
        """Handle ``message``; raise to have it retried.

        The return value is ignored (``object`` so that subclasses may return
        anything, including the coroutine of an ``async def process``).

        The message is acknowledged only after every accepting consumer returned
        without raising. A message may be delivered more than once (at-least-once
        delivery), so handling should be idempotent or use a deduplication cache.

        Args:
            message: The decoded message; ``message.id`` is the broker's id.
        """

    def accepts_every_message(self) -> bool:
        """Whether :meth:`accepts` is true for every message, so a dispatcher may skip calling it.

        True when :meth:`accepts` is not overridden; subclasses that know better
        may say so. Called once, after :meth:`validate`.
        """
        return type(self).accepts is Consumer.accepts

    def validate(self) -> None:  # noqa: B027 - optional hook: most consumers need no checks
        """Raise :class:`~melange.exceptions.ConfigurationError` if the consumer cannot work.

        Dispatchers call it when they are created, so a mistake (e.g. an
        annotation that cannot be resolved) shows up before any message is
        received. The default does nothing.
        """


def is_async_consumer(candidate: Consumer) -> bool:
    """Return whether ``candidate`` handles messages with coroutines (``async def``).

    Such consumers run only under the asyncio dispatcher (``melange.aio``).
    """
    flag = getattr(candidate, "is_async", None)
    if isinstance(flag, bool):
        return flag
    return inspect.iscoroutinefunction(candidate.process)


def _written_for_7x(cls: type[Consumer]) -> bool:
    """Whether ``cls`` is a melange 7.x consumer, which takes the payload rather than a Message.

    Only 7.x passed keywords to ``process`` (``message_id=``), so a ``process``
    taking ``**kwargs`` or a ``message_id`` parameter is 7.x's; so is a subclass
    of such a class that overrides ``process`` or ``accepts``.
    """
    if getattr(cls, MARK_7X, False):
        return "process" in cls.__dict__ or "accepts" in cls.__dict__
    process = cls.__dict__.get("process")
    if not inspect.isfunction(process):
        return False
    return any(
        p.kind is p.VAR_KEYWORD or p.name == "message_id"
        for p in inspect.signature(process).parameters.values()
    )


# ------------------------------------------------------------- annotations
def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError(
            f"a consumer name must be a non-empty string, got {name!r}; it identifies the "
            "consumer in deduplication keys and logs"
        )
    return name


def _check_selectors(selectors: Iterable[object], where: str) -> tuple[Selector, ...]:
    checked: list[Selector] = []
    for selector in selectors:
        if isinstance(selector, str):
            checked.append(_check_name(selector))
        elif isinstance(selector, type):
            checked.append(selector)
        else:
            raise ConfigurationError(
                f"{where} takes payload types and manifest strings, got {selector!r}; "
                "e.g. consumer(PaymentEvent) or consumer('payment.v1')"
            )
    return tuple(checked)


def _caller_namespace(depth: int) -> dict[str, Any]:
    """Return the local names where a consumer is being defined, for resolving annotations later.

    ``typing.get_type_hints`` sees a function's module globals but not the locals
    of the function that defined it (e.g. a payload class defined in a test), so
    they are captured at decoration time. A class body's enclosing function is
    included too.
    """
    try:
        frame = sys._getframe(depth + 1)
    except ValueError:  # pragma: no cover - shallower stack than expected
        return {}
    namespace: dict[str, Any] = {}
    if frame.f_back is not None and frame.f_back.f_code.co_name != "<module>":
        namespace.update(frame.f_back.f_locals)
    if frame.f_code.co_name != "<module>":
        namespace.update(frame.f_locals)
    return namespace


@dataclass(frozen=True)
class _Signature:
    """What a function's first parameter says about the messages it takes."""

    types: tuple[type, ...]  # payload types it is chosen by; empty: any payload
    wants_message: bool  # receives the Message rather than its body


def _annotation_types(annotation: Any, where: str) -> _Signature:
    """Interpret a first-parameter annotation as payload types (or ``Message``)."""
    if annotation is inspect.Parameter.empty or annotation is Any or annotation is object:
        return _Signature((), wants_message=False)
    if annotation is Message:
        return _Signature((), wants_message=True)
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        members = typing.get_args(annotation)
        if Message in members:
            if any(m not in (Message, type(None)) for m in members):
                raise ConfigurationError(
                    f"{where}: the first parameter is annotated {annotation!r}; annotate it "
                    "either Message (to receive the whole message) or payload types, not both"
                )
            return _Signature((), wants_message=True)
        found: list[type] = []
        for member in members:
            signature = _annotation_types(member, where)
            if not signature.types:  # Any in a union: every payload
                return _Signature((), wants_message=False)
            found.extend(signature.types)
        return _Signature(tuple(dict.fromkeys(found)), wants_message=False)
    if annotation is None:
        return _Signature((type(None),), wants_message=False)
    if isinstance(origin, type):  # dict[str, int] -> dict
        return _Signature((origin,), wants_message=False)
    if isinstance(annotation, type):
        return _Signature((annotation,), wants_message=False)
    raise ConfigurationError(
        f"{where}: cannot choose messages by the annotation {annotation!r} of its first "
        "parameter; annotate it with a class (or a union of classes), or pass the payload "
        "types or manifests explicitly, e.g. @consumer(PaymentEvent)"
    )


def _first_parameter_signature(
    func: Callable[..., Any], skip_self: bool, localns: Mapping[str, Any], where: str
) -> _Signature:
    """Resolve the annotation of ``func``'s first (message) parameter."""
    try:
        parameters = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{where}: cannot read its signature ({exc})") from None
    if skip_self:
        parameters = parameters[1:]
    positional = [
        p
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    if not positional:
        raise ConfigurationError(
            f"{where} must take the message (or its payload) as its first positional parameter"
        )
    extra = [p.name for p in positional[1:] if p.default is inspect.Parameter.empty]
    if extra:
        raise ConfigurationError(
            f"{where} takes one argument, the message or its payload; give the other "
            f"parameter(s) {', '.join(extra)} default values"
        )
    first = positional[0]
    annotation: Any = first.annotation
    if isinstance(annotation, str):
        try:
            hints = typing.get_type_hints(func, localns=dict(localns))
        except Exception as exc:
            raise ConfigurationError(
                f"{where}: cannot resolve the annotation {annotation!r} of parameter "
                f"{first.name!r} ({type(exc).__name__}: {exc}); define the type at module "
                "level, or pass it explicitly, e.g. @consumer(PaymentEvent) or "
                "@handler(PaymentEvent)"
            ) from None
        annotation = hints.get(first.name, inspect.Parameter.empty)
    return _annotation_types(annotation, where)


def _describe(func: Callable[..., Any]) -> str:
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"


def _matches(selectors: tuple[Selector, ...], message: Message) -> bool:
    for selector in selectors:
        if isinstance(selector, str):
            if message.manifest == selector:
                return True
        elif isinstance(message.body, selector):
            return True
    return False


# ---------------------------------------------------------------- functions
class FunctionConsumer(Consumer):
    """A consumer made from a function by :func:`consumer`.

    Calling the object calls the function, so it can still be used directly.

    Args:
        func: Takes the payload, or the :class:`~melange.message.Message` when its
            first parameter is annotated ``Message``.
        selectors: Payload types and manifests it is chosen by; empty: the type
            annotation of ``func``'s first parameter; when that is missing, ``Any``
            or ``Message``, every message.
        name: Its :attr:`~Consumer.name`; defaults to the function's qualified name.
    """

    def __init__(
        self,
        func: Callable[..., Any],
        selectors: Iterable[Selector] = (),
        *,
        name: str | None = None,
        _localns: Mapping[str, Any] | None = None,
    ) -> None:
        if not callable(func):
            raise ConfigurationError(f"consumer() needs a function, got {func!r}")
        super().__init__(name if name is not None else getattr(func, "__qualname__", None))
        self.func = func
        self.selectors = _check_selectors(selectors, "consumer()")
        self._localns = dict(_localns or {})
        self._signature: _Signature | None = None
        self._lock = threading.Lock()
        functools.update_wrapper(self, func, updated=())

    @property
    def is_async(self) -> bool:
        """Whether the function is a coroutine function (asyncio dispatcher only)."""
        return inspect.iscoroutinefunction(self.func)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the function itself, as if it were not decorated."""
        return self.func(*args, **kwargs)

    def _resolved(self) -> _Signature:
        signature = self._signature
        if signature is None:
            with self._lock:
                signature = _first_parameter_signature(
                    self.func, False, self._localns, f"consumer {_describe(self.func)}"
                )
                self._signature = signature
        return signature

    def validate(self) -> None:
        """Resolve the function's annotations now; raise ConfigurationError if they are unusable."""
        self._resolved()

    def accepts_every_message(self) -> bool:
        """True when neither selectors nor a payload type annotation choose the messages."""
        return not self.selectors and not self._resolved().types

    def accepts(self, message: Message) -> bool:
        """Return whether the payload type or manifest is one this function is chosen by."""
        if self.selectors:
            return _matches(self.selectors, message)
        # Called for every message: read the resolved signature without a method call.
        types_ = (self._signature or self._resolved()).types
        return not types_ or isinstance(message.body, types_)

    def process(self, message: Message) -> Any:
        """Call the function with the payload (or the message); return what it returns."""
        if (self._signature or self._resolved()).wants_message:
            return self.func(message)
        return self.func(message.body)


@overload
def consumer(func: Callable[..., Any], /, *, name: str | None = None) -> FunctionConsumer: ...


@overload
def consumer(
    *types_or_manifests: Selector, name: str | None = None
) -> Callable[[Callable[..., Any]], FunctionConsumer]: ...


def consumer(
    *types_or_manifests: Any, name: str | None = None
) -> FunctionConsumer | Callable[[Callable[..., Any]], FunctionConsumer]:
    """Turn a function into a :class:`Consumer`.

    Used bare (``@consumer``, or ``consumer(func, name=...)``), the function is
    chosen by the type annotation of its first parameter. Given payload types
    and/or manifest strings (``@consumer(PaymentEvent, "refund.v1")``), it is
    chosen when the payload is an instance of one of the types or the message's
    manifest is one of the strings.

    The function receives the payload (``message.body``), or the whole
    :class:`~melange.message.Message` (attributes, id, group id) when its first
    parameter is annotated ``Message``. A function annotated ``Message`` (or not
    annotated) and given no types accepts every message.

    Examples:
        >>> @consumer
        ... def record(event: PaymentEvent) -> None: ...
        >>> @consumer("payment.v1", name="ledger")
        ... def ledger(message: Message) -> None: ...

    Args:
        types_or_manifests: Payload types and manifests to choose messages by.
        name: The consumer's name; defaults to the function's qualified name.

    Returns:
        A :class:`FunctionConsumer` (bare use), or a decorator that makes one.

    Raises:
        ConfigurationError: A selector is neither a type nor a manifest string.
    """
    if (
        len(types_or_manifests) == 1
        and callable(types_or_manifests[0])
        and not isinstance(types_or_manifests[0], type)
    ):
        return FunctionConsumer(types_or_manifests[0], name=name, _localns=_caller_namespace(1))
    selectors = _check_selectors(types_or_manifests, "consumer()")
    if name is not None:
        _check_name(name)

    def decorate(func: Callable[..., Any]) -> FunctionConsumer:
        return FunctionConsumer(func, selectors, name=name, _localns=_caller_namespace(1))

    return decorate


# ---------------------------------------------------------- single dispatch
_HANDLER_ATTRIBUTE = "__melange_handler__"


@dataclass(frozen=True)
class _HandlerMark:
    """Set on a method by :func:`handler`: its explicit selectors and where it was defined."""

    selectors: tuple[Selector, ...]
    localns: Mapping[str, Any]
    from_consumer: bool = False  # @consumer (melange 7.x's decorator), not @handler


@overload
def handler(func: _F, /) -> _F: ...


@overload
def handler(*types_or_manifests: Selector) -> Callable[[_F], _F]: ...


def handler(*types_or_manifests: Any) -> Any:
    """Mark a method of a :class:`SingleDispatchConsumer` as the handler of a payload type.

    Used bare (``@handler``), the method handles the payload types of its first
    parameter's annotation (after ``self``); a union names several. Given types
    and/or manifests (``@handler(PaymentEvent, "payment.v1")``), it handles those.
    The method receives the payload, or the :class:`~melange.message.Message`
    when that parameter is annotated ``Message``.

    Args:
        types_or_manifests: Payload types and manifests, instead of the annotation.

    Returns:
        The method, marked (bare use), or a decorator that marks one.
    """
    if (
        len(types_or_manifests) == 1
        and callable(types_or_manifests[0])
        and not isinstance(types_or_manifests[0], type)
    ):
        func = types_or_manifests[0]
        setattr(func, _HANDLER_ATTRIBUTE, _HandlerMark((), _caller_namespace(1)))
        return func
    selectors = _check_selectors(types_or_manifests, "handler()")

    def mark(func: _F) -> _F:
        setattr(func, _HANDLER_ATTRIBUTE, _HandlerMark(selectors, _caller_namespace(1)))
        return func

    return mark


@dataclass(frozen=True)
class _Handler:
    attribute: str  # the method's name on the class
    types: tuple[type, ...]
    manifests: tuple[str, ...]
    wants_message: bool
    catch_all: bool


@dataclass(frozen=True)
class _DispatchTable:
    by_manifest: dict[str, _Handler]
    by_type: dict[type, _Handler]
    catch_all: _Handler | None
    is_async: bool


class SingleDispatchConsumer(Consumer):
    """A consumer whose methods each handle one kind of payload.

    Methods marked with :func:`handler` are chosen by the payload type of their
    first parameter (after ``self``), the most specific class first, as
    :func:`functools.singledispatch` does; handlers given manifests are chosen by
    the message's manifest before any type. A handler annotated ``Message`` or
    ``Any`` (with no types given) takes whatever no other handler takes.
    :meth:`accepts` is true when a handler matches, so a dispatcher treats other
    messages as unhandled.

    String annotations (``from __future__ import annotations``) are resolved
    with :func:`typing.get_type_hints` when the first instance is created.

    Methods decorated with :func:`consumer` are treated as handlers too, as in
    the original melange.

    Examples:
        >>> class Payments(SingleDispatchConsumer):
        ...     @handler
        ...     def on_paid(self, event: PaymentPaid) -> None: ...
        ...     @handler
        ...     def on_refunded(self, event: PaymentRefunded) -> None: ...

    Raises:
        ConfigurationError: On creation of the first instance, when the class has
            no handler, two handlers claim the same type or manifest, or an
            annotation cannot be resolved.
    """

    _dispatch_table: _DispatchTable | None = None
    _table_lock = threading.Lock()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._dispatch_table = None  # built on first use, when annotations can be resolved
        if _accepts_written_for_7x(cls):
            from melange.compat.calls_consumers import adapt_accepts_7x

            adapt_accepts_7x(cls)

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)
        self._table()

    @classmethod
    def _table(cls) -> _DispatchTable:
        table = cls.__dict__.get("_dispatch_table")
        if table is None:
            with cls._table_lock:
                table = cls.__dict__.get("_dispatch_table") or cls._build_table()
                cls._dispatch_table = table
        return table

    @classmethod
    def _build_table(cls) -> _DispatchTable:
        handlers: list[_Handler] = []
        seen: set[str] = set()
        for klass in cls.__mro__:
            for attribute, value in list(vars(klass).items()):
                if attribute in seen:
                    continue
                seen.add(attribute)  # a subclass's override hides the base's handler
                found = _handler_of(cls, attribute, value)
                if found is not None:
                    handlers.append(found)
        if not handlers:
            raise ConfigurationError(
                f"{cls.__qualname__} has no handler; mark methods with @handler, e.g. "
                "`@handler\\n    def on_paid(self, event: PaymentPaid) -> None: ...`"
            )
        by_manifest: dict[str, _Handler] = {}
        by_type: dict[type, _Handler] = {}
        catch_all: _Handler | None = None

        def claim(registry: dict[Any, _Handler], key: Any, entry: _Handler, what: str) -> None:
            other = registry.get(key)
            if other is not None and other.attribute != entry.attribute:
                raise ConfigurationError(
                    f"{cls.__qualname__}: both {other.attribute}() and {entry.attribute}() "
                    f"handle {what}; keep one handler per payload type or manifest"
                )
            registry[key] = entry

        for entry in handlers:
            for manifest in entry.manifests:
                claim(by_manifest, manifest, entry, f"manifest {manifest!r}")
            for type_ in entry.types:
                claim(by_type, type_, entry, f"{type_.__qualname__} payloads")
            if entry.catch_all:
                if catch_all is not None:
                    raise ConfigurationError(
                        f"{cls.__qualname__}: both {catch_all.attribute}() and "
                        f"{entry.attribute}() take every message; keep one catch-all handler"
                    )
                catch_all = entry
        is_async = any(
            inspect.iscoroutinefunction(getattr(cls, entry.attribute)) for entry in handlers
        )
        return _DispatchTable(by_manifest, by_type, catch_all, is_async)

    @property
    def is_async(self) -> bool:
        """Whether any handler is a coroutine function (asyncio dispatcher only)."""
        return self._table().is_async

    def _handler_for(self, message: Message) -> _Handler | None:
        table = self._table()
        if message.manifest is not None:
            found = table.by_manifest.get(message.manifest)
            if found is not None:
                return found
        by_type = table.by_type
        if by_type:
            for klass in type(message.body).__mro__:
                found = by_type.get(klass)
                if found is not None:
                    return found
            for type_, found in by_type.items():  # virtual subclasses (abc.register)
                if isinstance(message.body, type_):
                    return found
        return table.catch_all

    def accepts(self, message: Message) -> bool:
        """Return whether a handler matches the message's manifest or payload type."""
        return self._handler_for(message) is not None

    def process(self, message: Message) -> Any:
        """Call the matching handler with the payload (or the message).

        Raises:
            ConfigurationError: No handler matches; a dispatcher never calls it then,
                because :meth:`accepts` is false.
        """
        found = self._handler_for(message)
        if found is None:
            raise ConfigurationError(
                f"{type(self).__qualname__} has no handler for message {message.id!r} "
                f"(manifest {message.manifest!r}, payload {type(message.body).__qualname__})"
            )
        method = getattr(self, found.attribute)
        return method(message if found.wants_message else message.body)

    def validate(self) -> None:
        """Build the dispatch table now; raise ConfigurationError if it is invalid."""
        self._table()


def _accepts_written_for_7x(cls: type[SingleDispatchConsumer]) -> bool:
    """Whether ``cls`` overrides ``accepts`` the melange 7.x way, to be called with the payload.

    7.x wrote handlers with ``@consumer`` (melange 8 with ``@handler``) and called
    ``accepts`` with the payload. An ``accepts`` whose parameter is annotated
    ``Message`` is melange 8's, whatever the handlers.
    """
    accepts = cls.__dict__.get("accepts")
    if not inspect.isfunction(accepts) or getattr(accepts, MARK_7X, False):
        return False
    parameters = list(inspect.signature(accepts).parameters.values())[1:2]
    if parameters:
        annotation = parameters[0].annotation
        if annotation is Message or (
            isinstance(annotation, str) and annotation.rpartition(".")[2] == "Message"
        ):
            return False
    for klass in cls.__mro__:
        for value in vars(klass).values():
            if isinstance(value, FunctionConsumer):
                return True
            mark = getattr(value, _HANDLER_ATTRIBUTE, None)
            if isinstance(mark, _HandlerMark) and mark.from_consumer:
                return True
    return False


def _handler_of(cls: type, attribute: str, value: Any) -> _Handler | None:
    """Return the handler ``value`` (a class attribute) declares, if it is one."""
    if isinstance(value, FunctionConsumer):  # @consumer on a method: the original melange style
        func: Any = value.func
        mark = _HandlerMark(value.selectors, value._localns, from_consumer=True)
        # Marked as @handler would have: subclasses built later still find the handler.
        setattr(func, _HANDLER_ATTRIBUTE, mark)
        setattr(cls, attribute, func)  # a plain method again, bound on access
    else:
        func = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
        found = getattr(func, _HANDLER_ATTRIBUTE, None)
        if not isinstance(found, _HandlerMark):
            return None
        mark = found
    where = f"handler {cls.__qualname__}.{attribute}"
    signature = _first_parameter_signature(
        func, not isinstance(value, staticmethod), mark.localns, where
    )
    manifests = tuple(s for s in mark.selectors if isinstance(s, str))
    explicit_types = tuple(s for s in mark.selectors if isinstance(s, type))
    types_ = explicit_types if mark.selectors else signature.types
    return _Handler(
        attribute=attribute,
        types=types_,
        manifests=manifests,
        wants_message=signature.wants_message,
        catch_all=not mark.selectors and not signature.types,
    )
