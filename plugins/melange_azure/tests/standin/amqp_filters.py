"""Subscription rule evaluation for the AMQP stand-in: exactly the SQL subset melange generates.

Grammar (anything else raises, so a test notices a filter the stand-in would get wrong)::

    clause     := user.[<property>] IN ('<v1>', '<v2>', ...)   -- '' inside a value is one '
    expression := clause ( " AND " clause )*

A rule without an expression (a TrueFilter) and the SQL ``1=1`` match every message;
``1=0`` (a FalseFilter) matches none. A clause on a missing or non-string property is
false, like SQL's comparison with NULL.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_CLAUSE = re.compile(
    r"user\.\[(?P<name>[^\]]+)\] IN \((?P<values>'(?:[^']|'')*'(?:, ?'(?:[^']|'')*')*)\)"
)
_VALUE = re.compile(r"'((?:[^']|'')*)'")
_AND = " AND "


class UnsupportedFilterError(ValueError):
    """The expression is outside the subset the stand-in evaluates."""


def parse(expression: str) -> list[tuple[str, frozenset[str]]]:
    """Split an expression into ``(property, allowed values)`` clauses, or raise."""
    clauses: list[tuple[str, frozenset[str]]] = []
    position = 0
    while True:
        match = _CLAUSE.match(expression, position)
        if match is None:
            raise UnsupportedFilterError(f"the stand-in cannot evaluate SQL filter {expression!r}")
        values = frozenset(v.replace("''", "'") for v in _VALUE.findall(match["values"]))
        clauses.append((match["name"], values))
        position = match.end()
        if position == len(expression):
            return clauses
        if not expression.startswith(_AND, position):
            raise UnsupportedFilterError(f"the stand-in cannot evaluate SQL filter {expression!r}")
        position += len(_AND)


def matches(expression: str | None, properties: Mapping[str, object]) -> bool:
    """Whether a message with these application properties passes the rule's filter."""
    if expression is None or expression.strip() == "1=1":
        return True
    if expression.strip() == "1=0":
        return False
    return all(
        isinstance(properties.get(name), str) and properties[name] in values
        for name, values in parse(expression)
    )
