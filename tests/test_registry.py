"""The backend registry: entry points through stevedore, in-process registration, errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from stevedore import ExtensionManager

import melange.backends
from melange.backends import (
    ENTRY_POINT_GROUP,
    KNOWN_BACKENDS,
    MessagingBackend,
    available_backends,
    describe_backends,
    get_backend_class,
    load_backend,
    register_backend,
    unregister_backend,
)
from melange.backends.registry import KnownBackend
from melange.exceptions import BackendLoadError, BackendNotFound, ConfigurationError


@pytest.fixture
def fake_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Install (on sys.path) a distribution with one good and two broken entry points."""
    dist_info = tmp_path / "melange_fake_plugins-1.2.3.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: melange-fake-plugins\nVersion: 1.2.3\n"
    )
    (dist_info / "entry_points.txt").write_text(
        textwrap.dedent(
            """\
            [melange.backends]
            fakegood = fake_good_backend:GoodBackend
            fakebroken = fake_broken_backend:Backend
            fakenotabackend = fake_good_backend:NotABackend
            """
        )
    )
    (tmp_path / "fake_good_backend.py").write_text(
        textwrap.dedent(
            """\
            from melange.backends.memory import MemoryBackend

            class GoodBackend(MemoryBackend):
                name = "fakegood"

            class NotABackend:
                pass
            """
        )
    )
    (tmp_path / "fake_broken_backend.py").write_text(
        "import a_dependency_that_is_not_installed_anywhere\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    # stevedore caches a group's entry points for the life of the process.
    ExtensionManager.ENTRY_POINT_CACHE.pop(ENTRY_POINT_GROUP, None)
    yield tmp_path
    ExtensionManager.ENTRY_POINT_CACHE.pop(ENTRY_POINT_GROUP, None)
    for module in ("fake_good_backend", "fake_broken_backend"):
        sys.modules.pop(module, None)


def test_memory_is_registered_through_its_entry_point() -> None:
    assert "memory" in available_backends()
    backend_class = get_backend_class("memory")
    assert backend_class.__name__ == "MemoryBackend"
    assert issubclass(backend_class, MessagingBackend)


def test_load_backend_creates_a_fresh_instance_with_options() -> None:
    first = load_backend("memory", max_message_size=1024)
    second = load_backend("memory")
    assert first is not second
    assert first.capabilities.max_message_size == 1024
    assert second.capabilities.max_message_size == 256 * 1024


def test_unknown_option_names_the_accepted_ones() -> None:
    with pytest.raises(ConfigurationError) as error:
        load_backend("memory", max_mesage_size=10)
    message = str(error.value)
    assert "max_mesage_size" in message
    assert "did you mean 'max_message_size'" in message
    assert "accepted options: clock, dedup_window, max_message_size" in message


def test_missing_first_party_plugin_names_the_install_command(
    uninstalled_backend: KnownBackend,
) -> None:
    known = uninstalled_backend
    with pytest.raises(BackendNotFound) as error:
        getattr(melange.backends, known.class_name)
    message = str(error.value)
    assert f'pip install "melange[{known.extra}]"' in message
    assert known.distribution in message
    assert error.value.install_hint == f'pip install "melange[{known.extra}]"'


def test_missing_plugin_raises_import_error_naming_its_extra(
    uninstalled_backend: KnownBackend,
) -> None:
    # The design promise: `from melange.backends import AWSBackend` fails like any import
    # when the plugin is not installed.
    with pytest.raises(ImportError, match=r'pip install "melange\[examplemq\]"') as error:
        from melange.backends import ExampleMQBackend  # type: ignore[attr-defined]  # noqa: F401
    assert isinstance(error.value, BackendNotFound)
    assert "melange-examplemq" in str(error.value)


def test_memory_class_resolves_lazily_by_attribute() -> None:
    from melange.backends import MemoryBackend

    assert MemoryBackend is get_backend_class("memory")


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="NoSuchThing"):
        melange.backends.NoSuchThing  # noqa: B018


def test_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(BackendNotFound) as error:
        load_backend("memroy")
    assert "did you mean 'memory'" in str(error.value)
    assert "installed backends:" in str(error.value)
    assert error.value.install_hint is None


def test_register_backend_by_import_path() -> None:
    register_backend("inproc-memory", "melange.backends.memory:MemoryBackend")
    try:
        assert "inproc-memory" in available_backends()
        assert type(load_backend("inproc-memory")).__name__ == "MemoryBackend"
        with pytest.raises(ConfigurationError, match="already registered"):
            register_backend("inproc-memory", "melange.backends.memory:MemoryBackend")
        register_backend("inproc-memory", "json:JSONDecoder", replace=True)
        with pytest.raises(BackendLoadError, match="not a subclass of"):
            load_backend("inproc-memory")
    finally:
        unregister_backend("inproc-memory")
    assert "inproc-memory" not in available_backends()


def test_register_backend_refuses_a_taken_entry_point_name() -> None:
    with pytest.raises(ConfigurationError, match="replace=True"):
        register_backend("memory", "melange.backends.memory:MemoryBackend")


@pytest.mark.parametrize("target", ["", "no_colon", ":Cls", "mod:"])
def test_register_backend_refuses_malformed_targets(target: str) -> None:
    with pytest.raises(ConfigurationError, match=r"package\.module:ClassName"):
        register_backend("x", target)


def test_registered_module_that_fails_to_import_keeps_the_cause() -> None:
    register_backend("ghost", "no_such_module_anywhere:Backend")
    try:
        with pytest.raises(BackendLoadError) as error:
            load_backend("ghost")
        assert isinstance(error.value.__cause__, ImportError)
        assert "no_such_module_anywhere" in str(error.value)
    finally:
        unregister_backend("ghost")


def test_broken_entry_point_reports_its_real_cause(fake_plugins: Path) -> None:
    with pytest.raises(BackendLoadError) as error:
        get_backend_class("fakebroken")
    message = str(error.value)
    assert "melange-fake-plugins" in message
    assert "a_dependency_that_is_not_installed_anywhere" in message
    assert isinstance(error.value.__cause__, ModuleNotFoundError)


def test_entry_point_to_a_non_backend_is_refused(fake_plugins: Path) -> None:
    with pytest.raises(BackendLoadError, match="not a subclass of"):
        get_backend_class("fakenotabackend")


def test_a_broken_plugin_hides_no_other(
    fake_plugins: Path, uninstalled_backend: KnownBackend
) -> None:
    names = available_backends()
    assert {"fakegood", "fakebroken", "fakenotabackend", "memory"} <= set(names)
    assert get_backend_class("fakegood").__name__ == "GoodBackend"
    infos = {info.name: info for info in describe_backends()}
    assert infos["fakegood"].status == "ok"
    assert infos["fakegood"].version == "1.2.3"
    assert infos["fakebroken"].status == "error"
    assert "a_dependency_that_is_not_installed_anywhere" in (infos["fakebroken"].error or "")
    assert infos["memory"].status == "ok"
    assert infos["examplemq"].status == "not installed"
    assert infos["examplemq"].error == 'pip install "melange[examplemq]"'


def test_listing_backends_imports_no_plugin(fake_plugins: Path) -> None:
    available_backends()
    assert "fake_broken_backend" not in sys.modules
    assert "fake_good_backend" not in sys.modules


def test_import_melange_scans_no_entry_point_and_imports_no_sdk() -> None:
    code = textwrap.dedent(
        """\
        import importlib.metadata, sys
        calls = []
        original = importlib.metadata.entry_points
        importlib.metadata.entry_points = lambda *a, **k: calls.append(1) or original(*a, **k)
        import melange, melange.backends
        from melange import MessagingBackendFactory, Message
        heavy = [m for m in ("stevedore", "boto3", "botocore", "google.cloud", "azure",
                             "kombu", "redis", "melange.backends.memory") if m in sys.modules]
        print(len(calls), heavy)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "0 []"


def test_every_install_hint_names_an_extra_that_exists() -> None:
    from packaging.requirements import Requirement
    from packaging.version import Version

    from melange.config import tomllib  # the stdlib module, or tomli on Python 3.10

    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())
    extras = project["project"]["optional-dependencies"]
    sources = project["tool"]["uv"]["sources"]
    for known in KNOWN_BACKENDS.values():
        if known.extra is None:
            continue
        (requirement,) = (Requirement(text) for text in extras[known.extra])
        assert requirement.name == known.distribution, known.name
        # Lockstep releases: the extra takes this major version of the plugin, never a 7.x
        # nor a later major (pip would otherwise fill it with whatever the index has).
        version = Version(project["project"]["version"])
        assert requirement.specifier.contains(version), requirement
        assert not requirement.specifier.contains(f"{version.major - 1}.99"), requirement
        assert not requirement.specifier.contains(f"{version.major + 1}.0"), requirement
        assert known.extra in extras["all"][0], known.name
        # Every first-party plugin lives in this workspace, so `make install` builds it from here.
        assert (root / "plugins" / known.distribution.replace("-", "_")).is_dir(), known.name
        assert sources[known.distribution] == {"workspace": True}, known.name
