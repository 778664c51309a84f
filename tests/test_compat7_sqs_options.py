"""melange 7.x's SQS backend keywords turned into melange 8's (melange.compat.sqs_options).

The ``localsqs`` and ``aws`` backends call ``sqs_options_from_7x`` from their
constructors; it is tested here directly, and its result is passed to the
melange 8 backend classes to show it is what they take.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest

from melange.backends.registry import get_backend_class
from melange.compat.sqs_options import sqs_options_from_7x
from melange.exceptions import ConfigurationError

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"


def mapped(backend: str, **options: Any) -> tuple[dict[str, Any], list[str]]:
    """Return the melange 8 keywords and the texts of the DeprecationWarnings raised."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = sqs_options_from_7x(backend, options)
    for warning in record:
        assert warning.category is DeprecationWarning
        assert warning.filename == __file__  # points at the caller outside melange
    return result, [str(w.message) for w in record]


@pytest.mark.parametrize(
    ("host", "port", "url"),
    [
        ("http://localhost", "4566", "http://localhost:4566"),  # the form 7.x required
        ("http://127.0.0.1", 9324, "http://127.0.0.1:9324"),
        ("localhost", "9324", "http://localhost:9324"),  # 7.x built a URL with no scheme
        ("https://sqs.example.com", " 443 ", "https://sqs.example.com:443"),
        ("http://localhost:5000", None, "http://localhost:5000"),
        ("http://localhost", None, "http://localhost:4566"),  # 7.x's default port
        (None, "4576", "http://localhost:4576"),  # 7.x's default host
        ("http://[::1]", "4566", "http://[::1]:4566"),
    ],
)
def test_localsqs_host_and_port_become_endpoint_url(host: Any, port: Any, url: str) -> None:
    options = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    result, texts = mapped("localsqs", **options)
    assert result == {"endpoint_url": url}
    (text,) = texts
    assert f"LocalSQSBackend(endpoint_url={url!r})" in text
    assert "LocalSQSBackend(host=" in text or "LocalSQSBackend(port=" in text


def test_warning_shows_the_7x_call_as_written() -> None:
    _, (text,) = mapped("localsqs", host="http://localhost", port="4566")
    assert text.startswith("LocalSQSBackend(host='http://localhost', port='4566') is a melange 7.x")
    assert text.endswith("use LocalSQSBackend(endpoint_url='http://localhost:4566')")


def test_localsqs_result_is_what_the_8x_backend_takes() -> None:
    result, _ = mapped("localsqs", host="http://127.0.0.1", port="4566", sns_port="4575")
    assert result == {
        "endpoint_url": "http://127.0.0.1:4566",
        "sns_endpoint_url": "http://localhost:4575",
    }
    backend = get_backend_class("localsqs")(**result)
    try:
        assert backend.endpoint_url == "http://127.0.0.1:4566"  # type: ignore[attr-defined]
    finally:
        backend.close()


def test_localsqs_sns_host_and_port_become_sns_endpoint_url() -> None:
    result, texts = mapped("localsqs", sns_host="http://sns.local", sns_port="4575")
    assert result == {"sns_endpoint_url": "http://sns.local:4575"}
    assert "sns_endpoint_url='http://sns.local:4575'" in texts[0]


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"port": "abc"}, "port from 1 to 65535, got 'abc'"),
        ({"port": "70000"}, "port from 1 to 65535"),
        ({"port": True}, "port from 1 to 65535"),
        ({"host": "http://localhost:4566", "port": "4566"}, "already holds a port"),
        ({"host": "ftp://localhost"}, "not an http:// or https:// host"),
        ({"host": "http://localhost/queue"}, "has a path"),
        ({"host": 4566}, "must be a host name"),
    ],
)
def test_malformed_host_and_port_raise(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        sqs_options_from_7x("localsqs", options)


@pytest.mark.parametrize(
    ("name", "where"),
    [
        ("wait_time_seconds", r"MessageDispatcher\(backend, queue_name, consumers, wait_seconds"),
        ("max_number_of_messages", r"MessageDispatcher\(.*batch_size=\.\.\.\)"),
        ("visibility_timeout", r"init_queue\(queue_name, \.\.\., visibility_timeout="),
    ],
)
@pytest.mark.parametrize("backend", ["localsqs", "aws"])
def test_receive_options_moved_raise_naming_where(backend: str, name: str, where: str) -> None:
    with pytest.raises(
        ConfigurationError, match=f"7.x receive option; melange 8 sets it in.*{where}"
    ):
        sqs_options_from_7x(backend, {name: 10})


def test_unknown_keyword_has_a_did_you_mean() -> None:
    with pytest.raises(
        ConfigurationError, match=r"unknown option 'regoin_name' \(did you mean 'region_name'\?\)"
    ):
        sqs_options_from_7x("aws", {"regoin_name": "eu-west-1"})
    with pytest.raises(ConfigurationError, match=r"did you mean 'extra_settings'"):
        sqs_options_from_7x("localsqs", {"extra_setings": {}})


def test_aws_extra_and_sns_settings_become_8x_keywords_without_showing_secrets() -> None:
    credentials = {"aws_access_key_id": "AKIDEXAMPLE", "aws_secret_access_key": SECRET}
    result, texts = mapped(
        "aws",
        extra_settings={
            "region_name": "eu-west-1",
            "endpoint_url": "http://sqs:4566",
            **credentials,
        },
        sns_settings={"region_name": "eu-west-1", "endpoint_url": "http://sns:4566", **credentials},
    )
    assert result == {
        "sqs_endpoint_url": "http://sqs:4566",
        "sns_endpoint_url": "http://sns:4566",
        "region_name": "eu-west-1",
        **credentials,
    }
    (text,) = texts
    assert "extra_settings=" in text and "sns_settings=" in text
    assert "sqs_endpoint_url='http://sqs:4566'" in text and "region_name='eu-west-1'" in text
    assert "aws_secret_access_key=***" in text
    assert SECRET not in text and "AKIDEXAMPLE" not in text
    backend = get_backend_class("aws")(**result)
    backend.close()


def test_aws_one_endpoint_for_both_services_is_endpoint_url() -> None:
    result, _ = mapped(
        "aws",
        extra_settings={"endpoint_url": "http://localhost:4566", "use_ssl": False},
        sns_settings={"endpoint_url": "http://localhost:4566", "use_ssl": False},
    )
    assert result == {"endpoint_url": "http://localhost:4566"}


def test_localsqs_extra_settings_endpoint_is_endpoint_url() -> None:
    result, _ = mapped("localsqs", extra_settings={"endpoint_url": "http://localhost:9324"})
    assert result == {"endpoint_url": "http://localhost:9324"}
    with pytest.raises(ConfigurationError, match="different endpoint_url values"):
        sqs_options_from_7x(
            "localsqs",
            {
                "host": "http://localhost",
                "port": "4566",
                "extra_settings": {"endpoint_url": "http://x:1"},
            },
        )


def test_settings_that_contradict_or_have_no_equivalent_raise() -> None:
    with pytest.raises(ConfigurationError) as caught:
        sqs_options_from_7x(
            "aws",
            {
                "extra_settings": {"aws_access_key_id": "A", "aws_secret_access_key": SECRET},
                "sns_settings": {"aws_access_key_id": "A", "aws_secret_access_key": SECRET + "2"},
            },
        )
    assert "different aws_secret_access_key values" in str(caught.value)
    assert SECRET not in str(caught.value)
    with pytest.raises(ConfigurationError, match="AWS_CA_BUNDLE"):
        sqs_options_from_7x("aws", {"extra_settings": {"verify": False}})
    with pytest.raises(ConfigurationError, match="connect_timeout=, read_timeout="):
        sqs_options_from_7x("aws", {"sns_settings": {"config": object()}})
    with pytest.raises(ConfigurationError, match="no use_ssl; the endpoint URL's scheme decides"):
        sqs_options_from_7x("aws", {"extra_settings": {"use_ssl": False}})
    with pytest.raises(
        ConfigurationError,
        match=r"'endpoin_url' is not a boto3 resource argument \(did you mean 'endpoint_url'",
    ):
        sqs_options_from_7x("aws", {"extra_settings": {"endpoin_url": "http://x:1"}})
    with pytest.raises(ConfigurationError, match="dict of boto3 resource arguments"):
        sqs_options_from_7x("aws", {"extra_settings": "endpoint_url=http://x"})


def test_aws_host_and_port_raise_naming_endpoint_url() -> None:
    with pytest.raises(ConfigurationError, match=r"which 7\.x's AWSBackend ignored.*endpoint_url="):
        sqs_options_from_7x("aws", {"host": "http://localhost", "port": "4566"})


def test_url_user_info_is_not_shown_in_warnings() -> None:
    result, texts = mapped("localsqs", host=f"http://user:{SECRET}@localhost", port="4566")
    assert result == {"endpoint_url": f"http://user:{SECRET}@localhost:4566"}
    assert SECRET not in texts[0] and "***@localhost" in texts[0]


def test_wrong_backend_name_or_options_raise() -> None:
    with pytest.raises(ConfigurationError, match="'localsqs' or 'aws'"):
        sqs_options_from_7x("gcp", {})
    with pytest.raises(ConfigurationError, match="mapping"):
        sqs_options_from_7x("aws", [("host", "x")])  # type: ignore[arg-type]
    assert sqs_options_from_7x("aws", {}) == {}
