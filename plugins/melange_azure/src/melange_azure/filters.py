"""Subscription filters as Service Bus SQL rules.

melange's filter ``{attribute: [allowed values]}`` passes a message when every
named attribute is present with one of the listed values. As a Service Bus SQL
filter over application properties (the ``user.`` scope) that is::

    user.[<attribute>] IN ('<v1>', '<v2>') AND user.[<attribute2>] IN ('<v3>')

with single quotes inside values doubled. Service Bus reads property names
case-insensitively: ``user.[color]`` also passes a message whose attribute is
``Color`` (documented in docs/backends/azure.md), and a filter naming two
attributes that differ only in case is refused. A subscription without a filter has
the TrueFilter (``1=1``). The subscription keeps exactly one rule, ``$Default``,
holding whichever applies; :func:`parse` reads an expression back so init can
compare it with the declaration.
"""

from __future__ import annotations

import re

from melange.exceptions import InvalidTopology
from melange.topology import SubscriptionSpec

Filter = tuple[tuple[str, tuple[str, ...]], ...]

RULE_NAME = "$Default"
"""The rule every melange subscription has (Service Bus creates it with a TrueFilter)."""

MAX_EXPRESSION_LENGTH = 1024
"""Characters of a SQL filter expression Service Bus accepts."""

TRUE_EXPRESSION = "1=1"

_CLAUSE = re.compile(
    r"user\.\[(?P<name>[^\]]+)\] IN \((?P<values>'(?:[^']|'')*'(?:, '(?:[^']|'')*')*)\)"
)
_VALUE = re.compile(r"'((?:[^']|'')*)'")
_AND = " AND "


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def to_sql(filter_: Filter) -> str:
    """Return the SQL filter expression of a normalized melange filter."""
    return _AND.join(
        f"user.[{name}] IN ({', '.join(_quote(value) for value in values)})"
        for name, values in filter_
    )


def parse(expression: str | None) -> Filter | None:
    """Read back an expression :func:`to_sql` wrote.

    Returns:
        The normalized filter; ``None`` for a TrueFilter.

    Raises:
        ValueError: The expression is not one melange writes (changed by hand).
    """
    if expression is None or expression.strip() == TRUE_EXPRESSION:
        return None
    clauses: dict[str, tuple[str, ...]] = {}
    position = 0
    while True:
        match = _CLAUSE.match(expression, position)
        if match is None:
            raise ValueError("not a melange filter expression")
        values = tuple(sorted(v.replace("''", "'") for v in _VALUE.findall(match["values"])))
        clauses[match["name"]] = values
        position = match.end()
        if position == len(expression):
            return SubscriptionSpec.normalize_filter(clauses)
        if not expression.startswith(_AND, position):
            raise ValueError("not a melange filter expression")
        position += len(_AND)


def check(spec: SubscriptionSpec) -> None:
    """Raise :class:`InvalidTopology` if Service Bus would refuse ``spec``'s filter."""
    if spec.filter is None:
        return
    where = f"subscription_filter of {spec.queue_name!r} on topic {spec.topic_name!r}"
    if not spec.filter:
        raise InvalidTopology(f"{where} is empty; pass None to let every message through")
    seen: dict[str, str] = {}
    for name, values in spec.filter:
        other = seen.setdefault(name.lower(), name)
        if other != name:
            # Service Bus reads property names in SQL filters case-insensitively: both
            # clauses would test one property, so no message could pass both.
            raise InvalidTopology(
                f"{where} names attributes {other!r} and {name!r}, which differ only in case; "
                "Service Bus SQL filters do not tell property names apart by case. Filter on "
                "one of them, or rename the attribute"
            )
        if not name or "]" in name or "[" in name:
            raise InvalidTopology(
                f"{where} names attribute {name!r}; Service Bus SQL filters cannot name a "
                "property containing '[' or ']'. Rename the attribute"
            )
        if not values:
            raise InvalidTopology(
                f"{where} allows no value for {name!r}, so nothing would pass; list at least "
                "one value or drop the attribute from the filter"
            )
    length = len(to_sql(spec.filter))
    if length > MAX_EXPRESSION_LENGTH:
        raise InvalidTopology(
            f"{where} becomes a SQL filter of {length} characters; Service Bus accepts at most "
            f"{MAX_EXPRESSION_LENGTH}. Filter on fewer attributes or values"
        )
