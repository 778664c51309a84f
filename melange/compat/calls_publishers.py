"""melange 7.x's publisher call forms, on melange 8's publishers.

7.x created publishers as ``QueuePublisher(serializer_registry, backend=None)``
(no backend: the :class:`~melange.compat.backend_manager.BackendManager`
default) and published with 7.x keywords (``message_group_id=``,
``message_deduplication_id=``; on topics ``subject=``, ``message_attributes=``,
``message_structure=``). :class:`~melange.publishers.QueuePublisher` and
:class:`~melange.publishers.TopicPublisher` detect that form (a
:class:`~melange.serializers.SerializerRegistry` where melange 8 takes the
backend) and create one of the subclasses below instead, which warn and map
each 7.x keyword to melange 8's, or raise naming why there is none.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from melange.backends.base import MessagingBackend, PublishResult
from melange.compat.backend_manager import default_backend
from melange.compat.calls_common import bind_7x, warn_7x
from melange.exceptions import ConfigurationError, TopicNotFound, did_you_mean
from melange.message import Message
from melange.publishers import QueuePublisher, TopicPublisher, _Publisher
from melange.serializers import SerializerRegistry
from melange.topology import is_fifo_name

__all__ = ["QueuePublisher7x", "TopicPublisher7x", "publish_options_7x", "publisher_class_7x"]

PUBLISH_OPTIONS = ("attributes", "group_id", "dedup_id", "delay_seconds", "producer_id")
"""melange 8's publish keywords, accepted as they are."""

RENAMED = {"message_group_id": "group_id", "message_deduplication_id": "dedup_id"}
"""7.x publish keywords and their melange 8 names."""

WIRE_ATTRIBUTES_7X = ("manifest", "serializer_id")
"""Attribute names 7.x's own message format uses."""

NO_EQUIVALENT = {
    "subject": (
        "melange 8 publishes no SNS subject (it is not a message attribute and no "
        "subscriber reads it through melange); send what it carried as an attribute, "
        "e.g. publish(topic_name, data, attributes={'subject': ...})"
    ),
    "message_structure": (
        "melange 8 sends one body to every subscriber; message_structure='json' "
        "(a different body per protocol) has no equivalent: publish the body your "
        "subscribers read"
    ),
}


def _publisher_7x(serializer_registry: Any, backend: Any = None) -> None:
    """7.x's publisher signature, for argument binding."""


def publisher_class_7x(cls: type[_Publisher]) -> type[_Publisher]:
    """Return the 7.x-form class to create for ``QueuePublisher`` or ``TopicPublisher``."""
    return TopicPublisher7x if issubclass(cls, TopicPublisher) else QueuePublisher7x


def _init_7x(
    publisher: _Publisher, kind: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    new = f"{kind}(backend, serializers)"
    bound = bind_7x(f"{kind}(...)", _publisher_7x, args, kwargs, new)
    registry = bound["serializer_registry"]
    backend = bound["backend"]
    if not isinstance(registry, SerializerRegistry):
        raise ConfigurationError(
            f"{kind}(serializer_registry=...) needs a melange.serializers.SerializerRegistry, "
            f"got {type(registry).__name__}; melange 8's form is {new}"
        )
    if backend is None:
        backend = default_backend(f"{kind}(serializer_registry)")
    else:
        warn_7x(f"{kind}(serializer_registry, backend)", new)
        if not isinstance(backend, MessagingBackend):
            raise ConfigurationError(
                f"{kind}(serializer_registry, backend) needs a melange 8 "
                f"melange.backends.MessagingBackend, got {type(backend).__name__}; "
                f"melange 8's form is {new}"
            )
    _Publisher.__init__(publisher, backend, registry)


def _sns_attributes(value: object) -> dict[str, str]:
    """Turn 7.x's SNS-shaped ``message_attributes`` into melange 8's string attributes."""
    shape = (
        "message_attributes must map names to {'DataType': 'String' or 'Number', "
        "'StringValue': text}"
    )
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{shape}, got {type(value).__name__}")
    attributes: dict[str, str] = {}
    for name, spec in value.items():
        if name in WIRE_ATTRIBUTES_7X:
            raise ConfigurationError(
                f"message attribute {name!r} is taken by melange 7.x's message format "
                "(melange 8 writes it for 7.x consumers); rename the attribute"
            )
        data_type = spec.get("DataType") if isinstance(spec, Mapping) else None
        text = spec.get("StringValue") if isinstance(spec, Mapping) else None
        if data_type not in ("String", "Number") or not isinstance(text, str):
            raise ConfigurationError(
                f"{shape}; attribute {name!r} is {spec!r}. melange 8 attributes are strings: "
                "String.Array and Binary attributes have no equivalent"
            )
        attributes[name] = text
    return attributes


def publish_options_7x(call: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Return melange 8 publish keywords for a 7.x ``publish(..., **kwargs)`` call.

    melange 8 keywords pass unchanged; 7.x ones are renamed with a
    ``DeprecationWarning``.

    Args:
        call: The method, e.g. ``"QueuePublisher.publish"``, for messages.
        kwargs: The keyword arguments of the call.

    Raises:
        ConfigurationError: A keyword has no melange 8 equivalent, is unknown, or is
            given in both its 7.x and its 8.x spelling.
    """
    options: dict[str, Any] = {}
    for name, value in kwargs.items():
        if name in PUBLISH_OPTIONS:
            options[name] = value
        elif name in RENAMED:
            new = RENAMED[name]
            if new in kwargs:
                raise ConfigurationError(
                    f"{call}() got both {name}= (melange 7.x) and {new}=; pass only {new}="
                )
            warn_7x(f"{call}(..., {name}=...)", f"{call}(..., {new}=...)")
            options[new] = value
        elif name == "message_attributes":
            if "attributes" in kwargs:
                raise ConfigurationError(
                    f"{call}() got both message_attributes= (melange 7.x) and attributes=; "
                    "pass only attributes={name: value}"
                )
            options["attributes"] = _sns_attributes(value)  # checked before warning
            warn_7x(
                f"{call}(..., message_attributes={{name: {{'DataType': ..., "
                f"'StringValue': value}}}})",
                f"{call}(..., attributes={{name: value}}) (string values: a Number "
                "attribute is sent as a String)",
            )
        elif name in NO_EQUIVALENT:
            raise ConfigurationError(
                f"{call}() got {name}=, a melange 7.x keyword: {NO_EQUIVALENT[name]}"
            )
        else:
            known = (*PUBLISH_OPTIONS, *RENAMED, "message_attributes")
            raise ConfigurationError(
                f"{call}() got an unknown keyword {name!r}{did_you_mean(name, known)}; melange "
                f"8 takes {', '.join(PUBLISH_OPTIONS)} (7.x's message_group_id and "
                "message_deduplication_id are group_id and dedup_id)"
            )
    return options


def _standard_dedup_dropped(
    call: str, kind: str, name: Any, kwargs: dict[str, Any]
) -> dict[str, Any]:
    """Drop 7.x's ``message_deduplication_id=`` for a standard queue or topic, with a warning.

    7.x sent a deduplication id only to FIFO queues (``.fifo`` names) and ignored
    it elsewhere; melange 8 refuses ``dedup_id=`` there, as SQS and SNS do.
    """
    if "message_deduplication_id" not in kwargs or not isinstance(name, str):
        return kwargs
    if is_fifo_name(name):
        return kwargs
    kwargs = dict(kwargs)
    del kwargs["message_deduplication_id"]
    warn_7x(
        f"{call}(..., message_deduplication_id=...) on standard {kind} {name!r} (ignored, "
        "as 7.x ignored it: only FIFO queues and topics deduplicate)",
        f"{call}(...) without it; dedup_id= on a FIFO {kind} (a .fifo name)",
    )
    return kwargs


class QueuePublisher7x(QueuePublisher):
    """A :class:`~melange.publishers.QueuePublisher` created the 7.x way.

    ``QueuePublisher(serializer_registry, backend=None)`` creates one; it is a
    melange 8 publisher whose :meth:`publish` also takes 7.x's keywords.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _init_7x(self, "QueuePublisher", args, kwargs)

    def publish(self, queue_name: str, data: Message | Any, **kwargs: Any) -> PublishResult:
        """Publish one message; 7.x keywords are mapped to melange 8's (see module docs)."""
        call = "QueuePublisher.publish"
        kwargs = _standard_dedup_dropped(call, "queue", queue_name, kwargs)
        return super().publish(queue_name, data, **publish_options_7x(call, kwargs))


class TopicPublisher7x(TopicPublisher):
    """A :class:`~melange.publishers.TopicPublisher` created the 7.x way.

    Unlike 7.x's, it does not create a missing topic: melange 8 publishers
    never create topics (``MessagingBackendFactory.init_topic`` does, once).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _init_7x(self, "TopicPublisher", args, kwargs)

    def publish(
        self, topic_name: str, data: Message | Any, **extra_attributes: Any
    ) -> PublishResult:
        """Publish one message; 7.x keywords are mapped to melange 8's (see module docs).

        Raises:
            TopicNotFound: The topic does not exist; 7.x created it here, melange 8
                does not.
        """
        call = "TopicPublisher.publish"
        extra_attributes = _standard_dedup_dropped(call, "topic", topic_name, extra_attributes)
        options = publish_options_7x(call, extra_attributes)
        try:
            return super().publish(topic_name, data, **options)
        except TopicNotFound as exc:
            error = TopicNotFound(
                topic_name,
                "melange 7.x's TopicPublisher created a missing topic when publishing, "
                "melange 8 publishers do not: create it first, once, with "
                f"MessagingBackendFactory(backend).init_topic({topic_name!r})",
            )
            error.results = exc.results
            raise error from None
