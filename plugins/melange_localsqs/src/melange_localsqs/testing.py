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

import functools
import importlib.util
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from melange.testing.server_process import ServerProcess, ServerProcessError, port_in_use

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


class MotoServerError(ServerProcessError):
    """The moto server could not be started (not installed, port taken, died, no answer)."""


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


class MotoServer(ServerProcess):
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

    label = "the moto server"
    protocol = "HTTP"
    error = MotoServerError

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        startup_timeout: float = 20.0,
        python: str = sys.executable,
        patch_sqs: bool = False,
    ) -> None:
        super().__init__(port, host=host, startup_timeout=startup_timeout)
        self.python = python
        self.patch_sqs = patch_sqs

    @property
    def address(self) -> str:
        """The same as :attr:`endpoint_url`."""
        return self.endpoint_url

    @property
    def endpoint_url(self) -> str:
        """``http://host:port``, to pass as ``endpoint_url`` to a backend or boto3."""
        return f"http://{self.host}:{self.port}"

    def reset(self) -> None:
        """Forget every queue, topic and message (moto's ``/moto-api/reset``)."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    # ------------------------------------------------------------------ hooks
    def _prepare(self) -> None:
        if self.python == sys.executable and (
            importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None
        ):
            raise MotoServerError(
                f"moto's server is not installed in {sys.executable}; install it with "
                f"`{INSTALL_HINT}`"
            )

    def _command(self, port: int) -> list[str]:
        program = ["-c", PATCHED_SERVER] if self.patch_sqs else ["-m", "moto.server"]
        return [self.python, *program, "-H", self.host, "-p", str(port)]

    def _environment(self, port: int) -> dict[str, str]:
        return dict(os.environ, MOTO_PORT=str(port))  # moto builds queue URLs from MOTO_PORT

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1.0):
                return True
        except urllib.error.HTTPError:
            return True  # any HTTP answer, even an error status, means it is serving
        except (urllib.error.URLError, OSError):
            return False

    def _port_owner_hint(self) -> str:
        return " (another moto server or LocalStack?)"

    def _hint(self, output: str) -> str:
        if "No module named" in output:
            return f"; install moto's server with `{INSTALL_HINT}`"
        return ""

    def _shown_command(self, port: int) -> str:
        command = super()._shown_command(port)
        if self.patch_sqs:  # the program itself would drown the output
            command = command.replace(PATCHED_SERVER, "<PATCHED_SERVER>")
        return command
