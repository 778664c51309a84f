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

from melange.testing.conformance import ConformanceSuite


class TestSQLiteBackend(ConformanceSuite):
    @pytest.fixture
    def melange_backend(self, tmp_path: Path) -> Iterator[SQLiteBackend]:
        # A new file per test: tests share nothing, and each runs on real time.
        backend = SQLiteBackend(tmp_path / "conformance.sqlite3")
        yield backend
        backend.close()
