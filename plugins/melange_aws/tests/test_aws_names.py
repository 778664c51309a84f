"""AWS's rules for names, identifiers, filters and topic/queue pairs, checked before any call."""

from __future__ import annotations

from typing import Any

import pytest
from melange_aws import AWSBackend
from melange_aws.filters import check, from_policy, to_policy
from melange_aws.names import (
    QUEUE_NAME_RULE,
    TOPIC_NAME_RULE,
    check_attribute_name,
    check_message_token,
)

from melange import MessagingBackendFactory
from melange.exceptions import InvalidMessage, InvalidName, InvalidTopology
from melange.topology import DeadLetterPolicy, QueueSpec, SubscriptionSpec, TopicSpec


@pytest.mark.parametrize(
    ("name", "fifo"),
    [
        ("a", False),
        ("orders_v2-EU", False),
        ("q" * 80, False),
        ("q" * 75 + ".fifo", True),
    ],
)
def test_queue_names_sqs_accepts(name: str, fifo: bool) -> None:
    """SQS: 1 to 80 letters, digits, hyphens and underscores, .fifo counted in the 80."""
    QUEUE_NAME_RULE.check("queue", name, fifo)


@pytest.mark.parametrize(
    ("name", "fifo", "fragment"),
    [
        ("q" * 81, False, "1 to 80"),
        ("q" * 76 + ".fifo", True, "1 to 80"),
        ("has space", False, "letters, digits"),
        ("dots.in.name", False, "letters, digits"),
        ("orders", True, "must end with '.fifo'"),
        ("orders.fifo", False, "must not end with '.fifo'"),
        ("", False, "non-empty"),
    ],
)
def test_queue_names_sqs_refuses(name: str, fifo: bool, fragment: str) -> None:
    """Each broken queue name rule raises InvalidName naming the rule."""
    with pytest.raises(InvalidName, match=fragment):
        QUEUE_NAME_RULE.check("queue", name, fifo)


def test_topic_names_may_be_up_to_256_characters() -> None:
    """SNS: up to 256 characters, .fifo included."""
    TOPIC_NAME_RULE.check("topic", "t" * 256, False)
    TOPIC_NAME_RULE.check("topic", "t" * 251 + ".fifo", True)
    with pytest.raises(InvalidName, match="1 to 256"):
        TOPIC_NAME_RULE.check("topic", "t" * 257, False)
    with pytest.raises(InvalidName, match="1 to 256"):
        TOPIC_NAME_RULE.check("topic", "t" * 252 + ".fifo", True)


@pytest.mark.parametrize(
    ("rule", "kind", "limit"), [(QUEUE_NAME_RULE, "queue", 80), (TOPIC_NAME_RULE, "topic", 256)]
)
def test_a_too_long_fifo_name_is_told_that_the_suffix_counts(
    rule: Any, kind: str, limit: int
) -> None:
    """AWS counts '.fifo' in the limit ("The suffix counts towards the 80-character queue name
    quota", SQS FIFO quotas); the message must not call it extra."""
    with pytest.raises(InvalidName) as refused:
        rule.check(kind, "n" * (limit - 4) + ".fifo", True)
    message = str(refused.value)
    assert f"1 to {limit} characters" in message
    assert f"a FIFO name ends in '.fifo', which counts toward the {limit}" in message
    assert "plus '.fifo'" not in message


@pytest.mark.parametrize("name", ["event", "trace-id", "melange.manifest", "a_b", "x" * 256])
def test_attribute_names_aws_accepts(name: str) -> None:
    """Letters, digits, hyphen, underscore and inner periods, up to 256 characters."""
    check_attribute_name(name)


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("has space", "letters, digits"),
        ("x" * 257, "1 to 256"),
        (".leading", "period"),
        ("trailing.", "period"),
        ("double..period", "period"),
        ("AWS.trace", "reserved"),
        ("amazon.x", "reserved"),
        ("Amazon.X", "reserved"),
    ],
)
def test_attribute_names_aws_refuses(name: str, fragment: str) -> None:
    """Each attribute name rule of SQS/SNS raises InvalidMessage naming the problem."""
    with pytest.raises(InvalidMessage, match=fragment):
        check_attribute_name(name)


@pytest.mark.parametrize("value", ["g", "order-42", "a/b:c!", "x" * 128])
def test_group_and_dedup_ids_aws_accepts(value: str) -> None:
    """1 to 128 ASCII letters, digits and punctuation."""
    check_message_token("group_id", value)


@pytest.mark.parametrize("value", ["", "x" * 129, "with space", "é"])
def test_group_and_dedup_ids_aws_refuses(value: str) -> None:
    """Empty, too long, spaces and non-ASCII are refused, naming the id."""
    with pytest.raises(InvalidMessage, match="dedup_id"):
        check_message_token("dedup_id", value)


# --------------------------------------------------------------- validate_*
@pytest.fixture
def aws(mocked_aws: None) -> AWSBackend:
    """A backend for its validate_* methods (they make no call)."""
    return AWSBackend()


@pytest.mark.parametrize(
    ("topic_fifo", "queue_fifo", "allowed"),
    [
        pytest.param(False, False, True, id="standard-topic-standard-queue"),
        pytest.param(True, True, True, id="fifo-topic-fifo-queue"),
        # SNS FIFO topics deliver to standard queues too (best-effort order there).
        pytest.param(True, False, True, id="fifo-topic-standard-queue"),
        pytest.param(False, True, False, id="standard-topic-fifo-queue"),
    ],
)
def test_which_topics_may_deliver_to_which_queues(
    aws: AWSBackend, topic_fifo: bool, queue_fifo: bool, allowed: bool
) -> None:
    """Only a FIFO queue on a standard topic is refused, as SNS refuses it."""
    topic = TopicSpec("t.fifo" if topic_fifo else "t", topic_fifo)
    queue = QueueSpec("q.fifo" if queue_fifo else "q", fifo=queue_fifo)
    subscription = SubscriptionSpec(topic.name, queue.name)
    if allowed:
        aws.validate_subscription(topic, queue, subscription)
    else:
        with pytest.raises(InvalidTopology, match="SNS delivers to FIFO queues only from FIFO"):
            aws.validate_subscription(topic, queue, subscription)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        (QueueSpec("q", visibility_timeout=2.5), "whole seconds"),
        (QueueSpec("q", delay_seconds=0.5), "whole seconds"),
        (QueueSpec("q", dead_letter=DeadLetterPolicy("q")), "own dead-letter"),
        (QueueSpec("q", dead_letter=DeadLetterPolicy("d.fifo")), "needs a standard dead-letter"),
        (QueueSpec("q.fifo", fifo=True, dead_letter=DeadLetterPolicy("d")), "needs a FIFO dead-"),
        (QueueSpec("q", dead_letter=DeadLetterPolicy("d", 1001)), "from 1 to 1000"),
        (QueueSpec("bad name"), "letters, digits"),
    ],
)
def test_queue_specs_sqs_refuses(aws: AWSBackend, spec: QueueSpec, fragment: str) -> None:
    """declare_queue's own validation refuses what SQS would, without the factory."""
    with pytest.raises(InvalidTopology, match=fragment):
        aws.check_queue(spec)
    with pytest.raises(InvalidTopology, match=fragment):
        aws.declare_queue(spec)


# ------------------------------------------------------------------ filters
def subscription(filter_: dict[str, list[str]] | None) -> SubscriptionSpec:
    """A subscription of queue q to topic t with ``filter_``."""
    return SubscriptionSpec("t", "q", SubscriptionSpec.normalize_filter(filter_))


def test_filters_become_filter_policies_and_back() -> None:
    """A filter turns into an exact-match FilterPolicy and reads back equal."""
    spec = subscription({"event": ["paid", "refunded"], "region": ["eu"]})
    policy = to_policy(spec.filter)
    assert policy == '{"event": ["paid", "refunded"], "region": ["eu"]}'
    assert from_policy(policy) == spec.filter
    assert to_policy(None) == "" and from_policy("") is None and from_policy(None) is None


@pytest.mark.parametrize(
    "policy",
    [
        '{"price": [{"numeric": [">", 5]}]}',
        '{"event": ["paid", {"prefix": "re"}]}',
        "not json",
        "[1]",
    ],
)
def test_filter_policies_melange_did_not_write_never_equal_a_declared_filter(policy: str) -> None:
    """Foreign or odd policies read back as something no melange filter equals."""
    read = from_policy(policy)
    assert read is not None
    assert read != subscription({"event": ["paid"]}).filter
    assert read != subscription({"price": ["5"]}).filter


@pytest.mark.parametrize(
    ("filter_", "fragment"),
    [
        ({f"k{index}": ["v"] for index in range(6)}, "at most 5"),
        ({"a": [str(v) for v in range(13)], "b": [str(v) for v in range(12)]}, "at most 150"),
    ],
)
def test_filters_sns_refuses(filter_: dict[str, Any], fragment: str) -> None:
    """More than 5 attributes or 150 value combinations are refused, saying which limit."""
    with pytest.raises(InvalidTopology, match=fragment):
        check(subscription(filter_))
    check(subscription({f"k{index}": ["v"] for index in range(5)}))
    check(subscription({"a": [str(v) for v in range(15)], "b": [str(v) for v in range(10)]}))


def test_oversized_filter_is_refused_before_anything_is_created(aws: AWSBackend) -> None:
    """The factory hands the filter to validate_subscription: nothing exists afterwards."""
    factory = MessagingBackendFactory(aws)
    too_many = {f"k{index}": ["v"] for index in range(6)}
    with pytest.raises(InvalidTopology, match="at most 5"):
        factory.init_queue("filtered", ["events"], subscription_filter=too_many)
    assert aws.get_queue("filtered") is None
    assert aws.get_topic("events") is None
