"""A moto server for tests: a real SQS/SNS HTTP endpoint in a subprocess.

:class:`MotoServer` runs ``python -m moto.server`` on a free (or given) port,
waits until it answers HTTP, and stops it reliably, so tests talk to SQS and SNS
over real HTTP without Docker or an AWS account::

    from melange_localsqs import LocalSQSBackend
    from melange_localsqs.testing import MotoServer

    with MotoServer() as server:
        backend = LocalSQSBackend(endpoint_url=server.endpoint_url)
        ...

``MotoServer(patch_sqs=True)`` runs the server with :func:`patch_moto_sqs`: faster
SQS, and safe under concurrent calls.

It needs moto with its server extras (``pip install "moto[server]"``) and a
POSIX system (Linux, macOS): the server runs in its own process group.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import functools
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from types import TracebackType
from typing import Any

from melange.exceptions import MelangeError

__all__ = [
    "LOCALSTACK_ENDPOINT_ENV",
    "MotoServer",
    "MotoServerError",
    "patch_moto_sqs",
    "port_in_use",
]

INSTALL_HINT = 'pip install "moto[server]"'
"""The command that installs what :class:`MotoServer` runs."""

LOCALSTACK_ENDPOINT_ENV = "MELANGE_LOCALSTACK_ENDPOINT"
"""Environment variable naming a running LocalStack (``http://127.0.0.1:4599``): when set,
melange-localsqs's own tests run against it as well as against a moto server."""


class MotoServerError(MelangeError, RuntimeError):
    """The moto server could not be started (not installed, port taken, died, no answer)."""


def port_in_use(host: str, port: int) -> bool:
    """Return whether something already listens on ``host:port``.

    Binds with ``SO_REUSEADDR`` like the server will, so connections lingering in
    ``TIME_WAIT`` from an earlier run do not count as "in use".
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


PATCHED_SERVER = """\
import sys
from melange_localsqs.testing import patch_moto_sqs
patch_moto_sqs()
from moto.server import main
main(sys.argv[1:])
"""
"""``python -c`` program: moto's server with :func:`patch_moto_sqs` applied."""


def patch_moto_sqs() -> None:
    """Make moto's SQS in this process fast and safe under concurrent calls; idempotent.

    Two changes, neither of what moto answers, only of how fast and how safely:

    - Its clock is read with ``time.time()`` instead of datetime arithmetic
      (the same values). moto recomputes every queue attribute, each a pass over
      all messages reading the clock per message, for every message it sends or
      receives: a 1,000-message queue takes ~60 s to fill and drain, ~6 s after.
    - Receiving and deleting take the queue's own lock, which moto's send already
      takes. Without it, a delete (which rebuilds the queue's message list without
      the lock) can drop messages a concurrent send appends, and a concurrent
      delete can bring deleted messages back; concurrent receives fail with
      ``RuntimeError: Set changed size during iteration``. Real SQS does none of that.

    Raises:
        MotoServerError: moto is not installed.
    """
    try:
        import moto.sqs.models as sqs_models
        from moto.core import utils as moto_utils
    except ImportError as error:
        raise MotoServerError(f"moto is not installed; install it with `{INSTALL_HINT}`") from error
    if getattr(sqs_models, "_melange_patched", False):
        return

    def unix_time(dt: Any = None) -> float:
        return time.time() if dt is None else float(moto_utils.unix_time(dt))

    def unix_time_millis(dt: Any = None) -> float:
        return unix_time(dt) * 1000.0

    sqs_models.unix_time = unix_time  # type: ignore[attr-defined]
    sqs_models.unix_time_millis = unix_time_millis  # type: ignore[attr-defined]

    queue_delete = sqs_models.Queue.delete_message
    backend_receive = sqs_models.SQSBackend.receive_message

    @functools.wraps(queue_delete)
    def delete_message(self: Any, receipt_handle: str) -> None:
        with self._messages_lock:
            queue_delete(self, receipt_handle)

    @functools.wraps(backend_receive)
    def receive_message(self: Any, queue_name: str, *args: Any, **kwargs: Any) -> Any:
        # A long poll waits on this same (reentrant) lock's condition, which releases it.
        with self.get_queue(queue_name)._messages_lock:
            return backend_receive(self, queue_name, *args, **kwargs)

    sqs_models.Queue.delete_message = delete_message  # type: ignore[method-assign]
    sqs_models.SQSBackend.receive_message = receive_message  # type: ignore[method-assign]
    sqs_models._melange_patched = True  # type: ignore[attr-defined]


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


class MotoServer:
    """``python -m moto.server`` in its own process group, for the duration of a ``with`` block.

    Args:
        port: The port to listen on; ``None`` picks a free one. A port that is
            already in use is an error, not a silent reuse of whatever listens there.
        host: The address to bind.
        startup_timeout: Seconds to wait for the server to answer HTTP.
        python: The interpreter that runs moto; the current one by default.
        patch_sqs: Run the server with :func:`patch_moto_sqs` applied: queues of
            hundreds of messages fill and drain about ten times faster, and
            concurrent sends, receives and deletes lose nothing. Off by
            default: the plain ``python -m moto.server``.

    Attributes:
        host: The bound address.
        startup_timeout: Seconds :meth:`start` waits for the first HTTP answer.
        python: The interpreter that runs moto.
        patch_sqs: Whether the server runs with :func:`patch_moto_sqs` applied.

    Raises:
        MotoServerError: From :meth:`start`: moto is not installed, the port is
            taken, or the server died or did not answer in time (the message ends
            with the last lines it printed).
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        startup_timeout: float = 20.0,
        python: str = sys.executable,
        patch_sqs: bool = False,
    ) -> None:
        self.host = host
        self.startup_timeout = startup_timeout
        self.python = python
        self.patch_sqs = patch_sqs
        self._requested_port = port
        self._port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._output: collections.deque[str] = collections.deque(maxlen=40)
        self._reader: threading.Thread | None = None

    def __repr__(self) -> str:
        state = f"running at {self.endpoint_url}" if self.running else "stopped"
        return f"<MotoServer {state}>"

    @property
    def port(self) -> int:
        """The port the server listens on (known once started)."""
        if self._port is None:
            raise MotoServerError("the moto server has not been started; call start() first")
        return self._port

    @property
    def endpoint_url(self) -> str:
        """``http://host:port``, to pass as ``endpoint_url`` to a backend or boto3."""
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> MotoServer:
        """Start the server and wait until it answers HTTP; return ``self``.

        Raises:
            MotoServerError: moto is missing, the port is taken, or the server
                did not come up within :attr:`startup_timeout`.
        """
        if self.running:
            return self
        if self.python == sys.executable and (
            importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None
        ):
            raise MotoServerError(
                f"moto's server is not installed in {sys.executable}; install it with "
                f"`{INSTALL_HINT}`"
            )
        port = self._requested_port if self._requested_port is not None else _free_port(self.host)
        if self._requested_port is not None and port_in_use(self.host, port):
            raise MotoServerError(
                f"cannot start a moto server on {self.host}:{port}: the port is already in use "
                "(another moto server or LocalStack?). Stop what listens there, or pass "
                "another port (MotoServer() picks a free one)"
            )
        env = dict(os.environ, MOTO_PORT=str(port))  # moto builds queue URLs from MOTO_PORT
        self._output.clear()
        self._process = subprocess.Popen(
            self._command(port),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: stop() signals the whole group
        )
        self._port = port
        # A full pipe would block the server, so a thread keeps reading (and the tail).
        self._reader = threading.Thread(
            target=self._read_output, name=f"moto-server-{port}-output", daemon=True
        )
        self._reader.start()
        atexit.register(self.stop)
        try:
            self._wait_until_answering()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server: SIGTERM to its process group, SIGKILL after ``timeout`` seconds.

        Safe to call more than once, and when the server never started.
        """
        process, self._process = self._process, None
        atexit.unregister(self.stop)
        if process is None:
            return
        if process.poll() is None:
            self._signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(process, signal.SIGKILL)
                process.wait(timeout)
        if self._reader is not None:
            self._reader.join(timeout)
            self._reader = None
        if process.stdout is not None:
            process.stdout.close()

    def reset(self) -> None:
        """Forget every queue, topic and message (moto's ``/moto-api/reset``)."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    def output_tail(self) -> str:
        """The last lines the server printed (its log), for error messages."""
        return "".join(self._output)

    # ---------------------------------------------------------------- private
    def _command(self, port: int | None) -> list[str]:
        program = ["-c", PATCHED_SERVER] if self.patch_sqs else ["-m", "moto.server"]
        return [self.python, *program, "-H", self.host, "-p", str(port)]

    def _read_output(self) -> None:
        process = self._process
        if process is None or process.stdout is None:
            return
        with contextlib.suppress(ValueError, OSError):  # the pipe closed under us on stop()
            for line in iter(process.stdout.readline, b""):
                self._output.append(line.decode(errors="replace"))

    @staticmethod
    def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)

    def _wait_until_answering(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        url = f"{self.endpoint_url}/moto-api/"
        while True:
            process = self._process
            if process is None or process.poll() is not None:
                code = None if process is None else process.returncode
                if self._reader is not None:
                    self._reader.join(2.0)  # collect what it printed before dying
                raise MotoServerError(self._failure(f"the moto server exited with code {code}"))
            try:
                with urllib.request.urlopen(url, timeout=1.0):
                    return
            except urllib.error.HTTPError:
                return  # any HTTP answer, even an error status, means it is serving
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() >= deadline:
                raise MotoServerError(
                    self._failure(
                        f"the moto server did not answer HTTP at {self.endpoint_url} within "
                        f"{self.startup_timeout:g} s"
                    )
                )
            time.sleep(0.05)

    def _failure(self, what: str) -> str:
        tail = self.output_tail().strip() or "(it printed nothing)"
        hint = ""
        if "No module named" in tail:
            hint = f"; install moto's server with `{INSTALL_HINT}`"
        command = " ".join(self._command(self._port))
        if self.patch_sqs:  # the program itself would drown the output
            command = command.replace(PATCHED_SERVER, "<PATCHED_SERVER>")
        return f"{what}{hint}. Command: {command}. Its last output:\n{tail}"
