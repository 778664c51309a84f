"""The example third-party plugin (examples/third_party_backend) is found and used by name.

It is a separate distribution, ``melange-example-sqlite``, that registers
``sqlite`` in the ``melange.backends`` entry-point group; nothing in melange
mentions it. These tests prove that a plugin installed that way is discovered,
loaded, configured and driven through the factory like a first-party backend.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from melange import MessagingBackendFactory
from melange.backends import (
    OutgoingMessage,
    available_backends,
    describe_backends,
    get_backend_class,
    load_backend,
)
from melange.exceptions import ConfigurationError, UnsupportedCapability

melange_example_sqlite = pytest.importorskip(
    "melange_example_sqlite", reason="the example plugin is installed by `make install`"
)


def test_listed_by_name_without_importing_the_plugin() -> None:
    script = textwrap.dedent(
        """
        import sys
        from melange.backends import available_backends
        names = available_backends()
        print("sqlite" in names, "melange_example_sqlite" in sys.modules)
        """
    )
    output = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert output.split() == ["True", "False"]
    assert "sqlite" in available_backends()


def test_load_backend_returns_the_plugin_class(tmp_path: Path) -> None:
    assert get_backend_class("sqlite") is melange_example_sqlite.SQLiteBackend
    backend = load_backend("sqlite", path=str(tmp_path / "q.sqlite3"))
    try:
        assert type(backend) is melange_example_sqlite.SQLiteBackend
        assert backend.name == "sqlite"
        assert (tmp_path / "q.sqlite3").exists()
    finally:
        backend.close()


def test_described_with_its_distribution_and_capability_subset() -> None:
    (info,) = [info for info in describe_backends() if info.name == "sqlite"]
    assert (info.status, info.distribution, info.version) == (
        "ok",
        "melange-example-sqlite",
        melange_example_sqlite.__version__,
    )
    assert info.capabilities is not None
    assert info.capabilities.supported() == [
        "dead_letter",
        "delay",
        "batch",
        "lease_extension",
        "nack_delay",
    ]


def test_bad_options_are_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="needs a database file"):
        load_backend("sqlite")
    with pytest.raises(ConfigurationError, match="did you mean 'path'"):
        load_backend("sqlite", pth=str(tmp_path / "q.sqlite3"))
    assert list(tmp_path.iterdir()) == []


def test_chosen_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no melange.toml / pyproject.toml of the repository
    monkeypatch.setenv("MELANGE_BACKEND", "sqlite")
    monkeypatch.setenv("MELANGE_OPTION_PATH", str(tmp_path / "env.sqlite3"))
    monkeypatch.setenv("MELANGE_OPTION_BUSY_TIMEOUT", "2.5")
    factory = MessagingBackendFactory.from_config()
    try:
        assert isinstance(factory.backend, melange_example_sqlite.SQLiteBackend)
        assert factory.backend.path == str(tmp_path / "env.sqlite3")
        assert factory.backend.busy_timeout == 2.5  # converted from the string
    finally:
        factory.backend.close()


def test_factory_creates_a_durable_queue_with_a_dead_letter_queue(tmp_path: Path) -> None:
    path = str(tmp_path / "payments.sqlite3")
    factory = MessagingBackendFactory(load_backend("sqlite", path=path))
    plan = factory.init_queue(
        "payment-updates",
        dead_letter_queue_name="payment-updates-dlq",
        max_receive_count=1,
        visibility_timeout=0,
    )
    assert [(action.kind, action.target) for action in plan] == [
        ("create_queue", "payment-updates-dlq"),
        ("create_queue", "payment-updates"),
    ]
    again = factory.init_queue(
        "payment-updates",
        dead_letter_queue_name="payment-updates-dlq",
        max_receive_count=1,
        visibility_timeout=0,
    )
    assert len(again) == 0
    backend = factory.backend
    backend.publish("payment-updates", [OutgoingMessage(b"poison", {"kind": "refund"})])
    assert backend.receive("payment-updates")[0].receive_count == 1
    assert backend.receive("payment-updates") == []  # the second receive moved it
    backend.close()

    with load_backend("sqlite", path=path) as reopened:
        (dead,) = reopened.receive("payment-updates-dlq")
    assert (dead.body, dict(dead.attributes)) == (b"poison", {"kind": "refund"})


@pytest.mark.parametrize(
    ("queue", "topics", "capability"),
    [("orders", ["order-events"], "topics"), ("orders.fifo", None, "fifo")],
)
def test_factory_refuses_what_the_plugin_lacks(
    tmp_path: Path, queue: str, topics: list[str] | None, capability: str
) -> None:
    factory = MessagingBackendFactory(load_backend("sqlite", path=str(tmp_path / "q.sqlite3")))
    with factory.backend:
        expected = f"'sqlite' does not support '{capability}'"
        with pytest.raises(UnsupportedCapability, match=expected):
            factory.init_queue(queue, topics)
        assert factory.backend.get_queue(queue) is None
