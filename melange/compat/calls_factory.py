"""melange 7.x's ``init_queue`` keywords, for :class:`~melange.factory.MessagingBackendFactory`.

7.x's ``init_queue(queue_name, topic_names_to_subscribe=None, dlq_name=None,
**kwargs)`` took the dead-letter queue as ``dlq_name`` and passed
``filter_events=[manifest, ...]`` on to an SNS filter policy on its ``manifest``
message attribute. The factory hands those keywords here:

* ``dlq_name`` is melange 8's ``dead_letter_queue_name``: it works, with a warning
  (7.x moved a message after 4 receives; melange 8's default is the backend's);
* ``filter_events`` raises: which attribute to filter on depends on the producers
  (see :func:`queue_settings_7x`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from melange.compat.calls_common import warn_7x
from melange.exceptions import InvalidTopology

__all__ = ["MAX_RECEIVE_COUNT_7X", "queue_settings_7x"]

MAX_RECEIVE_COUNT_7X = 4
"""Receives before 7.x's SQS backend moved a message to the dead-letter queue."""


def queue_settings_7x(
    queue_name: str, dead_letter_queue_name: str | None, settings: Mapping[str, Any]
) -> tuple[str | None, dict[str, Any]]:
    """Return ``init_queue``'s dead-letter queue name and settings with the 7.x keywords mapped.

    Args:
        queue_name: The queue being declared, for messages.
        dead_letter_queue_name: The melange 8 argument, as given.
        settings: The keyword settings, with ``dlq_name`` and/or ``filter_events``.

    Raises:
        InvalidTopology: ``filter_events`` was given (it has no one-to-one melange 8
            form), or ``dlq_name`` together with ``dead_letter_queue_name``.
    """
    remaining = dict(settings)
    if "filter_events" in remaining:
        events = remaining.pop("filter_events")
        if events:
            raise InvalidTopology(
                f"init_queue({queue_name!r}, ..., filter_events={events!r}) is melange 7.x's "
                "filter on its 'manifest' message attribute; melange 8 sends the manifest as "
                "'melange.manifest' and takes the filter as subscription_filter: pass "
                "subscription_filter={'melange.manifest': [...]} for melange 8 producers, or "
                "subscription_filter={'manifest': [...]} for messages in 7.x's format (7.x "
                "producers, or backends with compatible_with_7x=True). No one filter matches "
                "both, so the choice is yours: a wrong one drops messages silently"
            )
        warn_7x(
            f"init_queue({queue_name!r}, ..., filter_events={events!r})",
            "init_queue() without it (no filter), or subscription_filter={attribute: [values]}",
        )
    if "dlq_name" in remaining:
        dlq_name = remaining.pop("dlq_name")
        if dead_letter_queue_name is not None:
            raise InvalidTopology(
                f"init_queue({queue_name!r}) got both dlq_name= (melange 7.x) and "
                "dead_letter_queue_name=; pass only dead_letter_queue_name="
            )
        warn_7x(
            f"init_queue({queue_name!r}, ..., dlq_name={dlq_name!r})",
            f"init_queue({queue_name!r}, ..., dead_letter_queue_name={dlq_name!r}); add "
            f"max_receive_count={MAX_RECEIVE_COUNT_7X} to keep 7.x's {MAX_RECEIVE_COUNT_7X} "
            "receives before a message is dead-lettered (melange 8's default is 5, or 4 on an "
            "SQS backend with compatible_with_7x=True)",
        )
        dead_letter_queue_name = dlq_name
    return dead_letter_queue_name, remaining
