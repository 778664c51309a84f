"""The directives of tests/executed_docs.py: what each page comment does to its fences."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.executed_docs import (
    DocsDirectiveError,
    is_documentation,
    pytest_markdown_docs_markdown_it,
)

REPO = Path(__file__).resolve().parents[1]


def fence_infos(markdown: str) -> list[str]:
    parser = pytest_markdown_docs_markdown_it()
    return [t.info for t in parser.parse(markdown) if t.type == "fence"]


def test_a_page_without_directives_runs_each_python_fence_alone_on_memory() -> None:
    page = "```python\na = 1\n```\n\n```bash\nls\n```\n\n```python\nb = 2\n```\n"
    assert fence_infos(page) == [
        "python fixture:docs_memory",
        "bash",
        "python fixture:docs_memory",
    ]


def test_page_options_apply_to_every_fence_and_fence_options_to_one() -> None:
    page = (
        "<!-- docs-test page: continuation context=aws -->\n\n"
        "```python\na = 1\n```\n\n"
        "<!-- docs-test: fresh context=gcp -->\n```python\nb = 2\n```\n\n"
        "```python\nc = 3\n```\n"
    )
    assert fence_infos(page) == [
        "python continuation fixture:docs_aws",
        "python fixture:docs_gcp",
        "python continuation fixture:docs_aws",
    ]


def test_not_run_needs_a_reason() -> None:
    page = "<!-- docs-test: not-run blocks until SIGTERM -->\n```python\nrun()\n```\n"
    assert fence_infos(page) == ["python notest fixture:docs_memory"]
    with pytest.raises(DocsDirectiveError, match="needs a reason"):
        fence_infos("<!-- docs-test: not-run -->\n```python\nrun()\n```\n")


def test_an_unknown_context_is_refused() -> None:
    with pytest.raises(DocsDirectiveError, match="unknown 'context=kafka'"):
        fence_infos("<!-- docs-test page: context=kafka -->\n```python\nx = 1\n```\n")


def test_which_files_are_documentation() -> None:
    assert is_documentation(REPO / "README.md")
    assert is_documentation(REPO / "docs" / "backends" / "aws.md")
    assert is_documentation(REPO / "plugins" / "melange_aws" / "README.md")
    assert not is_documentation(REPO / "benchmarks" / "README.md")
    assert not is_documentation(REPO / "CHANGELOG.md")
