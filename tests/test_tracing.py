from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from melange.backends.memory import MemoryBackend
from melange.factory import MessagingBackendFactory
from melange.message import Message
from melange.observability import Hooks
from melange.publishers import QueuePublisher, TopicPublisher
from melange.serializers import SerializerRegistry
from melange.tracing import OpenTelemetryHooks, default_hooks

QUEUE = "orders"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.fixture
def hooks(provider: TracerProvider) -> OpenTelemetryHooks:
    return OpenTelemetryHooks(tracer_provider=provider)


@pytest.fixture
def backend() -> Iterator[MemoryBackend]:
    with MemoryBackend() as backend:
        MessagingBackendFactory(backend).init_queue(QUEUE, ["order-events"])
        yield backend


def receive_one(backend: MemoryBackend) -> Message:
    [received] = backend.receive(QUEUE, max_messages=10)
    return SerializerRegistry().decode(received)


def spans_named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


@pytest.mark.parametrize("publisher_class", [QueuePublisher, TopicPublisher])
def test_handling_continues_the_publishers_trace(
    backend: MemoryBackend,
    provider: TracerProvider,
    hooks: OpenTelemetryHooks,
    exporter: InMemorySpanExporter,
    publisher_class: type[QueuePublisher] | type[TopicPublisher],
) -> None:
    publisher = publisher_class(backend, hooks=hooks)
    destination = QUEUE if publisher_class is QueuePublisher else "order-events"
    with provider.get_tracer("app").start_as_current_span("checkout") as parent:
        publisher.publish(destination, {"order": 1}, attributes={"region": "eu"})
    producer = parent.get_span_context()

    message = receive_one(backend)
    assert message.attributes["traceparent"].split("-")[1] == format(producer.trace_id, "032x")
    with hooks.handling(QUEUE, message, "billing"):
        pass

    [span] = spans_named(exporter, "orders process")
    assert span.kind is SpanKind.CONSUMER
    assert span.context is not None and span.parent is not None
    assert span.context.trace_id == producer.trace_id
    assert span.parent.span_id == producer.span_id
    assert span.parent.is_remote
    assert dict(span.attributes or {}) == {
        "messaging.system": "melange",
        "messaging.destination.name": QUEUE,
        "messaging.operation.type": "process",
        "messaging.message.id": message.id,
        "melange.consumer": "billing",
    }
    assert span.status.status_code is StatusCode.UNSET


def test_a_failing_handler_is_recorded_and_reraised(
    backend: MemoryBackend, hooks: OpenTelemetryHooks, exporter: InMemorySpanExporter
) -> None:
    QueuePublisher(backend, hooks=hooks).publish(QUEUE, "x")
    message = receive_one(backend)
    error = ValueError("ledger down")

    with pytest.raises(ValueError) as raised, hooks.handling(QUEUE, message, "ledger"):
        raise error

    assert raised.value is error
    [span] = spans_named(exporter, "orders process")
    assert span.status.status_code is StatusCode.ERROR
    [event] = span.events
    assert event.name == "exception"
    assert (event.attributes or {})["exception.message"] == "ledger down"


def test_without_a_producer_context_the_consumer_span_is_a_root(
    backend: MemoryBackend,
    provider: TracerProvider,
    hooks: OpenTelemetryHooks,
    exporter: InMemorySpanExporter,
) -> None:
    QueuePublisher(backend, hooks=hooks).publish(QUEUE, "x")  # no span is active
    message = receive_one(backend)
    assert "traceparent" not in message.attributes

    # Even inside an unrelated span (say, the worker's own), the message starts its own trace.
    with (
        provider.get_tracer("worker").start_as_current_span("poll"),
        hooks.handling(QUEUE, message, "c"),
    ):
        pass
    [span] = spans_named(exporter, "orders process")
    assert span.parent is None


def test_user_trace_attributes_win_over_the_current_context(
    backend: MemoryBackend, provider: TracerProvider, hooks: OpenTelemetryHooks
) -> None:
    forwarded = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with provider.get_tracer("app").start_as_current_span("relay"):
        QueuePublisher(backend, hooks=hooks).publish(
            QUEUE, "x", attributes={"traceparent": forwarded}
        )
    assert receive_one(backend).attributes["traceparent"] == forwarded


def test_default_hooks_use_opentelemetry_when_installed() -> None:
    assert isinstance(default_hooks(), OpenTelemetryHooks)


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_import_melange_does_not_import_opentelemetry() -> None:
    result = run_python(
        """
        import sys
        import melange, melange.publishers, melange.tracing, melange.observability
        loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
        assert not loaded, loaded

        from melange.backends.memory import MemoryBackend
        from melange.publishers import QueuePublisher
        QueuePublisher(MemoryBackend())  # default hooks: tracing, still not imported
        assert "opentelemetry.trace" not in sys.modules
        assert "opentelemetry.propagate" not in sys.modules
        print("ok")
        """
    )
    assert result.stdout == "ok\n", result.stderr


def test_without_opentelemetry_the_default_is_plain_hooks() -> None:
    result = run_python(
        """
        import sys
        sys.modules["opentelemetry"] = None  # as if opentelemetry-api were not installed
        from melange.backends.memory import MemoryBackend
        from melange.exceptions import ConfigurationError
        from melange.observability import Hooks
        from melange.publishers import QueuePublisher
        from melange.tracing import OpenTelemetryHooks, default_hooks

        assert type(default_hooks()) is Hooks
        assert type(QueuePublisher(MemoryBackend()).hooks) is Hooks
        try:
            OpenTelemetryHooks()
        except ConfigurationError as exc:
            print(exc)
        """
    )
    assert result.returncode == 0, result.stderr
    assert 'pip install "melange[otel]"' in result.stdout


def test_plain_hooks_add_no_attributes(backend: MemoryBackend) -> None:
    QueuePublisher(backend, hooks=Hooks()).publish(QUEUE, "x")
    assert dict(receive_one(backend).attributes) == {}


def test_a_dispatcher_continues_the_trace_in_its_workers(
    backend: MemoryBackend,
    provider: TracerProvider,
    hooks: OpenTelemetryHooks,
    exporter: InMemorySpanExporter,
) -> None:
    from melange.consumers import consumer
    from melange.dispatcher import MessageDispatcher
    from melange.retry import RetryPolicy

    calls: list[str] = []

    @consumer(name="billing")
    def bill(payload: dict[str, int]) -> None:
        calls.append("called")
        if len(calls) == 1:
            raise RuntimeError("first try fails")

    with provider.get_tracer("app").start_as_current_span("checkout") as parent:
        QueuePublisher(backend, hooks=hooks).publish(QUEUE, {"order": 1})
    dispatcher = MessageDispatcher(
        backend,
        QUEUE,
        [bill],
        hooks=hooks,
        wait_seconds=0.05,
        retry=RetryPolicy(base=0.0, jitter=0.0),
        close_backend=False,
    )
    with dispatcher:
        stats = dispatcher.run_until_idle(idle_seconds=0.2, timeout=10)
    assert stats.handled == 1

    failed, succeeded = spans_named(exporter, "orders process")
    trace_id = parent.get_span_context().trace_id
    for span in (failed, succeeded):
        assert span.context is not None and span.parent is not None
        assert span.context.trace_id == trace_id
        assert span.parent.span_id == parent.get_span_context().span_id
    assert failed.status.status_code is StatusCode.ERROR
    assert succeeded.status.status_code is StatusCode.UNSET


def test_without_an_sdk_the_context_still_flows_through_a_handler() -> None:
    # The global provider is the API's no-op one: no span is recorded, but a message
    # published while handling carries the original trace on (a service without the SDK).
    from opentelemetry import trace

    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    hooks = OpenTelemetryHooks()
    producer = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    incoming = Message("x", id="m-1", attributes={"traceparent": producer})

    with hooks.handling(QUEUE, incoming, "relay"):
        forwarded: dict[str, str] = {}
        hooks.prepare_attributes(forwarded)
    assert forwarded["traceparent"] == producer
    assert not trace.get_current_span().get_span_context().is_valid  # detached again

    with hooks.handling(QUEUE, Message("x", id="m-2"), "relay"):
        untraced: dict[str, str] = {}
        hooks.prepare_attributes(untraced)
    assert untraced == {}


def test_the_observability_guide_metrics_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    import re
    from pathlib import Path

    guide = Path(__file__).resolve().parents[1] / "docs" / "observability.md"
    example = re.findall(r"```python\n(.*?)```", guide.read_text(), flags=re.DOTALL)[0]
    namespace: dict[str, object] = {}
    exec(example, namespace)
    metrics = namespace["metrics"]
    assert metrics.counts == {  # type: ignore[attr-defined]
        ("published", "orders"): 2,
        ("handled", "orders", "billing"): 2,
    }
    assert "('handled', 'orders', 'billing'): 2" in capsys.readouterr().out
