"""Fixtures shared by the core tests."""

from __future__ import annotations

import pytest

import melange.backends
from melange.backends import registry
from melange.backends.registry import KnownBackend


@pytest.fixture
def uninstalled_backend(monkeypatch: pytest.MonkeyPatch) -> KnownBackend:
    """A first-party backend name that is known but never installed, whatever this venv holds.

    Tests of the "plugin missing" path use it so they do not depend on which
    real plugins (melange-aws, ...) happen to be installed.
    """
    known = KnownBackend("examplemq", "melange-examplemq", "examplemq", "ExampleMQBackend")
    monkeypatch.setitem(registry.KNOWN_BACKENDS, known.name, known)
    monkeypatch.setitem(melange.backends._CLASS_TO_BACKEND, known.class_name, known.name)
    return known
