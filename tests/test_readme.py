"""The README's example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert blocks, "README.md has no python example"
    namespace: dict[str, object] = {}
    exec(blocks[0], namespace)
    backend = namespace["backend"]
    # The loop ran: the message published to the topic reached the subscribed queue.
    assert namespace["message"].body == b'{"id": 1}'  # type: ignore[attr-defined]
    # The example acked what it received: nothing is left, and the DLQ exists.
    assert backend.receive("payment-updates") == []  # type: ignore[attr-defined]
    assert backend.get_queue("payment-updates-dlq") is not None  # type: ignore[attr-defined]


def test_readme_runtime_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    namespace: dict[str, object] = {}
    exec(blocks[0], namespace)  # the setup the runtime example continues
    exec(blocks[1], namespace)
    assert "recorded payment 2" in capsys.readouterr().out
    stats = namespace["stats"]
    assert (stats.handled, stats.acked) == (1, 1)  # type: ignore[attr-defined]
