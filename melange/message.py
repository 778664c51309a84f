"""The message model: a payload object with the metadata that travels with it.

A :class:`Message` is what application code publishes and handles. The
:class:`~melange.serializers.SerializerRegistry` turns it into the bytes a
backend sends (:class:`~melange.backends.OutgoingMessage`) and turns a
:class:`~melange.backends.ReceivedMessage` back into a :class:`Message`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

MANIFEST_ATTRIBUTE = "melange.manifest"
"""Attribute carrying the payload's manifest (what kind of object the body holds)."""

SERIALIZER_ATTRIBUTE = "melange.serializer"
"""Attribute carrying the identifier of the serializer that wrote the body."""

RESERVED_ATTRIBUTES = frozenset({MANIFEST_ATTRIBUTE, SERIALIZER_ATTRIBUTE})
"""Attributes melange sets itself; application attributes may not use these names."""


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
    """

    body: Any
    manifest: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)
    id: str | None = None
    group_id: str | None = None
    dedup_id: str | None = None

    def __post_init__(self) -> None:
        # A read-only copy: the message is frozen, and the caller's dict may change later.
        object.__setattr__(self, "attributes", Attributes(self.attributes))

    def with_attributes(self, **attributes: str) -> Message:
        """Return a copy with ``attributes`` added to (or replacing) the current ones."""
        return replace(self, attributes={**self.attributes, **attributes})
