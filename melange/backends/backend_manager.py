"""melange 7.x's import path of ``BackendManager``; deprecated: pass backends explicitly.

``BackendManager`` is 7.x's (:mod:`melange.compat.backend_manager`), loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from melange.compat import deprecated

deprecated(
    "melange.backends.backend_manager",
    "an explicit backend: QueuePublisher(backend), MessageDispatcher(backend, queue_name, "
    "consumers), MessagingBackendFactory(backend)",
)


def __getattr__(name: str) -> Any:
    """Load ``BackendManager`` from :mod:`melange.compat.backend_manager` on first use."""
    if name == "BackendManager":
        return importlib.import_module("melange.compat.backend_manager").BackendManager
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
