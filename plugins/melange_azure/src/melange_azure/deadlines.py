"""Hard deadlines for the SDK calls that the synchronous SDK cannot bound itself.

azure-servicebus's pure-Python AMQP transport reads the protocol and SASL
headers of a new connection without any timeout, and its synchronous client
"cannot interrupt a blocking call" (its own changelog): an endpoint that
accepts TCP connections and never answers (a hung broker, a black-holing
middlebox) holds such a call forever, whatever ``try_timeout`` says. Measured
on the stand-ins: a publish to a black-holed endpoint had not returned after
10 minutes.

Every call melange makes on a sender or a receiver therefore runs under a
:meth:`Deadlines.guard`. The SDK's own timeouts normally end the call first;
when one outlives its guard, a watchdog thread shuts the handler's socket
down, which makes the blocked read return and the SDK raise a connection
error, and sets the handler's retry backoff to nothing, so that the SDK's
retries (which would otherwise sleep seconds between attempts) end at once.
It keeps interrupting, every :data:`INTERVAL`, any connection the SDK opens
again within that call, until the call returns. The guard then reads
:attr:`Guard.expired`, so the caller can say "Service Bus did not answer
within N s" rather than repeat the SDK's words about a closed socket.

The socket and the retry settings are found through the SDK's private
attributes (handler, AMQP client, connection, transport, socket; the handler's
configuration) in one place, :func:`interrupt`. If an SDK version moves them,
the guard finds nothing and only the SDK's own timeouts remain; the plugin's
black-hole tests fail then.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("melange.azure.deadlines")

INTERVAL = 0.1
"""Seconds between two interruptions of an expired call (it may reconnect meanwhile)."""


def connection_socket(handle: Any) -> socket.socket | None:
    """The TCP socket of an SDK sender's or receiver's current connection, if it has one."""
    client = getattr(handle, "_handler", None)
    connection = getattr(client, "_connection", None)
    transport = getattr(connection, "_transport", None)
    sock = getattr(transport, "sock", None)
    return sock if isinstance(sock, socket.socket) else None


def interrupt(handle: Any) -> bool:
    """End ``handle``'s current call: no more backoff, its connection shut down.

    ``shutdown`` and never ``close``: the SDK's thread still owns the file
    descriptor, and closing it under that thread could hand the number to
    another socket. The base class's method, so a TLS socket is not told to
    drop its TLS state while the SDK reads through it.

    Returns:
        Whether there was a connection to shut down.
    """
    config = getattr(handle, "_config", None)
    if config is not None and hasattr(config, "retry_backoff_factor"):
        config.retry_backoff_factor = 0.0  # the SDK's next backoff sleeps 0 s
    sock = connection_socket(handle)
    if sock is None:
        return False
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:  # not connected (yet, or any more): nothing to interrupt
        return False
    return True


@dataclass(eq=False)
class Guard:
    """One guarded call.

    Attributes:
        handle: The SDK sender or receiver the call runs on.
        deadline: When (``time.monotonic()``) the call must have returned.
        seconds: The budget it was given, for messages.
        expired: Whether the deadline passed while the call ran.
    """

    handle: Any = field(repr=False)
    deadline: float
    seconds: float
    expired: bool = False


class Deadlines:
    """A watchdog thread that interrupts guarded calls outliving their deadline.

    The thread starts with the first guard and ends with :meth:`stop`.
    """

    def __init__(self) -> None:
        self._guards: set[Guard] = set()
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False

    @contextlib.contextmanager
    def guard(self, handle: Any, seconds: float) -> Iterator[Guard]:
        """Run the ``with`` block's SDK call on ``handle`` for at most about ``seconds``.

        Args:
            handle: The SDK sender or receiver the call uses.
            seconds: The call's budget; past it, its connection is shut down.

        Yields:
            The guard; :attr:`Guard.expired` says whether the watchdog stepped in.
        """
        guard = Guard(handle, time.monotonic() + max(seconds, 0.0), seconds)
        with self._condition:
            self._guards.add(guard)
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(
                    target=self._run, name="melange-azure-deadlines", daemon=True
                )
                self._thread.start()
            self._condition.notify()
        try:
            yield guard
        finally:
            with self._condition:
                self._guards.discard(guard)

    def stop(self) -> None:
        """End the watchdog; calls still guarded are no longer interrupted."""
        with self._condition:
            self._stopped = True
            self._guards.clear()
            self._condition.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._condition:
                if self._stopped:
                    return
                now = time.monotonic()
                due = [guard for guard in self._guards if guard.deadline <= now]
                if not due:
                    deadlines = [guard.deadline for guard in self._guards]
                    self._condition.wait(min(deadlines) - now if deadlines else None)
                    continue
                for guard in due:
                    if not guard.expired:
                        logger.debug(
                            "a Service Bus call outlived its %.3g s deadline: closing its "
                            "connection",
                            guard.seconds,
                        )
                    guard.expired = True
            for guard in due:
                interrupt(guard.handle)
            time.sleep(INTERVAL)
