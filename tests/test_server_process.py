"""ServerProcess: a real child server starts, answers, and stop leaves nothing of its group."""

from __future__ import annotations

import os
import socket
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest

from melange.exceptions import MelangeError
from melange.testing.server_process import (
    ServerProcess,
    ServerProcessError,
    StartStop,
    free_port,
    port_in_use,
)

# An HTTP server that also starts a grandchild deaf to SIGTERM, and says so: stop() must
# end the whole process group, not only the process it started.
HTTP_SERVER = """
import http.server, subprocess, sys
subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('deaf to SIGTERM', flush=True); time.sleep(60)"])

class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, *args):
        pass

server = http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), Hello)
print("serving", flush=True)
server.serve_forever()
"""

DIES_AT_ONCE = "import sys; print('first words'); print('cannot bind, giving up'); sys.exit(7)"

NEVER_LISTENS = "import time; print('thinking', flush=True); time.sleep(60)"


class HelloError(ServerProcessError):
    """What HelloServer raises."""


class HelloServer(ServerProcess):
    label = "the hello server"
    protocol = "HTTP"
    error = HelloError

    def __init__(
        self, program: str = HTTP_SERVER, port: int | None = None, startup_timeout: float = 20.0
    ) -> None:
        super().__init__(port, startup_timeout=startup_timeout)
        self.program = program
        self.lines: list[str] = []
        self.cleaned_up = 0

    @property
    def address(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _command(self, port: int) -> list[str]:
        return [sys.executable, "-c", self.program, self.host, str(port)]

    def _on_output(self, line: str) -> None:
        self.lines.append(line)

    def _cleanup(self) -> None:
        self.cleaned_up += 1


@pytest.fixture
def hello() -> Iterator[HelloServer]:
    server = HelloServer()
    yield server
    server.stop()


def group_is_gone(pgid: int, wait: float = 0.0) -> bool:
    """Whether no process of group ``pgid`` is left (waiting up to ``wait`` seconds).

    A killed grandchild lingers as a zombie until its new parent reaps it.
    """
    deadline = time.monotonic() + wait
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def test_a_server_starts_answers_and_stop_ends_its_whole_group(hello: HelloServer) -> None:
    assert repr(hello) == "<HelloServer stopped>"
    with hello:
        assert hello.running
        assert repr(hello) == f"<HelloServer running at http://127.0.0.1:{hello.port}>"
        with urllib.request.urlopen(f"{hello.address}/", timeout=5) as response:
            assert response.read() == b"hello"
        deadline = time.monotonic() + 10
        while "deaf to SIGTERM" not in hello.lines and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sorted(hello.lines) == ["deaf to SIGTERM", "serving"]
        assert hello.output_tail() in ("serving\ndeaf to SIGTERM", "deaf to SIGTERM\nserving")
        process = hello._process
        assert process is not None
        assert not group_is_gone(process.pid)  # the server and its SIGTERM-deaf grandchild
        started = time.monotonic()
        hello.stop(timeout=1.0)  # SIGTERM ends the server; the grandchild needs SIGKILL
        assert time.monotonic() - started < 4.0
    assert not hello.running
    assert group_is_gone(process.pid, wait=5.0)
    assert not port_in_use("127.0.0.1", hello.port)
    assert hello.cleaned_up >= 1
    hello.stop()  # idempotent


def test_a_given_port_is_used_and_a_taken_one_refused() -> None:
    port = free_port()
    with HelloServer(port=port) as server:
        assert server.port == port
        assert port_in_use("127.0.0.1", port)
        with pytest.raises(HelloError, match=rf"127\.0\.0\.1:{port}: the port is already in use"):
            HelloServer(port=port).start()


def test_a_child_that_exits_early_raises_with_its_last_output() -> None:
    server = HelloServer(DIES_AT_ONCE)
    with pytest.raises(HelloError) as raised:
        server.start()
    message = str(raised.value)
    assert message.startswith("the hello server exited with code 7")
    assert message.endswith("Its last output:\nfirst words\ncannot bind, giving up")
    assert f"Command: {sys.executable} -c " in message
    assert isinstance(raised.value, MelangeError) and isinstance(raised.value, RuntimeError)
    assert not server.running and server.cleaned_up == 1


def test_a_child_that_never_answers_times_out_and_is_stopped() -> None:
    server = HelloServer(NEVER_LISTENS, startup_timeout=0.5)
    with pytest.raises(HelloError, match=r"did not answer HTTP at http://\S+ within 0\.5 s"):
        server.start()
    assert not server.running
    assert server.output_tail() == "thinking"


def test_a_program_that_cannot_run_is_the_servers_error() -> None:
    class Missing(HelloServer):
        def _command(self, port: int) -> list[str]:
            return ["/nonexistent/melange-test-server", str(port)]

    with pytest.raises(HelloError, match=r"cannot run the hello server: .*nonexistent"):
        Missing().start()


def test_the_port_is_unknown_before_start() -> None:
    with pytest.raises(HelloError, match="the hello server has not been started; call start"):
        _ = HelloServer().address


def test_the_block_stops_the_server_when_it_fails() -> None:
    server = HelloServer()
    with pytest.raises(RuntimeError, match="boom"), server:
        raise RuntimeError("boom")
    assert not server.running


def test_free_port_is_free_and_port_in_use_sees_a_listener() -> None:
    port = free_port("127.0.0.1")
    assert not port_in_use("127.0.0.1", port)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        assert port_in_use("127.0.0.1", port)


def test_start_stop_makes_any_server_a_with_block() -> None:
    class InProcess(StartStop):
        def __init__(self) -> None:
            self.calls: list[str] = []

        def start(self) -> None:
            self.calls.append("start")

        def stop(self) -> None:
            self.calls.append("stop")

    server = InProcess()
    with pytest.raises(ValueError, match="body failed"), server as entered:
        assert entered is server and server.calls == ["start"]
        raise ValueError("body failed")
    assert server.calls == ["start", "stop"]
