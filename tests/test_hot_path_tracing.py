"""OpenTelemetryHooks.handling without an SDK: the shortcuts keep the documented behaviour.

Without an SDK, ``handling`` reads the global provider without asking
``get_tracer_provider()`` each time, and leaves the context alone when the
message carries no trace context and nothing is current. These tests pin what
that must not change: the handler always runs in the producer's context (or an
empty one, never the worker's), the worker's context comes back afterwards,
and an SDK installed later with ``trace.set_tracer_provider`` is used from the
next message on (in a subprocess: the global provider can be set only once).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from opentelemetry import baggage, context, trace

from melange.message import Message
from melange.observability import safe
from melange.tracing import OpenTelemetryHooks

PRODUCER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture(autouse=True)
def _no_sdk() -> None:
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def seen_inside(hooks: OpenTelemetryHooks, message: Message) -> dict[str, str]:
    """The attributes a message published by the handler would carry."""
    with safe(hooks).handling("orders", message, "relay"):
        assert baggage.get_baggage("tenant") is None  # never the worker's context
        forwarded: dict[str, str] = {}
        hooks.prepare_attributes(forwarded)
    return forwarded


@pytest.mark.parametrize("read", ["variable", "get_current"])
def test_an_untraced_message_runs_in_an_empty_context_and_the_workers_comes_back(
    read: str,
) -> None:
    hooks = OpenTelemetryHooks()
    hooks._otel()
    # The hook reads OpenTelemetry's context variable directly; get_current() is the
    # fallback for another runtime context. Both must keep the worker's context out.
    assert hooks._current_context is not None
    if read == "get_current":
        hooks._current_context = None
    token = context.attach(baggage.set_baggage("tenant", "acme"))  # the worker's own context
    try:
        before = context.get_current()
        assert seen_inside(hooks, Message("x", id="m-1")) == {}
        assert context.get_current() is before
        assert seen_inside(hooks, Message("x", id="m-2", attributes={"region": "eu"})) == {}
        assert context.get_current() is before
    finally:
        context.detach(token)
    # Nothing current: nothing to change, and nothing leaks out of the handler either.
    assert seen_inside(hooks, Message("x", id="m-3")) == {}
    assert not context.get_current()


def test_a_traced_message_runs_in_the_producers_context_even_inside_another() -> None:
    hooks = OpenTelemetryHooks()
    traced = Message("x", id="m-1", attributes={"traceparent": PRODUCER, "baggage": "k=v"})
    token = context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        before = context.get_current()
        forwarded = seen_inside(hooks, traced)
        assert context.get_current() is before
    finally:
        context.detach(token)
    assert forwarded["traceparent"] == PRODUCER
    assert forwarded["baggage"] == "k=v"
    assert seen_inside(hooks, traced)["traceparent"] == PRODUCER  # from an empty context too
    assert not context.get_current()


def test_the_handlers_exception_goes_through_and_the_context_is_restored() -> None:
    hooks = OpenTelemetryHooks()
    traced = Message("x", id="m-1", attributes={"traceparent": PRODUCER})
    for message in (traced, Message("x", id="m-2")):
        with pytest.raises(ValueError), hooks.handling("orders", message, "c"):
            raise ValueError("handler failed")
        assert not trace.get_current_span().get_span_context().is_valid


def test_an_sdk_set_later_records_spans_from_the_next_message_on() -> None:
    code = """
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from melange.message import Message
        from melange.observability import safe
        from melange.tracing import OpenTelemetryHooks

        producer = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        hooks = safe(OpenTelemetryHooks())  # the global provider: none yet
        traced = Message("x", id="m-1", attributes={"traceparent": producer})
        for message in (traced, Message("x", id="m-2")):
            with hooks.handling("orders", message, "c"):
                assert not trace.get_current_span().is_recording()

        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        for message in (traced, Message("x", id="m-2")):
            with hooks.handling("orders", message, "c"):
                assert trace.get_current_span().is_recording()
        first, second = exporter.get_finished_spans()
        assert first.name == second.name == "orders process"
        assert format(first.context.trace_id, "032x") == producer.split("-")[1]
        assert second.parent is None
        print("ok")
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.stdout == "ok\n", result.stderr
