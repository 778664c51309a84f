"""Run the Python snippets of the READMEs and docs/ as tests, on the broker each page needs.

Collection and execution are pytest-markdown-docs' (its ``MarkdownTextFile``
collector and fence options); this plugin only says which Markdown files are
documentation (the READMEs and ``docs/**.md``, collected by a plain ``pytest``
run without ``--markdown-docs``) and reads per-page directives written as HTML
comments, which neither GitHub nor the docs site shows:

``<!-- docs-test page: OPTIONS -->``
    Anywhere in a page: OPTIONS apply to every ``python`` fence of the page.
``<!-- docs-test: OPTIONS -->``
    Just before one fence: OPTIONS for that fence only.

OPTIONS are pytest-markdown-docs' own words (``continuation`` runs the fence
after the page's earlier ones, in one namespace; ``fixture:NAME`` makes a
fixture available), plus:

``context=NAME``
    The broker the snippets talk to, as a user would point them at it through
    the environment: ``memory`` (the default), ``aws`` (a moto server through
    ``AWS_ENDPOINT_URL``), ``gcp`` (Google's Pub/Sub emulator through
    ``PUBSUB_EMULATOR_HOST``) or ``azure`` (the Service Bus stand-ins through
    ``AZURE_SERVICEBUS_CONNECTION_STRING`` and ``AZURE_SERVICEBUS_MANAGEMENT_URL``) or
    ``rabbitmq`` (a private RabbitMQ node with its management plugin, through
    ``RABBITMQ_URL`` and ``RABBITMQ_MANAGEMENT_URL``).
    Every fence runs in a fresh temporary directory, with no ``MELANGE_*`` or
    cloud variables but those, against a broker holding nothing from another test.
``fresh``
    This fence does not continue the page's earlier ones.
``not-run REASON...``
    The fence is deliberately not executed; the reason is required and shown
    in the page's source. A fence that neither runs nor gives a reason fails
    collection.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from markdown_it import MarkdownIt
    from markdown_it.rules_core import StateCore

REPO = Path(__file__).resolve().parents[1]
PYTHON_FENCES = ("py", "python", "python3")
CONTEXTS = ("memory", "aws", "gcp", "azure", "rabbitmq")
_DIRECTIVE = re.compile(r"^<!--\s*docs-test(?P<page>\s+page)?:\s*(?P<options>.*?)\s*-->\s*$", re.S)
# Variables that would point a snippet at another broker than its page's context.
_CLEARED_PREFIXES = ("MELANGE_", "AWS_", "PUBSUB_", "GOOGLE_", "AZURE_", "CLOUDSDK_", "RABBITMQ_")


class DocsDirectiveError(Exception):
    """A ``docs-test`` comment that cannot be honoured."""


def is_documentation(path: Path) -> bool:
    """The READMEs (root, plugins, examples) and every Markdown page under docs/."""
    if path.suffix != ".md":
        return False
    resolved = path.resolve()
    readmes = (
        REPO / "README.md",
        *REPO.glob("plugins/*/README.md"),
        *REPO.glob("examples/*/README.md"),
    )
    return resolved in readmes or (REPO / "docs") in resolved.parents


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    """Collect documentation pages unless ``--markdown-docs`` already does."""
    if parent.config.getoption("markdowndocs", default=False) or not is_documentation(file_path):
        return None
    from pytest_markdown_docs.plugin import MarkdownTextFile

    return MarkdownTextFile.from_parent(parent, path=file_path)  # type: ignore[no-any-return]


def _options(text: str) -> list[str]:
    words = text.split()
    if words and words[0] == "not-run":
        if len(words) == 1:
            raise DocsDirectiveError("'not-run' needs a reason: <!-- docs-test: not-run WHY -->")
        return ["notest"]
    for word in words:
        if word.startswith("context=") and word.removeprefix("context=") not in CONTEXTS:
            raise DocsDirectiveError(f"unknown {word!r}; contexts: {', '.join(CONTEXTS)}")
    return words


def _fence_info(lang: str, page: list[str], fence: list[str]) -> str:
    options = [*page, *fence]
    if "fresh" in options:
        options = [word for word in options if word not in ("fresh", "continuation")]
    context = next(
        (w.removeprefix("context=") for w in reversed(options) if w.startswith("context=")),
        "memory",
    )
    options = [word for word in options if not word.startswith("context=")]
    return " ".join([lang, *options, f"fixture:docs_{context}"])


def _apply_directives(state: StateCore) -> None:
    tokens = state.tokens
    page: list[str] = []
    for token in tokens:
        match = _DIRECTIVE.match(token.content.strip()) if token.type == "html_block" else None
        if match and match["page"]:
            page += _options(match["options"])
    for index, token in enumerate(tokens):
        words = token.info.split() if token.type == "fence" else []
        if not words or words[0] not in PYTHON_FENCES:
            continue
        before = tokens[index - 1] if index else None
        match = (
            _DIRECTIVE.match(before.content.strip())
            if before is not None and before.type == "html_block"
            else None
        )
        fence = _options(match["options"]) if match and not match["page"] else []
        token.info = _fence_info(words[0], page, [*words[1:], *fence])


@pytest.hookimpl
def pytest_markdown_docs_markdown_it() -> MarkdownIt:
    """CommonMark, as the plugin parses it, plus the ``docs-test`` directives."""
    from markdown_it import MarkdownIt

    parser = MarkdownIt("commonmark")
    parser.core.ruler.push("melange_docs_test", _apply_directives)
    return parser


# --- contexts ------------------------------------------------------------------------------


@pytest.fixture
def docs_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh working directory, an environment that names no broker, logging put back.

    Pages show process-wide set-up (a handler and a level on the ``melange``
    logger, a backend registered by name, Prometheus metrics); what a snippet changes there is
    undone afterwards, so that it cannot change another test's outcome.
    """
    for name in list(os.environ):
        if name.startswith(_CLEARED_PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    from melange.backends import registry

    monkeypatch.setattr(registry, "_registered", dict(registry._registered))
    melange_logger = logging.getLogger("melange")
    handlers, level, propagate = (
        list(melange_logger.handlers),
        melange_logger.level,
        melange_logger.propagate,
    )
    from prometheus_client import REGISTRY

    collectors = set(REGISTRY._collector_to_names)
    try:
        yield tmp_path
    finally:
        melange_logger.handlers[:] = handlers
        melange_logger.setLevel(level)
        melange_logger.propagate = propagate
        # The metrics a page defines at module level, as Prometheus users do.
        for collector in set(REGISTRY._collector_to_names) - collectors:
            REGISTRY.unregister(collector)


@pytest.fixture(scope="session")
def _docs_moto_server() -> Iterator[Any]:
    from melange_localsqs.testing import MotoServer

    # A server that cannot start raises: the page's tests error, they are never skipped.
    with MotoServer(patch_sqs=True) as server:
        yield server


@pytest.fixture
def docs_aws(
    docs_memory: Path, _docs_moto_server: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """An empty moto server (SNS and SQS) that boto3 finds through ``AWS_ENDPOINT_URL``."""
    _docs_moto_server.reset()
    monkeypatch.setenv("AWS_ENDPOINT_URL", _docs_moto_server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    yield docs_memory


@pytest.fixture(scope="session")
def _docs_pubsub_emulator() -> Iterator[Any]:
    from melange_gcp.testing import PubSubEmulator

    with PubSubEmulator() as emulator:
        yield emulator


@pytest.fixture
def docs_gcp(
    docs_memory: Path, _docs_pubsub_emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """Google's emulator through ``PUBSUB_EMULATOR_HOST``, in a project of the test's own."""
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", _docs_pubsub_emulator.host_port)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", f"docs-{uuid.uuid4().hex[:12]}")
    yield docs_memory


@pytest.fixture
def docs_azure(docs_memory: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A new pair of Service Bus stand-ins, reached through their connection string."""
    standins = str(REPO / "plugins" / "melange_azure" / "tests")
    if standins not in sys.path:
        sys.path.append(standins)
    from standin import ServiceBusStandIn

    with ServiceBusStandIn() as stand_in:
        monkeypatch.setenv("AZURE_SERVICEBUS_CONNECTION_STRING", stand_in.connection_string)
        # The stand-in serves the administration API on a port of its own, as Microsoft's
        # emulator does: pages pass it as the backend's ``management_url`` option.
        monkeypatch.setenv("AZURE_SERVICEBUS_MANAGEMENT_URL", stand_in.management_url)
        yield docs_memory
    assert stand_in.amqp.errors == [], stand_in.amqp.errors


@pytest.fixture(scope="session")
def _docs_rabbitmq_environment() -> Iterator[dict[str, str]]:
    """A private RabbitMQ node for the session, as the variables the pages read."""
    from melange_rabbitmq.testing import RabbitMQNode

    # A node that cannot start raises: the page's tests error, they are never skipped.
    with RabbitMQNode() as node:
        yield {"RABBITMQ_URL": node.url, "RABBITMQ_MANAGEMENT_URL": node.management_url}


@pytest.fixture
def docs_rabbitmq(
    docs_memory: Path, _docs_rabbitmq_environment: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A private RabbitMQ node (its own name, ports and data) with the management plugin."""
    for name, value in _docs_rabbitmq_environment.items():
        monkeypatch.setenv(name, value)
    return docs_memory
