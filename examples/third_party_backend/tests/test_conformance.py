"""melange's shared conformance suite, run against the sqlite backend.

This is all a plugin needs: subclass the suite and provide one fixture that
yields a fresh backend. Tests needing a capability the backend does not declare
(topics, FIFO, deduplication, filters) are skipped with a reason; the suite
never skips by backend name.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from melange_example_sqlite import SQLiteBackend

from melange.testing.conformance import BackendSpec, ConformanceSuite, known_deviation

KNOWN_DEVIATIONS: dict[str, str] = {
    # "test_name[param-id]": "why this backend behaves differently, and since when",
}
"""Conformance tests expected to fail here, by test id, each with the reason."""


class TestSQLiteBackend(ConformanceSuite):
    @pytest.fixture
    def melange_backend(self, tmp_path: Path) -> Iterator[SQLiteBackend]:
        # A new file per test: tests share nothing, and each runs on real time.
        backend = SQLiteBackend(tmp_path / "conformance.sqlite3")
        yield backend
        backend.close()

    @pytest.fixture
    def melange_backend_spec(self, tmp_path: Path) -> BackendSpec:
        # The same file as melange_backend: another process opens it by path.
        return ("sqlite", {"path": str(tmp_path / "conformance.sqlite3")})

    @pytest.fixture(autouse=True)
    def _known_deviation(self, request: pytest.FixtureRequest) -> None:
        reason = known_deviation(KNOWN_DEVIATIONS, request.node.name)
        if reason is not None:
            # strict: once the deviation is gone the XPASS fails, so the entry gets removed.
            request.applymarker(pytest.mark.xfail(reason=reason, strict=True))
