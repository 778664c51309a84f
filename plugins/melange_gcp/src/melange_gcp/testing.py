"""Google's Pub/Sub emulator for tests: a real Pub/Sub gRPC endpoint in a subprocess.

:class:`PubSubEmulator` finds the emulator of the installed Cloud SDK
(``gcloud components install pubsub-emulator``, or Debian's
``google-cloud-cli-pubsub-emulator``), runs it on a free port with a data
directory of its own, waits until it answers, and stops its whole process
group::

    from melange_gcp import GCPPubSubBackend
    from melange_gcp.testing import PubSubEmulator

    with PubSubEmulator() as emulator:
        backend = GCPPubSubBackend(project="melange-test", emulator_host=emulator.host_port)

The emulator needs Java. When it cannot start, :meth:`PubSubEmulator.start`
raises :class:`PubSubEmulatorError` saying why: tests fail then, they do not skip.

:class:`~melange_gcp.hand_changes.PubSubHandChanges`, the plugin's hands for the
conformance suite's convergence test, is importable from here too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from melange.testing.server_process import ServerProcess, ServerProcessError
from melange_gcp.hand_changes import PubSubHandChanges

__all__ = [
    "EMULATOR_SCRIPT",
    "PubSubEmulator",
    "PubSubEmulatorError",
    "PubSubHandChanges",
    "find_emulator",
]

EMULATOR_SCRIPT = Path("platform/pubsub-emulator/bin/cloud-pubsub-emulator")
"""Where the emulator's start script lives under the Cloud SDK root."""

INSTALL_HINT = (
    "install it with `gcloud components install pubsub-emulator` or, on Debian/Ubuntu, "
    "`apt-get install google-cloud-cli-pubsub-emulator` (it needs Java)"
)


class PubSubEmulatorError(ServerProcessError):
    """The emulator could not be started (not installed, no Java, died, no answer)."""


def _sdk_root() -> Path | None:
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        return None
    try:
        result = subprocess.run(
            [gcloud, "info", "--format=value(installation.sdk_root)"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    root = result.stdout.strip()
    return Path(root) if result.returncode == 0 and root else None


def find_emulator() -> Path:
    """Return the emulator's start script under the Cloud SDK root ``gcloud info`` names.

    Raises:
        PubSubEmulatorError: gcloud or the emulator component is not installed.
    """
    root = _sdk_root()
    if root is None:
        raise PubSubEmulatorError(
            f"gcloud (the Cloud SDK) is not installed or `gcloud info` failed; {INSTALL_HINT}"
        )
    script = root / EMULATOR_SCRIPT
    if not script.is_file():
        raise PubSubEmulatorError(
            f"the Pub/Sub emulator is not installed under the Cloud SDK at {root}; {INSTALL_HINT}"
        )
    return script


class PubSubEmulator(ServerProcess):
    """The Pub/Sub emulator in its own process group, for the duration of a ``with`` block.

    Args:
        port: The port to listen on; ``None`` picks a free one.
        host: The address to bind.
        startup_timeout: Seconds to wait for the emulator to answer.
        script: The emulator's start script; found through ``gcloud info`` by default.

    Attributes:
        host: The bound address.
        data_dir: The emulator's own directory (removed on stop), once started.

    Raises:
        PubSubEmulatorError: From :meth:`start`: it is not installed, Java is
            missing, the port is taken, or it did not come up within
            ``startup_timeout`` (the message ends with the last lines it printed).
    """

    label = "the Pub/Sub emulator"
    error = PubSubEmulatorError

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        startup_timeout: float = 60.0,
        script: Path | None = None,
    ) -> None:
        super().__init__(port, host=host, startup_timeout=startup_timeout)
        self.data_dir: Path | None = None
        self._script = script
        self._started = threading.Event()

    @property
    def address(self) -> str:
        """The same as :attr:`host_port`."""
        return self.host_port

    @property
    def host_port(self) -> str:
        """``host:port``, for ``emulator_host=`` or ``PUBSUB_EMULATOR_HOST``."""
        return f"{self.host}:{self.port}"

    # ------------------------------------------------------------------ hooks
    def _prepare(self) -> None:
        self._script = self._script or find_emulator()
        if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
            raise PubSubEmulatorError(
                "the Pub/Sub emulator needs Java, which is not on PATH; "
                "install a JRE (e.g. `apt-get install default-jre-headless`)"
            )
        self._started.clear()
        self.data_dir = Path(tempfile.mkdtemp(prefix="melange-pubsub-emulator-"))

    def _command(self, port: int) -> list[str]:
        return [str(self._script), f"--host={self.host}", f"--port={port}"]

    def _working_directory(self) -> Path | None:
        return self.data_dir  # whatever it writes stays in its own directory

    def _on_output(self, line: str) -> None:
        if "Server started" in line:
            self._started.set()

    def _answers(self) -> bool:
        # The port opens before the emulator serves: wait for its own word too.
        return self._started.is_set() and super()._answers()

    def _cleanup(self) -> None:
        if self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None
