"""Root pytest configuration: load the conformance report plugin (``--melange-report=DIR``).

It is loaded explicitly here rather than through an auto-loading ``pytest11``
entry point, so installing melange never changes anyone else's pytest run.
"""

pytest_plugins = ["melange.testing.conformance.report"]
