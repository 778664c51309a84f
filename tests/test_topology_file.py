from __future__ import annotations

from pathlib import Path

import pytest

from melange import MessagingBackendFactory
from melange.backends.memory import MemoryBackend
from melange.backends.registry import KnownBackend
from melange.exceptions import (
    BackendNotFound,
    ConfigurationError,
    InvalidName,
    InvalidTopology,
)
from melange.topology import DeadLetterPolicy, QueueSpec
from melange.topology_file import QueueEntry, TopicEntry, load_topology

PAYMENTS = """
[backend]
name = "memory"
options = { max_message_size = 1024 }

[[topics]]
name = "payments"

[[queues]]
name = "payment-updates"
topics = ["payments", "refunds"]
dead_letter_queue = "payment-updates-dlq"
max_receive_count = 3
visibility_timeout = 30
subscription_filter = { event = ["paid", "refunded"] }

[[queues]]
name = "audit"
topics = ["payments"]
dead_letter_queue = "payment-updates-dlq"

[[queues]]
name = "payment-updates-dlq"
visibility_timeout = 120
"""


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The backend choice must come from the file or the test, not the machine.
    monkeypatch.delenv("MELANGE_BACKEND", raising=False)
    monkeypatch.chdir(tmp_path)


def write(tmp_path: Path, text: str, name: str = "topology.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture
def factory() -> MessagingBackendFactory:
    return MessagingBackendFactory(MemoryBackend())


def test_load_reads_backend_topics_and_queues(tmp_path: Path) -> None:
    topology = load_topology(write(tmp_path, PAYMENTS))
    assert topology.backend is not None
    assert topology.backend.name == "memory"
    assert dict(topology.backend.options) == {"max_message_size": 1024}
    assert topology.topics == (TopicEntry("payments", {}),)
    assert topology.queues[0] == QueueEntry(
        "payment-updates",
        ("payments", "refunds"),
        "payment-updates-dlq",
        {
            "max_receive_count": 3,
            "visibility_timeout": 30,
            "subscription_filter": {"event": ["paid", "refunded"]},
        },
    )


def test_plan_changes_nothing_and_merges_shared_resources(
    tmp_path: Path, factory: MessagingBackendFactory
) -> None:
    plan = load_topology(write(tmp_path, PAYMENTS)).plan(factory)

    assert [(a.kind, a.target) for a in plan] == [
        ("create_topic", "payments"),
        ("create_topic", "refunds"),
        ("create_queue", "payment-updates-dlq"),
        ("create_queue", "payment-updates"),
        ("create_queue", "audit"),
        ("subscribe", "payments -> payment-updates"),
        ("subscribe", "refunds -> payment-updates"),
        ("subscribe", "payments -> audit"),
    ]
    dlq = next(a.spec for a in plan if a.target == "payment-updates-dlq")
    # The dead-letter queue's own entry wins over the defaults its users would give it.
    assert isinstance(dlq, QueueSpec) and dlq.visibility_timeout == 120
    backend = factory.backend
    assert backend.get_topic("payments") is None
    assert backend.get_queue("payment-updates-dlq") is None


def test_each_declared_queue_keeps_its_own_settings_even_in_a_dead_letter_cycle(
    tmp_path: Path, factory: MessagingBackendFactory
) -> None:
    text = """
[[queues]]
name = "a"
dead_letter_queue = "b"
visibility_timeout = 11
[[queues]]
name = "b"
dead_letter_queue = "a"
visibility_timeout = 22
"""
    plan = load_topology(write(tmp_path, text)).plan(factory)
    specs = {a.target: a.spec for a in plan}
    assert len(plan) == 2
    assert specs["a"] == QueueSpec("a", visibility_timeout=11, dead_letter=DeadLetterPolicy("b", 5))
    assert specs["b"] == QueueSpec("b", visibility_timeout=22, dead_letter=DeadLetterPolicy("a", 5))


def test_apply_creates_everything_then_converges(
    tmp_path: Path, factory: MessagingBackendFactory
) -> None:
    topology = load_topology(write(tmp_path, PAYMENTS))
    applied = topology.apply(factory)
    assert len(applied) == 8

    backend = factory.backend
    queue = backend.get_queue("payment-updates")
    assert queue is not None
    assert queue.dead_letter == DeadLetterPolicy("payment-updates-dlq", 3)
    assert queue.visibility_timeout == 30
    dlq = backend.get_queue("payment-updates-dlq")
    assert dlq is not None and dlq.visibility_timeout == 120
    subscription = backend.get_subscription("refunds", "payment-updates")
    assert subscription is not None
    assert subscription.filter_dict() == {"event": ["paid", "refunded"]}

    again = topology.plan(factory)
    assert len(again) == 0
    assert set(again.unchanged) >= {"payments", "payment-updates", "audit"}


def test_apply_validates_the_whole_file_before_creating_anything(
    tmp_path: Path, factory: MessagingBackendFactory
) -> None:
    path = write(
        tmp_path,
        """
[[topics]]
name = "payments"
[[queues]]
name = "good"
topics = ["payments"]
[[queues]]
name = "bad"
dead_letter_queue = "bad"
""",
    )
    with pytest.raises(InvalidTopology) as info:
        load_topology(path).apply(factory)
    message = str(info.value)
    assert str(path) in message and "[[queues]] 'bad'" in message
    assert "cannot be its own dead-letter queue" in message
    backend = factory.backend
    assert backend.get_topic("payments") is None
    assert backend.get_queue("good") is None


def test_specific_factory_errors_keep_their_class(
    tmp_path: Path, factory: MessagingBackendFactory
) -> None:
    path = write(tmp_path, '[[queues]]\nname = "bad name!"\n')
    with pytest.raises(InvalidName, match="invalid queue name 'bad name!'"):
        load_topology(path).plan(factory)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'queue = "x"\n',
            "the top level has an unknown key 'queue' (did you mean 'queues'?); "
            "accepted keys: backend, topics, queues",
        ),
        (
            '[[queues]]\nname = "q"\nvisiblity_timeout = 3\n',
            "[[queues]] entry #1 ('q') has an unknown key 'visiblity_timeout' "
            "(did you mean 'visibility_timeout'?); accepted keys: name, topics, "
            "dead_letter_queue, max_receive_count, visibility_timeout",
        ),
        (
            '[[topics]]\nname = "t"\npartitions = 3\n',
            "[[topics]] entry #1 ('t') has an unknown key 'partitions'; accepted keys: name, fifo",
        ),
        (
            '[backend]\nname = "memory"\nregion = "eu"\n',
            "[backend] has an unknown key 'region'; accepted keys: name, options",
        ),
        (
            '[[queues]]\nname = "q"\nvisibility_timeout = "30"\n',
            "in [[queues]] entry #1 ('q'), visibility_timeout must be a number, "
            "got '30' (a string)",
        ),
        (
            '[[queues]]\nname = "q"\ndead_letter_queue = "d"\nmax_receive_count = true\n',
            "max_receive_count must be a whole number, got true (a boolean)",
        ),
        (
            '[[queues]]\nname = "q"\ndead_letter_queue = "d"\nmax_receive_count = 2.5\n',
            "max_receive_count must be a whole number, got 2.5 (a number)",
        ),
        (
            '[[queues]]\nname = "q"\ntopics = "payments"\n',
            "topics must be an array, got 'payments' (a string)",
        ),
        (
            '[[queues]]\nname = "q"\ntopics = ["a", 3]\n',
            "topics must be an array of topic names",
        ),
        (
            '[[queues]]\nname = "q"\ntopics = ["a"]\nsubscription_filter = { event = "paid" }\n',
            "subscription_filter.event must be a non-empty array of strings",
        ),
        ('[[topics]]\nname = "t"\nfifo = "yes"\n', "fifo must be true or false"),
        ("[[queues]]\nvisibility_timeout = 3\n", "[[queues]] entry #1 needs a name"),
        ('[[queues]]\nname = ""\n', "name must not be empty"),
        ('[[queues]]\nname = "q"\n[[queues]]\nname = "q"\n', "repeats the name 'q'"),
        ('topics = ["payments"]\n', "[[topics]] entry #1 must be a table, got 'payments'"),
        ("topics = 3\n", "'topics' must be an array of tables"),
        ("[backend]\noptions = {}\n", "[backend] needs a name"),
        ('backend = "memory"\n', "[backend] must be a table"),
        ("[[queues]\n", "is not valid TOML"),
    ],
)
def test_invalid_files_name_the_file_and_the_problem(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(InvalidTopology) as info:
        load_topology(path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_a_file_that_is_not_utf8_is_explained(tmp_path: Path) -> None:
    # tomllib raises UnicodeDecodeError, not TOMLDecodeError: it came out as a traceback.
    path = tmp_path / "latin1.toml"
    path.write_bytes('[[queues]]\nname = "caf\u00e9"\n'.encode("latin-1"))
    with pytest.raises(InvalidTopology) as info:
        load_topology(path)
    assert str(path) in str(info.value) and "must be UTF-8 TOML" in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidTopology, match=r"cannot read topology file .*nope\.toml"):
        load_topology(tmp_path / "nope.toml")


def test_empty_file_is_an_empty_plan(tmp_path: Path, factory: MessagingBackendFactory) -> None:
    plan = load_topology(write(tmp_path, "")).plan(factory)
    assert len(plan) == 0 and plan.describe() == "(nothing to do)"


def test_factory_uses_the_files_backend_and_options(tmp_path: Path) -> None:
    topology = load_topology(write(tmp_path, PAYMENTS))
    backend = topology.factory().backend
    assert backend.name == "memory"
    assert backend.capabilities.max_message_size == 1024
    # Command-line options go on top of the file's.
    assert topology.factory(max_message_size=2048).backend.capabilities.max_message_size == 2048


def test_backend_override_drops_the_files_options(
    tmp_path: Path, uninstalled_backend: KnownBackend
) -> None:
    text = PAYMENTS.replace('name = "memory"', 'name = "sqlite"', 1)
    topology = load_topology(write(tmp_path, text))
    backend = topology.factory("memory").backend
    assert backend.name == "memory"
    assert backend.capabilities.max_message_size == 256 * 1024
    with pytest.raises(BackendNotFound, match=r'pip install "melange\[examplemq\]"'):
        topology.factory("examplemq")


def test_unknown_backend_option_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[backend]\nname = "memory"\noptions = { colour = "red" }\n')
    with pytest.raises(ConfigurationError, match="accepted options: clock, dedup_window"):
        load_topology(path).factory()


def test_without_backend_table_the_configured_backend_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uninstalled_backend: KnownBackend
) -> None:
    topology = load_topology(write(tmp_path, '[[topics]]\nname = "t"\n'))
    assert topology.factory().backend.name == "memory"
    monkeypatch.setenv("MELANGE_BACKEND", uninstalled_backend.name)
    with pytest.raises(BackendNotFound, match=uninstalled_backend.distribution):
        topology.factory()
