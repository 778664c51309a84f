"""A private RabbitMQ node for tests: the installed server, on its own name, ports and data.

:class:`RabbitMQNode` runs the installed ``rabbitmq-server`` under a node name of
its own, with its own data and log directories, feature-flags file, config file
(free AMQP, management and distribution ports on 127.0.0.1) and enabled-plugins
file (the management plugin), so tests may stop and restart it without touching
the machine's RabbitMQ service::

    from melange_rabbitmq import RabbitMQBackend
    from melange_rabbitmq.testing import RabbitMQNode

    with RabbitMQNode() as node:
        backend = RabbitMQBackend(node.url, management_url=node.management_url)

Run as root, the server script drops to the ``rabbitmq`` user, so the node's
directories are handed to that user. When the server cannot start,
:meth:`RabbitMQNode.start` raises :class:`RabbitMQNodeError` saying why: tests
fail then, they do not skip. The node's data survives :meth:`RabbitMQNode.restart`
(durable queues and their messages come back) and is removed by :meth:`stop`,
which sends SIGTERM: RabbitMQ then shuts down cleanly, as ``rabbitmqctl stop`` would.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
import urllib.request
import uuid
from collections.abc import Mapping
from pathlib import Path

from melange.testing.server_process import ServerProcess, ServerProcessError, free_port
from melange_rabbitmq.hand_changes import RabbitMQHandChanges

__all__ = ["RabbitMQHandChanges", "RabbitMQNode", "RabbitMQNodeError", "find_server"]

SEARCH = ("/usr/lib/rabbitmq/bin", "/usr/local/sbin", "/opt/rabbitmq/sbin", "/usr/sbin")
"""Where the server's own scripts live; Debian's /usr/sbin ones are wrappers that call su."""
INSTALL_HINT = (
    "install RabbitMQ (Debian/Ubuntu: `apt-get install rabbitmq-server`), or put the directory "
    "holding rabbitmq-server and rabbitmqctl on PATH"
)

DEAD_LETTER_RETRY_MS = 2000
"""The node's ``dead_letter_worker_publisher_confirm_timeout``: how soon a dead-letter held
for want of a route (its dead-letter queue is gone) is sent again."""


class RabbitMQNodeError(ServerProcessError):
    """The private node could not be started (not installed, died, no answer)."""


def find_server(program: str = "rabbitmq-server") -> Path:
    """Return the path of ``program`` (``rabbitmq-server`` or ``rabbitmqctl``).

    Raises:
        RabbitMQNodeError: RabbitMQ is not installed.
    """
    found = shutil.which(program, path=os.pathsep.join(SEARCH)) or shutil.which(program)
    if found is None:
        raise RabbitMQNodeError(f"{program} is not installed; {INSTALL_HINT}")
    return Path(found)


class RabbitMQNode(ServerProcess):
    """A private RabbitMQ node in a subprocess (see the module's docstring).

    Args:
        port: The AMQP port; ``None`` picks a free one.
        startup_timeout: Seconds :meth:`start` waits for AMQP and the management API.
    """

    label = "the private RabbitMQ node"
    protocol = "AMQP and HTTP (management)"
    error = RabbitMQNodeError

    def __init__(self, port: int | None = None, *, startup_timeout: float = 60.0) -> None:
        super().__init__(port, startup_timeout=startup_timeout)
        self.node_name = f"melange-{uuid.uuid4().hex[:10]}@localhost"
        self.management_port = free_port()
        self.dist_port = free_port()
        self.directory: Path | None = None
        self._keep_data = False

    @property
    def address(self) -> str:
        """``host:port`` of the AMQP listener."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The AMQP URL of the node's default virtual host, as the guest user."""
        return f"amqp://guest:guest@{self.host}:{self.port}/%2F"

    @property
    def management_url(self) -> str:
        """The management API's endpoint, as the guest user."""
        return f"http://guest:guest@{self.host}:{self.management_port}"

    def restart(self) -> RabbitMQNode:
        """Stop the node and start it again on the same ports, keeping its data."""
        self._keep_data = True
        try:
            return super().restart()
        finally:
            self._keep_data = False

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the node: SIGTERM makes RabbitMQ shut down cleanly (SIGKILL after ``timeout``)."""
        super().stop(timeout)

    # ------------------------------------------------------------------ hooks
    def _prepare(self) -> None:
        find_server()
        if self.directory is not None and self.directory.exists():
            return  # a restart keeps the data
        self.directory = Path(tempfile.mkdtemp(prefix="melange-rabbitmq-"))
        for sub in ("mnesia", "log"):
            (self.directory / sub).mkdir()
        (self.directory / "enabled_plugins").write_text("[rabbitmq_management].\n")
        if os.geteuid() == 0:  # the server script drops to the rabbitmq user
            try:
                user = pwd.getpwnam("rabbitmq")
            except KeyError:
                raise RabbitMQNodeError(
                    "running as root, but there is no 'rabbitmq' user for the server to drop to; "
                    + INSTALL_HINT
                ) from None
            self.directory.chmod(0o755)
            for path in [self.directory, *self.directory.rglob("*")]:
                os.chown(path, user.pw_uid, user.pw_gid)

    def _write_config(self, port: int) -> Path:
        assert self.directory is not None
        config = self.directory / "rabbitmq.conf"
        config.write_text(
            f"listeners.tcp.default = {self.host}:{port}\n"
            f"management.tcp.ip = {self.host}\n"
            f"management.tcp.port = {self.management_port}\n"
            "loopback_users = none\n"
            "log.console = true\n"
            "log.console.level = warning\n"
            "log.file = false\n"
        )
        # Held dead-letters are retried after this (3 min by default): seconds, for tests.
        advanced = self.directory / "advanced.config"
        advanced.write_text(
            f"[{{rabbit, [{{dead_letter_worker_publisher_confirm_timeout, "
            f"{DEAD_LETTER_RETRY_MS}}}]}}].\n"
        )
        if os.geteuid() == 0:
            user = pwd.getpwnam("rabbitmq")
            for path in (config, advanced):
                os.chown(path, user.pw_uid, user.pw_gid)
        return config

    def _command(self, port: int) -> list[str]:
        server = str(find_server())
        if os.geteuid() != 0:
            return [server]
        # The Debian wrapper drops to the rabbitmq user through su, whose child leaves the
        # process group, so stop() could not reach the node: drop privileges here, in place.
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            raise RabbitMQNodeError(
                "running as root needs setpriv (util-linux) to start the node as the rabbitmq "
                "user; install util-linux, or run the tests as the rabbitmq user"
            )
        return [setpriv, "--reuid=rabbitmq", "--regid=rabbitmq", "--init-groups", server]

    def _environment(self, port: int) -> Mapping[str, str]:
        assert self.directory is not None
        base = self.directory
        env = dict(os.environ)
        env.update(
            RABBITMQ_NODENAME=self.node_name,
            HOME=_home(),
            RABBITMQ_NODE_PORT=str(port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(base / "mnesia"),
            RABBITMQ_LOG_BASE=str(base / "log"),
            RABBITMQ_FEATURE_FLAGS_FILE=str(base / "feature_flags"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(base / "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=str(base / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(base / "advanced.config"),
            RABBITMQ_PID_FILE=str(base / "node.pid"),
        )
        return env

    def _launch(self, port: int) -> None:
        self._write_config(port)
        super()._launch(port)

    def _answers(self) -> bool:
        if not super()._answers():
            return False
        request = urllib.request.Request(f"http://{self.host}:{self.management_port}/api/overview")
        request.add_header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")  # guest:guest
        try:
            with urllib.request.urlopen(request, timeout=1.0) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def _hint(self, output: str) -> str:
        if "eacces" in output.lower() or "permission denied" in output.lower():
            return "; the node's directories must belong to the user the server runs as"
        return ""

    def _cleanup(self) -> None:
        if self._keep_data or self.directory is None:
            return
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory = None


def _home() -> str:
    """The server's home (its Erlang cookie lives there): the rabbitmq user's when root."""
    if os.geteuid() == 0:
        try:
            return pwd.getpwnam("rabbitmq").pw_dir
        except KeyError:
            pass
    return os.environ.get("HOME", "/tmp")
