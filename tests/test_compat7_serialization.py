"""melange 7.x serialization on melange 8: the configuration dict, the lookups, 7.x bodies, Message.

7.x wrote a JSON body as ``json.dumps(obj)`` with serializer id 1, and a pickle
body as the base64 text of ``pickle.dumps(obj)`` with id 2; the bodies below
are made exactly that way.
"""

from __future__ import annotations

import codecs
import json
import pickle
import sys
import typing
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from melange.backends import ReceivedMessage
from melange.compat import models
from melange.compat.serialization import (
    LegacySerializer,
    LegacySerializerRegistry,
    decode_7x,
    encode_7x,
)
from melange.exceptions import (
    ConfigurationError,
    InvalidArgument,
    MelangeError,
    SerializationError,
)
from melange.message import Message
from melange.serializers import (
    JSONSerializer,
    PickleSerializer,
    Serializer,
    SerializerRegistry,
)

THIS_FILE = __file__

Dict = typing.Dict  # noqa: UP006 - 7.x's documented configuration binds typing.Dict


class DomainEvent:
    """Stands in for simple-cqrs's DomainEvent, which 7.x's docs bound to pickle."""


class OrderPaid(DomainEvent):
    def __init__(self, order: str) -> None:
        self.order = order

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OrderPaid) and other.order == self.order

    __hash__ = None  # type: ignore[assignment]


def seven_x_pickle(obj: Any) -> str:
    """A body as 7.x's PickleSerializer wrote it."""
    return codecs.encode(pickle.dumps(obj), "base64").decode()


def seven_x_unpickle(text: str) -> Any:
    return pickle.loads(codecs.decode(text.encode(), "base64"))


def received(outgoing: Any, message_id: str = "m-1") -> ReceivedMessage:
    return ReceivedMessage(
        queue_name="q",
        body=outgoing.body,
        attributes=outgoing.attributes,
        message_id=message_id,
        receive_count=1,
    )


@pytest.fixture
def deprecations() -> Iterator[list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def texts(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]


DOCS_CONFIG = {  # the serialization page's, with the README's DomainEvent binding
    "serializers": {"json": JSONSerializer, "pickle": PickleSerializer},
    "serializer_bindings": {Dict: "json", DomainEvent: "pickle"},
    "default": "pickle",
}


@pytest.fixture
def registry(deprecations: list[warnings.WarningMessage]) -> SerializerRegistry:
    return SerializerRegistry(DOCS_CONFIG)


# ------------------------------------------------------------------ the configuration dict
def test_the_config_dict_builds_a_melange_8_registry_and_warns_at_the_call(
    deprecations: list[warnings.WarningMessage],
) -> None:
    registry = SerializerRegistry(DOCS_CONFIG)
    line = sys._getframe().f_lineno - 1
    assert isinstance(registry, SerializerRegistry)
    assert isinstance(registry, LegacySerializerRegistry)
    assert registry.allow_pickle  # named in the config: explicitly allowed
    assert registry.identifiers() == ["json", "pickle"]
    assert isinstance(registry.default, PickleSerializer)
    [warning] = [w for w in deprecations if issubclass(w.category, DeprecationWarning)]
    assert (warning.filename, warning.lineno) == (THIS_FILE, line)
    text = str(warning.message)
    assert "SerializerRegistry(config_dict) is a melange 7.x form" in text
    assert "SerializerRegistry(PickleSerializer(), allow_pickle=True)" in text
    assert "registry.bind(cls, serializer=identifier)" in text


def test_bindings_match_subclasses_when_publishing(registry: SerializerRegistry) -> None:
    event = registry.encode(OrderPaid("o-1"), producer_id=False)
    assert event.attributes["melange.serializer"] == "pickle"
    assert registry.decode(received(event)).body == OrderPaid("o-1")
    payload = registry.encode({"value": 1}, producer_id=False)  # dict is a Dict
    assert payload.attributes["melange.serializer"] == "json"
    assert json.loads(payload.body) == {"value": 1}
    other = registry.encode(("a", 1), producer_id=False)  # unbound: the default, pickle
    assert other.attributes["melange.serializer"] == "pickle"


def test_the_most_specific_binding_wins(deprecations: list[warnings.WarningMessage]) -> None:
    registry = SerializerRegistry(
        {
            "serializers": {"json": JSONSerializer, "pickle": PickleSerializer},
            "serializer_bindings": {object: "json", DomainEvent: "pickle"},
        }
    )
    assert registry.encode(OrderPaid("x")).attributes["melange.serializer"] == "pickle"
    assert registry.encode([1]).attributes["melange.serializer"] == "json"


@dataclass
class OrderShipped(DomainEvent):
    order: str


def test_an_exact_8x_binding_comes_before_the_7x_bindings(registry: SerializerRegistry) -> None:
    assert registry.encode(OrderShipped("o")).attributes["melange.serializer"] == "pickle"
    registry.bind(OrderShipped, "order.shipped", serializer="json")
    outgoing = registry.encode(OrderShipped("o-2"), producer_id=False)
    assert outgoing.attributes["melange.serializer"] == "json"
    assert outgoing.attributes["melange.manifest"] == "order.shipped"
    assert registry.decode(received(outgoing)).body == OrderShipped("o-2")


def test_without_a_default_an_unbound_type_is_refused_as_in_7x(
    deprecations: list[warnings.WarningMessage],
) -> None:
    # The README's settings: pickle bound to DomainEvent, no default.
    registry = SerializerRegistry(
        {
            "serializers": {"pickle": PickleSerializer},
            "serializer_bindings": {DomainEvent: "pickle"},
        }
    )
    assert registry.encode(OrderPaid("o")).attributes["melange.serializer"] == "pickle"

    class MyTestMessage:
        pass

    with pytest.raises(SerializationError) as raised:
        registry.encode(MyTestMessage())
    text = str(raised.value)
    assert "no serializer is bound to" in text and "MyTestMessage" in text
    assert "'default'" in text and "registry.bind(" in text


def test_decoding_a_body_without_serializer_attribute_uses_json_when_there_is_no_default(
    deprecations: list[warnings.WarningMessage],
) -> None:
    registry = SerializerRegistry({"serializers": {"pickle": PickleSerializer}})
    body = ReceivedMessage("q", b'{"a":1}', {}, "m", 1)
    assert registry.decode(body).body == {"a": 1}


def test_pickle_is_not_allowed_unless_the_config_names_it(
    deprecations: list[warnings.WarningMessage],
) -> None:
    registry = SerializerRegistry({"serializers": {"json": JSONSerializer}, "default": "json"})
    assert not registry.allow_pickle
    with pytest.raises(SerializationError, match="allow_pickle=True"):
        registry.deserialize_with_serializerid(seven_x_pickle({"a": 1}), 2, None)
    with pytest.raises(SerializationError, match="pickle serializer is disabled"):
        registry.decode(
            ReceivedMessage("q", pickle.dumps(1), {"melange.serializer": "pickle"}, "m", 1)
        )


@pytest.mark.parametrize(
    ("config", "error"),
    [
        (
            {"serializers": {"json": JSONSerializer}, "serializer_binding": {}},
            "did you mean 'serializer_bindings'",
        ),
        ({"serializer_bindings": {}}, "needs 'serializers'"),
        (
            {"serializers": {"json": JSONSerializer}, "default": "pickle"},
            "default names serializer 'pickle'",
        ),
        (
            {"serializers": {"json": JSONSerializer}, "serializer_bindings": {dict: "jsn"}},
            "serializer_bindings names serializer 'jsn'",
        ),
        ({"serializers": {"json": dict}}, "is dict, which is not a serializer"),
        ({"serializers": {"json": "JsonSerializer"}}, "must be a serializer class, got str"),
        (
            {"serializers": {"json": JSONSerializer}, "serializer_bindings": {"dict": "json"}},
            "keys must be classes",
        ),
    ],
)
def test_an_invalid_config_raises_configuration_error(
    deprecations: list[warnings.WarningMessage], config: dict[str, Any], error: str
) -> None:
    with pytest.raises(ConfigurationError, match=error.replace("(", r"\(")):
        SerializerRegistry(config)


def test_a_subclass_of_the_8x_registry_refuses_the_dict_naming_the_8x_form() -> None:
    class Mine(SerializerRegistry):
        pass

    with pytest.raises(SerializationError, match=r"SerializerRegistry\(default_serializer"):
        Mine(DOCS_CONFIG)  # type: ignore[arg-type]


def test_the_7x_name_json_serializer_is_the_8x_class() -> None:
    with pytest.warns(DeprecationWarning, match="melange.serializers.JSONSerializer"):
        from melange.serializers import JsonSerializer
    assert JsonSerializer is JSONSerializer


# ------------------------------------------------------------------ the 7.x lookup methods
def test_7x_json_body_decodes_by_serializer_id(
    registry: SerializerRegistry, deprecations: list[warnings.WarningMessage]
) -> None:
    body = json.dumps({"value": 1, "name": "Mary"})  # 7.x's JsonSerializer.serialize
    assert registry.deserialize_with_serializerid(body, 1, "json") == {"value": 1, "name": "Mary"}
    [text] = [t for t in texts(deprecations) if "deserialize_with_serializerid" in t]
    assert "use registry.decode(received_message)" in text
    [warning] = [w for w in deprecations if "deserialize_with_serializerid" in str(w.message)]
    assert warning.filename == THIS_FILE


def test_7x_pickle_body_decodes_by_serializer_id(registry: SerializerRegistry) -> None:
    body = seven_x_pickle(OrderPaid("o-7"))
    assert registry.deserialize_with_serializerid(body, 2, "OrderPaid") == OrderPaid("o-7")


def test_serialize_writes_what_7x_reads(registry: SerializerRegistry) -> None:
    assert seven_x_unpickle(registry.serialize(OrderPaid("o-8"))) == OrderPaid("o-8")
    assert json.loads(registry.serialize({"a": [1]})) == {"a": [1]}


def test_find_serializer_for_returns_a_7x_serializer(registry: SerializerRegistry) -> None:
    pickle_ = registry.find_serializer_for(OrderPaid("o"))
    assert pickle_.identifier() == 2
    assert pickle_.manifest(OrderPaid("o")) == "OrderPaid"  # 7.x: the class's qualname
    assert seven_x_unpickle(pickle_.serialize(OrderPaid("o"))) == OrderPaid("o")
    json_ = registry.find_serializer_for({"a": 1})
    assert json_.identifier() == 1
    assert json_.manifest({"a": 1}) == "json"
    assert json_.deserialize('{"a": 1}') == {"a": 1}


def test_serializer_for_returns_something_callers_instantiate(registry: SerializerRegistry) -> None:
    serializer = registry.serializer_for(OrderPaid)()  # 7.x returned the class
    assert serializer.identifier() == 2
    assert registry.serializer_for(dict).identifier() == 1


def test_get_serializer_by_id_and_by_name(registry: SerializerRegistry) -> None:
    assert registry.get_serializer_by_id(1).serializer is registry.get("json")
    assert registry.get_serializer_by_name("pickle").identifier() == 2
    with pytest.raises(SerializationError, match=r"no serializer with 7\.x id 9"):
        registry.get_serializer_by_id(9)
    with pytest.raises(InvalidArgument, match="serializer_id must be an int"):
        registry.get_serializer_by_id("1")
    with pytest.raises(SerializationError, match="did you mean 'pickle'"):
        registry.get_serializer_by_name("pickel")


def test_deserialize_with_class(registry: SerializerRegistry) -> None:
    body = seven_x_pickle(OrderPaid("o-9"))
    assert registry.deserialize_with_class(body, OrderPaid, "OrderPaid") == OrderPaid("o-9")
    assert registry.deserialize_with_class('{"x": 2}', dict, "json") == {"x": 2}


def test_a_melange_8_registry_has_the_7x_methods_too(
    deprecations: list[warnings.WarningMessage],
) -> None:
    registry = SerializerRegistry()
    assert registry.find_serializer_for({"a": 1}).identifier() == 1
    assert json.loads(registry.serialize({"a": 1})) == {"a": 1}
    assert registry.deserialize_with_serializerid('{"b": 2}', 1, None) == {"b": 2}
    assert registry.get_serializer_by_name("json").identifier() == 1
    assert any(
        "find_serializer_for" in t and "registry.encode(Message(obj))" in t
        for t in texts(deprecations)
    )


def test_a_pickle_body_that_is_not_base64_is_a_serialization_error(
    registry: SerializerRegistry,
) -> None:
    with pytest.raises(SerializationError, match="not base64 text"):
        registry.deserialize_with_serializerid("not base64 ✓", 2, None)


def test_encode_7x_and_decode_7x_round_trip_without_warnings(registry: SerializerRegistry) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        text, manifest, serializer_id = encode_7x(registry, OrderPaid("o-10"))
        assert (manifest, serializer_id) == ("OrderPaid", 2)
        assert seven_x_unpickle(text) == OrderPaid("o-10")
        assert decode_7x(registry, text, serializer_id, manifest) == OrderPaid("o-10")
        assert decode_7x(registry, '{"k": "v"}', 1, "json") == {"k": "v"}


# ------------------------------------------------------------------ 7.x custom serializers
class Bunch(dict):  # stands in for the docs' bunch.Bunch
    pass


class MyOwnSerializer(Serializer):
    """The serialization page's example, verbatim but for Bunch."""

    @staticmethod
    def identifier() -> int:  # type: ignore[override]
        return 123

    def manifest(self, data: Any) -> str | None:
        if isinstance(data, Bunch):
            return "bunch"
        if isinstance(data, Dict):
            return "dictionary"
        raise SerializationError("The data object cannot be used with this serializer")

    def deserialize(self, data: str, manifest: str | None = None) -> Any:  # type: ignore[override]
        if manifest == "dictionary":
            return json.loads(data)
        if manifest == "bunch":
            return Bunch(json.loads(data))
        raise SerializationError("Unknown manifest")

    def serialize(self, data: Any) -> str:  # type: ignore[override]
        if isinstance(data, (Bunch, Dict)):
            return json.dumps(dict(data))
        raise SerializationError("This type cannot be used with this serializer")


def test_a_7x_custom_serializer_named_in_the_config_runs_unchanged(
    deprecations: list[warnings.WarningMessage],
) -> None:
    registry = SerializerRegistry(
        {
            "serializers": {"yourown": MyOwnSerializer, "json": JSONSerializer},
            "serializer_bindings": {Bunch: "yourown"},
            "default": "json",
        }
    )
    outgoing = registry.encode(Bunch(a=1), producer_id=False)
    assert outgoing.attributes["melange.serializer"] == "yourown"
    assert outgoing.attributes["melange.manifest"] == "bunch"
    decoded = registry.decode(received(outgoing)).body
    assert isinstance(decoded, Bunch) and decoded == {"a": 1}
    assert registry.get_serializer_by_id(123).deserialize('{"b": 2}', "dictionary") == {"b": 2}
    assert encode_7x(registry, Bunch(c=3))[1:] == ("bunch", 123)
    [text] = [t for t in texts(deprecations) if "SerializerRegistry(config_dict)" in t]
    assert "MyOwnSerializer rewritten as melange 8 serializers" in text


def test_a_7x_serializer_subclassing_the_generic_7x_base(
    deprecations: list[warnings.WarningMessage],
) -> None:
    class Upper(LegacySerializer[str]):
        @staticmethod
        def identifier() -> int:  # type: ignore[override]
            return 77

        def serialize(self, data: str) -> str:  # type: ignore[override]
            return data.upper()

        def deserialize(self, data: str, manifest: str | None = None) -> str:  # type: ignore[override]
            return data.lower()

    registry = SerializerRegistry({"serializers": {"upper": Upper}, "default": "upper"})
    outgoing = registry.encode("hello", producer_id=False)
    assert outgoing.body == b"HELLO"
    assert registry.decode(received(outgoing)).body == "hello"


def test_a_7x_serializer_returning_something_else_than_text_fails_clearly(
    deprecations: list[warnings.WarningMessage],
) -> None:
    class Broken(LegacySerializer[Any]):
        @staticmethod
        def identifier() -> int:  # type: ignore[override]
            return 50

        def serialize(self, data: Any) -> Any:  # type: ignore[override]
            return 42

        def deserialize(self, data: str, manifest: str | None = None) -> Any:  # type: ignore[override]
            return data

    registry = SerializerRegistry({"serializers": {"broken": Broken}, "default": "broken"})
    with pytest.raises(SerializationError, match=r"returned int; a 7\.x serializer returns str"):
        registry.encode({"a": 1})


def test_a_7x_identifier_that_is_not_an_int_is_refused(
    deprecations: list[warnings.WarningMessage],
) -> None:
    class Named(LegacySerializer[Any]):
        @staticmethod
        def identifier() -> str:  # type: ignore[override]
            return "named"

        def serialize(self, data: Any) -> str:  # type: ignore[override]
            return ""

        def deserialize(self, data: str, manifest: str | None = None) -> Any:  # type: ignore[override]
            return data

    with pytest.raises(ConfigurationError, match="identifier\\(\\) returns an int"):
        SerializerRegistry({"serializers": {"named": Named}})


def test_registering_a_7x_serializer_directly_names_the_8x_interface() -> None:
    with pytest.raises(SerializationError) as raised:
        SerializerRegistry().register(MyOwnSerializer())
    text = str(raised.value)
    assert "written the melange 7.x way" in text
    assert "identifier = 'a-name'" in text and "returns bytes" in text
    assert "SerializerRegistry({'serializers'" in text


# ------------------------------------------------------------------ Message, called the 7.x way
def test_message_with_7x_positional_arguments_raises_naming_both_forms() -> None:
    with pytest.raises(InvalidArgument) as raised:
        Message("m-1", '{"a": 1}', None, 1, "json")  # type: ignore[arg-type]
    text = str(raised.value)
    assert "id must be a string" in text and "got int 1" in text
    assert "melange 7.x's Message(message_id, content, metadata, serializer_id, manifest)" in text
    assert "Message(body, manifest=..., attributes={...})" in text
    assert "melange.models.Message" in text
    assert isinstance(raised.value, MelangeError)


def test_message_with_a_7x_metadata_object_raises_on_the_attributes() -> None:
    class SqsMessage:
        pass

    with pytest.raises(InvalidArgument, match="attributes must be a mapping") as raised:
        Message(None, "content", SqsMessage(), None, "manifest")  # type: ignore[arg-type]
    assert "melange.models.Message" in str(raised.value)


def test_message_create_raises_naming_the_8x_form() -> None:
    with pytest.raises(InvalidArgument) as raised:
        Message.create('{"a": 1}', "json", 1)
    text = str(raised.value)
    assert "Message.create(content, manifest, serializer_id) is melange 7.x's" in text
    assert "Message(body, manifest=..., attributes={...})" in text
    assert '{"a": 1}' not in text  # the content is never shown


def test_a_non_string_id_that_is_not_7x_gets_its_own_hint() -> None:
    with pytest.raises(InvalidArgument, match=r"str\(message_id\)"):
        Message("body", id=uuid.uuid4())  # type: ignore[arg-type]


def test_the_8x_forms_are_unchanged() -> None:
    assert Message({"a": 1}, "m", {"k": "v"}, "id-1").attributes == {"k": "v"}
    assert Message("b", attributes=None).attributes == {}  # type: ignore[arg-type]
    assert Message("b").id is None


# ------------------------------------------------------------------ melange.models
def test_7x_models_work_and_warn_naming_the_8x_forms(
    deprecations: list[warnings.WarningMessage],
) -> None:
    message = models.Message.create("secret-content", "json", 1)
    assert (message.message_id, message.content, message.serializer_id) == (
        None,
        "secret-content",
        1,
    )
    assert message.get_message_manifest() == "json"
    assert "secret-content" not in repr(message)
    full = models.Message("m-1", "{}", {"receipt": "r"}, 1, "json")
    assert full.metadata == {"receipt": "r"}
    queue = models.QueueWrapper("native-queue")
    assert queue.unwrap() == queue.unwrapped_obj == "native-queue"
    assert models.TopicWrapper(42).unwrap() == 42
    found = texts(deprecations)
    assert any(
        "melange.models.Message.create()" in t and "melange.Message(body" in t for t in found
    )
    assert any("melange.models.QueueWrapper" in t and "queue's name" in t for t in found)
    assert all(w.filename == THIS_FILE for w in deprecations)


# ------------------------------------------------- 7.x custom serializers on the wire
class Banana:
    def __init__(self, value: str) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return type(other) is Banana and other.value == self.value

    __hash__ = None  # type: ignore[assignment]


class BananaSerializer(LegacySerializer[Banana]):
    """A 7.x custom serializer (7.x's serialization.md, "Creating your own serializers")."""

    @staticmethod
    def identifier() -> int:  # type: ignore[override]
        return 40

    def manifest(self, data: Any) -> str:
        return "BananaEvent"

    def serialize(self, data: Any) -> str:  # type: ignore[override]
        return json.dumps({"value": data.value})

    def deserialize(self, data: str, manifest: str | None = None) -> Any:  # type: ignore[override]
        return Banana(json.loads(data)["value"])


BANANA_CONFIG = {
    "serializers": {"json": JSONSerializer, "pickle": PickleSerializer, "banana": BananaSerializer},
    "serializer_bindings": {Dict: "json", Banana: "banana"},
    "default": "pickle",
}

# Captured from melange 7.2.0 (QueuePublisher(registry, LocalSQSBackend).publish(q, Banana("b1"))
# with BANANA_CONFIG, read back with boto3): the SQS body was
# '{"Message": "{\"value\": \"b1\"}"}' (7.x's queue wrapper, which the AWS backend removes), with
# these message attributes (manifest String, serializer_id Number).
BANANA_7X_TEXT = '{"value": "b1"}'
BANANA_7X_ATTRIBUTES = {"manifest": "BananaEvent", "serializer_id": "40"}


def seven_x_received(text: str, attributes: dict[str, str]) -> ReceivedMessage:
    return ReceivedMessage(
        queue_name="q",
        body=text.encode(),
        attributes=dict(attributes),
        message_id="m-7",
        receive_count=1,
    )


def test_a_7x_message_of_a_custom_serializer_is_read_by_that_serializer(
    deprecations: list[warnings.WarningMessage],
) -> None:
    registry = SerializerRegistry(BANANA_CONFIG)
    message = registry.decode(seven_x_received(BANANA_7X_TEXT, BANANA_7X_ATTRIBUTES))
    assert message.body == Banana("b1")  # not the default (pickle) reading it
    assert message.manifest == "BananaEvent"
    assert message.attributes == {}  # 7.x's own attributes are not the application's
    # Also as the AWS backend hands it over (the manifest already under melange's name).
    moved = {"melange.manifest": "BananaEvent", "serializer_id": "40"}
    assert registry.decode(seven_x_received(BANANA_7X_TEXT, moved)).body == Banana("b1")


def test_a_7x_message_of_an_unregistered_serializer_is_undecodable_not_defaulted(
    deprecations: list[warnings.WarningMessage],
) -> None:
    for default in ("json", "pickle"):
        config = {
            "serializers": {"json": JSONSerializer, "pickle": PickleSerializer},
            "serializer_bindings": {Dict: "json"},
            "default": default,
        }
        registry = SerializerRegistry(config)
        with pytest.raises(SerializationError, match=r"7\.x id 40"):
            registry.decode(seven_x_received(BANANA_7X_TEXT, BANANA_7X_ATTRIBUTES))


def test_a_7x_custom_serializer_message_reaches_an_8x_consumer_as_7x_gave_it(
    deprecations: list[warnings.WarningMessage],
) -> None:
    from melange.backends import OutgoingMessage
    from melange.backends.memory import MemoryBackend
    from melange.consumers import consumer
    from melange.dispatcher import MessageDispatcher
    from melange.factory import MessagingBackendFactory

    registry = SerializerRegistry(BANANA_CONFIG)
    backend = MemoryBackend()
    MessagingBackendFactory(backend).init_queue("q")
    backend.publish("q", [OutgoingMessage(BANANA_7X_TEXT.encode(), dict(BANANA_7X_ATTRIBUTES))])
    got: list[Any] = []

    @consumer
    def handle(message: Message) -> None:
        got.append(message.body)

    dispatcher = MessageDispatcher(backend, "q", [handle], registry, wait_seconds=0.05)
    dispatcher.run_until_idle(idle_seconds=0.2, stop=True)
    assert got == [Banana("b1")]


def test_a_7x_custom_serializer_payload_carries_7x_text_and_id_for_7x_consumers(
    deprecations: list[warnings.WarningMessage],
) -> None:
    registry = SerializerRegistry(BANANA_CONFIG)
    outgoing = registry.encode(Banana("b1"), producer_id=False)
    # What 7.2.0 wrote for it (BANANA_7X_TEXT, BANANA_7X_ATTRIBUTES): the same text, and the
    # 7.x id a backend with compatible_with_7x=True writes as 7.x's serializer_id.
    assert outgoing.body.decode() == BANANA_7X_TEXT
    assert outgoing.attributes == {
        "melange.serializer": "banana",
        "melange.manifest": "BananaEvent",
        "serializer_id": "40",
    }
    message = registry.decode(received(outgoing))
    assert message.body == Banana("b1")
    assert message.attributes == {}  # the 7.x id is melange's, not the application's
    # JSON and pickle carry no extra attribute: backends know their 7.x ids.
    assert "serializer_id" not in registry.encode({"a": 1}).attributes


# ------------------------------------------------------------------ the built-in serializers
def test_builtin_serializers_deserialize_7x_text_without_a_manifest() -> None:
    # 7.x: JsonSerializer().deserialize(text, manifest=None), PickleSerializer().deserialize(
    # base64 text, manifest=None); melange 8 reads bytes and the same text.
    assert JSONSerializer().deserialize('{"a": 1}') == {"a": 1}
    assert JSONSerializer().deserialize(b'{"a": 1}') == {"a": 1}
    assert PickleSerializer().deserialize(seven_x_pickle(OrderPaid("o-1"))) == OrderPaid("o-1")
    assert PickleSerializer().deserialize(pickle.dumps(OrderPaid("o-2"))) == OrderPaid("o-2")
    with pytest.raises(SerializationError, match="not base64 text"):
        PickleSerializer().deserialize("%%% not base64 %%%")


def test_the_8x_serializer_base_takes_7x_type_parameters(
    deprecations: list[warnings.WarningMessage],
) -> None:
    # 7.x's melange.serializers exported its Generic base: class X(Serializer[Dict]) was usual.
    class DictSerializer(Serializer[Dict]):  # type: ignore[type-arg]
        @staticmethod
        def identifier() -> int:  # type: ignore[override]
            return 50

        def manifest(self, data: Any) -> str:
            return "dict"

        def serialize(self, data: Any) -> str:  # type: ignore[override]
            return json.dumps(data)

        def deserialize(self, data: str, manifest: str | None = None) -> Any:  # type: ignore[override]
            return json.loads(data)

    registry = SerializerRegistry(
        {"serializers": {"d": DictSerializer}, "serializer_bindings": {Dict: "d"}}
    )
    assert registry.serialize({"a": 1}) == '{"a": 1}'
    assert Serializer[int] is Serializer  # type: ignore[type-arg,misc]
