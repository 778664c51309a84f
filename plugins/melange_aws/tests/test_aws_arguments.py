"""Arguments of the wrong type raise melange errors naming them, never plain Python errors.

The contract checks names and message types; these are the checks of the AWS
plugin's own code paths (receipts, filters, queue settings, waits).
"""

from __future__ import annotations

from typing import Any

import pytest
from melange_aws import AWSBackend

from melange import MessagingBackendFactory
from melange.backends.base import OutgoingMessage
from melange.exceptions import InvalidArgument, MelangeError
from melange.topology import QueueSpec, SubscriptionSpec, TopicSpec


@pytest.mark.parametrize("item", [None, "a string", 1, b"bytes"])
def test_settling_something_that_was_not_received_names_the_argument(
    backend: AWSBackend, item: Any
) -> None:
    """ack/nack/extend_lease of items that are not ReceivedMessage: InvalidArgument."""
    for settle in (
        lambda: backend.ack([item]),
        lambda: backend.nack([item], 0),
        lambda: backend.extend_lease([item], 30),
    ):
        with pytest.raises(InvalidArgument, match="ReceivedMessage"):
            settle()


@pytest.mark.parametrize(
    "filter_",
    [
        pytest.param({"kind": ["a"]}, id="a-dict-not-normalized"),
        pytest.param((("kind", ("a", 1)),), id="a-number-value"),
        pytest.param(((1, ("a",)),), id="a-number-name"),
        pytest.param((("kind",),), id="no-values"),
        pytest.param(5, id="not-a-filter"),
    ],
)
def test_a_malformed_subscription_filter_names_the_argument(
    backend: AWSBackend, filter_: Any
) -> None:
    """A SubscriptionSpec built by hand with a filter not in normal form: InvalidArgument."""
    MessagingBackendFactory(backend).init_queue("orders")
    backend.declare_topic(TopicSpec("events"))
    with pytest.raises(InvalidArgument, match="subscription_filter"):
        backend.subscribe(SubscriptionSpec("events", "orders", filter_))
    assert backend.get_subscription("events", "orders") is None  # nothing was created


@pytest.mark.parametrize(
    ("setting", "value"),
    [("visibility_timeout", "30"), ("message_retention_period", None), ("delay_seconds", "1")],
)
def test_queue_settings_of_the_wrong_type_name_the_setting(
    backend: AWSBackend, setting: str, value: Any
) -> None:
    """A QueueSpec with text or None for seconds is refused before anything is created."""
    with pytest.raises(InvalidArgument, match=setting):
        backend.declare_queue(QueueSpec("orders", **{setting: value}))
    assert backend.get_queue("orders") is None


def test_a_wait_that_is_not_a_number_of_seconds_is_refused(backend: AWSBackend) -> None:
    """NaN cannot be rounded to SQS's whole seconds."""
    MessagingBackendFactory(backend).init_queue("orders")
    with pytest.raises(InvalidArgument, match="wait_seconds"):
        backend.receive("orders", wait_seconds=float("nan"))


def test_validate_batch_names_a_destination_that_is_not_a_string(backend: AWSBackend) -> None:
    with pytest.raises(InvalidArgument, match="queue_name"):
        backend.validate_batch("queue", 5, [OutgoingMessage(b"x")])  # type: ignore[arg-type]


def test_every_refusal_is_a_melange_error(backend: AWSBackend) -> None:
    """InvalidArgument is a MelangeError and a TypeError, as Python users expect."""
    with pytest.raises(InvalidArgument) as caught:
        backend.ack([None])  # type: ignore[list-item]
    assert isinstance(caught.value, MelangeError) and isinstance(caught.value, TypeError)
