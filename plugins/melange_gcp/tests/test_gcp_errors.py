"""gRPC and google-auth errors become melange's, with no credential in any message."""

from __future__ import annotations

import pytest
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from melange_gcp.errors import ErrorContext, translate

from melange.exceptions import (
    BackendUnavailable,
    BrokerError,
    InvalidMessage,
    InvalidTopology,
    MelangeError,
    QueueNotFound,
    TopicNotFound,
)

CONTEXT = ErrorContext("publish to queue 'orders'", "pubsub.googleapis.com:443")


@pytest.mark.parametrize(
    ("error", "context", "expected", "code"),
    [
        (
            api_exceptions.NotFound("Resource not found"),
            ErrorContext("read", "h:1", queue="orders"),
            QueueNotFound,
            None,
        ),
        (
            api_exceptions.NotFound("Topic not found"),
            ErrorContext("read", "h:1", topic="events"),
            TopicNotFound,
            None,
        ),
        (api_exceptions.NotFound("gone"), CONTEXT, BrokerError, "NOT_FOUND"),
        (
            api_exceptions.Unauthenticated("bad token"),
            CONTEXT,
            BackendUnavailable,
            "UNAUTHENTICATED",
        ),
        (api_exceptions.PermissionDenied("no"), CONTEXT, BackendUnavailable, "PERMISSION_DENIED"),
        (api_exceptions.ServiceUnavailable("down"), CONTEXT, BackendUnavailable, "UNAVAILABLE"),
        (api_exceptions.DeadlineExceeded("slow"), CONTEXT, BackendUnavailable, "DEADLINE_EXCEEDED"),
        (api_exceptions.InvalidArgument("bad"), CONTEXT, InvalidTopology, "INVALID_ARGUMENT"),
        (
            api_exceptions.InvalidArgument("bad"),
            ErrorContext("publish", "h:1", about_messages=True),
            InvalidMessage,
            "INVALID_ARGUMENT",
        ),
        (api_exceptions.ResourceExhausted("quota"), CONTEXT, BrokerError, "RESOURCE_EXHAUSTED"),
    ],
)
def test_grpc_errors_are_translated(
    error: Exception, context: ErrorContext, expected: type[MelangeError], code: str | None
) -> None:
    translated = translate(error, context)
    assert type(translated) is expected
    assert translated.broker_code == code
    if code is not None:
        assert context.action in str(translated) and context.endpoint in str(translated)


def test_permission_denied_says_what_to_grant() -> None:
    message = str(translate(api_exceptions.PermissionDenied("denied"), CONTEXT))
    assert "roles/pubsub" in message


def test_google_auth_errors_are_summarized_without_their_text() -> None:
    secret = "-----BEGIN PRIVATE KEY-----MELANGESECRET"
    translated = translate(auth_exceptions.RefreshError(f"invalid_grant: {secret}"), CONTEXT)
    assert isinstance(translated, BackendUnavailable)
    assert "MELANGESECRET" not in str(translated)
    assert "RefreshError" in str(translated) and "Application Default Credentials" in str(
        translated
    )
