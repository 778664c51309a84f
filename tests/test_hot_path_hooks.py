"""``safe(hooks)`` skips the methods a hook object does not override, and guards the others.

Dispatchers call the wrapped hooks several times per message, so the wrapper
replaces the base class's no-ops by cheap ones when it is built; these tests
pin what must not change: every overridden method is called (however it is
called, whenever it was overridden before wrapping), a failure is logged and
ignored, and ``handling`` behaves as the hook's own context manager.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest

from melange.message import Message
from melange.observability import CompositeHooks, Hooks, safe

MESSAGE = Message({"n": 1}, id="m-1")


class Recording(Hooks):
    def __init__(self, name: str = "r", events: list[tuple[Any, ...]] | None = None) -> None:
        self.name = name
        self.events = [] if events is None else events

    def on_handled(self, queue_name: str, message: Message, consumer: str, seconds: float) -> None:
        self.events.append((self.name, "handled", queue_name, consumer, seconds))

    @contextlib.contextmanager
    def handling(self, queue_name: str, message: Message, consumer: str) -> Iterator[None]:
        self.events.append((self.name, "enter", consumer))
        try:
            yield
        except Exception as exc:
            self.events.append((self.name, "raised", type(exc).__name__))
            raise
        self.events.append((self.name, "exit", consumer))


def test_the_base_hooks_do_nothing_through_safe() -> None:
    hooks = safe(Hooks())
    attributes: dict[str, str] = {}
    hooks.prepare_attributes(attributes)
    assert attributes == {}
    hooks.on_handled("q", MESSAGE, "c", 0.1)
    hooks.on_acked(queue_name="q", messages=[])  # keywords work too
    context = hooks.handling("q", MESSAGE, "c")
    with context, context:  # stateless: reusable and re-entrant
        pass
    with pytest.raises(KeyError), hooks.handling("q", MESSAGE, "c"):
        raise KeyError("the handler's error is never swallowed")
    with Hooks().handling("q", MESSAGE, "c") as entered:
        assert entered is None


def test_overridden_methods_are_called_with_positional_or_keyword_arguments() -> None:
    hook = Recording()
    hooks = safe(hook)
    hooks.on_handled("q", MESSAGE, "c", 0.5)
    hooks.on_handled(queue_name="q", message=MESSAGE, consumer="d", seconds=0.25)
    with hooks.handling("q", MESSAGE, "c"):
        pass
    with pytest.raises(ValueError), hooks.handling("q", MESSAGE, "c"):
        raise ValueError
    assert hook.events == [
        ("r", "handled", "q", "c", 0.5),
        ("r", "handled", "q", "d", 0.25),
        ("r", "enter", "c"),
        ("r", "exit", "c"),
        ("r", "enter", "c"),
        ("r", "raised", "ValueError"),
    ]


def test_a_failing_hook_is_logged_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(Hooks):
        def on_acked(self, queue_name: str, messages: Any) -> None:
            raise RuntimeError("metrics down")

        def prepare_attributes(self, attributes: MutableMapping[str, str]) -> None:
            raise KeyboardInterrupt  # not an Exception: never swallowed

    hooks = safe(Broken())
    with caplog.at_level(logging.ERROR, logger="melange.observability"):
        hooks.on_acked("q", [])
    assert [r.getMessage() for r in caplog.records] == ["hook Broken.on_acked failed; ignored"]
    assert caplog.records[0].exc_info is not None
    with pytest.raises(KeyboardInterrupt):
        hooks.prepare_attributes({})


def test_a_method_set_on_the_instance_before_wrapping_is_called() -> None:
    calls: list[str] = []
    hook = Hooks()
    hook.on_unhandled = lambda queue_name, message, outcome: calls.append(outcome)  # type: ignore[method-assign]
    safe(hook).on_unhandled("q", MESSAGE, "ack")
    assert calls == ["ack"]


def test_an_overridden_method_is_looked_up_on_each_call() -> None:
    hook = Recording()
    hooks = safe(hook)
    calls: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Recording, "on_handled", lambda self, *args: calls.append("patched"))
        hooks.on_handled("q", MESSAGE, "c", 0.1)
    hooks.on_handled("q", MESSAGE, "c", 0.1)
    assert calls == ["patched"]
    assert hook.events == [("r", "handled", "q", "c", 0.1)]


def test_an_overridden_handling_is_looked_up_on_each_call_too() -> None:
    # As the other methods: a test double patched in after the dispatcher was built is used.
    hook = Recording()
    hooks = safe(hook)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Recording, "handling", lambda self, *args: contextlib.nullcontext())
        with hooks.handling("q", MESSAGE, "c"):
            pass
    assert hook.events == []
    with hooks.handling("q", MESSAGE, "c"):
        pass
    assert hook.events == [("r", "enter", "c"), ("r", "exit", "c")]


def test_a_hook_computing_its_attributes_is_asked_on_every_call() -> None:
    calls: list[str] = []

    class Dynamic(Hooks):
        def __getattribute__(self, name: str) -> Any:
            if name == "on_receive":
                return lambda *args: calls.append("receive")
            return super().__getattribute__(name)

    safe(Dynamic()).on_receive("q", [])
    assert calls == ["receive"]


def test_safe_keeps_a_composite_and_wrapping_twice_changes_nothing() -> None:
    composite = CompositeHooks(Recording())
    assert safe(composite) is composite
    once = safe(Recording())
    assert safe(once) is once


@pytest.mark.parametrize("count", [0, 1, 2, 3])
def test_composite_handling_nests_its_hooks_in_order(count: int) -> None:
    events: list[tuple[Any, ...]] = []
    composite = CompositeHooks(*(Recording(str(i), events) for i in range(count)))
    with composite.handling("q", MESSAGE, "c"):
        events.append(("body",))
    names = [str(i) for i in range(count)]
    assert events == [
        *((name, "enter", "c") for name in names),
        ("body",),
        *((name, "exit", "c") for name in reversed(names)),
    ]
    events.clear()
    with pytest.raises(KeyError), composite.handling("q", MESSAGE, "c"):
        raise KeyError
    assert events == [
        *((name, "enter", "c") for name in names),
        *((name, "raised", "KeyError") for name in reversed(names)),
    ]


class FailsToEnter(Hooks):
    def handling(self, queue_name: str, message: Message, consumer: str) -> Any:
        raise RuntimeError("metrics backend down")


class FailsToExit(Hooks):
    @contextlib.contextmanager
    def handling(self, queue_name: str, message: Message, consumer: str) -> Iterator[None]:
        yield
        raise RuntimeError("metrics backend down")


@pytest.mark.parametrize("broken", [FailsToEnter, FailsToExit])
@pytest.mark.parametrize("body_raises", [False, True])
def test_a_composite_handling_hook_that_fails_is_skipped_and_the_others_run(
    broken: type[Hooks], body_raises: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """One hook's failure never reaches the others: no early exit, no error that is not theirs."""
    events: list[tuple[Any, ...]] = []
    composite = CompositeHooks(Recording("a", events), broken(), Recording("b", events))
    with (
        caplog.at_level(logging.ERROR, logger="melange.observability"),
        contextlib.suppress(KeyError),
        composite.handling("q", MESSAGE, "c"),
    ):
        events.append(("body",))
        if body_raises:
            raise KeyError
    if body_raises:
        after = [("b", "raised", "KeyError"), ("a", "raised", "KeyError")]
    else:
        after = [("b", "exit", "c"), ("a", "exit", "c")]
    assert events == [("a", "enter", "c"), ("b", "enter", "c"), ("body",), *after]
    failed = broken is FailsToEnter or not body_raises  # the body's error skips its raise
    assert (f"hook {broken.__name__}.handling failed; ignored" in caplog.text) is failed


def test_a_composite_still_calls_hooks_added_later() -> None:
    composite = CompositeHooks()
    late = Recording()
    composite.hooks.append(late)
    composite.on_handled("q", MESSAGE, "c", 0.1)
    with composite.handling("q", MESSAGE, "c"):
        pass
    assert [event[1] for event in late.events] == ["handled", "enter", "exit"]
