"""A local server for tests, run in a subprocess of its own process group.

:class:`ServerProcess` holds what every such server needs: a given or free
port, the child started in its own process group (so stopping it also stops
whatever it forked), a thread that keeps reading its output (a full pipe would
block it) and keeps the last lines for error messages, a wait until it answers,
and a stop that leaves nothing of the group behind. A subclass says what to run,
how to tell it is ready, what its address looks like and which error to raise::

    class EchoServer(ServerProcess):
        label = "the echo server"

        def _command(self, port: int) -> list[str]:
            return ["my-echo-server", "--port", str(port)]

        @property
        def address(self) -> str:
            return f"{self.host}:{self.port}"

    with EchoServer() as server:
        ...

POSIX only (Linux, macOS): process groups are how stop reaches every process.
Plugins build their emulators on it (``melange_localsqs.testing.MotoServer``,
``melange_gcp.testing.PubSubEmulator``). :class:`StartStop`, its ``with``-block
part, also suits a server that runs in threads of the test process.
"""

from __future__ import annotations

import abc
import atexit
import collections
import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import ClassVar, TypeVar

from melange.exceptions import MelangeError

__all__ = ["ServerProcess", "ServerProcessError", "StartStop", "free_port", "port_in_use"]

_Started = TypeVar("_Started", bound="StartStop")
_Server = TypeVar("_Server", bound="ServerProcess")

OUTPUT_LINES = 40
"""How many of the server's last output lines are kept for error messages."""

_POLL_INTERVAL = 0.05
"""Seconds between two readiness probes while a server starts."""


class ServerProcessError(MelangeError, RuntimeError):
    """A local server could not be started: not installed, port taken, died, no answer."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that nothing listens on right now.

    The port is free when this returns; another process may still take it
    before the server binds it, which is rare enough for tests.

    Args:
        host: The address the server will bind.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def port_in_use(host: str, port: int) -> bool:
    """Return whether something already listens on ``host:port``.

    Binds with ``SO_REUSEADDR`` like servers do, so connections lingering in
    ``TIME_WAIT`` from an earlier run do not count as "in use".

    Args:
        host: The address to check.
        port: The port to check.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


class StartStop(abc.ABC):
    """A local server as a ``with`` block: :meth:`start` on entry, :meth:`stop` on exit.

    For any test server with those two methods, a subprocess (:class:`ServerProcess`)
    or threads in this process; the block stops it also when its body fails.
    """

    @abc.abstractmethod
    def start(self) -> object:
        """Start the server; return once it serves."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop the server; safe to call more than once."""

    def __enter__(self: _Started) -> _Started:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class ServerProcess(StartStop):
    """A server subprocess in its own process group, for the duration of a ``with`` block.

    Subclasses implement :meth:`_command` and :attr:`address`, and may override
    the other underscored hooks: :meth:`_prepare` (checks and set-up before
    anything runs), :meth:`_environment`, :meth:`_working_directory`,
    :meth:`_on_output` (sees every line), :meth:`_answers` (readiness; by
    default the port accepts TCP connections), :meth:`_hint` and
    :meth:`_shown_command` (for error messages) and :meth:`_cleanup` (after stop).

    Args:
        port: The port to listen on; ``None`` picks a free one. A port already
            in use is an error, not a silent reuse of whatever listens there.
        host: The address to bind.
        startup_timeout: Seconds :meth:`start` waits for the server to answer.

    Attributes:
        label: The server in messages, e.g. ``"the moto server"`` (class attribute).
        protocol: What :meth:`_answers` speaks, for messages, e.g. ``"HTTP"``; empty
            for a plain TCP connection (class attribute).
        error: The :class:`ServerProcessError` subclass raised (class attribute).
        host: The bound address.
        startup_timeout: Seconds :meth:`start` waits for the server to answer.
    """

    label: ClassVar[str] = "the server"
    protocol: ClassVar[str] = ""
    error: ClassVar[type[ServerProcessError]] = ServerProcessError

    def __init__(
        self, port: int | None = None, *, host: str = "127.0.0.1", startup_timeout: float = 20.0
    ) -> None:
        self.host = host
        self.startup_timeout = startup_timeout
        self._requested_port = port
        self._port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._output: collections.deque[str] = collections.deque(maxlen=OUTPUT_LINES)
        self._reader: threading.Thread | None = None

    def __repr__(self) -> str:
        state = f"running at {self.address}" if self.running else "stopped"
        return f"<{type(self).__name__} {state}>"

    @property
    @abc.abstractmethod
    def address(self) -> str:
        """Where clients reach the server, e.g. ``http://host:port`` (known once started)."""

    @property
    def port(self) -> int:
        """The port the server listens on (known once started)."""
        if self._port is None:
            raise self.error(f"{self.label} has not been started; call start() first")
        return self._port

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self: _Server) -> _Server:
        """Start the server and wait until it answers; return ``self``.

        Does nothing when it is already running.

        Raises:
            ServerProcessError: (:attr:`error`) it cannot run, the port is taken,
                or it exited or did not answer within :attr:`startup_timeout`
                (the message ends with the last lines it printed).
        """
        if self.running:
            return self
        try:
            self._prepare()
            port = self._requested_port
            if port is None:
                port = free_port(self.host)
            elif port_in_use(self.host, port):
                raise self.error(
                    f"cannot start {self.label} on {self.host}:{port}: the port is already in "
                    f"use{self._port_owner_hint()}. Stop what listens there, or pass another port "
                    f"({type(self).__name__}() picks a free one)"
                )
            self._port = port
            self._output.clear()
            self._launch(port)
            self._wait_until_answering()
        except BaseException:
            self.stop()
            raise
        return self

    def restart(self: _Server) -> _Server:
        """Stop the server and start it again, on the same port once it had one; return ``self``.

        For fault tests: whatever the server kept in memory is gone afterwards.
        """
        if self._requested_port is None and self._port is not None:
            self._requested_port = self._port  # clients keep their endpoint
        self.stop()
        return self.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server: SIGTERM to its process group, SIGKILL after ``timeout`` seconds.

        Safe to call more than once, and when the server never started.

        Args:
            timeout: Seconds to wait for the group to end after each signal.
        """
        process, self._process = self._process, None
        atexit.unregister(self.stop)
        if process is not None:
            if process.poll() is None:
                _signal_group(process, signal.SIGTERM)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    _signal_group(process, signal.SIGKILL)
                    process.wait(timeout)
            # What it started may outlive it (a script's java, say): end the rest of the group.
            _signal_group(process, signal.SIGKILL)
            if self._reader is not None:
                self._reader.join(timeout)
            if process.stdout is not None:
                process.stdout.close()
        self._reader = None
        self._cleanup()

    def output_tail(self) -> str:
        """The last lines the server printed (its log), for error messages."""
        return "\n".join(self._output)

    # ------------------------------------------------------------------ hooks
    @abc.abstractmethod
    def _command(self, port: int) -> list[str]:
        """The program and arguments that run the server on ``port``."""

    def _prepare(self) -> None:
        """Check that the server can run, and set up what it needs; raise :attr:`error` if not."""

    def _environment(self, port: int) -> Mapping[str, str] | None:
        """The server's environment; ``None`` inherits this process's."""
        return None

    def _working_directory(self) -> Path | None:
        """The server's working directory; ``None`` keeps this process's."""
        return None

    def _on_output(self, line: str) -> None:
        """Called with each line the server prints (without its line break)."""

    def _answers(self) -> bool:
        """Whether the server answers yet; by default, whether its port accepts connections."""
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0):
                return True
        except OSError:
            return False

    def _port_owner_hint(self) -> str:
        """A guess at what holds a taken port, e.g. ``" (another server?)"``; empty by default."""
        return ""

    def _hint(self, output: str) -> str:
        """How to fix what ``output`` shows went wrong, as ``"; install ..."``; empty by default."""
        return ""

    def _shown_command(self, port: int) -> str:
        """The command as error messages show it."""
        return " ".join(self._command(port))

    def _cleanup(self) -> None:
        """Called at the end of every :meth:`stop`, e.g. to remove a data directory."""

    # ---------------------------------------------------------------- private
    def _launch(self, port: int) -> None:
        command = self._command(port)
        try:
            self._process = subprocess.Popen(
                command,
                cwd=self._working_directory(),
                env=self._environment(port),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() signals all of it
            )
        except OSError as error:
            raise self.error(
                f"cannot run {self.label}: {error}. Command: {self._shown_command(port)}"
            ) from error
        atexit.register(self.stop)
        self._reader = threading.Thread(
            target=self._read_output,
            args=(self._process,),
            name=f"{type(self).__name__}-{port}-output",
            daemon=True,
        )
        self._reader.start()

    def _read_output(self, process: subprocess.Popen[bytes]) -> None:
        if process.stdout is None:
            return
        with contextlib.suppress(ValueError, OSError):  # the pipe closed under us on stop()
            for raw in iter(process.stdout.readline, b""):
                line = raw.decode(errors="replace").rstrip()
                self._output.append(line)
                self._on_output(line)

    def _wait_until_answering(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            process = self._process
            if process is None or process.poll() is not None:
                code = None if process is None else process.returncode
                if self._reader is not None:
                    self._reader.join(2.0)  # its last words, before they are quoted
                raise self.error(self._failure(f"{self.label} exited with code {code}"))
            if self._answers():
                return
            if time.monotonic() >= deadline:
                answer = f"answer {self.protocol}" if self.protocol else "answer"
                raise self.error(
                    self._failure(
                        f"{self.label} did not {answer} at {self.address} within "
                        f"{self.startup_timeout:g} s"
                    )
                )
            time.sleep(_POLL_INTERVAL)

    def _failure(self, what: str) -> str:
        output = self.output_tail().strip()
        command = self._shown_command(self.port)
        tail = output or "(it printed nothing)"
        return f"{what}{self._hint(output)}. Command: {command}. Its last output:\n{tail}"


def _signal_group(process: subprocess.Popen[bytes], signum: signal.Signals) -> None:
    # Gone already, or (macOS) a group whose leader is a zombie: nothing left to signal.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)
