"""Consumers: functions by decorator, single-dispatch classes, and the Consumer base."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import pytest

from melange.consumers import (
    Consumer,
    FunctionConsumer,
    SingleDispatchConsumer,
    consumer,
    handler,
    is_async_consumer,
)
from melange.exceptions import ConfigurationError
from melange.message import Message


@dataclass
class Paid:
    payment_id: str


@dataclass
class Refunded:
    payment_id: str


@dataclass
class PartlyRefunded(Refunded):
    amount: int = 0


def msg(body: Any, manifest: str | None = None, **attributes: str) -> Message:
    return Message(body=body, manifest=manifest, attributes=attributes, id="m-1")


# ------------------------------------------------------------------ functions
def test_bare_decorator_chooses_by_the_annotated_payload_type_and_passes_the_payload() -> None:
    calls: list[Any] = []

    @consumer
    def on_paid(event: Paid) -> None:
        calls.append(event)

    assert isinstance(on_paid, FunctionConsumer)
    assert on_paid.accepts(msg(Paid("p1")))
    assert not on_paid.accepts(msg(Refunded("p1")))
    assert not on_paid.accepts(msg({"payment_id": "p1"}))
    on_paid.process(msg(Paid("p1")))
    assert calls == [Paid("p1")]


def test_subclass_payloads_are_accepted() -> None:
    @consumer
    def on_refund(event: Refunded) -> None: ...

    assert on_refund.accepts(msg(PartlyRefunded("p1", 5)))


def test_a_parameter_annotated_message_receives_the_whole_message_and_takes_everything() -> None:
    calls: list[Message] = []

    @consumer
    def audit(message: Message) -> None:
        calls.append(message)

    message = msg("anything", region="eu")
    assert audit.accepts(message)
    assert audit.accepts(msg(Paid("p")))
    audit.process(message)
    assert calls == [message]


def test_explicit_types_and_manifests_override_the_annotation() -> None:
    calls: list[Any] = []

    @consumer(Refunded, "payment.v1", name="ledger")
    def ledger(message: Message) -> None:
        calls.append(message.manifest)

    assert ledger.name == "ledger"
    assert ledger.accepts(msg({"raw": 1}, manifest="payment.v1"))
    assert ledger.accepts(msg(Refunded("x")))
    assert not ledger.accepts(msg(Paid("x")))  # explicit selectors replace the annotation
    assert not ledger.accepts(msg({"raw": 1}, manifest="other"))
    ledger.process(msg({"raw": 1}, manifest="payment.v1"))
    assert calls == ["payment.v1"]


def test_unannotated_function_takes_every_payload() -> None:
    calls: list[Any] = []

    @consumer
    def anything(payload):  # type: ignore[no-untyped-def]
        calls.append(payload)

    assert anything.accepts(msg(42))
    anything.process(msg(42))
    assert calls == [42]


def test_union_annotation_accepts_each_member() -> None:
    @consumer
    def either(event: Paid | Refunded) -> None: ...

    assert either.accepts(msg(Paid("a")))
    assert either.accepts(msg(Refunded("a")))
    assert not either.accepts(msg("text"))


def test_generic_annotation_matches_its_origin() -> None:
    @consumer
    def on_dict(payload: dict[str, int]) -> None: ...

    assert on_dict.accepts(msg({"a": 1}))
    assert not on_dict.accepts(msg([1]))


def test_string_annotation_of_a_class_local_to_a_function_is_resolved() -> None:
    # This module uses `from __future__ import annotations`: the annotation is the
    # string "LocalEvent", which module globals alone cannot resolve.
    @dataclass
    class LocalEvent:
        value: int

    @consumer
    def on_local(event: LocalEvent) -> None: ...

    on_local.validate()
    assert on_local.accepts(msg(LocalEvent(1)))
    assert not on_local.accepts(msg(Paid("x")))


def test_unresolvable_annotation_is_a_configuration_error_naming_the_fix() -> None:
    @consumer
    def broken(event: DoesNotExist) -> None:  # type: ignore[name-defined]  # noqa: F821
        ...

    with pytest.raises(ConfigurationError, match=r"DoesNotExist.*@consumer\(PaymentEvent\)"):
        broken.validate()


def test_default_name_is_the_qualified_name_and_the_function_stays_callable() -> None:
    @consumer
    def record(event: Paid) -> str:
        return event.payment_id

    assert record.name.endswith("record")
    assert "test_default_name" in record.name
    assert record(Paid("p9")) == "p9"
    assert getattr(record, "__name__", None) == "record"


@pytest.mark.parametrize("bad", [42, 1.5, None, ["Paid"]])
def test_selectors_must_be_types_or_strings(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="payload types and manifest strings"):
        consumer(Paid, bad)  # type: ignore[call-overload]


def test_a_function_needs_one_positional_parameter() -> None:
    def no_args() -> None: ...

    def two_args(a: Paid, b: int) -> None: ...

    with pytest.raises(ConfigurationError, match="first positional parameter"):
        consumer(no_args).validate()
    with pytest.raises(ConfigurationError, match="give the other parameter"):
        consumer(two_args).validate()


def test_empty_name_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="non-empty string"):
        consumer(Paid, name="  ")


def test_async_functions_make_async_consumers() -> None:
    @consumer
    async def on_paid(event: Paid) -> None: ...

    @consumer
    def sync(event: Paid) -> None: ...

    assert is_async_consumer(on_paid)
    assert not is_async_consumer(sync)


# ---------------------------------------------------------------- base class
def test_consumer_base_name_defaults_to_the_class_qualname_and_can_be_overridden() -> None:
    class Audit(Consumer):
        def process(self, message: Message) -> None: ...

    class Named(Consumer):
        name = "named-consumer"

        def process(self, message: Message) -> None: ...

    assert Audit().name == Audit.__qualname__
    assert Named().name == "named-consumer"
    assert Audit(name="audit-eu").name == "audit-eu"
    assert Audit().accepts(msg("x"))  # the default accepts everything


def test_consumer_base_requires_process() -> None:
    class Incomplete(Consumer):
        pass

    with pytest.raises(TypeError, match=r"Incomplete has no process\(\) and no on_message"):
        Incomplete()  # type: ignore[abstract]
    with pytest.raises(ConfigurationError, match="define process"):
        Incomplete()  # type: ignore[abstract]


# ----------------------------------------------------------- single dispatch
class Payments(SingleDispatchConsumer):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, Any]] = []

    @handler
    def on_paid(self, event: Paid) -> None:
        self.calls.append(("paid", event))

    @handler
    def on_refunded(self, event: Refunded) -> None:
        self.calls.append(("refunded", event))

    @handler
    def on_partly_refunded(self, event: PartlyRefunded) -> None:
        self.calls.append(("partly", event))


def test_single_dispatch_chooses_the_handler_by_the_annotated_payload_type() -> None:
    payments = Payments()
    payments.process(msg(Paid("a")))
    payments.process(msg(Refunded("b")))
    assert payments.calls == [("paid", Paid("a")), ("refunded", Refunded("b"))]


def test_single_dispatch_prefers_the_most_specific_class() -> None:
    payments = Payments()
    payments.process(msg(PartlyRefunded("c", 3)))
    assert payments.calls == [("partly", PartlyRefunded("c", 3))]


def test_single_dispatch_accepts_only_what_a_handler_takes() -> None:
    payments = Payments()
    assert payments.accepts(msg(Paid("a")))
    assert not payments.accepts(msg({"payment_id": "a"}))
    with pytest.raises(ConfigurationError, match="no handler for message"):
        payments.process(msg({"payment_id": "a"}))


def test_single_dispatch_manifest_handlers_win_and_message_annotations_get_the_message() -> None:
    class Mixed(SingleDispatchConsumer):
        def __init__(self) -> None:
            super().__init__()
            self.calls: list[tuple[str, Any]] = []

        @handler("legacy.v0")
        def on_legacy(self, message: Message) -> None:
            self.calls.append(("legacy", message.attributes["k"]))

        @handler
        def on_dict(self, payload: dict[str, Any]) -> None:
            self.calls.append(("dict", payload))

        @handler
        def fallback(self, message: Message) -> None:
            self.calls.append(("fallback", message.body))

    mixed = Mixed()
    mixed.process(msg({"a": 1}, manifest="legacy.v0", k="v"))
    mixed.process(msg({"a": 2}))
    mixed.process(msg("text"))
    assert mixed.calls == [("legacy", "v"), ("dict", {"a": 2}), ("fallback", "text")]


def test_single_dispatch_resolves_annotations_of_classes_local_to_a_function() -> None:
    @dataclass
    class Shipped:
        order: str

    class Orders(SingleDispatchConsumer):
        @handler
        def on_shipped(self, event: Shipped) -> str:
            return event.order

    orders = Orders()
    assert orders.accepts(msg(Shipped("o1")))
    assert orders.process(msg(Shipped("o1"))) == "o1"


def test_single_dispatch_union_and_explicit_types() -> None:
    class Either(SingleDispatchConsumer):
        @handler
        def on_any_payment(self, event: Paid | Refunded) -> str:
            return "union"

        @handler(int, float)
        def on_number(self, value: Any) -> str:
            return "number"

    either = Either()
    assert either.process(msg(Paid("a"))) == "union"
    assert either.process(msg(PartlyRefunded("a"))) == "union"
    assert either.process(msg(2.5)) == "number"
    assert not either.accepts(msg("text"))


def test_single_dispatch_refuses_two_handlers_for_one_type() -> None:
    class Twice(SingleDispatchConsumer):
        @handler
        def first(self, event: Paid) -> None: ...

        @handler
        def second(self, event: Paid) -> None: ...

    with pytest.raises(ConfigurationError, match=r"first\(\) and second\(\) handle Paid"):
        Twice()


def test_single_dispatch_without_handlers_is_refused() -> None:
    class Empty(SingleDispatchConsumer):
        def helper(self, event: Paid) -> None: ...

    with pytest.raises(ConfigurationError, match="has no handler"):
        Empty()


def test_a_subclass_override_replaces_the_base_handler() -> None:
    class Base(SingleDispatchConsumer):
        @handler
        def on_paid(self, event: Paid) -> str:
            return "base"

    class Child(Base):
        @handler
        def on_paid(self, event: Paid) -> str:
            return "child"

        @handler
        def on_refunded(self, event: Refunded) -> str:
            return "refund"

    assert Child().process(msg(Paid("a"))) == "child"
    assert Child().process(msg(Refunded("a"))) == "refund"
    assert Base().process(msg(Paid("a"))) == "base"
    assert not Base().accepts(msg(Refunded("a")))


def test_consumer_decorated_methods_work_as_in_the_original_melange() -> None:
    class Original(SingleDispatchConsumer):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[Any] = []

        @consumer
        def on_paid(self, event: Paid) -> None:
            self.seen.append(event)

    original = Original()
    assert original.accepts(msg(Paid("a")))
    assert not original.accepts(msg(Refunded("a")))
    original.process(msg(Paid("a")))
    assert original.seen == [Paid("a")]


def test_consumer_decorated_handlers_are_inherited_after_the_base_was_used() -> None:
    # 7.x (methoddispatch) inherited @consumer handlers; the base's first instance used to
    # replace them with plain functions its subclasses no longer saw as handlers.
    class OrderConsumer(SingleDispatchConsumer):
        @consumer
        def on_paid(self, event: Paid) -> str:
            return type(self).__name__

    class PlainChild(OrderConsumer):
        pass

    class WithInit(OrderConsumer):
        def __init__(self, repo: dict[str, Any]) -> None:
            super().__init__()
            self.repo = repo

    assert OrderConsumer().process(msg(Paid("a"))) == "OrderConsumer"
    assert PlainChild().process(msg(Paid("a"))) == "PlainChild"
    assert WithInit(repo={}).process(msg(Paid("a"))) == "WithInit"
    assert OrderConsumer().process(msg(Paid("a"))) == "OrderConsumer"


def test_async_handlers_make_the_consumer_async() -> None:
    class AsyncPayments(SingleDispatchConsumer):
        @handler
        async def on_paid(self, event: Paid) -> None: ...

    assert is_async_consumer(AsyncPayments())
    assert not is_async_consumer(Payments())


def test_virtual_subclasses_are_dispatched() -> None:
    class Event(abc.ABC):  # noqa: B024 - registered virtually below
        pass

    Event.register(Paid)

    class Events(SingleDispatchConsumer):
        @handler
        def on_event(self, event: Event) -> str:
            return "event"

    assert Events().process(msg(Paid("a"))) == "event"
