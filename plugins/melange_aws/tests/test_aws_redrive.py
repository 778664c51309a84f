"""A dead-letter queue's RedriveAllowPolicy: does it admit a queue, what change makes it."""

from __future__ import annotations

import json

import pytest
from melange_aws.redrive import MAX_SOURCE_QUEUES, admits, admitting

from melange.exceptions import InvalidTopology

ORDERS = "arn:aws:sqs:us-east-1:123456789012:orders"
OTHER = "arn:aws:sqs:us-east-1:123456789012:other"


def by_queue(*arns: str) -> str:
    """A byQueue policy naming ``arns``."""
    return json.dumps({"redrivePermission": "byQueue", "sourceQueueArns": list(arns)})


@pytest.mark.parametrize(
    ("policy", "admitted"),
    [
        (None, True),
        ("", True),
        ('{"redrivePermission": "allowAll"}', True),
        (by_queue(OTHER, ORDERS), True),
        (by_queue(OTHER), False),
        ('{"redrivePermission": "byQueue", "sourceQueueArns": "' + ORDERS + '"}', True),
        ('{"redrivePermission": "denyAll"}', False),
        ('{"redrivePermission": "somethingElse"}', False),
        ("not json", False),
        ("[]", False),
    ],
)
def test_which_policies_admit_the_queue(policy: str | None, admitted: bool) -> None:
    """No policy and allowAll admit every queue; byQueue those it names; the rest none."""
    assert admits(policy, ORDERS) is admitted


def change(policy: str | None) -> str | None:
    """``admitting`` for queue orders and dead-letter queue orders-dlq."""
    return admitting(policy, ORDERS, queue="orders", dead_letter_queue="orders-dlq")


def test_an_admitting_policy_is_not_changed() -> None:
    """Nothing to write when the queue is admitted already."""
    assert change(None) is None
    assert change(by_queue(ORDERS)) is None


def test_deny_all_becomes_by_queue_of_the_queue_alone() -> None:
    """The least permissive policy that admits the queue: not allowAll."""
    assert json.loads(change('{"redrivePermission": "denyAll"}') or "") == json.loads(
        by_queue(ORDERS)
    )


def test_by_queue_gains_the_queue_and_keeps_the_others() -> None:
    """The queues it admitted stay admitted, in their order."""
    assert json.loads(change(by_queue(OTHER)) or "") == json.loads(by_queue(OTHER, ORDERS))


def test_a_full_by_queue_policy_is_refused_with_the_fix() -> None:
    """SQS allows 10 source queues: the error names the queues and what to do instead."""
    full = by_queue(*(f"{OTHER}-{index}" for index in range(MAX_SOURCE_QUEUES)))
    with pytest.raises(InvalidTopology, match=r"'orders-dlq' admits 10 source queues.*'orders'"):
        change(full)


def test_an_unreadable_policy_is_refused_not_overwritten() -> None:
    """melange does not overwrite what it cannot read; the error says so."""
    with pytest.raises(InvalidTopology, match=r"'orders-dlq' is not a JSON object.*fix or remove"):
        change("not json")
