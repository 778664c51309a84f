"""Choosing a backend by name: arguments, environment, melange.toml, pyproject.toml, default."""

from __future__ import annotations

from pathlib import Path

import pytest

from melange import MessagingBackendFactory
from melange.backends import load_backend_from_config, register_backend, unregister_backend
from melange.backends.memory import MemoryBackend
from melange.backends.registry import KnownBackend
from melange.config import find_config_file, resolve_backend_config
from melange.exceptions import BackendNotFound, ConfigurationError

NO_ENV: dict[str, str] = {}


def test_default_is_memory_when_nothing_is_configured(tmp_path: Path) -> None:
    config = resolve_backend_config(environ=NO_ENV, cwd=tmp_path)
    assert (config.backend, config.options, config.source) == ("memory", {}, "default")


def test_explicit_arguments_win_over_environment_and_files(tmp_path: Path) -> None:
    (tmp_path / "melange.toml").write_text('backend = "nonexistent"\n')
    env = {"MELANGE_BACKEND": "also-nonexistent"}
    config = resolve_backend_config("memory", environ=env, cwd=tmp_path, dedup_window=5.0)
    assert (config.backend, config.options, config.source) == (
        "memory",
        {"dedup_window": 5.0},
        "arguments",
    )


def test_environment_names_the_backend_and_its_options(tmp_path: Path) -> None:
    (tmp_path / "melange.toml").write_text('backend = "nonexistent"\n')
    env = {
        "MELANGE_BACKEND": "memory",
        "MELANGE_OPTION_MAX_MESSAGE_SIZE": "2048",
        "MELANGE_OPTION_DEDUP_WINDOW": "1.5",
    }
    backend = load_backend_from_config(environ=env, cwd=tmp_path)
    assert backend.name == "memory"
    assert backend.capabilities.max_message_size == 2048  # converted to int


def test_environment_option_of_the_wrong_type_is_explained(tmp_path: Path) -> None:
    env = {"MELANGE_BACKEND": "memory", "MELANGE_OPTION_MAX_MESSAGE_SIZE": "big"}
    with pytest.raises(ConfigurationError) as error:
        resolve_backend_config(environ=env, cwd=tmp_path)
    assert "max_message_size='big' from environment is not a valid int" in str(error.value)


def test_unknown_environment_option_names_the_accepted_ones(tmp_path: Path) -> None:
    env = {"MELANGE_BACKEND": "memory", "MELANGE_OPTION_REGION_NAME": "eu-west-1"}
    with pytest.raises(ConfigurationError) as error:
        resolve_backend_config(environ=env, cwd=tmp_path)
    message = str(error.value)
    assert "region_name" in message
    assert "accepted options: clock, dedup_window, max_message_size" in message
    assert "environment" in message


SECRET = "Zq9-not-to-be-shown"


@pytest.mark.parametrize("route", ["environment", "file", "arguments"])
def test_a_misspelt_option_of_a_backend_taking_more_keywords_is_named_not_echoed(
    tmp_path: Path, route: str
) -> None:
    """localsqs takes ``**options`` (melange 7.x's keywords): its own check names the option."""
    (tmp_path / "melange.toml").write_text(
        f'backend = "localsqs"\n[options]\naws_secret_acces_key = "{SECRET}"\n'
    )
    environ = {"MELANGE_BACKEND": "localsqs", "MELANGE_OPTION_AWS_SECRET_ACCES_KEY": SECRET}
    with pytest.raises(ConfigurationError) as error:
        if route == "environment":
            load_backend_from_config(environ=environ, cwd=tmp_path)
        elif route == "file":
            load_backend_from_config(environ=NO_ENV, cwd=tmp_path)
        else:
            load_backend_from_config(
                "localsqs", environ=NO_ENV, cwd=tmp_path, aws_secret_acces_key=SECRET
            )
    message = str(error.value)
    assert SECRET not in message and SECRET not in repr(error.value.args)
    assert "did you mean 'aws_secret_access_key'" in message, message


def test_a_7x_keyword_from_the_environment_reaches_the_backend(tmp_path: Path) -> None:
    environ = {"MELANGE_BACKEND": "localsqs", "MELANGE_OPTION_SNS_HOST": "localhost"}
    with pytest.warns(DeprecationWarning, match="sns_host"):
        backend = load_backend_from_config(environ=environ, cwd=tmp_path)
    backend.close()


@pytest.mark.parametrize(
    ("value", "kind"), [("1.5", "int"), ("true", "int"), ("[1]", "float"), ("{a = 1}", "int")]
)
def test_a_mistyped_value_in_a_file_names_the_file(tmp_path: Path, value: str, kind: str) -> None:
    option = "dedup_window" if kind == "float" else "max_message_size"
    (tmp_path / "melange.toml").write_text(f'backend = "memory"\n[options]\n{option} = {value}\n')
    with pytest.raises(ConfigurationError) as error:
        load_backend_from_config(environ=NO_ENV, cwd=tmp_path)
    assert "melange.toml" in str(error.value), error.value
    assert f"{option}=" in str(error.value) and f"not a valid {kind}" in str(error.value)


class _ListOptionBackend(MemoryBackend):
    """A backend with an option that is a list of strings, as a file can give it."""

    def __init__(
        self,
        regions: list[str] = [],  # noqa: B006 - never changed
        zones: list[str] | None = None,
        retries: int = 1,
    ) -> None:
        super().__init__()
        self.regions, self.zones, self.retries = regions, zones, retries


def test_a_file_value_of_a_generic_type_is_taken_as_it_is(tmp_path: Path) -> None:
    """``list[str]`` is not ``str``: only a union is unwrapped for the check."""
    register_backend("list-option", f"{__name__}:_ListOptionBackend")
    try:
        (tmp_path / "melange.toml").write_text(
            'backend = "list-option"\n[options]\n'
            'regions = ["eu", "us"]\nzones = ["a"]\nretries = 3\n'
        )
        backend = load_backend_from_config(environ=NO_ENV, cwd=tmp_path)
        assert isinstance(backend, _ListOptionBackend)
        assert (backend.regions, backend.zones, backend.retries) == (["eu", "us"], ["a"], 3)
    finally:
        unregister_backend("list-option")


def test_a_pyproject_whose_tool_is_not_a_table_is_explained(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("tool = 1\n")
    with pytest.raises(ConfigurationError) as error:
        load_backend_from_config(environ=NO_ENV, cwd=tmp_path)
    assert "pyproject.toml" in str(error.value) and "tool" in str(error.value)


def test_melange_toml_in_a_parent_directory(tmp_path: Path) -> None:
    (tmp_path / "melange.toml").write_text(
        'backend = "memory"\n[options]\nmax_message_size = 4096\n'
    )
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    config = resolve_backend_config(environ=NO_ENV, cwd=nested)
    assert config.options == {"max_message_size": 4096}
    assert config.source == str(tmp_path / "melange.toml")


def test_pyproject_tool_melange_table(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "app"\n[tool.melange]\nbackend = "memory"\n'
        "[tool.melange.options]\ndedup_window = 60.0\n"
    )
    config = resolve_backend_config(environ=NO_ENV, cwd=tmp_path)
    assert (config.backend, config.options) == ("memory", {"dedup_window": 60.0})


def test_search_stops_at_the_project_root(tmp_path: Path) -> None:
    (tmp_path / "melange.toml").write_text('backend = "nonexistent"\n')
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text('[project]\nname = "app"\n')
    assert find_config_file(project) is None
    assert resolve_backend_config(environ=NO_ENV, cwd=project).backend == "memory"


def test_explicit_config_file(tmp_path: Path) -> None:
    path = tmp_path / "custom.toml"
    path.write_text('backend = "memory"\n')
    config = resolve_backend_config(config_file=path, environ=NO_ENV, cwd=tmp_path)
    assert config.source == str(path)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('backend = "memory"\nregion = "x"\n', "unknown key(s) region; accepted keys: backend"),
        ("backend = [1]\n", 'write backend = "<name>"'),
        ("backend = = 1\n", "is not valid TOML"),
    ],
)
def test_malformed_files_are_explained(tmp_path: Path, content: str, expected: str) -> None:
    (tmp_path / "melange.toml").write_text(content)
    with pytest.raises(ConfigurationError) as error:
        resolve_backend_config(environ=NO_ENV, cwd=tmp_path)
    assert expected in str(error.value)
    assert "melange.toml" in str(error.value)


@pytest.mark.parametrize("name", ["melange.toml", "pyproject.toml"])
def test_a_file_that_is_not_utf8_is_explained(tmp_path: Path, name: str) -> None:
    # tomllib raises UnicodeDecodeError, not TOMLDecodeError: it came out as a traceback.
    (tmp_path / name).write_bytes('[tool.melange]\nbackend = "m\u00e9mory"\n'.encode("latin-1"))
    with pytest.raises(ConfigurationError) as error:
        resolve_backend_config(environ=NO_ENV, cwd=tmp_path)
    assert name in str(error.value) and "must be UTF-8 TOML" in str(error.value)


def test_an_explicit_file_replaces_the_search_not_the_environment(tmp_path: Path) -> None:
    """docs/configuration.md: ``config_file=`` stands in for step 3 only."""
    path = tmp_path / "elsewhere.toml"
    path.write_text('backend = "memory"\n[options]\ndedup_window = 2.0\n')
    (tmp_path / "melange.toml").write_text('backend = "nonexistent"\n')
    from_file = resolve_backend_config(config_file=path, environ=NO_ENV, cwd=tmp_path)
    assert (from_file.backend, from_file.options) == ("memory", {"dedup_window": 2.0})
    env = {"MELANGE_BACKEND": "sqlite"}
    from_env = resolve_backend_config(config_file=path, environ=env, cwd=tmp_path)
    assert (from_env.backend, from_env.source) == ("sqlite", "environment")


def test_missing_explicit_file_is_explained(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read configuration file"):
        resolve_backend_config(config_file=tmp_path / "absent.toml", environ=NO_ENV)


def test_configured_plugin_that_is_missing_names_its_extra(
    tmp_path: Path, uninstalled_backend: KnownBackend
) -> None:
    (tmp_path / "melange.toml").write_text(f'backend = "{uninstalled_backend.name}"\n')
    with pytest.raises(BackendNotFound, match=r'pip install "melange\[examplemq\]"'):
        resolve_backend_config(environ=NO_ENV, cwd=tmp_path)


def test_factory_from_config_and_default_factory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MELANGE_BACKEND", raising=False)
    assert MessagingBackendFactory().backend.name == "memory"
    factory = MessagingBackendFactory.from_config("memory", max_message_size=512)
    assert factory.backend.capabilities.max_message_size == 512
    monkeypatch.setenv("MELANGE_BACKEND", "memory")
    monkeypatch.setenv("MELANGE_OPTION_MAX_MESSAGE_SIZE", "777")
    assert MessagingBackendFactory.from_config().backend.capabilities.max_message_size == 777


def test_an_option_typed_int_or_str_from_text_is_a_number_when_it_reads_as_one() -> None:
    """`port: int | str | None` (int, or melange 7.x's text form): "9324" is the port 9324."""
    from melange.config import _coerce

    assert _coerce("port", "9324", int | str | None, "environment") == 9324
    assert _coerce("port", "http-alt", int | str | None, "environment") == "http-alt"


def test_option_types_resolve_when_another_annotation_cannot() -> None:
    """A parameter typed with a type-checking-only name leaves the others' types readable."""
    from melange.backends.registry import accepted_options
    from melange.config import _parameter_types

    class Backend:
        def __init__(self, *, timeout: float = 1.0, **legacy: NotImportedHere) -> None:  # type: ignore[name-defined]  # noqa: F821
            pass

    types = _parameter_types(Backend.__init__, accepted_options(Backend))  # type: ignore[arg-type]
    assert types["timeout"] is float
