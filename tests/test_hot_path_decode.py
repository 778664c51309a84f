"""The per-message decode path keeps the results and errors of the straightforward code.

``SerializerRegistry.decode`` builds the message with ``_received_message`` (not
``Message(...)``), and ``JSONSerializer`` parses with ``raw_decode`` before
falling back to ``json.loads``; these tests pin both to the plain behaviour.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from melange.backends import ReceivedMessage
from melange.exceptions import SerializationError
from melange.message import (
    MANIFEST_ATTRIBUTE,
    PRODUCER_ID_ATTRIBUTE,
    SERIALIZER_ATTRIBUTE,
    Attributes,
    Message,
    _received_message,
)
from melange.serializers import JSONSerializer, SerializerRegistry


def receive(
    body: bytes, attributes: dict[str, str], *, message_id: str = "m-1", group: str | None = None
) -> ReceivedMessage:
    return ReceivedMessage("orders", body, attributes, message_id, 1, group)


def test_received_message_is_the_message_the_constructor_makes() -> None:
    attributes = {"region": "eu"}
    fast = _received_message({"n": 1}, "order.v1", dict(attributes), "m-1", "g", "p-1")
    plain = Message({"n": 1}, "order.v1", attributes, "m-1", "g", None, "p-1")

    assert fast == plain
    assert repr(fast) == repr(plain)
    assert list(vars(fast)) == list(vars(plain)) == [f.name for f in dataclasses.fields(Message)]
    assert type(fast.attributes) is Attributes
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.body = "changed"  # type: ignore[misc]
    assert dataclasses.replace(fast, dedup_id="d") == dataclasses.replace(plain, dedup_id="d")
    assert fast.with_attributes(x="y").attributes == {"region": "eu", "x": "y"}


def test_decode_equals_the_message_built_field_by_field() -> None:
    attributes = {
        SERIALIZER_ATTRIBUTE: "json",
        PRODUCER_ID_ATTRIBUTE: "p-7",
        MANIFEST_ATTRIBUTE: "order.v1",
        "region": "eu",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }
    received = receive(b'{"n":1}', attributes, message_id="m-9", group="g-1")

    message = SerializerRegistry().decode(received)

    assert message == Message(
        body={"n": 1},
        manifest="order.v1",
        attributes={"region": "eu", "traceparent": attributes["traceparent"]},
        id="m-9",
        group_id="g-1",
        producer_id="p-7",
    )
    assert list(message.attributes) == ["region", "traceparent"]  # the received order
    # The message has its own copy: the backend's dict may change afterwards.
    attributes["region"] = "us"
    assert message.attributes["region"] == "eu"
    assert received.attributes[SERIALIZER_ATTRIBUTE] == "json"  # the received one is untouched


def test_decode_without_attributes() -> None:
    message = SerializerRegistry().decode(receive(b"[1,2]", {}))
    assert message == Message([1, 2], id="m-1")
    assert message.producer_id is None and message.manifest is None


BODIES = [
    '{"a":1,"b":[true,false,null],"c":"\\u00e9t\\u00e9"}',
    "0",
    "-1.5e3",
    '"text"',
    "[]",
    ' {"a": 1}',  # whitespace around the value: json.loads accepts it
    '{"a": 1}\n',
    "\t[1]\r\n ",
    "",
    "   ",
    "{",
    '{"a":1}x',  # extra data
    '{"a":1} {"b":2}',
    "NaN",  # json.loads accepts it
    "\ufeff{}",  # a byte order mark: json.loads refuses it with its own message
    '{"a":"\\ud800"}',
    "[" * 50 + "]" * 50,
]


@pytest.mark.parametrize("text", BODIES)
def test_json_bodies_parse_exactly_as_json_loads(text: str) -> None:
    serializer = JSONSerializer()
    try:
        expected: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        with pytest.raises(SerializationError) as raised:
            serializer.deserialize(text.encode("utf-8"), None)
        assert f"is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}" in str(
            raised.value
        )
        return
    value = serializer.deserialize(text.encode("utf-8"), None)
    if expected != expected:  # NaN
        assert value != value
    else:
        assert value == expected and type(value) is type(expected)


def test_deeply_nested_json_is_refused_as_before() -> None:
    data = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(SerializationError, match="nested too deeply"):
        JSONSerializer().deserialize(data, None)


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_json_bodies_may_be_any_bytes_like(kind: Any) -> None:
    assert JSONSerializer().deserialize(kind(b'{"a":1}'), None) == {"a": 1}


def test_a_body_that_is_not_utf8_names_the_offset() -> None:
    with pytest.raises(SerializationError, match=r"not UTF-8 text \(invalid byte at offset 3\)"):
        JSONSerializer().deserialize(b'{"a\xff":1}', None)


def test_decode_errors_still_name_the_message_and_queue() -> None:
    registry = SerializerRegistry()
    with pytest.raises(SerializationError) as raised:
        registry.decode(receive(b"{", {SERIALIZER_ATTRIBUTE: "json"}, message_id="m-3"))
    assert "cannot decode message 'm-3' from queue 'orders': body of 1 bytes" in str(raised.value)

    with pytest.raises(SerializationError) as raised:
        registry.decode(receive(b"{}", {SERIALIZER_ATTRIBUTE: "yaml"}, message_id="m-4"))
    assert "cannot decode message 'm-4' from queue 'orders': unknown serializer 'yaml'" in str(
        raised.value
    )


def test_message_attributes_share_an_attributes_copy_and_copy_a_dict() -> None:
    source = {"a": "1"}
    first = Message("x", attributes=source)
    source["a"] = "2"
    assert first.attributes == {"a": "1"}
    second = Message("y", attributes=first.attributes)  # already read-only: nothing to copy
    assert second.attributes == first.attributes == {"a": "1"}
    assert type(second.attributes) is Attributes
    assert Message("z", attributes=None).attributes == {}  # type: ignore[arg-type]


def test_attributes_get_and_contains_behave_like_a_mapping() -> None:
    attributes = Message("x", attributes={"a": "1"}).attributes
    assert attributes.get("a") == "1"
    assert attributes.get("b") is None
    assert attributes.get("b", "default") == "default"
    keys: list[object] = ["a", "b", 1]
    assert [key in attributes for key in keys] == [True, False, False]
    unhashable: object = []
    with pytest.raises(TypeError):
        unhashable in attributes  # noqa: B015 - unhashable, as with a dict
    assert dict(attributes.items()) == {"a": "1"} and list(attributes.keys()) == ["a"]
