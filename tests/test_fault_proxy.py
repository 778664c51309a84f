"""FaultProxy: each fault does what it says, against tiny local HTTP and TCP servers.

The servers run in threads of the test process and record what reached them,
so every test checks both sides: what the client saw, and what the server got.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from melange.exceptions import ConfigurationError, InvalidArgument
from melange.testing.faults import FaultProxy, FaultProxyError, FaultTarget
from melange.testing.server_process import StartStop

TIMEOUT = 2.0
"""Seconds a client waits for an answer the proxy is expected to forward."""

ANSWER_PADDING = b"." * 1000
"""Every HTTP answer carries this after the request's body: responses of a known size."""


class _Recording(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: several requests per connection
    server: _RecordingHTTPServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.bodies.append(body)
        answer = b"got " + body + ANSWER_PADDING
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: the tests reset connections on purpose


class _RecordingHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Recording)
        self.bodies: list[bytes] = []

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # resets are the point of these tests


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        with contextlib.suppress(OSError):
            while data := self.request.recv(65536):
                self.request.sendall(data)


class _Sink(socketserver.BaseRequestHandler):
    server: _TCPServer

    def handle(self) -> None:
        with contextlib.suppress(OSError):
            while data := self.request.recv(65536):
                with self.server.lock:
                    self.server.received += len(data)


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, handler: type[socketserver.BaseRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.lock = threading.Lock()
        self.received = 0

    def handle_error(self, request: object, client_address: object) -> None:
        pass


class _Threaded(StartStop):
    """A socketserver in a thread of this process, as a ``with`` block."""

    def __init__(self, server: socketserver.TCPServer) -> None:
        self.server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> _Threaded:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def http_server() -> Iterator[_RecordingHTTPServer]:
    server = _RecordingHTTPServer()
    with _Threaded(server):
        yield server


@pytest.fixture
def proxy(http_server: _RecordingHTTPServer) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", http_server.server_address[1], lifetime=60) as started:
        yield started


_clients: list[http.client.HTTPConnection] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


def _connection(proxy: FaultProxy, timeout: float = TIMEOUT) -> http.client.HTTPConnection:
    """An HTTP client through the proxy, closed after the test."""
    connection = http.client.HTTPConnection(proxy.host, proxy.port, timeout=timeout)
    _clients.append(connection)
    return connection


def _post(connection: http.client.HTTPConnection, body: bytes) -> bytes:
    connection.request("POST", "/", body=body)
    response = connection.getresponse()
    assert response.status == 200
    return response.read()


def _raw_request(body: bytes) -> bytes:
    return (
        b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


def _read_until_closed(sock: socket.socket, timeout: float = TIMEOUT) -> bytes:
    sock.settimeout(timeout)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def _eventually(condition: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# ---------------------------------------------------------------- forwarding
def test_forwards_both_ways_and_counts_requests_and_bytes(
    proxy: FaultProxy, http_server: _RecordingHTTPServer
) -> None:
    assert proxy.address == f"127.0.0.1:{proxy.port}"
    kept_alive = _connection(proxy)
    answers = [_post(kept_alive, f"m{n}".encode()) for n in range(3)]
    assert answers == [b"got m%d" % n + ANSWER_PADDING for n in range(3)]
    assert _post(_connection(proxy), b"other") == b"got other" + ANSWER_PADDING
    assert http_server.bodies == [b"m0", b"m1", b"m2", b"other"]
    stats = proxy.stats
    assert (stats.connections, stats.requests, stats.resets, stats.cuts) == (2, 4, 0, 0)
    assert stats.bytes_down > 4 * len(ANSWER_PADDING) and stats.bytes_up > 0
    assert proxy.fault == ""


def test_large_transfers_keep_every_byte_in_order_with_small_buffers() -> None:
    payload = bytes(range(256)) * 16384  # 4 MiB through 64 KiB buffers: reading must wait
    with (
        _Threaded(_TCPServer(_Echo)) as echo,
        FaultProxy("127.0.0.1", echo.port, max_buffer=65536) as proxy,
        socket.create_connection((proxy.host, proxy.port), timeout=10) as sock,
    ):
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        received = bytearray()
        while len(received) < len(payload):
            chunk = sock.recv(65536)
            assert chunk, "the connection ended early"
            received += chunk
        sender.join()
        assert received == payload


# -------------------------------------------------------------------- faults
def test_reset_resets_open_and_new_connections_until_heal(
    proxy: FaultProxy, http_server: _RecordingHTTPServer
) -> None:
    open_connection = _connection(proxy)
    _post(open_connection, b"before")
    proxy.reset()
    assert proxy.fault == "reset"
    with pytest.raises((ConnectionResetError, http.client.RemoteDisconnected, BrokenPipeError)):
        _post(open_connection, b"on the open connection")
    with pytest.raises((ConnectionResetError, http.client.RemoteDisconnected, BrokenPipeError)):
        _post(_connection(proxy), b"on a new connection")
    assert http_server.bodies == [b"before"], "a reset connection forwards nothing"
    assert proxy.stats.resets >= 2

    proxy.heal()
    assert _post(_connection(proxy), b"healed") == b"got healed" + ANSWER_PADDING
    assert [event for _, event in proxy.timeline] == ["reset", "heal"]


@pytest.mark.parametrize("after_bytes", [0, 20])
def test_cut_lets_the_request_through_and_ends_the_response_after_n_bytes(
    proxy: FaultProxy, http_server: _RecordingHTTPServer, after_bytes: int
) -> None:
    proxy.cut(after_bytes=after_bytes)
    for label in (b"first", b"second"):  # each new connection is cut as well
        with socket.create_connection((proxy.host, proxy.port), timeout=TIMEOUT) as sock:
            sock.sendall(_raw_request(label))
            received = _read_until_closed(sock)
        assert len(received) == after_bytes, received
        assert received == b"HTTP/1.1 200 OK\r\nServer: "[:after_bytes]
    assert http_server.bodies == [b"first", b"second"], "the server handled both requests"
    assert proxy.stats.cuts == 2

    proxy.heal()
    assert _post(_connection(proxy), b"healed") == b"got healed" + ANSWER_PADDING


def test_stall_holds_everything_until_heal_then_delivers_it(
    proxy: FaultProxy, http_server: _RecordingHTTPServer
) -> None:
    waiting = socket.create_connection((proxy.host, proxy.port), timeout=TIMEOUT)
    proxy.stall()
    with contextlib.closing(waiting):
        waiting.sendall(_raw_request(b"held"))
        also_new = _connection(proxy, timeout=0.3)
        with pytest.raises(TimeoutError):
            _post(also_new, b"new during the stall")
        waiting.settimeout(0.3)
        with pytest.raises(TimeoutError):
            waiting.recv(1)
        assert http_server.bodies == [], "nothing reaches the server during a stall"
        stalled = proxy.stats
        assert stalled.bytes_up == 0 and stalled.stalls == 2 and stalled.open == 2

        proxy.heal()
        waiting.settimeout(TIMEOUT)
        assert waiting.recv(12) == b"HTTP/1.1 200", "the held request is answered after heal"
    assert _eventually(lambda: sorted(http_server.bodies) == [b"held", b"new during the stall"])


def test_refuse_refuses_new_connections_resets_open_ones_and_heal_listens_on_the_same_port(
    proxy: FaultProxy,
) -> None:
    open_connection = _connection(proxy)
    _post(open_connection, b"before")
    port = proxy.port
    proxy.refuse()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((proxy.host, port), timeout=TIMEOUT)
    with pytest.raises((ConnectionResetError, http.client.RemoteDisconnected, BrokenPipeError)):
        _post(open_connection, b"on the open connection")
    with socket.socket() as intruder, pytest.raises(OSError):
        intruder.bind((proxy.host, port))  # the port stays reserved meanwhile

    proxy.heal()
    assert proxy.port == port
    assert _post(_connection(proxy), b"healed") == b"got healed" + ANSWER_PADDING


def test_a_new_fault_replaces_the_one_in_effect(
    proxy: FaultProxy, http_server: _RecordingHTTPServer
) -> None:
    with socket.create_connection((proxy.host, proxy.port), timeout=TIMEOUT) as sock:
        proxy.stall()
        sock.sendall(_raw_request(b"held, then cut"))
        time.sleep(0.2)
        assert http_server.bodies == []
        proxy.cut(after_bytes=0)  # the stall ends: the request goes through, its answer not
        assert _read_until_closed(sock) == b""
    assert http_server.bodies == [b"held, then cut"]
    assert [event for _, event in proxy.timeline] == ["stall", "heal", "cut after 0 B"]


# ------------------------------------------------------------------ triggers
def test_after_requests_lets_the_first_requests_through(
    proxy: FaultProxy, http_server: _RecordingHTTPServer
) -> None:
    with socket.create_connection((proxy.host, proxy.port), timeout=TIMEOUT) as sock:
        proxy.cut(after_bytes=0, after_requests=1)
        assert proxy.fault == "armed"
        sock.sendall(_raw_request(b"first"))
        first = b""
        while not first.endswith(b"got first" + ANSWER_PADDING):
            chunk = sock.recv(65536)
            assert chunk, f"the first answer was cut: {first!r}"
            first += chunk
        assert proxy.fault == "armed"
        sock.sendall(_raw_request(b"second"))  # same connection, the next request
        assert _read_until_closed(sock) == b""
    assert proxy.fault == "cut"
    assert _eventually(lambda: http_server.bodies == [b"first", b"second"])


def test_times_limits_the_fault_to_the_next_requests(
    proxy: FaultProxy, http_server: _RecordingHTTPServer
) -> None:
    proxy.reset(times=1)
    with pytest.raises((ConnectionResetError, http.client.RemoteDisconnected, BrokenPipeError)):
        _post(_connection(proxy), b"reset")
    assert proxy.fault == "", "the proxy healed by itself"
    kept_alive = _connection(proxy)
    assert _post(kept_alive, b"next") == b"got next" + ANSWER_PADDING

    proxy.cut(after_bytes=0, times=1)  # a cut response; the request was handled
    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
        _post(kept_alive, b"cut")
    assert _post(_connection(proxy), b"after") == b"got after" + ANSWER_PADDING
    assert http_server.bodies == [b"next", b"cut", b"after"]


def test_after_request_bytes_can_stall_a_request_half_sent() -> None:
    sink = _TCPServer(_Sink)
    with (
        _Threaded(sink),
        FaultProxy("127.0.0.1", sink.server_address[1]) as proxy,
        socket.create_connection((proxy.host, proxy.port), timeout=TIMEOUT) as sock,
    ):
        proxy.stall(after_request_bytes=4)
        sock.sendall(b"0123456789")
        assert _eventually(lambda: sink.received == 4)
        time.sleep(0.2)
        assert sink.received == 4, "the rest of the request is held"
        assert proxy.fault == "stall"
        proxy.heal()
        assert _eventually(lambda: sink.received == 10)


def test_chaos_alternates_faults_for_a_bounded_time_and_ends_healed(
    proxy: FaultProxy, http_server: _RecordingHTTPServer
) -> None:
    proxy.chaos(1.2, fault_seconds=(0.05, 0.15), healthy_seconds=(0.05, 0.15), seed=7)
    outcomes = {"ok": 0, "failed": 0}
    started = time.monotonic()
    while proxy.chaos_running:
        client = _connection(proxy, timeout=0.2)
        try:
            _post(client, b"during chaos")
            outcomes["ok"] += 1
        except (OSError, http.client.HTTPException):
            outcomes["failed"] += 1
        finally:  # a stalled one held open would count against the proxy's connection bound
            client.close()
        assert time.monotonic() - started < 5, "chaos outlived its duration"
    assert proxy.wait_chaos(0)
    events = [event for _, event in proxy.timeline]
    assert events[-1] == "chaos done" and events[-2] == "heal", events
    faults = [event for event in events if event not in ("heal", "chaos done")]
    assert len(faults) >= 3, events
    assert outcomes["ok"] and outcomes["failed"], outcomes
    assert proxy.fault == ""
    assert _post(_connection(proxy), b"after") == b"got after" + ANSWER_PADDING

    proxy.chaos(30, seed=1)
    assert proxy.chaos_running
    proxy.heal()  # ends the schedule early
    assert not proxy.chaos_running and proxy.fault == ""
    assert _post(_connection(proxy), b"healed") == b"got healed" + ANSWER_PADDING


# -------------------------------------------------------------------- bounds
@pytest.mark.parametrize(
    ("target_host", "listen_host"),
    [("192.0.2.1", "127.0.0.1"), ("10.0.0.1", "127.0.0.1"), ("127.0.0.1", "0.0.0.0")],
)
def test_only_loopback_addresses_are_accepted(target_host: str, listen_host: str) -> None:
    with pytest.raises(ConfigurationError, match="not a loopback address"):
        FaultProxy(target_host, 5000, listen_host=listen_host)


def test_more_connections_than_the_bound_are_reset_at_once(
    http_server: _RecordingHTTPServer,
) -> None:
    with FaultProxy("127.0.0.1", http_server.server_address[1], max_connections=2) as proxy:
        first, second = _connection(proxy), _connection(proxy)
        _post(first, b"1")
        _post(second, b"2")
        with pytest.raises((ConnectionResetError, http.client.RemoteDisconnected, BrokenPipeError)):
            _post(_connection(proxy), b"3")
        assert http_server.bodies == [b"1", b"2"]
        assert (proxy.stats.rejected, proxy.stats.peak_open) == (1, 2)
        first.close()
        assert _eventually(lambda: proxy.stats.open == 1)
        assert _post(_connection(proxy), b"4") == b"got 4" + ANSWER_PADDING


def test_bytes_held_during_a_stall_are_bounded_and_delivered_on_heal() -> None:
    sink = _TCPServer(_Sink)
    with (
        _Threaded(sink),
        FaultProxy("127.0.0.1", sink.server_address[1], max_buffer=65536) as proxy,
        socket.create_connection((proxy.host, proxy.port), timeout=TIMEOUT) as sock,
    ):
        proxy.stall()
        sock.setblocking(False)
        chunk, sent = b"x" * 65536, 0
        with contextlib.suppress(BlockingIOError):
            for _ in range(2048):  # 128 MiB: far more than the kernel's buffers hold
                sent += sock.send(chunk)
        assert 0 < sent < 2048 * len(chunk), "the proxy kept reading during the stall"
        assert proxy.stats.bytes_up == 0
        proxy.heal()
        assert _eventually(lambda: sink.received == sent, timeout=10), (sink.received, sent)


def test_stops_by_itself_after_its_lifetime(http_server: _RecordingHTTPServer) -> None:
    proxy = FaultProxy("127.0.0.1", http_server.server_address[1], lifetime=0.5).start()
    try:
        kept = _connection(proxy)
        _post(kept, b"alive")
        assert _eventually(lambda: not proxy.running, timeout=3)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((proxy.host, proxy.port), timeout=TIMEOUT)
        with pytest.raises((ConnectionResetError, http.client.RemoteDisconnected, BrokenPipeError)):
            _post(kept, b"too late")
        with pytest.raises(FaultProxyError, match="lifetime"):
            proxy.reset()
        assert _eventually(lambda: not proxy._thread or not proxy._thread.is_alive())
    finally:
        proxy.stop()


def test_lifecycle_and_argument_errors(http_server: _RecordingHTTPServer) -> None:
    port = http_server.server_address[1]
    proxy = FaultProxy("localhost", port)
    with pytest.raises(FaultProxyError, match="start"):
        proxy.reset()
    with pytest.raises(FaultProxyError, match="start"):
        _ = proxy.address
    with proxy:
        assert repr(proxy).startswith(f"<FaultProxy {proxy.address} -> localhost:{port} running")
        with pytest.raises(ConfigurationError, match="times"):
            proxy.stall(times=0)
        with pytest.raises(ConfigurationError, match="not both"):
            proxy.reset(after_requests=1, after_request_bytes=1)
        with pytest.raises(ConfigurationError, match="after_bytes"):
            proxy.cut(after_bytes=-1)
        with pytest.raises(ConfigurationError, match="kinds"):
            proxy.chaos(1, kinds=["flood"])  # type: ignore[list-item]
    proxy.stop()  # again: harmless
    with pytest.raises(FaultProxyError, match="create a new"):
        proxy.start()
    with pytest.raises(ConfigurationError, match="max_connections >= 1"):
        FaultProxy("127.0.0.1", port, max_connections=0)
    with pytest.raises(ConfigurationError, match="lifetime > 0"):
        FaultProxy("127.0.0.1", port, lifetime=0)
    with pytest.raises(ConfigurationError, match="max_buffer must be a whole number"):
        FaultProxy("127.0.0.1", port, max_buffer=True)
    with pytest.raises(InvalidArgument, match="lifetime"):
        FaultProxy("127.0.0.1", port, lifetime="60")  # type: ignore[arg-type]


def test_fault_target_names_the_real_endpoint() -> None:
    target = FaultTarget(address=("127.0.0.1", 4566), backend=lambda address: None)  # type: ignore[arg-type,return-value]
    assert target.endpoint == "127.0.0.1:4566"
    assert (target.restart, target.call_limit, target.recovery_limit) == (None, 30.0, 10.0)
