"""The message model: a payload object with the metadata that travels with it.

A :class:`Message` is what application code publishes and handles. The
:class:`~melange.serializers.SerializerRegistry` turns it into the bytes a
backend sends (:class:`~melange.backends.OutgoingMessage`) and turns a
:class:`~melange.backends.ReceivedMessage` back into a :class:`Message`.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn

from melange.exceptions import InvalidArgument

MANIFEST_ATTRIBUTE = "melange.manifest"
"""Attribute carrying the payload's manifest (what kind of object the body holds)."""

SERIALIZER_ATTRIBUTE = "melange.serializer"
"""Attribute carrying the identifier of the serializer that wrote the body."""

PRODUCER_ID_ATTRIBUTE = "melange.id"
"""Attribute carrying the producer id: assigned once, before the first attempt to send.

Every retry of the same publish (the broker SDK's or melange's) sends the same
id, so a consumer's deduplication cache can tell a publisher-retry duplicate
from a new message even when the broker stored two copies with two broker ids."""

DEAD_LETTER_REASON_ATTRIBUTE = "melange.dead-letter-reason"
"""Added to a dispatcher's dead-letter copy, where the broker has room: why it was moved."""

DEAD_LETTER_SOURCE_ATTRIBUTE = "melange.dead-letter-source"
"""Added to a dispatcher's dead-letter copy, where the broker has room: the queue it left."""

RESERVED_ATTRIBUTES = frozenset({MANIFEST_ATTRIBUTE, SERIALIZER_ATTRIBUTE, PRODUCER_ID_ATTRIBUTE})
"""Attributes melange sets itself; application attributes may not use these names."""


class _ProducerIds:
    """Unique ids at a fraction of a microsecond: a random per-process prefix and a counter.

    128 random bits per id (uuid4) cost more than the rest of encoding a small
    message; 64 random bits per process plus a counter are as unique in practice
    and cheap. The prefix is drawn again in a forked child, so parent and child
    never share one.
    """

    def __init__(self) -> None:
        self._reset()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        prefix = os.urandom(8).hex() + "-"
        # All in C: next() on it is atomic in CPython, and costs about 0.15 us.
        self._ids = map(prefix.__add__, map(str, itertools.count(1)))

    def __call__(self) -> str:
        return next(self._ids)


new_producer_id = _ProducerIds()
"""Return a new producer id (a string unique across processes and machines)."""


class Attributes(Mapping[str, str]):
    """A read-only copy of a message's attributes that prints like a dict."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, str] | None = None) -> None:
        self._items = dict(items or {})

    def __getitem__(self, key: str) -> str:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return repr(self._items)

    # The Mapping mixins go through __getitem__ and an exception per missing key;
    # these run for every message a consumer's accepts() or a hook looks at.
    def get(self, key: str, default: Any = None) -> Any:
        """Return the value of ``key``, or ``default`` when it is absent."""
        return self._items.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._items


def _adopt(items: dict[str, str]) -> Attributes:
    """Wrap ``items`` without copying it; the caller gives it up (it must not change it later)."""
    attributes = object.__new__(Attributes)
    attributes._items = items
    return attributes


_NEW_FORM = (
    "write Message(body, manifest=..., attributes={...}) and let the SerializerRegistry "
    "serialize the body; melange.models.Message is 7.x's message, for 7.x backends"
)
_SEVEN_X_CALL = "melange 7.x's Message(message_id, content, metadata, serializer_id, manifest)"
_HINT = f"this looks like {_SEVEN_X_CALL}: {_NEW_FORM}"


@dataclass(frozen=True)
class Message:
    """A payload and its metadata, before serialization or after deserialization.

    Attributes:
        body: The payload object: a dataclass, a dict, a string, anything the
            chosen serializer can write.
        manifest: What kind of payload this is (e.g. ``"PaymentEvent"``); it
            selects the serializer and the type to rebuild on the receiving side.
            ``None`` lets the registry derive it from the body's type.
        attributes: String metadata delivered with the message; subscription
            filters match on these.
        id: The broker's message id; set on received messages, ``None`` before publishing.
        group_id: The FIFO message group; order is kept within a group.
        dedup_id: Messages with the same id within the broker's window are delivered once.
        producer_id: The id the publisher gave the message before sending it (the
            ``melange.id`` attribute). ``None`` lets the publisher assign a new
            one; set it to make retries of your own (e.g. after an unknown
            outcome) recognisable as the same message. On received messages it is
            the sender's id, or ``None`` for a message from another producer.
    """

    body: Any
    manifest: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)
    id: str | None = None
    group_id: str | None = None
    dedup_id: str | None = None
    producer_id: str | None = None

    def __post_init__(self) -> None:
        if self.id is not None and not isinstance(self.id, str):
            # An int here is 7.x's serializer_id: Message(message_id, content, metadata,
            # serializer_id, manifest) fills every field of this class with the wrong value.
            seven_x = isinstance(self.id, int) and not isinstance(self.id, bool)
            hint = _HINT if seven_x else "convert it first, e.g. str(message_id)"
            raise InvalidArgument("id", "a string (the broker's message id) or None", self.id, hint)
        attributes = self.attributes
        # A read-only copy: the message is frozen, and the caller's dict may change later.
        # An Attributes is read-only already, so it is shared (e.g. by replace()).
        if type(attributes) is not Attributes:
            if not (
                attributes is None or type(attributes) is dict or isinstance(attributes, Mapping)
            ):
                raise InvalidArgument(
                    "attributes",
                    "a mapping of str to str, e.g. {'event': 'paid'}",
                    attributes,
                    f"if this is {_SEVEN_X_CALL}, {_NEW_FORM}",
                )
            object.__setattr__(self, "attributes", Attributes(attributes))

    @staticmethod
    def create(*args: Any, **kwargs: Any) -> NoReturn:
        """Removed: melange 7.x's ``Message.create(content, manifest, serializer_id)``.

        Raises:
            InvalidArgument: Always; the message names the melange 8 form.
        """
        error = InvalidArgument.__new__(InvalidArgument)
        Exception.__init__(
            error,
            "Message.create(content, manifest, serializer_id) is melange 7.x's, which built a "
            "message from serialized content; melange 8's Message holds the payload object: "
            f"{_NEW_FORM}",
        )
        error.argument = "create"
        raise error

    def with_attributes(self, **attributes: str) -> Message:
        """Return a copy with ``attributes`` added to (or replacing) the current ones."""
        return replace(self, attributes={**self.attributes, **attributes})


def _received_message(
    body: Any,
    manifest: str | None,
    attributes: dict[str, str],
    message_id: str,
    group_id: str | None,
    producer_id: str | None,
) -> Message:
    """Build a received :class:`Message` at a fraction of the cost of ``Message(...)``.

    For deserializers, once per received message: the frozen dataclass's
    ``__init__`` sets each field through ``object.__setattr__`` and copies the
    attributes again. The result equals ``Message(body, manifest, attributes,
    message_id, group_id, None, producer_id)``.

    Args:
        body: The payload object.
        manifest: The payload's manifest, if any.
        attributes: A new dict the message takes over (not copied: do not change it later).
        message_id: The broker's message id.
        group_id: The FIFO group, if any.
        producer_id: The producer id, if any.
    """
    message = object.__new__(Message)
    # Written in field order, as the dataclass's __init__ would (vars() and repr agree).
    fields = message.__dict__
    fields["body"] = body
    fields["manifest"] = manifest
    fields["attributes"] = _adopt(attributes)
    fields["id"] = message_id
    fields["group_id"] = group_id
    fields["dedup_id"] = None
    fields["producer_id"] = producer_id
    return message
