"""melange-example-sqlite: a worked third-party melange backend.

Installing this distribution registers the ``sqlite`` backend in the
``melange.backends`` entry-point group, so ``load_backend("sqlite", path=...)``
finds it by name. See ``docs/writing-a-backend.md`` in the melange repository.
"""

from melange_example_sqlite.backend import SQLiteBackend

__all__ = ["SQLiteBackend"]
__version__ = "0.1.0"
