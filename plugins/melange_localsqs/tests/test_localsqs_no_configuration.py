"""Acceptance: the backends work against a local endpoint with no configuration beyond the usual.

- ``LocalSQSBackend()`` with nothing else, against a moto server on 4566
  (LocalStack's port); nothing of the machine's AWS setup is needed.
- ``AWSBackend()`` configured by the usual AWS variables alone, ``AWS_ENDPOINT_URL``
  pointing at the moto server.
"""

from __future__ import annotations

import os
from pathlib import Path

import boto3
import pytest
from melange_localsqs.testing import MotoServer

from melange.testing.conformance import drain


@pytest.fixture
def clean_aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No AWS_* variable and no AWS config file of this machine takes part."""
    for variable in list(os.environ):
        if variable.startswith(("AWS_", "MELANGE_")):
            monkeypatch.delenv(variable)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    return tmp_path


def raw_client(service: str, endpoint_url: str, region: str = "us-east-1"):  # type: ignore[no-untyped-def]
    """boto3 without melange, to check what melange created."""
    return boto3.session.Session().client(  # a new session: the default one caches profiles
        service,
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def test_local_sqs_backend_with_no_configuration(
    clean_aws_environment: Path, default_port_server: MotoServer
) -> None:
    from melange import MessagingBackendFactory
    from melange.backends import LocalSQSBackend

    factory = MessagingBackendFactory(LocalSQSBackend())

    plan = factory.init_queue("payments", ["payment-events"], dead_letter_queue_name="payments-dlq")
    assert [action.kind for action in plan] == [
        "create_topic",
        "create_queue",
        "create_queue",
        "subscribe",
    ]
    backend = factory.backend
    from melange.backends.base import OutgoingMessage

    results = backend.publish_to_topic(
        "payment-events", [OutgoingMessage(b'{"paid": 12}', {"event": "paid"})]
    )
    assert results[0].ok
    received = drain(backend, "payments", 1)
    assert [(m.body, dict(m.attributes)) for m in received] == [
        (b'{"paid": 12}', {"event": "paid"})
    ]

    # What exists on the endpoint, seen without melange.
    sqs = raw_client("sqs", default_port_server.endpoint_url)
    queues = sorted(url.rsplit("/", 1)[1] for url in sqs.list_queues()["QueueUrls"])
    assert queues == ["payments", "payments-dlq"]
    url = sqs.get_queue_url(QueueName="payments")["QueueUrl"]
    redrive = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["RedrivePolicy"])
    assert "payments-dlq" in redrive["Attributes"]["RedrivePolicy"]
    sns = raw_client("sns", default_port_server.endpoint_url)
    (topic,) = sns.list_topics()["Topics"]
    assert topic["TopicArn"].endswith(":payment-events")
    (subscription,) = sns.list_subscriptions_by_topic(TopicArn=topic["TopicArn"])["Subscriptions"]
    assert subscription["Endpoint"].endswith(":payments")
    backend.close()


def test_aws_backend_is_configured_by_the_usual_aws_variables(
    clean_aws_environment: Path, monkeypatch: pytest.MonkeyPatch, moto_server: MotoServer
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAENVIRONMENTKEY01")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "environment/secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    from melange import MessagingBackendFactory
    from melange.backends import AWSBackend
    from melange.backends.base import OutgoingMessage

    backend = AWSBackend()
    keys: list[str] = []
    backend.sqs_client.meta.events.register(
        "before-send",
        lambda request, **_: keys.append(
            request.headers["Authorization"].decode().split("Credential=")[1].split("/")[0]
        ),
    )
    assert backend.sqs_client.meta.endpoint_url == moto_server.endpoint_url
    assert backend.sns_client.meta.endpoint_url == moto_server.endpoint_url
    assert backend.region_name == "eu-west-1"
    MessagingBackendFactory(backend).init_queue("env-configured")
    backend.publish("env-configured", [OutgoingMessage(b"configured by the environment")])
    assert [m.body for m in drain(backend, "env-configured", 1)] == [
        b"configured by the environment"
    ]
    assert set(keys) == {"AKIAENVIRONMENTKEY01"}
    sqs = raw_client("sqs", moto_server.endpoint_url, region="eu-west-1")
    url = sqs.get_queue_url(QueueName="env-configured")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]
    assert arn["QueueArn"].startswith("arn:aws:sqs:eu-west-1:")
    backend.delete_queue("env-configured")
    backend.close()


def test_aws_backend_reads_a_profile_and_service_specific_endpoints(
    clean_aws_environment: Path, monkeypatch: pytest.MonkeyPatch, moto_server: MotoServer
) -> None:
    config = clean_aws_environment / "config"
    config.write_text(
        "[profile melange-local]\n"
        "region = ap-southeast-2\n"
        "aws_access_key_id = AKIAPROFILEKEY000001\n"
        "aws_secret_access_key = profile/secret\n"
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_PROFILE", "melange-local")
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", moto_server.endpoint_url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SNS", moto_server.endpoint_url)
    from melange import MessagingBackendFactory
    from melange.backends import AWSBackend

    backend = AWSBackend()
    assert backend.region_name == "ap-southeast-2"
    assert backend.sqs_client.meta.endpoint_url == moto_server.endpoint_url
    plan = MessagingBackendFactory(backend).init_topic("profile-configured")
    assert [action.kind for action in plan] == ["create_topic"]
    sns = raw_client("sns", moto_server.endpoint_url, region="ap-southeast-2")
    arns = [topic["TopicArn"] for topic in sns.list_topics()["Topics"]]
    assert any(arn.startswith("arn:aws:sns:ap-southeast-2:") for arn in arns)
    backend.delete_topic("profile-configured")
    backend.close()
