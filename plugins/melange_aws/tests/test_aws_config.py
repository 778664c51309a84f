"""Options and the AWS configuration chain; credentials never shown; unreachable endpoints."""

from __future__ import annotations

import logging
import os
import socket
import traceback
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.stub import Stubber
from melange_aws import AWSBackend
from melange_aws.clients import ClientSettings, make_session

import melange.backends
from melange import MessagingBackendFactory
from melange.backends import load_backend
from melange.backends.base import OutgoingMessage
from melange.exceptions import BackendUnavailable, ConfigurationError, MelangeError
from melange.topology import QueueSpec, TopicSpec

ACCESS_KEY_ID = "AKIAEXPLICITKEY00001"
SECRET_ACCESS_KEY = "explicit/SECRET+key/abcdefghij0123456789"
SESSION_TOKEN = "FwoGZXIvYXdzEJr//////////wEaDMELANGETOKEN+secret/part=="


def test_with_no_option_the_environment_decides(
    aws_environment: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Region and endpoints come from AWS_* variables, as in any boto3 program."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://localhost:4566")
    monkeypatch.setenv("AWS_ENDPOINT_URL_SNS", "http://localhost:9911")
    with AWSBackend() as backend:
        assert backend.region_name == "eu-west-3"
        assert backend.sqs_client.meta.endpoint_url == "http://localhost:4566"
        assert backend.sns_client.meta.endpoint_url == "http://localhost:9911"


def test_without_endpoint_settings_the_public_endpoints_are_used(aws_environment: None) -> None:
    """No endpoint anywhere: AWS's regional endpoints."""
    with AWSBackend(region_name="eu-central-1") as backend:
        assert backend.sqs_client.meta.endpoint_url == "https://sqs.eu-central-1.amazonaws.com"
        assert backend.sns_client.meta.endpoint_url == "https://sns.eu-central-1.amazonaws.com"


def test_options_override_the_environment(
    aws_environment: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """endpoint_url serves both services unless a service endpoint is given."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://localhost:4566")
    with AWSBackend(
        region_name="ap-south-1",
        endpoint_url="http://127.0.0.1:5000",
        sns_endpoint_url="http://127.0.0.1:5001",
    ) as backend:
        assert backend.region_name == "ap-south-1"
        assert backend.sqs_client.meta.endpoint_url == "http://127.0.0.1:5000"
        assert backend.sns_client.meta.endpoint_url == "http://127.0.0.1:5001"
    with AWSBackend(sqs_endpoint_url="http://127.0.0.1:7000") as backend:
        assert backend.sqs_client.meta.endpoint_url == "http://127.0.0.1:7000"
        assert backend.sns_client.meta.endpoint_url == "http://localhost:4566"


def test_retries_are_botocore_standard_mode(aws_environment: None) -> None:
    """max_attempts configures botocore's standard retry mode; the pool size is an option."""
    with AWSBackend(max_attempts=7, max_pool_connections=32) as backend:
        config = backend.sqs_client.meta.config
        assert config.retries == {"mode": "standard", "total_max_attempts": 7}
        assert config.max_pool_connections == 32
        assert backend.sns_client.meta.config.retries["mode"] == "standard"
    with AWSBackend() as backend:
        assert backend.sqs_client.meta.config.retries == {"mode": "standard"}


def test_timeouts_are_sized_to_the_call(aws_environment: None) -> None:
    """Seconds, not botocore's 60: every client connects and reads within the options;
    a ReceiveMessage client reads for its long poll's wait plus the margin."""
    with AWSBackend() as backend:
        for client in (backend.sqs_client, backend.sns_client):
            assert (client.meta.config.connect_timeout, client.meta.config.read_timeout) == (
                5.0,
                10.0,
            )
        longest = backend.receive_client(20)
        assert longest.meta.config.read_timeout == 30.0
        assert longest.meta.config.connect_timeout == 5.0
        assert longest.meta.config.retries == {"mode": "standard"}
        assert backend.receive_client(1.9).meta.config.read_timeout == 11.0
        assert backend.receive_client(60) is longest  # SQS polls 20 s at most
        assert backend.receive_client(0.5) is backend.receive_client(0)  # one per whole second
    with AWSBackend(connect_timeout=2, read_timeout=3.5, max_attempts=2) as backend:
        assert backend.sns_client.meta.config.connect_timeout == 2
        assert backend.sqs_client.meta.config.read_timeout == 3.5
        assert backend.receive_client(20).meta.config.read_timeout == 23.5
        assert backend.receive_client(1).meta.config.retries["total_max_attempts"] == 2


def test_timeouts_can_be_configured_from_the_environment(
    aws_environment: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MELANGE_OPTION_READ_TIMEOUT is read as a number of seconds."""
    monkeypatch.setenv("MELANGE_BACKEND", "aws")
    monkeypatch.setenv("MELANGE_OPTION_READ_TIMEOUT", "2.5")
    monkeypatch.setenv("MELANGE_OPTION_CONNECT_TIMEOUT", "1")
    backend = MessagingBackendFactory.from_config().backend
    assert isinstance(backend, AWSBackend)
    assert backend.sqs_client.meta.config.read_timeout == 2.5
    assert backend.sqs_client.meta.config.connect_timeout == 1
    backend.close()


def test_a_profile_supplies_region_and_credentials(
    aws_environment: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """profile_name reads ~/.aws-style files (here AWS_CONFIG_FILE)."""
    config = tmp_path / "config"
    config.write_text(
        "[profile melange]\nregion = sa-east-1\n"
        "aws_access_key_id = AKIAPROFILEKEY000001\naws_secret_access_key = profile-secret\n"
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    with AWSBackend(profile_name="melange") as backend:
        assert backend.region_name == "sa-east-1"
        credentials = backend._session.get_credentials()
        assert credentials.access_key == "AKIAPROFILEKEY000001"


def test_a_ready_session_can_be_passed(aws_environment: None) -> None:
    """A boto3 session (e.g. with assumed-role credentials) is used as it is."""
    session = boto3.session.Session(region_name="us-west-2")
    with AWSBackend(session=session) as backend:
        assert backend.region_name == "us-west-2"


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        pytest.param({"aws_access_key_id": "AKIAONLYKEY"}, "go together", id="key-without-secret"),
        pytest.param({"aws_secret_access_key": "s"}, "go together", id="secret-without-key"),
        pytest.param({"aws_session_token": "t"}, "needs aws_access_key_id", id="token-alone"),
        pytest.param(
            {"profile_name": "p", "aws_access_key_id": "k", "aws_secret_access_key": "s"},
            "either profile_name or explicit keys",
            id="profile-and-keys",
        ),
        pytest.param({"endpoint_url": "localhost:4566"}, "http://", id="endpoint-without-scheme"),
        pytest.param({"max_attempts": 0}, "at least 1", id="zero-attempts"),
        pytest.param({"max_attempts": True}, "whole number", id="boolean-attempts"),
        pytest.param({"region_name": ""}, "non-empty string", id="empty-region"),
        pytest.param({"session": "not a session"}, "boto3.session.Session", id="bad-session"),
        pytest.param({"connect_timeout": 0}, "positive number", id="zero-connect-timeout"),
        pytest.param({"read_timeout": -1}, "positive number", id="negative-read-timeout"),
        pytest.param({"read_timeout": "5"}, "positive number", id="text-read-timeout"),
        pytest.param({"read_timeout": True}, "positive number", id="boolean-read-timeout"),
        pytest.param(
            {"connect_timeout": float("inf")}, "positive number", id="infinite-connect-timeout"
        ),
        pytest.param({"read_timeout": float("nan")}, "positive number", id="nan-read-timeout"),
        pytest.param(
            {"profile_name": "missing-profile"},
            "'missing-profile', named by the profile_name option, is not defined",
            id="unknown-profile",
        ),
    ],
)
def test_inconsistent_options_are_configuration_errors(
    aws_environment: None, options: dict[str, Any], fragment: str
) -> None:
    """Each contradiction or mistyped option raises ConfigurationError saying how to fix it."""
    with pytest.raises(ConfigurationError, match=fragment):
        AWSBackend(**options)


@pytest.mark.parametrize("variable", ["AWS_PROFILE", "AWS_DEFAULT_PROFILE"])
def test_a_missing_profile_named_by_the_environment_is_named_with_the_fix(
    aws_environment: None, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    """The error names the profile and the variable it came from, and how to fix it."""
    monkeypatch.setenv(variable, "team-prod")
    with pytest.raises(ConfigurationError) as caught:
        AWSBackend()
    message = str(caught.value)
    assert f"AWS profile 'team-prod', named by the environment variable {variable}" in message
    assert os.environ["AWS_CONFIG_FILE"] in message  # where it was looked for
    assert "aws configure --profile team-prod" in message and f"unset {variable}" in message
    assert "None" not in message
    shown = message + "".join(traceback.format_exception(caught.value))
    for secret in (os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]):
        assert secret not in shown
    # Keys passed as options do not make the named profile any less missing.
    with pytest.raises(ConfigurationError, match=f"unset {variable}"):
        AWSBackend(aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key=SECRET_ACCESS_KEY)


def test_a_session_can_ignore_the_environment_profile(
    aws_environment: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """make_session(environment_profile=False): a profile meant for AWS does not apply."""
    monkeypatch.setenv("AWS_PROFILE", "team-prod")
    settings = ClientSettings(
        region_name="eu-west-1", aws_access_key_id="local", aws_secret_access_key="local"
    )
    with pytest.raises(ConfigurationError, match="team-prod"):
        make_session(settings)
    session = make_session(settings, environment_profile=False)
    assert session.get_credentials().access_key == "local"
    assert session.region_name == "eu-west-1"


def data_loader(session: boto3.session.Session) -> Any:
    """The botocore data loader a boto3 session makes its clients with."""
    return session._session.get_component("data_loader")


def test_backends_share_the_data_loader_and_nothing_else(
    aws_environment: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One parsed copy of the service models per process; credentials and region per backend."""
    first = AWSBackend(region_name="eu-west-1")
    second = AWSBackend(
        region_name="us-west-2",
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
    )
    sessions = [backend._session for backend in (first, second)]
    assert sessions[0] is not sessions[1]
    assert data_loader(sessions[0]) is data_loader(sessions[1])
    assert [session.get_credentials().access_key for session in sessions] == [
        os.environ["AWS_ACCESS_KEY_ID"],
        ACCESS_KEY_ID,
    ]
    assert [first.region_name, second.region_name] == ["eu-west-1", "us-west-2"]
    # A session of the caller's is used as it is.
    own = boto3.session.Session()
    own_loader = data_loader(own)
    with AWSBackend(session=own) as given:
        assert given._session is own and data_loader(own) is own_loader
    # AWS_DATA_PATH (extra service models) gets a loader of its own.
    monkeypatch.setenv("AWS_DATA_PATH", "/nonexistent/models")
    with AWSBackend() as custom:
        loader = data_loader(custom._session)
        assert loader is not data_loader(sessions[0])
        assert "/nonexistent/models" in loader.search_paths
    first.close()
    second.close()


def test_subclasses_make_extra_clients_with_the_backend_session(aws_environment: None) -> None:
    """_create_client: the backend's region and config, another endpoint or settings if asked."""
    with AWSBackend(endpoint_url="http://127.0.0.1:4566", max_attempts=2) as backend:
        extra = backend._create_client(
            "sns", endpoint_url="http://127.0.0.1:5000", config=Config(connect_timeout=2)
        )
        assert extra.meta.endpoint_url == "http://127.0.0.1:5000"
        assert extra.meta.region_name == backend.region_name
        assert extra.meta.config.connect_timeout == 2
        assert extra.meta.config.retries["total_max_attempts"] == 2  # the backend's, merged
        plain = backend._create_client("sqs")
        assert plain.meta.endpoint_url == "http://127.0.0.1:4566"
        extra.close()
        plain.close()


def test_aws_region_is_honoured_as_the_other_aws_sdks_do(
    aws_environment: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AWS_REGION alone sets the region (botocore itself reads only AWS_DEFAULT_REGION)."""
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.setenv("AWS_REGION", "ap-southeast-2")
    with AWSBackend() as backend:
        assert backend.region_name == "ap-southeast-2"
        assert backend.sns_client.meta.region_name == "ap-southeast-2"
        assert backend.sqs_client.meta.endpoint_url == "https://sqs.ap-southeast-2.amazonaws.com"


@pytest.mark.parametrize(
    ("region_name", "aws_region", "default_region", "profile_region", "expected"),
    [
        # The order of the AWS SDKs and tools reference (and AWS CLI v2): the code's
        # region_name, then AWS_REGION, then AWS_DEFAULT_REGION, then the profile.
        ("eu-north-1", "ap-southeast-2", "eu-west-3", "sa-east-1", "eu-north-1"),
        (None, "ap-southeast-2", "eu-west-3", "sa-east-1", "ap-southeast-2"),
        (None, None, "eu-west-3", "sa-east-1", "eu-west-3"),
        (None, "", "eu-west-3", "sa-east-1", "eu-west-3"),  # set but empty: not a region
        (None, None, None, "sa-east-1", "sa-east-1"),
    ],
)
def test_where_the_region_comes_from(
    aws_environment: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    region_name: str | None,
    aws_region: str | None,
    default_region: str | None,
    profile_region: str,
    expected: str,
) -> None:
    config = tmp_path / "config"
    config.write_text(f"[default]\nregion = {profile_region}\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    for variable, value in (("AWS_REGION", aws_region), ("AWS_DEFAULT_REGION", default_region)):
        if value is not None:
            monkeypatch.setenv(variable, value)
    with AWSBackend(region_name=region_name) as backend:
        assert backend.region_name == expected


def test_no_region_anywhere_is_a_configuration_error(
    aws_environment: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a region the error says where to set one."""
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    with pytest.raises(ConfigurationError, match="AWS_REGION"):
        AWSBackend()


def test_the_backend_is_found_by_name(
    aws_environment: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The entry point, the lazy import and configuration by environment all reach it."""
    assert melange.backends.AWSBackend is AWSBackend
    with load_backend("aws", region_name="eu-west-1") as backend:
        assert isinstance(backend, AWSBackend) and backend.region_name == "eu-west-1"
    monkeypatch.setenv("MELANGE_BACKEND", "aws")
    monkeypatch.setenv("MELANGE_OPTION_MAX_ATTEMPTS", "4")
    monkeypatch.setenv("MELANGE_OPTION_REGION_NAME", "eu-north-1")
    factory = MessagingBackendFactory.from_config()
    backend = factory.backend
    assert isinstance(backend, AWSBackend)
    assert backend.sqs_client.meta.config.retries["total_max_attempts"] == 4
    assert backend.region_name == "eu-north-1"
    backend.close()


# ------------------------------------------------------------------ credentials
@pytest.mark.parametrize("source", ["options", "environment"])
def test_credentials_never_appear_in_repr_errors_or_logs(
    aws_environment: None,
    caplog: pytest.LogCaptureFixture,
    source: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Keys, from options or the environment, stay out of repr, errors, tracebacks and logs."""
    caplog.set_level(logging.DEBUG)
    if source == "options":
        backend = AWSBackend(
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
            aws_session_token=SESSION_TOKEN,
        )
        secrets = (ACCESS_KEY_ID, SECRET_ACCESS_KEY, SESSION_TOKEN)
    else:
        monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
        backend = AWSBackend()
        secrets = (
            os.environ["AWS_ACCESS_KEY_ID"],
            os.environ["AWS_SECRET_ACCESS_KEY"],
            SESSION_TOKEN,
        )
    shown = [repr(backend), repr(backend._settings), str(backend.capabilities)]
    errors: list[MelangeError] = []
    with Stubber(backend.sqs_client) as stubber:
        for code in ("InvalidClientTokenId", "SignatureDoesNotMatch", "InvalidParameterValue"):
            stubber.add_client_error(
                "get_queue_url",
                service_error_code=code,
                service_message=f"rejected {' '.join(secrets)}",
                http_status_code=403,
            )
            with pytest.raises(MelangeError) as caught:
                backend.get_queue("orders")
            errors.append(caught.value)
    assert [type(error).__name__ for error in errors] == [
        "BackendUnavailable",
        "BackendUnavailable",
        "BrokerError",
    ]
    for error in errors:
        shown += [str(error), repr(error), "".join(traceback.format_exception(error))]
    shown.append(caplog.text)
    for text in shown:
        for secret in secrets:
            assert secret not in text
    backend.close()


def test_a_mistyped_secret_is_not_echoed(aws_environment: None) -> None:
    """Even a wrongly typed secret option is not shown in the ConfigurationError."""
    with pytest.raises(ConfigurationError) as caught:
        AWSBackend(aws_access_key_id="AKIAX", aws_secret_access_key=12345)  # type: ignore[arg-type]
    assert "12345" not in str(caught.value)


def test_missing_credentials_are_reported_with_the_fix(
    aws_environment: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No credentials anywhere: BackendUnavailable naming the ways to provide them."""
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role lookup
    with AWSBackend() as backend, pytest.raises(BackendUnavailable) as caught:
        backend.declare_queue(QueueSpec("orders"))
    message = str(caught.value)
    assert "NoCredentialsError" in message and "AWS_PROFILE" in message
    assert "create queue 'orders'" in message or "look up queue 'orders'" in message


def free_port() -> int:
    """A local TCP port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_an_unreachable_endpoint_names_the_endpoint_without_user_info(
    aws_environment: None,
) -> None:
    """Connection refused: BackendUnavailable with the endpoint tried, never its password."""
    port = free_port()
    with (
        AWSBackend(
            endpoint_url=f"http://melange:pa55word@127.0.0.1:{port}", max_attempts=1
        ) as backend,
        pytest.raises(BackendUnavailable) as caught,
    ):
        backend.receive("orders")
    message = str(caught.value)
    assert f"cannot reach the SQS endpoint http://127.0.0.1:{port}" in message
    assert "look up queue 'orders'" in message and "endpoint_url" in message
    assert "pa55word" not in message and "pa55word" not in repr(backend)


def test_an_unreachable_sns_endpoint_is_named_as_such(aws_environment: None) -> None:
    """The message says which service's endpoint was tried, not "AWS"."""
    port = free_port()
    with (
        AWSBackend(
            endpoint_url=f"http://127.0.0.1:{port}",
            sns_endpoint_url=f"http://127.0.0.1:{port}/sns",
            max_attempts=1,
        ) as backend,
        pytest.raises(BackendUnavailable) as caught,
    ):
        backend.get_topic("events")
    message = str(caught.value)
    assert f"cannot reach the SNS endpoint http://127.0.0.1:{port}/sns" in message
    assert "look up topic 'events'" in message and "cannot reach AWS" not in message


def test_refusals_name_the_service_that_refused(aws_environment: None) -> None:
    """An emulator answers as SQS or SNS, so messages say which, not "AWS"."""
    with AWSBackend(endpoint_url="http://127.0.0.1:4566") as backend:
        with Stubber(backend.sqs_client) as stubber, pytest.raises(MelangeError) as sqs_refused:
            stubber.add_client_error("get_queue_url", service_error_code="InvalidParameterValue")
            backend.get_queue("orders")
        with Stubber(backend.sns_client) as stubber, pytest.raises(MelangeError) as throttled:
            stubber.add_client_error(
                "create_topic", service_error_code="Throttling", http_status_code=400
            )
            backend.declare_topic(TopicSpec("events"))
    assert str(sqs_refused.value).startswith("SQS refused to look up queue 'orders'")
    assert str(throttled.value).startswith(
        "SNS at http://127.0.0.1:4566 could not create topic 'events' (Throttling"
    )


def test_melange_logs_name_resources_never_credentials(
    mocked_aws: None, caplog: pytest.LogCaptureFixture
) -> None:
    """A whole topology-and-data run logs what it did under melange_aws, without credentials."""
    caplog.set_level(logging.DEBUG, logger="melange.aws")
    with AWSBackend(
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
        aws_session_token=SESSION_TOKEN,
    ) as backend:
        MessagingBackendFactory(backend).init_queue("orders", ["order-events"])
        backend.publish_to_topic("order-events", [OutgoingMessage(b"x")])
        backend.ack(backend.receive("orders"))
    records = [record for record in caplog.records if record.name.startswith("melange.aws")]
    assert any("orders" in record.getMessage() for record in records)
    for record in records:
        for secret in (ACCESS_KEY_ID, SECRET_ACCESS_KEY, SESSION_TOKEN):
            assert secret not in record.getMessage()
