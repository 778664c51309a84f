"""No secret in any error, repr, log line or chained exception; server texts on one line."""

from __future__ import annotations

import json
import logging
import traceback

import pytest
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from melange_gcp import GCPPubSubBackend
from melange_gcp.errors import ErrorContext, raise_translated, summary, translate

from melange.backends import load_backend
from melange.exceptions import BrokerError, ConfigurationError, MelangeError

SECRET = "MELANGESECRETPASSWORD"
CONTEXT = ErrorContext("publish to queue 'orders'", "pubsub.googleapis.com:443")


def everything_said(error: BaseException) -> str:
    """The error's text, repr and whole printed traceback (chained exceptions included)."""
    return "\n".join(
        [str(error), repr(error), *traceback.format_exception(type(error), error, None)]
    )


@pytest.mark.parametrize(
    "options",
    [
        {"emulator_host": f"admin:{SECRET}@127.0.0.1:8085"},
        {"emulator_host": f"http://admin:{SECRET}@127.0.0.1:8085"},
        {"api_endpoint": f"admin:{SECRET}@pubsub.googleapis.com:443"},
    ],
)
def test_a_password_in_an_address_option_is_refused_without_showing_it(
    options: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConfigurationError) as caught:
        load_backend("gcp", project="p-1234", **options)
    said = everything_said(caught.value)
    assert SECRET not in said and SECRET not in caplog.text
    assert "without a user name or password" in str(caught.value)
    assert "***@" in str(caught.value)  # says where, masked


def test_a_password_in_pubsub_emulator_host_is_refused_without_showing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"user:{SECRET}@127.0.0.1:8085")
    with pytest.raises(ConfigurationError, match="PUBSUB_EMULATOR_HOST") as caught:
        GCPPubSubBackend(project="p-1234")
    assert SECRET not in everything_said(caught.value)


KEY_JSON = json.dumps(
    {
        "type": "service_account",
        "project_id": "p-1234",
        "private_key_id": "abc",
        "private_key": f"-----BEGIN PRIVATE KEY-----\n{SECRET}\n-----END PRIVATE KEY-----\n",
        "client_email": "x@p-1234.iam.gserviceaccount.com",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
)


@pytest.mark.parametrize("where", ["credentials_file", "GOOGLE_APPLICATION_CREDENTIALS"])
def test_key_json_given_for_a_key_file_path_is_refused_without_showing_it(
    where: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The key's text where its path belongs (a secret variable's content): said, never shown."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)
    options: dict[str, str] = {}
    if where == "credentials_file":
        options["credentials_file"] = "  " + KEY_JSON
    else:
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", KEY_JSON)
    with pytest.raises(ConfigurationError) as caught:
        GCPPubSubBackend(project="p-1234", **options)
    said = everything_said(caught.value)
    assert SECRET not in said and SECRET not in caplog.text
    message = str(caught.value)
    assert where in message and "looks like the key's JSON text" in message
    assert "path" in message


def test_a_credentials_failure_during_a_call_is_not_chained() -> None:
    key = f"-----BEGIN PRIVATE KEY-----{SECRET}"
    with pytest.raises(MelangeError) as caught:
        try:
            raise auth_exceptions.RefreshError(f"invalid_grant: {key}")
        except auth_exceptions.RefreshError as error:
            raise_translated(error, CONTEXT)
    # Neither chained nor kept as context: a tool walking __context__ must not find the key.
    assert caught.value.__cause__ is None and caught.value.__context__ is None
    assert SECRET not in everything_said(caught.value)
    assert "RefreshError" in str(caught.value)


def test_a_server_error_page_is_summarised_on_one_line_and_logged_whole_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    page = (
        "<html><head><title>502 Bad Gateway</title></head>\n<body>\n"
        "<h1>Bad Gateway</h1>\n<p>The server encountered a temporary error and could not "
        "complete your request. Please try again in 30 seconds, or contact the operator "
        "of this proxy if the problem persists for long.</p>\n"
        + "padding " * 500
        + "</body></html>"
    )
    caplog.set_level(logging.DEBUG, logger="melange.gcp")
    error = translate(api_exceptions.InternalServerError(page), CONTEXT)
    text = str(error)
    assert isinstance(error, BrokerError) and error.broker_code == "INTERNAL"
    assert "\n" not in text and "<" not in text and "padding padding padding" not in text
    assert "502 Bad Gateway Bad Gateway The server encountered" in text
    assert len(text) < 400, len(text)
    assert "padding " * 500 in caplog.text  # the whole text, for whoever debugs


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Resource not found (resource=orders).", "Resource not found (resource=orders)."),
        ("two\nlines", "two lines"),
        ("", "(no text)"),
        (" ".join(["word"] * 30), " ".join(["word"] * 24) + " ..."),
        ("x" * 500, "x" * 160 + " ..."),
    ],
)
def test_summary(text: str, expected: str) -> None:
    assert summary(text) == expected


def test_repr_and_errors_of_a_backend_name_only_its_endpoint(gcp_project: str) -> None:
    backend = GCPPubSubBackend(project=gcp_project, emulator_host="127.0.0.1:9", timeout=1)
    with backend:
        assert repr(backend) == (
            f"<GCPPubSubBackend 'gcp' project={gcp_project!r} emulator='127.0.0.1:9'>"
        )
        with pytest.raises(MelangeError) as caught:
            backend.get_queue("orders")
    assert "127.0.0.1:9" in str(caught.value) and "\n" not in str(caught.value)
