"""Rolling upgrade from melange 7.x, against the REAL melange 7.2.0 on the same queues and topics.

Every 7.x producer and consumer here is melange 7.2.0 itself, the wheel from PyPI, running in
a venv of its own (build/melange7-venv, which ``make test`` builds from
melange7/requirements.txt) through the script melange7/side.py; nothing of 7.x is imitated
in this module. Each 7.x run first reports the version and the file of the melange package it
imported, and every test checks that it is 7.2.0 from that venv. Without the venv these tests
FAIL, saying how to build it: they never skip.

The endpoint is the session's moto server (SQS and SNS over HTTP). What is checked, with
payloads chosen to be easy to mangle (non-ASCII text, quotes, backslashes, a nested
``"Message"`` key, large integers):

a) 7.x creates the topology and publishes to a queue and to a topic; an 8.x dispatcher with
   no option handles every message and gets exactly the dicts 7.x published; the queue and
   its dead-letter queue end empty.
b) 8.x publishes with ``compatible_with_7x=True`` to the queue and the topic; the 7.x
   consumer gets every payload, unmangled (topology made by 7.x, or by 8.x in that mode).
c) 8.x re-runs ``init_queue`` with ``compatible_with_7x=True`` on the 7.x topology in the
   middle of the traffic: the subscription stays non-raw and single, the redrive policy keeps
   7.x's maxReceiveCount of 4, and the 7.x consumer still gets everything.
d) 7.x and 8.x producers and 7.x and 8.x consumers run at once on one queue: every message
   is handled by one side or the other, none lost, none mangled.
e) The end of the upgrade: with no 7.x consumer left, ``init_queue`` without the option
   switches the subscription to raw delivery; 8.x consumers still read what 7.x producers
   sent before and after the switch.
f) A payload that looks like 7.x's queue wrapper (``{"Message": "..."}``) arrives as it was
   sent, both ways, through a queue and through a topic.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import boto3
import pytest
from melange_localsqs import LocalSQSBackend
from melange_localsqs.testing import MotoServer

from melange import MessagingBackendFactory
from melange.consumers import consumer
from melange.dispatcher import MessageDispatcher
from melange.message import Message
from melange.publishers import QueuePublisher, TopicPublisher
from melange.settlement import DispatchStats
from melange.testing.conformance import ResourceNames

pytestmark = pytest.mark.melange7

REPO = Path(__file__).resolve().parents[3]
MELANGE7_VENV = REPO / "build" / "melange7-venv"
MELANGE7_PYTHON = MELANGE7_VENV / "bin" / "python"
MELANGE7_STAMP = MELANGE7_VENV / ".installed"
SIDE = Path(__file__).resolve().parent / "melange7" / "side.py"
MELANGE7_VERSION = "7.2.0"

N = 20
"""Messages per producer and destination: enough to interleave, few enough to be quick."""

MAX_RECEIVE_COUNT_7X = 4
"""The dead-letter maxReceiveCount melange 7.x always set (8.x's default is 5)."""

TEXT = 'h\u00e9llo w\u00f6rld \u2713 \U0001f600 "quoted" back\\slash {"Message": "x"}\n\ttab'


def payloads(label: str, count: int = N) -> list[dict[str, Any]]:
    """``count`` distinct JSON payloads, each easy to mangle on the way."""
    return [
        {
            "id": f"{label}-{i}",
            "seq": i,
            "text": TEXT,
            "amount": i + 0.25,
            "big": 2**53 + i,
            "nested": {"Message": f"not an envelope {i}", "items": [i, None, True, [], {}]},
        }
        for i in range(count)
    ]


def canonical(payload: Any) -> str:
    return json.dumps(payload, sort_keys=True, ensure_ascii=False)


def assert_same_payloads(
    got: Sequence[Any], expected: Sequence[Any], who: str, *, duplicates: bool = False
) -> None:
    """Every expected payload arrived (none lost) and nothing else did (none mangled)."""
    wanted = Counter(canonical(p) for p in expected)
    received = Counter(canonical(p) for p in got)
    lost = sorted(set(wanted) - set(received))
    mangled = sorted(set(received) - set(wanted))
    twice = {p: n for p, n in received.items() if n > wanted.get(p, 0) and p in wanted}
    problems = []
    if lost:
        problems.append(f"{len(lost)} of {len(wanted)} lost, e.g. {lost[:2]}")
    if mangled:
        problems.append(f"{len(mangled)} not as sent (mangled), e.g. {mangled[:2]}")
    if twice and not duplicates:
        problems.append(f"{len(twice)} handled more than once, e.g. {list(twice)[:2]}")
    assert not problems, f"{who}: " + "; ".join(problems)
    assert all(isinstance(p, dict) for p in got), f"{who}: a payload is not a dict"


# ------------------------------------------------------------ the 7.x side
@dataclasses.dataclass
class Run7:
    """What one run of melange7/side.py printed."""

    job: str
    events: list[dict[str, Any]]
    stderr: str = ""

    def of(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event]

    @property
    def handled(self) -> list[Any]:
        return [e["payload"] for e in self.of("handled")]

    @property
    def errors(self) -> list[str]:
        return [f"{e['source']}: {e['error']}" for e in self.of("error")]


def check_identity(run: Run7) -> None:
    """The run imported melange 7.2.0 from its venv, not the melange 8 of this checkout."""
    first = run.events[0] if run.events else {}
    real = Path(str(first.get("file", ""))).resolve()
    assert first.get("event") == "melange", f"melange 7.x `{run.job}` printed nothing: {run}"
    assert first["version"] == MELANGE7_VERSION, f"the 7.x side imported {first}"
    assert real.is_relative_to(MELANGE7_VENV.resolve()), f"the 7.x side imported {real}"


def parse(job: str, stdout: str) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in stdout.splitlines() if line.strip()]
    except ValueError:
        pytest.fail(f"melange 7.x `{job}` printed a line that is not JSON:\n{stdout}")


class Melange7:
    """Runs jobs of melange7/side.py with melange 7.2.0's python against one endpoint."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        # -I: neither the working directory nor PYTHON* variables can put melange 8 in its way.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PYTHON"))}

    def command(self, *args: str) -> list[str]:
        return [str(MELANGE7_PYTHON), "-I", str(SIDE), self.endpoint, *args]

    def run(self, *args: str, stdin: str = "", timeout: float = 60.0) -> Run7:
        job = " ".join(args)
        try:
            done = subprocess.run(
                self.command(*args),
                input=stdin,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=self.env,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            pytest.fail(f"melange 7.x `{job}` did not end within {timeout:g} s: {error.stdout!r}")
        run = Run7(job, parse(job, done.stdout), done.stderr)
        if done.returncode != 0:
            pytest.fail(f"melange 7.x `{job}` failed (exit {done.returncode}):\n{done.stderr}")
        check_identity(run)
        return run

    def init(self, queue: str, dead_letter: str, topics: Sequence[str]) -> None:
        args = ["init", queue, "--dead-letter", dead_letter]
        for topic in topics:
            args += ["--topic", topic]
        self.run(*args)

    def publish(self, items: Sequence[tuple[str, str, dict[str, Any]]]) -> None:
        """Publish ``(kind, name, payload)`` items, kind ``queue`` or ``topic``, in order."""
        lines = "".join(json.dumps({kind: name, "payload": p}) + "\n" for kind, name, p in items)
        run = self.run("publish", stdin=lines)
        assert run.of("done")[0]["published"] == len(items)

    def consume(self, queue: str, expect: int, timeout: float = 30.0) -> Run7:
        """Run 7.x's consume_loop until ``expect`` distinct payloads or ``timeout``."""
        run = self.run("consume", queue, "--expect", str(expect), "--timeout", str(timeout))
        return run

    def start_consumer(self, queue: str, timeout: float = 60.0) -> RunningConsumer7:
        process = subprocess.Popen(
            self.command("consume", queue, "--timeout", str(timeout)),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )
        return RunningConsumer7(process, Run7("consume (running)", []))


@dataclasses.dataclass
class RunningConsumer7:
    """A 7.x consumer running beside 8.x ones, until its stdin is closed."""

    process: subprocess.Popen[str]
    run: Run7

    def __post_init__(self) -> None:
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        stdout: IO[str] | None = self.process.stdout
        assert stdout is not None
        for line in stdout:
            with self.changed:
                self.run.events.append(json.loads(line))
                self.changed.notify_all()

    def wait_for(self, event: str, timeout: float = 20.0) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: bool(self.run.of(event)), timeout):
                self.stop()
                pytest.fail(f"the 7.x consumer never printed {event!r}: {self.run}")

    def handled(self) -> list[Any]:
        with self.changed:
            return list(self.run.handled)

    def stop(self) -> Run7:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()  # side.py's signal to stop between messages
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.reader.join(5)
        assert self.process.stderr is not None
        self.run.stderr = self.process.stderr.read()
        self.process.stderr.close()
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.run


def require_melange7_venv() -> Path:
    """melange 7.2.0's interpreter; a missing venv fails the test (never skips)."""
    if not (MELANGE7_STAMP.exists() and MELANGE7_PYTHON.exists()):
        pytest.fail(
            f"melange 7.2.0's venv {MELANGE7_VENV.relative_to(REPO)} is missing: `make test` "
            "builds it before running the suite (alone: `make build/melange7-venv/.installed`). "
            "The rolling-upgrade tests run the real melange 7.2.0 and never skip.",
            pytrace=False,
        )
    return MELANGE7_PYTHON


@pytest.fixture
def melange7(moto_server: MotoServer) -> Melange7:
    require_melange7_venv()
    return Melange7(moto_server.endpoint_url)


# ------------------------------------------------------------ the 8.x side
@pytest.fixture
def endpoint(moto_server: MotoServer) -> str:
    return moto_server.endpoint_url


@pytest.fixture
def names() -> ResourceNames:
    return ResourceNames()


@pytest.fixture
def backends(endpoint: str) -> Iterator[Any]:
    """Make 8.x LocalSQSBackends; all are closed after the test."""
    made: list[LocalSQSBackend] = []

    def make(*, compatible_with_7x: bool = False) -> LocalSQSBackend:
        backend = LocalSQSBackend(
            endpoint_url=endpoint, sns=True, compatible_with_7x=compatible_with_7x
        )
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


def client(service: str, endpoint: str) -> Any:
    """Plain boto3, to look at the endpoint without melange."""
    return boto3.session.Session().client(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def queue_attributes(endpoint: str, queue: str, names: Sequence[str]) -> dict[str, str]:
    with contextlib.closing(client("sqs", endpoint)) as sqs:
        url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
        found = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=list(names))
    return dict(found["Attributes"])


def message_counts(endpoint: str, queue: str) -> dict[str, int]:
    names = [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    ]
    attributes = queue_attributes(endpoint, queue, names)
    return {name: int(attributes[name]) for name in names}


def assert_empty(endpoint: str, *queues: str) -> None:
    for queue in queues:
        counts = message_counts(endpoint, queue)
        assert not any(counts.values()), f"{queue} still holds messages: {counts}"


def subscriptions(endpoint: str, topic: str) -> list[dict[str, str]]:
    """The attributes of every subscription of ``topic``."""
    with contextlib.closing(client("sns", endpoint)) as sns:
        arns = [t["TopicArn"] for t in sns.list_topics()["Topics"]]
        (arn,) = [a for a in arns if a.rsplit(":", 1)[-1] == topic]
        found = sns.list_subscriptions_by_topic(TopicArn=arn)["Subscriptions"]
        return [
            sns.get_subscription_attributes(SubscriptionArn=s["SubscriptionArn"])["Attributes"]
            for s in found
        ]


def redrive_policy(endpoint: str, queue: str) -> dict[str, Any]:
    policy: dict[str, Any] = json.loads(
        queue_attributes(endpoint, queue, ["RedrivePolicy"])["RedrivePolicy"]
    )
    return policy


class Recorder:
    """An 8.x consumer that takes every message and records its payload."""

    def __init__(self, delay: float = 0.0) -> None:
        self.lock = threading.Lock()
        self.payloads: list[Any] = []

        @consumer(name="recorder")
        def record(message: Message) -> None:
            with self.lock:
                self.payloads.append(message.body)
            if delay:
                time.sleep(delay)  # lets the 7.x consumer beside it take its share

        self.consumer = record

    def got(self) -> list[Any]:
        with self.lock:
            return list(self.payloads)


def consume_8x(backend: LocalSQSBackend, queue: str) -> tuple[list[Any], DispatchStats]:
    """Run an 8.x dispatcher until the queue is idle; return the payloads and its stats."""
    recorder = Recorder()
    with MessageDispatcher(backend, queue, [recorder.consumer], wait_seconds=1) as dispatcher:
        stats = dispatcher.run_until_idle(idle_seconds=2.0, timeout=60.0)
    return recorder.got(), stats


def assert_clean_stats(stats: DispatchStats) -> None:
    """Every message the 8.x dispatcher received was decoded, accepted and acknowledged."""
    counters = ("undecodable", "unhandled", "failed", "dead_lettered")
    trouble = {name: getattr(stats, name) for name in counters if getattr(stats, name)}
    assert not trouble, f"the 8.x dispatcher: {trouble} ({stats})"
    assert stats.acked == stats.received, stats


def publish_8x(backend: LocalSQSBackend, items: Sequence[tuple[str, str, dict[str, Any]]]) -> None:
    queues, topics = QueuePublisher(backend), TopicPublisher(backend)
    for kind, name, payload in items:
        (queues if kind == "queue" else topics).publish(name, payload)


def interleaved(
    queue: str, topic: str, on_queue: list[dict[str, Any]], on_topic: list[dict[str, Any]]
) -> list[tuple[str, str, dict[str, Any]]]:
    """Queue and topic items, alternating."""
    items: list[tuple[str, str, dict[str, Any]]] = []
    for q, t in zip(on_queue, on_topic, strict=True):
        items += [("queue", queue, q), ("topic", topic, t)]
    return items


# ------------------------------------------------------------------- tests
def test_a_8x_consumer_reads_what_7x_published(
    melange7: Melange7, backends: Any, names: ResourceNames, endpoint: str
) -> None:
    queue, dlq, topic = names.queue(), names.queue("dlq"), names.topic()
    melange7.init(queue, dlq, [topic])
    on_queue, on_topic = payloads("7x-queue"), payloads("7x-topic")
    melange7.publish(interleaved(queue, topic, on_queue, on_topic))

    got, stats = consume_8x(backends(), queue)  # no option: 8.x reads 7.x's format always

    assert_same_payloads(got, on_queue + on_topic, "8.x consumer of 7.x messages")
    assert_clean_stats(stats)
    assert_empty(endpoint, queue, dlq)


@pytest.mark.parametrize("created_by", ["7.x", "8.x compatible_with_7x"])
def test_b_7x_consumer_reads_what_8x_published_compatible_with_7x(
    created_by: str, melange7: Melange7, backends: Any, names: ResourceNames, endpoint: str
) -> None:
    queue, dlq, topic = names.queue(), names.queue("dlq"), names.topic()
    backend = backends(compatible_with_7x=True)
    if created_by == "7.x":
        melange7.init(queue, dlq, [topic])
    else:
        MessagingBackendFactory(backend).init_queue(queue, [topic], dead_letter_queue_name=dlq)
        (subscription,) = subscriptions(endpoint, topic)
        assert subscription["RawMessageDelivery"] == "false"  # 7.x reads SNS's envelope only
    on_queue, on_topic = payloads("8x-queue"), payloads("8x-topic")
    publish_8x(backend, interleaved(queue, topic, on_queue, on_topic))

    run = melange7.consume(queue, expect=2 * N)

    assert run.errors == []
    assert_same_payloads(run.handled, on_queue + on_topic, "7.x consumer of 8.x messages")
    assert run.of("done")[0]["reason"] == "expected"
    assert_empty(endpoint, queue, dlq)


def test_c_8x_init_queue_in_the_middle_keeps_7x_consumers_working(
    melange7: Melange7, backends: Any, names: ResourceNames, endpoint: str
) -> None:
    queue, dlq, topic = names.queue(), names.queue("dlq"), names.topic()
    melange7.init(queue, dlq, [topic])
    before = payloads("7x-topic-before")
    melange7.publish([("topic", topic, p) for p in before])

    backend = backends(compatible_with_7x=True)
    MessagingBackendFactory(backend).init_queue(queue, [topic], dead_letter_queue_name=dlq)

    (subscription,) = subscriptions(endpoint, topic)  # still one: no second copy per message
    assert subscription["RawMessageDelivery"] == "false"
    policy = redrive_policy(endpoint, queue)
    assert int(policy["maxReceiveCount"]) == MAX_RECEIVE_COUNT_7X
    assert policy["deadLetterTargetArn"].endswith(f":{dlq}")
    after_7x = payloads("7x-topic-after")
    melange7.publish([("topic", topic, p) for p in after_7x])
    on_topic_8x, on_queue_8x = payloads("8x-topic"), payloads("8x-queue")
    publish_8x(backend, interleaved(queue, topic, on_queue_8x, on_topic_8x))

    expected = before + after_7x + on_topic_8x + on_queue_8x
    run = melange7.consume(queue, expect=len(expected))

    assert run.errors == []
    assert_same_payloads(run.handled, expected, "7.x consumer after the 8.x re-init")
    assert_empty(endpoint, queue, dlq)


def test_d_mixed_producers_and_consumers_on_one_queue(
    melange7: Melange7, backends: Any, names: ResourceNames, endpoint: str
) -> None:
    queue, dlq, topic = names.queue(), names.queue("dlq"), names.topic()
    melange7.init(queue, dlq, [topic])
    from_7x = interleaved(queue, topic, payloads("7x-queue"), payloads("7x-topic"))
    from_8x = interleaved(queue, topic, payloads("8x-queue"), payloads("8x-topic"))
    expected = [payload for _, _, payload in from_7x + from_8x]

    consumer_7x = melange7.start_consumer(queue)
    recorder = Recorder(delay=0.02)
    dispatcher = MessageDispatcher(backends(), queue, [recorder.consumer], wait_seconds=1)
    try:
        consumer_7x.wait_for("ready")
        dispatcher.start()
        failures: list[BaseException] = []

        def produce_7x() -> None:
            try:
                melange7.publish(from_7x)
            except BaseException as error:  # pytest.fail's exception too: re-raised below
                failures.append(error)

        producer_7x = threading.Thread(target=produce_7x, daemon=True)
        producer_7x.start()
        publish_8x(backends(compatible_with_7x=True), from_8x)
        producer_7x.join(60)
        assert not producer_7x.is_alive(), "the 7.x producer did not finish"
        if failures:
            raise failures[0]

        wanted = {canonical(p) for p in expected}
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            handled = {canonical(p) for p in recorder.got() + consumer_7x.handled()}
            if wanted <= handled:
                break
            time.sleep(0.1)
    finally:
        run_7x = consumer_7x.stop()
        dispatcher.stop(timeout=30)

    got_7x, got_8x = run_7x.handled, recorder.got()
    assert run_7x.errors == [], run_7x.stderr
    # At least once: a message either side took is not taken again, except after a failure.
    assert_same_payloads(got_7x + got_8x, expected, "7.x and 8.x consumers", duplicates=True)
    split = f"7.x consumer: {len(got_7x)} messages, 8.x consumer: {len(got_8x)}"
    assert got_7x and got_8x, f"the run was not mixed ({split})"
    assert_clean_stats(dispatcher.stats.snapshot())
    assert_empty(endpoint, queue, dlq)


def test_e_after_the_last_7x_consumer_init_queue_switches_to_raw_delivery(
    melange7: Melange7, backends: Any, names: ResourceNames, endpoint: str
) -> None:
    queue, dlq, topic = names.queue(), names.queue("dlq"), names.topic()
    melange7.init(queue, dlq, [topic])
    enveloped_7x = payloads("7x-topic-enveloped")
    melange7.publish([("topic", topic, p) for p in enveloped_7x])
    enveloped_8x = payloads("8x-topic-enveloped")
    publish_8x(backends(compatible_with_7x=True), [("topic", topic, p) for p in enveloped_8x])

    backend = backends()  # compatible_with_7x off: no 7.x consumer is left
    MessagingBackendFactory(backend).init_queue(queue, [topic], dead_letter_queue_name=dlq)
    (subscription,) = subscriptions(endpoint, topic)
    assert subscription["RawMessageDelivery"] == "true"

    # 7.x producers may still run: their topic messages now arrive raw.
    raw_7x, queue_7x = payloads("7x-topic-raw"), payloads("7x-queue")
    melange7.publish(interleaved(queue, topic, queue_7x, raw_7x))
    raw_8x, queue_8x = payloads("8x-topic-raw"), payloads("8x-queue")
    publish_8x(backend, interleaved(queue, topic, queue_8x, raw_8x))

    got, stats = consume_8x(backend, queue)

    expected = enveloped_7x + enveloped_8x + raw_7x + queue_7x + raw_8x + queue_8x
    assert_same_payloads(got, expected, "8.x consumer after the switch to raw delivery")
    assert_clean_stats(stats)
    assert_empty(endpoint, queue, dlq)


@pytest.mark.parametrize("consumer_version", ["8.x", "7.x"])
def test_f_payload_shaped_like_7x_queue_wrapper_arrives_as_sent(
    consumer_version: str,
    melange7: Melange7,
    backends: Any,
    names: ResourceNames,
    endpoint: str,
) -> None:
    """``{"Message": "..."}`` is 7.x's queue wrapper: a payload of that shape is not unwrapped."""
    queue, dlq, topic = names.queue(), names.queue("dlq"), names.topic()
    melange7.init(queue, dlq, [topic])
    sent = {
        (sender, kind): {"Message": f"sent by {sender} to the {kind}"}
        for sender in ("7.x", "8.x")
        for kind in ("queue", "topic")
    }
    melange7.publish(
        [("queue", queue, sent["7.x", "queue"]), ("topic", topic, sent["7.x", "topic"])]
    )
    publish_8x(
        backends(compatible_with_7x=True),
        [("queue", queue, sent["8.x", "queue"]), ("topic", topic, sent["8.x", "topic"])],
    )

    if consumer_version == "8.x":
        got, stats = consume_8x(backends(), queue)
        assert_same_payloads(got, list(sent.values()), "8.x consumer")
        assert_clean_stats(stats)
    else:
        run = melange7.consume(queue, expect=len(sent))
        assert run.errors == []
        assert_same_payloads(run.handled, list(sent.values()), "7.x consumer")
    assert_empty(endpoint, queue, dlq)


def test_missing_7x_venv_fails_with_how_to_build_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without the venv the tests fail, naming `make test`; they never skip."""
    monkeypatch.setattr(sys.modules[__name__], "MELANGE7_STAMP", tmp_path / "absent")
    with pytest.raises(pytest.fail.Exception, match=r"`make test` builds it") as failed:
        require_melange7_venv()
    assert "never skip" in str(failed.value)
