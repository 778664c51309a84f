"""A loopback TCP proxy that adds a fixed network delay, for benchmarks.

:class:`LatencyProxy` listens on 127.0.0.1 and forwards every connection to a target on the
same machine. Every chunk of bytes is held for half the round-trip time before it is passed on,
in each direction, so a request/response exchange (one HTTP call) takes ``rtt`` seconds longer
than it would directly. The delay is pure latency: chunks are scheduled, not serialized, so
several chunks and several connections are in transit at once, as on a long link, and order
within a connection is kept.

It is meant for benchmarks and is bounded on purpose: loopback addresses only (listening and
target), at most ``max_connections`` open connections (more are closed at once), at most
``max_buffered`` chunks waiting per direction (the reader then waits), and it stops by itself
after ``lifetime`` seconds. It runs an asyncio loop on a daemon thread, so synchronous code uses
it as a context manager::

    with LatencyProxy("127.0.0.1", 5000, rtt=0.05) as proxy:
        client = boto3.client("sqs", endpoint_url=proxy.endpoint_url, ...)

Run alone (``python benchmarks/latency_proxy.py --target 127.0.0.1:5000 --rtt 0.05``) it
prints its address and serves until Ctrl-C or ``--lifetime``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import threading
import time
from dataclasses import dataclass

from melange.testing.faults import require_loopback
from melange.testing.server_process import StartStop

_CHUNK = 65536
_CONNECT_TIMEOUT = 5.0


@dataclass
class ProxyStats:
    """What went through the proxy (read after :meth:`LatencyProxy.stop`, or any time)."""

    connections: int = 0  # accepted and forwarded
    refused: int = 0  # closed at once: over max_connections, or the target did not answer
    peak_open: int = 0  # most connections open at the same time
    bytes_up: int = 0  # client -> target
    bytes_down: int = 0  # target -> client


class LatencyProxy(StartStop):
    """Forward ``127.0.0.1:<port>`` to ``target_host:target_port`` with ``rtt`` added per exchange.

    Args:
        target_host: Where to forward; a loopback address (or ``localhost``).
        target_port: The target's port.
        rtt: Seconds added to every round trip; each direction is delayed by ``rtt / 2``.
        listen_host: The loopback address to listen on.
        listen_port: The port to listen on; 0 picks a free one (see :attr:`port`).
        max_connections: Open connections at most; more are closed at once.
        max_buffered: Chunks at most waiting for their time per connection and direction.
        lifetime: Seconds after :meth:`start` at which the proxy stops by itself.

    Raises:
        ValueError: A host is not a loopback address, or a bound is not positive.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        rtt: float,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        max_connections: int = 64,
        max_buffered: int = 256,
        lifetime: float = 900.0,
    ) -> None:
        require_loopback(target_host, "target host")
        require_loopback(listen_host, "listen host")
        if rtt < 0 or max_connections < 1 or max_buffered < 1 or lifetime <= 0:
            raise ValueError(
                "need rtt >= 0, max_connections >= 1, max_buffered >= 1 and lifetime > 0"
            )
        self.target_host = target_host
        self.target_port = target_port
        self.rtt = rtt
        self.listen_host = listen_host
        self.max_connections = max_connections
        self.max_buffered = max_buffered
        self.lifetime = lifetime
        self.stats = ProxyStats()
        self._listen_port = listen_port
        self._port: int | None = None
        self._open = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        """The port the proxy listens on (known once started)."""
        if self._port is None:
            raise RuntimeError("the proxy has not been started; call start() first")
        return self._port

    @property
    def endpoint_url(self) -> str:
        """``http://host:port`` of the proxy, for an HTTP client."""
        return f"http://{self.listen_host}:{self.port}"

    def start(self) -> LatencyProxy:
        """Start listening (on a daemon thread); return ``self`` once connections are accepted."""
        if self._thread is not None:
            return self
        self._thread = threading.Thread(
            target=self._run, name=f"latency-proxy-{self.rtt * 1000:g}ms", daemon=True
        )
        self._thread.start()
        self._ready.wait(_CONNECT_TIMEOUT)
        if self._error is not None:
            raise RuntimeError(f"the latency proxy did not start: {self._error}") from self._error
        if self._port is None:
            raise RuntimeError("the latency proxy did not start in time")
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listener and every connection; idempotent."""
        loop, stopping, thread = self._loop, self._stopping, self._thread
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended by itself meanwhile
                loop.call_soon_threadsafe(stopping.set)
        if thread is not None:
            thread.join(timeout)

    # ------------------------------------------------------------------ private
    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as error:  # reported by start() when it happens while starting
            self._error = error
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        connections: set[asyncio.Task[None]] = set()

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            connections.add(task)
            try:
                await self._forward(reader, writer)
            except asyncio.CancelledError:
                pass  # stopping; re-raising would make asyncio log the handler as failed
            finally:
                connections.discard(task)

        server = await asyncio.start_server(accept, self.listen_host, self._listen_port)
        self._port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.lifetime)
            server.close()
            for task in list(connections):
                task.cancel()
            await asyncio.gather(*connections, return_exceptions=True)

    async def _forward(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        if self._open >= self.max_connections:
            self.stats.refused += 1
            client_writer.close()
            return
        self._open += 1
        self.stats.peak_open = max(self.stats.peak_open, self._open)
        try:
            try:
                target_reader, target_writer = await asyncio.wait_for(
                    asyncio.open_connection(self.target_host, self.target_port),
                    _CONNECT_TIMEOUT,
                )
            except (OSError, asyncio.TimeoutError):
                self.stats.refused += 1
                return
            self.stats.connections += 1
            for sock_writer in (client_writer, target_writer):
                sock = sock_writer.get_extra_info("socket")
                if sock is not None:  # small requests must not wait for Nagle
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                await asyncio.gather(
                    self._pipe(client_reader, target_writer, upstream=True),
                    self._pipe(target_reader, client_writer, upstream=False),
                )
            finally:
                target_writer.close()
        finally:
            self._open -= 1
            client_writer.close()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upstream: bool
    ) -> None:
        """Copy one direction, every chunk ``rtt / 2`` after it was read, in order."""
        loop = asyncio.get_running_loop()
        delay = self.rtt / 2
        in_transit: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(self.max_buffered)

        async def read() -> None:
            try:
                while data := await reader.read(_CHUNK):
                    await in_transit.put((loop.time() + delay, data))
            except (ConnectionError, OSError):
                pass
            await in_transit.put((loop.time() + delay, b""))  # end of stream, delayed too

        async def deliver() -> None:
            while True:
                due, data = await in_transit.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    with contextlib.suppress(OSError):
                        if writer.can_write_eof():
                            writer.write_eof()
                    return
                if upstream:
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
                try:
                    writer.write(data)
                    await writer.drain()
                except (ConnectionError, OSError):
                    return

        reading = asyncio.ensure_future(read())
        try:
            await deliver()
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="HOST:PORT to forward to (loopback)")
    parser.add_argument("--rtt", type=float, required=True, help="seconds added per round trip")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: a free one)")
    parser.add_argument("--lifetime", type=float, default=900.0, help="stop after N seconds")
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    proxy = LatencyProxy(
        host, int(port), rtt=args.rtt, listen_port=args.port, lifetime=args.lifetime
    )
    with proxy:
        print(f"forwarding {proxy.endpoint_url} -> {args.target} with {args.rtt * 1000:g} ms RTT")
        with contextlib.suppress(KeyboardInterrupt):
            deadline = time.monotonic() + args.lifetime
            while time.monotonic() < deadline and proxy._thread and proxy._thread.is_alive():
                time.sleep(0.5)
    print(f"stopped: {proxy.stats}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
