"""The dispatchers' scheduling core, driven directly: no threads, no broker, no clock."""

from __future__ import annotations

import pytest

from melange._schedule import Schedule
from melange.backends.base import ReceivedMessage
from melange.lease import Lease
from melange.settlement import FILL_WAIT, AckBuffer, Delivery, ReceiveBatch


def received(count: int, group: str | None = None, start: int = 0) -> list[Delivery]:
    batch = ReceiveBatch(count)
    out = []
    for n in range(start, start + count):
        message = ReceivedMessage("q", b"{}", {}, f"m{n}", 1, group, receipt=n)
        out.append(Delivery(message, 0.0, 30.0, batch))
    return out


def ids(deliveries: list[Delivery]) -> list[str]:
    return [d.received.message_id for d in deliveries]


def test_a_receive_asks_for_at_most_a_batch_and_never_more_than_is_free() -> None:
    schedule = Schedule(capacity=25, batch_size=10)
    assert schedule.reserve(0.0).size == 10
    assert schedule.reserve(0.0).size == 10
    assert schedule.reserve(0.0).size == 5  # nothing held: no reason to wait for more
    refused = schedule.reserve(0.0)
    assert (refused.size, refused.wait) == (0, None)  # full: wait until capacity changes
    schedule.unreserve(10)
    assert schedule.reserve(0.0).size == 10


def test_with_handlers_running_a_receive_waits_briefly_for_a_full_batch() -> None:
    schedule = Schedule(capacity=10, batch_size=10)
    start, _ = schedule.accept(received(10), schedule.reserve(0.0).size, stopping=False, now=0.0)
    schedule.finish(start[0], True, now=0.0)  # one free, nine running
    first = schedule.reserve(1.0)
    assert first.size == 0 and first.wait == pytest.approx(FILL_WAIT)
    later = schedule.reserve(1.0 + FILL_WAIT / 2, first.fill_deadline)
    assert later.size == 0 and later.wait == pytest.approx(FILL_WAIT / 2)
    overdue = schedule.reserve(1.0 + FILL_WAIT, later.fill_deadline)
    assert overdue.size == 1  # the wait is over: ask for what is free


def test_less_capacity_than_a_batch_never_waits() -> None:
    schedule = Schedule(capacity=4, batch_size=10)
    start, _ = schedule.accept(received(4), schedule.reserve(0.0).size, stopping=False, now=0.0)
    schedule.finish(start[0], True, now=0.0)
    assert schedule.reserve(0.0).size == 1


def test_a_fifo_group_runs_one_message_at_a_time_in_order() -> None:
    schedule = Schedule(capacity=10, batch_size=10)
    batch = received(3, group="g") + received(1, group="h", start=3)
    start, release = schedule.accept(batch, 10, stopping=False, now=0.0)
    assert ids(start) == ["m0", "m3"] and release == []
    assert schedule.held == 4
    following, behind, _ = schedule.finish(batch[0], True, now=0.0)
    assert following is batch[1] and behind == []
    following, behind, _ = schedule.finish(batch[1], True, now=0.0)
    assert following is batch[2]


def test_the_messages_behind_a_failed_one_go_back_to_keep_the_groups_order() -> None:
    schedule = Schedule(capacity=10, batch_size=10)
    batch = received(3, group="g")
    schedule.accept(batch, 10, stopping=False, now=0.0)
    following, behind, _ = schedule.finish(batch[0], False, now=0.0)
    assert following is None and ids(behind) == ["m1", "m2"]
    assert all(d.cancelled for d in behind)
    schedule.release(behind, now=0.0)
    assert schedule.held == 0
    # The group is free again: its next delivery starts at once.
    again = received(1, group="g", start=1)
    start, _ = schedule.accept(again, 1, stopping=False, now=1.0)
    assert start == again


def test_while_stopping_received_messages_are_released_unstarted() -> None:
    schedule = Schedule(capacity=10, batch_size=10)
    reserved = schedule.reserve(0.0).size
    batch = received(2)
    start, release = schedule.accept(batch, reserved, stopping=True, now=0.0)
    assert start == [] and release == batch and all(d.cancelled for d in batch)
    assert (schedule.held, schedule.reserved) == (0, 0)


def test_cancel_unstarted_leaves_running_messages_alone() -> None:
    schedule = Schedule(capacity=10, batch_size=10)
    batch = received(2) + received(2, group="g", start=2)
    schedule.accept(batch, 10, stopping=False, now=0.0)
    batch[0].started = True
    batch[2].started = True
    assert sorted(ids(schedule.cancel_unstarted())) == ["m1", "m3"]


def test_acks_of_a_received_batch_go_out_together_once_it_is_settled() -> None:
    schedule = Schedule(capacity=10, batch_size=10)
    schedule.acks = AckBuffer(limit=10)
    batch = received(3)
    schedule.accept(batch, 10, stopping=False, now=0.0)
    assert schedule.finish(batch[0], True, now=0.0).send == []
    assert schedule.finish(batch[1], False, now=0.0).send == []  # retried: no ack, still settled
    sent = schedule.finish(batch[2], True, now=0.0).send
    assert [ids(call) for call in sent] == [["m0", "m2"]]
    assert schedule.pending_acks == 2 and not schedule.idle
    schedule.acks_sent(2, now=1.0)
    assert schedule.idle and schedule.last_activity == 1.0


def test_a_full_ack_call_goes_out_without_waiting_for_the_rest() -> None:
    schedule = Schedule(capacity=10, batch_size=10)
    schedule.acks = AckBuffer(limit=2)
    batch = received(3)
    schedule.accept(batch, 10, stopping=False, now=0.0)
    schedule.finish(batch[0], True, now=0.0)
    assert [ids(c) for c in schedule.finish(batch[1], True, now=0.0).send] == [["m0", "m1"]]


def test_a_delivery_is_a_complete_lease() -> None:
    """Delivery sets Lease's fields itself (it runs per message): none may be forgotten."""
    (delivery,) = received(1)
    assert isinstance(delivery, Lease)
    assert all(hasattr(delivery, name) for name in Lease.__slots__)
    assert not (delivery.lost or delivery.capped)
