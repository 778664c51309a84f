"""The layering in ``.importlinter`` holds on the code, and each contract can fail.

import-linter checks the static import graph of the core and the four plugins. The contracts are
proved able to fail on a scratch copy of the sources with one offending import appended, so a
contract that a later edit makes vacuous (a misspelt module, an ignore that is too wide) fails
here instead of passing quietly.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / ".importlinter"

# lint-imports is a console script; run its entry point with this interpreter so that the test
# does not depend on where the scripts directory is.
_LINT_IMPORTS = (
    "import sys; from importlinter.cli import lint_imports_command; "
    "sys.exit(lint_imports_command())"
)


def lint_imports(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run lint-imports in ``cwd``, which comes first on the path (a scratch copy wins)."""
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(
        [sys.executable, "-c", _LINT_IMPORTS, "--no-logo", "--no-cache", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def contract_ids() -> list[str]:
    parser = configparser.ConfigParser()
    parser.read(CONFIG)
    prefix = "importlinter:contract:"
    return [section[len(prefix) :] for section in parser.sections() if section.startswith(prefix)]


def test_the_layering_contracts_hold() -> None:
    result = lint_imports(str(CONFIG), cwd=ROOT)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"Contracts: {len(contract_ids())} kept, 0 broken." in output


def test_lint_imports_catches_a_forbidden_import(tmp_path: Path) -> None:
    package = tmp_path / "layered"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "high.py").write_text("import layered.low\n")
    (package / "low.py").write_text("import json\n")
    config = tmp_path / "contracts.ini"
    config.write_text(
        textwrap.dedent(
            """\
            [importlinter]
            root_package = layered

            [importlinter:contract:low-is-low]
            name = low imports nothing above it
            type = forbidden
            source_modules = layered.low
            forbidden_modules = layered.high
            """
        )
    )
    kept = lint_imports(str(config), cwd=tmp_path)
    assert kept.returncode == 0, kept.stdout + kept.stderr

    # Indirect, so that the check follows chains and not only the line that was written.
    (package / "middle.py").write_text("import layered.high\n")
    (package / "low.py").write_text("import json\n\nimport layered.middle\n")
    broken = lint_imports(str(config), cwd=tmp_path)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "layered.low -> layered.middle" in broken.stdout
    assert "layered.middle -> layered.high" in broken.stdout


# One offending import per contract: (file in the scratch tree, line appended, a chain link the
# report must name).
FAILURES = {
    "backend-contract": (
        "melange/backends/topology_rules.py",
        "import melange.dispatcher",
        "melange.backends.topology_rules -> melange.dispatcher",
    ),
    "runtime-core": (
        "melange/lease.py",
        "import melange.aio",
        "melange.lease -> melange.aio",
    ),
    "no-sdk": (
        # melange.dedup's own redis import is allowed; the allowance covers redis alone.
        "melange/dedup.py",
        "import botocore",
        "melange.dedup -> botocore",
    ),
    "plugins-private": (
        "melange_gcp/names.py",
        "from melange._outage import Outage",
        "melange_gcp.names -> melange._outage",
    ),
    "plugins-independent": (
        # localsqs may build on aws, and on nothing else.
        "melange_localsqs/backend.py",
        "import melange_gcp",
        "melange_localsqs.backend -> melange_gcp",
    ),
}


def test_every_contract_has_a_failure_case() -> None:
    assert sorted(FAILURES) == sorted(contract_ids())


@pytest.fixture
def scratch_sources(tmp_path: Path) -> Path:
    """A copy of the core's and the plugins' sources, side by side as on sys.path."""
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "melange", tmp_path / "melange", ignore=ignore)
    for package in sorted(ROOT.glob("plugins/*/src/melange_*")):
        shutil.copytree(package, tmp_path / package.name, ignore=ignore)
    return tmp_path


@pytest.mark.parametrize("contract", sorted(FAILURES))
def test_each_contract_can_fail(contract: str, scratch_sources: Path) -> None:
    path, line, link = FAILURES[contract]
    target = scratch_sources / path
    target.write_text(f"{target.read_text()}\n{line}\n")
    result = lint_imports(str(CONFIG), "--contract", contract, cwd=scratch_sources)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert re.search(rf"^-?\s*{re.escape(link)} \(l\.\d+\)$", result.stdout, re.MULTILINE), output
