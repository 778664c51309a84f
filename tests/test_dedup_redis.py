"""RedisDedupCache against the real Redis server on 127.0.0.1:6379 (never a fake).

The server is started by ``.ci/ensure-redis`` (``.ci/run`` calls it). When it is
not reachable these tests fail, with the command to run; they are never skipped.
Each test uses a key prefix of its own and deletes its keys afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from test_dedup import DedupCacheContract

from melange.dedup import RedisDedupCache
from melange.exceptions import BackendUnavailable, BrokerError, ConfigurationError

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="module")
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        if os.environ.get("CI") == "true":
            hint = ".ci/run should have started it with .ci/ensure-redis: see that step's output"
        else:
            hint = "start it with .ci/ensure-redis (these tests need the real server)"
        pytest.fail(f"Redis is not reachable at {REDIS_URL} ({exc}); {hint}", pytrace=False)
    yield client
    client.close()


@pytest.fixture
def prefix(redis_client: redis.Redis) -> Iterator[str]:
    prefix = f"melange-test:{uuid.uuid4().hex}:"
    yield prefix
    keys = list(redis_client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        redis_client.delete(*keys)


@pytest.fixture
def make_cache(prefix: str) -> Iterator[Callable[..., RedisDedupCache]]:
    made: list[RedisDedupCache] = []

    def make(**options: object) -> RedisDedupCache:
        options.setdefault("prefix", prefix)
        if "client" not in options:
            options.setdefault("url", REDIS_URL)
        cache = RedisDedupCache(**options)  # type: ignore[arg-type]
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.close()


class TestRedisDedupCache(DedupCacheContract):
    @pytest.fixture
    def dedup_cache(self, make_cache: Callable[..., RedisDedupCache]) -> RedisDedupCache:
        return make_cache()

    @pytest.fixture
    def pass_time(self) -> Callable[[float], None]:
        # Redis expires keys on its own clock; a little extra covers the round trips.
        return lambda seconds: time.sleep(seconds + 0.02)


# ------------------------------------------------------------ storage layout


def test_claim_is_stored_with_a_token_and_a_millisecond_expiry(
    make_cache: Callable[..., RedisDedupCache], redis_client: redis.Redis, prefix: str
) -> None:
    cache = make_cache()
    assert cache.claim("orders:m1", 30) == "claimed"
    value = redis_client.get(f"{prefix}orders:m1")
    assert isinstance(value, bytes)
    assert value.startswith(b"claimed:")
    assert value.endswith(f":{os.getpid()}".encode())
    assert 29_000 < redis_client.pttl(f"{prefix}orders:m1") <= 30_000

    cache.complete("orders:m1", 3600)
    assert redis_client.get(f"{prefix}orders:m1") == b"done"
    assert 3_599_000 < redis_client.pttl(f"{prefix}orders:m1") <= 3_600_000


def test_sub_millisecond_ttl_is_rounded_up_not_refused(
    make_cache: Callable[..., RedisDedupCache], redis_client: redis.Redis, prefix: str
) -> None:
    cache = make_cache()
    assert cache.claim("c:m1", 0.0001) == "claimed"  # PX 0 would be an error in Redis
    time.sleep(0.01)
    assert cache.claim("c:m1", 30) == "claimed"


def test_keys_live_under_the_prefix_only(
    make_cache: Callable[..., RedisDedupCache], redis_client: redis.Redis, prefix: str
) -> None:
    make_cache().claim("c:m1", 30)
    assert redis_client.exists("c:m1") == 0
    assert redis_client.exists(f"{prefix}c:m1") == 1
    assert make_cache().prefix == prefix


# -------------------------------------------------- several cache instances


def test_release_by_another_instance_keeps_the_holders_claim(
    make_cache: Callable[..., RedisDedupCache],
) -> None:
    holder, other = make_cache(), make_cache()
    assert holder.claim("c:m1", 30) == "claimed"
    assert other.claim("c:m1", 30) == "busy"
    other.release("c:m1")
    assert other.claim("c:m1", 30) == "busy"
    holder.release("c:m1")
    assert other.claim("c:m1", 30) == "claimed"


def test_renew_by_another_instance_leaves_the_holders_expiry(
    make_cache: Callable[..., RedisDedupCache], redis_client: redis.Redis, prefix: str
) -> None:
    holder, other = make_cache(), make_cache()
    assert holder.claim("c:m1", 30) == "claimed"
    assert other.renew("c:m1", 600) is False
    assert redis_client.pttl(f"{prefix}c:m1") <= 30_000
    assert holder.renew("c:m1", 600) is True
    assert 599_000 < redis_client.pttl(f"{prefix}c:m1") <= 600_000


def test_late_release_does_not_drop_the_next_workers_claim(
    make_cache: Callable[..., RedisDedupCache],
) -> None:
    # The first worker's claim expired (it was too slow); a second worker claimed the
    # message; the first then fails and releases: the second's claim must survive.
    slow, second = make_cache(), make_cache()
    assert slow.claim("c:m1", 0.1) == "claimed"
    time.sleep(0.15)
    assert second.claim("c:m1", 30) == "claimed"
    slow.release("c:m1")
    assert slow.claim("c:m1", 30) == "busy"


def test_release_does_not_drop_another_instances_completion(
    make_cache: Callable[..., RedisDedupCache],
) -> None:
    first, second = make_cache(), make_cache()
    assert first.claim("c:m1", 30) == "claimed"
    second.complete("c:m1", 30)
    first.release("c:m1")
    assert second.claim("c:m1", 30) == "done"


_CLAIMING_PROCESS = """
import sys
from melange.dedup import RedisDedupCache

url, prefix, key, ttl = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
cache = RedisDedupCache(url=url, prefix=prefix)
cache.release("warm-up")  # connect and load the script before the start signal
print("ready", flush=True)
sys.stdin.readline()
print(cache.claim(key, ttl), flush=True)
if sys.argv[5:] == ["hang"]:
    sys.stdin.readline()  # holds its claim until killed
"""


def _start_claimers(count: int, prefix: str, key: str, ttl: float, *extra: str) -> list[Any]:
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _CLAIMING_PROCESS, REDIS_URL, prefix, key, str(ttl), *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    for process in processes:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
    for process in processes:  # all are connected and waiting: start them together
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    return processes


def test_processes_claiming_one_key_exactly_one_wins(
    redis_client: redis.Redis, prefix: str
) -> None:
    processes = _start_claimers(4, prefix, "orders:m1", 30)
    results = {}
    for process in processes:
        out, _ = process.communicate(timeout=30)
        assert process.returncode == 0
        results[process.pid] = out.strip()
    assert sorted(results.values()) == ["busy", "busy", "busy", "claimed"]
    # The stored claim is the winner's own: its token ends with the winner's pid.
    winner = next(pid for pid, result in results.items() if result == "claimed")
    stored = redis_client.get(f"{prefix}orders:m1")
    assert isinstance(stored, bytes)
    assert stored.endswith(f":{winner}".encode())


def test_a_crashed_workers_claim_expires_and_the_message_is_handled_again(
    make_cache: Callable[..., RedisDedupCache], prefix: str
) -> None:
    claim_ttl = 1.0  # generous: the checks below must run before it lapses, even on a busy host
    (crashing,) = _start_claimers(1, prefix, "orders:m1", claim_ttl, "hang")
    assert crashing.stdout is not None
    assert crashing.stdout.readline().strip() == "claimed"
    os.kill(crashing.pid, signal.SIGKILL)
    crashing.communicate(timeout=30)
    survivor = make_cache()
    assert survivor.claim("orders:m1", 30) == "busy"
    time.sleep(claim_ttl + 0.05)
    assert survivor.claim("orders:m1", 30) == "claimed"


# ---------------------------------------------------------------- clients


def test_a_given_client_is_used_and_left_open(
    make_cache: Callable[..., RedisDedupCache], redis_client: redis.Redis, prefix: str
) -> None:
    client = redis.Redis(host="127.0.0.1", port=6379, db=0, decode_responses=True)
    cache = make_cache(client=client)
    assert repr(cache) == f"RedisDedupCache(url='redis://127.0.0.1:6379/0', prefix={prefix!r})"
    assert cache.claim("c:m1", 30) == "claimed"
    assert cache.claim("c:m1", 30) == "busy"  # str replies (decode_responses) are understood
    cache.complete("c:m1", 30)
    assert cache.claim("c:m1", 30) == "done"
    cache.close()
    assert client.ping() is True
    client.close()


def test_a_foreign_value_under_the_prefix_is_a_configuration_error(
    make_cache: Callable[..., RedisDedupCache], redis_client: redis.Redis, prefix: str
) -> None:
    redis_client.set(f"{prefix}c:m1", "someone else's session data")
    with pytest.raises(ConfigurationError, match="prefix of its own") as caught:
        make_cache().claim("c:m1", 30)
    assert "session data" not in str(caught.value)


def test_a_redis_refusal_is_a_broker_error_with_its_code(
    make_cache: Callable[..., RedisDedupCache], redis_client: redis.Redis, prefix: str
) -> None:
    redis_client.rpush(f"{prefix}c:m1", "not a string")
    with pytest.raises(BrokerError, match="WRONGTYPE") as caught:
        make_cache().claim("c:m1", 30)
    assert caught.value.broker_code == "WRONGTYPE"


# ---------------------------------------------------- errors and passwords


def _full_text(error: BaseException) -> str:
    """Everything a log would show for ``error``, chained exceptions included."""
    return "".join(traceback.format_exception(type(error), error, error.__traceback__))


def test_unreachable_server_is_backend_unavailable_without_the_password(
    make_cache: Callable[..., RedisDedupCache],
) -> None:
    password = "pa55-w0rd-never-shown"
    cache = make_cache(url=f"redis://app:{password}@127.0.0.1:1/0", socket_timeout=2)
    assert password not in repr(cache)
    for operation in (
        lambda: cache.claim("c:m1", 30),
        lambda: cache.complete("c:m1", 30),
        lambda: cache.release("c:m1"),
    ):
        with pytest.raises(BackendUnavailable, match=r"redis://app:\*\*\*@127\.0\.0\.1:1/0"):
            operation()
    with pytest.raises(BackendUnavailable) as caught:
        cache.claim("c:m1", 30)
    assert "unavailable" in str(caught.value)
    assert password not in _full_text(caught.value)


def test_rejected_credentials_are_backend_unavailable_without_the_password(
    make_cache: Callable[..., RedisDedupCache],
) -> None:
    # The real server refuses an unknown ACL user: the authentication path, end to end.
    password = "wr0ng-pa55-never-shown"
    cache = make_cache(url=f"redis://nosuchuser-melange:{password}@127.0.0.1:6379/0")
    with pytest.raises(BackendUnavailable, match="credentials") as caught:
        cache.claim("c:m1", 30)
    assert "AuthenticationError" in str(caught.value)
    assert password not in _full_text(caught.value)


def test_query_string_password_is_not_shown_either(
    make_cache: Callable[..., RedisDedupCache],
) -> None:
    password = "qu3ry-pa55-never-shown"
    cache = make_cache(url=f"redis://127.0.0.1:1/0?password={password}", socket_timeout=2)
    with pytest.raises(BackendUnavailable) as caught:
        cache.claim("c:m1", 30)
    assert password not in _full_text(caught.value)
    assert password not in repr(cache)
