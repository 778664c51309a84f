"""melange 7.x's import path of ``LocalSQSBackend``; deprecated, use ``melange.backends``.

The class is melange 8's, from the ``melange-localsqs`` plugin, loaded on first
use; without the plugin the :class:`~melange.exceptions.BackendNotFound` names
the command that installs it.
"""

from __future__ import annotations

from typing import Any

from melange.backends import registry
from melange.compat import deprecated

deprecated("melange.backends.sqs.localsqs", "from melange.backends import LocalSQSBackend")


def __getattr__(name: str) -> Any:
    """Load ``LocalSQSBackend`` from its plugin on first use."""
    if name == "LocalSQSBackend":
        return registry.get_backend_class("localsqs")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
