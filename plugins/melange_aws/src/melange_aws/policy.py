"""The queue policy statement that lets subscribed SNS topics deliver to a queue.

SNS delivers to an SQS queue only if the queue's policy allows
``sqs:SendMessage`` from the service principal ``sns.amazonaws.com``. melange
owns exactly one statement of that policy, recognised by its ``Sid``, and
limits it to the topics the queue subscribes to with an ``ArnEquals``
condition on ``aws:SourceArn``. Every other statement (and the policy's
``Version`` and ``Id``) is kept as it is: melange never overwrites what it did
not write.
"""

from __future__ import annotations

import json
from typing import Any

from melange.exceptions import InvalidTopology

SID = "MelangeSnsDelivery"
"""The ``Sid`` of melange's statement (letters only, valid in every AWS policy grammar)."""

VERSION = "2012-10-17"
SNS_PRINCIPAL = "sns.amazonaws.com"


def _document(policy: str | None, queue_arn: str) -> dict[str, Any]:
    if not policy:
        return {"Version": VERSION, "Statement": []}
    try:
        document = json.loads(policy)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise InvalidTopology(
            f"the access policy of queue {queue_arn!r} is not a JSON object, so melange cannot "
            "add the statement that lets SNS deliver to it; fix or remove the policy"
        )
    statements = document.get("Statement", [])
    document["Statement"] = statements if isinstance(statements, list) else [statements]
    return document


def _is_melange(statement: object) -> bool:
    return isinstance(statement, dict) and statement.get("Sid") == SID


def _source_arns(statement: dict[str, Any]) -> list[str]:
    condition = statement.get("Condition")
    if not isinstance(condition, dict):
        return []
    arn_equals = condition.get("ArnEquals")
    if not isinstance(arn_equals, dict):
        return []
    for key, value in arn_equals.items():
        if key.lower() == "aws:sourcearn":
            return _listed(value)
    return []


def admitted_topics(policy: str | None, queue_arn: str) -> set[str]:
    """Return the topic ARNs melange's statement of ``policy`` lets deliver to the queue.

    A statement under melange's ``Sid`` that was edited into something else
    (another principal, action or effect) admits nothing, so it gets rewritten.
    """
    try:
        document = _document(policy, queue_arn)
    except InvalidTopology:
        return set()
    admitted: set[str] = set()
    for statement in document["Statement"]:
        if _is_melange(statement) and _grants_sns_delivery(statement, queue_arn):
            admitted.update(_source_arns(statement))
    return admitted


def _listed(value: object) -> list[str]:
    values = value if isinstance(value, list) else [value]
    return [item for item in values if isinstance(item, str)]


def _grants_sns_delivery(statement: dict[str, Any], queue_arn: str) -> bool:
    """Whether ``statement`` still allows SNS to send to the queue (as AWS may reformat it)."""
    principal = statement.get("Principal")
    services = _listed(principal.get("Service")) if isinstance(principal, dict) else []
    actions = {action.lower() for action in _listed(statement.get("Action"))}
    return (
        statement.get("Effect") == "Allow"
        and SNS_PRINCIPAL in services
        and bool(actions & {"sqs:sendmessage", "sqs:*"})
        and queue_arn in _listed(statement.get("Resource"))
    )


def statement_for(queue_arn: str, topic_arns: list[str]) -> dict[str, Any]:
    """Return melange's statement admitting ``topic_arns`` (in that order) to the queue."""
    return {
        "Sid": SID,
        "Effect": "Allow",
        "Principal": {"Service": SNS_PRINCIPAL},
        "Action": "sqs:SendMessage",
        "Resource": queue_arn,
        "Condition": {"ArnEquals": {"aws:SourceArn": topic_arns}},
    }


def with_topic(policy: str | None, queue_arn: str, topic_arn: str) -> str | None:
    """Return ``policy`` with ``topic_arn`` admitted, or ``None`` if it already is.

    melange's statement keeps the topics it admitted before and gains
    ``topic_arn``; duplicates of the statement are merged into one; other
    statements are untouched and keep their order.

    Raises:
        InvalidTopology: The existing policy is not a JSON object.
    """
    if topic_arn in admitted_topics(policy, queue_arn):
        return None
    document = _document(policy, queue_arn)
    topics: list[str] = []
    kept: list[Any] = []
    for statement in document["Statement"]:
        if _is_melange(statement):
            topics.extend(arn for arn in _source_arns(statement) if arn not in topics)
        else:
            kept.append(statement)
    if topic_arn not in topics:
        topics.append(topic_arn)
    document["Statement"] = [*kept, statement_for(queue_arn, topics)]
    document.setdefault("Version", VERSION)
    return json.dumps(document, separators=(",", ":"))
