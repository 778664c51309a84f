"""Subscription filters as SNS filter policies.

melange's filter ``{attribute: [allowed values]}`` is exactly an SNS filter
policy of exact string matches on message attributes (FilterPolicyScope
``MessageAttributes``): a message passes when every named attribute is present
with one of the listed values.
"""

from __future__ import annotations

import json
import math

from melange.exceptions import InvalidArgument, InvalidTopology
from melange.topology import SubscriptionSpec

Filter = tuple[tuple[str, tuple[str, ...]], ...]

MAX_KEYS = 5
"""Attribute names one SNS filter policy may name."""

MAX_COMBINATIONS = 150
"""SNS's limit on the product of the number of values of each attribute."""


def check(spec: SubscriptionSpec) -> None:
    """Raise :class:`InvalidTopology` if SNS would refuse ``spec``'s filter policy.

    Raises:
        InvalidArgument: The filter is not in SubscriptionSpec's normal form
            (``((name, (value, ...)), ...)`` of strings), e.g. a spec built by hand
            without :meth:`SubscriptionSpec.normalize_filter`.
        InvalidTopology: SNS's limits on filter policies are exceeded.
    """
    if spec.filter is None:
        return
    where = f"subscription_filter of {spec.queue_name!r} on topic {spec.topic_name!r}"
    _check_form(spec.filter, where)
    if len(spec.filter) > MAX_KEYS:
        raise InvalidTopology(
            f"{where} names {len(spec.filter)} attributes; SNS filter policies allow at most "
            f"{MAX_KEYS}. Filter on fewer attributes"
        )
    combinations = math.prod(len(values) for _, values in spec.filter)
    if combinations > MAX_COMBINATIONS:
        raise InvalidTopology(
            f"{where} has {combinations} value combinations (the product of the number of "
            f"values per attribute); SNS allows at most {MAX_COMBINATIONS}. List fewer values"
        )


def _check_form(filter_: object, where: str) -> None:
    """Refuse a filter that is not ``((name, (value, ...)), ...)`` of strings."""
    expected = "pairs of an attribute name and a tuple of string values"
    hint = "build it with SubscriptionSpec.normalize_filter({'attribute': ['value']})"
    if not isinstance(filter_, tuple):
        raise InvalidArgument(where, expected, filter_, hint)
    for entry in filter_:
        if not (isinstance(entry, tuple) and len(entry) == 2):
            raise InvalidArgument(where, expected, filter_, hint)
        name, values = entry
        if not (isinstance(name, str) and name and isinstance(values, tuple) and values):
            raise InvalidArgument(where, expected, filter_, hint)
        for value in values:
            if not isinstance(value, str):
                raise InvalidArgument(f"{where}, attribute {name!r}", "string values", value)


def to_policy(filter_: Filter | None) -> str:
    """Return the FilterPolicy JSON for a melange filter; ``""`` (no policy) for ``None``."""
    if filter_ is None:
        return ""
    return json.dumps({name: list(values) for name, values in filter_}, sort_keys=True)


def from_policy(policy: str | None) -> Filter | None:
    """Read a FilterPolicy back into melange's form.

    A policy melange did not write (numeric or prefix matches, nested keys) is
    kept readable but can never equal a declared filter, so the factory plans
    an update that puts the declared filter back.
    """
    if not policy:
        return None
    try:
        document = json.loads(policy)
    except ValueError:
        return (("<unreadable FilterPolicy>", (policy,)),)
    if not isinstance(document, dict):
        return (("<unreadable FilterPolicy>", (policy,)),)
    readable: dict[str, list[str]] = {}
    for name, values in document.items():
        listed = values if isinstance(values, list) else [values]
        readable[str(name)] = [
            value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            for value in listed
        ]
    return SubscriptionSpec.normalize_filter(readable)
