"""Wheels of the core and of the broker plugins install into clean venvs and work there.

What a user gets from ``pip install "melange[aws]"`` (or ``[localsqs]``, ``[gcp]``,
``[azure]``), checked from built artifacts rather than from the editable dev install:

1. ``scripts/build_dists.sh --wheel`` (what ``make dist`` runs, wheels only) builds the core and
   every plugin under ``plugins/`` into a temporary folder.
2. A clean venv (``python -m venv``, none of the dev venv's packages) gets exactly what
   docs/installing.md tells users: ``pip install --find-links <folder> "melange[<extra>]"`` (with
   ``--no-compile``, for speed), no ``--pre``, no version pin, the package index still in use.
   The index has the original melange (7.2.0, whose dependencies need pycrypto built from
   source; the aws test checks that the same pip picks it when the folder is left out); pip
   must prefer the folder's final release by itself. pip's ``--report`` shows every melange
   distribution came from the folder at the version in pyproject.toml, pycrypto nowhere, and
   the dependencies (boto3, google-cloud-pubsub, azure-servicebus, stevedore, ...) from the index.
3. In that venv: ``import melange`` imports no broker SDK; ``from melange.backends import
   AWSBackend`` (or ``GCPPubSubBackend``, ``AzureServiceBusBackend``) resolves through the
   entry point; and the backend creates a queue, publishes and receives a message on a server
   that this test starts from the dev venv: a moto server, Google's Pub/Sub emulator, the
   Service Bus stand-ins (the clean venv only needs ``melange[<extra>]``).
4. The ``melange[localsqs]`` venv shows melange-aws and boto3 pulled in as dependencies.

5. Every wheel carries the root LICENSE (``.dist-info/licenses/LICENSE``, ``License-Expression``).

The last two tests need no build: one final version for all five distributions, and dependency
ranges that can never admit a 7.x or a 9.x melange distribution.

Slow for a test (about a minute with a warm pip cache: five builds, four venvs, four installs
that download from the package index) and it needs that index. A build, install or server
start that fails makes the test FAIL, never skip: broken packaging is what it is here to catch.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import melange

if sys.version_info >= (3, 11):
    import tomllib
else:  # melange depends on tomli there
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO / "scripts" / "build_dists.sh"  # `make dist` runs it too
DISTRIBUTIONS = (  # uv workspace package names
    "melange",
    "melange-aws",
    "melange-localsqs",
    "melange-gcp",
    "melange-azure",
    "melange-rabbitmq",
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


def _run(
    command: list[str],
    what: str,
    *,
    cwd: Path | None = None,
    extra_env: dict[str, str] | None = None,
) -> str:
    """Run a step; a failure fails the test with the command and everything it printed."""
    shown = " ".join(part if "\n" not in part else "<script>" for part in command)
    try:
        completed = subprocess.run(
            command,
            cwd=cwd,
            env={**_clean_env(), **(extra_env or {})},
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


def _pyproject(directory: Path) -> dict[str, Any]:
    project: dict[str, Any] = tomllib.loads(
        (directory / "pyproject.toml").read_text(encoding="utf-8")
    )["project"]
    return project


def _plugin_dirs() -> dict[str, Path]:
    """Distribution name -> directory of every first-party plugin."""
    return {
        name: REPO / "plugins" / name.replace("-", "_")
        for name in DISTRIBUTIONS
        if name != "melange"
    }


RELEASE = _pyproject(REPO)["version"]  # the version every built wheel must carry


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Wheel file of each distribution, built from this checkout by the ``make dist`` script."""
    out_dir = tmp_path_factory.mktemp("wheels")
    _run(
        ["bash", str(BUILD_SCRIPT), "--wheel", str(out_dir)],
        "building the wheels with scripts/build_dists.sh",
        cwd=REPO,
        extra_env={"UV": _uv()},
    )
    built = {path.name.split("-")[0].replace("_", "-"): path for path in out_dir.glob("*.whl")}
    assert sorted(built) == sorted(DISTRIBUTIONS), f"unexpected wheels: {sorted(built)}"
    # Nothing else for --find-links to find (uv adds a `.gitignore` to the folder).
    found = sorted(path.name for path in out_dir.iterdir() if not path.name.startswith("."))
    assert found == sorted(path.name for path in built.values()), found
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
    """A clean venv with ``melange[extra]`` as users install it; returns its python, report.

    The command of docs/installing.md, with only ``--no-compile`` added: no ``--pre``, no pin,
    no constraint, the index still consulted. Only the versions in the wheels make pip take
    them over the index's.
    """
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], "creating a clean venv", cwd=tmp_path)
    python = venv / "bin" / "python"
    report = tmp_path / "pip-report.json"
    wheel_dir = next(iter(wheels.values())).parent
    _run(
        [
            # --no-compile: bytecode is not what this checks, and skipping it saves a third
            # of the install (17.6 s against 11.8 s for the four SDKs, measured here).
            str(python), "-m", "pip", "install", "--quiet", "--no-compile",
            "--find-links", str(wheel_dir),
            "--report", str(report),
            requirement,
        ],
        f"pip install --find-links <wheels> {requirement}",
        cwd=tmp_path,
    )  # fmt: skip
    return python, json.loads(report.read_text(encoding="utf-8"))


def _assert_from_the_folder(
    installed: dict[str, dict[str, Any]], wheels: dict[str, Path], expected: set[str]
) -> None:
    """Exactly ``expected`` melange distributions, each the folder's wheel at RELEASE."""
    ours = {name for name in installed if name == "melange" or name.startswith("melange-")}
    assert ours == expected, f"melange distributions installed: {sorted(ours)}"
    for name in ours:
        item = installed[name]
        assert item["download_info"]["url"] == wheels[name].as_uri(), (
            f"{name} was not installed from the wheel built here: {item['download_info']['url']}"
        )
        assert item["metadata"]["version"] == RELEASE, name
    # The original melange's dependency chain (redis-simple-cache-py3 -> ... -> pycrypto).
    assert not {"pycrypto", "redis-simple-cache-py3", "pika", "marshmallow"} & set(installed)


def _version(wheel: Path) -> str:
    return wheel.name.split("-")[1]


def _installed(report: Any) -> dict[str, dict[str, Any]]:
    """Name -> install item of a pip ``--report`` (names normalised as in PEP 503)."""
    return {
        re.sub(r"[-_.]+", "-", item["metadata"]["name"]).lower(): item for item in report["install"]
    }


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
    _assert_from_the_folder(installed, wheels, {"melange", "melange-aws"})
    assert installed["melange"]["requested"] is True
    assert installed["melange-aws"]["requested"] is False
    assert {"boto3", "botocore", "stevedore"} <= set(installed)
    for name in ("boto3", "stevedore"):  # dependencies still come from the index
        assert not installed[name]["download_info"]["url"].startswith(
            wheels["melange"].parent.as_uri()
        ), name

    # The same pip without the folder takes the index's melange: the folder made the choice.
    index_only = _run(
        [
            str(python), "-m", "pip", "install", "--quiet", "--dry-run", "--no-deps",
            "--ignore-installed", "--report", "-", "melange",
        ],
        "pip install --dry-run melange, from the index only",
        cwd=tmp_path,
    )  # fmt: skip
    [from_index] = json.loads(index_only)["install"]
    assert from_index["download_info"]["url"] != wheels["melange"].as_uri()
    # Holds until this release is on the index; then the test above is what users get anyway.
    assert Version(from_index["metadata"]["version"]) < Version(RELEASE), from_index["metadata"]

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
    _assert_from_the_folder(installed, wheels, {"melange", "melange-aws", "melange-localsqs"})
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
    _assert_from_the_folder(installed, wheels, {"melange", "melange-gcp"})
    assert "boto3" not in installed
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
    _assert_from_the_folder(installed, wheels, {"melange", "melange-azure"})
    assert "boto3" not in installed
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


def test_every_wheel_ships_the_license(wheels: dict[str, Path]) -> None:
    license_text = (REPO / "LICENSE").read_bytes()
    for name, wheel in wheels.items():
        with zipfile.ZipFile(wheel) as archive:
            licenses = [n for n in archive.namelist() if ".dist-info/licenses/" in n]
            assert [n.rsplit("/", 1)[1] for n in licenses] == ["LICENSE"], (name, licenses)
            assert archive.read(licenses[0]) == license_text, name
            metadata = archive.read(f"{wheel.name.split('-')[0]}-{RELEASE}.dist-info/METADATA")
        assert b"\nLicense-Expression: MIT\n" in metadata, name
        assert b"\nLicense-File: LICENSE\n" in metadata, name


# ------------------------------------------------------- release metadata, without building
def test_versions_are_final_and_in_lockstep() -> None:
    """Every distribution is at one final version that a plain ``pip install`` takes.

    A pre-release (``8.0.0.dev0``) is skipped without ``--pre``: pip then installs the original
    melange 7.2.0 from PyPI, whose dependencies do not build.
    """
    release = Version(RELEASE)
    assert not release.is_prerelease and not release.is_devrelease, RELEASE
    assert release > Version("7.2.0")  # the original melange's last release
    assert melange.__version__ == RELEASE
    for name, directory in _plugin_dirs().items():
        assert _pyproject(directory)["version"] == RELEASE, name


def _requirements(requirements: list[str]) -> dict[str, Requirement]:
    parsed = [Requirement(text) for text in requirements]
    return {requirement.name: requirement for requirement in parsed}


def _admits_this_major_only(requirement: Requirement) -> None:
    """The range takes this release and never the previous or the next major."""
    major = Version(RELEASE).major
    assert requirement.specifier.contains(RELEASE), str(requirement)
    for outside in (f"{major - 1}.99", f"{major + 1}.0.0", "7.2.0"):
        assert not requirement.specifier.contains(outside), (str(requirement), outside)


def test_extras_and_plugins_ask_for_this_major_of_melange() -> None:
    """``melange[aws]`` can never fill the extra with a 7.x-era or foreign plugin release."""
    root = _pyproject(REPO)
    extras = root["optional-dependencies"]
    for extra, name in (
        ("aws", "melange-aws"),
        ("localsqs", "melange-localsqs"),
        ("gcp", "melange-gcp"),
        ("azure", "melange-azure"),
        ("rabbitmq", "melange-rabbitmq"),
    ):
        requirement = _requirements(extras[extra])[name]
        _admits_this_major_only(requirement)
        assert extra in Requirement(extras["all"][0]).extras  # `all` takes the same pins
    assert Requirement(extras["all"][0]).name == "melange"

    for name, directory in _plugin_dirs().items():
        dependencies = _requirements(_pyproject(directory)["dependencies"])
        _admits_this_major_only(dependencies["melange"])
        assert (directory / "LICENSE").read_bytes() == (REPO / "LICENSE").read_bytes(), name
    # localsqs subclasses the aws plugin and uses its internals: the same minor release.
    aws = _requirements(_pyproject(_plugin_dirs()["melange-localsqs"])["dependencies"])
    minor = Version(RELEASE).release[:2]
    assert aws["melange-aws"].specifier.contains(RELEASE)
    assert not aws["melange-aws"].specifier.contains(f"{minor[0]}.{minor[1] + 1}.0")

    example = _pyproject(REPO / "examples" / "third_party_backend")
    assert _requirements(example["dependencies"])["melange"].specifier.contains(RELEASE)
