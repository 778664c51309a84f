"""OpenTelemetry tracing: trace context carried in message attributes.

:class:`OpenTelemetryHooks` links a consumer's work to the code that published
the message, across processes and brokers:

* on publish, the current trace context is written into the message's
  attributes (W3C ``traceparent``/``tracestate``, plus ``baggage`` when the
  global propagator carries it);
* around each consumer's handling, it is read back and a ``CONSUMER`` span
  ``"<queue> process"`` is started as a child of the publisher's span.

Publishers and dispatchers use :func:`default_hooks` when given no hooks, so
tracing works as soon as ``opentelemetry-api`` is installed
(``pip install "melange[otel]"``) and an SDK is configured. Without an SDK no
span is started (the context is still passed on) and the cost per message is
well under a microsecond. OpenTelemetry is imported on first use, never by
``import melange``.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator, MutableMapping
from contextvars import ContextVar
from types import ModuleType
from typing import TYPE_CHECKING, Any

from melange.exceptions import ConfigurationError
from melange.observability import NO_CONTEXT, Hooks

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.propagators.textmap import TextMapPropagator
    from opentelemetry.trace import Tracer, TracerProvider

    from melange.message import Message

__all__ = ["OpenTelemetryHooks", "default_hooks", "opentelemetry_available"]

MESSAGING_SYSTEM = "melange"
"""The ``messaging.system`` attribute of the spans melange starts."""

INSTALL_HINT = 'pip install "melange[otel]"'

_available: bool | None = None

_MISSING = object()


def opentelemetry_available() -> bool:
    """Return whether ``opentelemetry-api`` can be imported (checked once, without importing it)."""
    global _available
    if _available is None:
        try:
            found = importlib.util.find_spec("opentelemetry.trace") is not None
            found = found and importlib.util.find_spec("opentelemetry.propagate") is not None
        except (ImportError, ValueError):  # a parent package missing or blocked
            found = False
        _available = found
    return _available


def default_hooks() -> Hooks:
    """Return the hooks publishers and dispatchers use when none are given.

    Returns:
        An :class:`OpenTelemetryHooks` when ``opentelemetry-api`` is installed,
        else a plain :class:`~melange.observability.Hooks` that does nothing.
    """
    return OpenTelemetryHooks() if opentelemetry_available() else Hooks()


class OpenTelemetryHooks(Hooks):
    """Propagates W3C trace context through message attributes and traces handling.

    Examples:
        >>> from opentelemetry.sdk.trace import TracerProvider  # doctest: +SKIP
        >>> hooks = OpenTelemetryHooks(tracer_provider=TracerProvider())  # doctest: +SKIP
        >>> TopicPublisher(backend, hooks=hooks)  # doctest: +SKIP

    Args:
        tracer_provider: Where consumer spans go; the global provider when omitted
            (``opentelemetry.trace.set_tracer_provider``).
        propagator: How context is written to and read from attributes; the
            global propagator when omitted (W3C trace context and baggage unless
            ``OTEL_PROPAGATORS`` says otherwise).

    Raises:
        ConfigurationError: ``opentelemetry-api`` is not installed.
    """

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        propagator: TextMapPropagator | None = None,
    ) -> None:
        if not opentelemetry_available():
            raise ConfigurationError(
                f"OpenTelemetryHooks needs the opentelemetry-api package; install it with "
                f"`{INSTALL_HINT}`, or use melange.observability.Hooks() for no tracing"
            )
        self._tracer_provider = tracer_provider
        self._propagator = propagator
        self._tracer: Tracer | None = None
        self._modules: tuple[ModuleType, ModuleType, ModuleType] | None = None
        self._fields: tuple[TextMapPropagator, frozenset[str]] | None = None
        # The provider last looked at, and whether it records spans.
        self._classified: tuple[object, bool] = (_MISSING, False)
        self._env_checked = False
        # The context variable behind context.get_current(), read directly (see _otel).
        self._current_context: ContextVar[Context] | None = None

    def _otel(self) -> tuple[ModuleType, ModuleType, ModuleType]:
        """Import the OpenTelemetry API modules on first use."""
        if self._modules is None:
            from opentelemetry import context, propagate, trace

            self._current_context = _context_variable(context)
            self._modules = (context, propagate, trace)
        return self._modules

    @property
    def tracer(self) -> Tracer:
        """The tracer consumer spans are started with (created on first use)."""
        if self._tracer is None:
            from opentelemetry import trace

            from melange import __version__

            self._tracer = trace.get_tracer(
                "melange", __version__, tracer_provider=self._tracer_provider
            )
        return self._tracer

    def _textmap(self, propagate: ModuleType) -> TextMapPropagator:
        if self._propagator is not None:
            return self._propagator
        global_textmap: TextMapPropagator = propagate.get_global_textmap()
        return global_textmap  # read on each call: the application may set it later

    def _carried_fields(self, propagator: TextMapPropagator) -> frozenset[str]:
        """The attribute names ``propagator`` reads; cached, as a composite builds a new set."""
        cached = self._fields
        if cached is None or cached[0] is not propagator:
            cached = self._fields = (propagator, frozenset(propagator.fields))
        return cached[1]

    def _global_provider(self, trace: ModuleType) -> object:
        """The global tracer provider: ``None`` (or the API's proxy) while none is set."""
        # get_tracer_provider() looks OTEL_PYTHON_TRACER_PROVIDER up in os.environ on every
        # call until a provider is set, which was most of the cost of a message without an
        # SDK. It loads that variable's provider on the first call; after that, the module
        # global it returns is read directly: set_tracer_provider() sets it, once, so a
        # provider set later is seen at the next message.
        if self._env_checked:
            provider = getattr(trace, "_TRACER_PROVIDER", _MISSING)
            if provider is not _MISSING:
                return provider
        provider = trace.get_tracer_provider()
        self._env_checked = True  # only once that worked: a broken provider keeps failing loudly
        return provider

    def _classify(self, provider: object, trace: ModuleType) -> tuple[object, bool]:
        """Note whether ``provider`` records spans; one tuple, replaced whole: thread-safe."""
        records = provider is not None and not isinstance(
            provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
        )
        self._classified = (provider, records)
        return self._classified

    def prepare_attributes(self, attributes: MutableMapping[str, str]) -> None:
        """Write the current trace context into ``attributes`` (nothing when no span is active)."""
        _, propagate, _ = self._otel()
        self._textmap(propagate).inject(attributes)

    def handling(
        self, queue_name: str, message: Message, consumer: str
    ) -> contextlib.AbstractContextManager[None]:
        """Run one consumer's handling in a ``CONSUMER`` span, child of the publisher's context.

        The span is named ``"<queue> process"``; an exception the handler raises
        is recorded on it, its status set to error, and re-raised unchanged.
        Without an OpenTelemetry SDK no span is started, but the publisher's
        context is still made current, so messages the handler publishes carry it on.
        """
        context, propagate, trace = self._modules or self._otel()
        attributes = message.attributes
        carrier: TextMapPropagator | None = None  # set when the message carries a context
        if attributes:  # runs for every message: no propagator to look at without attributes
            carrier = self._textmap(propagate)
            if self._carried_fields(carrier).isdisjoint(attributes):
                carrier = None
        # Whether spans go anywhere (an SDK or another real provider is configured), read
        # here rather than in a method of its own: this runs for every message.
        provider: object = self._tracer_provider
        if provider is None:
            checked = self._env_checked
            provider = getattr(trace, "_TRACER_PROVIDER", _MISSING) if checked else _MISSING
            if provider is _MISSING:
                provider = self._global_provider(trace)
        classified = self._classified
        if classified[0] is not provider:
            classified = self._classify(provider, trace)
        if classified[1]:
            return self._span(queue_name, message, consumer, carrier)
        # Without an SDK the API's no-op tracer would only make the producer's context
        # current, at several times the cost; do that directly.
        if carrier is not None:
            # Extracted into an empty context: never whatever the worker thread had current.
            parent = carrier.extract(attributes, context=context.Context())
            return _Current(context, parent)
        variable = self._current_context
        if not (context.get_current() if variable is None else variable.get()):
            return NO_CONTEXT  # the handler's context is empty already, as it should be
        return _Current(context, context.Context())

    @contextlib.contextmanager
    def _span(
        self,
        queue_name: str,
        message: Message,
        consumer: str,
        propagator: TextMapPropagator | None,
    ) -> Iterator[None]:
        """The ``CONSUMER`` span of :meth:`handling`; ``propagator`` reads the parent, if any."""
        context, _, trace = self._otel()
        # Extract into an empty context: the span's parent is the producer, never
        # whatever span happens to be current in the worker thread.
        parent = context.Context()
        if propagator is not None:
            parent = propagator.extract(message.attributes, context=parent)
        attributes: dict[str, str] = {
            "messaging.system": MESSAGING_SYSTEM,
            "messaging.destination.name": queue_name,
            "messaging.operation.type": "process",
            "melange.consumer": consumer,
        }
        if message.id is not None:
            attributes["messaging.message.id"] = message.id
        if message.manifest is not None:
            attributes["melange.manifest"] = message.manifest
        with self.tracer.start_as_current_span(
            f"{queue_name} process",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes=attributes,
            record_exception=True,
            set_status_on_exception=True,
        ):
            yield


def _context_variable(context: ModuleType) -> ContextVar[Context] | None:
    """The variable OpenTelemetry's default runtime context keeps the current context in.

    ``context.get_current()`` is two Python calls that read it; the handling hook
    reads it once per message. ``None`` (use ``get_current()``) when another
    runtime context is configured or the API keeps it elsewhere.
    """
    runtime = getattr(context, "_RUNTIME_CONTEXT", None)
    variable = getattr(runtime, "_current_context", None)
    default_runtime = type(runtime).__name__ == "ContextVarsRuntimeContext"
    return variable if default_runtime and isinstance(variable, ContextVar) else None


class _Current(contextlib.AbstractContextManager[None]):
    """Makes an OpenTelemetry context current while entered (no span: no SDK is configured)."""

    __slots__ = ("_module", "_parent", "_token")

    def __init__(self, module: ModuleType, parent: Context) -> None:
        self._module = module
        self._parent = parent
        self._token: Any = None

    def __enter__(self) -> None:
        self._token = self._module.attach(self._parent)

    def __exit__(self, *exc_info: object) -> None:
        self._module.detach(self._token)
