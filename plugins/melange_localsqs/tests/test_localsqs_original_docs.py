"""The original melange docs' factory page, run against a local SQS/SNS endpoint over HTTP.

The snippets are run exactly as the original page wrote them: ``LocalSQSBackend()``
finds the moto server this module starts on 4566 (LocalStack's port) without
any option, and ``AWSBackend()`` finds it through ``AWS_ENDPOINT_URL``, the only
configuration added.

Two snippets ask for what AWS refuses: a queue as its own dead-letter queue, and
a FIFO queue subscribed to standard topics. melange refuses them with a clear
error before creating anything; docs/backends/localsqs.md shows the valid forms,
which are run here too, and this module checks that the page shows them verbatim.
"""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from melange_localsqs.testing import MotoServer

from melange.backends.base import MessagingBackend, OutgoingMessage
from melange.exceptions import InvalidTopology
from melange.testing.conformance import drain

DOCS_PAGE = Path(__file__).parents[3] / "docs" / "backends" / "localsqs.md"

# ---------------------------------------------------------------- the original page
CREATE_QUEUE = """
from melange import MessagingBackendFactory
from melange.backends import LocalSQSBackend

backend = LocalSQSBackend()
factory = MessagingBackendFactory(backend)
factory.init_queue("payment-updates.fifo")
"""

OWN_DEAD_LETTER_QUEUE = """
factory.init_queue("payment-updates.fifo", dead_letter_queue_name="payment-updates.fifo")
"""

CREATE_TOPIC = """
from melange import MessagingBackendFactory
from melange.backends import AWSBackend

backend = AWSBackend()
factory = MessagingBackendFactory(backend)
factory.init_topic("my-topic")
"""

SUBSCRIBED_QUEUE = """
from melange import MessagingBackendFactory
from melange.backends import LocalSQSBackend

backend = LocalSQSBackend()
factory = MessagingBackendFactory(backend)
factory.init_queue(
    "payment-updates.fifo",
    ["my-topic-1", "my-topic-2", "my-topic-3"],
    dead_letter_queue_name="payment-updates.fifo",
)
"""

# ------------------------------------------------- the valid forms docs/backends/localsqs.md shows
VALID_DEAD_LETTER_QUEUE = """
factory.init_queue("payment-updates.fifo", dead_letter_queue_name="payment-updates-dlq.fifo")
"""

VALID_SUBSCRIBED_FIFO_QUEUE = """
factory.init_queue(
    "payment-updates.fifo",
    ["my-topic-1.fifo", "my-topic-2.fifo", "my-topic-3.fifo"],
    dead_letter_queue_name="payment-updates-dlq.fifo",
)
"""

VALID_SUBSCRIBED_STANDARD_QUEUE = """
factory.init_queue(
    "payment-updates",
    ["my-topic-1", "my-topic-2", "my-topic-3"],
    dead_letter_queue_name="payment-updates-dlq",
)
"""

SUBSCRIBED_QUEUE_HEAD = SUBSCRIBED_QUEUE.split("factory.init_queue(")[0]


# ------------------------------------------------------------------ fixtures
@pytest.fixture
def endpoint(
    default_port_server: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> str:
    """The empty moto server on 4566; the environment holds only what AWSBackend() needs."""
    for variable in list(os.environ):
        if variable.startswith(("AWS_", "MELANGE_")):
            monkeypatch.delenv(variable)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    # The usual AWS variables, pointing AWSBackend() at the local endpoint.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://localhost:4566")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return default_port_server.endpoint_url


@pytest.fixture
def run() -> Iterator[Any]:
    """Run snippets (as written) in one namespace; close the backend they made afterwards."""
    namespace: dict[str, Any] = {}

    def run_snippets(*sources: str) -> dict[str, Any]:
        for source in sources:
            exec(textwrap.dedent(source), namespace)
        return namespace

    yield run_snippets
    backend = namespace.get("backend")
    if isinstance(backend, MessagingBackend):
        backend.close()


def raw(service: str, endpoint: str) -> Any:
    """boto3 without melange, to see what exists on the endpoint."""
    return boto3.session.Session().client(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def queues(endpoint: str) -> dict[str, dict[str, str]]:
    """Every queue on the endpoint with its attributes."""
    sqs = raw("sqs", endpoint)
    found = {}
    for url in sqs.list_queues().get("QueueUrls", []):
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])
        found[url.rsplit("/", 1)[1]] = attributes["Attributes"]
    return found


def topics(endpoint: str) -> dict[str, list[str]]:
    """Every topic on the endpoint with the queue names subscribed to it."""
    sns = raw("sns", endpoint)
    found = {}
    for topic in sns.list_topics().get("Topics", []):
        arn = topic["TopicArn"]
        subscriptions = sns.list_subscriptions_by_topic(TopicArn=arn)["Subscriptions"]
        found[arn.rsplit(":", 1)[1]] = sorted(
            s["Endpoint"].rsplit(":", 1)[1] for s in subscriptions
        )
    return found


def redrive(attributes: dict[str, str]) -> tuple[str, int]:
    policy = json.loads(attributes["RedrivePolicy"])
    return policy["deadLetterTargetArn"].rsplit(":", 1)[1], int(policy["maxReceiveCount"])


# --------------------------------------------------------------------- tests
def test_create_a_fifo_queue(endpoint: str, run: Any) -> None:
    run(CREATE_QUEUE)
    found = queues(endpoint)
    assert list(found) == ["payment-updates.fifo"]
    assert found["payment-updates.fifo"]["FifoQueue"] == "true"


def test_queue_as_its_own_dead_letter_queue_is_refused_and_changes_nothing(
    endpoint: str, run: Any
) -> None:
    run(CREATE_QUEUE)
    with pytest.raises(InvalidTopology, match="cannot be its own dead-letter queue") as refused:
        run(OWN_DEAD_LETTER_QUEUE)
    assert "'payment-updates-dlq.fifo'" in str(refused.value)  # the fix is in the message
    found = queues(endpoint)
    assert list(found) == ["payment-updates.fifo"]  # from the first line; nothing more
    assert "RedrivePolicy" not in found["payment-updates.fifo"]


def test_valid_dead_letter_queue_form(endpoint: str, run: Any) -> None:
    run(CREATE_QUEUE, VALID_DEAD_LETTER_QUEUE)
    found = queues(endpoint)
    assert sorted(found) == ["payment-updates-dlq.fifo", "payment-updates.fifo"]
    assert found["payment-updates-dlq.fifo"]["FifoQueue"] == "true"
    assert redrive(found["payment-updates.fifo"]) == ("payment-updates-dlq.fifo", 5)


def test_create_a_topic_with_aws_backend(endpoint: str, run: Any) -> None:
    namespace = run(CREATE_TOPIC)
    assert topics(endpoint) == {"my-topic": []}
    assert namespace["backend"].sns_client.meta.endpoint_url == "http://localhost:4566"


def test_subscribed_queue_as_written_is_refused_before_anything_is_created(
    endpoint: str, run: Any
) -> None:
    with pytest.raises(InvalidTopology, match="cannot be its own dead-letter queue"):
        run(SUBSCRIBED_QUEUE)
    assert queues(endpoint) == {}
    assert topics(endpoint) == {}


def test_fifo_queue_on_standard_topics_is_refused_before_anything_is_created(
    endpoint: str, run: Any
) -> None:
    # The dead-letter queue fixed, the topics left standard: SNS refuses that pairing.
    fixed_dead_letter_queue = SUBSCRIBED_QUEUE.replace(
        'dead_letter_queue_name="payment-updates.fifo"',
        'dead_letter_queue_name="payment-updates-dlq.fifo"',
    )
    with pytest.raises(InvalidTopology, match="cannot subscribe to standard topic") as refused:
        run(fixed_dead_letter_queue)
    assert "'my-topic-1.fifo'" in str(refused.value)  # the fix is in the message
    assert queues(endpoint) == {}
    assert topics(endpoint) == {}


@pytest.mark.parametrize(
    ("snippet", "queue", "dead_letter_queue", "suffix"),
    [
        (VALID_SUBSCRIBED_FIFO_QUEUE, "payment-updates.fifo", "payment-updates-dlq.fifo", ".fifo"),
        (VALID_SUBSCRIBED_STANDARD_QUEUE, "payment-updates", "payment-updates-dlq", ""),
    ],
    ids=["fifo", "standard"],
)
def test_valid_subscribed_queue_forms(
    endpoint: str, run: Any, snippet: str, queue: str, dead_letter_queue: str, suffix: str
) -> None:
    namespace = run(SUBSCRIBED_QUEUE_HEAD, snippet)
    topic_names = [f"my-topic-{n}{suffix}" for n in (1, 2, 3)]
    assert topics(endpoint) == {name: [queue] for name in topic_names}
    found = queues(endpoint)
    assert sorted(found) == sorted([queue, dead_letter_queue])
    assert redrive(found[queue]) == (dead_letter_queue, 5)
    # A message published to one of the topics arrives in the queue.
    backend = namespace["backend"]
    message = OutgoingMessage(b'{"payment": 42}', {"event": "updated"}, group_id="p-42")
    results = backend.publish_to_topic(topic_names[1], [message])
    assert results[0].ok, results[0].error
    received = drain(backend, queue, 1)
    assert [(m.body, dict(m.attributes)) for m in received] == [
        (b'{"payment": 42}', {"event": "updated"})
    ]


@pytest.mark.parametrize(
    "snippet",
    [VALID_DEAD_LETTER_QUEUE, VALID_SUBSCRIBED_FIFO_QUEUE, VALID_SUBSCRIBED_STANDARD_QUEUE],
    ids=["dead-letter-queue", "fifo-topics", "standard-queue"],
)
def test_the_docs_page_shows_each_valid_form(snippet: str) -> None:
    assert textwrap.dedent(snippet).strip() in DOCS_PAGE.read_text()
