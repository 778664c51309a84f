"""melange 7.x serialization on melange 8's :class:`~melange.serializers.SerializerRegistry`.

What 7.x had and melange 8 does not:

* the registry built from a configuration dict,
  ``SerializerRegistry({"serializers": {name: cls}, "serializer_bindings": {type: name},
  "default": name})``, whose bindings also match subclasses
  (:class:`LegacySerializerRegistry`, which ``SerializerRegistry(dict)`` returns);
* the registry's lookup methods (``find_serializer_for``, ``serializer_for``,
  ``get_serializer_by_id``, ``get_serializer_by_name``, ``serialize``,
  ``deserialize_with_serializerid``, ``deserialize_with_class``), implemented
  here as functions that take the registry first; the registry's methods of
  those names delegate to them;
* numeric serializer ids (JSON is 1, pickle 2) and text bodies (a 7.x pickle
  body is the base64 text of the pickle bytes): :func:`legacy_id`,
  :func:`to_text`, :func:`from_text`, :func:`encode_7x` and :func:`decode_7x`;
* custom serializers written the 7.x way (a static ``identifier()`` returning an
  int, ``serialize`` returning ``str``), which run behind the melange 8 interface
  when they are named in a configuration dict.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import threading
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

from melange.backends.base import OutgoingMessage, ReceivedMessage
from melange.compat.calls_common import warn_7x
from melange.exceptions import ConfigurationError, InvalidArgument, SerializationError, did_you_mean
from melange.message import (
    MANIFEST_ATTRIBUTE,
    PRODUCER_ID_ATTRIBUTE,
    RESERVED_ATTRIBUTES,
    SERIALIZER_ATTRIBUTE,
    Message,
    _received_message,
)
from melange.serializers import (
    PICKLE_RISK,
    SERIALIZER_ID_7X,
    JSONSerializer,
    PickleSerializer,
    Serializer,
    SerializerRegistry,
    _decode_failed,
    _where,
    describe_body,
)

__all__ = [
    "JSON_ID",
    "PICKLE_ID",
    "JsonSerializer",
    "LegacySerializer",
    "LegacySerializerRegistry",
    "SerializerView",
    "decode_7x",
    "decode_received_7x",
    "deserialize_with_class",
    "deserialize_with_serializerid",
    "encode_7x",
    "find_serializer_for",
    "from_text",
    "get_serializer_by_id",
    "get_serializer_by_name",
    "legacy_id",
    "serialize",
    "serializer_for",
    "to_text",
]

T = TypeVar("T")

JSON_ID = 1
"""7.x's id of the JSON serializer (``melange.serializer`` ``"json"`` in melange 8)."""

PICKLE_ID = 2
"""7.x's id of the pickle serializer (``melange.serializer`` ``"pickle"`` in melange 8)."""

JsonSerializer = JSONSerializer
"""7.x's name of :class:`~melange.serializers.JSONSerializer`."""

_CONFIG_KEYS = ("serializers", "serializer_bindings", "default")

_NEW_REGISTRY = (
    "SerializerRegistry(default_serializer, allow_pickle=...) with registry.register(serializer) "
    "and registry.bind(cls, serializer=identifier) (melange 8 binds exact types)"
)


# ------------------------------------------------------------- 7.x serializers
class LegacySerializer(Serializer, Generic[T]):
    """7.x's ``Serializer`` base class (``melange.serializers.interfaces.Serializer``).

    A subclass written the 7.x way defines a static ``identifier()`` returning
    an int, ``serialize(data) -> str`` and ``deserialize(data: str, manifest)``;
    name it in a 7.x configuration dict and the registry runs it behind the
    melange 8 interface. ``LegacySerializer[Payload]`` is accepted, as 7.x's
    base class was generic. New serializers subclass
    :class:`melange.serializers.Serializer` (``identifier`` a string attribute,
    ``serialize`` returning bytes).
    """


class _AdaptedSerializer(Serializer):
    """A serializer written the 7.x way (``identifier()`` an int, str bodies), as melange 8 sees it.

    The body bytes are the UTF-8 encoding of the text the 7.x serializer writes.
    """

    def __init__(self, inner: Any, identifier: str, seven_x_id: int) -> None:
        self.inner = inner
        self.identifier = identifier
        self.legacy_id = seven_x_id

    def __repr__(self) -> str:
        return f"<7.x serializer {type(self.inner).__qualname__} as {self.identifier!r}>"

    def manifest(self, obj: Any) -> str | None:
        """Return the 7.x serializer's manifest for ``obj``."""
        manifest = self.inner.manifest(obj)
        if manifest is not None and not isinstance(manifest, str):
            raise SerializationError(
                f"serializer {self.identifier!r} ({type(self.inner).__qualname__}.manifest) "
                f"returned {type(manifest).__name__}; a manifest is a str or None"
            )
        return manifest

    def serialize(self, obj: Any) -> bytes:
        """Return the 7.x serializer's text for ``obj``, UTF-8 encoded."""
        text = self.inner.serialize(obj)
        if isinstance(text, str):
            return text.encode("utf-8")
        if isinstance(text, (bytes, bytearray)):
            return bytes(text)
        raise SerializationError(
            f"serializer {self.identifier!r} ({type(self.inner).__qualname__}.serialize) returned "
            f"{type(text).__name__}; a 7.x serializer returns str (a melange 8 one, bytes)"
        )

    def deserialize(self, data: bytes, manifest: str | None) -> Any:
        """Decode ``data`` as UTF-8 and let the 7.x serializer read the text."""
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise SerializationError(
                f"{describe_body(bytes(data), manifest)} is not UTF-8 text, which 7.x "
                f"serializer {self.identifier!r} ({type(self.inner).__qualname__}) reads"
            ) from None
        return self.inner.deserialize(text, manifest)


def _is_7x_style(candidate: Any) -> bool:
    """7.x serializers have a static ``identifier()``; melange 8's a string attribute."""
    return callable(getattr(candidate, "identifier", None))


def legacy_id(serializer: Serializer) -> int | None:
    """Return the 7.x numeric id of a melange 8 serializer: JSON 1, pickle 2, a 7.x one's own."""
    if isinstance(serializer, _AdaptedSerializer):
        return serializer.legacy_id
    if isinstance(serializer, JSONSerializer):
        return JSON_ID
    if isinstance(serializer, PickleSerializer):
        return PICKLE_ID
    return None


def _is_pickle(serializer: Serializer) -> bool:
    return isinstance(serializer, PickleSerializer) or serializer.identifier == "pickle"


def to_text(serializer: Serializer, data: bytes) -> str:
    """Return ``data``, written by ``serializer``, as the text 7.x carried in a message.

    Pickle bodies become base64 text, as 7.x's ``PickleSerializer`` wrote them;
    other bodies are UTF-8 text.

    Raises:
        SerializationError: The body is binary, which 7.x's text bodies cannot carry.
    """
    if _is_pickle(serializer):
        return base64.encodebytes(data).decode("ascii")
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise SerializationError(
            f"serializer {serializer.identifier!r} wrote a binary body, which a 7.x text body "
            "cannot carry; publish through melange 8 (registry.encode(Message(obj)))"
        ) from None


def from_text(serializer: Serializer, text: str | bytes) -> bytes:
    """Return the body bytes ``serializer`` reads, from the text of a 7.x message.

    Raises:
        SerializationError: A pickle body is not base64 text.
    """
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", errors="replace")
    elif not isinstance(text, str):
        raise InvalidArgument("data", "the text of a 7.x message body (a str)", text)
    if _is_pickle(serializer):
        try:
            return base64.decodebytes(text.encode("ascii"))
        except (UnicodeEncodeError, binascii.Error):
            raise SerializationError(
                f"a body of {len(text)} characters is not base64 text, as 7.x's pickle "
                "serializer wrote it"
            ) from None
    return text.encode("utf-8")


class SerializerView:
    """What 7.x's lookup methods return: a melange 8 serializer with the 7.x interface.

    7.x returned a serializer class, which callers instantiated; calling a view
    returns the view, so ``registry.serializer_for(Payload)()`` keeps working.
    ``serialize`` returns text and ``deserialize`` takes it, as in 7.x (base64
    text for pickle).

    Attributes:
        serializer: The melange 8 serializer behind the view.
    """

    def __init__(self, serializer: Serializer) -> None:
        self.serializer = serializer

    def __call__(self) -> SerializerView:
        """Return the view itself: 7.x callers instantiated the class a lookup returned."""
        return self

    def __repr__(self) -> str:
        return f"<7.x view of serializer {self.serializer.identifier!r}>"

    def identifier(self) -> int:
        """Return the 7.x numeric id (JSON 1, pickle 2).

        Raises:
            SerializationError: The serializer is a melange 8 one, which has no 7.x id.
        """
        found = legacy_id(self.serializer)
        if found is None:
            raise SerializationError(
                f"serializer {self.serializer.identifier!r} is a melange 8 serializer, which has "
                "no 7.x numeric id; melange 8 names serializers by their identifier string"
            )
        return found

    def manifest(self, data: Any) -> str | None:
        """Return the manifest 7.x sent with ``data``."""
        manifest = self.serializer.manifest(data)
        if manifest is not None:
            return manifest
        # 7.x's own serializers always named one.
        if isinstance(self.serializer, JSONSerializer):
            return "json"
        if isinstance(self.serializer, PickleSerializer):
            return type(data).__qualname__
        return None

    def serialize(self, data: Any) -> str:
        """Return ``data`` serialized, as 7.x's text."""
        return to_text(self.serializer, self.serializer.serialize(data))

    def deserialize(self, data: str, manifest: str | None = None) -> Any:
        """Return the object the 7.x text ``data`` holds."""
        return self.serializer.deserialize(from_text(self.serializer, data), manifest)


# ------------------------------------------------------- the configuration dict
def _check_binding_key(key: Any) -> Any:
    try:
        issubclass(object, key)
    except TypeError:
        raise ConfigurationError(
            f"serializer_bindings keys must be classes (or typing aliases such as Dict), got "
            f"{key!r}; in melange 8 bind types with registry.bind(cls, serializer=identifier)"
        ) from None
    return key


def _is_subclass(cls: Any, key: Any) -> bool:
    try:
        return issubclass(cls, key)
    except TypeError:
        return False


class _Config:
    """A 7.x configuration dict, checked, with its serializers instantiated."""

    def __init__(self, config: Mapping[Any, Any]) -> None:
        unknown = [key for key in config if key not in _CONFIG_KEYS]
        if unknown:
            name = str(unknown[0])
            raise ConfigurationError(
                f"unknown key {unknown[0]!r} in the 7.x serializer configuration"
                f"{did_you_mean(name, _CONFIG_KEYS)}; its keys are {', '.join(_CONFIG_KEYS)}"
            )
        serializers = config.get("serializers")
        if not isinstance(serializers, Mapping) or not serializers:
            raise ConfigurationError(
                "a 7.x serializer configuration needs 'serializers', a dict of names to "
                f"serializer classes, e.g. {{'json': JsonSerializer}}; got {serializers!r}. "
                f"In melange 8 use {_NEW_REGISTRY}"
            )
        by_class: dict[Any, Serializer] = {}
        self.serializers: dict[str, Serializer] = {}
        for name, value in serializers.items():
            if not isinstance(name, str) or not name:
                raise ConfigurationError(
                    f"serializer names must be non-empty strings, got {name!r}"
                )
            if value not in by_class:
                by_class[value] = self._instantiate(name, value)
            self.serializers[name] = by_class[value]
        bindings = config.get("serializer_bindings") or {}
        if not isinstance(bindings, Mapping):
            raise ConfigurationError(
                f"serializer_bindings must be a dict of types to serializer names, got "
                f"{type(bindings).__name__}"
            )
        self.bindings: list[tuple[Any, str]] = []
        for key, name in bindings.items():
            self._check_name("serializer_bindings", name)
            self.bindings.append((_check_binding_key(key), name))
        self.default: str | None = config.get("default")
        if self.default is not None:
            self._check_name("default", self.default)
        self.allow_pickle = any(_is_pickle(s) for s in self.serializers.values())

    def _check_name(self, where: str, name: Any) -> None:
        if name not in self.serializers:
            raise ConfigurationError(
                f"{where} names serializer {name!r}, which 'serializers' does not define"
                f"{did_you_mean(str(name), self.serializers)}; the names are "
                f"{', '.join(self.serializers)}"
            )

    @staticmethod
    def _instantiate(name: str, value: Any) -> Serializer:
        if isinstance(value, type):
            if not _is_7x_style(value) and not issubclass(value, Serializer):
                raise ConfigurationError(
                    f"serializers[{name!r}] is {value.__qualname__}, which is not a serializer; "
                    "subclass melange.serializers.Serializer (identifier a str attribute, "
                    "serialize() returning bytes)"
                )
            try:
                instance = value()
            except Exception as exc:
                raise ConfigurationError(
                    f"serializers[{name!r}]: {value.__qualname__}() failed "
                    f"({type(exc).__name__}: {exc}); a serializer class in the configuration is "
                    "created with no arguments (pass an instance to keep your own)"
                ) from exc
        elif isinstance(value, Serializer) or _is_7x_style(value):
            instance = value
        else:
            raise ConfigurationError(
                f"serializers[{name!r}] must be a serializer class, got {type(value).__name__}; "
                "e.g. {'json': JsonSerializer}"
            )
        if not _is_7x_style(instance):
            return instance  # type: ignore[no-any-return]
        seven_x_id = instance.identifier()
        if isinstance(seven_x_id, bool) or not isinstance(seven_x_id, int):
            raise ConfigurationError(
                f"serializers[{name!r}]: {type(instance).__qualname__}.identifier() returned "
                f"{seven_x_id!r}; a 7.x serializer's identifier() returns an int. In melange 8 "
                "subclass melange.serializers.Serializer and set identifier = 'a-name' instead"
            )
        return _AdaptedSerializer(instance, name, seven_x_id)


class LegacySerializerRegistry(SerializerRegistry):
    """A registry built from a 7.x configuration dict; what ``SerializerRegistry(dict)`` returns.

    It is a melange 8 :class:`~melange.serializers.SerializerRegistry` (publishers
    and dispatchers take it), with 7.x's choice of serializer for a payload: an
    exact binding, else the most specific binding of a base class, else the
    ``default`` (encoding a payload no binding matches fails when the
    configuration names no default, as in 7.x). Naming the pickle serializer in
    the configuration allows pickle.

    Args:
        config: ``{"serializers": {name: cls}, "serializer_bindings": {type: name},
            "default": name}``; ``serializer_bindings`` and ``default`` are optional.
        allow_pickle: Allow pickle even if the configuration does not name it.

    Raises:
        ConfigurationError: The configuration is invalid (an unknown key, a
            binding or default naming an undefined serializer, a value that is
            not a serializer).
    """

    def __init__(self, config: Mapping[Any, Any], *, allow_pickle: bool = False) -> None:
        if not isinstance(config, Mapping):
            raise ConfigurationError(
                f"LegacySerializerRegistry takes a 7.x configuration dict, got "
                f"{type(config).__name__}; in melange 8 use {_NEW_REGISTRY}"
            )
        parsed = _Config(config)
        warn_7x("SerializerRegistry(config_dict)", _suggest(parsed))
        if parsed.default is not None:
            default = parsed.serializers[parsed.default]
        else:  # decoding still needs a default: JSON, as in melange 8
            default = next(
                (s for s in parsed.serializers.values() if isinstance(s, JSONSerializer)),
                JSONSerializer(),
            )
        super().__init__(default, allow_pickle=allow_pickle or parsed.allow_pickle)
        for serializer in parsed.serializers.values():
            if self.get(serializer.identifier) is not serializer:
                self.register(serializer)
        self.legacy_names: dict[str, Serializer] = parsed.serializers
        self._legacy_bindings = parsed.bindings
        self._legacy_default = parsed.default is not None
        self._chosen: dict[Any, Serializer | None] = {}
        self._chosen_lock = threading.Lock()

    def legacy_choice(self, cls: Any) -> Serializer | None:
        """Return the serializer 7.x's bindings choose for ``cls``, or ``None`` (the default)."""
        try:
            return self._chosen[cls]
        except (KeyError, TypeError):
            pass
        chosen: tuple[Any, str] | None = None
        for key, name in self._legacy_bindings:
            if key is cls:
                chosen = (key, name)
                break
            if not _is_subclass(cls, key):
                continue
            # The most specific base wins; between unrelated ones, the first listed.
            if chosen is None or (
                _is_subclass(key, chosen[0]) and not _is_subclass(chosen[0], key)
            ):
                chosen = (key, name)
        result = None if chosen is None else self.legacy_names[chosen[1]]
        with self._chosen_lock, contextlib.suppress(TypeError):  # unhashable: not cached
            self._chosen[cls] = result
        return result

    def legacy_serializer_for(self, cls: Any) -> Serializer:
        """Return the serializer 7.x chose for ``cls``: a binding, else the default.

        Raises:
            SerializationError: No binding matches and the configuration has no default.
        """
        chosen = self.legacy_choice(cls)
        if chosen is not None:
            return chosen
        if not self._legacy_default:
            name = getattr(cls, "__qualname__", repr(cls))
            raise SerializationError(
                f"no serializer is bound to {name} and the 7.x configuration names no "
                "'default'; add \"default\": name to it, bind a base class of it in "
                "'serializer_bindings', or in melange 8 use "
                f"registry.bind({name}, serializer=identifier)"
            )
        return self.default

    def encode(
        self, message: Message | Any, *, delay_seconds: float = 0.0, producer_id: bool = True
    ) -> OutgoingMessage:
        """Serialize a message as melange 8 does; a 7.x serializer's also carries its 7.x id.

        A body written by a 7.x custom serializer gets 7.x's ``serializer_id``
        attribute (its ``identifier()``), so that a backend created with
        ``compatible_with_7x=True`` can write the message in 7.x's form: a 7.x
        consumer chooses the serializer by that number. JSON and pickle need
        none (their 7.x ids are fixed).

        Raises:
            SerializationError: The body cannot be serialized.
            InvalidMessage: The attributes use a name melange reserves.
        """
        outgoing = super().encode(message, delay_seconds=delay_seconds, producer_id=producer_id)
        serializer = self.get(outgoing.attributes[SERIALIZER_ATTRIBUTE])
        if not isinstance(serializer, _AdaptedSerializer):
            return outgoing
        attributes = dict(outgoing.attributes)
        attributes[SERIALIZER_ID_7X] = str(serializer.legacy_id)
        return dataclasses.replace(outgoing, attributes=attributes)

    def _outgoing(self, message: Message) -> tuple[str | None, Serializer]:
        # melange 8's exact bindings and explicit manifests first, then 7.x's bindings.
        if message.manifest is None and self.manifest_for(type(message.body)) is None:
            chosen = self.legacy_serializer_for(type(message.body))
            manifest = chosen.manifest(message.body)
            if manifest is None and _is_pickle(chosen):
                # 7.x's pickle serializer named the class: subscription filters match on it.
                manifest = type(message.body).__qualname__
            return manifest, chosen
        return super()._outgoing(message)


def _suggest(parsed: _Config) -> str:
    """The melange 8 form of a 7.x configuration, as far as it can be written in one line."""
    default = parsed.serializers[parsed.default] if parsed.default else None
    arguments = [] if default is None else [f"{type(default).__name__}()"]
    if parsed.allow_pickle:
        arguments.append("allow_pickle=True")
    form = f"SerializerRegistry({', '.join(arguments)})"
    extra = [s for s in parsed.serializers.values() if s is not default and not _is_json_default(s)]
    if extra:
        form += " with registry.register(serializer) for the other serializers"
    rewrite = sorted(
        {
            type(s.inner).__qualname__
            for s in parsed.serializers.values()
            if isinstance(s, _AdaptedSerializer)
        }
    )
    if rewrite:
        form += (
            f", {', '.join(rewrite)} rewritten as melange 8 serializers (subclass "
            "melange.serializers.Serializer: identifier a str attribute, serialize() returning "
            "bytes)"
        )
    if parsed.bindings:
        form += " and registry.bind(cls, serializer=identifier) for each bound type"
        form += " (melange 8 binds exact types, not subclasses)"
    return form


def _is_json_default(serializer: Serializer) -> bool:
    return type(serializer) is JSONSerializer


# ------------------------------------------------------------ lookup methods
def _warn(method: str, new: str) -> None:
    warn_7x(f"SerializerRegistry.{method}()", new)


def serializer_for(registry: SerializerRegistry, cls: Any) -> SerializerView:
    """7.x ``registry.serializer_for(type)``: the serializer for a payload type.

    Raises:
        SerializationError: No serializer is bound and the 7.x configuration has no default.
    """
    _warn("serializer_for", "registry.encode(Message(obj)), which chooses the serializer")
    return SerializerView(_serializer_for(registry, cls))


def _serializer_for(registry: SerializerRegistry, cls: Any) -> Serializer:
    if isinstance(registry, LegacySerializerRegistry):
        return registry.legacy_serializer_for(cls)
    # A melange 8 registry: its exact binding, else the default.
    manifest = registry.manifest_for(cls) if isinstance(cls, type) else None
    if manifest is not None:
        outgoing = registry._outgoing(Message(None, manifest=manifest))
        return outgoing[1]
    return registry.default


def find_serializer_for(registry: SerializerRegistry, obj: Any) -> SerializerView:
    """7.x ``registry.find_serializer_for(obj)``: the serializer for a payload."""
    _warn("find_serializer_for", "registry.encode(Message(obj)), which chooses the serializer")
    return SerializerView(_serializer_for(registry, type(obj)))


def get_serializer_by_name(registry: SerializerRegistry, name: str) -> SerializerView:
    """7.x ``registry.get_serializer_by_name(name)``: a serializer by its configuration name.

    Raises:
        SerializationError: No serializer has that name.
    """
    _warn("get_serializer_by_name", "registry.get(identifier)")
    names: Mapping[str, Serializer]
    if isinstance(registry, LegacySerializerRegistry):
        names = registry.legacy_names
    else:
        names = {i: s for i in registry.identifiers() if (s := registry.get(i)) is not None}
    found = names.get(name)
    if found is None:
        raise SerializationError(
            f"no serializer is named {name!r}{did_you_mean(str(name), names)}; the names are "
            f"{', '.join(names)}"
        )
    return SerializerView(found)


def _by_id(registry: SerializerRegistry, serializer_id: int) -> Serializer:
    if isinstance(serializer_id, bool) or not isinstance(serializer_id, int):
        raise InvalidArgument("serializer_id", "an int (7.x: JSON 1, pickle 2)", serializer_id)
    for identifier in registry.identifiers():
        serializer = registry.get(identifier)
        if serializer is not None and legacy_id(serializer) == serializer_id:
            return serializer
    if serializer_id == PICKLE_ID and not registry.allow_pickle:
        raise SerializationError(f"the pickle serializer (7.x id 2) is disabled: {PICKLE_RISK}")
    known = [
        f"{identifier} ({found})"
        for identifier in registry.identifiers()
        if (s := registry.get(identifier)) is not None and (found := legacy_id(s)) is not None
    ]
    raise SerializationError(
        f"no serializer with 7.x id {serializer_id} is registered; the registry has "
        f"{', '.join(known) or 'none with a 7.x id'}. Name it in the 7.x configuration, or "
        "register it with registry.register()"
    )


def get_serializer_by_id(registry: SerializerRegistry, serializer_id: int) -> SerializerView:
    """7.x ``registry.get_serializer_by_id(id)``: a serializer by its 7.x numeric id.

    Raises:
        SerializationError: No registered serializer has that id (pickle, 2, when
            pickle is not allowed).
    """
    _warn("get_serializer_by_id", "registry.get(identifier), e.g. registry.get('json')")
    return SerializerView(_by_id(registry, serializer_id))


def serialize(registry: SerializerRegistry, obj: Any) -> str:
    """7.x ``registry.serialize(obj)``: the payload as 7.x's text."""
    _warn("serialize", "registry.encode(Message(obj)), which returns an OutgoingMessage")
    serializer = _serializer_for(registry, type(obj))
    return to_text(serializer, serializer.serialize(obj))


def deserialize_with_serializerid(
    registry: SerializerRegistry, data: str, serializer_id: int, manifest: str | None = None
) -> Any:
    """7.x ``registry.deserialize_with_serializerid(data, serializer_id, manifest)``.

    Raises:
        SerializationError: The id is unknown (or pickle and not allowed), or
            the text cannot be decoded.
    """
    _warn("deserialize_with_serializerid", "registry.decode(received_message)")
    return decode_7x(registry, data, serializer_id, manifest)


def deserialize_with_class(
    registry: SerializerRegistry, data: str, klass: Any, manifest: str | None = None
) -> Any:
    """7.x ``registry.deserialize_with_class(data, klass, manifest)``."""
    _warn("deserialize_with_class", "registry.decode(received_message)")
    serializer = _serializer_for(registry, klass)
    return serializer.deserialize(from_text(serializer, data), manifest)


# ------------------------------------------------- 7.x message bodies, both ways
def encode_7x(registry: SerializerRegistry, obj: Any) -> tuple[str, str | None, int]:
    """Serialize ``obj`` as 7.x did: its text, manifest and serializer id.

    For writing messages that 7.x consumers read. No warning: melange's own
    7.x wire support calls it.

    Raises:
        SerializationError: The payload cannot be serialized, or the chosen
            serializer has no 7.x id (a melange 8 serializer).
    """
    view = SerializerView(_serializer_for(registry, type(obj)))
    seven_x_id = view.identifier()
    return view.serialize(obj), view.manifest(obj), seven_x_id


def decode_7x(
    registry: SerializerRegistry, text: str | bytes, serializer_id: int, manifest: str | None
) -> Any:
    """Deserialize a 7.x body: the text written by the serializer with 7.x id ``serializer_id``.

    No warning: melange's own 7.x wire support calls it.

    Raises:
        SerializationError: The id is unknown (or pickle and not allowed), or
            the text cannot be decoded.
    """
    serializer = _by_id(registry, serializer_id)
    return serializer.deserialize(from_text(serializer, text), manifest)


MANIFEST_7X = "manifest"
"""7.x's manifest attribute (``"json"`` for its JSON serializer, the class name for pickle)."""


def decode_received_7x(registry: SerializerRegistry, received: ReceivedMessage) -> Message | None:
    """Decode a received message that carries 7.x's ``serializer_id`` attribute.

    :meth:`SerializerRegistry.decode <melange.serializers.SerializerRegistry.decode>`
    calls it for such messages. 7.x's id chooses the serializer (7.x's custom
    ones included), never the registry's default: a message whose id no
    registered serializer has is undecodable. 7.x's ``manifest`` and
    ``serializer_id`` attributes are not handed to the application.

    A melange 8 message that carries the 7.x id of its 7.x custom serializer
    for 7.x consumers (:meth:`LegacySerializerRegistry.encode`) is decoded the
    melange 8 way, without that attribute.

    Returns:
        The decoded message, or ``None`` when melange 8's own attributes decide
        (``melange.serializer`` present, or a ``serializer_id`` that is not a
        number); the registry then decodes it the melange 8 way.

    Raises:
        SerializationError: No registered serializer has the 7.x id (pickle's,
            2, when pickle is not allowed), or the body cannot be decoded.
    """
    attributes = received.attributes
    number = attributes[SERIALIZER_ID_7X].strip()
    if not number.isdigit():
        return None
    identifier = attributes.get(SERIALIZER_ATTRIBUTE)
    if identifier is not None:
        named = registry.get(identifier)
        if isinstance(named, _AdaptedSerializer) and str(named.legacy_id) == number:
            # Our own 7.x id, written for 7.x consumers: not an application attribute.
            stripped = {k: v for k, v in attributes.items() if k != SERIALIZER_ID_7X}
            return registry.decode(dataclasses.replace(received, attributes=stripped))
        return None
    try:
        serializer = _by_id(registry, int(number))
    except SerializationError as exc:
        raise SerializationError(f"cannot decode {_where(received)}: {exc}") from None
    kept = {
        name: value
        for name, value in attributes.items()
        if name not in RESERVED_ATTRIBUTES and name not in (SERIALIZER_ID_7X, MANIFEST_7X)
    }
    manifest = attributes.get(MANIFEST_ATTRIBUTE) or attributes.get(MANIFEST_7X) or None
    if manifest == "json" and isinstance(serializer, JSONSerializer):
        manifest = None  # 7.x's JSON serializer named every payload "json"
    try:
        body = serializer.deserialize(from_text(serializer, bytes(received.body)), manifest)
    except Exception as exc:
        raise _decode_failed(received, serializer, manifest, exc, "7.x serializer") from exc
    return _received_message(
        body,
        manifest,
        kept,
        received.message_id,
        received.group_id,
        attributes.get(PRODUCER_ID_ATTRIBUTE),
    )
