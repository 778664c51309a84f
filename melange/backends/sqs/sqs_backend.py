"""melange 7.x's import path of ``AWSBackend``; deprecated, use ``melange.backends``.

The class is melange 8's, from the ``melange-aws`` plugin, loaded on first use;
without the plugin the :class:`~melange.exceptions.BackendNotFound` names the
command that installs it. 7.x's ``BaseSQSBackend`` (the base of both SQS
backends) is ``AWSBackend``, which ``LocalSQSBackend`` extends in melange 8.
"""

from __future__ import annotations

from typing import Any

from melange.backends import registry
from melange.compat import deprecated

deprecated("melange.backends.sqs.sqs_backend", "from melange.backends import AWSBackend")


def __getattr__(name: str) -> Any:
    """Load ``AWSBackend`` (also 7.x's ``BaseSQSBackend``) from its plugin on first use."""
    if name == "AWSBackend":
        return registry.get_backend_class("aws")
    if name == "BaseSQSBackend":
        deprecated(
            "melange.backends.sqs.sqs_backend.BaseSQSBackend",
            "from melange.backends import AWSBackend (LocalSQSBackend extends it)",
        )
        return registry.get_backend_class("aws")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
