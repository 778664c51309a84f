"""What errors say, over real HTTP: one line for an error page, no password from a URL.

- An endpoint (or a proxy in front of it) answering HTTP 500 with an HTML page:
  the error says status, code and the first words in one bounded line; the
  whole page is logged at DEBUG.
- A password inside ``endpoint_url``: it appears in no message, repr, chained
  exception or log line, whatever the failure.
"""

from __future__ import annotations

import logging
import socket
import threading
import traceback
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from melange_localsqs import LocalSQSBackend
from melange_localsqs.testing import MotoServer

from melange import MessagingBackendFactory
from melange.backends import load_backend
from melange.backends.base import OutgoingMessage
from melange.exceptions import (
    BackendUnavailable,
    BrokerError,
    ConfigurationError,
    MelangeError,
    OutcomeUnknown,
)
from melange.testing.conformance import ResourceNames
from melange.testing.faults import FaultProxy

PAGE_WORDS = "The server encountered an internal error and was unable to complete your request."
PAGE = (
    "<!DOCTYPE html>\n<html><head><title>500 Internal Server Error</title>"
    "<style>body { font-family: sans-serif; }</style>"
    "<script>var tracking = 'do not show this';</script></head>\n<body>\n"
    f"<h1>Internal Server Error</h1>\n<p>{PAGE_WORDS}</p>\n"
    + "<p>Either the server is overloaded or there is an error in the application.</p>\n" * 40
    + "<p>end of the page &amp; more</p></body></html>"
)
PASSWORD = "Pa55-w0rd-in-the-URL"


class _ErrorPageHandler(BaseHTTPRequestHandler):
    """Answers every request with HTTP 500 and an HTML page, as a broken proxy would."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = PAGE.encode()
        self.send_response(500)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def error_page_endpoint() -> Iterator[str]:
    """``host:port`` of a loopback HTTP server that answers 500 with an HTML page."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ErrorPageHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def assert_one_line_summary(error: MelangeError, limit: int = 400) -> None:
    message = str(error)
    assert "\n" not in message and "<" not in message, message
    assert "HTTP 500" in message and "Internal Server Error" in message
    assert len(message) < limit, len(message)
    assert "do not show this" not in message and "font-family" not in message


# -------------------------------------------------------------- error pages
def test_an_html_error_page_is_summarised_to_one_line(
    error_page_endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    """SQS's JSON protocol gets the page as the error text: one line, the page at DEBUG."""
    backend = LocalSQSBackend(endpoint_url=f"http://{error_page_endpoint}", sns=True)
    with caplog.at_level(logging.DEBUG, logger="melange.aws"), pytest.raises(BrokerError) as failed:
        backend.get_queue("orders")
    assert_one_line_summary(failed.value)
    message = str(failed.value)
    assert message.startswith("SQS failed to look up queue 'orders' (HTTP 500 ")
    assert "The server encountered an internal error" in message and message.endswith("\u2026)")
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("melange.aws")]
    assert any(PAGE_WORDS in line and "end of the page" in line for line in logged), logged
    backend.close()


def test_an_html_error_page_of_sns_names_the_status(error_page_endpoint: str) -> None:
    """SNS's XML protocol makes no code of the page: the status and its phrase say it."""
    backend = LocalSQSBackend(endpoint_url=f"http://{error_page_endpoint}", sns=True)
    with pytest.raises(BrokerError) as failed:
        backend.get_topic("events")
    assert_one_line_summary(failed.value)
    assert "no details" not in str(failed.value)
    backend.close()


def test_a_publish_answered_by_an_error_page_is_unknown_with_the_summary(
    error_page_endpoint: str, moto_server: MotoServer, names: ResourceNames
) -> None:
    """A 5xx does not say nothing was stored: the publish is unknown, summarised."""
    backend = LocalSQSBackend(endpoint_url=f"http://{error_page_endpoint}", sns=True)
    queue = names.queue()
    # The URL as GetQueueUrl would give it, so that publish makes only its own call.
    backend._index.remember_queue(queue, f"{moto_server.endpoint_url}/123456789012/{queue}")
    (result,) = backend.publish(queue, [OutgoingMessage(b"x")])
    assert result.status == "unknown"
    assert isinstance(result.error, OutcomeUnknown)
    assert_one_line_summary(result.error, limit=600)  # what "unknown" means takes words
    assert str(result.error).count("The server encountered") == 1
    backend.close()


@pytest.fixture
def names() -> ResourceNames:
    return ResourceNames()


# -------------------------------------------------------- URL credentials
def assert_nowhere(secret: str, error: BaseException, log: str) -> None:
    """``secret`` is in no text of ``error``, of any exception chained to it, nor in ``log``."""
    texts = [str(error), repr(error), "".join(traceback.format_exception(error)), log]
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending:  # every cause and context, also those a traceback would not print
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        texts += [str(current), repr(current), *(repr(a) for a in current.args)]
        pending += [e for e in (current.__cause__, current.__context__) if e is not None]
    for text in texts:
        assert secret not in text, text


def capture_melange_logs(caplog: pytest.LogCaptureFixture) -> None:
    for name in ("melange", "melange_aws", "melange_localsqs"):
        caplog.set_level(logging.DEBUG, logger=name)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"endpoint_url": f"ftp://admin:{PASSWORD}@localhost:4566"}, id="not-http"),
        pytest.param({"endpoint_url": f"admin:{PASSWORD}@localhost:4566"}, id="no-scheme"),
        pytest.param({"endpoint_url": f"http://admin:{PASSWORD}@local host:4566"}, id="bad-host"),
        pytest.param({"endpoint_url": f"http://admin:{PASSWORD}@localhost:45x66"}, id="bad-port"),
        pytest.param({"host": f"admin:{PASSWORD}@localhost"}, id="user-info-as-host"),
        pytest.param({"endpoint_url": f"ftp://localhost:4566/?token={PASSWORD}"}, id="query-ftp"),
        pytest.param(
            {"endpoint_url": f"http://local host:4566/?token={PASSWORD}"}, id="query-bad-host"
        ),
    ],
)
def test_a_malformed_endpoint_holding_a_password_is_refused_without_showing_it(
    options: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    capture_melange_logs(caplog)
    with pytest.raises(ConfigurationError) as refused:
        load_backend("localsqs", **options)
    assert_nowhere(PASSWORD, refused.value, caplog.text)
    assert "***" in str(refused.value) or "host must be" in str(refused.value), refused.value


SECRET_URLS = [
    pytest.param(lambda where: f"http://admin:{PASSWORD}@{where}", id="password"),
    # A token in the query string (a proxy's) is as secret as a password.
    pytest.param(lambda where: f"http://{where}/?token={PASSWORD}", id="query-token"),
]


@pytest.mark.parametrize("secret_url", SECRET_URLS)
def test_a_password_in_the_endpoint_url_never_shows_when_nothing_listens(
    caplog: pytest.LogCaptureFixture, secret_url: Callable[[str], str]
) -> None:
    """load_backend with ``http://admin:<password>@host:port`` (or ``?token=``) and nothing there.

    Before, the chained EndpointConnectionError quoted the whole URL.
    """
    capture_melange_logs(caplog)
    url = secret_url(f"127.0.0.1:{closed_port()}")
    backend = load_backend("localsqs", endpoint_url=url, max_attempts=1)
    assert PASSWORD not in repr(backend)
    calls = [
        lambda: backend.get_queue("orders"),
        lambda: backend.publish("orders", [OutgoingMessage(b"x")]),
        lambda: backend.publish_to_topic("events", [OutgoingMessage(b"x")]),
        lambda: MessagingBackendFactory(backend).init_queue("orders", ["events"]),
    ]
    for call in calls:
        with pytest.raises(BackendUnavailable) as unavailable:
            call()
        assert "cannot reach the" in str(unavailable.value)
        assert_nowhere(PASSWORD, unavailable.value, caplog.text)
    backend.close()


@pytest.mark.parametrize("secret_url", SECRET_URLS)
def test_a_password_in_the_endpoint_url_never_shows_after_a_timeout(
    moto_server: MotoServer,
    names: ResourceNames,
    caplog: pytest.LogCaptureFixture,
    secret_url: Callable[[str], str],
) -> None:
    """botocore's ReadTimeoutError and ConnectionClosedError quote the URL too."""
    capture_melange_logs(caplog)
    direct = LocalSQSBackend(endpoint_url=moto_server.endpoint_url, sns=True)
    queue = names.queue()
    MessagingBackendFactory(direct).init_queue(queue)
    with FaultProxy(moto_server.host, moto_server.port, lifetime=60) as proxy:
        backend = LocalSQSBackend(
            endpoint_url=secret_url(proxy.address),
            sns=True,
            connect_timeout=1,
            read_timeout=1,
            max_attempts=1,
        )
        backend.get_queue(queue)
        for fault in (proxy.stall, proxy.cut):
            fault()
            (result,) = backend.publish(queue, [OutgoingMessage(b"x")])
            assert isinstance(result.error, OutcomeUnknown)
            assert_nowhere(PASSWORD, result.error, caplog.text)
            proxy.heal()
        for fault in (proxy.stall, proxy.cut):
            fault()
            with pytest.raises(BackendUnavailable) as unavailable:
                backend.receive(queue, wait_seconds=0)
            assert_nowhere(PASSWORD, unavailable.value, caplog.text)
            proxy.heal()
        backend.close()
    direct.close()


@pytest.mark.parametrize("secret_url", SECRET_URLS)
def test_a_password_in_the_endpoint_url_never_shows_in_broker_errors(
    error_page_endpoint: str, caplog: pytest.LogCaptureFixture, secret_url: Callable[[str], str]
) -> None:
    """Nor in the summary of an error page, nor in the page logged at DEBUG."""
    capture_melange_logs(caplog)
    backend = LocalSQSBackend(
        endpoint_url=secret_url(error_page_endpoint), sns=False, max_attempts=1
    )
    with pytest.raises(BrokerError) as failed:
        backend.get_queue("orders")
    assert_nowhere(PASSWORD, failed.value, caplog.text)
    with pytest.raises(MelangeError) as unsupported:
        MessagingBackendFactory(backend).init_queue("orders", ["events"])  # says why: no SNS
    assert_nowhere(PASSWORD, unsupported.value, caplog.text)
    backend.close()
