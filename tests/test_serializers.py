from __future__ import annotations

import enum
import json
import pickle
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from melange import Message
from melange.backends import OutgoingMessage, ReceivedMessage
from melange.exceptions import InvalidMessage, SerializationError
from melange.serializers import (
    JSONSerializer,
    PickleSerializer,
    Serializer,
    SerializerRegistry,
)


class Currency(enum.Enum):
    EUR = "EUR"
    USD = "USD"


@dataclass(frozen=True)
class Money:
    cents: int
    currency: Currency


@dataclass(frozen=True)
class PaymentEvent:
    payment_id: str
    amount: Money
    tags: tuple[str, ...] = ()
    refund_of: Money | None = None
    lines: list[Money] = field(default_factory=list)


@dataclass
class Other:
    payment_id: str


if TYPE_CHECKING:
    from decimal import Decimal


@dataclass(frozen=True)
class WithACheckerOnlyType:
    amount: Money
    lines: list[Money]
    legacy: Decimal | None = None  # resolves for a type checker only


def test_one_annotation_that_does_not_resolve_leaves_the_others_typed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``typing.get_type_hints`` gives up on the whole class; the rebuild does not."""
    registry = SerializerRegistry()
    registry.bind(WithACheckerOnlyType, "typed.v1")
    sent = WithACheckerOnlyType(Money(5, Currency.EUR), [Money(1, Currency.USD)])
    with caplog.at_level("WARNING", logger="melange.serializers"):
        back = registry.decode(received(registry.encode(sent))).body
    assert back == sent
    assert isinstance(back.amount, Money) and isinstance(back.lines[0], Money)
    # The field left untyped is named, once.
    assert [r.getMessage() for r in caplog.records if "legacy" in r.getMessage()] == [
        "WithACheckerOnlyType.legacy: its annotation 'Decimal | None' does not resolve "
        "(NameError: name 'Decimal' is not defined); its value is left as decoded JSON"
    ]
    registry.decode(received(registry.encode(sent)))
    assert len([r for r in caplog.records if "legacy" in r.getMessage()]) == 1


def received(
    outgoing: OutgoingMessage, *, message_id: str = "m-1", queue: str = "q"
) -> ReceivedMessage:
    """What a backend would hand back for ``outgoing``."""
    return ReceivedMessage(
        queue_name=queue,
        body=outgoing.body,
        attributes=dict(outgoing.attributes),
        message_id=message_id,
        receive_count=1,
        group_id=outgoing.group_id,
    )


def raw(body: bytes, **attributes: str) -> ReceivedMessage:
    return ReceivedMessage("payments-q", body, attributes, "m-raw", 1)


EVENT = PaymentEvent(
    "pay-1",
    Money(1250, Currency.EUR),
    tags=("web", "3ds"),
    refund_of=Money(5, Currency.USD),
    lines=[Money(1000, Currency.EUR), Money(250, Currency.EUR)],
)


# ------------------------------------------------------------------- message
def test_message_attributes_are_a_read_only_copy() -> None:
    source = {"event": "paid"}
    message = Message({"a": 1}, attributes=source)
    source["event"] = "changed"
    assert message.attributes == {"event": "paid"}
    with pytest.raises(TypeError):
        message.attributes["event"] = "x"  # type: ignore[index]
    assert "'event': 'paid'" in repr(message)
    assert message.with_attributes(region="eu").attributes == {"event": "paid", "region": "eu"}
    assert message.attributes == {"event": "paid"}


# ---------------------------------------------------------------------- JSON
def test_bound_dataclass_round_trips_with_nested_types() -> None:
    registry = SerializerRegistry()
    registry.bind(PaymentEvent, "payment.v1")
    outgoing = registry.encode(Message(EVENT, attributes={"event": "paid"}), producer_id=False)

    assert outgoing.attributes == {
        "event": "paid",
        "melange.manifest": "payment.v1",
        "melange.serializer": "json",
    }
    assert json.loads(outgoing.body)["amount"] == {"cents": 1250, "currency": "EUR"}

    decoded = registry.decode(received(outgoing, message_id="m-42"))
    assert decoded.body == EVENT
    assert isinstance(decoded.body.amount.currency, Currency)
    assert decoded.manifest == "payment.v1"
    assert decoded.id == "m-42"
    # melange's own attributes are carried by Message.manifest, not repeated.
    assert decoded.attributes == {"event": "paid"}


def test_manifest_defaults_to_the_class_name() -> None:
    registry = SerializerRegistry()
    registry.bind(PaymentEvent)
    assert registry.encode(EVENT).attributes["melange.manifest"] == "PaymentEvent"
    assert registry.manifest_for(PaymentEvent) == "PaymentEvent"


def test_unbound_values_are_plain_json_without_manifest() -> None:
    registry = SerializerRegistry()
    outgoing = registry.encode({"amount": 3, "note": "café"}, producer_id=False)
    assert outgoing.attributes == {"melange.serializer": "json"}
    assert outgoing.body == '{"amount":3,"note":"café"}'.encode()
    assert registry.decode(received(outgoing)).body == {"amount": 3, "note": "café"}
    # An unbound dataclass goes out as an object and comes back as a dict.
    back = registry.decode(received(registry.encode(Other("p-1"))))
    assert back.body == {"payment_id": "p-1"} and back.manifest is None


def test_sets_are_written_in_a_stable_order() -> None:
    registry = SerializerRegistry()
    bodies = {registry.encode({"tags": set(tags)}).body for tags in (["b", "a", "c"], "cab")}
    assert bodies == {b'{"tags":["a","b","c"]}'}


def test_group_dedup_and_delay_are_carried() -> None:
    registry = SerializerRegistry()
    outgoing = registry.encode(
        Message({"n": 1}, group_id="customer-7", dedup_id="pay-1"), delay_seconds=2.5
    )
    assert (outgoing.group_id, outgoing.dedup_id, outgoing.delay_seconds) == (
        "customer-7",
        "pay-1",
        2.5,
    )
    assert registry.decode(received(outgoing)).group_id == "customer-7"


def test_unknown_fields_are_ignored_missing_ones_refused() -> None:
    registry = SerializerRegistry()
    registry.bind(Other, "other")
    newer = raw(b'{"payment_id":"p","added_later":1}', **{"melange.manifest": "other"})
    assert registry.decode(newer).body == Other("p")

    older = raw(b'{"id":"secret-value"}', **{"melange.manifest": "other"})
    with pytest.raises(SerializationError) as info:
        registry.decode(older)
    message = str(info.value)
    assert "field(s) missing: payment_id" in message
    assert "'m-raw'" in message and "'payments-q'" in message
    assert "secret-value" not in message


def test_body_of_the_wrong_json_kind_is_refused() -> None:
    registry = SerializerRegistry()
    registry.bind(Other, "other")
    with pytest.raises(SerializationError, match="needs a JSON object, got an array"):
        registry.decode(raw(b"[1, 2]", **{"melange.manifest": "other"}))


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xfe card=4111111111111111", "not UTF-8 text"),
        (b"card=4111111111111111", "not valid JSON"),
    ],
)
def test_undecodable_body_error_names_size_and_manifest_not_content(
    body: bytes, reason: str
) -> None:
    registry = SerializerRegistry()
    registry.bind(PaymentEvent, "payment.v1")
    poison = raw(body, **{"melange.manifest": "payment.v1", "melange.serializer": "json"})
    with pytest.raises(SerializationError) as info:
        registry.decode(poison)
    message = str(info.value)
    assert reason in message
    assert f"body of {len(body)} bytes with manifest 'payment.v1'" in message
    assert "4111" not in message
    assert "4111" not in repr(info.value.__cause__)


def test_values_json_cannot_represent_are_refused_when_encoding() -> None:
    registry = SerializerRegistry()
    with pytest.raises(SerializationError, match=r"cannot serialize dict as JSON.*complex"):
        registry.encode({"x": 1j})
    with pytest.raises(SerializationError, match="not JSON compliant"):
        registry.encode({"x": float("nan")})


def test_reserved_attributes_are_refused() -> None:
    registry = SerializerRegistry()
    with pytest.raises(InvalidMessage, match=r"melange\.manifest are set by melange"):
        registry.encode(Message({}, attributes={"melange.manifest": "x"}))


# ----------------------------------------------------------- routing/binding
class Upper(Serializer):
    """A text serializer that upper-cases, so its use is visible in the bytes."""

    identifier = "upper"

    def serialize(self, obj: Any) -> bytes:
        return str(obj).upper().encode()

    def deserialize(self, data: bytes, manifest: str | None) -> Any:
        return data.decode().lower()


class Broken(Serializer):
    identifier = "broken"

    def serialize(self, obj: Any) -> bytes:
        raise RuntimeError(f"boom {obj}")

    def deserialize(self, data: bytes, manifest: str | None) -> Any:
        raise RuntimeError(data.decode(errors="replace"))


def test_manifest_routes_to_its_serializer_both_ways() -> None:
    registry = SerializerRegistry()
    registry.register(Upper(), manifests=["shout"])
    outgoing = registry.encode(Message("hello", manifest="shout"))
    assert outgoing.body == b"HELLO"
    assert outgoing.attributes["melange.serializer"] == "upper"
    assert registry.decode(received(outgoing)).body == "hello"


def test_decode_falls_back_to_serializer_attribute_then_default() -> None:
    registry = SerializerRegistry()
    registry.register(Upper())
    by_serializer = raw(b"ABC", **{"melange.manifest": "unbound", "melange.serializer": "upper"})
    assert registry.decode(by_serializer).body == "abc"
    assert registry.decode(raw(b'{"a":1}')).body == {"a": 1}


def test_unknown_serializer_is_a_clear_error() -> None:
    registry = SerializerRegistry()
    with pytest.raises(SerializationError, match="unknown serializer 'avro'; registered: json"):
        registry.decode(raw(b"\x00", **{"melange.serializer": "avro"}))


def test_failing_custom_serializer_is_wrapped_without_the_body() -> None:
    registry = SerializerRegistry()
    registry.register(Broken(), manifests=["b"])
    with pytest.raises(SerializationError) as info:
        registry.decode(raw(b"top-secret", **{"melange.manifest": "b"}))
    assert "serializer 'broken' failed" in str(info.value)
    assert "top-secret" not in str(info.value)
    with pytest.raises(SerializationError, match="cannot serialize str: RuntimeError") as info:
        registry.encode(Message("top-secret", manifest="b"))
    assert "top-secret" not in str(info.value)


def test_bind_with_a_serializer_instance_registers_it() -> None:
    registry = SerializerRegistry()
    registry.bind(str, "text", Upper())
    assert registry.get("upper") is not None
    assert registry.encode("hi").body == b"HI"


def test_bind_conflicts_are_refused() -> None:
    registry = SerializerRegistry()
    registry.bind(PaymentEvent, "payment")
    registry.bind(PaymentEvent, "payment")  # the same binding again is fine
    with pytest.raises(SerializationError, match=r"already bound to .*PaymentEvent"):
        registry.bind(Other, "payment")
    registry.register(Upper(), manifests=["shout"])
    with pytest.raises(SerializationError, match="already routed to serializer 'upper'"):
        registry.bind(Other, "shout", "json")
    with pytest.raises(SerializationError, match="unknown serializer 'nope'"):
        registry.bind(Other, "other", "nope")


def test_rebinding_to_a_new_manifest_keeps_the_old_one_decodable() -> None:
    registry = SerializerRegistry()
    registry.bind(Other, "other.v1")
    old = registry.encode(Other("a"))
    registry.bind(Other, "other.v2")
    assert registry.encode(Other("b")).attributes["melange.manifest"] == "other.v2"
    assert registry.decode(received(old)).body == Other("a")


def test_replacing_a_serializer_keeps_its_bindings() -> None:
    registry = SerializerRegistry()
    registry.bind(Other, "other")
    registry.register(JSONSerializer())  # a fresh instance under the same identifier
    assert registry.decode(raw(b'{"payment_id":"x"}', **{"melange.manifest": "other"})).body == (
        Other("x")
    )


# -------------------------------------------------------------------- pickle
def test_pickle_is_refused_unless_allowed() -> None:
    registry = SerializerRegistry()
    with pytest.raises(SerializationError, match="runs code") as info:
        registry.register(PickleSerializer())
    assert "allow_pickle=True" in str(info.value)
    with pytest.raises(SerializationError, match="pickle serializer is disabled"):
        registry.bind(Other, "other", PickleSerializer())
    with pytest.raises(SerializationError, match="pickle serializer is disabled"):
        SerializerRegistry(PickleSerializer())


def test_a_pickled_body_is_never_unpickled_when_pickle_is_off() -> None:
    class Exploding:
        def __reduce__(self) -> tuple[Any, ...]:
            return (pytest.fail, ("the body was unpickled",))

    body = pickle.dumps(Exploding())
    registry = SerializerRegistry()
    for attributes in ({"melange.serializer": "pickle"}, {"melange.manifest": "x"}):
        with pytest.raises(SerializationError):
            registry.decode(raw(body, **attributes))


def test_pickle_round_trip_when_allowed() -> None:
    registry = SerializerRegistry(allow_pickle=True)
    registry.register(PickleSerializer(), manifests=["py"])
    value = {"set": {1, 2}, "bytes": b"\x00"}
    outgoing = registry.encode(Message(value, manifest="py"))
    assert outgoing.attributes["melange.serializer"] == "pickle"
    assert registry.decode(received(outgoing)).body == value
    with pytest.raises(SerializationError, match="cannot be unpickled"):
        registry.decode(raw(b"not a pickle", **{"melange.manifest": "py"}))


def test_pickle_default_registry() -> None:
    registry = SerializerRegistry(PickleSerializer(), allow_pickle=True)
    outgoing = registry.encode(Other("x"))
    assert registry.decode(received(outgoing)).body == Other("x")
