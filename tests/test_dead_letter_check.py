"""MessagingBackend.check_dead_letter: the dead-letter rules every broker shares."""

from __future__ import annotations

import pytest

from melange.backends.memory import MemoryBackend
from melange.exceptions import InvalidName, InvalidTopology
from melange.topology import DeadLetterPolicy, QueueSpec

WORDING = {"broker": "TheBroker", "receive_count_setting": "maxTries"}


def test_no_policy_and_a_good_one_pass() -> None:
    backend = MemoryBackend()
    backend.check_dead_letter(QueueSpec("q"), **WORDING)
    spec = QueueSpec("q", dead_letter=DeadLetterPolicy("q-dlq", 1000))
    backend.check_dead_letter(spec, **WORDING)


def test_own_dead_letter_queue_is_refused() -> None:
    spec = QueueSpec("q", dead_letter=DeadLetterPolicy("q"))
    with pytest.raises(InvalidTopology, match="queue 'q' cannot be its own dead-letter queue:"):
        MemoryBackend().check_dead_letter(spec, **WORDING)


def test_case_insensitive_brokers_say_why_two_names_are_one() -> None:
    spec = QueueSpec("q", dead_letter=DeadLetterPolicy("Q"))
    MemoryBackend().check_dead_letter(spec, **WORDING)  # distinct names by default
    with pytest.raises(InvalidTopology, match=r"\(TheBroker names compare case-insensitively\)"):
        MemoryBackend().check_dead_letter(spec, **WORDING, case_insensitive=True)


@pytest.mark.parametrize("count", [0, 1001])
def test_max_receive_count_out_of_range_names_the_broker_setting(count: int) -> None:
    spec = QueueSpec("q", dead_letter=DeadLetterPolicy("d", count))
    with pytest.raises(
        InvalidTopology,
        match=rf"queue 'q': max_receive_count must be from 1 to 1000 on TheBroker \(maxTries\), "
        rf"got {count}",
    ):
        MemoryBackend().check_dead_letter(spec, **WORDING)


def test_the_dead_letter_queue_is_of_the_queues_kind_unless_any_kind() -> None:
    spec = QueueSpec("q.fifo", fifo=True, dead_letter=DeadLetterPolicy("d"))
    with pytest.raises(InvalidName, match=r"dead-letter queue name must end with '\.fifo'"):
        MemoryBackend().check_dead_letter(spec, **WORDING)
    MemoryBackend().check_dead_letter(spec, **WORDING, any_kind=True)
    bad = QueueSpec("q", dead_letter=DeadLetterPolicy("bad name!"))
    with pytest.raises(InvalidName, match="'bad name!'"):
        MemoryBackend().check_dead_letter(bad, **WORDING, any_kind=True)
