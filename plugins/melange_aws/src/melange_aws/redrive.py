"""Whether a dead-letter queue admits its source queue: the dead-letter queue's RedriveAllowPolicy.

SQS lets a queue name any queue of its account and region as its dead-letter
queue, unless that queue's ``RedriveAllowPolicy`` says otherwise:
``{"redrivePermission": "allowAll"}`` (the default, also when there is no
policy), ``"denyAll"``, or ``"byQueue"`` with up to 10 ``sourceQueueArns``.
A declaration ``init_queue(queue, dead_letter_queue_name=dlq)`` needs ``dlq`` to
admit ``queue``; that is the one thing melange changes on an existing
dead-letter queue, in the least permissive way: ``byQueue`` gains the queue,
``denyAll`` becomes ``byQueue`` of the queue alone. The dead-letter queue's own
settings belong to whoever declared it.
"""

from __future__ import annotations

import json
from typing import Any

from melange.exceptions import InvalidTopology

MAX_SOURCE_QUEUES = 10
"""Source queues a ``byQueue`` RedriveAllowPolicy may name."""


def _document(policy: str) -> dict[str, Any] | None:
    try:
        document = json.loads(policy)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def _sources(document: dict[str, Any]) -> list[str]:
    sources = document.get("sourceQueueArns")
    listed = sources if isinstance(sources, list) else [sources]
    return [arn for arn in listed if isinstance(arn, str)]


def admits(policy: str | None, source_arn: str) -> bool:
    """Whether a RedriveAllowPolicy lets queue ``source_arn`` make its queue a dead-letter queue.

    No policy admits every queue of the account and region; a policy that is
    not a JSON object admits nothing (SQS would not have accepted it).
    """
    if not policy:
        return True
    document = _document(policy)
    if document is None:
        return False
    permission = document.get("redrivePermission")
    return permission == "allowAll" or (
        permission == "byQueue" and source_arn in _sources(document)
    )


def admitting(
    policy: str | None, source_arn: str, *, queue: str, dead_letter_queue: str
) -> str | None:
    """Return ``policy`` changed to admit ``source_arn``, or ``None`` if it already does.

    Args:
        policy: The dead-letter queue's RedriveAllowPolicy (``None`` if it has none).
        source_arn: The ARN of the queue that names it as its dead-letter queue.
        queue: That queue's name, for messages.
        dead_letter_queue: The dead-letter queue's name, for messages.

    Raises:
        InvalidTopology: The policy is not a JSON object, or it already admits
            the most source queues ``byQueue`` allows.
    """
    if admits(policy, source_arn):
        return None
    document = _document(policy or "")
    if document is None:
        raise InvalidTopology(
            f"the RedriveAllowPolicy of dead-letter queue {dead_letter_queue!r} is not a JSON "
            f"object, so melange cannot make it admit queue {queue!r}; fix or remove it"
        )
    sources = _sources(document) if document.get("redrivePermission") == "byQueue" else []
    if len(sources) >= MAX_SOURCE_QUEUES:
        raise InvalidTopology(
            f"dead-letter queue {dead_letter_queue!r} admits {len(sources)} source queues by "
            f"name (its RedriveAllowPolicy), the most SQS allows, and {queue!r} is not one "
            "of them. Give it redrivePermission allowAll, or choose another dead-letter queue"
        )
    # denyAll (or a permission SQS does not know) becomes byQueue of this queue alone.
    document.update(redrivePermission="byQueue", sourceQueueArns=[*sources, source_arn])
    return json.dumps(document, separators=(",", ":"))
