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
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

from melange.exceptions import MelangeError

__all__ = ["EMULATOR_SCRIPT", "PubSubEmulator", "PubSubEmulatorError", "find_emulator"]

EMULATOR_SCRIPT = Path("platform/pubsub-emulator/bin/cloud-pubsub-emulator")
"""Where the emulator's start script lives under the Cloud SDK root."""

INSTALL_HINT = (
    "install it with `gcloud components install pubsub-emulator` or, on Debian/Ubuntu, "
    "`apt-get install google-cloud-cli-pubsub-emulator` (it needs Java)"
)


class PubSubEmulatorError(MelangeError, RuntimeError):
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


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


class PubSubEmulator:
    """The Pub/Sub emulator in its own process group, for the duration of a ``with`` block.

    Args:
        port: The port to listen on; ``None`` picks a free one.
        host: The address to bind.
        startup_timeout: Seconds to wait for the emulator to answer.
        script: The emulator's start script; found through ``gcloud info`` by default.

    Attributes:
        host: The bound address.
        data_dir: The emulator's own directory (removed on stop), once started.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        startup_timeout: float = 60.0,
        script: Path | None = None,
    ) -> None:
        self.host = host
        self.startup_timeout = startup_timeout
        self.data_dir: Path | None = None
        self._script = script
        self._requested_port = port
        self._port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._output: collections.deque[str] = collections.deque(maxlen=40)
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None

    def __repr__(self) -> str:
        state = f"running at {self.host_port}" if self.running else "stopped"
        return f"<PubSubEmulator {state}>"

    @property
    def port(self) -> int:
        """The port the emulator listens on (known once started)."""
        if self._port is None:
            raise PubSubEmulatorError("the emulator has not been started; call start() first")
        return self._port

    @property
    def host_port(self) -> str:
        """``host:port``, for ``emulator_host=`` or ``PUBSUB_EMULATOR_HOST``."""
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the emulator process is alive."""
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> PubSubEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> PubSubEmulator:
        """Start the emulator and wait until it accepts connections; return ``self``.

        Raises:
            PubSubEmulatorError: It is not installed, Java is missing, or it did
                not come up within :attr:`startup_timeout` (the message ends with
                the last lines it printed).
        """
        if self.running:
            return self
        script = self._script or find_emulator()
        if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
            raise PubSubEmulatorError(
                "the Pub/Sub emulator needs Java, which is not on PATH; "
                "install a JRE (e.g. `apt-get install default-jre-headless`)"
            )
        port = self._requested_port if self._requested_port is not None else _free_port(self.host)
        self.data_dir = Path(tempfile.mkdtemp(prefix="melange-pubsub-emulator-"))
        self._output.clear()
        self._ready.clear()
        self._process = subprocess.Popen(
            [str(script), f"--host={self.host}", f"--port={port}"],
            cwd=self.data_dir,  # whatever it writes stays in its own directory
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() signals java too
        )
        self._port = port
        self._reader = threading.Thread(
            target=self._read_output, name=f"pubsub-emulator-{port}-output", daemon=True
        )
        self._reader.start()
        atexit.register(self.stop)
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the emulator's process group (SIGTERM, SIGKILL after ``timeout``); idempotent."""
        process, self._process = self._process, None
        atexit.unregister(self.stop)
        if process is not None:
            if process.poll() is None:
                self._signal_group(process, signal.SIGTERM)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._signal_group(process, signal.SIGKILL)
                    process.wait(timeout)
            # The group may outlive the script: make sure java is gone too.
            self._signal_group(process, signal.SIGKILL)
            if process.stdout is not None:
                process.stdout.close()
        if self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None

    @staticmethod
    def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)

    def _read_output(self) -> None:
        process = self._process
        if process is None or process.stdout is None:
            return
        with contextlib.suppress(ValueError, OSError):
            for raw in process.stdout:
                line = raw.decode(errors="replace").rstrip()
                self._output.append(line)
                if "Server started" in line:
                    self._ready.set()

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            process = self._process
            if process is None or process.poll() is not None:
                if self._reader is not None:
                    self._reader.join(timeout=5)  # its last words, before they are quoted
                raise PubSubEmulatorError(
                    f"the Pub/Sub emulator exited on start (port {self._port}):\n"
                    + "\n".join(self._output)
                )
            if self._ready.wait(0.05) and self._answers():
                return
        raise PubSubEmulatorError(
            f"the Pub/Sub emulator did not answer on {self.host}:{self._port} within "
            f"{self.startup_timeout:g} s:\n" + "\n".join(self._output)
        )

    def _answers(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1):
                return True
        except OSError:
            return False
