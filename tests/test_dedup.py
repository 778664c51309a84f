"""The dedup caches: the contract every DedupCache keeps, and the in-memory cache.

``DedupCacheContract`` is reused by ``test_dedup_redis.py`` against the real
Redis server, so both caches are held to the same behaviour.
"""

from __future__ import annotations

import functools
import math
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from melange.clock import ManualClock
from melange.dedup import ClaimResult, DedupCache, MemoryDedupCache, RedisDedupCache, _redact_url
from melange.exceptions import BackendClosed, ConfigurationError, MelangeError

TTL = 0.4
"""Seconds; short enough for the Redis run, which waits in real time."""


def race(threads: int, action: Callable[[], ClaimResult]) -> list[ClaimResult]:
    """Run ``action`` in ``threads`` threads released at the same instant; return the results."""
    barrier = threading.Barrier(threads)
    results: list[ClaimResult] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        try:
            barrier.wait(timeout=5)
            result = action()
        except BaseException as exc:  # reported by the test, not lost in the thread
            with lock:
                errors.append(exc)
            return
        with lock:
            results.append(result)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=10)
    assert not errors, errors
    return results


class DedupCacheContract:
    """Behaviour shared by every DedupCache.

    A subclass provides two fixtures: ``dedup_cache`` (a fresh, empty cache) and
    ``pass_time`` (a function that lets at least the given seconds pass for that
    cache: a fake clock's advance, or a real sleep).
    """

    def test_first_claim_wins_and_the_second_is_busy(self, dedup_cache: DedupCache) -> None:
        assert dedup_cache.claim("c:m1", TTL * 10) == "claimed"
        assert dedup_cache.claim("c:m1", TTL * 10) == "busy"

    def test_keys_are_independent(self, dedup_cache: DedupCache) -> None:
        assert dedup_cache.claim("c:m1", TTL * 10) == "claimed"
        assert dedup_cache.claim("c:m2", TTL * 10) == "claimed"
        assert dedup_cache.claim("other-consumer:m1", TTL * 10) == "claimed"

    def test_completed_key_is_done(self, dedup_cache: DedupCache) -> None:
        assert dedup_cache.claim("c:m1", TTL * 10) == "claimed"
        dedup_cache.complete("c:m1", TTL * 10)
        assert dedup_cache.claim("c:m1", TTL * 10) == "done"
        assert dedup_cache.claim("c:m1", TTL * 10) == "done"

    def test_complete_without_a_claim_marks_done(self, dedup_cache: DedupCache) -> None:
        dedup_cache.complete("c:m1", TTL * 10)
        assert dedup_cache.claim("c:m1", TTL * 10) == "done"

    def test_release_lets_a_retry_claim_again(self, dedup_cache: DedupCache) -> None:
        assert dedup_cache.claim("c:m1", TTL * 10) == "claimed"
        dedup_cache.release("c:m1")
        assert dedup_cache.claim("c:m1", TTL * 10) == "claimed"

    def test_release_never_drops_a_completion(self, dedup_cache: DedupCache) -> None:
        assert dedup_cache.claim("c:m1", TTL * 10) == "claimed"
        dedup_cache.complete("c:m1", TTL * 10)
        dedup_cache.release("c:m1")
        assert dedup_cache.claim("c:m1", TTL * 10) == "done"

    def test_release_of_an_unknown_key_does_nothing(self, dedup_cache: DedupCache) -> None:
        dedup_cache.release("c:never-claimed")
        assert dedup_cache.claim("c:never-claimed", TTL * 10) == "claimed"

    def test_claim_expires_after_its_ttl(
        self, dedup_cache: DedupCache, pass_time: Callable[[float], None]
    ) -> None:
        # A crashed worker never releases: its claim must lapse so the message is handled again.
        assert dedup_cache.claim("c:m1", TTL) == "claimed"
        pass_time(TTL * 0.25)
        assert dedup_cache.claim("c:m1", TTL) == "busy"
        pass_time(TTL)
        assert dedup_cache.claim("c:m1", TTL) == "claimed"

    def test_a_renewed_claim_outlives_its_first_ttl(
        self, dedup_cache: DedupCache, pass_time: Callable[[float], None]
    ) -> None:
        # The dispatcher renews a long handler's claims with its lease.
        assert dedup_cache.claim("c:m1", TTL) == "claimed"
        pass_time(TTL * 0.5)
        assert dedup_cache.renew("c:m1", TTL * 2) is True
        pass_time(TTL * 0.75)  # past the first TTL
        assert dedup_cache.claim("c:m1", TTL) == "busy"
        pass_time(TTL * 2)
        assert dedup_cache.claim("c:m1", TTL) == "claimed"

    def test_renew_never_turns_a_completion_or_nothing_into_a_claim(
        self, dedup_cache: DedupCache
    ) -> None:
        assert dedup_cache.renew("c:never-claimed", TTL) is False
        assert dedup_cache.claim("c:never-claimed", TTL * 10) == "claimed"
        dedup_cache.complete("c:done", TTL * 10)
        assert dedup_cache.renew("c:done", TTL) is False
        assert dedup_cache.claim("c:done", TTL * 10) == "done"

    def test_completion_expires_after_its_ttl(
        self, dedup_cache: DedupCache, pass_time: Callable[[float], None]
    ) -> None:
        dedup_cache.complete("c:m1", TTL)
        pass_time(TTL * 0.25)
        assert dedup_cache.claim("c:m1", TTL) == "done"
        pass_time(TTL)
        assert dedup_cache.claim("c:m1", TTL) == "claimed"

    def test_completion_outlives_the_claim_it_replaces(
        self, dedup_cache: DedupCache, pass_time: Callable[[float], None]
    ) -> None:
        assert dedup_cache.claim("c:m1", TTL) == "claimed"
        dedup_cache.complete("c:m1", TTL * 10)
        pass_time(TTL * 1.25)
        assert dedup_cache.claim("c:m1", TTL) == "done"

    def test_eight_threads_claiming_one_key_exactly_one_wins(self, dedup_cache: DedupCache) -> None:
        for round_number in range(10):
            key = f"c:race-{round_number}"
            claim = functools.partial(dedup_cache.claim, key, TTL * 20)
            assert sorted(race(8, claim)) == ["busy"] * 7 + ["claimed"]
            dedup_cache.complete(key, TTL * 20)
            assert race(8, claim) == ["done"] * 8

    @pytest.mark.parametrize("key", ["", None, 42])
    def test_invalid_key_is_refused(self, dedup_cache: DedupCache, key: object) -> None:
        with pytest.raises(ConfigurationError, match="non-empty string"):
            dedup_cache.claim(key, TTL)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="non-empty string"):
            dedup_cache.complete(key, TTL)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="non-empty string"):
            dedup_cache.release(key)  # type: ignore[arg-type]

    @pytest.mark.parametrize("ttl", [0, -1, math.nan, math.inf, True, "30"])
    def test_invalid_ttl_is_refused_and_nothing_is_stored(
        self, dedup_cache: DedupCache, ttl: object
    ) -> None:
        with pytest.raises(ConfigurationError, match="ttl must be a finite number"):
            dedup_cache.claim("c:m1", ttl)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="ttl must be a finite number"):
            dedup_cache.complete("c:m1", ttl)  # type: ignore[arg-type]
        assert dedup_cache.claim("c:m1", TTL * 10) == "claimed"

    def test_close_is_idempotent_and_later_use_is_a_clear_error(
        self, dedup_cache: DedupCache
    ) -> None:
        dedup_cache.close()
        dedup_cache.close()
        with pytest.raises(BackendClosed, match=r"dedup cache.*is closed; cannot claim"):
            dedup_cache.claim("c:m1", TTL)
        with pytest.raises(BackendClosed, match="cannot complete"):
            dedup_cache.complete("c:m1", TTL)
        with pytest.raises(BackendClosed, match="cannot release"):
            dedup_cache.release("c:m1")


# --------------------------------------------------------------------- memory


class TestMemoryDedupCache(DedupCacheContract):
    @pytest.fixture
    def clock(self) -> ManualClock:
        return ManualClock(1000.0)

    @pytest.fixture
    def dedup_cache(self, clock: ManualClock) -> Iterator[MemoryDedupCache]:
        cache = MemoryDedupCache(clock=clock)
        yield cache
        cache.close()

    @pytest.fixture
    def pass_time(self, clock: ManualClock) -> Callable[[float], None]:
        return clock.advance

    def test_expiry_is_exact_on_the_fake_clock(
        self, dedup_cache: MemoryDedupCache, clock: ManualClock
    ) -> None:
        assert dedup_cache.claim("c:m1", 30) == "claimed"
        clock.advance(29.999)
        assert dedup_cache.claim("c:m1", 30) == "busy"
        clock.advance(0.001)
        assert dedup_cache.claim("c:m1", 30) == "claimed"

    def test_a_plain_function_can_be_the_clock(self) -> None:
        now = [0.0]
        cache = MemoryDedupCache(clock=lambda: now[0])
        cache.complete("c:m1", 10)
        now[0] = 9.5
        assert cache.claim("c:m1", 10) == "done"
        now[0] = 10.0
        assert cache.claim("c:m1", 10) == "claimed"

    def test_default_clock_is_real_time(self) -> None:
        cache = MemoryDedupCache()
        assert cache.claim("c:m1", 0.3) == "claimed"
        assert cache.claim("c:m1", 0.3) == "busy"
        threading.Event().wait(0.35)
        assert cache.claim("c:m1", 0.3) == "claimed"

    def test_an_invalid_clock_is_refused(self) -> None:
        with pytest.raises(ConfigurationError, match=r"clock must be a melange\.clock\.Clock"):
            MemoryDedupCache(clock=3.0)  # type: ignore[arg-type]

    def test_expired_entries_are_pruned(
        self, dedup_cache: MemoryDedupCache, clock: ManualClock
    ) -> None:
        for number in range(1000):
            dedup_cache.claim(f"c:m{number}", 10)
        for number in range(500):
            dedup_cache.complete(f"c:m{number}", 20)
        assert len(dedup_cache) == 1000
        clock.advance(10)
        assert len(dedup_cache) == 500
        clock.advance(10)
        dedup_cache.claim("c:new", 10)
        assert len(dedup_cache) == 1

    def test_memory_stays_bounded_when_one_key_is_reused(
        self, dedup_cache: MemoryDedupCache
    ) -> None:
        # Every claim schedules an expiry; a key claimed and released over and over
        # must not grow the schedule without limit (internal state, checked on purpose).
        for _ in range(10_000):
            assert dedup_cache.claim("c:flaky", 3600) == "claimed"
            dedup_cache.release("c:flaky")
        assert len(dedup_cache) == 0
        assert len(dedup_cache._expiries) < 100

    def test_many_threads_and_keys_each_key_claimed_once(
        self, dedup_cache: MemoryDedupCache
    ) -> None:
        keys = [f"c:m{number}" for number in range(300)]
        won: list[str] = []
        lock = threading.Lock()
        barrier = threading.Barrier(8)

        def worker() -> None:
            barrier.wait(timeout=5)
            mine = [key for key in keys if dedup_cache.claim(key, 60) == "claimed"]
            with lock:
                won.extend(mine)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        assert sorted(won) == sorted(keys)

    def test_release_drops_a_claim_taken_by_any_thread(self, dedup_cache: MemoryDedupCache) -> None:
        # One memory cache is one claimant: a claim belongs to the instance, not the thread.
        thread = threading.Thread(target=dedup_cache.claim, args=("c:m1", 60))
        thread.start()
        thread.join()
        dedup_cache.release("c:m1")
        assert dedup_cache.claim("c:m1", 60) == "claimed"

    def test_close_forgets_everything(self, dedup_cache: MemoryDedupCache) -> None:
        dedup_cache.complete("c:m1", 60)
        dedup_cache.close()
        assert len(dedup_cache) == 0

    def test_repr_counts_entries(self, dedup_cache: MemoryDedupCache) -> None:
        dedup_cache.claim("c:m1", 60)
        assert repr(dedup_cache) == "MemoryDedupCache(entries=1)"


def test_dedup_errors_are_melange_errors() -> None:
    cache = MemoryDedupCache()
    with pytest.raises(MelangeError):
        cache.claim("", 1)


# ------------------------------------------------- Redis without a server


def test_missing_redis_package_gives_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ConfigurationError, match=r'pip install "melange\[redis\]"') as caught:
        RedisDedupCache()
    assert isinstance(caught.value.__cause__, ImportError)


def test_redis_takes_a_client_or_a_url_not_both() -> None:
    import redis

    with pytest.raises(ConfigurationError, match="a client or a url, not both"):
        RedisDedupCache(redis.Redis(), url="redis://127.0.0.1:6379/0")


@pytest.mark.parametrize("prefix", ["", None])
def test_redis_needs_a_prefix(prefix: object) -> None:
    with pytest.raises(ConfigurationError, match="non-empty key prefix"):
        RedisDedupCache(prefix=prefix)  # type: ignore[arg-type]


def test_invalid_redis_url_is_refused_without_its_password() -> None:
    with pytest.raises(ConfigurationError, match="invalid Redis URL") as caught:
        RedisDedupCache(url="http://admin:hunter2-secret@cache.internal:6379/0")
    assert "hunter2-secret" not in str(caught.value)
    assert "admin:***@cache.internal:6379" in str(caught.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:s3cr%40t@cache:6379/2", "redis://:***@cache:6379/2"),
        ("rediss://app:s3cret@cache:6380/0", "rediss://app:***@cache:6380/0"),
        ("redis://s3cret@cache:6379", "redis://***@cache:6379"),
        (
            "redis://cache:6379/0?password=s3cret&ssl_cert_reqs=none",
            "redis://cache:6379/0?password=***&ssl_cert_reqs=none",
        ),
        ("unix:///run/redis.sock?db=1", "unix:///run/redis.sock?db=1"),
        ("unix:///run/redis.sock?password=s3cret", "unix:///run/redis.sock?password=***"),
    ],
)
def test_redis_urls_are_shown_without_passwords(url: str, shown: str) -> None:
    assert _redact_url(url) == shown
    expected = f"RedisDedupCache(url={shown!r}, prefix='melange:dedup:')"
    assert repr(RedisDedupCache(url=url)) == expected


def test_importing_melange_does_not_import_redis() -> None:
    code = "import sys, melange, melange.dedup; print('redis' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert result.stdout.strip() == "False"


def test_the_guides_first_example_runs() -> None:
    guide = Path(__file__).resolve().parents[1] / "docs" / "deduplication.md"
    blocks = re.findall(r"```python\n(.*?)```", guide.read_text(), flags=re.DOTALL)
    namespace: dict[str, object] = {}
    exec(blocks[0], namespace)  # its asserts are the protocol's answers
    assert namespace["cache"].claim("send-receipt:8f14e45f", 60) == "done"  # type: ignore[attr-defined]
