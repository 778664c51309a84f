"""LocalSQSBackend's own behaviour: defaults, options, the SNS question, unreachable endpoints.

Tests that take the ``endpoint_url`` fixture run against every emulator of the
session (a moto server, and LocalStack when MELANGE_LOCALSTACK_ENDPOINT is set).
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import melange_localsqs
import melange_localsqs.backend
import pytest
from botocore.retries.standard import ExponentialBackoff
from melange_aws import AWSBackend
from melange_localsqs import LocalSQSBackend

from melange import MessagingBackendFactory
from melange.backends import describe_backends, load_backend, load_backend_from_config
from melange.backends.base import OutgoingMessage
from melange.exceptions import (
    BackendUnavailable,
    BrokerError,
    ConfigurationError,
    MelangeError,
    UnsupportedCapability,
)
from melange.testing.conformance import ResourceNames, drain


# ------------------------------------------------------------------ helpers
@pytest.fixture
def clean_aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No AWS_* variable and no AWS config file of this machine takes part."""
    for variable in list(os.environ):
        if variable.startswith(("AWS_", "MELANGE_")):
            monkeypatch.delenv(variable)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))


@pytest.fixture
def names() -> ResourceNames:
    return ResourceNames()


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def signed_access_keys(backend: AWSBackend) -> list[str]:
    """Record the access key id of every request the backend's clients sign from now on."""
    seen: list[str] = []

    def record(request: Any, **_: Any) -> None:
        authorization = request.headers.get("Authorization", b"")
        if isinstance(authorization, bytes):
            authorization = authorization.decode()
        seen.append(authorization.split("Credential=")[1].split("/")[0])

    for client in (backend.sqs_client, backend.sns_client):
        client.meta.events.register("before-send", record)
    return seen


def requests_sent(backend: AWSBackend) -> list[str]:
    """Record the name of every API call the backend's clients make from now on."""
    calls: list[str] = []
    for client in (backend.sqs_client, backend.sns_client):
        client.meta.events.register("before-call", lambda model, **_: calls.append(model.name))
    return calls


class _NoSNSHandler(BaseHTTPRequestHandler):
    """Answers every request the way an endpoint without SNS does (set per server)."""

    status = 400
    code = "InvalidAction"
    message = "not here"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("X-Amz-Target"):  # SQS's JSON protocol
            content_type = "application/x-amz-json-1.0"
            body = json.dumps({"__type": f"com.amazonaws.sqs#{self.code}", "message": self.message})
        else:  # SNS's query protocol
            content_type = "text/xml"
            body = (
                "<ErrorResponse><Error><Type>Sender</Type>"
                f"<Code>{self.code}</Code><Message>{self.message}</Message></Error>"
                "<RequestId>1</RequestId></ErrorResponse>"
            )
        self.send_response(self.status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body.encode())))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stub_endpoint(request: pytest.FixtureRequest) -> Iterator[str]:
    """An HTTP endpoint answering every call with ``request.param`` = (status, code[, message])."""
    status, code, *message = request.param
    attributes = {"status": status, "code": code, "message": message[0] if message else "not here"}
    handler = type("Handler", (_NoSNSHandler,), attributes)
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _UnavailableHandler(BaseHTTPRequestHandler):
    """Answers every request with an empty HTTP 503, recording its body (``requests``)."""

    requests: list[bytes]

    def do_POST(self) -> None:
        self.requests.append(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def unavailable_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, list[bytes]]]:
    """An endpoint answering 503 to everything, and its requests; botocore retries at once."""
    requests: list[bytes] = []
    handler = type("Handler", (_UnavailableHandler,), {"requests": requests})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    # botocore's backoff between attempts (up to seconds) only slows the count down.
    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda self, context: 0)
    yield f"http://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()
    server.server_close()


# ------------------------------------------------------------------ defaults
def test_no_arguments_means_localstack_defaults(clean_aws_environment: None) -> None:
    backend = LocalSQSBackend()
    assert backend.endpoint_url == "http://localhost:4566"
    assert backend.sns_endpoint_url == "http://localhost:4566"
    assert backend.region_name == "us-east-1"
    assert backend.name == "localsqs"
    backend.close()


def test_machine_aws_settings_do_not_leak_into_a_local_backend(
    monkeypatch: pytest.MonkeyPatch, endpoint_url: str, names: ResourceNames
) -> None:
    # Real-looking settings for AWS: a profile that does not exist, another endpoint and region.
    monkeypatch.setenv("AWS_PROFILE", "production-profile-that-does-not-exist")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAREALKEYREALKEY12")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "real/secret")
    backend = LocalSQSBackend(endpoint_url=endpoint_url)
    keys = signed_access_keys(backend)
    MessagingBackendFactory(backend).init_queue(names.queue())
    assert backend.region_name == "us-east-1"
    assert keys and set(keys) == {"test"}  # the dummy key, never the machine's
    names.cleanup(backend)
    backend.close()


@pytest.mark.parametrize("where", ["AWS_MAX_ATTEMPTS", "AWS_CONFIG_FILE"])
def test_machine_aws_retry_settings_do_not_apply_to_a_local_backend(
    clean_aws_environment: None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    unavailable_endpoint: tuple[str, list[bytes]],
    where: str,
) -> None:
    if where == "AWS_MAX_ATTEMPTS":
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "7")
    else:
        config = tmp_path / "aws-config"
        config.write_text("[default]\nmax_attempts = 7\nretry_mode = legacy\n")
        monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    url, requests = unavailable_endpoint
    # The setting is in effect: AWSBackend follows it, as documented.
    aws = AWSBackend(
        endpoint_url=url, region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s"
    )
    with pytest.raises(MelangeError):
        aws.get_queue("orders")
    assert len(requests) == 7
    requests.clear()
    local = LocalSQSBackend(endpoint_url=url, sns=True)
    with pytest.raises(MelangeError):
        local.get_queue("orders")
    assert len(requests) == 3  # botocore's default, as documented
    requests.clear()
    chosen = LocalSQSBackend(endpoint_url=url, sns=True, max_attempts=2)
    with pytest.raises(MelangeError):
        chosen.get_queue("orders")
    assert len(requests) == 2
    for backend in (aws, local, chosen):
        backend.close()


def test_host_and_port_build_the_endpoint(clean_aws_environment: None) -> None:
    assert LocalSQSBackend(port=9324).endpoint_url == "http://localhost:9324"
    assert LocalSQSBackend(host="sqs.internal").endpoint_url == "http://sqs.internal:4566"
    assert LocalSQSBackend(host="::1", port=4599).endpoint_url == "http://[::1]:4599"


@pytest.mark.parametrize(
    ("host", "fix"),
    [
        ("localhost:4566", "host='localhost', port=4566"),
        ("127.0.0.1:9324", "host='127.0.0.1', port=9324"),
        ("[::1]:4599", "host='::1', port=4599"),
    ],
)
def test_a_port_in_host_is_refused_naming_the_port_option(
    clean_aws_environment: None, host: str, fix: str
) -> None:
    with pytest.raises(ConfigurationError) as refused:
        LocalSQSBackend(host=host)
    message = str(refused.value)
    assert message.startswith(f"host must be a host name or address without a port, got {host!r}")
    assert fix in message
    assert "endpoint_url must" not in message  # an option that was not passed


def test_a_bracketed_ipv6_host_is_taken_as_it_is(clean_aws_environment: None) -> None:
    assert LocalSQSBackend(host="[::1]").endpoint_url == "http://[::1]:4566"


def test_endpoint_url_overrides_host_and_port(clean_aws_environment: None) -> None:
    backend = LocalSQSBackend(host="ignored", port=1, endpoint_url="http://127.0.0.1:5000")
    assert backend.endpoint_url == "http://127.0.0.1:5000"
    separate = LocalSQSBackend(sns_endpoint_url="http://127.0.0.1:5001")
    assert (separate.endpoint_url, separate.sns_endpoint_url) == (
        "http://localhost:4566",
        "http://127.0.0.1:5001",
    )


# host="http://localhost" and port="4566" are melange 7.x's form: they work, with a warning
# (test_localsqs_7x_keywords.py).
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"host": ""}, "host must be a host name"),
        ({"port": 0}, "port must be a whole number from 1 to 65535"),
        ({"port": 70000}, "port must be a whole number from 1 to 65535"),
        ({"sns": "no"}, "sns must be True, False or None"),
        ({"endpoint_url": "localhost:4566"}, "endpoint_url must be an http:// or https:// URL"),
        ({"aws_access_key_id": ""}, "aws_access_key_id must be a non-empty string"),
        ({"aws_session_token": ""}, "aws_session_token must be a non-empty string"),
    ],
)
def test_malformed_options_are_refused(
    clean_aws_environment: None, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        LocalSQSBackend(**options)


def test_found_by_name_and_by_import(clean_aws_environment: None) -> None:
    from melange.backends import LocalSQSBackend as resolved

    assert resolved is LocalSQSBackend is melange_localsqs.LocalSQSBackend
    backend = load_backend("localsqs", port=4599, sns=False)
    assert isinstance(backend, LocalSQSBackend)
    assert backend.endpoint_url == "http://localhost:4599"


def test_configured_from_the_environment(
    clean_aws_environment: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MELANGE_BACKEND", "localsqs")
    monkeypatch.setenv("MELANGE_OPTION_PORT", "9324")  # strings become the declared types
    monkeypatch.setenv("MELANGE_OPTION_SNS", "false")
    backend = load_backend_from_config()
    assert isinstance(backend, LocalSQSBackend)
    assert backend.endpoint_url == "http://localhost:9324"
    assert backend.capabilities.topics is False


def test_the_class_lists_every_capability() -> None:
    # `melange backends` reads capabilities from the class: the implementation's full set.
    info = {row.name: row for row in describe_backends()}["localsqs"]
    assert info.error is None and info.capabilities is not None
    assert info.capabilities == AWSBackend.capabilities
    assert LocalSQSBackend.capabilities.topics


# ------------------------------------------------------------- the SNS question
def test_an_endpoint_with_sns_supports_topics(endpoint_url: str) -> None:
    backend = LocalSQSBackend(endpoint_url=endpoint_url)
    assert backend.capabilities.topics and backend.capabilities.filters
    calls = requests_sent(backend)
    assert backend.capabilities.topics
    assert calls == []  # asked once, then remembered
    backend.close()


def _assert_topics_refused(backend: LocalSQSBackend, names: ResourceNames, why: str) -> None:
    factory = MessagingBackendFactory(backend)
    assert backend.capabilities.topics is False
    assert backend.capabilities.filters is False
    with pytest.raises(UnsupportedCapability, match=why) as refused:
        factory.init_topic(names.topic())
    assert (refused.value.backend_name, refused.value.capability) == ("localsqs", "topics")
    assert "'localsqs'" in str(refused.value)
    queue = names.queue()
    # The contract checks the topics of a subscription first (check_topic).
    with pytest.raises(UnsupportedCapability, match="needed for topic"):
        factory.init_queue(queue, [names.topic()])
    assert backend.get_queue(queue) is None  # refused before anything was created


def test_sqs_only_endpoint_reports_topics_unsupported(
    endpoint_url: str, names: ResourceNames
) -> None:
    # An SNS endpoint where nothing listens, next to a working SQS: as with ElasticMQ.
    sns_url = f"http://127.0.0.1:{closed_port()}"
    backend = LocalSQSBackend(endpoint_url=endpoint_url, sns_endpoint_url=sns_url)
    _assert_topics_refused(backend, names, f"nothing answers at the SNS endpoint {sns_url}")
    # Queues still work in full.
    queue = names.queue()
    MessagingBackendFactory(backend).init_queue(queue, dead_letter_queue_name=names.queue("dlq"))
    backend.publish(queue, [OutgoingMessage(b"queues only", {"kind": "test"})])
    received = drain(backend, queue, 1)
    assert [(m.body, dict(m.attributes)) for m in received] == [(b"queues only", {"kind": "test"})]
    names.cleanup(backend)
    backend.close()


@pytest.mark.parametrize(
    "stub_endpoint",
    [(400, "InvalidAction"), (501, "InternalFailure"), (404, "NotFound")],
    ids=["elasticmq-invalid-action", "localstack-service-not-enabled", "not-found"],
    indirect=True,
)
def test_endpoint_answering_without_sns_reports_topics_unsupported(
    moto_server: Any, stub_endpoint: str, names: ResourceNames
) -> None:
    backend = LocalSQSBackend(endpoint_url=moto_server.endpoint_url, sns_endpoint_url=stub_endpoint)
    _assert_topics_refused(backend, names, f"the endpoint {stub_endpoint} has no SNS")
    backend.close()


@pytest.mark.parametrize(
    "stub_endpoint", [(403, "InvalidClientTokenId")], ids=["auth-error"], indirect=True
)
def test_an_sns_error_answer_still_means_sns_is_there(stub_endpoint: str) -> None:
    backend = LocalSQSBackend(endpoint_url=stub_endpoint)
    assert backend.capabilities.topics is True
    backend.close()


def test_the_sns_question_is_one_request_not_retried(
    clean_aws_environment: None, unavailable_endpoint: tuple[str, list[bytes]]
) -> None:
    url, requests = unavailable_endpoint
    backend = LocalSQSBackend(endpoint_url=url, max_attempts=5)
    assert backend.capabilities.topics is True  # an answer, if a 503: something serves SNS
    assert [body.split(b"&")[0] for body in requests] == [b"Action=ListTopics"]
    backend.close()


def test_sns_false_declares_an_sqs_only_endpoint_without_asking(
    moto_server: Any, names: ResourceNames
) -> None:
    backend = LocalSQSBackend(endpoint_url=moto_server.endpoint_url, sns=False)
    calls = requests_sent(backend)
    _assert_topics_refused(backend, names, "sns=False was passed")
    assert "ListTopics" not in calls
    backend.close()


def test_sns_true_skips_the_question() -> None:
    backend = LocalSQSBackend(port=closed_port(), sns=True)
    calls = requests_sent(backend)
    assert backend.capabilities.topics is True
    assert calls == []
    backend.close()


# ------------------------------------------------------- unreachable endpoints
def test_nothing_listening_names_the_endpoint_and_how_to_start_one(
    clean_aws_environment: None,
) -> None:
    port = closed_port()
    backend = LocalSQSBackend(port=port)
    started = time.monotonic()
    assert backend.capabilities.topics is True  # unknown: assumed, the call below says why
    with pytest.raises(BackendUnavailable) as unavailable:
        MessagingBackendFactory(backend).init_queue("orders", ["order-events"])
    message = str(unavailable.value)
    # Named by the service tried first (the plan looks the topic up before the queue).
    assert re.search(f"cannot reach the (SNS|SQS) endpoint http://localhost:{port} to ", message)
    assert "cannot reach AWS" not in message
    for how in ("localstack start", "localstack/localstack", "python -m moto.server -p 4566"):
        assert how in message
    assert "ElasticMQ" in message and "sns=False" in message
    with pytest.raises(BackendUnavailable, match=f"the SQS endpoint http://localhost:{port}"):
        backend.publish("orders", [OutgoingMessage(b"x")])
    with pytest.raises(BackendUnavailable) as unavailable:
        backend.publish_to_topic("order-events", [OutgoingMessage(b"x")])
    message = str(unavailable.value)
    assert f"cannot reach the SNS endpoint http://localhost:{port} to " in message
    assert "localstack start" in message
    assert time.monotonic() - started < 10  # a quick, clear failure, not a hang
    backend.close()


def test_a_down_endpoint_is_asked_again_later_not_on_every_look(
    clean_aws_environment: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = LocalSQSBackend(port=closed_port())
    probes: list[bool | None] = []
    probe = backend._probe_sns
    monkeypatch.setattr(backend, "_probe_sns", lambda: probes.append(probe()) or probes[-1])
    for _ in range(5):
        assert backend.capabilities.topics is True
    assert probes == [None]  # nothing answered; not asked again on every look
    backend._next_probe = 0.0  # as if PROBE_RETRY_SECONDS had passed
    assert backend.capabilities.topics is True
    assert probes == [None, None]
    backend.close()


@pytest.mark.parametrize(
    "stub_endpoint",
    [(400, "InvalidParameterValue", "queue test-orders: key s3cr3t/K3Y is not valid")],
    indirect=True,
)
def test_given_credentials_are_redacted_but_the_dummy_ones_are_not(stub_endpoint: str) -> None:
    dummy = LocalSQSBackend(endpoint_url=stub_endpoint, sns=True)
    with pytest.raises(BrokerError) as refused:
        dummy.get_queue("test-orders")
    assert "queue test-orders" in str(refused.value)  # "test" is no secret: names stay readable
    assert refused.value.broker_code == "InvalidParameterValue"
    given = LocalSQSBackend(
        endpoint_url=stub_endpoint,
        sns=True,
        aws_access_key_id="AKIALOCALKEY00000001",
        aws_secret_access_key="s3cr3t/K3Y",
    )
    with pytest.raises(BrokerError) as refused:
        given.get_queue("test-orders")
    assert "s3cr3t/K3Y" not in str(refused.value)
    assert "<redacted>" in str(refused.value)
    dummy.close()
    given.close()


# ------------------------------------------------------------------ STS
@pytest.mark.parametrize(
    "stub_endpoint", [(501, "InternalFailure")], ids=["sts-not-enabled"], indirect=True
)
def test_an_endpoint_without_sts_is_asked_once(
    moto_server: Any, stub_endpoint: str, names: ResourceNames
) -> None:
    """STS answering as LocalStack without it does: asked once, topics found by listing."""

    class STSElsewhere(LocalSQSBackend):
        """Sends STS to the stub endpoint, counting GetCallerIdentity calls."""

        sts_calls = 0

        def _create_client(self, service: str, **options: Any) -> Any:
            if service == "sts":
                options["endpoint_url"] = stub_endpoint
            client = super()._create_client(service, **options)
            if service == "sts":
                client.meta.events.register("before-call.sts.GetCallerIdentity", self._count)
            return client

        def _count(self, **_: Any) -> None:
            self.sts_calls += 1

    backend = STSElsewhere(endpoint_url=moto_server.endpoint_url, sns=True)
    for _ in range(3):
        assert backend.get_topic(names.topic("missing")) is None
    assert backend.sts_calls == 1
    queue, topic = names.queue(), names.topic()
    MessagingBackendFactory(backend).init_queue(queue, [topic])
    assert backend.publish_to_topic(topic, [OutgoingMessage(b"listed")])[0].ok
    assert [m.body for m in drain(backend, queue, 1)] == [b"listed"]
    assert backend.sts_calls == 1
    names.cleanup(backend)
    backend.close()


# ------------------------------------------------------- construction, hooks
def test_shares_the_data_loader_of_aws_backends(clean_aws_environment: None) -> None:
    """One parsed copy of botocore's models for every backend; credentials stay apart."""
    local = LocalSQSBackend(port=closed_port())
    keyed = LocalSQSBackend(aws_access_key_id="local-key", aws_secret_access_key="local-secret")
    aws = AWSBackend(region_name="eu-west-1", aws_access_key_id="k", aws_secret_access_key="s")
    loaders = [b._session._session.get_component("data_loader") for b in (local, keyed, aws)]
    assert loaders[0] is loaders[1] is loaders[2]
    access_keys = [b._session.get_credentials().access_key for b in (local, keyed, aws)]
    assert access_keys == ["test", "local-key", "k"]
    for backend in (local, keyed, aws):
        backend.close()


def _private_names_taken_from(base: type, cls: type) -> set[str]:
    """Underscored names of ``base`` that ``cls``'s module reads (self, super()) or overrides."""
    tree = ast.parse(inspect.getsource(inspect.getmodule(cls)))  # type: ignore[arg-type]
    (body,) = [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls.__name__]
    methods = {n.name for n in body.body if isinstance(n, ast.FunctionDef)}
    stored = {
        node.id if isinstance(node, ast.Name) else node.attr
        for node in ast.walk(body)
        if isinstance(node, (ast.Name, ast.Attribute)) and isinstance(node.ctx, ast.Store)
    }
    read: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
            continue
        target = node.value
        on_instance = isinstance(target, ast.Name) and target.id in ("self", "instance")
        on_super = isinstance(target, ast.Call) and ast.unparse(target.func) == "super"
        if (on_instance or on_super) and not node.attr.startswith("__"):
            read.add(node.attr)
    overridden = {name for name in methods if name.startswith("_") and name in vars(base)}
    return (read - methods - stored) | {n for n in overridden if not n.startswith("__")}


def test_local_sqs_backend_uses_only_documented_extension_points() -> None:
    """What LocalSQSBackend takes from AWSBackend's internals is a documented hook, nothing else."""
    inherited = _private_names_taken_from(AWSBackend, melange_localsqs.backend.LocalSQSBackend)
    assert inherited == {"_create_client", "_unreachable_hint", "_known_secrets"}
    for name in inherited:
        assert "Extension point" in (getattr(AWSBackend, name).__doc__ or ""), name
