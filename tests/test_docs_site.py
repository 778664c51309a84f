"""The documentation site builds with ``mkdocs build --strict``.

Strict mode turns every warning into a failure: a link to a missing page or
anchor, a page left out of the navigation, a ``::: module`` reference that does
not resolve, a docstring griffe cannot parse. One build serves every test here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "mkdocs.yml"


class _ConfigLoader(yaml.SafeLoader):
    """Reads mkdocs.yml, whose ``!!python/name:`` tags (if any) need not be resolved here."""


_ConfigLoader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)


def _nav_pages(nav: Any) -> Iterator[str]:
    """Every page path of an mkdocs ``nav`` (external links are not pages)."""
    if isinstance(nav, str):
        if "://" not in nav:
            yield nav
    elif isinstance(nav, list):
        for item in nav:
            yield from _nav_pages(item)
    elif isinstance(nav, dict):
        for value in nav.values():
            yield from _nav_pages(value)


def _built_file(site: Path, page: str) -> Path:
    """Where a page lands with mkdocs' default directory URLs."""
    stem = page.removesuffix(".md")
    if stem == "index" or stem.endswith("/index"):
        return site / f"{stem}.html"
    return site / stem / "index.html"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(CONFIG), "-d", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr}"
    return out


def test_every_nav_page_is_built(site: Path) -> None:
    nav = yaml.load(CONFIG.read_text(), Loader=_ConfigLoader)["nav"]
    pages = list(_nav_pages(nav))
    assert "index.md" in pages
    assert "reference/factory.md" in pages
    missing = [page for page in pages if not _built_file(site, page).is_file()]
    assert not missing, f"nav pages not built: {missing}"


def test_api_reference_documents_the_factory(site: Path) -> None:
    html = (site / "reference" / "factory" / "index.html").read_text()
    assert 'id="melange.factory.MessagingBackendFactory"' in html
    assert 'id="melange.factory.MessagingBackendFactory.init_queue"' in html


def test_api_reference_covers_the_plugins(site: Path) -> None:
    for plugin, backend_class in [
        ("aws", "AWSBackend"),
        ("localsqs", "LocalSQSBackend"),
        ("gcp", "GCPPubSubBackend"),
        ("azure", "AzureServiceBusBackend"),
        ("rabbitmq", "RabbitMQBackend"),
    ]:
        html = (site / "reference" / "plugins" / plugin / "index.html").read_text()
        assert f'id="melange_{plugin}.{backend_class}"' in html, plugin
