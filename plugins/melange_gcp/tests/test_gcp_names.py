"""Name rules: Pub/Sub's, checked before any call, and the subscription names melange derives."""

from __future__ import annotations

import pytest
from melange_gcp import GCPPubSubBackend
from melange_gcp.names import QUEUE_MAX_LENGTH, fan_out_prefix, fan_out_subscription

from melange import MessagingBackendFactory
from melange.exceptions import InvalidName


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("ab", id="too-short"),
        pytest.param("1queue", id="starts-with-a-digit"),
        pytest.param("googqueue", id="goog-prefix"),
        pytest.param("queue/x", id="slash"),
        pytest.param("queue~x", id="tilde-separates-fan-out-names"),
        pytest.param("queue x", id="space"),
        pytest.param("q" * (QUEUE_MAX_LENGTH + 1), id="too-long"),
    ],
)
def test_invalid_queue_names_are_refused_before_any_call(
    backend: GCPPubSubBackend, name: str
) -> None:
    factory = MessagingBackendFactory(backend)
    before = _topics(backend)
    with pytest.raises(InvalidName) as caught:
        factory.init_queue(name)
    assert name in str(caught.value)
    assert _topics(backend) == before, "a refused init created something"


def _topics(backend: GCPPubSubBackend) -> set[str]:
    pager = backend.publisher_client.list_topics(request={"project": f"projects/{backend.project}"})
    return {topic.name for topic in pager}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("ab", id="too-short"),
        pytest.param("_topic", id="starts-with-underscore"),
        pytest.param("goog-events", id="goog-prefix"),
        pytest.param("t" * 256, id="too-long"),
    ],
)
def test_invalid_topic_names_are_refused(backend: GCPPubSubBackend, name: str) -> None:
    with pytest.raises(InvalidName):
        MessagingBackendFactory(backend).init_topic(name)


@pytest.mark.parametrize("name", ["abc", "a.b-c_d", "Orders.fifo", "q" * QUEUE_MAX_LENGTH])
def test_valid_queue_names(name: str) -> None:
    GCPPubSubBackend.queue_name_rule.check("queue", name, name.endswith(".fifo"))


@pytest.mark.parametrize("name", ["abc", "a~b+c%d", "t" * 255])
def test_valid_topic_names(name: str) -> None:
    GCPPubSubBackend.topic_name_rule.check("topic", name, False)


def test_fan_out_subscription_names_fit_pubsub_and_keep_the_queue_prefix() -> None:
    assert fan_out_subscription("orders", "events") == "orders~events"
    longest = fan_out_subscription("q" * QUEUE_MAX_LENGTH, "t" * 255)
    assert len(longest) == 255 and longest.startswith(fan_out_prefix("q" * QUEUE_MAX_LENGTH))
    assert longest != fan_out_subscription("q" * QUEUE_MAX_LENGTH, "u" * 255)
