"""What a type checker sees of melange's public API, checked by running mypy on user code.

``from melange.backends import AWSBackend`` is resolved at run time through the
entry points (module ``__getattr__``), which left it ``Any`` to mypy; and
``init_queue(**settings)`` let a misspelt setting through. Here mypy --strict
checks a small program as a user would write it (about 4 s, cold cache).
"""

from __future__ import annotations

import re

import pytest
from mypy import api as mypy_api

USER_CODE = """\
from melange import MessagingBackendFactory
from melange.backends import (
    AWSBackend, AzureServiceBusBackend, GCPPubSubBackend, LocalSQSBackend, MemoryBackend,
)

reveal_type(AWSBackend)
reveal_type(LocalSQSBackend)
reveal_type(GCPPubSubBackend)
reveal_type(AzureServiceBusBackend)
reveal_type(MemoryBackend)
factory = MessagingBackendFactory(MemoryBackend())
factory.init_queue("q", visibilty_timeout=30)  # line 12: misspelt
factory.init_queue("q", ["t"], "q-dlq", visibility_timeout=30, max_receive_count=3)
factory.plan_queue("q", delay_seconds="5")  # line 14: wrong type
factory.init_topic("t", fifo=True)
factory.init_topic("t", fif=True)  # line 16: misspelt
AWSBackend(regoin_name="eu-west-1")  # line 17: misspelt constructor option
"""


@pytest.fixture(scope="module")
def mypy_report(tmp_path_factory: pytest.TempPathFactory) -> dict[int, list[str]]:
    folder = tmp_path_factory.mktemp("user")
    program = folder / "user.py"
    program.write_text(USER_CODE)
    stdout, stderr, _ = mypy_api.run(
        ["--strict", "--cache-dir", str(folder / "cache"), "--no-error-summary", str(program)]
    )
    assert not stderr, stderr
    lines: dict[int, list[str]] = {}
    for line in stdout.splitlines():
        match = re.match(rf"{re.escape(str(program))}:(\d+): (.*)", line)
        assert match, line
        lines.setdefault(int(match[1]), []).append(match[2])
    return lines


@pytest.mark.parametrize(
    ("line", "module_class"),
    [
        (6, "melange_aws.backend.AWSBackend"),
        (7, "melange_localsqs.backend.LocalSQSBackend"),
        (8, "melange_gcp.backend.GCPPubSubBackend"),
        (9, "melange_azure.backend.AzureServiceBusBackend"),
        (10, "melange.backends.memory.MemoryBackend"),
    ],
)
def test_backend_aliases_have_their_real_types(
    mypy_report: dict[int, list[str]], line: int, module_class: str
) -> None:
    (revealed,) = mypy_report[line]
    assert revealed.startswith("note: Revealed type is") and "Any" not in revealed.split("->")[-1]
    assert revealed.endswith(f'-> {module_class}"')


def test_misspelt_or_mistyped_settings_are_type_errors(mypy_report: dict[int, list[str]]) -> None:
    assert 'Unexpected keyword argument "visibilty_timeout"' in " ".join(mypy_report[12])
    assert 'did you mean "visibility_timeout"' in " ".join(mypy_report[12])
    assert 'Argument "delay_seconds"' in " ".join(mypy_report[14])
    assert 'Unexpected keyword argument "fif"' in " ".join(mypy_report[16])
    assert 'Unexpected keyword argument "regoin_name"' in " ".join(mypy_report[17])


def test_correct_calls_pass(mypy_report: dict[int, list[str]]) -> None:
    # Only the deliberate mistakes and reveal_type notes are reported: nothing else.
    assert sorted(mypy_report) == [6, 7, 8, 9, 10, 12, 14, 16, 17]
