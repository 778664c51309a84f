"""melange 7.x's deduplication caches (``melange.infrastructure.cache``) on melange 8's dedup.

``RedisCache`` runs against the real Redis at 127.0.0.1:6379, as
tests/test_dedup_redis.py does (started by ``.ci/ensure-redis``).
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from melange.backends.memory import MemoryBackend
from melange.compat.cache import DeduplicationCache, NullCache, RedisCache, dedup_from_7x
from melange.consumers import consumer
from melange.dedup import MemoryDedupCache, RedisDedupCache
from melange.dispatcher import MessageDispatcher
from melange.dispatcher_config import DispatcherConfig
from melange.exceptions import BackendUnavailable, ConfigurationError
from melange.factory import MessagingBackendFactory
from melange.message import Message
from melange.publishers import QueuePublisher

THIS_FILE = __file__


@pytest.fixture
def deprecations() -> Iterator[list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


@pytest.fixture
def namespace() -> Iterator[str]:
    client = redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(
            f"Redis is not reachable at 127.0.0.1:6379 ({exc}); start it with .ci/ensure-redis"
        )
    name = f"melange-test-7x:{uuid.uuid4().hex}"
    yield name
    keys = list(client.scan_iter(match=f"{name}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def cache(namespace: str, deprecations: list[warnings.WarningMessage]) -> Iterator[RedisCache]:
    made = RedisCache(host="127.0.0.1", port=6379, db=0, namespace=namespace, expire=60)
    yield made
    made.close()


def test_redis_cache_warns_naming_the_8x_form(
    namespace: str, deprecations: list[warnings.WarningMessage]
) -> None:
    RedisCache(host="127.0.0.1", port=6379, namespace=namespace).close()
    [warning] = [w for w in deprecations if issubclass(w.category, DeprecationWarning)]
    assert warning.filename == THIS_FILE
    assert "RedisCache(...) is a melange 7.x form" in str(warning.message)
    assert "melange.dedup.RedisDedupCache(url=" in str(warning.message)
    assert "dedup=cache, dedup_ttl=expire" in str(warning.message)


def test_redis_cache_keeps_the_7x_interface(cache: RedisCache) -> None:
    assert isinstance(cache, DeduplicationCache)
    assert "consumer.m-1" not in cache
    assert cache.get("consumer.m-1") is None
    cache.store("consumer.m-1", "consumer.m-1")
    assert "consumer.m-1" in cache
    assert cache.get("consumer.m-1") == "consumer.m-1"


def test_dedup_from_a_redis_cache_is_a_redis_dedup_cache_with_its_expire(cache: RedisCache) -> None:
    options = dedup_from_7x(cache)
    assert options is not None
    dedup = options["dedup"]
    assert isinstance(dedup, RedisDedupCache)
    assert options["dedup_ttl"] == 60
    assert dedup.prefix.startswith(cache.namespace + ":")
    assert dedup.claim("c:m-1", 30) == "claimed"
    assert dedup.claim("c:m-1", 30) == "busy"
    dedup.complete("c:m-1", 30)
    assert dedup.claim("c:m-1", 30) == "done"
    assert DispatcherConfig(**options).dedup is dedup


def test_a_dispatcher_with_the_7x_cache_handles_a_redelivered_message_once(
    cache: RedisCache,
) -> None:
    backend = MemoryBackend()
    MessagingBackendFactory(backend).init_queue("q")
    handled: list[str] = []

    @consumer
    def record(body: dict[str, Any]) -> None:
        handled.append(body["n"])

    options = dedup_from_7x(cache)
    assert options is not None
    publisher = QueuePublisher(backend)
    publisher.publish("q", Message({"n": "1"}))
    [received] = backend.receive("q")
    # The first delivery was handled by another worker, which marked it done.
    producer_id = received.attributes["melange.id"]  # melange 8 keys by the producer id
    options["dedup"].complete(f"{record.name}:{producer_id}", 60)
    backend.nack([received])
    MessageDispatcher(backend, "q", [record], wait_seconds=0.1, **options).run_until_idle(
        0.2, 5, stop=True
    )
    assert handled == []  # the redelivery was recognised
    assert backend.queue_depth("q") == (0, 0, 0)  # and acknowledged


def test_the_redis_url_carries_the_password_but_no_message_does(
    deprecations: list[warnings.WarningMessage],
) -> None:
    cache = RedisCache(host="127.0.0.1", port=1, password="s3cret/pw", namespace="x")
    assert cache.url == "redis://:s3cret%2Fpw@127.0.0.1:1/0"
    assert "s3cret" not in repr(cache)
    with pytest.raises(BackendUnavailable) as raised:
        cache.store("k", "v")
    assert "redis://127.0.0.1:1/0" in str(raised.value)
    assert "s3cret" not in str(raised.value)
    assert raised.value.__context__ is None and raised.value.__cause__ is None
    cache.close()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"hots": "localhost"}, "did you mean 'host'"),
        ({"port": "6379"}, "port must be a port number"),
        ({"db": 1.5}, "db must be a database number"),
        ({"expire": 0}, "expire must be > 0"),
        ({"namespace": ""}, "namespace must not be empty"),
        ({"password": b"secret-bytes"}, "password must be a str, got bytes"),
    ],
)
def test_redis_cache_refuses_wrong_keywords(kwargs: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigurationError, match=error) as raised:
        RedisCache(**kwargs)
    assert "secret-bytes" not in str(raised.value)


def test_null_cache_means_no_dedup(deprecations: list[warnings.WarningMessage]) -> None:
    null = NullCache()
    null.store("k", "v")
    assert "k" not in null and null.get("k") is None
    assert dedup_from_7x(null) is None
    assert dedup_from_7x(None) is None
    assert any(
        "NullCache() is a melange 7.x form" in str(w.message) and "without dedup=" in str(w.message)
        for w in deprecations
    )


class DictCache:
    """A 7.x application's own DeduplicationCache."""

    def __init__(self) -> None:
        self.items: dict[str, Any] = {}
        self.expires: list[int | None] = []

    def store(self, key: str, value: Any, expire: int | None = None) -> None:
        self.items[key] = value
        self.expires.append(expire)

    def get(self, key: str) -> Any:
        return self.items.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self.items


def test_an_applications_own_7x_cache_runs_behind_the_claim_protocol() -> None:
    mine = DictCache()
    options = dedup_from_7x(mine)
    assert options is not None
    dedup = options["dedup"]
    assert dedup.claim("c:m", 10) == "claimed"
    dedup.release("c:m")
    assert dedup.claim("c:m", 10) == "claimed"
    dedup.complete("c:m", 2.5)
    assert mine.items == {"c:m": "c:m"} and mine.expires == [3]
    assert dedup.claim("c:m", 10) == "done"


def test_a_7x_cache_whose_store_takes_key_and_value_only_is_called_as_7x_did() -> None:
    # 7.2.0's dispatcher called cache.store(message_key, message_key): no expire.
    class TwoArgumentCache:
        def __init__(self) -> None:
            self.items: dict[str, Any] = {}

        def store(self, key: str, value: Any) -> None:
            self.items[key] = value

        def get(self, key: str) -> Any:
            return self.items.get(key)

        def __contains__(self, key: str) -> bool:
            return key in self.items

    mine = TwoArgumentCache()
    options = dedup_from_7x(mine)
    assert options is not None
    dedup = options["dedup"]
    assert dedup.claim("c:m", 10) == "claimed"
    dedup.complete("c:m", 2.5)
    assert mine.items == {"c:m": "c:m"}
    assert dedup.claim("c:m", 10) == "done"


def test_a_melange_8_dedup_cache_passes_through() -> None:
    dedup = MemoryDedupCache()
    assert dedup_from_7x(dedup) == {"dedup": dedup}


def test_anything_else_is_refused_naming_the_8x_cache() -> None:
    with pytest.raises(ConfigurationError) as raised:
        dedup_from_7x(object())
    assert "DeduplicationCache (store, get and __contains__)" in str(raised.value)
    assert "RedisDedupCache" in str(raised.value)
