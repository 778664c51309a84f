"""The queue policy statement melange owns, merged with statements it did not write."""

from __future__ import annotations

import json
from typing import Any

import pytest
from melange_aws.policy import SID, admitted_topics, statement_for, with_topic

from melange.exceptions import InvalidTopology

QUEUE = "arn:aws:sqs:us-east-1:123456789012:orders"
TOPIC_A = "arn:aws:sns:us-east-1:123456789012:a"
TOPIC_B = "arn:aws:sns:us-east-1:123456789012:b"

FOREIGN = {
    "Sid": "AllowOtherAccount",
    "Effect": "Allow",
    "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
    "Action": "sqs:SendMessage",
    "Resource": QUEUE,
}


def statements(policy: str | None) -> list[dict[str, Any]]:
    """The statements of a policy document."""
    assert policy is not None
    found: list[dict[str, Any]] = json.loads(policy)["Statement"]
    return found


def test_a_queue_without_policy_gets_one_statement_for_the_topic() -> None:
    """No policy yet: the result is melange's statement alone, for that one topic."""
    policy = with_topic(None, QUEUE, TOPIC_A)
    assert statements(policy) == [statement_for(QUEUE, [TOPIC_A])]
    assert json.loads(policy or "")["Version"] == "2012-10-17"
    assert admitted_topics(policy, QUEUE) == {TOPIC_A}


def test_the_statement_lets_only_sns_send_from_the_listed_topics() -> None:
    """The statement allows sqs:SendMessage by SNS on this queue, limited by aws:SourceArn."""
    statement = statement_for(QUEUE, [TOPIC_A, TOPIC_B])
    assert statement == {
        "Sid": SID,
        "Effect": "Allow",
        "Principal": {"Service": "sns.amazonaws.com"},
        "Action": "sqs:SendMessage",
        "Resource": QUEUE,
        "Condition": {"ArnEquals": {"aws:SourceArn": [TOPIC_A, TOPIC_B]}},
    }


def test_an_admitted_topic_changes_nothing() -> None:
    """Merging a topic that is already admitted returns None: no call is needed."""
    policy = with_topic(None, QUEUE, TOPIC_A)
    assert with_topic(policy, QUEUE, TOPIC_A) is None


def test_a_second_topic_joins_the_same_statement() -> None:
    """Another topic is added to melange's one statement, keeping the first."""
    policy = with_topic(with_topic(None, QUEUE, TOPIC_A), QUEUE, TOPIC_B)
    (statement,) = statements(policy)
    assert statement["Condition"]["ArnEquals"]["aws:SourceArn"] == [TOPIC_A, TOPIC_B]
    assert admitted_topics(policy, QUEUE) == {TOPIC_A, TOPIC_B}


def test_statements_melange_did_not_write_are_kept_untouched() -> None:
    """Foreign statements, the policy Id and Version stay as they were, in order."""
    existing = json.dumps({"Version": "2008-10-17", "Id": "mine", "Statement": [FOREIGN]})
    policy = with_topic(existing, QUEUE, TOPIC_A)
    document = json.loads(policy or "")
    assert (document["Version"], document["Id"]) == ("2008-10-17", "mine")
    assert document["Statement"] == [FOREIGN, statement_for(QUEUE, [TOPIC_A])]


def test_a_single_statement_object_is_read_as_a_list() -> None:
    """AWS also accepts a Statement that is one object rather than a list."""
    existing = json.dumps({"Version": "2012-10-17", "Statement": FOREIGN})
    assert statements(with_topic(existing, QUEUE, TOPIC_A)) == [
        FOREIGN,
        statement_for(QUEUE, [TOPIC_A]),
    ]


def test_duplicated_melange_statements_are_merged_into_one() -> None:
    """Two statements under melange's Sid (e.g. a hand copy) become one with all topics."""
    existing = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                statement_for(QUEUE, [TOPIC_A]),
                FOREIGN,
                statement_for(QUEUE, [TOPIC_A, TOPIC_B]),
            ],
        }
    )
    topic_c = "arn:aws:sns:us-east-1:123456789012:c"
    assert statements(with_topic(existing, QUEUE, topic_c)) == [
        FOREIGN,
        statement_for(QUEUE, [TOPIC_A, TOPIC_B, topic_c]),
    ]


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"Effect": "Deny"}, id="deny"),
        pytest.param({"Principal": {"Service": "events.amazonaws.com"}}, id="other-principal"),
        pytest.param({"Action": "sqs:ReceiveMessage"}, id="other-action"),
        pytest.param({"Resource": "arn:aws:sqs:us-east-1:123456789012:other"}, id="other-queue"),
    ],
)
def test_a_statement_edited_by_hand_admits_nothing_and_is_rewritten(change: dict[str, Any]) -> None:
    """A statement under the Sid that no longer lets SNS deliver counts as missing."""
    edited = {**statement_for(QUEUE, [TOPIC_A]), **change}
    existing = json.dumps({"Version": "2012-10-17", "Statement": [edited]})
    assert admitted_topics(existing, QUEUE) == set()
    assert statements(with_topic(existing, QUEUE, TOPIC_A)) == [statement_for(QUEUE, [TOPIC_A])]


def test_statements_reformatted_by_aws_still_count() -> None:
    """Lists of one, other letter case in the action and a plain string ARN still admit."""
    reformatted = {
        "Sid": SID,
        "Effect": "Allow",
        "Principal": {"Service": ["sns.amazonaws.com"]},
        "Action": ["SQS:SendMessage"],
        "Resource": [QUEUE],
        "Condition": {"ArnEquals": {"AWS:SourceArn": TOPIC_A}},
    }
    existing = json.dumps({"Version": "2012-10-17", "Statement": [reformatted]})
    assert admitted_topics(existing, QUEUE) == {TOPIC_A}
    assert with_topic(existing, QUEUE, TOPIC_A) is None


def test_a_statement_without_melange_sid_does_not_count() -> None:
    """Only melange's own statement is read: a foreign grant to SNS is left alone."""
    foreign_grant = {**statement_for(QUEUE, [TOPIC_A]), "Sid": "Theirs"}
    existing = json.dumps({"Version": "2012-10-17", "Statement": [foreign_grant]})
    assert admitted_topics(existing, QUEUE) == set()
    assert statements(with_topic(existing, QUEUE, TOPIC_A)) == [
        foreign_grant,
        statement_for(QUEUE, [TOPIC_A]),
    ]


@pytest.mark.parametrize("existing", ["not json", "[1, 2]"])
def test_an_unreadable_policy_is_refused_with_a_fix(existing: str) -> None:
    """A policy that is not a JSON object cannot be merged: the error says what to do."""
    assert admitted_topics(existing, QUEUE) == set()
    with pytest.raises(InvalidTopology, match="fix or remove the policy"):
        with_topic(existing, QUEUE, TOPIC_A)
