"""Hook attributes never make a publish fail on SQS (docs/publishing.md, "Hooks").

A hook (tracing) adds attributes to every message. What SQS would refuse in them (an empty
value, a name it does not allow) or what would make the message too large in SQS's own
measure (a binary body is sent base64-encoded) is dropped with a warning, by the backend's own
rules; the application's message is sent, and received, without it. Against a moto server.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
from melange_localsqs import LocalSQSBackend

from melange.factory import MessagingBackendFactory
from melange.observability import Hooks
from melange.publishers import QueuePublisher
from melange.serializers import Serializer, SerializerRegistry
from melange.testing.conformance import ResourceNames, drain


class Adding(Hooks):
    """Adds ``attributes`` to every message published."""

    def __init__(self, **attributes: str) -> None:
        self.attributes = attributes

    def prepare_attributes(self, attributes: MutableMapping[str, str]) -> None:
        attributes.update(self.attributes)


class Raw(Serializer):
    """Bytes as they are: a body that is not UTF-8 text travels base64-encoded on SQS."""

    identifier = "raw"

    def serialize(self, obj: Any) -> bytes:
        return bytes(obj)

    def deserialize(self, data: bytes, manifest: str | None) -> Any:
        return data


@pytest.fixture
def backend(moto_server: Any) -> Iterator[LocalSQSBackend]:
    backend = LocalSQSBackend(endpoint_url=moto_server.endpoint_url, sns=False)
    names = ResourceNames()
    try:
        yield backend
    finally:
        names.cleanup(backend)
        backend.close()


@pytest.mark.parametrize(
    "refused",
    [{"tracestate": ""}, {"trace id": "x"}, {"AWS.trace": "x"}, {"ctl": "a\x01b"}],
    ids=["empty-value", "space-in-name", "aws-prefix", "control-character"],
)
def test_a_hook_attribute_sqs_refuses_is_dropped_and_the_message_sent(
    backend: LocalSQSBackend, refused: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    queue = "hooks-" + next(iter(refused)).replace(" ", "-").replace(".", "-")
    MessagingBackendFactory(backend).init_queue(queue)
    publisher = QueuePublisher(backend, hooks=Adding(**refused))
    with caplog.at_level(logging.WARNING, logger="melange.publishers"):
        assert publisher.publish(queue, {"n": 1}).ok
    (received,) = drain(backend, queue, 1)
    assert not set(refused) & set(received.attributes)
    assert "hook attributes" in caplog.text and "dropped" in caplog.text


def test_a_hook_attribute_that_makes_a_binary_body_too_large_is_dropped(
    backend: LocalSQSBackend,
) -> None:
    """196,500 raw bytes are 262,000 as base64: room for melange's own attributes, not more."""
    MessagingBackendFactory(backend).init_queue("hooks-binary")
    registry = SerializerRegistry()
    registry.register(Raw(), "blob")
    registry.bind(bytes, "blob")
    body = bytes(range(256)) * 767 + bytes(range(148))  # 196,500 bytes, not UTF-8
    kept = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
    publisher = QueuePublisher(backend, registry, hooks=Adding(**kept))
    assert publisher.publish("hooks-binary", body).ok
    (received,) = drain(backend, "hooks-binary", 1)
    assert received.body == body
    assert "traceparent" not in received.attributes
    # The same hook on a message with room for it: sent with it.
    assert publisher.publish("hooks-binary", body[:1000]).ok
    (small,) = drain(backend, "hooks-binary", 1)
    assert small.attributes["traceparent"] == kept["traceparent"]
