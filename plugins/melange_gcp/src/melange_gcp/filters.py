"""Subscription filters: melange's attribute filters as Pub/Sub filter expressions.

``{"event": ["paid", "refunded"], "region": ["eu"]}`` becomes
``(attributes.event = "paid" OR attributes.event = "refunded") AND attributes.region = "eu"``
(https://cloud.google.com/pubsub/docs/subscription-message-filter). Pub/Sub
keeps at most 256 bytes of filter and cannot change a filter after the
subscription is created.
"""

from __future__ import annotations

import re

from melange.exceptions import InvalidTopology
from melange.topology import SubscriptionSpec

MAX_FILTER_BYTES = 256
"""Longest filter expression Pub/Sub accepts."""

FilterTuple = tuple[tuple[str, tuple[str, ...]], ...]

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TERM = re.compile(
    r'attributes\.(?:([A-Za-z_][A-Za-z0-9_]*)|"((?:[^"\\]|\\.)*)") = "((?:[^"\\]|\\.)*)"'
)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _unquote(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def _key(key: str) -> str:
    return f"attributes.{key if _PLAIN_KEY.fullmatch(key) else _quote(key)}"


def to_expression(value: FilterTuple | None) -> str:
    """Return the Pub/Sub filter for a normalized melange filter ("" for none)."""
    if not value:
        return ""
    clauses = []
    for key, values in value:
        terms = [f"{_key(key)} = {_quote(item)}" for item in values]
        clauses.append(terms[0] if len(terms) == 1 else "(" + " OR ".join(terms) + ")")
    return " AND ".join(clauses)


def from_expression(expression: str) -> FilterTuple | None:
    """Return the melange filter an expression written by :func:`to_expression` stands for.

    An expression melange did not write (hand-made, other operators) comes back
    as a filter no declaration equals, so init reports it as drift.
    """
    if not expression:
        return None
    parsed: dict[str, list[str]] = {}
    for clause in expression.split(" AND "):
        body = clause[1:-1] if clause.startswith("(") and clause.endswith(")") else clause
        for term in body.split(" OR "):
            match = _TERM.fullmatch(term)
            if match is None:
                return (("<filter melange did not write>", (expression,)),)
            key = match.group(1) or _unquote(match.group(2))
            parsed.setdefault(key, []).append(_unquote(match.group(3)))
    normalized = SubscriptionSpec.normalize_filter(parsed)
    if to_expression(normalized) != expression:
        return (("<filter melange did not write>", (expression,)),)
    return normalized


def check(subscription: SubscriptionSpec) -> None:
    """Raise InvalidTopology if Pub/Sub would refuse the subscription's filter."""
    if subscription.filter is None:
        return
    for key, values in subscription.filter:
        if not values:
            raise InvalidTopology(
                f"filter of {subscription.queue_name!r} on {subscription.topic_name!r} lists no "
                f"value for attribute {key!r}; list at least one, or drop the attribute"
            )
    size = len(to_expression(subscription.filter).encode())
    if size > MAX_FILTER_BYTES:
        raise InvalidTopology(
            f"the filter of {subscription.queue_name!r} on {subscription.topic_name!r} is "
            f"{size} bytes as a Pub/Sub filter expression; Pub/Sub allows at most "
            f"{MAX_FILTER_BYTES}. Filter on fewer attributes or values"
        )
