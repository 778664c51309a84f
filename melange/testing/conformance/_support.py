"""What the conformance mixins share: the base fixtures, capability gating, names and polling.

Every passage of broker time goes through the ``melange_wait`` fixture, so the
suite runs against a real broker (``time.sleep``) and against a backend on a
controllable clock (advance the clock) alike. Waiting *for* a message that
should already be there is different: that is polling, bounded in real time by
:data:`POLL_TIMEOUT`, because a real broker may take a moment to make a
message visible.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import pytest

from melange.backends.base import Capabilities, MessagingBackend, OutgoingMessage, ReceivedMessage
from melange.consumers import Consumer
from melange.exceptions import MelangeError
from melange.factory import MessagingBackendFactory
from melange.message import DEAD_LETTER_REASON_ATTRIBUTE, DEAD_LETTER_SOURCE_ATTRIBUTE
from melange.serializers import SerializerRegistry
from melange.testing.conformance.drivers import (
    DRIVER_FIXTURE,
    DRIVERS,
    Dispatcher,
    DriverName,
    is_driven,
    make_dispatcher,
)
from melange.testing.conformance.report import BACKEND_INFO, REQUIRES_MARKER, describe_backend

Wait = Callable[[float], None]
"""Lets broker time pass: ``time.sleep`` for a real broker, a clock's ``advance`` otherwise."""

DeliveryGuarantee = Literal["at-least-once", "exactly-once"]

POLL_TIMEOUT = 10.0
"""Real seconds the suite polls for messages it expects before it fails."""

POLL_INTERVAL = 0.02
"""Real seconds between two polls of an empty queue."""

VISIBILITY_TIMEOUT = 1.0
"""Visibility timeout of queues whose tests watch redelivery: short, so real brokers stay fast."""

MARGIN = 0.5
"""Seconds waited beyond a timeout before expecting its effect."""


def requires(*capabilities: str) -> pytest.MarkDecorator:
    """Mark a conformance test as needing backend capabilities.

    The suite skips the test, with a reason naming the backend and the missing
    capability, when the backend under test does not declare all of them.

    Args:
        capabilities: :class:`~melange.backends.Capabilities` feature names
            (``"topics"``, ``"dead_letter"``, ``"fifo"``, ...).

    Returns:
        A pytest mark decorator (``melange_requires``), usable on a test or in
        ``pytest.param(..., marks=...)``.

    Raises:
        ValueError: A name is not a capability feature.
    """
    unknown = [name for name in capabilities if name not in Capabilities.FEATURES]
    if unknown or not capabilities:
        raise ValueError(
            f"requires() takes capability feature names, got {list(capabilities)!r}; "
            f"choose from {list(Capabilities.FEATURES)!r}"
        )
    return getattr(pytest.mark, REQUIRES_MARKER)(*capabilities)  # type: ignore[no-any-return]


class ResourceNames:
    """Unique queue and topic names for one test.

    Every name starts with ``mlg-`` and a random token, so tests never collide,
    not even when several runs share a real broker. Asking twice for the same
    label returns the same name. The names handed out are remembered so the
    resources can be removed after the test.

    Attributes:
        token: The random part shared by every name of this test.
        queues: Queue names handed out so far.
        topics: Topic names handed out so far.
    """

    prefix = "mlg"

    def __init__(self, token: str | None = None) -> None:
        self.token = token or uuid.uuid4().hex[:10]
        self.queues: list[str] = []
        self.topics: list[str] = []

    def _name(self, label: str, fifo: bool, issued: list[str]) -> str:
        name = f"{self.prefix}-{self.token}-{label}" + (".fifo" if fifo else "")
        if name not in issued:
            issued.append(name)
        return name

    def queue(self, label: str = "q") -> str:
        """Return a standard queue name ending with ``label``."""
        return self._name(label, False, self.queues)

    def fifo_queue(self, label: str = "q") -> str:
        """Return a FIFO queue name (``.fifo``) ending with ``label``."""
        return self._name(label, True, self.queues)

    def topic(self, label: str = "t") -> str:
        """Return a standard topic name ending with ``label``."""
        return self._name(label, False, self.topics)

    def fifo_topic(self, label: str = "t") -> str:
        """Return a FIFO topic name (``.fifo``) ending with ``label``."""
        return self._name(label, True, self.topics)

    def cleanup(self, backend: MessagingBackend) -> None:
        """Delete whatever exists under the names handed out; best effort."""
        if backend.closed:
            return
        for queue in self.queues:
            try:
                if backend.get_queue(queue) is not None:
                    backend.delete_queue(queue)
            except MelangeError:
                pass
        if not backend.capabilities.topics:
            return
        for topic in self.topics:
            try:
                if backend.get_topic(topic) is not None:
                    backend.delete_topic(topic)
            except MelangeError:
                pass


class ConformanceBase:
    """Fixtures every conformance mixin shares.

    A plugin's test class must provide ``melange_backend``; the other fixtures
    have defaults it may override.
    """

    melange_conformance_suite = True
    """Tells the report plugin that a class's tests belong to the suite."""

    melange_driver: DriverName = "threads"
    """The dispatcher driver of the running test; set by ``melange_dispatcher_driver``."""

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        """Run a test marked ``drives_dispatcher`` once per driver, also where overridden.

        The mark of the base class's test parametrizes it; an override in a
        subclass has lost the mark, and is parametrized here instead.
        """
        if metafunc.cls is None or not is_driven(metafunc.cls, metafunc.definition.originalname):
            return
        marks = metafunc.definition.iter_markers("parametrize")
        if not any(DRIVER_FIXTURE in str(mark.args[0] if mark.args else "") for mark in marks):
            metafunc.parametrize(DRIVER_FIXTURE, DRIVERS, indirect=True)

    @pytest.fixture(autouse=True)
    def melange_dispatcher_driver(self, request: pytest.FixtureRequest) -> DriverName:
        """Which dispatcher drives the test: ``"threads"``, or ``"asyncio"`` for its twin.

        Tests marked ``drives_dispatcher`` are parametrized over both; every
        other test sees ``"threads"``.
        """
        driver: DriverName = getattr(request, "param", "threads")
        self.melange_driver = driver
        return driver

    def melange_dispatcher(
        self,
        backend: MessagingBackend,
        queue_name: str,
        consumers: Sequence[Consumer],
        serializers: SerializerRegistry | None = None,
        **options: Any,
    ) -> Dispatcher:
        """A dispatcher of the running test's driver, with ``MessageDispatcher``'s arguments.

        See :func:`melange.testing.conformance.drivers.make_dispatcher`.
        """
        return make_dispatcher(
            self.melange_driver, backend, queue_name, consumers, serializers, **options
        )

    @pytest.fixture
    def melange_backend(self) -> Iterator[MessagingBackend]:
        """A fresh backend per test. Override it in your test class."""
        pytest.fail(
            f"{type(self).__name__} runs the melange conformance suite but does not define the "
            "'melange_backend' fixture: add a @pytest.fixture method named melange_backend "
            "that yields a fresh backend and closes it afterwards",
            pytrace=False,
        )
        yield  # pragma: no cover - unreachable, keeps this a generator fixture

    @pytest.fixture
    def melange_wait(self) -> Wait:
        """Let broker time pass; real time unless overridden (e.g. a manual clock's advance)."""
        return time.sleep

    @pytest.fixture
    def melange_names(self, melange_backend: MessagingBackend) -> Iterator[ResourceNames]:
        """Unique resource names for the test; what was created under them is deleted after."""
        names = ResourceNames()
        yield names
        names.cleanup(melange_backend)

    @pytest.fixture
    def melange_factory(self, melange_backend: MessagingBackend) -> MessagingBackendFactory:
        """A factory over the backend under test."""
        return MessagingBackendFactory(melange_backend)

    @pytest.fixture
    def melange_delivery(self) -> DeliveryGuarantee:
        """The backend's delivery guarantee for standard queues; ``"exactly-once"`` is stricter."""
        return "at-least-once"

    @pytest.fixture(autouse=True)
    def _melange_conformance_gate(
        self, request: pytest.FixtureRequest, melange_backend: MessagingBackend
    ) -> None:
        """Describe the backend for the report and skip what it cannot do."""
        request.node.stash[BACKEND_INFO] = describe_backend(melange_backend)
        needed = [
            str(name) for mark in request.node.iter_markers(REQUIRES_MARKER) for name in mark.args
        ]
        missing = [name for name in needed if not getattr(melange_backend.capabilities, name)]
        if missing:
            pytest.skip(
                f"backend {melange_backend.name!r} ({type(melange_backend).__name__}) does not "
                f"declare the capabilit{'ies' if len(missing) > 1 else 'y'} "
                f"{', '.join(repr(name) for name in missing)} this test requires"
            )


# ------------------------------------------------------------------ helpers
def messages(*bodies: bytes | str, **attributes: str) -> list[OutgoingMessage]:
    """Build outgoing messages; ``str`` bodies are UTF-8 encoded, attributes go on each."""
    return [
        OutgoingMessage(body.encode() if isinstance(body, str) else body, dict(attributes))
        for body in bodies
    ]


def receive_now(
    backend: MessagingBackend, queue: str, max_messages: int = 10
) -> list[ReceivedMessage]:
    """One receive call that does not wait."""
    return backend.receive(queue, max_messages=max_messages, wait_seconds=0.0)


def drain(
    backend: MessagingBackend,
    queue: str,
    expected: int,
    *,
    ack: bool = True,
    timeout: float | None = None,
) -> list[ReceivedMessage]:
    """Receive until ``expected`` messages arrived or ``timeout`` real seconds passed.

    Args:
        backend: The backend under test.
        queue: The queue to receive from.
        expected: How many messages to wait for; never more are received.
        ack: Acknowledge each batch as it arrives.
        timeout: Real seconds to keep polling; :data:`POLL_TIMEOUT` (read at each call) by
            default.

    Returns:
        What was received, in order; shorter than ``expected`` on timeout.
    """
    received: list[ReceivedMessage] = []
    deadline = time.monotonic() + (POLL_TIMEOUT if timeout is None else timeout)
    while len(received) < expected:
        batch = receive_now(backend, queue, min(10, expected - len(received)))
        if batch:
            received.extend(batch)
            if ack:
                backend.ack(batch)
        elif time.monotonic() >= deadline:
            break
        else:
            time.sleep(POLL_INTERVAL)
    return received


def drain_bodies(backend: MessagingBackend, queue: str, expected: int) -> list[bytes]:
    """Receive and ack ``expected`` messages; return their bodies (fewer on timeout)."""
    return [message.body for message in drain(backend, queue, expected)]


def assert_empty(backend: MessagingBackend, queue: str) -> None:
    """Assert that nothing can be received from ``queue`` right now."""
    leftover = receive_now(backend, queue)
    assert leftover == [], (
        f"expected nothing receivable from {queue!r}, got {len(leftover)} message(s): "
        f"{[message.body[:40] for message in leftover]}"
    )


def release(
    backend: MessagingBackend,
    received: Sequence[ReceivedMessage],
    wait: Wait,
    visibility_timeout: float = VISIBILITY_TIMEOUT,
) -> None:
    """Make received messages receivable again, the quickest way the backend offers.

    With nack support that is an immediate nack; otherwise the queue's
    ``visibility_timeout`` has to pass (through ``wait``).
    """
    if backend.capabilities.nack_delay:
        backend.nack(received)
    else:
        wait(visibility_timeout + MARGIN)


def in_range(value: float, bounds: tuple[float, float]) -> float:
    """Clamp ``value`` into the inclusive ``bounds``."""
    low, high = bounds
    return min(max(value, low), high)


def without_dead_letter_reason(attributes: Mapping[str, str]) -> dict[str, str]:
    """Return ``attributes`` without those a dispatcher adds to a dead-letter copy.

    A copy made by :meth:`~melange.backends.MessagingBackend.forward` must carry
    the original's attributes exactly; the reason attributes come on top, where
    the broker has room.
    """
    added = (DEAD_LETTER_REASON_ATTRIBUTE, DEAD_LETTER_SOURCE_ATTRIBUTE)
    return {k: v for k, v in attributes.items() if k not in added}
