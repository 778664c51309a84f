"""The AMQP stand-in, driven by the unmodified ``azure.servicebus`` SDK over a real socket.

Entities are put into the shared :class:`Namespace` directly (as the management
stand-in would), then ``ServiceBusClient.from_connection_string`` talks to the
broker. What is checked is what the service does for the operations the backend
uses: peek-lock delivery and settlement, lock expiry and renewal, dead-lettering
and its forwarding, topic fan-out with filters and auto-forwarding, sessions,
duplicate detection, scheduling, peeking, authentication and missing entities.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from azure.servicebus import (
    NEXT_AVAILABLE_SESSION,
    ServiceBusClient,
    ServiceBusMessage,
    ServiceBusReceivedMessage,
    ServiceBusReceiveMode,
    ServiceBusSubQueue,
)
from azure.servicebus.exceptions import (
    MessageLockLostError,
    MessagingEntityNotFoundError,
    OperationTimeoutError,
    ServiceBusAuthenticationError,
    ServiceBusError,
    SessionCannotBeLockedError,
)
from standin import ServiceBusStandIn
from standin.amqp_filters import UnsupportedFilterError, matches, parse
from standin.namespace import Queue, Rule, Subscription, Topic


@pytest.fixture(scope="module")
def standin() -> Iterator[ServiceBusStandIn]:
    with ServiceBusStandIn() as running:
        yield running
        assert running.amqp.errors == []


@pytest.fixture(scope="module")
def client(standin: ServiceBusStandIn) -> Iterator[ServiceBusClient]:
    # Senders here get keep_alive=0: no keep-alive thread, whose 1 s sleep each close waits out.
    with ServiceBusClient.from_connection_string(standin.connection_string) as sb:
        yield sb


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def make_queue(standin: ServiceBusStandIn, **description: str) -> str:
    name = _name("q")
    with standin.namespace.lock:
        standin.namespace.queues[name] = Queue(name, dict(description))
    return name


def make_topic(standin: ServiceBusStandIn, subscriptions: dict[str, dict[str, object]]) -> str:
    """A topic with subscriptions; each maps to ``{"rules": [sql or None], **description}``."""
    name = _name("t")
    topic = Topic(name, {})
    for sub_name, spec in subscriptions.items():
        rules = spec.pop("rules", [None])
        assert isinstance(rules, list)
        sub = Subscription(sub_name, {k: str(v) for k, v in spec.items()})
        for index, expression in enumerate(rules):
            sub.rules[f"r{index}"] = Rule(f"r{index}", {}, expression)
        topic.subscriptions[sub_name] = sub
    with standin.namespace.lock:
        standin.namespace.topics[name] = topic
    return name


def forward_url(standin: ServiceBusStandIn, entity: str) -> str:
    return f"sb://127.0.0.1:{standin.amqp_port}/{entity}"


def receive(
    client: ServiceBusClient, queue: str, count: int = 1, wait: float = 3, **kwargs: object
) -> list[ServiceBusReceivedMessage]:
    """Receive up to ``count`` messages (peek-lock) and leave them unsettled."""
    receiver = client.get_queue_receiver(queue, **kwargs)  # type: ignore[arg-type]
    received: list[ServiceBusReceivedMessage] = []
    deadline = time.monotonic() + wait
    with receiver:
        while len(received) < count and time.monotonic() < deadline:
            remaining = deadline - time.monotonic()
            received += receiver.receive_messages(
                max_message_count=count - len(received), max_wait_time=max(0.2, min(1, remaining))
            )
    return received


def body(message: ServiceBusReceivedMessage) -> bytes:
    return b"".join(message.body)


def drain(client: ServiceBusClient, queue: str, **kwargs: object) -> list[bytes]:
    """Receive and complete everything in ``queue``; return the bodies in order."""
    bodies: list[bytes] = []
    with client.get_queue_receiver(queue, **kwargs) as receiver:  # type: ignore[arg-type]
        while True:
            batch = receiver.receive_messages(max_message_count=50, max_wait_time=0.5)
            if not batch:
                return bodies
            for message in batch:
                bodies.append(body(message))
                receiver.complete_message(message)


# -- data path -------------------------------------------------------------------------------


def test_send_one_and_a_batch_then_receive_complete(
    standin: ServiceBusStandIn, client: ServiceBusClient
) -> None:
    queue = make_queue(standin)
    with client.get_queue_sender(queue, keep_alive=0) as sender:
        sender.send_messages(ServiceBusMessage(b"one"))
        batch = sender.create_message_batch()
        for index in range(3):
            batch.add_message(ServiceBusMessage(f"batch-{index}".encode()))
        sender.send_messages(batch)
    with client.get_queue_receiver(queue) as receiver:
        received = []
        while len(received) < 4:
            got = receiver.receive_messages(max_message_count=4, max_wait_time=2)
            assert got, "the broker did not deliver all four messages"
            received += got
        assert [body(m) for m in received] == [b"one", b"batch-0", b"batch-1", b"batch-2"]
        assert [m.sequence_number for m in received] == sorted(m.sequence_number for m in received)
        assert all(m.delivery_count == 0 for m in received)
        for message in received:
            assert message.locked_until_utc is not None
            assert message.locked_until_utc > datetime.now(timezone.utc)
            receiver.complete_message(message)
        assert receiver.receive_messages(max_wait_time=0.5) == []
        assert receiver.peek_messages(max_message_count=10) == []


def test_properties_round_trip(standin: ServiceBusStandIn, client: ServiceBusClient) -> None:
    queue = make_queue(standin)
    payload = bytes(range(256)) + "é✓".encode()
    with client.get_queue_sender(queue, keep_alive=0) as sender:
        sender.send_messages(
            ServiceBusMessage(
                payload,
                application_properties={"kind": "order", "count": 3, "ünïcode": "välue"},
                content_type="application/octet-stream",
                correlation_id="corr-1",
                subject="the-subject",
                message_id="msg-1",
                time_to_live=timedelta(minutes=5),
            )
        )
    [message] = receive(client, queue)
    assert body(message) == payload
    properties = {
        k.decode() if isinstance(k, bytes) else k: v
        for k, v in (message.application_properties or {}).items()
    }
    assert properties["kind"] in ("order", b"order")
    assert properties["count"] == 3
    assert properties["ünïcode"] in ("välue", "välue".encode())
    assert message.content_type == "application/octet-stream"
    assert message.correlation_id == "corr-1"
    assert message.subject == "the-subject"
    assert message.message_id == "msg-1"
    assert message.time_to_live == timedelta(minutes=5)
    assert message.enqueued_time_utc is not None


def test_abandon_redelivers_with_a_higher_delivery_count(
    standin: ServiceBusStandIn, client: ServiceBusClient
) -> None:
    queue = make_queue(standin)
    with client.get_queue_sender(queue, keep_alive=0) as sender:
        sender.send_messages(ServiceBusMessage(b"again"))
    with client.get_queue_receiver(queue) as receiver:
        [first] = receiver.receive_messages(max_wait_time=3)
        receiver.abandon_message(first)
        [second] = receiver.receive_messages(max_wait_time=3)
        assert body(second) == b"again"
        assert second.delivery_count == first.delivery_count + 1 == 1
        assert second.sequence_number == first.sequence_number
        assert second.lock_token != first.lock_token
        receiver.complete_message(second)


def test_settling_twice_or_after_the_lock_is_gone_fails(
    standin: ServiceBusStandIn, client: ServiceBusClient
) -> None:
    queue = make_queue(standin, LockDuration="PT1S")
    with client.get_queue_sender(queue, keep_alive=0) as sender:
        sender.send_messages(ServiceBusMessage(b"late"))
    with client.get_queue_receiver(queue) as receiver:
        [message] = receiver.receive_messages(max_wait_time=3)
        time.sleep(1.3)
        with pytest.raises(MessageLockLostError):
            receiver.complete_message(message)


def test_lock_expiry_redelivers(standin: ServiceBusStandIn, client: ServiceBusClient) -> None:
    queue = make_queue(standin, LockDuration="PT1S")
    with client.get_queue_sender(queue, keep_alive=0) as sender:
        sender.send_messages(ServiceBusMessage(b"expire"))
    with client.get_queue_receiver(queue) as receiver:
        [_first] = receiver.receive_messages(max_wait_time=3)
        started = time.monotonic()
        [second] = receiver.receive_messages(max_wait_time=4)
        assert time.monotonic() - started > 0.5, "redelivered before the lock expired"
        assert body(second) == b"expire"
        assert second.delivery_count == 1
        receiver.complete_message(second)


def test_renew_lock_extends_locked_until(
    standin: ServiceBusStandIn, client: ServiceBusClient
) -> None:
    queue = make_queue(standin, LockDuration="PT3S")
    with client.get_queue_sender(queue, keep_alive=0) as sender:
        sender.send_messages(ServiceBusMessage(b"renew"))
    with client.get_queue_receiver(queue) as receiver:
        [message] = receiver.receive_messages(max_wait_time=3)
        before = message.locked_until_utc
        assert before is not None
        time.sleep(1.5)
        after = receiver.renew_message_lock(message)
        assert after > before + timedelta(seconds=1)
        time.sleep(1.7)  # past the first lock, within the renewed one
        assert receiver.receive_messages(max_wait_time=0.5) == []
        receiver.complete_message(message)


def test_receive_and_delete(standin: ServiceBusStandIn, client: ServiceBusClient) -> None:
    queue = make_queue(standin)
    with client.get_queue_sender(queue, keep_alive=0) as sender:
        sender.send_messages([ServiceBusMessage(b"a"), ServiceBusMessage(b"b")])
    received = receive(
        client, queue, count=2, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE
    )
    assert [body(m) for m in received] == [b"a", b"b"]
    assert receive(client, queue, wait=0.5) == []


def test_peek_messages(standin: ServiceBusStandIn, client: ServiceBusClient) -> None:
    queue = make_queue(standin)
    with client.get_queue_sender(queue, keep_alive=0) as sender:
        sender.send_messages([ServiceBusMessage(f"p{i}".encode()) for i in range(5)])
    with client.get_queue_receiver(queue) as receiver:
        peeked = receiver.peek_messages(max_message_count=3)
        assert [body(m) for m in peeked] == [b"p0", b"p1", b"p2"]
        rest = receiver.peek_messages(max_message_count=10)
        assert [body(m) for m in rest] == [b"p3", b"p4"]
        # Peeking locks nothing.
        assert len(receiver.receive_messages(max_message_count=5, max_wait_time=2)) >= 1


# -- dead-lettering ----------------------------------------------------------------------------


def test_dead_letter_explicitly(standin: ServiceBusStandIn, client: ServiceBusClient) -> None:
    queue = make_queue(standin)
    with client.get_queue_sender(queue, keep_alive=0) as sender:
        sender.send_messages(ServiceBusMessage(b"poison", application_properties={"k": "v"}))
    with client.get_queue_receiver(queue) as receiver:
        [message] = receiver.receive_messages(max_wait_time=3)
        receiver.dead_letter_message(message, reason="Bad", error_description="cannot parse")
        assert receiver.receive_messages(max_wait_time=0.5) == []
    [dead] = receive(client, queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER)
    assert body(dead) == b"poison"
    assert dead.dead_letter_reason == "Bad"
    assert dead.dead_letter_error_description == "cannot parse"
    assert dead.dead_letter_source == queue


def test_max_delivery_count_dead_letters(
    standin: ServiceBusStandIn, client: ServiceBusClient
) -> None:
    queue = make_queue(standin, MaxDeliveryCount="2")
    with client.get_queue_sender(queue, keep_alive=0) as sender:
        sender.send_messages(ServiceBusMessage(b"twice"))
    with client.get_queue_receiver(queue) as receiver:
        for _ in range(2):
            [message] = receiver.receive_messages(max_wait_time=3)
            receiver.abandon_message(message)
        assert receiver.receive_messages(max_wait_time=0.5) == []
    [dead] = receive(client, queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER)
    assert body(dead) == b"twice"
    assert dead.dead_letter_reason == "MaxDeliveryCountExceeded"


def test_dead_letters_forwarded(standin: ServiceBusStandIn, client: ServiceBusClient) -> None:
    dlq = make_queue(standin)
    queue = make_queue(
        standin, MaxDeliveryCount="1", ForwardDeadLetteredMessagesTo=forward_url(standin, dlq)
    )
    with client.get_queue_sender(queue, keep_alive=0) as sender:
        sender.send_messages(ServiceBusMessage(b"moved", application_properties={"a": "1"}))
    with client.get_queue_receiver(queue) as receiver:
        [message] = receiver.receive_messages(max_wait_time=3)
        receiver.abandon_message(message)
    [moved] = receive(client, dlq)
    assert body(moved) == b"moved"
    assert moved.delivery_count == 0
    assert moved.dead_letter_reason == "MaxDeliveryCountExceeded"
    assert receive(client, queue, wait=0.5, sub_queue=ServiceBusSubQueue.DEAD_LETTER) == []


def test_expired_messages_dropped_or_dead_lettered(
    standin: ServiceBusStandIn, client: ServiceBusClient
) -> None:
    keeps = make_queue(
        standin, DefaultMessageTimeToLive="PT1S", DeadLetteringOnMessageExpiration="true"
    )
    drops = make_queue(standin)
    with client.get_queue_sender(keeps, keep_alive=0) as sender:
        sender.send_messages(ServiceBusMessage(b"stale"))
    with client.get_queue_sender(drops, keep_alive=0) as sender:
        sender.send_messages(ServiceBusMessage(b"short", time_to_live=timedelta(seconds=1)))
        sender.send_messages(ServiceBusMessage(b"long"))
    time.sleep(1.2)
    # Service Bus (and the stand-in) expire messages only while a receiver pulls from the
    # queue: wait long enough for the receiver to attach even on a loaded machine.
    assert receive(client, keeps, wait=2.0) == []
    [dead] = receive(client, keeps, sub_queue=ServiceBusSubQueue.DEAD_LETTER)
    assert body(dead) == b"stale"
    assert dead.dead_letter_reason == "TTLExpiredException"
    assert drain(client, drops) == [b"long"]


# -- topics ------------------------------------------------------------------------------------


def test_topic_fans_out_through_filters_and_forwarding(
    standin: ServiceBusStandIn, client: ServiceBusClient
) -> None:
    red, everything = make_queue(standin), make_queue(standin)
    topic = make_topic(
        standin,
        {
            "to-red": {
                "rules": ["user.[colour] IN ('red', 'it''s red') AND user.[size] IN ('L')"],
                "ForwardTo": forward_url(standin, red),
            },
            "to-all": {"rules": [None], "ForwardTo": forward_url(standin, everything)},
            "plain": {"rules": ["user.[colour] IN ('blue')", "user.[colour] IN ('green')"]},
        },
    )
    messages = [
        ServiceBusMessage(b"1", application_properties={"colour": "red", "size": "L"}),
        ServiceBusMessage(b"2", application_properties={"colour": "it's red", "size": "L"}),
        ServiceBusMessage(b"3", application_properties={"colour": "red", "size": "S"}),
        ServiceBusMessage(b"4", application_properties={"colour": "green"}),
        ServiceBusMessage(b"5"),
    ]
    with client.get_topic_sender(topic, keep_alive=0) as sender:
        sender.send_messages(messages)
    assert drain(client, red) == [b"1", b"2"]
    assert drain(client, everything) == [b"1", b"2", b"3", b"4", b"5"]
    with client.get_subscription_receiver(topic, "plain") as receiver:
        [green] = receiver.receive_messages(max_wait_time=3)
        assert body(green) == b"4"
        receiver.complete_message(green)


def test_filter_grammar() -> None:
    assert parse("user.[a] IN ('x', 'y''z')") == [("a", frozenset({"x", "y'z"}))]
    assert matches(None, {}) and matches("1=1", {}) and not matches("1=0", {"a": "x"})
    assert matches("user.[a] IN ('x') AND user.[b] IN ('y')", {"a": "x", "b": "y"})
    assert not matches("user.[a] IN ('x') AND user.[b] IN ('y')", {"a": "x"})
    assert not matches("user.[a] IN ('1')", {"a": 1})
    for unsupported in ("a = 'x'", "user.[a] IN ('x') OR user.[b] IN ('y')", "user.[a] IN ()"):
        with pytest.raises(UnsupportedFilterError):
            matches(unsupported, {"a": "x"})


def test_unsupported_filter_is_reported(client: ServiceBusClient) -> None:
    with (
        ServiceBusStandIn() as other,
        ServiceBusClient.from_connection_string(
            other.connection_string, retry_total=0
        ) as other_client,
    ):
        topic = make_topic(other, {"odd": {"rules": ["sys.Label = 'x'"]}})
        with (
            other_client.get_topic_sender(topic, keep_alive=0) as sender,
            pytest.raises(ServiceBusError, match="cannot evaluate SQL filter"),
        ):
            sender.send_messages(ServiceBusMessage(b"x"))
        assert other.amqp.errors and "sys.Label" in other.amqp.errors[0]


# -- sessions ----------------------------------------------------------------------------------


def test_sessions(standin: ServiceBusStandIn, client: ServiceBusClient) -> None:
    queue = make_queue(standin, RequiresSession="true")
    with client.get_queue_sender(queue, keep_alive=0) as sender:
        sender.send_messages(
            [ServiceBusMessage(f"a{i}".encode(), session_id="A") for i in range(3)]
        )
        sender.send_messages(
            [ServiceBusMessage(f"b{i}".encode(), session_id="B") for i in range(2)]
        )
    with client.get_queue_receiver(queue, session_id="B") as receiver:
        assert receiver.session.session_id == "B"
        with (
            pytest.raises(SessionCannotBeLockedError),
            client.get_queue_receiver(queue, session_id="B", max_wait_time=2) as second,
        ):
            second.receive_messages(max_wait_time=1)
        got = receiver.receive_messages(max_message_count=5, max_wait_time=2)
        assert [body(m) for m in got] == [b"b0", b"b1"]
        assert all(m.session_id == "B" for m in got)
        receiver.abandon_message(got[0])
        [again] = receiver.receive_messages(max_wait_time=2)
        assert body(again) == b"b0" and again.delivery_count == 1
        for message in (again, got[1]):
            receiver.complete_message(message)
        assert receiver.session.renew_lock() > datetime.now(timezone.utc)
    with client.get_queue_receiver(
        queue, session_id=NEXT_AVAILABLE_SESSION, max_wait_time=3
    ) as receiver:
        assert receiver.session.session_id == "A"
        bodies = []
        while len(bodies) < 3:
            batch = receiver.receive_messages(max_message_count=3, max_wait_time=2)
            assert batch
            for message in batch:
                bodies.append(body(message))
                receiver.complete_message(message)
        assert bodies == [b"a0", b"a1", b"a2"]


def test_next_available_session_times_out_when_none(
    standin: ServiceBusStandIn, client: ServiceBusClient
) -> None:
    queue = make_queue(standin, RequiresSession="true")
    with (
        pytest.raises(OperationTimeoutError),
        client.get_queue_receiver(queue, session_id=NEXT_AVAILABLE_SESSION, max_wait_time=1) as r,
    ):
        r.receive_messages(max_wait_time=1)


def test_session_queue_refuses_message_without_session(
    standin: ServiceBusStandIn, client: ServiceBusClient
) -> None:
    queue = make_queue(standin, RequiresSession="true")
    with (
        client.get_queue_sender(queue, keep_alive=0) as sender,
        pytest.raises(Exception, match="SessionId"),
    ):
        sender.send_messages(ServiceBusMessage(b"no session"))


# -- duplicate detection and scheduling --------------------------------------------------------


def test_duplicate_detection(standin: ServiceBusStandIn, client: ServiceBusClient) -> None:
    queue = make_queue(
        standin, RequiresDuplicateDetection="true", DuplicateDetectionHistoryTimeWindow="PT10M"
    )
    with client.get_queue_sender(queue, keep_alive=0) as sender:
        for text in ("first", "copy", "other"):
            sender.send_messages(
                ServiceBusMessage(text.encode(), message_id="other" if text == "other" else "same")
            )
    assert drain(client, queue) == [b"first", b"other"]
    plain = make_queue(standin)
    with client.get_queue_sender(plain, keep_alive=0) as sender:
        sender.send_messages(
            [ServiceBusMessage(b"x", message_id="same"), ServiceBusMessage(b"y", message_id="same")]
        )
    assert drain(client, plain) == [b"x", b"y"]


def test_scheduled_messages(standin: ServiceBusStandIn, client: ServiceBusClient) -> None:
    queue = make_queue(standin)
    due = datetime.now(timezone.utc) + timedelta(seconds=2)
    with client.get_queue_sender(queue, keep_alive=0) as sender:
        [number] = sender.schedule_messages(ServiceBusMessage(b"later"), due)
        cancelled = sender.schedule_messages(ServiceBusMessage(b"never"), due)
        sender.cancel_scheduled_messages(cancelled)
        sender.send_messages(ServiceBusMessage(b"annotated", scheduled_enqueue_time_utc=due))
    assert isinstance(number, int)
    with client.get_queue_receiver(queue) as receiver:
        peeked = receiver.peek_messages(max_message_count=10)
        assert number in [m.sequence_number for m in peeked]
        got: list[ServiceBusReceivedMessage] = []
        deadline = time.monotonic() + 6
        while len(got) < 2 and time.monotonic() < deadline:
            got += receiver.receive_messages(max_message_count=2, max_wait_time=1)
            if got:
                assert datetime.now(timezone.utc) >= due, "a scheduled message came early"
        assert sorted(body(m) for m in got) == [b"annotated", b"later"]
        for message in got:
            assert message.enqueued_time_utc is not None
            assert message.enqueued_time_utc >= due - timedelta(milliseconds=50)
            receiver.complete_message(message)
        assert receiver.receive_messages(max_wait_time=0.5) == []


# -- errors ------------------------------------------------------------------------------------


def test_wrong_key_is_refused(standin: ServiceBusStandIn) -> None:
    wrong = standin.connection_string.replace(standin.key, "d3Jvbmcta2V5")
    with (
        ServiceBusClient.from_connection_string(wrong, retry_total=0) as bad,
        pytest.raises(ServiceBusAuthenticationError),
        bad.get_queue_sender(make_queue(standin), keep_alive=0) as sender,
    ):
        sender.send_messages(ServiceBusMessage(b"x"))


def test_missing_entity(client: ServiceBusClient) -> None:
    with (
        pytest.raises(MessagingEntityNotFoundError),
        client.get_queue_sender("does-not-exist", keep_alive=0) as sender,
    ):
        sender.send_messages(ServiceBusMessage(b"x"))
    with (
        pytest.raises(MessagingEntityNotFoundError),
        client.get_queue_receiver("does-not-exist") as receiver,
    ):
        receiver.receive_messages(max_wait_time=1)


def test_deleted_entity_loses_its_messages(
    standin: ServiceBusStandIn, client: ServiceBusClient
) -> None:
    queue = make_queue(standin)
    with client.get_queue_sender(queue, keep_alive=0) as sender:
        sender.send_messages(ServiceBusMessage(b"old"))
    with standin.namespace.lock:
        standin.namespace.queues[queue] = Queue(queue, {})  # deleted and created again
    with client.get_queue_sender(queue, keep_alive=0) as sender:
        sender.send_messages(ServiceBusMessage(b"new"))
    assert drain(client, queue) == [b"new"]


# -- load --------------------------------------------------------------------------------------


def test_many_messages_through_concurrent_consumers(
    standin: ServiceBusStandIn, client: ServiceBusClient
) -> None:
    queue = make_queue(standin)
    total = 400
    with client.get_queue_sender(queue, keep_alive=0) as sender:
        batch = sender.create_message_batch()
        for index in range(total):
            batch.add_message(ServiceBusMessage(str(index).encode()))
        sender.send_messages(batch)
    seen: list[bytes] = []
    lock = threading.Lock()

    def consume() -> None:
        with client.get_queue_receiver(queue) as receiver:
            while True:
                batch = receiver.receive_messages(max_message_count=20, max_wait_time=1)
                if not batch:
                    return
                for message in batch:
                    receiver.complete_message(message)
                    with lock:
                        seen.append(body(message))

    started = time.monotonic()
    workers = [threading.Thread(target=consume) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert sorted(seen, key=int) == [str(i).encode() for i in range(total)]
    assert time.monotonic() - started < 30
