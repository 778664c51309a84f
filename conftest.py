"""Root pytest configuration: load the conformance report plugin (``--melange-report=DIR``).

It is loaded explicitly here rather than through an auto-loading ``pytest11``
entry point, so installing melange never changes anyone else's pytest run.

``tests.executed_docs`` runs the Python snippets of README.md and docs/ as tests.
"""

pytest_plugins = ["melange.testing.conformance.report", "tests.executed_docs"]
