"""botocore errors translated into melange's exceptions, with AWS's code kept and no secret."""

from __future__ import annotations

import dataclasses
import logging
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from botocore import exceptions as botocore_errors
from melange_aws import AWSBackend
from melange_aws.errors import (
    SUMMARY_LIMIT,
    ErrorContext,
    entry_error,
    is_sensitive,
    raise_translated,
    safe_endpoint,
    scrub,
    summarize,
    translate,
    url_secrets,
)

from melange.exceptions import (
    BackendUnavailable,
    BrokerError,
    InvalidMessage,
    MelangeError,
    MessageTooLarge,
    QueueNotFound,
    TopicNotFound,
)

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
KEY_ID = "AKIAIOSFODNN7EXAMPLE"
CONTEXT = ErrorContext(
    action="publish to queue 'orders'",
    endpoint="https://sqs.eu-west-1.amazonaws.com",
    queue="orders",
    topic="events",
    secrets=(KEY_ID, SECRET),
)


def client_error(code: str, message: str = "details", operation: str = "Op") -> Exception:
    """A ClientError as botocore raises it for an AWS error response."""
    response = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {}}
    return botocore_errors.ClientError(response, operation)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("AWS.SimpleQueueService.NonExistentQueue", QueueNotFound),
        ("QueueDoesNotExist", QueueNotFound),
        ("NotFound", TopicNotFound),
        ("InvalidClientTokenId", BackendUnavailable),
        ("SignatureDoesNotMatch", BackendUnavailable),
        ("AccessDenied", BackendUnavailable),
        ("AuthorizationError", BackendUnavailable),
        ("ExpiredToken", BackendUnavailable),
        ("ThrottlingException", BackendUnavailable),
        ("AWS.SimpleQueueService.BatchRequestTooLong", BrokerError),
        ("AWS.SimpleQueueService.QueueDeletedRecently", BrokerError),
        ("InvalidParameterValue", BrokerError),
        ("SomethingNew", BrokerError),
    ],
)
def test_client_errors_become_the_specific_melange_error_keeping_the_code(
    code: str, expected: type[MelangeError]
) -> None:
    """Each AWS code maps to its melange class, and broker_code is AWS's code."""
    error = translate(client_error(code), CONTEXT)
    assert type(error) is expected
    assert error.broker_code == code


def test_missing_resources_name_the_resource() -> None:
    """QueueNotFound and TopicNotFound name what is missing and how to create it."""
    queue = translate(client_error("QueueDoesNotExist"), CONTEXT)
    topic = translate(client_error("NotFound"), CONTEXT)
    assert isinstance(queue, QueueNotFound) and queue.name == "orders"
    assert "init_queue('orders')" in str(queue)
    assert isinstance(topic, TopicNotFound) and topic.name == "events"


def test_a_missing_queue_code_without_a_queue_is_a_broker_error() -> None:
    """Without a queue in the context there is nothing to name: a BrokerError keeps the code."""
    error = translate(client_error("QueueDoesNotExist"), ErrorContext("list", "https://x"))
    assert type(error) is BrokerError and error.broker_code == "QueueDoesNotExist"


def test_size_refusals_become_message_too_large_when_the_size_is_known() -> None:
    """A size refusal of a message whose size is known is MessageTooLarge with AWS's limit."""
    sized = dataclasses.replace(CONTEXT, size=300_000)
    error = entry_error("InvalidParameter", "Invalid parameter: Message too long", sized)
    assert isinstance(error, MessageTooLarge)
    assert (error.size, error.limit, error.broker_code) == (300_000, 262_144, "InvalidParameter")
    unsized = entry_error("AWS.SimpleQueueService.BatchRequestTooLong", "too long", CONTEXT)
    assert type(unsized) is BrokerError and "too large" in str(unsized)


def test_unknown_refusals_say_what_was_attempted_and_what_aws_said() -> None:
    """A BrokerError names the action, AWS's code and AWS's message."""
    error = translate(client_error("InvalidParameterValue", "Value x is invalid"), CONTEXT)
    message = str(error)
    assert "publish to queue 'orders'" in message
    assert "InvalidParameterValue" in message and "Value x is invalid" in message


def test_credential_refusals_give_the_fix_and_never_aws_text() -> None:
    """Credential errors carry the code and a fix, not AWS's text (which may quote the key)."""
    error = translate(
        client_error("InvalidClientTokenId", f"The security token {KEY_ID} is invalid"), CONTEXT
    )
    message = str(error)
    assert "InvalidClientTokenId" in message and "AWS_PROFILE" in message
    assert KEY_ID not in message and "security token" not in message


def test_throttling_after_retries_suggests_max_attempts() -> None:
    """Throttling that outlasted botocore's retries says so and names max_attempts."""
    message = str(translate(client_error("ThrottlingException", "Rate exceeded"), CONTEXT))
    assert "max_attempts" in message and "retries" in message


@pytest.mark.parametrize(
    "error",
    [
        botocore_errors.EndpointConnectionError(endpoint_url="http://localhost:4566"),
        botocore_errors.ConnectTimeoutError(endpoint_url="http://localhost:4566"),
    ],
)
def test_unreachable_endpoints_are_backend_unavailable_naming_the_endpoint(
    error: Exception,
) -> None:
    """A connection failure names the endpoint tried and the hint of the backend."""
    context = ErrorContext(
        "receive from queue 'q'",
        "http://user:pw@localhost:4566/?token=t",
        unreachable_hint="Start LocalStack.",
    )
    translated = translate(error, context)
    assert isinstance(translated, BackendUnavailable)
    message = str(translated)
    assert "http://localhost:4566" in message and "Start LocalStack." in message
    assert "pw" not in message and "token" not in message


def test_unreachable_endpoints_are_named_by_service_not_as_aws() -> None:
    """What was tried is an SQS (or SNS, STS) endpoint, which may well be local."""
    error = botocore_errors.EndpointConnectionError(endpoint_url="http://127.0.0.1:4566")
    context = ErrorContext("look up queue 'q'", "http://127.0.0.1:4566", service="SQS")
    message = str(translate(error, context))
    assert message.startswith(
        "cannot reach the SQS endpoint http://127.0.0.1:4566 to look up queue 'q' "
        "(EndpointConnectionError). "
    )
    assert "AWS at" not in message


@pytest.mark.parametrize(
    ("code", "start"),
    [
        ("InvalidParameterValue", "SNS refused to publish to queue 'orders' (InvalidParameter"),
        ("AccessDenied", "SNS refused to publish to queue 'orders' (AccessDenied)"),
        ("ThrottlingException", "SNS at https://sqs.eu-west-1.amazonaws.com could not publish"),
        ("AWS.SimpleQueueService.QueueDeletedRecently", "SNS refused to publish"),
        ("AWS.SimpleQueueService.BatchRequestTooLong", "SNS refused to publish"),
    ],
)
def test_refusals_name_the_service(code: str, start: str) -> None:
    """Every refusal names the service of the context rather than "AWS"."""
    context = dataclasses.replace(CONTEXT, service="SNS")
    assert str(translate(client_error(code), context)).startswith(start)


@pytest.mark.parametrize(
    "error",
    [
        botocore_errors.NoCredentialsError(),
        botocore_errors.PartialCredentialsError(provider="env", cred_var="AWS_SECRET_ACCESS_KEY"),
    ],
)
def test_missing_credentials_are_backend_unavailable_with_the_fix(error: Exception) -> None:
    """No (or partial) credentials say how to configure them."""
    translated = translate(error, CONTEXT)
    assert isinstance(translated, BackendUnavailable)
    assert "AWS_ACCESS_KEY_ID" in str(translated) and "profile_name" in str(translated)


def test_parameter_errors_are_invalid_messages() -> None:
    """Parameters botocore itself refuses become InvalidMessage."""
    error = botocore_errors.ParamValidationError(report="Invalid length for parameter Id")
    assert isinstance(translate(error, CONTEXT), InvalidMessage)


def test_sensitive_errors_are_not_chained() -> None:
    """Credential errors drop the botocore cause, so no traceback shows AWS's text."""
    original = client_error("SignatureDoesNotMatch", f"canonical request with {KEY_ID}")
    assert is_sensitive(original)
    with pytest.raises(BackendUnavailable) as caught:
        raise_translated(original, CONTEXT)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    printed = "".join(traceback.format_exception(caught.value))
    assert KEY_ID not in printed and SECRET not in printed


def test_errors_quoting_a_secret_are_not_chained_either() -> None:
    """An error whose AWS text happens to contain a credential is not chained."""
    quoting = client_error("InvalidParameterValue", f"bad value {SECRET}")
    assert is_sensitive(quoting, (SECRET,))
    with pytest.raises(BrokerError) as caught:
        raise_translated(quoting, CONTEXT)
    assert caught.value.__cause__ is None
    assert SECRET not in "".join(traceback.format_exception(caught.value))


def test_other_errors_keep_the_botocore_cause() -> None:
    """Non-sensitive errors are chained to the botocore error, for debugging."""
    original = client_error("InvalidParameterValue")
    assert not is_sensitive(original)
    with pytest.raises(BrokerError) as caught:
        raise_translated(original, CONTEXT)
    assert caught.value.__cause__ is original


def test_scrub_removes_secrets_and_access_key_ids() -> None:
    """Given secrets and anything shaped like an access key id are redacted."""
    text = f"key {KEY_ID} secret {SECRET} temp ASIAABCDEFGHIJKLMNOP user AIDAEXAMPLEUSERID1"
    scrubbed = scrub(text, (SECRET,))
    assert KEY_ID not in scrubbed and SECRET not in scrubbed and "ASIA" not in scrubbed
    assert "AIDAEXAMPLEUSERID1" in scrubbed  # user ids are not credentials


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://localhost:4566", "http://localhost:4566"),
        (
            "https://me:secret@proxy.example:8443/sqs?X-Amz-Security-Token=t",
            "https://proxy.example:8443/sqs",
        ),
        (None, "the default AWS endpoint"),
    ],
)
def test_safe_endpoint_drops_user_info_and_query(url: str | None, shown: str) -> None:
    """Endpoints in messages never carry user info or query strings."""
    assert safe_endpoint(url) == shown


# ------------------------------------------------------------- summaries
HTML_PAGE = (
    "<!DOCTYPE html><html><head><title>502 Bad Gateway</title>"
    "<style>h1 { color: red }</style><script>secretTracking()</script></head>"
    "<body><h1>Bad&nbsp;Gateway</h1><p>The proxy got no valid answer &amp; gave up.</p>"
    + "<p>filler text</p>" * 200
    + "</body></html>"
)


def test_an_html_page_is_summarised_to_one_bounded_line() -> None:
    """Tags, scripts and styles go, entities are decoded, the text is cut at a word."""
    summary = summarize(HTML_PAGE)
    assert summary.startswith("502 Bad Gateway Bad Gateway The proxy got no valid answer & gave")
    assert len(summary) <= SUMMARY_LIMIT and summary.endswith("\u2026")
    assert "<" not in summary and "secretTracking" not in summary and "color" not in summary


def test_short_texts_stay_as_they_are_on_one_line() -> None:
    """AWS's own messages are short: only their whitespace is collapsed."""
    assert summarize("Value x for parameter\n  Id is invalid.") == (
        "Value x for parameter Id is invalid."
    )
    assert summarize("Queue <name> is bad") == "Queue <name> is bad"  # not markup


def test_an_error_page_names_the_http_status_and_is_logged_whole_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 5xx without an AWS code: "HTTP 502 Bad Gateway: first words", the page at DEBUG."""
    response = {
        "Error": {"Code": "502", "Message": HTML_PAGE},
        "ResponseMetadata": {"HTTPStatusCode": 502},
    }
    with caplog.at_level(logging.DEBUG, logger="melange.aws"):
        error = translate(botocore_errors.ClientError(response, "SendMessageBatch"), CONTEXT)
    message = str(error)
    assert type(error) is BrokerError and error.broker_code == "502"
    assert message.startswith(
        "AWS failed to publish to queue 'orders' (HTTP 502 Bad Gateway: 502 Bad Gateway "
    )
    assert "\n" not in message and len(message) < 300
    assert any("filler text" in record.getMessage() for record in caplog.records)


class _ProxyPage(BaseHTTPRequestHandler):
    """A proxy answering every request with an HTML 502 page (``page`` per server)."""

    page = b""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(502)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(self.page)))
        self.end_headers()
        self.wfile.write(self.page)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(
    ("start", "said", "logged"),
    [
        ("<!DOCTYPE html>", "(HTTP 502 Bad Gateway: 502 Bad Gateway Bad Gateway The proxy", True),
        # botocore replaces a page starting with <html> by the status's reason phrase.
        ("", "(HTTP 502 Bad Gateway: Bad Gateway)", False),
    ],
    ids=["doctype", "html"],
)
def test_a_proxy_page_over_http_reads_as_the_aws_page_says(
    aws_environment: None, caplog: pytest.LogCaptureFixture, start: str, said: str, logged: bool
) -> None:
    page = (start + HTML_PAGE.removeprefix("<!DOCTYPE html>")).encode()
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Page", (_ProxyPage,), {"page": page}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    backend = AWSBackend(endpoint_url=url, max_attempts=1)
    try:
        with (
            caplog.at_level(logging.DEBUG, logger="melange.aws.errors"),
            pytest.raises(BrokerError) as failed,
        ):
            backend.get_queue("orders")
    finally:
        backend.close()
        server.shutdown()
        server.server_close()
    assert str(failed.value).startswith(f"SQS failed to look up queue 'orders' {said}")
    texts = [r.getMessage() for r in caplog.records if r.name == "melange.aws.errors"]
    assert any("filler text" in text for text in texts) is logged


def test_a_regular_aws_error_keeps_its_usual_form() -> None:
    """A 4xx with an AWS code reads as before: code and text, no status."""
    response = {
        "Error": {"Code": "InvalidParameterValue", "Message": "Value x is invalid"},
        "ResponseMetadata": {"HTTPStatusCode": 400},
    }
    error = translate(botocore_errors.ClientError(response, "GetQueueUrl"), CONTEXT)
    assert str(error) == (
        "AWS refused to publish to queue 'orders' (InvalidParameterValue: Value x is invalid)"
    )


def test_a_failed_batch_entry_is_summarised_too() -> None:
    """Per-message refusals quote at most a line of AWS's text."""
    error = entry_error("InternalError", "x " * 500, CONTEXT)
    assert len(str(error)) < 400


# ------------------------------------------------------- connection errors
@pytest.mark.parametrize(
    ("error", "said"),
    [
        (
            botocore_errors.ReadTimeoutError(endpoint_url="http://localhost:4566"),
            "no answer within 7 s (the read timeout)",
        ),
        (
            botocore_errors.ConnectionClosedError(endpoint_url="http://localhost:4566"),
            "the connection was closed or reset before an answer came",
        ),
    ],
)
def test_a_silent_or_closed_connection_is_not_called_unreachable(
    error: Exception, said: str
) -> None:
    """Something took the connection: "nothing answers there" (the hint) would mislead."""
    context = ErrorContext(
        "receive from queue 'q'",
        "http://localhost:4566",
        unreachable_hint="Start LocalStack.",
        read_timeout=7.0,
    )
    translated = translate(error, context)
    assert isinstance(translated, BackendUnavailable)
    message = str(translated)
    assert said in message and "Start LocalStack." not in message
    assert "read_timeout or max_attempts" in message


# ------------------------------------------------------------ URL secrets
@pytest.mark.parametrize(
    ("url", "secrets"),
    [
        ("http://localhost:4566", ()),
        ("http://admin:pw@127.0.0.1:4566", ("admin:pw", "pw")),
        ("http://token@host", ("token",)),
        ("http://us%40er:p%3Ass@host", ("us%40er:p%3Ass", "p%3Ass", "us@er:p:ss", "p:ss")),
        ("http://host/?token=t%2Bk", ("token=t%2Bk", "token=t+k")),
        ("http://a:pw@host/sqs?sig=s", ("a:pw", "pw", "sig=s")),
        (None, ()),
    ],
)
def test_the_user_info_of_an_endpoint_url_is_secret(
    url: str | None, secrets: tuple[str, ...]
) -> None:
    """User info, password and query, as written and decoded; a user name before a password not."""
    assert url_secrets(url) == secrets


def test_an_error_whose_cause_quotes_a_secret_is_sensitive() -> None:
    """The whole chain counts: a clean error caused by one that quotes the password."""
    try:
        try:
            raise OSError("connecting to http://admin:hunter2@host failed")
        except OSError as inner:
            raise botocore_errors.HTTPClientError(error="broken") from inner
    except botocore_errors.HTTPClientError as outer:
        assert is_sensitive(outer, ("hunter2",))
        assert not is_sensitive(outer, ("other",))


def test_a_sensitive_error_leaves_no_context_either() -> None:
    """Not even ``__context__`` (which ``from None`` only hides) reaches the botocore error."""
    original = botocore_errors.EndpointConnectionError(
        endpoint_url="http://admin:hunter2@localhost:4566"
    )
    context = ErrorContext(
        "look up queue 'q'",
        "http://admin:hunter2@localhost:4566",
        secrets=url_secrets("http://admin:hunter2@localhost:4566"),
    )
    try:
        try:
            raise original
        except botocore_errors.EndpointConnectionError as error:
            raise_translated(error, context)
    except BackendUnavailable as translated:
        assert translated.__cause__ is None and translated.__context__ is None
        assert "hunter2" not in "".join(traceback.format_exception(translated))
