"""Many AMQP frames in one socket write.

pika queues every frame it marshals as a chunk of its own, and its transport
sends the chunks one ``send`` call each: a published message is three calls
(method, header, body), a batch of 100 is 300. Frames made inside
:func:`one_write` are gathered instead, and handed to the transport as one
chunk when the block ends, even when it raises (what was made before the error
goes out, as it would have).

It runs on the link's I/O thread only, like every pika call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["one_write"]


@contextlib.contextmanager
def one_write(connection: Any) -> Iterator[None]:
    """Gather the frames ``connection`` emits in the block; write them at its end.

    Args:
        connection: pika's connection implementation (``BlockingChannel._impl.connection``).
    """
    frames: list[bytes] = []
    # An attribute of the instance shadows the adapter's method for the block only.
    connection._adapter_emit_data = frames.append
    try:
        yield
    finally:
        del connection._adapter_emit_data
        if frames:
            connection._adapter_emit_data(b"".join(frames))
