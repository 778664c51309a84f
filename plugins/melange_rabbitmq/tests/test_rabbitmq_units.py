"""The plugin's pure parts, without a broker: leases, filters as bindings, 406 parsing."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time

import pytest
from melange_rabbitmq.errors import immutable_setting
from melange_rabbitmq.filters import MAX_BINDINGS, bindings_for, filter_of
from melange_rabbitmq.leases import LeaseTable
from melange_rabbitmq.one_write import one_write
from melange_rabbitmq.unsettled import Unsettled

from melange.exceptions import InvalidTopology
from melange.topology import SubscriptionSpec

KEY = (0, 1, 7)


def test_a_settled_or_released_receipt_is_stale() -> None:
    leases = LeaseTable()
    leases.hold(KEY, "q", "m1", 30.0)
    assert leases.settle(KEY) is True
    assert leases.settle(KEY) is False  # acked twice: the second settles nothing
    leases.hold(KEY, "q", "m1", 30.0)
    assert leases.release(KEY, 5.0) is False  # returned later by the I/O thread, not now
    assert leases.settle(KEY) is False and leases.extend(KEY, 10.0) is None
    assert leases.due(time.monotonic() + 6.0) == [KEY]
    assert len(leases) == 0


def test_a_release_without_delay_is_returned_at_once_and_only_once() -> None:
    leases = LeaseTable()
    leases.hold(KEY, "q", "m1", 30.0)
    assert leases.release(KEY, 0.0) is True
    assert leases.release(KEY, 0.0) is False


def test_leases_come_due_at_their_deadline_and_extension_moves_it() -> None:
    leases = LeaseTable()
    leases.hold(KEY, "q", "m1", 1.0)
    leases.hold((0, 1, 8), "q", "m2", 1.0)
    extended = leases.extend(KEY, 100.0)
    assert extended is not None and extended.message_id == "m1"
    assert leases.due(time.monotonic() + 2.0) == [(0, 1, 8)]
    assert leases.due(time.monotonic() + 2.0) == []


def test_a_lost_channel_or_connection_drops_its_leases() -> None:
    leases = LeaseTable()
    for key in [(0, 1, 1), (0, 2, 1), (1, 1, 1)]:
        leases.hold(key, "q", "m", 30.0)
    leases.drop(0, channel=2)
    assert leases.settle((0, 2, 1)) is False and len(leases) == 2
    leases.drop(0)
    assert leases.settle((0, 1, 1)) is False and leases.settle((1, 1, 1)) is True


def _spec(filter_: dict[str, list[str]] | None) -> SubscriptionSpec:
    return SubscriptionSpec("t", "q", SubscriptionSpec.normalize_filter(filter_))


def test_a_filter_is_one_binding_per_combination_and_reads_back() -> None:
    spec = _spec({"kind": ["paid", "refunded"], "region": ["eu"]})
    bindings = bindings_for(spec)
    assert sorted(sorted(b.items()) for b in bindings) == [
        [("kind", "paid"), ("region", "eu"), ("x-match", "all")],
        [("kind", "refunded"), ("region", "eu"), ("x-match", "all")],
    ]
    assert filter_of(bindings) == spec.filter
    assert bindings_for(_spec(None)) == [{"x-match": "all"}]
    assert filter_of([{"x-match": "all"}, {"x-match": "all", "kind": "paid"}]) is None


@pytest.mark.parametrize(
    ("filter_", "words"),
    [
        ({"x-kind": ["a"]}, "'x-'"),
        ({"a": [str(i) for i in range(9)], "b": [str(i) for i in range(9)]}, str(MAX_BINDINGS)),
    ],
)
def test_filters_a_headers_exchange_cannot_hold_are_refused(
    filter_: dict[str, list[str]], words: str
) -> None:
    with pytest.raises(InvalidTopology, match=words):
        bindings_for(_spec(filter_))


def test_a_406_names_the_setting_in_melange_s_terms_with_both_values() -> None:
    text = (
        "PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue 'q' in vhost '/': "
        "received the value '4' of type 'signedint' but current is the value '9' of type "
        "'signedint'"
    )
    error = immutable_setting("q", text)
    assert error is not None
    assert (error.setting, error.current, error.declared) == ("max_receive_count", 10, 5)
    classic = (
        "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'q' in vhost '/': "
        "received the value 'quorum' of type 'longstr' but current is none"
    )
    error = immutable_setting("q", classic)
    assert error is not None and (error.current, error.declared) == ("classic", "quorum")
    assert immutable_setting("q", "PRECONDITION_FAILED - unknown delivery tag 5") is None


# ------------------------------------------------------------------ unsettled
def test_a_batch_of_every_unsettled_tag_up_to_its_highest_settles_with_one_frame() -> None:
    unsettled = Unsettled()
    for tag in range(1, 21):
        unsettled.delivered((1, 1), tag)
    assert unsettled.settle((1, 1), [3, 1, 2]) == 3  # in any order
    assert unsettled.settle((1, 1), [4, 5]) == 5  # 1-3 are settled already
    assert unsettled.settle((1, 1), [7, 8]) is None  # 6 is unsettled: one frame would take it
    assert unsettled.settle((1, 1), [6]) == 6  # 7 and 8 are settled: only 6 is left below
    assert unsettled.settle((1, 1), [20]) is None  # 9-19 are unsettled


def test_tags_the_tracker_does_not_know_are_settled_one_by_one() -> None:
    unsettled = Unsettled()
    unsettled.delivered((1, 1), 1)
    assert unsettled.settle((1, 2), [1]) is None  # another channel
    assert unsettled.settle((1, 1), [1, 2]) is None  # 2 was never delivered
    assert unsettled.settle((1, 1), []) is None
    unsettled.delivered((1, 1), 3)
    unsettled.forget((1, 1))  # the channel closed
    assert unsettled.settle((1, 1), [3]) is None
    unsettled.delivered((2, 1), 1)
    unsettled.clear()  # the connection closed
    assert unsettled.settle((2, 1), [1]) is None


def test_a_tag_past_one_not_seen_yet_is_settled_on_its_own() -> None:
    """pika hands a pushed delivery over after the ``basic.get`` answer that came after it."""
    unsettled = Unsettled()
    for tag in (1, 2):
        unsettled.delivered((1, 1), tag)
    assert unsettled.settle((1, 1), [1, 2]) == 2
    unsettled.delivered((1, 1), 4)  # the get's answer; the push of 3 is still in pika's queue
    assert unsettled.settle((1, 1), [4]) is None  # one frame up to 4 would settle 3 as well
    unsettled.delivered((1, 1), 3)
    unsettled.delivered((1, 1), 5)
    assert unsettled.settle((1, 1), [3]) == 3  # every tag up to 5 seen now
    assert unsettled.settle((1, 1), [5]) == 5


class _Emitting:
    """What one_write needs of pika's connection: the adapter's ``_adapter_emit_data``."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def _adapter_emit_data(self, data: bytes) -> None:
        self.written.append(data)


def test_one_write_gathers_the_frames_of_its_block_and_writes_them_once() -> None:
    connection = _Emitting()
    with one_write(connection):
        connection._adapter_emit_data(b"method")
        connection._adapter_emit_data(b"header")
        assert connection.written == []
    assert connection.written == [b"methodheader"]
    connection._adapter_emit_data(b"after")  # the adapter's own method again
    assert connection.written == [b"methodheader", b"after"]


def test_one_write_sends_what_was_made_before_an_error() -> None:
    connection = _Emitting()
    with pytest.raises(RuntimeError), one_write(connection):
        connection._adapter_emit_data(b"first message")
        raise RuntimeError("the channel closed")
    assert connection.written == [b"first message"]


def test_one_write_writes_nothing_for_a_block_that_made_no_frame() -> None:
    connection = _Emitting()
    with one_write(connection):
        pass
    assert connection.written == []


_EXIT_AFTER_ERROR = textwrap.dedent(
    """
    import sys, time
    from melange_rabbitmq import RabbitMQBackend
    backend = RabbitMQBackend("amqp://guest:guest@127.0.0.1:%d/%%2F", call_timeout=1.0)
    try:
        backend.get_queue("q")
    except Exception as error:
        print(type(error).__name__, time.monotonic(), flush=True)
    %s
    """
)


@pytest.mark.parametrize("closing", ["backend.close()", "pass"], ids=["close", "atexit"])
def test_the_process_exits_promptly_when_the_connection_never_opened(closing: str) -> None:
    # A black hole: the TCP connection is accepted and the AMQP handshake never answered,
    # so pika's attempt lasts its stack timeout (15 s). Neither close() nor the atexit
    # close may wait for it: the process ends soon after the call's error.
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(16)
    port = hole.getsockname()[1]
    try:
        script = _EXIT_AFTER_ERROR % (port, closing)
        process = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
        )
        ended = time.monotonic()
    finally:
        hole.close()
    name, at = process.stdout.split()
    assert name == "BackendUnavailable", process.stderr
    assert ended - float(at) < 2.0
