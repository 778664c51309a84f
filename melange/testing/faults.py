"""A loopback TCP proxy that breaks the network on demand, for tests.

:class:`FaultProxy` listens on 127.0.0.1 and forwards every connection to a
server on the same machine, byte for byte, until a test asks for a fault:

- :meth:`~FaultProxy.reset`: connections are reset (TCP RST), open ones at
  once, new ones as soon as they are accepted;
- :meth:`~FaultProxy.cut`: requests still reach the server, but each
  connection ends (FIN) after ``after_bytes`` bytes of its response: the server
  did the work, the client never hears the whole answer;
- :meth:`~FaultProxy.stall`: a black hole; connections stay open, nothing is
  forwarded either way (what was sent is held, and flows again on heal, as TCP
  retransmission would deliver it);
- :meth:`~FaultProxy.refuse`: nothing listens; new connections are refused
  (``ECONNREFUSED``), open ones reset;
- :meth:`~FaultProxy.heal`: everything forwards again.

A fault lasts until :meth:`~FaultProxy.heal`, or hits only the next ``times``
requests; it can wait for the start of a later request (``after_requests``)
or for a number of request bytes (``after_request_bytes``), so a test can let
the first call of a batch through and break the second. A request starts when
a client sends after its connection received a response (or sends for the
first time): exact for HTTP/1.1, approximate for multiplexed protocols.
:meth:`~FaultProxy.chaos` alternates random faults and healthy periods for a
bounded time. Counters are in :attr:`~FaultProxy.stats`::

    with FaultProxy("127.0.0.1", server_port) as proxy:
        backend = MyBackend(endpoint=f"http://{proxy.address}", ...)
        proxy.cut(after_bytes=0)        # the server stores, the client gets no answer
        ...
        proxy.heal()

It is bounded on purpose: loopback addresses only (listening and target), at
most ``max_connections`` open connections (more are reset at once), about
``max_buffer`` bytes held per connection and direction (then reading waits),
and it stops by itself ``lifetime`` seconds after :meth:`~FaultProxy.start`.
It runs an asyncio loop on a daemon thread; every fault method returns once
the fault is in effect, and replaces the fault in effect before it (as if
:meth:`~FaultProxy.heal` came first).

:class:`FaultTarget` tells the fault conformance tests
(:class:`melange.testing.conformance.FaultConformance`) how to reach a
backend's endpoint through the proxy. POSIX only (Linux, macOS), like the rest
of :mod:`melange.testing`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import ipaddress
import random
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from melange.exceptions import ConfigurationError, MelangeError, require_number, require_str
from melange.testing.server_process import StartStop

if TYPE_CHECKING:
    from melange.backends.base import MessagingBackend

__all__ = [
    "FAULT_KINDS",
    "FaultKind",
    "FaultProxy",
    "FaultProxyError",
    "FaultStats",
    "FaultTarget",
    "require_loopback",
]

FaultKind = Literal["reset", "cut", "stall", "refuse"]
"""What :meth:`FaultProxy.chaos` can choose from (each is a method of the proxy)."""

FAULT_KINDS: tuple[FaultKind, ...] = ("reset", "cut", "stall", "refuse")

COMMAND_TIMEOUT = 5.0
"""Seconds a fault method waits for the proxy's loop to apply it."""

_CHUNK = 65536
_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST instead of FIN
_CUT_SIZES = (0, 1, 64, 512)
"""Response bytes :meth:`FaultProxy.chaos` lets through before a cut: none, a byte, some
headers, a bit of body."""


class FaultProxyError(MelangeError, RuntimeError):
    """The fault proxy cannot start, or was asked for a fault while not running."""


def require_loopback(host: str, what: str) -> None:
    """Refuse anything but a loopback address: test proxies never reach the network.

    Args:
        host: A host name or address; every address it resolves to must be loopback.
        what: The host's role, for the message (``"target host"``).

    Raises:
        ConfigurationError: ``host`` does not resolve, or resolves to an address
            that is not loopback.
    """
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise ConfigurationError(f"{what} {host!r} does not resolve: {error}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_loopback:
            raise ConfigurationError(
                f"{what} {host!r} is {address}, not a loopback address: melange's test "
                "proxies only forward between addresses of this machine (use 127.0.0.1, ::1 "
                "or localhost)"
            )


@dataclass(frozen=True)
class FaultTarget:
    """How the fault conformance tests reach a backend's endpoint through a :class:`FaultProxy`.

    Attributes:
        address: ``(host, port)`` of the real endpoint, on this machine.
        backend: Given ``"host:port"`` (the proxy's, or the real endpoint's),
            returns a NEW backend that reaches the endpoint there, with short
            timeouts (a publish gives up within seconds, a receive within its
            long poll plus a margin).
        restart: Restarts the endpoint's process on the same address (its state
            may be lost), returning once it serves again; ``None`` skips the
            restart test.
        call_limit: Seconds within which any call of such a backend returns or
            raises while the endpoint is black-holed (its timeouts times its
            attempts, plus backoff).
        recovery_limit: Seconds within which a dispatcher on such a backend
            handles messages again once the network heals.
    """

    address: tuple[str, int]
    backend: Callable[[str], MessagingBackend]
    restart: Callable[[], None] | None = None
    call_limit: float = 30.0
    recovery_limit: float = 10.0

    @property
    def endpoint(self) -> str:
        """The real endpoint as ``"host:port"`` (a backend made for it avoids the proxy)."""
        return _host_port(*self.address)


@dataclass
class FaultStats:
    """What went through a :class:`FaultProxy` (a copy; read it any time).

    Attributes:
        connections: Client connections accepted.
        rejected: Connections reset at once because ``max_connections`` were open.
        upstream_failures: Connections reset because the target did not accept one.
        open: Client connections open now.
        peak_open: Most client connections open at the same time.
        requests: Requests started (a client sending after a response, or first).
        bytes_up: Bytes forwarded from clients to the target.
        bytes_down: Bytes forwarded from the target to clients.
        resets: Connections reset by :meth:`FaultProxy.reset` or :meth:`FaultProxy.refuse`.
        cuts: Connections cut mid-response by :meth:`FaultProxy.cut`.
        stalls: Connections held by :meth:`FaultProxy.stall`.
        applied: Faults that took effect, by kind.
    """

    connections: int = 0
    rejected: int = 0
    upstream_failures: int = 0
    open: int = 0
    peak_open: int = 0
    requests: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    resets: int = 0
    cuts: int = 0
    stalls: int = 0
    applied: dict[str, int] = field(default_factory=dict)


@dataclass
class _Fault:
    kind: FaultKind
    cut_after: int = 0
    times: int | None = None  # requests still to hit; None: every connection until heal()


@dataclass
class _Trigger:
    fault: _Fault
    requests: int | None  # requests still to pass before the fault applies
    request_bytes: int | None  # request bytes still to pass before the fault applies


class FaultProxy(StartStop):
    """Forward ``127.0.0.1:<port>`` to ``target_host:target_port``, breaking it on demand.

    Args:
        target_host: Where to forward; a loopback address (or ``localhost``).
        target_port: The target's port.
        listen_host: The loopback address to listen on.
        listen_port: The port to listen on; 0 picks a free one (see :attr:`port`).
        max_connections: Open client connections at most; more are reset at once.
        max_buffer: Bytes held per connection and direction before the proxy stops
            reading that side (while the target connection opens, during a stall,
            or while the other side reads slowly); what the sockets hold comes on top.
        lifetime: Seconds after :meth:`start` at which the proxy stops by itself.
        connect_timeout: Seconds to wait for the target to accept a connection.

    Raises:
        ConfigurationError: A host is not a loopback address, or a bound is not positive.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        max_connections: int = 64,
        max_buffer: int = 1 << 20,
        lifetime: float = 300.0,
        connect_timeout: float = 5.0,
    ) -> None:
        require_loopback(require_str("target_host", target_host), "target host")
        require_loopback(require_str("listen_host", listen_host), "listen host")
        require_number("lifetime", lifetime)
        require_number("connect_timeout", connect_timeout)
        for name, value in (
            ("target_port", target_port),
            ("listen_port", listen_port),
            ("max_connections", max_connections),
            ("max_buffer", max_buffer),
        ):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigurationError(f"{name} must be a whole number, got {value!r}")
        if not 0 < target_port < 65536 or not 0 <= listen_port < 65536:
            raise ConfigurationError(
                f"ports must be between 1 and 65535 (listen_port 0 picks one), got "
                f"target_port={target_port}, listen_port={listen_port}"
            )
        if max_connections < 1 or max_buffer < 1 or not lifetime > 0 or not connect_timeout > 0:
            raise ConfigurationError(
                "need max_connections >= 1, max_buffer >= 1, lifetime > 0 and "
                f"connect_timeout > 0, got {max_connections}, {max_buffer}, {lifetime!r} and "
                f"{connect_timeout!r}"
            )
        self.target_host = target_host
        self.target_port = target_port
        self.max_connections = max_connections
        self.max_buffer = max_buffer
        self.lifetime = lifetime
        self.connect_timeout = connect_timeout
        self._listen_host = listen_host
        self._listen_port = listen_port
        self._family = socket.AF_INET6 if ":" in listen_host else socket.AF_INET
        self._port: int | None = None
        self._placeholder: socket.socket | None = None  # holds the port while refusing
        self._server: asyncio.AbstractServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._links: set[_Link] = set()
        self._stats = FaultStats()
        self._stats_lock = threading.Lock()
        self._fault: _Fault | None = None
        self._trigger: _Trigger | None = None
        self._chaos: asyncio.Task[None] | None = None
        self._timeline: list[tuple[float, str]] = []
        self._started_at = 0.0
        self._state: Literal["new", "running", "stopped"] = "new"
        self._stop_reason = ""

    def __repr__(self) -> str:
        where = f"{self.address} -> " if self._port is not None else ""
        return (
            f"<{type(self).__name__} {where}{_host_port(self.target_host, self.target_port)} "
            f"{self._state}{' ' + self.fault if self.fault else ''}>"
        )

    # ------------------------------------------------------------- addresses
    @property
    def host(self) -> str:
        """The address the proxy listens on."""
        return self._listen_host

    @property
    def port(self) -> int:
        """The port the proxy listens on (known once started)."""
        if self._port is None:
            raise FaultProxyError("the fault proxy has not been started; call start() first")
        return self._port

    @property
    def address(self) -> str:
        """``"host:port"`` of the proxy, e.g. ``"127.0.0.1:40123"`` (``[::1]:port`` for IPv6)."""
        return _host_port(self.host, self.port)

    @property
    def running(self) -> bool:
        """Whether the proxy forwards (it has started and neither stopped nor outlived itself)."""
        return self._state == "running"

    @property
    def fault(self) -> str:
        """The fault in effect (``"reset"``, ``"cut"``, ...), ``"armed"`` or ``""`` when healthy."""
        if self._fault is not None:
            return self._fault.kind
        return "armed" if self._trigger is not None else ""

    @property
    def stats(self) -> FaultStats:
        """A copy of the counters."""
        with self._stats_lock:
            copy = dataclasses.replace(self._stats, applied=dict(self._stats.applied))
        copy.open = len(self._links)
        return copy

    @property
    def timeline(self) -> list[tuple[float, str]]:
        """``(seconds since start, event)`` for every fault applied and every heal, in order."""
        with self._stats_lock:
            return list(self._timeline)

    # ------------------------------------------------------------- lifecycle
    def start(self) -> FaultProxy:
        """Start listening (on a daemon thread); return ``self`` once connections are accepted.

        Raises:
            FaultProxyError: The port cannot be bound, or the proxy was stopped
                (create a new one).
        """
        if self._state == "running":
            return self
        if self._state == "stopped":
            raise FaultProxyError("this fault proxy was stopped; create a new FaultProxy")
        try:
            listener = self._bind(self._listen_port)
        except OSError as error:
            raise FaultProxyError(
                f"the fault proxy cannot listen on {_host_port(self.host, self._listen_port)}: "
                f"{error}"
            ) from error
        self._port = listener.getsockname()[1]
        if hasattr(socket, "SO_REUSEPORT"):
            # A bound, non-listening socket keeps the port while refuse() closes the listener.
            with contextlib.suppress(OSError):
                self._placeholder = self._bind(self._port)
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name=f"fault-proxy-{self._port}", daemon=True
        )
        self._thread.start()
        self._started_at = time.monotonic()
        self._state = "running"
        try:
            self._run(self._listen(listener))
        except BaseException:
            self.stop()
            raise
        loop.call_soon_threadsafe(self._arm_lifetime)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listener and reset every connection; idempotent.

        Args:
            timeout: Seconds to wait for the proxy's thread to end.
        """
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            with contextlib.suppress(RuntimeError, concurrent.futures.TimeoutError):
                asyncio.run_coroutine_threadsafe(self._shutdown("it was stopped"), loop).result(
                    timeout
                )
                loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
        if loop is not None and not loop.is_closed() and not (thread and thread.is_alive()):
            loop.close()
        if self._placeholder is not None:
            self._placeholder.close()
            self._placeholder = None
        self._state = "stopped"

    # ---------------------------------------------------------------- faults
    def reset(
        self, *, after_requests: int = 0, after_request_bytes: int = 0, times: int | None = None
    ) -> None:
        """Reset connections (TCP RST) until :meth:`heal`: open ones now, new ones when accepted.

        Args:
            after_requests: Let this many more requests through first; the fault
                applies from the start of the next one.
            after_request_bytes: Let this many more request bytes through first.
            times: Reset only the connections of the next ``times`` requests, then
                forward normally again (the proxy heals by itself).
        """
        self._apply(_Fault("reset", times=times), after_requests, after_request_bytes)

    def cut(
        self,
        after_bytes: int = 0,
        *,
        after_requests: int = 0,
        after_request_bytes: int = 0,
        times: int | None = None,
    ) -> None:
        """Forward requests, but end each connection after ``after_bytes`` bytes of response.

        The target receives and handles every request; the client gets at most
        ``after_bytes`` bytes of what it answers (counted per connection from
        now on), then the connection ends. With ``after_bytes=0`` the client
        hears nothing at all.

        Args:
            after_bytes: Response bytes each connection still gets before the cut.
            after_requests: Let this many more requests through first.
            after_request_bytes: Let this many more request bytes through first.
            times: Cut only the responses to the next ``times`` requests, then
                forward normally again.
        """
        _check_count("after_bytes", after_bytes)
        self._apply(
            _Fault("cut", cut_after=after_bytes, times=times), after_requests, after_request_bytes
        )

    def stall(
        self, *, after_requests: int = 0, after_request_bytes: int = 0, times: int | None = None
    ) -> None:
        """Black-hole connections until :meth:`heal`: they stay open, nothing is forwarded.

        What clients and the target send meanwhile is held (up to
        ``max_buffer`` bytes, then reading waits) and forwarded on heal.

        Args:
            after_requests: Let this many more requests through first.
            after_request_bytes: Let this many more request bytes through first
                (a request can be stalled half-sent).
            times: Stall only the connections of the next ``times`` requests (they
                stay stalled until :meth:`heal`); later requests pass.
        """
        self._apply(_Fault("stall", times=times), after_requests, after_request_bytes)

    def refuse(self, *, after_requests: int = 0, after_request_bytes: int = 0) -> None:
        """Stop listening until :meth:`heal`: new connections are refused, open ones reset.

        The port stays reserved meanwhile (a bound socket that does not listen),
        so heal listens on the same port again. Where ``SO_REUSEPORT`` is
        missing, the proxy keeps listening and resets new connections at once.

        Args:
            after_requests: Let this many more requests through first.
            after_request_bytes: Let this many more request bytes through first.
        """
        self._apply(_Fault("refuse"), after_requests, after_request_bytes)

    def heal(self) -> None:
        """Forward normally again: end the fault, a pending trigger and a running chaos schedule.

        Stalled connections resume with what they held; the listener listens
        again after :meth:`refuse`. Connections already reset or cut stay closed.
        """
        self._run(self._heal(stop_chaos=True))

    def chaos(
        self,
        duration: float,
        *,
        kinds: Sequence[FaultKind] = FAULT_KINDS,
        fault_seconds: tuple[float, float] = (0.1, 0.5),
        healthy_seconds: tuple[float, float] = (0.2, 0.8),
        seed: int | None = None,
    ) -> None:
        """Alternate healthy periods and random faults for ``duration`` seconds, then heal.

        Returns at once; the schedule runs on the proxy's thread. Each period
        lasts a random time within its bounds; each fault is one of ``kinds``
        (a cut lets 0, 1, 64 or 512 response bytes through). :meth:`heal` ends
        the schedule early; :attr:`timeline` records it.

        Args:
            duration: Seconds the schedule runs, healthy periods included.
            kinds: The faults to choose from.
            fault_seconds: Bounds of one fault's duration, in seconds.
            healthy_seconds: Bounds of one healthy period, in seconds.
            seed: Seed of the random choices, for a reproducible schedule.

        Raises:
            ConfigurationError: A duration or bound is not positive, or a kind is unknown.
        """
        unknown = [kind for kind in kinds if kind not in FAULT_KINDS]
        if unknown or not kinds:
            raise ConfigurationError(
                f"kinds must name faults among {list(FAULT_KINDS)}, got {list(kinds)!r}"
            )
        for name, (low, high) in (
            ("fault_seconds", fault_seconds),
            ("healthy_seconds", healthy_seconds),
        ):
            if not 0 < low <= high:
                raise ConfigurationError(f"{name} must be (low, high) with 0 < low <= high")
        if not duration > 0:
            raise ConfigurationError(f"duration must be positive, got {duration!r}")
        rng = random.Random(seed)
        self._run(self._start_chaos(duration, tuple(kinds), fault_seconds, healthy_seconds, rng))

    @property
    def chaos_running(self) -> bool:
        """Whether a :meth:`chaos` schedule is still running."""
        chaos = self._chaos
        return chaos is not None and not chaos.done()

    def wait_chaos(self, timeout: float | None = None) -> bool:
        """Wait until a :meth:`chaos` schedule ends; return whether it did within ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.chaos_running:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    # ------------------------------------------------------- loop-side logic
    def _run(self, coroutine: Awaitable[None]) -> None:
        """Run ``coroutine`` on the proxy's loop and wait for it (from any other thread)."""
        loop = self._loop
        if self._state != "running" or loop is None or loop.is_closed():
            if asyncio.iscoroutine(coroutine):
                coroutine.close()
            reason = self._stop_reason or "it has not been started; call start() first"
            raise FaultProxyError(f"the fault proxy is not running: {reason}")
        if threading.current_thread() is self._thread:
            raise FaultProxyError("fault methods are called from test code, not the proxy's loop")

        async def wrapped() -> None:
            await coroutine

        future = asyncio.run_coroutine_threadsafe(wrapped(), loop)
        try:
            future.result(COMMAND_TIMEOUT)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise FaultProxyError(
                f"the fault proxy's loop did not answer within {COMMAND_TIMEOUT:g} s"
            ) from None

    def _apply(self, fault: _Fault, after_requests: int, after_request_bytes: int) -> None:
        _check_count("after_requests", after_requests)
        _check_count("after_request_bytes", after_request_bytes)
        if fault.times is not None:
            if fault.kind == "refuse":
                raise ConfigurationError("refuse() applies to connections, not to requests")
            if isinstance(fault.times, bool) or not isinstance(fault.times, int) or fault.times < 1:
                raise ConfigurationError(
                    f"times must be a whole number of at least 1 (or None), got {fault.times!r}"
                )
        if after_requests and after_request_bytes:
            raise ConfigurationError("give after_requests or after_request_bytes, not both")

        async def apply() -> None:
            self._stop_chaos()
            if after_requests or after_request_bytes:
                await self._heal(stop_chaos=False)
                self._trigger = _Trigger(fault, after_requests or None, after_request_bytes or None)
                self._event(f"armed {fault.kind}")
            else:
                await self._heal(stop_chaos=False)
                self._activate(fault)

        self._run(apply())

    def _activate(self, fault: _Fault) -> None:
        """Put ``fault`` in effect (on the loop); persistent faults hit every open connection."""
        self._trigger = None
        self._fault = fault
        with self._stats_lock:
            self._stats.applied[fault.kind] = self._stats.applied.get(fault.kind, 0) + 1
        self._event(fault.kind if fault.kind != "cut" else f"cut after {fault.cut_after} B")
        if fault.times is not None:
            return  # applied request by request
        if fault.kind == "refuse":
            self._close_listener()
        for link in list(self._links):
            self._hit(link, fault)

    def _hit(self, link: _Link, fault: _Fault) -> None:
        """Apply ``fault`` to one connection."""
        # Counted first: a client may look at the stats as soon as it sees the fault.
        if fault.kind in ("reset", "refuse"):
            if not link.closed:
                self._count("resets")
                link.reset()
        elif fault.kind == "stall":
            if not link.closed and not link.stalled:
                self._count("stalls")
                link.stall()
        else:
            link.cut_budget = fault.cut_after
            link.flush()  # a response in flight is cut as soon as its budget is spent

    async def _heal(self, *, stop_chaos: bool) -> None:
        if stop_chaos:
            self._stop_chaos()
        was_faulty = self._fault is not None or self._trigger is not None
        self._fault = None
        self._trigger = None
        if self._server is None and self._state == "running" and self._loop is not None:
            try:
                await self._listen(self._bind(self.port))
            except OSError as error:  # another process took the port meanwhile
                raise FaultProxyError(
                    f"the fault proxy cannot listen on {self.address} again: {error}"
                ) from error
        for link in list(self._links):
            link.heal()
        if was_faulty:
            self._event("heal")

    def _stop_chaos(self) -> None:
        chaos, self._chaos = self._chaos, None
        if chaos is not None and not chaos.done() and chaos is not asyncio.current_task():
            chaos.cancel()

    async def _start_chaos(
        self,
        duration: float,
        kinds: tuple[FaultKind, ...],
        fault_seconds: tuple[float, float],
        healthy_seconds: tuple[float, float],
        rng: random.Random,
    ) -> None:
        self._stop_chaos()
        await self._heal(stop_chaos=False)
        self._chaos = asyncio.ensure_future(
            self._chaos_schedule(duration, kinds, fault_seconds, healthy_seconds, rng)
        )

    async def _chaos_schedule(
        self,
        duration: float,
        kinds: tuple[FaultKind, ...],
        fault_seconds: tuple[float, float],
        healthy_seconds: tuple[float, float],
        rng: random.Random,
    ) -> None:
        # Cancelled by heal(), a new fault or stop(): whoever cancels it sets the state.
        now = asyncio.get_running_loop().time
        end = now() + duration
        while True:
            await asyncio.sleep(max(0.0, min(rng.uniform(*healthy_seconds), end - now())))
            if now() >= end:
                break
            kind = rng.choice(kinds)
            self._activate(_Fault(kind, cut_after=rng.choice(_CUT_SIZES)))
            await asyncio.sleep(max(0.0, min(rng.uniform(*fault_seconds), end - now())))
            await self._heal(stop_chaos=False)
        self._event("chaos done")

    def _event(self, what: str) -> None:
        with self._stats_lock:
            self._timeline.append((round(time.monotonic() - self._started_at, 3), what))

    def _count(self, counter: str, amount: int = 1) -> None:
        with self._stats_lock:
            setattr(self._stats, counter, getattr(self._stats, counter) + amount)

    # -------------------------------------------------------------- listener
    def _bind(self, port: int) -> socket.socket:
        sock = socket.socket(self._family, socket.SOCK_STREAM)
        try:
            if hasattr(socket, "SO_REUSEPORT"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.host, port))
        except BaseException:
            sock.close()
            raise
        return sock

    async def _listen(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        listener.listen(self.max_connections)
        listener.setblocking(False)
        self._server = await loop.create_server(lambda: _Side(_Link(self), False), sock=listener)

    def _close_listener(self) -> None:
        if self._placeholder is None:
            return  # nothing keeps the port: listen on and reset new connections instead
        server, self._server = self._server, None
        if server is not None:
            server.close()

    def _arm_lifetime(self) -> None:
        loop = self._loop
        if loop is None:
            return
        reason = f"it stopped by itself at the end of its lifetime ({self.lifetime:g} s)"

        def expire() -> None:
            task = asyncio.ensure_future(self._shutdown(reason))
            task.add_done_callback(lambda _: loop.stop())  # the thread ends with the loop

        loop.call_later(self.lifetime, expire)

    async def _shutdown(self, reason: str) -> None:
        if self._state == "stopped":
            return
        self._state = "stopped"
        self._stop_reason = reason
        chaos, self._chaos = self._chaos, None
        if chaos is not None and not chaos.done():
            chaos.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await chaos
        self._fault = self._trigger = None
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for link in list(self._links):
            link.reset()
        self._event("stop")
        for _ in range(3):  # let the transports' close callbacks run before the loop stops
            await asyncio.sleep(0)

    # ---------------------------------------------------------- connections
    def _accepted(self, link: _Link) -> None:
        """A client connected (on the loop): admit it, or reset it at once."""
        if self._state != "running":
            link.reset()
            return
        if len(self._links) >= self.max_connections:
            self._count("rejected")
            link.reset()
            return
        self._links.add(link)
        with self._stats_lock:
            self._stats.connections += 1
            self._stats.peak_open = max(self._stats.peak_open, len(self._links))
        fault = self._fault
        if fault is not None and fault.times is None:
            self._hit(link, fault)
        if not link.closed and not link.stalled:
            link.connect()

    def _closed(self, link: _Link) -> None:
        self._links.discard(link)

    def _client_data(self, link: _Link, data: bytes) -> None:
        """Bytes from a client (on the loop): count requests, fire triggers, forward."""
        while data and not link.closed:
            if not link.in_request:
                link.in_request = True
                self._count("requests")
                self._request_started(link)
                if link.closed:
                    return
            trigger = self._trigger
            if trigger is not None and trigger.request_bytes is not None:
                if len(data) >= trigger.request_bytes:
                    head, data = data[: trigger.request_bytes], data[trigger.request_bytes :]
                    link.send_up(head)
                    self._activate(trigger.fault)
                    fault = trigger.fault
                    if fault.times is not None:  # the request it fired in is the first hit
                        self._hit_request(link, fault)
                    continue
                trigger.request_bytes -= len(data)
            link.send_up(data)
            return

    def _request_started(self, link: _Link) -> None:
        trigger = self._trigger
        if trigger is not None and trigger.requests is not None:
            if trigger.requests == 0:
                self._activate(trigger.fault)
            else:
                trigger.requests -= 1
        fault = self._fault
        if fault is not None and fault.times is not None:
            self._hit_request(link, fault)

    def _hit_request(self, link: _Link, fault: _Fault) -> None:
        """Apply a fault counted in requests to the request starting on ``link``."""
        self._hit(link, fault)
        assert fault.times is not None
        fault.times -= 1
        if fault.times <= 0 and self._fault is fault:
            self._fault = None
            self._event(f"{fault.kind} done")

    def _upstream_failed(self, link: _Link) -> None:
        self._count("upstream_failures")
        link.reset()


class _Link:
    """One proxied connection: the client's, the target's, and what is held between them."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.client: asyncio.Transport | None = None
        self.target: asyncio.Transport | None = None
        self.to_target = bytearray()
        self.to_client = bytearray()
        self.client_eof = False
        self.target_eof = False
        self.eof_sent_up = False
        self.eof_sent_down = False
        self.connecting = False
        self.connect_task: asyncio.Future[None] | None = None
        self.stalled = False
        self.passable_up = 0  # bytes held before a stall began, still to forward
        self.passable_down = 0
        self.closed = False
        self.in_request = False  # the client spoke last: more bytes continue its request
        self.cut_budget: int | None = None
        self.client_full = False  # the client's write buffer is over its high-water mark
        self.target_full = False
        self.reading_client = True
        self.reading_target = True

    # -------------------------------------------------------------- events
    def attached(self, side: _Side) -> None:
        transport = side.transport
        assert transport is not None
        _nodelay(transport)
        if side.upstream:
            self.target = transport
            self.connecting = False
            transport.set_write_buffer_limits(high=self.proxy.max_buffer)
            if self.closed:
                transport.abort()
                return
            self.flush()
        else:
            self.client = transport
            transport.set_write_buffer_limits(high=self.proxy.max_buffer)
            self.proxy._accepted(self)

    def connect(self) -> None:
        if self.target is not None or self.connecting or self.closed:
            return
        self.connecting = True
        self.connect_task = asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        proxy = self.proxy
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Side(self, True), proxy.target_host, proxy.target_port
                ),
                proxy.connect_timeout,
            )
        except (OSError, asyncio.TimeoutError):
            self.connecting = False
            if not self.closed:
                proxy._upstream_failed(self)

    def received(self, upstream: bool, data: bytes) -> None:
        if self.closed:
            return
        if upstream:
            self.in_request = False  # the target answered: the client's next bytes start a request
            self.to_client += data
            self.flush()
        else:
            self.proxy._client_data(self, data)

    def eof(self, upstream: bool) -> None:
        if upstream:
            self.target_eof = True
        else:
            self.client_eof = True
        self.flush()

    def lost(self, upstream: bool) -> None:
        if self.closed:
            return
        other = self.client if upstream else self.target
        said_eof = self.target_eof if upstream else self.client_eof
        if said_eof and other is not None:
            # An orderly end: pass on what is held, then close the other side too.
            self.flush()
            self._close(graceful=True)
        else:
            self.reset()

    def backpressure(self, upstream: bool, full: bool) -> None:
        if upstream:
            self.target_full = full
        else:
            self.client_full = full
        self._update_reading()

    # ----------------------------------------------------------- forwarding
    def send_up(self, data: bytes) -> None:
        self.to_target += data
        self.flush()

    def flush(self) -> None:
        """Forward what is held, as far as the state allows; keep reading in step."""
        if self.closed:
            return
        self._flush_up()
        if not self._flush_down():
            return  # cut
        if self.eof_sent_up and self.eof_sent_down:
            self._close(graceful=True)
            return
        self._update_reading()

    def _flush_up(self) -> None:
        target = self.target
        if target is None:
            return
        # While stalled, only what the client sent before the stall still goes through.
        size = self.passable_up if self.stalled else len(self.to_target)
        if size:
            data = bytes(self.to_target[:size])
            del self.to_target[:size]
            if self.stalled:
                self.passable_up -= size
            self.proxy._count("bytes_up", len(data))  # first: the client may look once it is there
            target.write(data)
        if self.client_eof and not self.eof_sent_up and not self.stalled and not self.to_target:
            self.eof_sent_up = True
            _write_eof(target)

    def _flush_down(self) -> bool:
        """Forward the response bytes held; return ``False`` when that cut the connection."""
        client = self.client
        if client is None:
            return True
        size = self.passable_down if self.stalled else len(self.to_client)
        if size:
            data = bytes(self.to_client[:size])
            del self.to_client[:size]
            if self.stalled:
                self.passable_down -= size
            budget = self.cut_budget
            if budget is not None and len(data) >= budget:
                self._cut(data[:budget])
                return False
            if budget is not None:
                self.cut_budget = budget - len(data)
            self.proxy._count("bytes_down", len(data))
            client.write(data)
        if self.target_eof and not self.eof_sent_down and not self.stalled and not self.to_client:
            self.eof_sent_down = True
            _write_eof(client)
        return True

    def _update_reading(self) -> None:
        if self.closed:
            return
        limit = self.proxy.max_buffer
        want_client = not self.stalled and not self.target_full and len(self.to_target) < limit
        want_target = not self.stalled and not self.client_full and len(self.to_client) < limit
        if self.client is not None and want_client != self.reading_client:
            self.reading_client = want_client
            with contextlib.suppress(RuntimeError):
                (self.client.resume_reading if want_client else self.client.pause_reading)()
        if self.target is not None and want_target != self.reading_target:
            self.reading_target = want_target
            with contextlib.suppress(RuntimeError):
                (self.target.resume_reading if want_target else self.target.pause_reading)()

    # --------------------------------------------------------------- faults
    def reset(self) -> bool:
        """Reset both sides (RST); return whether the connection was still open."""
        if self.closed:
            return False
        self.closed = True
        if self.connect_task is not None and not self.connect_task.done():
            self.connect_task.cancel()
        for transport in (self.client, self.target):
            if transport is not None:
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST)
                transport.abort()
        self.proxy._closed(self)
        return True

    def stall(self) -> bool:
        """Stop forwarding both ways; return whether it was not stalled yet."""
        if self.closed or self.stalled:
            return False
        self.stalled = True
        # What arrived before the stall was on its way already: it still goes through.
        self.passable_up, self.passable_down = len(self.to_target), len(self.to_client)
        self._update_reading()
        return True

    def heal(self) -> None:
        self.cut_budget = None
        if self.stalled:
            self.stalled = False
            self.passable_up = self.passable_down = 0
            self.connect()  # accepted during the stall: the target connection opens now
            self.flush()

    def _cut(self, head: bytes) -> None:
        """Send ``head``, the last bytes of the response the client gets, then end (FIN)."""
        client = self.client
        assert client is not None
        self.proxy._count("cuts")
        if head:
            self.proxy._count("bytes_down", len(head))
            client.write(head)
        self._close(graceful=True)

    def _close(self, *, graceful: bool) -> None:
        if self.closed:
            return
        self.closed = True
        if self.connect_task is not None and not self.connect_task.done():
            self.connect_task.cancel()
        if self.client is not None:
            self.client.close()  # flushes what was written, then FIN
        if self.target is not None:
            if graceful:
                self.target.close()
            else:
                self.target.abort()
        self.proxy._closed(self)


class _Side(asyncio.Protocol):
    """The asyncio end of one side of a :class:`_Link`."""

    def __init__(self, link: _Link, upstream: bool) -> None:
        self.link = link
        self.upstream = upstream
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.link.attached(self)

    def data_received(self, data: bytes) -> None:
        self.link.received(self.upstream, data)

    def eof_received(self) -> bool:
        self.link.eof(self.upstream)
        return True  # keep the transport open: the other direction may still carry data

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.lost(self.upstream)

    def pause_writing(self) -> None:
        self.link.backpressure(self.upstream, True)

    def resume_writing(self) -> None:
        self.link.backpressure(self.upstream, False)


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:  # small requests must not wait for Nagle
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _write_eof(transport: asyncio.Transport) -> None:
    with contextlib.suppress(OSError, RuntimeError):  # closing already
        if transport.can_write_eof():
            transport.write_eof()


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(f"{name} must be a whole number of at least 0, got {value!r}")
