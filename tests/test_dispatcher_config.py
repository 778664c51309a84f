"""DispatcherConfig: one frozen, validated set of options for both drivers."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from melange.aio import AsyncMessageDispatcher
from melange.backends.memory import MemoryBackend
from melange.consumers import consumer
from melange.dispatcher import MessageDispatcher
from melange.dispatcher_config import DispatcherConfig, DispatcherOptions
from melange.exceptions import ConfigurationError
from melange.message import Message
from melange.observability import Hooks
from melange.retry import RetryPolicy


@consumer
def noop(message: Message) -> None:
    pass


def test_the_keywords_type_checkers_see_are_the_config_fields() -> None:
    fields = [f.name for f in dataclasses.fields(DispatcherConfig)]
    assert list(DispatcherOptions.__annotations__) == fields


def test_defaults_are_the_documented_ones() -> None:
    config = DispatcherConfig(hooks=Hooks())
    assert (config.workers, config.batch_size, config.concurrent_receives) == (None, 10, 1)
    assert config.capacity == 10
    assert DispatcherConfig(batch_size=5, concurrent_receives=3).capacity == 15
    assert config.wait_seconds == 5.0 and config.grace_period == 30.0
    assert config.retry == RetryPolicy() and config.reconnect_backoff.max_delay == 5.0
    assert (config.on_undecodable, config.on_unhandled) == ("dead_letter", "dead_letter")
    assert config.close_backend is False


def test_a_config_is_frozen_and_replace_checks_again() -> None:
    config = DispatcherConfig(batch_size=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.batch_size = 5  # type: ignore[misc]
    assert config.replace(batch_size=6).batch_size == 6
    assert config.batch_size == 4
    with pytest.raises(ConfigurationError, match="batch_size must be a whole number >= 1"):
        config.replace(batch_size=0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_size": 0}, "batch_size must be a whole number >= 1, got 0"),
        ({"workers": True}, "workers must be a whole number >= 1"),
        ({"wait_seconds": -1}, "wait_seconds must be a number of seconds >= 0"),
        ({"grace_period": float("inf")}, "grace_period must be a number of seconds"),
        ({"dedup_ttl": 0}, "dedup_ttl must be a positive number"),
        ({"on_unhandled": "drop"}, "on_unhandled must be one of 'dead_letter', 'ack', 'leave'"),
        ({"retry": 3}, "retry must be a melange RetryPolicy, got int"),
        ({"hooks": object()}, "hooks must be a melange Hooks, got object"),
        ({"close_backend": "no"}, "close_backend must be True or False, got 'no'"),
        ({"close_backend": 0.5}, "close_backend must be True or False, got 0.5"),
        ({"dedup": 42}, "dedup must be a melange DedupCache .e.g. MemoryDedupCache.. or Redis"),
        ({"dedup": "redis://localhost"}, "dedup must be a melange DedupCache"),
        ({"visibilty": 1}, "unknown dispatcher option 'visibilty'"),
        ({"wait_second": 1}, "did you mean 'wait_seconds'"),
    ],
)
def test_every_bad_option_is_named_before_anything_starts(
    options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace("'", "'")):
        DispatcherConfig(**options)  # type: ignore[arg-type]
    backend = MemoryBackend()
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(")):
        MessageDispatcher(backend, "q", [noop], **options)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(")):
        AsyncMessageDispatcher(backend, "q", [noop], **options)  # type: ignore[arg-type]


def test_both_drivers_take_the_same_config_object() -> None:
    config = DispatcherConfig(workers=3, batch_size=2, grace_period=1.0)
    backend = MemoryBackend()
    threads = MessageDispatcher(backend, "q", [noop], config=config)
    tasks = AsyncMessageDispatcher(backend, "q", [noop], config=config)
    assert threads.config is config and tasks.config is config
    assert threads.workers == 3 and tasks.concurrency == 3
    assert MessageDispatcher(backend, "q", [noop], workers=3, batch_size=2).config.capacity == 3


def test_config_and_keywords_together_are_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"config.replace\(batch_size=...\)"):
        MessageDispatcher(MemoryBackend(), "q", [noop], config=DispatcherConfig(), batch_size=3)
    with pytest.raises(ConfigurationError, match="must be a melange DispatcherConfig"):
        MessageDispatcher(MemoryBackend(), "q", [noop], config={"batch_size": 3})  # type: ignore[arg-type]


def test_asyncio_concurrency_is_the_workers_option() -> None:
    backend = MemoryBackend()
    assert AsyncMessageDispatcher(backend, "q", [noop], concurrency=7).config.workers == 7
    with pytest.raises(ConfigurationError, match="concurrency or workers, not both"):
        AsyncMessageDispatcher(backend, "q", [noop], concurrency=7, workers=7)
    with pytest.raises(ConfigurationError, match="concurrency must be a whole number >= 1"):
        AsyncMessageDispatcher(backend, "q", [noop], concurrency=0)


def test_the_config_runs_a_dispatcher_on_each_driver() -> None:
    """A config is behaviour, not decoration: its batch size reaches the receive calls."""
    backend = MemoryBackend()
    from melange.backends.base import OutgoingMessage
    from melange.topology import QueueSpec

    backend.declare_queue(QueueSpec("q"))
    sizes: list[int] = []
    original = backend.receive

    def receive(queue_name: str, max_messages: int = 10, wait_seconds: float = 0.0):  # type: ignore[no-untyped-def]
        sizes.append(max_messages)
        return original(queue_name, max_messages, wait_seconds)

    backend.receive = receive  # type: ignore[method-assign]
    backend.publish("q", [OutgoingMessage(body=b'"x"') for _ in range(4)])
    config = DispatcherConfig(batch_size=3, wait_seconds=0.05, hooks=Hooks())
    stats = MessageDispatcher(backend, "q", [noop], config=config).run_until_idle(0.2, stop=True)
    assert stats.handled == 4 and max(sizes) == 3
    sizes.clear()
    backend.publish("q", [OutgoingMessage(body=b'"x"') for _ in range(4)])

    async def main() -> int:
        dispatcher = AsyncMessageDispatcher(backend, "q", [noop], config=config)
        return (await dispatcher.run_until_idle(0.2, stop=True)).handled

    assert asyncio.run(main()) == 4 and max(sizes) == 3


def test_the_8_0_option_attributes_still_read_with_a_deprecation_warning() -> None:
    backend = MemoryBackend()
    for dispatcher in (
        MessageDispatcher(backend, "q", [noop], grace_period=3.0),
        AsyncMessageDispatcher(backend, "q", [noop], grace_period=3.0),
    ):
        with pytest.warns(DeprecationWarning, match=r"read dispatcher.config.grace_period"):
            assert dispatcher.grace_period == 3.0  # type: ignore[attr-defined]
        assert dispatcher.workers == 10 and dispatcher.hooks is dispatcher.config.hooks
        with pytest.raises(AttributeError):
            dispatcher.grace_periods  # type: ignore[attr-defined]  # noqa: B018
