"""Testing helpers for melange users and backend authors.

:mod:`melange.testing.conformance` holds the conformance suite every backend
plugin runs unchanged. Nothing here is imported by ``import melange``.
"""
