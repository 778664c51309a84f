"""Subscription rule evaluation for the AMQP stand-in: exactly the SQL subset melange generates.

Grammar (anything else raises, so a test notices a filter the stand-in would get wrong)::

    clause     := user.[<property>] IN ('<v1>', '<v2>', ...)   -- '' inside a value is one '
    expression := clause ( " AND " clause )*

A rule without an expression (a TrueFilter) and the SQL ``1=1`` match every message;
``1=0`` (a FalseFilter) matches none. A clause on a missing or non-string property is
false, like SQL's comparison with NULL. Property names are case-insensitive, as in
Service Bus SQL filters: ``user.[color]`` reads a property named ``Color`` (which one of
several names differing only in case it reads is not defined; here, the first sent).
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
        isinstance(value := _property(properties, name), str) and value in values
        for name, values in parse(expression)
    )


def _property(properties: Mapping[str, object], name: str) -> object:
    """The value of the property ``name``, its case ignored."""
    if name in properties:
        return properties[name]
    lowered = name.lower()
    return next((v for k, v in properties.items() if str(k).lower() == lowered), None)
