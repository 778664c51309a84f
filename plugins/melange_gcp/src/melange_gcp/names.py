"""Pub/Sub resource names: melange's name rules and the resource paths they map to.

Pub/Sub's rule for topic and subscription ids (https://cloud.google.com/pubsub/docs/create-topic
and .../create-subscription): 3 to 255 characters, starting with a letter, made of letters,
digits and ``- _ . ~ + %``, and not starting with ``goog``.

A melange queue is a topic plus a subscription of the same id, and subscribing
a queue to a topic adds a subscription named ``<queue>~<topic>``. So queue names
leave out ``~`` (it separates the two parts), ``+`` and ``%``, and stop at
:data:`QUEUE_MAX_LENGTH` characters so that every subscription name fits in 255.
"""

from __future__ import annotations

import hashlib

from melange.topology import NameRule

PUBSUB_MAX_LENGTH = 255
"""Longest topic or subscription id Pub/Sub accepts."""

SEPARATOR = "~"
"""Joins a queue and a topic into the name of the subscription that fans out to the queue."""

_HASH_LENGTH = 22
QUEUE_MAX_LENGTH = PUBSUB_MAX_LENGTH - len(SEPARATOR) - _HASH_LENGTH
"""Longest queue name: room is kept for ``~`` and a hash of a long topic name."""

QUEUE_NAME_RULE = NameRule(
    pattern=r"(?!goog)[A-Za-z][A-Za-z0-9._-]{2,}",
    max_length=QUEUE_MAX_LENGTH,
    description=(
        f"3 to {QUEUE_MAX_LENGTH} characters: a letter first, then letters, digits, '.', '-' "
        "and '_', not starting with 'goog' (Pub/Sub's rule; '~', '+' and '%' are left out "
        "because '~' joins queue and topic in subscription names)"
    ),
)
TOPIC_NAME_RULE = NameRule(
    pattern=r"(?!goog)[A-Za-z][A-Za-z0-9._~+%-]{2,}",
    max_length=PUBSUB_MAX_LENGTH,
    description=(
        "3 to 255 characters: a letter first, then letters, digits and '.', '-', '_', '~', "
        "'+', '%', not starting with 'goog' (Pub/Sub's rule)"
    ),
)


def topic_path(project: str, name: str) -> str:
    """Return ``projects/<project>/topics/<name>``."""
    return f"projects/{project}/topics/{name}"


def subscription_path(project: str, name: str) -> str:
    """Return ``projects/<project>/subscriptions/<name>``."""
    return f"projects/{project}/subscriptions/{name}"


def short_name(path: str) -> str:
    """Return the last segment of a resource path (the id)."""
    return path.rsplit("/", 1)[-1]


def fan_out_subscription(queue_name: str, topic_name: str) -> str:
    """Return the id of the subscription that brings ``topic_name``'s messages to the queue.

    ``<queue>~<topic>`` when it fits in 255 characters, else ``<queue>~`` and a
    hash of the topic name (the topic itself is recorded on the subscription).
    """
    name = f"{queue_name}{SEPARATOR}{topic_name}"
    if len(name) <= PUBSUB_MAX_LENGTH:
        return name
    digest = hashlib.sha256(topic_name.encode()).hexdigest()[:_HASH_LENGTH]
    return f"{queue_name}{SEPARATOR}{digest}"


def fan_out_prefix(queue_name: str) -> str:
    """Return the prefix every fan-out subscription of ``queue_name`` has."""
    return f"{queue_name}{SEPARATOR}"
