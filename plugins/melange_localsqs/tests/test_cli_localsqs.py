"""``melange dlq`` against a moto server, chosen through the configuration, in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from melange_localsqs import LocalSQSBackend
from melange_localsqs.testing import MotoServer

from melange import MessagingBackendFactory
from melange.backends.base import OutgoingMessage

BODIES = [b'{"order": 1}', b"\x00\xff\xfe not utf-8 \r\n", b"x" * 2000]


def melange(server: MotoServer, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("MELANGE_")}
    env.update(MELANGE_BACKEND="localsqs", MELANGE_OPTION_ENDPOINT_URL=server.endpoint_url)
    return subprocess.run(
        [sys.executable, "-m", "melange.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def test_peek_redrive_purge_through_the_configuration(
    moto_server: MotoServer, tmp_path: Path
) -> None:
    queue = f"cli-{uuid.uuid4().hex[:8]}"
    dlq = f"{queue}-dlq"
    backend = LocalSQSBackend(endpoint_url=moto_server.endpoint_url)
    try:
        MessagingBackendFactory(backend).init_queue(queue, dead_letter_queue_name=dlq)
        backend.publish(dlq, [OutgoingMessage(body, {"event": "paid"}) for body in BODIES])

        peeked = melange(moto_server, tmp_path, "dlq", "peek", queue, "--json")
        assert peeked.returncode == 0, peeked.stderr
        rows = json.loads(peeked.stdout)["messages"]
        assert sorted(row["size"] for row in rows) == sorted(len(b) for b in BODIES)
        assert all(row["attributes"]["event"] == "paid" for row in rows)

        redriven = melange(moto_server, tmp_path, "dlq", "redrive", queue, "--json")
        assert redriven.returncode == 0, redriven.stderr
        assert json.loads(redriven.stdout)["moved"] == 3  # peek left all three there
        back = backend.receive(queue, 10, 2.0)
        assert sorted(m.body for m in back) == sorted(BODIES)  # byte-exact
        assert all(m.attributes["event"] == "paid" for m in back)
        backend.ack(back)

        backend.publish(dlq, [OutgoingMessage(b"again", {})])
        purged = melange(moto_server, tmp_path, "dlq", "purge", queue, "--yes")
        assert purged.returncode == 0, purged.stderr
        assert f"deleted 1 message(s) from {dlq!r}" in purged.stdout
        assert backend.receive(dlq, 10, 1.0) == []

        missing = melange(moto_server, tmp_path, "dlq", "peek", "no-such-queue")
        assert missing.returncode == 1
        assert missing.stderr.startswith("melange: error: ") and "no-such-queue" in missing.stderr
        assert "Traceback" not in missing.stderr
    finally:
        backend.close()
