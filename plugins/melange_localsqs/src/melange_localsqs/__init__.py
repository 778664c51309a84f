"""melange backend for local SQS/SNS-compatible endpoints (LocalStack, moto server, ElasticMQ).

``LocalSQSBackend()`` talks to ``http://localhost:4566`` with dummy credentials;
:mod:`melange_localsqs.testing` starts a moto server for tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from melange_localsqs.backend import LocalSQSBackend

__all__ = ["LocalSQSBackend"]


def __getattr__(name: str) -> Any:
    # Lazy, so `melange_localsqs.testing` (a moto server) does not import boto3.
    if name == "LocalSQSBackend":
        from melange_localsqs.backend import LocalSQSBackend

        return LocalSQSBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
