"""The least a Python client can spend on a confirmed publish: a bare socket and AMQP frames.

``BareConfirmPublisher`` speaks AMQP 0-9-1 over a blocking socket with no I/O loop, no
callbacks and no threads: pika's frame classes marshal and decode the frames, and the
rest is ``sendall`` and ``recv``. It opens one channel in confirm mode and publishes one
persistent message at a time, returning once the broker's ``basic.ack`` arrived. What a
publish costs here is the broker's answer plus the least client work there is, so it
bounds from below what any client (pika, kombu, melange) can do for the same call.

For benchmarks only: it handles none of AMQP's errors beyond raising, no heartbeats
(it asks for none), and no frame larger than the broker's frame size.
"""

from __future__ import annotations

import socket
import uuid
from typing import Any

from pika import frame, spec

__all__ = ["BareConfirmPublisher"]


class BareConfirmPublisher:
    """A blocking AMQP connection with one channel in confirm mode, for one message at a time.

    Args:
        host: The broker's host.
        port: Its AMQP port.
        user: The user, with ``password``, for PLAIN authentication.
        password: The user's password.
    """

    def __init__(self, host: str, port: int, user: str = "guest", password: str = "guest") -> None:
        self._sock = socket.create_connection((host, port))
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""
        self._sock.sendall(frame.ProtocolHeader().marshal())
        self._expect(spec.Connection.Start)
        credentials = f"\0{user}\0{password}"
        self._send(0, spec.Connection.StartOk({}, "PLAIN", credentials, "en_US"))
        tune = self._expect(spec.Connection.Tune)
        self._send(0, spec.Connection.TuneOk(tune.channel_max, tune.frame_max, 0))
        self._send(0, spec.Connection.Open("/"))
        self._expect(spec.Connection.OpenOk)
        self._send(1, spec.Channel.Open())
        self._expect(spec.Channel.OpenOk)
        self._send(1, spec.Confirm.Select())
        self._expect(spec.Confirm.SelectOk)

    def publish(self, routing_key: str, body: bytes) -> None:
        """Publish ``body`` to the default exchange, persistent and mandatory; wait for its ack."""
        properties = spec.BasicProperties(delivery_mode=2, message_id=uuid.uuid4().hex)
        publish = spec.Basic.Publish(exchange="", routing_key=routing_key, mandatory=True)
        frames = [
            frame.Method(1, publish).marshal(),
            frame.Header(1, len(body), properties).marshal(),
            frame.Body(1, body).marshal(),
        ]
        self._sock.sendall(b"".join(frames))
        answer = self._expect(spec.Basic.Ack, spec.Basic.Nack, spec.Basic.Return)
        if not isinstance(answer, spec.Basic.Ack):
            raise RuntimeError(f"the broker did not store the message: {answer}")

    def close(self) -> None:
        """Close the socket (the broker logs an unclean close; nothing is in flight)."""
        self._sock.close()

    def _send(self, channel: int, method: Any) -> None:
        self._sock.sendall(frame.Method(channel, method).marshal())

    def _expect(self, *methods: type) -> Any:
        """Read frames until a method frame of one of ``methods``; return its method."""
        while True:
            consumed, decoded = frame.decode_frame(self._buffer)
            if decoded is None:
                chunk = self._sock.recv(65536)
                if not chunk:
                    raise ConnectionError("the broker closed the connection")
                self._buffer += chunk
                continue
            self._buffer = self._buffer[consumed:]
            if isinstance(decoded, frame.Method):
                if isinstance(decoded.method, methods):
                    return decoded.method
                if isinstance(decoded.method, spec.Connection.Close | spec.Channel.Close):
                    raise ConnectionError(f"the broker closed: {decoded.method}")
