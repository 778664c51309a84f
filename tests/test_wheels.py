"""Wheels of the core and of the AWS plugins install into clean venvs and work there.

What a user gets from ``pip install "melange[aws]"`` or ``pip install "melange[localsqs]"``,
checked from built artifacts rather than from the editable dev install:

1. ``uv build --wheel`` builds the core (repo root), ``plugins/melange_aws`` and
   ``plugins/melange_localsqs`` into a temporary directory.
2. A clean venv (``python -m venv``, none of the dev venv's packages) gets
   ``pip install --find-links <wheels> "melange[aws]"``; melange's own distributions must come
   from those wheels (pinned to the built versions, checked in pip's ``--report``), their
   dependencies (boto3, stevedore, ...) from the package index.
3. In that venv: ``import melange`` imports no boto3/botocore;
   ``from melange.backends import AWSBackend`` resolves through the entry point; and
   ``load_backend("aws", endpoint_url=...)`` creates a queue, publishes and receives a message on
   a moto server that this test starts (it runs from the dev venv: the clean venv only needs
   ``melange[aws]``).
4. Another clean venv gets ``melange[localsqs]`` only: ``LocalSQSBackend`` resolves, and
   melange-aws and boto3 were pulled in as dependencies.

Slow for a test (about 20-40 s with a warm pip cache: three builds, two venvs, two installs
that download from the package index) and it needs that index. A build or install that fails
makes the test FAIL, never skip: broken packaging is what it is here to catch.
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
DISTRIBUTIONS = ("melange", "melange-aws", "melange-localsqs")  # uv workspace package names
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
