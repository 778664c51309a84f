"""melange 7.x's SQS backend keywords, on a real endpoint (the moto server over HTTP).

7.x built its endpoints as ``f"{host}:{port}"``, so its users wrote
``LocalSQSBackend(host="http://localhost", port=os.environ["SQS_PORT"])``; the
keyword conversion itself is tested in tests/test_compat7_sqs_options.py, this
checks that the backends take the keywords and then talk to the endpoint they name.
"""

from __future__ import annotations

import uuid

import pytest
from melange_aws import AWSBackend
from melange_localsqs import LocalSQSBackend
from melange_localsqs.testing import MotoServer

from melange.exceptions import ConfigurationError
from melange.factory import MessagingBackendFactory
from melange.serializers import SerializerRegistry


def round_trip(backend: AWSBackend) -> object:
    """Create a queue, send one message and receive it back through ``backend``."""
    queue = f"kw7-{uuid.uuid4().hex[:8]}"
    MessagingBackendFactory(backend).init_queue(queue)
    registry = SerializerRegistry()
    backend.publish(queue, [registry.encode({"hello": "7.x"})])
    (received,) = backend.receive(queue, 10, 1)
    backend.ack([received])
    return registry.decode(received).body


def test_host_with_scheme_and_port_as_text_reach_the_endpoint(moto_server: MotoServer) -> None:
    with pytest.warns(DeprecationWarning, match=r"endpoint_url='http://127\.0\.0\.1:\d+'"):
        backend = LocalSQSBackend(
            host="http://127.0.0.1",
            port=str(moto_server.port),  # as 7.x users read it from the environment
            sns_host="http://127.0.0.1",
            sns_port=str(moto_server.port),
        )
    with backend:
        assert backend.endpoint_url == moto_server.endpoint_url
        assert backend.sns_endpoint_url == moto_server.endpoint_url
        assert round_trip(backend) == {"hello": "7.x"}


def test_extra_settings_reach_the_endpoint(moto_server: MotoServer) -> None:
    settings = {
        "endpoint_url": moto_server.endpoint_url,
        "region_name": "eu-west-1",
        "aws_access_key_id": "AKIA7XKEYEXAMPLE",
        "aws_secret_access_key": "s3cr3t-7x-value",
    }
    with pytest.warns(DeprecationWarning) as warned:
        backend = AWSBackend(extra_settings=settings, sns_settings=settings)
    text = " ".join(str(warning.message) for warning in warned)
    assert "s3cr3t-7x-value" not in text and "AKIA7XKEYEXAMPLE" not in text
    with backend:
        assert "eu-west-1" in repr(backend)
        assert round_trip(backend) == {"hello": "7.x"}


@pytest.mark.parametrize(
    ("keyword", "where"),
    [
        ("wait_time_seconds", "wait_seconds"),
        ("max_number_of_messages", "batch_size"),
        ("visibility_timeout", "init_queue"),
    ],
)
def test_7x_receive_options_say_where_they_went(keyword: str, where: str) -> None:
    with pytest.raises(ConfigurationError, match=where):
        LocalSQSBackend(**{keyword: 10})  # type: ignore[misc]


def test_an_endpoint_given_both_ways_is_refused() -> None:
    with (
        pytest.raises(ConfigurationError, match="sns_endpoint_url is set twice"),
        pytest.warns(DeprecationWarning),
    ):
        LocalSQSBackend(
            sns_endpoint_url="http://127.0.0.1:1",
            sns_host="http://127.0.0.1",
            sns_port="2",
        )


def test_an_unknown_keyword_is_refused_with_a_suggestion() -> None:
    with pytest.raises(ConfigurationError, match="did you mean 'sns_host'"):
        LocalSQSBackend(sns_hots="http://127.0.0.1")  # type: ignore[call-arg]
