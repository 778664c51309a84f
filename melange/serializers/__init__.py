"""Serializers: payload objects to bytes and back, chosen by manifest.

A *manifest* names what kind of payload a body holds (``"PaymentEvent"``,
``"payment.v1"``). It travels with the message in the ``melange.manifest``
attribute, next to ``melange.serializer`` (the identifier of the serializer that
wrote the body), so the receiving side can pick the serializer and rebuild the
right type.

The :class:`SerializerRegistry` holds the serializers and the bindings
``type -> manifest -> serializer``. JSON is the default. Pickle is refused
unless the registry is created with ``allow_pickle=True``: unpickling runs code
chosen by whoever wrote the bytes.

Error messages describe a body by its size and manifest only, never by its content.
"""

from __future__ import annotations

import abc
import base64
import binascii
import collections.abc
import dataclasses
import enum
import json as _json  # aliased: the 7.x alias submodule melange.serializers.json would shadow it
import logging
import pickle as _pickle  # likewise melange.serializers.pickle
import sys
import threading
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

from melange.backends.base import OutgoingMessage, ReceivedMessage
from melange.exceptions import InvalidMessage, SerializationError, require_str
from melange.message import (
    MANIFEST_ATTRIBUTE,
    PRODUCER_ID_ATTRIBUTE,
    RESERVED_ATTRIBUTES,
    SERIALIZER_ATTRIBUTE,
    Message,
    _received_message,
    new_producer_id,
)

logger = logging.getLogger("melange.serializers")

__all__ = [
    "JSONSerializer",
    "PickleSerializer",
    "Serializer",
    "SerializerRegistry",
]


def describe_body(data: bytes, manifest: str | None) -> str:
    """Describe a body for an error message without revealing its content."""
    kind = f"with manifest {manifest!r}" if manifest is not None else "without a manifest"
    return f"body of {len(data)} bytes {kind}"


class Serializer(abc.ABC):
    """Turns payload objects into bytes and back.

    Subclasses set :attr:`identifier` and implement :meth:`serialize` and
    :meth:`deserialize`. Raise :class:`~melange.exceptions.SerializationError`
    for data that cannot be handled; other exceptions are wrapped into one.
    """

    identifier: str = ""
    """The name written to the ``melange.serializer`` attribute, e.g. ``"json"``."""

    def __class_getitem__(cls, item: Any) -> Any:
        """Return the class itself: melange 7.x's base was generic (``Serializer[Dict]``)."""
        return cls

    def manifest(self, obj: Any) -> str | None:
        """Return the manifest to send with ``obj``, or ``None`` if the body is enough.

        Used when the registry has no binding for ``obj``'s type.
        """
        return None

    @abc.abstractmethod
    def serialize(self, obj: Any) -> bytes:
        """Return ``obj`` as bytes."""

    @abc.abstractmethod
    def deserialize(self, data: bytes, manifest: str | None) -> Any:
        """Return the object ``data`` holds; ``manifest`` says what kind it is, if known."""

    def bind_type(self, cls: type[Any], manifest: str) -> None:  # noqa: B027 - optional hook
        """Learn that ``manifest`` names ``cls``; called by :meth:`SerializerRegistry.bind`.

        Serializers that rebuild typed objects (like :class:`JSONSerializer`)
        override this; the default ignores it.
        """


# ---------------------------------------------------------------------- JSON
def _to_json(obj: Any) -> Any:
    """``json.dumps`` fallback: dataclasses as objects, enums by value, sets as arrays."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        # Shallow: json recurses into the field values and calls back for nested objects.
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (set, frozenset)):
        # Sorted when possible: equal sets give equal bytes (content-based deduplication).
        try:
            return sorted(obj)
        except TypeError:
            return list(obj)
    raise TypeError(
        f"objects of type {type(obj).__qualname__} cannot be written as JSON; convert them to "
        "str, numbers, lists, dicts or dataclasses, or bind the type to another serializer"
    )


_SCAN: Callable[[str, int], tuple[Any, int]] = vars(_json.JSONDecoder())["scan_once"]
"""The JSON decoder's scanner (C when available), what ``JSONDecoder.raw_decode`` calls."""


def _loads(text: str) -> Any:
    """Return ``json.loads(text)``, twice as fast for a body with no whitespace around it.

    ``json.loads`` skips leading and trailing whitespace with two regular
    expression matches, in two Python calls; the decoder's scanner parses from
    the first character and returns where the value ended. Anything else
    (whitespace around the value, a byte order mark, invalid JSON) is parsed
    again by ``json.loads``, so results and errors are exactly its own.
    """
    try:
        value, end = _SCAN(text, 0)
    except StopIteration:  # no JSON value starts at 0 (raw_decode makes this its error)
        return _json.loads(text)
    if end != len(text):
        return _json.loads(text)
    return value


class _Mismatch(Exception):
    """A JSON value does not fit the bound type (internal; becomes SerializationError)."""


_FIELD_TYPES: dict[type[Any], dict[str, Any]] = {}


def _field_types(cls: type[Any]) -> dict[str, Any]:
    """Return a dataclass's resolved field annotations, cached per class."""
    cached = _FIELD_TYPES.get(cls)
    if cached is not None:
        return cached
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # one annotation that does not resolve fails them all
        hints = _each_field_type(cls)
    _FIELD_TYPES[cls] = hints
    return hints


def _each_field_type(cls: type[Any]) -> dict[str, Any]:
    """The field annotations that resolve, one by one; each of the others is logged, once.

    A name only a type checker sees (imported under ``TYPE_CHECKING``), or a class
    defined inside a function, does not resolve: that field is left untyped.
    """
    module = sys.modules.get(cls.__module__)
    namespace = vars(module) if module is not None else {}
    hints: dict[str, Any] = {}
    for found in dataclasses.fields(cls):
        if not isinstance(found.type, str):
            hints[found.name] = found.type
            continue
        try:
            # What typing.get_type_hints does for each annotation, field by field.
            hints[found.name] = eval(found.type, namespace, dict(vars(cls)))
        except Exception as exc:
            logger.warning(
                "%s.%s: its annotation %r does not resolve (%s: %s); its value is left as "
                "decoded JSON",
                cls.__qualname__,
                found.name,
                found.type,
                type(exc).__name__,
                exc,
            )
    return hints


def _json_kind(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number")


def _rebuild(annotation: Any, value: Any) -> Any:
    """Turn a decoded JSON value back into ``annotation``'s type where it is a container of it."""
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return _rebuild_dataclass(annotation, value)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        try:
            return annotation(value)
        except ValueError:
            raise _Mismatch(f"a value is not a member of {annotation.__qualname__}") from None
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union or origin is types.UnionType:
        members = [a for a in args if a is not type(None)]
        if value is None or len(members) != 1:
            return value
        return _rebuild(members[0], value)
    if isinstance(value, list):
        return _rebuild_array(origin or annotation, args, value)
    if isinstance(value, dict) and origin in (dict, collections.abc.Mapping) and len(args) == 2:
        return {key: _rebuild(args[1], item) for key, item in value.items()}
    return value


def _rebuild_array(container: Any, args: tuple[Any, ...], value: list[Any]) -> Any:
    if container is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_rebuild(args[0], item) for item in value)
        if args and len(args) == len(value):
            return tuple(_rebuild(a, item) for a, item in zip(args, value, strict=True))
        return tuple(value)
    items = [_rebuild(args[0], item) for item in value] if args else value
    if container in (set, collections.abc.Set):
        return set(items)
    if container is frozenset:
        return frozenset(items)
    return items


def _rebuild_dataclass(cls: type[Any], value: Any) -> Any:
    if not isinstance(value, dict):
        raise _Mismatch(f"{cls.__qualname__} needs a JSON object, got {_json_kind(value)}")
    hints = _field_types(cls)
    init_fields = [f for f in dataclasses.fields(cls) if f.init]
    missing = [
        f.name
        for f in init_fields
        if f.name not in value
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise _Mismatch(f"{cls.__qualname__} field(s) missing: {', '.join(missing)}")
    # Keys the class does not have are ignored, so producers can add fields first.
    arguments = {
        f.name: _rebuild(hints.get(f.name, Any), value[f.name])
        for f in init_fields
        if f.name in value
    }
    try:
        return cls(**arguments)
    except Exception as exc:
        raise _Mismatch(
            f"{cls.__qualname__}(...) refused the fields ({type(exc).__name__})"
        ) from exc


class JSONSerializer(Serializer):
    """UTF-8 JSON; the default serializer.

    Dataclasses are written as JSON objects (nested ones too), enums by value
    and sets as arrays. A body whose manifest was bound to a dataclass with
    :meth:`SerializerRegistry.bind` is rebuilt into that dataclass, nested
    dataclasses, tuples and enums included (from the field annotations); keys
    the class does not have are ignored. Without a bound manifest the body comes
    back as plain JSON values (dicts, lists, ...).
    """

    identifier = "json"

    def __init__(self) -> None:
        self._types: dict[str, type[Any]] = {}
        self._manifests: dict[type[Any], str] = {}
        self._lock = threading.Lock()

    def bind_type(self, cls: type[Any], manifest: str) -> None:
        """Rebuild bodies with ``manifest`` into ``cls`` (a dataclass; other types are kept)."""
        with self._lock:
            self._types[manifest] = cls
            self._manifests[cls] = manifest

    def manifest(self, obj: Any) -> str | None:
        """Return the manifest bound to ``type(obj)``, if any."""
        return self._manifests.get(type(obj))

    def serialize(self, obj: Any) -> bytes:
        """Return ``obj`` as compact UTF-8 JSON.

        Raises:
            SerializationError: ``obj`` holds something JSON cannot represent
                (NaN and infinities included).
        """
        try:
            text = _json.dumps(
                obj,
                default=_to_json,
                ensure_ascii=False,
                allow_nan=False,
                separators=(",", ":"),
            )
        except (TypeError, ValueError, RecursionError) as exc:
            raise SerializationError(
                f"cannot serialize {type(obj).__qualname__} as JSON: {exc}"
            ) from None
        return text.encode("utf-8")

    def deserialize(self, data: bytes | str, manifest: str | None = None) -> Any:
        """Parse ``data`` as JSON, rebuilding the bound dataclass for ``manifest``.

        ``data`` may also be text, as melange 7.x's ``JsonSerializer`` took it.

        Raises:
            SerializationError: ``data`` is not UTF-8 JSON, or does not fit the bound type.
        """
        if type(data) is not bytes and isinstance(data, str):  # 7.x's text
            data = data.encode("utf-8", errors="surrogatepass")
        try:
            # bytes(data) only for other buffers: it costs a call even on bytes.
            text = (data if type(data) is bytes else bytes(data)).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SerializationError(
                f"{describe_body(data, manifest)} is not JSON: it is not UTF-8 text "
                f"(invalid byte at offset {exc.start})"
            ) from None
        try:
            value = _loads(text)
        except _json.JSONDecodeError as exc:
            raise SerializationError(
                f"{describe_body(data, manifest)} is not valid JSON: {exc.msg} at line "
                f"{exc.lineno} column {exc.colno}"
            ) from None
        except RecursionError:
            raise SerializationError(
                f"{describe_body(data, manifest)} is nested too deeply to parse"
            ) from None
        cls = self._types.get(manifest) if manifest is not None else None
        if cls is None:
            return value
        try:
            return _rebuild(cls, value)
        except _Mismatch as exc:
            raise SerializationError(
                f"{describe_body(data, manifest)} does not fit {cls.__module__}."
                f"{cls.__qualname__}: {exc}"
            ) from exc.__cause__


# -------------------------------------------------------------------- pickle
class PickleSerializer(Serializer):
    """Python pickle. Dangerous with untrusted producers; off unless explicitly allowed.

    Unpickling runs code chosen by whoever wrote the bytes, so anyone who can
    publish to a queue could run code in its consumers. A
    :class:`SerializerRegistry` refuses this serializer unless it was created
    with ``allow_pickle=True``.

    Args:
        protocol: The pickle protocol to write; defaults to ``pickle.DEFAULT_PROTOCOL``,
            which every supported Python version reads.
    """

    identifier = "pickle"

    def __init__(self, protocol: int | None = None) -> None:
        self.protocol = _pickle.DEFAULT_PROTOCOL if protocol is None else protocol

    def serialize(self, obj: Any) -> bytes:
        """Return ``obj`` pickled.

        Raises:
            SerializationError: ``obj`` cannot be pickled.
        """
        try:
            return _pickle.dumps(obj, protocol=self.protocol)
        except Exception as exc:
            raise SerializationError(
                f"cannot pickle {type(obj).__qualname__}: {type(exc).__name__}"
            ) from exc

    def deserialize(self, data: bytes | str, manifest: str | None = None) -> Any:
        """Unpickle ``data``.

        ``data`` may also be the base64 text melange 7.x's ``PickleSerializer`` wrote.

        Raises:
            SerializationError: ``data`` is not a loadable pickle (or not base64 text).
        """
        if isinstance(data, str):
            try:
                data = base64.decodebytes(data.encode("ascii"))
            except (UnicodeEncodeError, binascii.Error):
                raise SerializationError(
                    f"a body of {len(data)} characters is not base64 text, as melange 7.x's "
                    "pickle serializer wrote it"
                ) from None
        try:
            return _pickle.loads(data)  # only reachable when explicitly allowed
        except Exception as exc:
            raise SerializationError(
                f"{describe_body(data, manifest)} cannot be unpickled ({type(exc).__name__})"
            ) from None


PICKLE_RISK = (
    "unpickling a message body runs code chosen by whoever wrote it, so anyone able to "
    "publish to the queue could run code in this process. Use it only when every producer "
    "is trusted, by creating the registry with SerializerRegistry(allow_pickle=True)"
)


def _is_pickle(serializer: Serializer) -> bool:
    return isinstance(serializer, PickleSerializer) or serializer.identifier == "pickle"


def _check_name(label: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise SerializationError(f"{label} must be a non-empty string, got {value!r}")
    return value


def _seven_x(name: str) -> Callable[..., Any]:
    """Return a melange 7.x registry method that runs ``melange.compat.serialization.<name>``."""

    def method(self: SerializerRegistry, *args: Any, **kwargs: Any) -> Any:
        from melange.compat import serialization  # loaded only when a 7.x method is used

        return getattr(serialization, name)(self, *args, **kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"Deprecated: melange 7.x's {name}(), kept for upgrading (it warns)."
    return method


# ------------------------------------------------------------------ registry
class SerializerRegistry:
    """Serializers by identifier, manifests bound to serializers and types.

    Encoding picks the serializer from the message's manifest, else from a
    binding of the body's exact type, else the default. Decoding picks it from
    the ``melange.manifest`` attribute, else ``melange.serializer``, else the
    default.

    Examples:
        >>> registry = SerializerRegistry()
        >>> registry.bind(PaymentEvent, "payment.v1")  # doctest: +SKIP
        >>> outgoing = registry.encode(PaymentEvent("pay-1", 1250))  # doctest: +SKIP
        >>> registry.decode(received).body  # doctest: +SKIP
        PaymentEvent(payment_id='pay-1', amount_cents=1250)

    Args:
        default: The serializer for bodies without a binding; a new
            :class:`JSONSerializer` when omitted.
        allow_pickle: Accept :class:`PickleSerializer` (see its warning).

    Raises:
        SerializationError: ``default`` is a pickle serializer and pickle is not allowed.
    """

    def __new__(
        cls, default: Serializer | None = None, *, allow_pickle: bool = False
    ) -> SerializerRegistry:
        """Create a registry; given melange 7.x's configuration dict, a 7.x-configured one."""
        if cls is SerializerRegistry and isinstance(default, collections.abc.Mapping):
            # melange 7.x's SerializerRegistry(config_dict): built by the compat layer.
            from melange.compat.serialization import LegacySerializerRegistry

            return object.__new__(LegacySerializerRegistry)
        return object.__new__(cls)

    def __init__(self, default: Serializer | None = None, *, allow_pickle: bool = False) -> None:
        if isinstance(default, collections.abc.Mapping):
            raise SerializationError(
                f"{type(self).__name__} takes a default serializer, not melange 7.x's "
                "configuration dict (only SerializerRegistry itself still accepts that); "
                "use SerializerRegistry(default_serializer, allow_pickle=...) with "
                "register() and bind()"
            )
        self._allow_pickle = allow_pickle
        self._lock = threading.RLock()
        self._serializers: dict[str, Serializer] = {}
        self._manifest_serializer: dict[str, str] = {}
        self._manifest_type: dict[str, type[Any]] = {}
        self._type_manifest: dict[type[Any], str] = {}
        default = JSONSerializer() if default is None else default
        self.register(default)
        self._default_id = default.identifier

    @property
    def allow_pickle(self) -> bool:
        """Whether :class:`PickleSerializer` may be registered and used."""
        return self._allow_pickle

    @property
    def default(self) -> Serializer:
        """The serializer used when nothing else applies."""
        return self._serializers[self._default_id]

    def get(self, identifier: str) -> Serializer | None:
        """Return the serializer registered under ``identifier``, or ``None``."""
        return self._serializers.get(identifier)

    def identifiers(self) -> list[str]:
        """Return the identifiers of the registered serializers, sorted."""
        return sorted(self._serializers)

    def manifest_for(self, cls: type[Any]) -> str | None:
        """Return the manifest ``cls`` is bound to, or ``None``."""
        return self._type_manifest.get(cls)

    # ------------------------------------------------------------ registering
    def register(self, serializer: Serializer, manifests: Iterable[str] | str = ()) -> None:
        """Add ``serializer`` (replacing one with the same identifier) and route manifests to it.

        Args:
            serializer: The serializer.
            manifests: Manifests whose bodies this serializer reads and writes.

        Raises:
            SerializationError: ``serializer`` is not a :class:`Serializer`, it is a
                pickle serializer and pickle is not allowed, or a manifest is
                already routed to another serializer.
        """
        if not isinstance(serializer, Serializer):
            raise SerializationError(
                f"register() needs a melange.serializers.Serializer, got {type(serializer)!r}"
            )
        if callable(serializer.identifier):
            raise SerializationError(
                f"{type(serializer).__qualname__} is written the melange 7.x way (a static "
                "identifier() returning an int); melange 8's Serializer sets identifier = "
                "'a-name' (a str attribute) and returns bytes from serialize(). Rewrite it, "
                "or name it in a 7.x configuration dict, SerializerRegistry({'serializers': "
                "{'a-name': ItsClass}, ...}), which runs it unchanged"
            )
        identifier = _check_name("a serializer's identifier", serializer.identifier)
        if _is_pickle(serializer) and not self._allow_pickle:
            raise SerializationError(f"the pickle serializer is disabled: {PICKLE_RISK}")
        names = [manifests] if isinstance(manifests, str) else list(manifests)
        with self._lock:
            for manifest in names:
                _check_name("a manifest", manifest)
                self._check_route(manifest, identifier)
            self._serializers[identifier] = serializer
            for manifest in names:
                self._manifest_serializer[manifest] = identifier
            # A replacement must learn the types bound to its manifests too.
            for cls, manifest in self._type_manifest.items():
                if self._manifest_serializer.get(manifest) == identifier:
                    serializer.bind_type(cls, manifest)

    def bind(
        self,
        cls: type[Any],
        manifest: str | None = None,
        serializer: Serializer | str | None = None,
    ) -> type[Any]:
        """Bind a type to a manifest (and a serializer) for encoding and decoding.

        Instances of exactly ``cls`` are sent with ``manifest``; bodies with
        ``manifest`` are read back by the serializer, which rebuilds ``cls``
        when it can (:class:`JSONSerializer` does for dataclasses). Binding a
        class to a new manifest keeps the old one decodable, which lets a
        manifest be renamed while old messages are still in the queues.

        Args:
            cls: The payload type.
            manifest: The name to send; defaults to ``cls.__name__``.
            serializer: A serializer (registered if it is not yet) or the
                identifier of a registered one; defaults to the serializer
                already routed for ``manifest``, else the default.

        Returns:
            ``cls``, unchanged.

        Raises:
            SerializationError: The manifest is bound to another type or routed to
                another serializer, or the serializer is unknown or refused.
        """
        if not isinstance(cls, type):
            raise SerializationError(f"bind() needs a class, got an instance of {type(cls)!r}")
        name = _check_name("a manifest", cls.__name__ if manifest is None else manifest)
        with self._lock:
            chosen = self._serializer_for_binding(name, serializer)
            bound = self._manifest_type.get(name)
            if bound is not None and bound is not cls:
                raise SerializationError(
                    f"manifest {name!r} is already bound to {bound.__module__}."
                    f"{bound.__qualname__}; bind {cls.__qualname__} under another manifest, "
                    f"e.g. bind({cls.__qualname__}, manifest={cls.__module__ + '.' + name!r})"
                )
            self._check_route(name, chosen.identifier)
            self._manifest_serializer[name] = chosen.identifier
            self._manifest_type[name] = cls
            self._type_manifest[cls] = name
            chosen.bind_type(cls, name)
        return cls

    def _serializer_for_binding(
        self, manifest: str, serializer: Serializer | str | None
    ) -> Serializer:
        if serializer is None:
            routed = self._manifest_serializer.get(manifest, self._default_id)
            return self._serializers[routed]
        if isinstance(serializer, str):
            found = self._serializers.get(serializer)
            if found is None:
                raise SerializationError(self._unknown_serializer(serializer))
            return found
        if self._serializers.get(serializer.identifier) is not serializer:
            self.register(serializer)
        return serializer

    def _check_route(self, manifest: str, identifier: str) -> None:
        routed = self._manifest_serializer.get(manifest)
        if routed is not None and routed != identifier:
            raise SerializationError(
                f"manifest {manifest!r} is already routed to serializer {routed!r}, so it "
                f"cannot also use {identifier!r}; give one of them another manifest"
            )

    def _unknown_serializer(self, identifier: str) -> str:
        if identifier == PickleSerializer.identifier and not self._allow_pickle:
            return f"the pickle serializer is disabled: {PICKLE_RISK}"
        return (
            f"unknown serializer {identifier!r}; registered: {', '.join(self.identifiers())}. "
            "Register it with SerializerRegistry.register()"
        )

    # ------------------------------------------------------ encoding/decoding
    def encode(
        self, message: Message | Any, *, delay_seconds: float = 0.0, producer_id: bool = True
    ) -> OutgoingMessage:
        """Serialize a message (or a bare payload) into what a backend publishes.

        Args:
            message: A :class:`~melange.message.Message`, or any payload object,
                which is sent with no attributes.
            delay_seconds: Seconds before the message can be received.
            producer_id: Give the message a producer id (the ``melange.id``
                attribute): the message's own ``producer_id``, else a new one.
                ``False`` adds none unless the message has its own.

        Returns:
            The body bytes with the message's attributes plus ``melange.serializer``,
            ``melange.id`` and, when there is one, ``melange.manifest``; group and
            dedup ids carried over.

        Raises:
            SerializationError: The body cannot be serialized.
            InvalidMessage: The attributes use a name melange reserves.
        """
        if not isinstance(message, Message):
            message = Message(body=message)
        reserved = sorted(RESERVED_ATTRIBUTES.intersection(message.attributes))
        if reserved:
            raise InvalidMessage(
                f"attribute(s) {', '.join(reserved)} are set by melange; pass the manifest "
                "as Message(manifest=...) and choose the serializer with SerializerRegistry.bind()"
            )
        manifest, serializer = self._outgoing(message)
        try:
            data = serializer.serialize(message.body)
        except SerializationError:
            raise
        except Exception as exc:
            raise SerializationError(
                f"serializer {serializer.identifier!r} cannot serialize "
                f"{type(message.body).__qualname__}: {type(exc).__name__}"
            ) from exc
        if not isinstance(data, (bytes, bytearray)):
            raise SerializationError(
                f"serializer {serializer.identifier!r} returned {type(data).__name__}, not bytes"
            )
        attributes = dict(message.attributes)
        attributes[SERIALIZER_ATTRIBUTE] = serializer.identifier
        if manifest is not None:
            attributes[MANIFEST_ATTRIBUTE] = manifest
        if message.producer_id is not None:
            attributes[PRODUCER_ID_ATTRIBUTE] = require_str("producer_id", message.producer_id)
        elif producer_id:
            attributes[PRODUCER_ID_ATTRIBUTE] = new_producer_id()
        group_id, dedup_id = message.group_id, message.dedup_id
        return OutgoingMessage(
            body=bytes(data),
            attributes=attributes,
            group_id=None if group_id is None else require_str("group_id", group_id),
            dedup_id=None if dedup_id is None else require_str("dedup_id", dedup_id),
            delay_seconds=delay_seconds,
        )

    def _outgoing(self, message: Message) -> tuple[str | None, Serializer]:
        bound = self._type_manifest.get(type(message.body))
        manifest = message.manifest if message.manifest is not None else bound
        routed = self._manifest_serializer.get(manifest) if manifest is not None else None
        if routed is None and bound is not None:
            routed = self._manifest_serializer.get(bound)
        if routed is not None:
            return manifest, self._serializers[routed]
        if manifest is None:
            manifest = self.default.manifest(message.body)
        return manifest, self.default

    def decode(self, received: ReceivedMessage) -> Message:
        """Deserialize a received message.

        The serializer is the one routed for the ``melange.manifest`` attribute,
        else the one named by ``melange.serializer``, else the default. Those two
        attributes are removed from the returned message's attributes. A message
        melange 7.x wrote (a numeric ``serializer_id`` attribute and no
        ``melange.serializer``) is read by the serializer with that 7.x id, never
        by the default.

        Args:
            received: A message from :meth:`MessagingBackend.receive`.

        Returns:
            The message with its payload object, manifest, attributes and broker id.

        Raises:
            SerializationError: The body cannot be decoded, or names a serializer
                that is unknown or refused (pickle). The message names the queue,
                the message id, the body's size and manifest, never its content.
        """
        # Runs for every received message: no work here that only an error needs.
        attributes = received.attributes
        if SERIALIZER_ID_7X in attributes:
            # Written by melange 7.x (or for its consumers): 7.x's serializer number decides.
            from melange.compat.serialization import decode_received_7x

            decoded = decode_received_7x(self, received)
            if decoded is not None:
                return decoded
        manifest = attributes.get(MANIFEST_ATTRIBUTE)
        serializer = self._incoming(manifest, attributes.get(SERIALIZER_ATTRIBUTE), received)
        try:
            body = serializer.deserialize(received.body, manifest)
        except Exception as exc:
            raise _decode_failed(received, serializer, manifest, exc) from exc
        kept = dict(attributes)  # a copy the message takes over, without melange's own
        for name in _RESERVED:
            kept.pop(name, None)
        return _received_message(
            body,
            manifest,
            kept,
            received.message_id,
            received.group_id,
            attributes.get(PRODUCER_ID_ATTRIBUTE),
        )

    def _incoming(
        self, manifest: str | None, identifier: str | None, received: ReceivedMessage
    ) -> Serializer:
        routed = self._manifest_serializer.get(manifest) if manifest is not None else None
        if routed is None and identifier is not None:
            serializer = self._serializers.get(identifier)
            if serializer is None:
                raise SerializationError(
                    f"cannot decode {_where(received)}: {self._unknown_serializer(identifier)}"
                )
            return serializer
        return self._serializers[routed or self._default_id]

    # melange 7.x's lookup methods, deprecated: each warns and runs in melange.compat.serialization.
    find_serializer_for = _seven_x("find_serializer_for")
    serializer_for = _seven_x("serializer_for")
    get_serializer_by_id = _seven_x("get_serializer_by_id")
    get_serializer_by_name = _seven_x("get_serializer_by_name")
    serialize = _seven_x("serialize")
    deserialize_with_serializerid = _seven_x("deserialize_with_serializerid")
    deserialize_with_class = _seven_x("deserialize_with_class")


_RESERVED = tuple(sorted(RESERVED_ATTRIBUTES))

SERIALIZER_ID_7X = "serializer_id"
"""melange 7.x's serializer attribute: the number of the serializer that wrote the body."""


def _decode_failed(
    received: ReceivedMessage,
    serializer: Serializer,
    manifest: str | None,
    error: Exception,
    kind: str = "serializer",
) -> SerializationError:
    """The error for ``serializer`` failing on ``received``: where, and what the body was.

    A :class:`SerializationError` keeps its own text; another exception (a
    serializer's bug) is named by type only, never with the body's content.
    """
    if isinstance(error, SerializationError):
        return SerializationError(f"cannot decode {_where(received)}: {error}")
    return SerializationError(
        f"cannot decode {_where(received)}: {kind} {serializer.identifier!r} failed "
        f"on the {describe_body(bytes(received.body), manifest)} ({type(error).__name__})"
    )


def _where(received: ReceivedMessage) -> str:
    """Name a received message in an error: its id and queue, never its content."""
    return f"message {received.message_id!r} from queue {received.queue_name!r}"


def __getattr__(name: str) -> Any:
    """Resolve melange 7.x's ``JsonSerializer`` name (deprecated) to :class:`JSONSerializer`."""
    if name == "JsonSerializer":
        # `from melange.serializers import JsonSerializer` asks hasattr() in importlib first,
        # then reads the name: warn once, on the read.
        if sys._getframe(1).f_code.co_name != "_handle_fromlist":
            from melange.compat import deprecated

            deprecated("melange.serializers.JsonSerializer", "melange.serializers.JSONSerializer")
        return JSONSerializer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
