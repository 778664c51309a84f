"""redrive's native fast path: when it asks the backend's move_all, and what it does then.

On the memory backend, with a subclass whose ``_move_all`` moves the messages
itself (as a broker's move operation would) and records each call. The SQS
implementation is tested in plugins/melange_localsqs/tests/test_localsqs_native_redrive.py.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from melange import deadletter
from melange.backends.base import OutgoingMessage
from melange.backends.memory import MemoryBackend
from melange.exceptions import BackendClosed, BrokerError, InvalidArgument
from melange.factory import MessagingBackendFactory

BODIES = [b"\x00\xffone", b'{"two": 2}', b"three \xe2\x9c\x93"]


class NativeMemory(MemoryBackend):
    """A memory backend with a native move: receive, copy and ack inside the backend."""

    def __init__(self, native: bool = True, fail_after: int | None = None) -> None:
        super().__init__()
        self.native = native
        self.fail_after = fail_after
        self.moves: list[tuple[str, str]] = []

    def _move_all(
        self, source: str, target: str, on_progress: Callable[[int], None] | None
    ) -> int | None:
        self.moves.append((source, target))
        if not self.native:
            return None
        moved = 0
        while batch := self._receive(source, 1, 0.0):
            assert self._forward(target, batch[0], {}).ok
            self._ack(batch)
            moved += 1
            if on_progress is not None:
                on_progress(moved)
            if moved == self.fail_after:
                raise BrokerError("the move stopped", broker_code="FAILED")
        return moved


def _dead_lettered(backend: MemoryBackend) -> None:
    factory = MessagingBackendFactory(backend)
    factory.init_queue("orders", dead_letter_queue_name="orders-dlq")
    factory.init_queue("replay")
    backend.publish(
        "orders-dlq",
        [OutgoingMessage(body, {"n": str(n), "kind": "é"}) for n, body in enumerate(BODIES)],
    )


def _drain(backend: MemoryBackend, queue: str) -> dict[bytes, dict[str, str]]:
    received = backend.receive(queue, 10, 0.0)
    return {message.body: dict(message.attributes) for message in received}


def test_a_whole_queue_redrive_moves_through_the_native_path_byte_for_byte() -> None:
    backend = NativeMemory()
    _dead_lettered(backend)
    progress: list[int] = []
    result = deadletter.redrive(
        backend, "orders", to="replay", on_progress=lambda r: progress.append(r.moved)
    )
    assert backend.moves == [("orders-dlq", "replay")]
    assert (result.source, result.target, result.moved, result.failed) == (
        "orders-dlq",
        "replay",
        3,
        [],
    )
    assert progress == [1, 2, 3, 3]  # the backend's counts, then the final one
    assert _drain(backend, "replay") == {
        body: {"n": str(n), "kind": "é"} for n, body in enumerate(BODIES)
    }
    assert backend.receive("orders-dlq", 10, 0.0) == []


def test_a_partial_or_dry_run_redrive_takes_the_generic_path() -> None:
    backend = NativeMemory()
    _dead_lettered(backend)
    dry = deadletter.redrive(backend, "orders", dry_run=True, wait_seconds=0.05)
    partial = deadletter.redrive(backend, "orders", max_messages=2, wait_seconds=0.05)
    assert backend.moves == []
    assert (dry.moved, partial.moved) == (3, 2)
    assert len(_drain(backend, "orders")) == 2
    assert len(backend.receive("orders-dlq", 10, 0.0)) == 1


def test_no_native_path_falls_back_to_the_generic_one_and_loses_nothing() -> None:
    backend = NativeMemory(native=False)
    _dead_lettered(backend)
    result = deadletter.redrive(backend, "orders", wait_seconds=0.05)
    assert backend.moves == [("orders-dlq", "orders")]  # asked first, then moved one by one
    assert result.moved == 3
    assert _drain(backend, "orders") == {
        body: {"n": str(n), "kind": "é"} for n, body in enumerate(BODIES)
    }


def test_a_native_move_that_fails_is_raised_and_leaves_the_rest_in_the_dead_letter_queue() -> None:
    backend = NativeMemory(fail_after=1)
    _dead_lettered(backend)
    with pytest.raises(BrokerError, match="the move stopped"):
        deadletter.redrive(backend, "orders", wait_seconds=0.05)
    moved, left = _drain(backend, "orders"), backend.receive("orders-dlq", 10, 0.0)
    assert len(moved) == 1
    assert len(left) == 2


def test_the_contract_default_has_no_native_path_and_checks_its_arguments() -> None:
    backend = MemoryBackend()
    _dead_lettered(backend)
    assert backend.move_all("orders-dlq", "orders") is None
    assert len(backend.receive("orders-dlq", 10, 0.0)) == 3  # nothing moved
    with pytest.raises(InvalidArgument, match="target"):
        backend.move_all("orders-dlq", 7)  # type: ignore[arg-type]
    backend.close()
    with pytest.raises(BackendClosed, match="move messages"):
        backend.move_all("orders-dlq", "orders")
