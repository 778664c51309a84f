"""Configuration: project and credentials chain, the emulator, loading by name, imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from melange_gcp import GCPPubSubBackend

from melange import MessagingBackendFactory
from melange.backends import load_backend
from melange.exceptions import BackendUnavailable, ConfigurationError

SECRET = "-----BEGIN PRIVATE KEY-----\nMELANGESECRETKEYMATERIAL\n-----END PRIVATE KEY-----\n"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No Google configuration from the machine: no ADC, project or emulator."""
    for name in (
        "PUBSUB_EMULATOR_HOST",
        "GOOGLE_CLOUD_PROJECT",
        "GCLOUD_PROJECT",
        "GOOGLE_APPLICATION_CREDENTIALS",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))  # no gcloud ADC
    monkeypatch.setenv("NO_GCE_CHECK", "True")  # no metadata server probe
    return monkeypatch


def test_pubsub_emulator_host_and_google_cloud_project_are_honoured(
    clean_env: pytest.MonkeyPatch, emulator_host: str, unique: str
) -> None:
    clean_env.setenv("PUBSUB_EMULATOR_HOST", emulator_host)
    clean_env.setenv("GOOGLE_CLOUD_PROJECT", "melange-env-project")
    with GCPPubSubBackend() as backend:
        assert backend.project == "melange-env-project"
        assert emulator_host in repr(backend)
        MessagingBackendFactory(backend).init_queue(f"{unique}-q")
        assert backend.get_queue(f"{unique}-q") is not None
        backend.delete_queue(f"{unique}-q")


def test_the_project_option_wins_over_the_environment(
    clean_env: pytest.MonkeyPatch, emulator_host: str
) -> None:
    clean_env.setenv("GOOGLE_CLOUD_PROJECT", "from-env")
    with GCPPubSubBackend(project="from-option", emulator_host=emulator_host) as backend:
        assert backend.project == "from-option"


def test_load_backend_by_name_with_plain_options(emulator_host: str, gcp_project: str) -> None:
    backend = load_backend("gcp", project=gcp_project, emulator_host=emulator_host)
    try:
        assert isinstance(backend, GCPPubSubBackend)
    finally:
        backend.close()
    from melange.backends import GCPPubSubBackend as exported

    assert exported is GCPPubSubBackend


def test_no_project_is_a_configuration_error(
    clean_env: pytest.MonkeyPatch, emulator_host: str
) -> None:
    with pytest.raises(ConfigurationError, match="GOOGLE_CLOUD_PROJECT"):
        GCPPubSubBackend(emulator_host=emulator_host)


def test_no_credentials_is_a_configuration_error(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="Application Default Credentials"):
        GCPPubSubBackend(project="melange-test")


def test_a_broken_key_file_never_shows_its_content(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key_file = tmp_path / "key.json"
    key_file.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "melange-test",
                "private_key_id": "abc",
                "private_key": SECRET,
                "client_email": "melange@melange-test.iam.gserviceaccount.com",
                "token_uri": "https://oauth2.googleapis.com/token",
            }
        )
    )
    for options in ({"credentials_file": str(key_file)}, {}):
        if not options:
            clean_env.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
        with pytest.raises(ConfigurationError) as caught:
            GCPPubSubBackend(project="melange-test", **options)  # type: ignore[arg-type]
        assert "MELANGESECRET" not in str(caught.value)
        assert "MELANGESECRET" not in repr(caught.value.__cause__)


def test_emulator_and_credentials_contradict(emulator_host: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot be combined"):
        GCPPubSubBackend(
            project="p-1234", emulator_host=emulator_host, credentials_file=str(tmp_path / "k")
        )


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"emulator_host": "http://127.0.0.1:8085"}, "host:port"),
        ({"project": "my project"}, "project id"),
        ({"timeout": 0}, "timeout"),
        ({"fan_out_refresh_seconds": -1}, "fan_out_refresh_seconds"),
        # bool("false") is True: a string is refused, not read as a switch turned on.
        ({"recreate_subscriptions": "false"}, "recreate_subscriptions must be True or False"),
        ({"recreate_subscriptions": "no"}, "recreate_subscriptions must be True or False"),
        ({"recreate_subscriptions": 0.0}, "recreate_subscriptions must be True or False"),
        # Project ids and numbers are strings to Google.
        ({"project": 1234}, r"project must be a string.*'1234'"),
        ({"emulator_host": "127.0.0.1"}, "host:port"),
        ({"emulator_host": "127.0.0.1:notaport"}, "host:port"),
        ({"emulator_host": ":8085"}, "host:port"),
        ({"emulator_host": "127.0.0.1:70000"}, "host:port"),
    ],
)
def test_invalid_options(options: dict[str, object], fragment: str) -> None:
    settings: dict[str, object] = {"project": "p-1234", "emulator_host": "127.0.0.1:1"}
    settings.update(options)
    with pytest.raises(ConfigurationError, match=fragment):
        GCPPubSubBackend(**settings)  # type: ignore[arg-type]


def test_an_unreachable_emulator_is_backend_unavailable(gcp_project: str) -> None:
    backend = GCPPubSubBackend(project=gcp_project, emulator_host="127.0.0.1:9", timeout=1)
    with backend, pytest.raises(BackendUnavailable) as caught:
        backend.get_queue("orders")
    assert "127.0.0.1:9" in str(caught.value) and "emulator" in str(caught.value)


def test_importing_melange_imports_no_google_module() -> None:
    code = (
        "import sys, melange, melange.backends; "
        "print([m for m in sys.modules if m.startswith(('google', 'grpc', 'melange_gcp'))])"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert output.strip() == "[]"


def test_configured_from_the_environment_with_typed_options(
    emulator_host: str, gcp_project: str
) -> None:
    from melange.config import load_backend_from_config

    environ = {
        "MELANGE_BACKEND": "gcp",
        "MELANGE_OPTION_PROJECT": gcp_project,
        "MELANGE_OPTION_EMULATOR_HOST": emulator_host,
        "MELANGE_OPTION_TIMEOUT": "5",
        "MELANGE_OPTION_RECREATE_SUBSCRIPTIONS": "true",
    }
    backend = load_backend_from_config(environ=environ)
    try:
        assert isinstance(backend, GCPPubSubBackend)
        assert (backend.project, backend.timeouts.admin, backend._recreate) == (
            gcp_project,
            5.0,
            True,
        )
        assert backend.get_queue("not-there") is None
    finally:
        backend.close()
