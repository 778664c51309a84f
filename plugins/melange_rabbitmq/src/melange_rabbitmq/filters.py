"""Subscription filters as bindings of a headers exchange.

A headers exchange binding with ``x-match: all`` routes a message whose headers
hold every other binding argument with the same value. melange's filter allows
several values per attribute (``{"kind": ["paid", "refunded"]}``), so one
subscription is one binding per combination of values; a subscription without
a filter is one binding with no argument but ``x-match``, which matches every
message.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

from melange.exceptions import InvalidTopology
from melange.topology import SubscriptionSpec

__all__ = ["MAX_BINDINGS", "bindings_for", "filter_of"]

MAX_BINDINGS = 64
"""Most bindings one subscription may need (the product of its value counts)."""

MATCH = "x-match"


def bindings_for(spec: SubscriptionSpec) -> list[dict[str, str]]:
    """The binding arguments that together express ``spec``'s filter.

    Raises:
        InvalidTopology: The filter needs more than :data:`MAX_BINDINGS` bindings, or
            names an attribute RabbitMQ reserves (``x-...``).
    """
    if spec.filter is None:
        return [{MATCH: "all"}]
    size = 1
    for key, values in spec.filter:
        if key.startswith("x-"):
            raise InvalidTopology(
                f"subscription {spec.topic_name!r} -> {spec.queue_name!r}: RabbitMQ's headers "
                f"exchange ignores attributes starting with 'x-', so {key!r} cannot be filtered "
                "on; rename the attribute"
            )
        if not values:
            raise InvalidTopology(
                f"subscription {spec.topic_name!r} -> {spec.queue_name!r}: attribute {key!r} "
                "lists no allowed value; list at least one, or drop the key"
            )
        size *= len(values)
    if size > MAX_BINDINGS:
        raise InvalidTopology(
            f"subscription {spec.topic_name!r} -> {spec.queue_name!r}: its filter needs {size} "
            f"headers-exchange bindings (one per combination of values), more than the "
            f"{MAX_BINDINGS} melange allows; filter on fewer values"
        )
    keys = [key for key, _ in spec.filter]
    return [
        {MATCH: "all", **dict(zip(keys, combination, strict=True))}
        for combination in itertools.product(*(values for _, values in spec.filter))
    ]


def filter_of(
    arguments: Iterable[Mapping[str, Any]],
) -> tuple[tuple[str, tuple[str, ...]], ...] | None:
    """The filter the bindings with ``arguments`` express (see :func:`bindings_for`)."""
    allowed: dict[str, set[str]] = {}
    for args in arguments:
        plain = {k: v for k, v in args.items() if not k.startswith("x-")}
        if not plain:
            return None  # this binding lets everything through
        for key, value in plain.items():
            allowed.setdefault(key, set()).add(str(value))
    return SubscriptionSpec.normalize_filter({k: sorted(v) for k, v in allowed.items()})
