"""Wheels of the core and of the broker plugins install into clean venvs and work there.

What a user gets from ``pip install "melange[aws]"`` (or ``[localsqs]``, ``[gcp]``,
``[azure]``), checked from built artifacts rather than from the editable dev install:

1. ``uv build --wheel`` builds the core (repo root) and every plugin under ``plugins/`` into a
   temporary directory.
2. A clean venv (``python -m venv``, none of the dev venv's packages) gets
   ``pip install --find-links <wheels> "melange[<extra>]"``; melange's own distributions must
   come from those wheels (pinned to the built versions, checked in pip's ``--report``), their
   dependencies (boto3, google-cloud-pubsub, azure-servicebus, stevedore, ...) from the index.
3. In that venv: ``import melange`` imports no broker SDK; ``from melange.backends import
   AWSBackend`` (or ``GCPPubSubBackend``, ``AzureServiceBusBackend``) resolves through the
   entry point; and the backend creates a queue, publishes and receives a message on a server
   that this test starts from the dev venv: a moto server, Google's Pub/Sub emulator, the
   Service Bus stand-ins (the clean venv only needs ``melange[<extra>]``).
4. The ``melange[localsqs]`` venv shows melange-aws and boto3 pulled in as dependencies.

Slow for a test (about a minute with a warm pip cache: five builds, four venvs, four installs
that download from the package index) and it needs that index. A build, install or server
start that fails makes the test FAIL, never skip: broken packaging is what it is here to catch.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
DISTRIBUTIONS = (  # uv workspace package names
    "melange",
    "melange-aws",
    "melange-localsqs",
    "melange-gcp",
    "melange-azure",
)
STEP_TIMEOUT = 180  # seconds for one build, venv or install step
REGION = "us-east-1"

pytestmark = pytest.mark.timeout(360)

# Runs in the clean venv with melange[aws]: prints what it found as JSON for the test to assert.
AWS_SCRIPT = r"""
import json, sys

endpoint_url = sys.argv[1]
facts = {}

import melange

facts["sdk_modules_after_import_melange"] = sorted(
    name for name in sys.modules if name.split(".")[0] in ("boto3", "botocore")
)

from melange.backends import AWSBackend, get_backend_class, load_backend
from melange.backends.base import OutgoingMessage
from melange.factory import MessagingBackendFactory

import melange_aws

facts["AWSBackend"] = f"{AWSBackend.__module__}.{AWSBackend.__qualname__}"
facts["aws_is_plugin_class"] = AWSBackend is melange_aws.AWSBackend
facts["get_backend_class_aws"] = get_backend_class("aws") is AWSBackend
facts["melange_file"] = melange.__file__
facts["melange_aws_file"] = melange_aws.__file__

backend = load_backend(
    "aws",
    endpoint_url=endpoint_url,
    region_name="us-east-1",
    aws_access_key_id="test",
    aws_secret_access_key="test",
)
facts["loaded_type"] = type(backend).__name__
with backend:
    MessagingBackendFactory(backend).init_queue("wheel-check-aws")
    results = backend.publish("wheel-check-aws", [OutgoingMessage(body=b"hello from a wheel")])
    facts["published_ok"] = [result.ok for result in results]
    received = backend.receive("wheel-check-aws", max_messages=10, wait_seconds=2)
    facts["received_bodies"] = [message.body.decode() for message in received]
    backend.ack(received)
print(json.dumps(facts))
"""

# Runs in the clean venv with melange[localsqs] only.
LOCALSQS_SCRIPT = r"""
import importlib.metadata as metadata, json, sys

endpoint_url = sys.argv[1]
facts = {}

from melange.backends import LocalSQSBackend, get_backend_class
from melange.backends.base import OutgoingMessage

import melange_aws

facts["LocalSQSBackend"] = f"{LocalSQSBackend.__module__}.{LocalSQSBackend.__qualname__}"
facts["get_backend_class_localsqs"] = get_backend_class("localsqs") is LocalSQSBackend
facts["subclass_of_AWSBackend"] = issubclass(LocalSQSBackend, melange_aws.AWSBackend)
facts["versions"] = {
    name: metadata.version(name)
    for name in ("melange", "melange-aws", "melange-localsqs", "boto3", "botocore")
}
with LocalSQSBackend(endpoint_url=endpoint_url) as backend:
    from melange.topology import QueueSpec

    backend.declare_queue(QueueSpec("wheel-check-localsqs"))
    backend.publish("wheel-check-localsqs", [OutgoingMessage(body=b"local hello")])
    received = backend.receive("wheel-check-localsqs", max_messages=10, wait_seconds=2)
    facts["received_bodies"] = [message.body.decode() for message in received]
    backend.ack(received)
print(json.dumps(facts))
"""


# Runs in the clean venv with melange[gcp]: argv[1] is the emulator's host:port.
GCP_SCRIPT = r"""
import importlib.metadata as metadata, json, sys

emulator_host = sys.argv[1]
facts = {}

import melange

facts["sdk_modules_after_import_melange"] = sorted(
    name for name in sys.modules if name.split(".")[0] in ("google", "grpc")
)

from melange.backends import GCPPubSubBackend, get_backend_class, load_backend
from melange.backends.base import OutgoingMessage
from melange.factory import MessagingBackendFactory

import melange_gcp

facts["GCPPubSubBackend"] = f"{GCPPubSubBackend.__module__}.{GCPPubSubBackend.__qualname__}"
facts["gcp_is_plugin_class"] = GCPPubSubBackend is melange_gcp.GCPPubSubBackend
facts["get_backend_class_gcp"] = get_backend_class("gcp") is GCPPubSubBackend
facts["melange_gcp_file"] = melange_gcp.__file__
facts["pubsub_version"] = metadata.version("google-cloud-pubsub")

with load_backend("gcp", project="wheel-check", emulator_host=emulator_host) as backend:
    MessagingBackendFactory(backend).init_queue("wheel-check-gcp", ["wheel-check-gcp-topic"])
    results = backend.publish_to_topic(
        "wheel-check-gcp-topic", [OutgoingMessage(body=b"hello from a gcp wheel")]
    )
    facts["published_ok"] = [result.ok for result in results]
    received = []
    for _ in range(20):  # the emulator delivers asynchronously: pull until it arrives
        received += backend.receive("wheel-check-gcp", max_messages=10, wait_seconds=1)
        if received:
            break
    facts["received_bodies"] = [message.body.decode() for message in received]
    backend.ack(received)
print(json.dumps(facts))
"""

# Runs in the clean venv with melange[azure]: argv[1] is a JSON object with the stand-in's
# connection string and management URL.
AZURE_SCRIPT = r"""
import json, logging, sys

where = json.loads(sys.argv[1])
facts = {}

import melange

facts["sdk_modules_after_import_melange"] = sorted(
    name for name in sys.modules if name.split(".")[0] in ("azure", "uamqp")
)

from melange.backends import AzureServiceBusBackend, get_backend_class, load_backend
from melange.backends.base import OutgoingMessage
from melange.factory import MessagingBackendFactory

import melange_azure

facts["AzureServiceBusBackend"] = (
    f"{AzureServiceBusBackend.__module__}.{AzureServiceBusBackend.__qualname__}"
)
facts["get_backend_class_azure"] = get_backend_class("azure") is AzureServiceBusBackend
facts["melange_azure_file"] = melange_azure.__file__

backend = load_backend(
    "azure",
    connection_string=where["connection_string"],
    management_url=where["management_url"],
)
facts["repr_has_no_key"] = where["key"] not in repr(backend)
with backend:
    MessagingBackendFactory(backend).init_queue("wheel-check-azure", ["wheel-check-azure-topic"])
    results = backend.publish_to_topic(
        "wheel-check-azure-topic", [OutgoingMessage(body=b"hello from an azure wheel")]
    )
    facts["published_ok"] = [result.ok for result in results]
    received = backend.receive("wheel-check-azure", max_messages=10, wait_seconds=5)
    facts["received_bodies"] = [message.body.decode() for message in received]
    backend.ack(received)
print(json.dumps(facts))
"""


def _clean_env() -> dict[str, str]:
    """The environment without the dev venv, Python path overrides or AWS configuration."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")
        and not key.startswith("AWS_")
    }
    env["AWS_EC2_METADATA_DISABLED"] = "true"  # never wait on instance metadata for credentials
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    env["UV_PYTHON_DOWNLOADS"] = "never"
    return env


def _run(command: list[str], what: str, *, cwd: Path | None = None) -> str:
    """Run a step; a failure fails the test with the command and everything it printed."""
    shown = " ".join(part if "\n" not in part else "<script>" for part in command)
    try:
        completed = subprocess.run(
            command,
            cwd=cwd,
            env=_clean_env(),
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"{what} took more than {STEP_TIMEOUT} s: {shown}\n{error}")
    if completed.returncode != 0:
        pytest.fail(
            f"{what} failed (exit status {completed.returncode}): {shown}\n"
            f"--- stdout\n{completed.stdout}\n--- stderr\n{completed.stderr}"
        )
    return completed.stdout


def _uv() -> str:
    found = shutil.which("uv")
    if found is None and (REPO / ".tools" / "bin" / "uv").is_file():
        found = str(REPO / ".tools" / "bin" / "uv")
    if found is None:
        pytest.fail("uv is needed to build the wheels: run `make install` (it bootstraps .tools)")
    return found


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Wheel file of each distribution, built from this checkout."""
    out_dir = tmp_path_factory.mktemp("wheels")
    uv = _uv()
    for distribution in DISTRIBUTIONS:
        _run(
            [uv, "build", "--wheel", "--package", distribution, "--out-dir", str(out_dir)],
            f"building the {distribution} wheel",
            cwd=REPO,
        )
    built = {path.name.split("-")[0].replace("_", "-"): path for path in out_dir.glob("*.whl")}
    assert sorted(built) == sorted(DISTRIBUTIONS), f"unexpected wheels: {sorted(built)}"
    return built


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """A moto server over HTTP, run by the dev venv (the clean venvs only hold melange)."""
    from melange_localsqs.testing import MotoServer

    with MotoServer() as server:  # a server that cannot start raises: the test fails
        yield server.endpoint_url


@pytest.fixture(scope="module")
def pubsub_emulator_host() -> Iterator[str]:
    """Google's Pub/Sub emulator, run by the dev venv; an emulator that cannot start fails."""
    from melange_gcp.testing import PubSubEmulator

    with PubSubEmulator() as emulator:
        yield emulator.host_port


@pytest.fixture(scope="module")
def service_bus_stand_in() -> Iterator[dict[str, str]]:
    """The Service Bus stand-ins (management over HTTP, AMQP broker), run by the dev venv."""
    sys.path.insert(0, str(REPO / "plugins" / "melange_azure" / "tests"))
    try:
        from standin import ServiceBusStandIn
    finally:
        sys.path.pop(0)
    with ServiceBusStandIn() as stand_in:
        yield {
            "connection_string": stand_in.connection_string,
            "management_url": stand_in.management_url,
            "key": stand_in.key,
        }


def _install(tmp_path: Path, wheels: dict[str, Path], requirement: str) -> tuple[Path, Any]:
    """A clean venv with ``melange[extra]`` from the built wheels; returns its python, report."""
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], "creating a clean venv", cwd=tmp_path)
    python = venv / "bin" / "python"
    # Pin every melange distribution to the built version, so the index can never supply one.
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(
        "".join(f"{name}=={_version(path)}\n" for name, path in wheels.items()), encoding="utf-8"
    )
    report = tmp_path / "pip-report.json"
    wheel_dir = next(iter(wheels.values())).parent
    _run(
        [
            str(python), "-m", "pip", "install", "--quiet",
            "--find-links", str(wheel_dir),
            "--constraint", str(constraints),
            "--report", str(report),
            f"{requirement}=={_version(wheels['melange'])}",
        ],
        f"pip install {requirement} from the built wheels",
        cwd=tmp_path,
    )  # fmt: skip
    return python, json.loads(report.read_text(encoding="utf-8"))


def _version(wheel: Path) -> str:
    return wheel.name.split("-")[1]


def _installed(report: Any) -> dict[str, dict[str, Any]]:
    """Name -> install item of a pip ``--report``."""
    return {item["metadata"]["name"].lower(): item for item in report["install"]}


def _facts(python: Path, script: str, endpoint_url: str, what: str) -> dict[str, Any]:
    # -I: isolated mode, so neither the working directory nor PYTHON* variables can put this
    # checkout's sources on the path instead of the installed wheels.
    output = _run([str(python), "-I", "-c", script, endpoint_url], what, cwd=python.parent)
    facts: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return facts


def test_melange_aws_wheels_work_in_a_clean_venv(
    tmp_path: Path, wheels: dict[str, Path], moto_endpoint: str
) -> None:
    python, report = _install(tmp_path, wheels, "melange[aws]")
    installed = _installed(report)
    for name in ("melange", "melange-aws"):
        assert installed[name]["download_info"]["url"] == wheels[name].as_uri(), (
            f"{name} was not installed from the wheel built here"
        )
    assert "melange-localsqs" not in installed
    assert {"boto3", "botocore", "stevedore"} <= set(installed)

    facts = _facts(python, AWS_SCRIPT, moto_endpoint, "using the aws backend in the clean venv")

    assert facts["sdk_modules_after_import_melange"] == []
    assert facts["AWSBackend"].startswith("melange_aws.")
    assert facts["aws_is_plugin_class"] is True
    assert facts["get_backend_class_aws"] is True
    assert facts["loaded_type"] == "AWSBackend"
    venv = python.parent.parent
    for key in ("melange_file", "melange_aws_file"):  # imported from the venv, not this checkout
        assert Path(facts[key]).is_relative_to(venv), facts[key]
    assert facts["published_ok"] == [True]
    assert facts["received_bodies"] == ["hello from a wheel"]


def test_melange_localsqs_wheel_pulls_in_the_aws_plugin_and_boto3(
    tmp_path: Path, wheels: dict[str, Path], moto_endpoint: str
) -> None:
    python, report = _install(tmp_path, wheels, "melange[localsqs]")
    installed = _installed(report)
    for name in ("melange", "melange-aws", "melange-localsqs"):
        assert installed[name]["download_info"]["url"] == wheels[name].as_uri()
    # Asked for melange[localsqs] only: the AWS plugin and boto3 came as dependencies.
    assert installed["melange-aws"]["requested"] is False
    assert installed["boto3"]["requested"] is False

    facts = _facts(python, LOCALSQS_SCRIPT, moto_endpoint, "using localsqs in the clean venv")

    assert facts["LocalSQSBackend"].startswith("melange_localsqs.")
    assert facts["get_backend_class_localsqs"] is True
    assert facts["subclass_of_AWSBackend"] is True
    assert facts["versions"]["melange-aws"] == _version(wheels["melange-aws"])
    assert facts["versions"]["melange-localsqs"] == _version(wheels["melange-localsqs"])
    assert facts["received_bodies"] == ["local hello"]


def test_melange_gcp_wheels_work_in_a_clean_venv(
    tmp_path: Path, wheels: dict[str, Path], pubsub_emulator_host: str
) -> None:
    python, report = _install(tmp_path, wheels, "melange[gcp]")
    installed = _installed(report)
    for name in ("melange", "melange-gcp"):
        assert installed[name]["download_info"]["url"] == wheels[name].as_uri()
    assert not {"melange-aws", "melange-azure", "boto3"} & set(installed)
    assert "google-cloud-pubsub" in installed

    facts = _facts(python, GCP_SCRIPT, pubsub_emulator_host, "using gcp in the clean venv")

    assert facts["sdk_modules_after_import_melange"] == []
    assert facts["GCPPubSubBackend"].startswith("melange_gcp.")
    assert facts["gcp_is_plugin_class"] is True
    assert facts["get_backend_class_gcp"] is True
    assert Path(facts["melange_gcp_file"]).is_relative_to(python.parent.parent)
    assert facts["published_ok"] == [True]
    assert facts["received_bodies"] == ["hello from a gcp wheel"]


def test_melange_azure_wheels_work_in_a_clean_venv(
    tmp_path: Path, wheels: dict[str, Path], service_bus_stand_in: dict[str, str]
) -> None:
    python, report = _install(tmp_path, wheels, "melange[azure]")
    installed = _installed(report)
    for name in ("melange", "melange-azure"):
        assert installed[name]["download_info"]["url"] == wheels[name].as_uri()
    assert not {"melange-aws", "melange-gcp", "boto3"} & set(installed)
    assert "azure-servicebus" in installed

    facts = _facts(
        python, AZURE_SCRIPT, json.dumps(service_bus_stand_in), "using azure in the clean venv"
    )

    assert facts["sdk_modules_after_import_melange"] == []
    assert facts["AzureServiceBusBackend"].startswith("melange_azure.")
    assert facts["get_backend_class_azure"] is True
    assert Path(facts["melange_azure_file"]).is_relative_to(python.parent.parent)
    assert facts["repr_has_no_key"] is True
    assert facts["published_ok"] == [True]
    assert facts["received_bodies"] == ["hello from an azure wheel"]
