"""Deduplication caches: handle a message once per consumer, even when the broker delivers it twice.

Brokers such as SQS deliver *at least once*: a message can arrive again after
its visibility timeout passes, after a consumer crashed before acknowledging
it, or simply because the broker duplicated it. A :class:`DedupCache` shared by
every worker of a consumer turns that into *effectively once per consumer
within the TTL*: before handling a message the dispatcher claims the key
``f"{consumer.name}:{message_id}"``, and only the worker that gets
``"claimed"`` runs the handler.

The protocol, per key:

1. :meth:`DedupCache.claim` atomically answers

   - ``"claimed"``: nobody handled or holds the key; it is now claimed by the
     caller for ``ttl`` seconds, so the caller handles the message;
   - ``"done"``: it was handled successfully before; skip the handler (the
     message can be acknowledged);
   - ``"busy"``: another worker holds a live claim and is handling it now;
     neither handle nor acknowledge it (the broker delivers it again later,
     by which time it is ``"done"``, or claimable if that worker failed).

2. After the handler succeeded, :meth:`DedupCache.complete` marks the key done
   for ``ttl`` seconds (choose at least how long the broker may redeliver the
   message, e.g. the queue's retention period).
3. After the handler failed, :meth:`DedupCache.release` drops the claim so the
   retry can claim it again. A release never drops a completion, nor a claim
   that another cache instance (another process) took in the meantime.

What happens on crashes: a worker that dies while holding a claim never
releases it, so the claim expires after its ``ttl`` and the redelivered
message is handled again: the guarantee stays *at least once*, never *at most
once*. A claim's ``ttl`` should therefore exceed the longest handling time (a
shorter one lets a second worker start while the first is still running),
yet stay short enough that a crashed worker's messages are not held up for
long. A worker that dies after :meth:`~DedupCache.complete` but before
acknowledging causes no second handling: the redelivery finds ``"done"``.

:class:`MemoryDedupCache` serves the threads of one process (and tests);
:class:`RedisDedupCache` is shared by every process and machine that reaches the
same Redis server (``pip install "melange[redis]"``).
"""

from __future__ import annotations

import abc
import contextlib
import heapq
import math
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Literal
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from melange.clock import Clock, SystemClock
from melange.exceptions import (
    BackendClosed,
    BackendUnavailable,
    BrokerError,
    ConfigurationError,
)

if TYPE_CHECKING:
    import redis

__all__ = ["ClaimResult", "DedupCache", "MemoryDedupCache", "RedisDedupCache"]

ClaimResult = Literal["claimed", "done", "busy"]
"""The answer of :meth:`DedupCache.claim`: handle it, it was handled, or someone is handling it."""

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
"""Where :class:`RedisDedupCache` connects when given neither a client nor a URL."""

_REDIS_INSTALL_HINT = 'pip install "melange[redis]"'

_DONE = "done"
_CLAIM_PREFIX = "claimed:"

# Deletes the key only while it still holds the caller's own claim, in one atomic
# step, so a completion or another worker's later claim is never dropped.
_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""
# Likewise extends the key's expiry only while it holds the caller's own claim.
_RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not key:
        raise ConfigurationError(
            f"a dedup key must be a non-empty string, got {key!r}; "
            "use f'{consumer.name}:{message_id}'"
        )


def _check_ttl(ttl: float) -> None:
    if (
        isinstance(ttl, bool)
        or not isinstance(ttl, (int, float))
        or not math.isfinite(ttl)
        or ttl <= 0
    ):
        raise ConfigurationError(
            f"a dedup ttl must be a finite number of seconds > 0, got {ttl!r}; "
            "pass how long the claim or completion should be remembered"
        )


class DedupCache(abc.ABC):
    """Remembers which messages a consumer claimed or handled, for a time.

    Implementations are safe to call from several threads at once. Keys are
    opaque strings; the dispatcher uses ``f"{consumer.name}:{id}"``, where ``id`` is the
    message's producer id (``melange.id``), else the broker's message id.
    The module documentation describes the claim/complete/release protocol
    and what happens on crashes.
    """

    @abc.abstractmethod
    def claim(self, key: str, ttl: float) -> ClaimResult:
        """Atomically claim ``key`` for ``ttl`` seconds unless it is done or held.

        Args:
            key: The dedup key (``f"{consumer.name}:{message_id}"``).
            ttl: Seconds the claim lives when it is never completed or released
                (e.g. because the worker crashed); longer than the handling takes.

        Returns:
            ``"claimed"`` when the caller now holds the key and should handle the
            message, ``"done"`` when it was completed before (skip it), or
            ``"busy"`` when another worker holds a live claim (leave it).

        Raises:
            ConfigurationError: ``key`` is empty or ``ttl`` is not a positive number.
            BackendUnavailable: The cache's server cannot be reached.
            BackendClosed: The cache was closed.
        """

    @abc.abstractmethod
    def complete(self, key: str, ttl: float) -> None:
        """Mark ``key`` done for ``ttl`` seconds, replacing any claim.

        Args:
            key: The dedup key.
            ttl: Seconds a redelivery of the message is recognised as handled;
                at least as long as the broker may redeliver it.

        Raises:
            ConfigurationError: ``key`` is empty or ``ttl`` is not a positive number.
            BackendUnavailable: The cache's server cannot be reached.
            BackendClosed: The cache was closed.
        """

    @abc.abstractmethod
    def release(self, key: str) -> None:
        """Drop this cache's claim on ``key`` so a retry can claim it.

        Does nothing when the key is done (a completion is never dropped), not
        held, or held by another cache instance.

        Args:
            key: The dedup key.

        Raises:
            ConfigurationError: ``key`` is empty.
            BackendUnavailable: The cache's server cannot be reached.
            BackendClosed: The cache was closed.
        """

    def renew(self, key: str, ttl: float) -> bool:
        """Make this cache's claim on ``key`` live ``ttl`` seconds from now.

        The dispatcher renews the claims of a handler whose message lease it
        extends, so a claim outlives its handler as the lease does. A cache
        without it (this default) keeps each claim for the ``ttl`` it was
        claimed with: a handler running longer lets a second copy of the
        message (a publisher's retry) be claimed and run meanwhile.

        Args:
            key: The dedup key.
            ttl: Seconds the claim lives from now.

        Returns:
            Whether the claim was renewed: ``False`` when the key is done, not
            held, or held by another cache instance.

        Raises:
            BackendUnavailable: The cache's server cannot be reached.
            BackendClosed: The cache was closed.
        """
        return False

    @abc.abstractmethod
    def close(self) -> None:
        """Release the cache's resources; idempotent. Later calls raise BackendClosed."""


class MemoryDedupCache(DedupCache):
    """A dedup cache in this process's memory, shared by its threads.

    Entries expire after their TTL; expired entries are pruned as the cache is
    used, so memory stays proportional to the keys claimed or completed within
    the TTL. All claims belong to the one instance: :meth:`release` drops a
    claim whichever thread took it. Use :class:`RedisDedupCache` when several
    processes consume the same queue.

    Args:
        clock: Where time is read: a :class:`~melange.clock.Clock` (e.g. a
            :class:`~melange.clock.ManualClock` in tests) or a function returning
            seconds. Default: the monotonic system clock.
    """

    def __init__(self, clock: Clock | Callable[[], float] | None = None) -> None:
        if clock is None:
            clock = SystemClock()
        if isinstance(clock, Clock):
            self._now: Callable[[], float] = clock.now
        elif callable(clock):
            self._now = clock
        else:
            raise ConfigurationError(
                f"clock must be a melange.clock.Clock or a function returning seconds, "
                f"got {clock!r}"
            )
        self._lock = threading.Lock()
        # key -> (state, expires_at); state is "claimed" or "done".
        self._entries: dict[str, tuple[str, float]] = {}
        # (expires_at, key) for pruning; may hold stale rows for keys set again since.
        self._expiries: list[tuple[float, str]] = []
        self._closed = False

    def claim(self, key: str, ttl: float) -> ClaimResult:
        """Claim ``key`` in this process's memory; see :meth:`DedupCache.claim`."""
        _check_key(key)
        _check_ttl(ttl)
        with self._lock:
            self._check_open("claim")
            now = self._prune()
            entry = self._entries.get(key)
            if entry is not None:
                return "done" if entry[0] == _DONE else "busy"
            self._set(key, "claimed", now + ttl)
            return "claimed"

    def complete(self, key: str, ttl: float) -> None:
        """Mark ``key`` done in this process's memory; see :meth:`DedupCache.complete`."""
        _check_key(key)
        _check_ttl(ttl)
        with self._lock:
            self._check_open("complete")
            now = self._prune()
            self._set(key, _DONE, now + ttl)

    def renew(self, key: str, ttl: float) -> bool:
        """Extend a live claim on ``key``; see :meth:`DedupCache.renew`."""
        _check_key(key)
        _check_ttl(ttl)
        with self._lock:
            self._check_open("renew")
            now = self._prune()
            entry = self._entries.get(key)
            if entry is None or entry[0] == _DONE:
                return False
            self._set(key, "claimed", now + ttl)
            return True

    def release(self, key: str) -> None:
        """Drop a claim on ``key`` (never a completion); see :meth:`DedupCache.release`."""
        _check_key(key)
        with self._lock:
            self._check_open("release")
            self._prune()
            entry = self._entries.get(key)
            if entry is not None and entry[0] != _DONE:
                del self._entries[key]

    def close(self) -> None:
        """Forget every entry; idempotent. Later calls raise BackendClosed."""
        with self._lock:
            self._closed = True
            self._entries.clear()
            self._expiries.clear()

    def __len__(self) -> int:
        """Return how many live (unexpired) claims and completions the cache holds."""
        with self._lock:
            self._prune()
            return len(self._entries)

    def __repr__(self) -> str:
        return f"MemoryDedupCache(entries={len(self)})"

    def _check_open(self, operation: str) -> None:
        if self._closed:
            raise BackendClosed("memory dedup cache", operation)

    def _set(self, key: str, state: str, expires_at: float) -> None:
        self._entries[key] = (state, expires_at)
        heapq.heappush(self._expiries, (expires_at, key))
        # Keys set again leave stale heap rows behind; rebuild before they outnumber
        # the live entries, so memory stays bounded however often keys are reused.
        if len(self._expiries) > 2 * len(self._entries) + 64:
            self._expiries = [(exp, k) for k, (_, exp) in self._entries.items()]
            heapq.heapify(self._expiries)

    def _prune(self) -> float:
        """Drop expired entries (caller holds the lock); return the current time."""
        now = self._now()
        while self._expiries and self._expiries[0][0] <= now:
            _, key = heapq.heappop(self._expiries)
            entry = self._entries.get(key)
            if entry is not None and entry[1] <= now:
                del self._entries[key]
        return now


def _import_redis() -> ModuleType:
    try:
        import redis
    except ImportError as exc:
        raise ConfigurationError(
            f"RedisDedupCache needs the 'redis' package, which is not installed; "
            f"install it with: {_REDIS_INSTALL_HINT}"
        ) from exc
    return redis


def _redact_url(url: str) -> str:
    """Return ``url`` with any password (in the user info or the query) replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable Redis URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        # A lone user-info part may be a password written without a user name: hide it too.
        netloc = f"{user}:***@{hostport}" if has_password else f"***@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(name, "***" if name.lower() == "password" else value) for name, value in pairs],
            safe="*",
        )
    # Built by hand: urlunsplit drops the "//" of unix:///path, whose host part is empty.
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


def _url_secrets(url: str) -> list[str]:
    """Return the password(s) in ``url``, raw and percent-decoded, to scrub from messages."""
    secrets: list[str] = []
    with contextlib.suppress(ValueError):
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        if userinfo:
            user, has_password, password = userinfo.partition(":")
            secrets.append(password if has_password else user)
        secrets.extend(v for k, v in parse_qsl(parts.query) if k.lower() == "password")
    return [form for secret in secrets if secret for form in {secret, unquote(secret)}]


class RedisDedupCache(DedupCache):
    """A dedup cache in Redis, shared by every process that uses the same server and prefix.

    Each key is stored under ``prefix + key`` with a millisecond expiry. A claim
    is ``SET key "claimed:<token>" NX PX ttl``, where the token identifies this
    cache instance in this process; when the key exists its value answers
    ``"done"`` or ``"busy"``. A completion is ``SET key "done" PX ttl``. A
    release runs a small Lua script that deletes the key only while it still
    holds this instance's own claim, so it can never drop a completion or a
    claim another process took after this one's expired.

    Nothing connects until the first call; connection failures then raise
    :class:`~melange.exceptions.BackendUnavailable`, whose message names the
    server without its password.

    Args:
        client: A ``redis.Redis`` client to use (its connection settings, TLS,
            authentication, ...); the cache does not close it. Give either
            ``client`` or ``url``.
        url: A Redis URL (``redis://[[user]:password@]host:port/db``,
            ``rediss://`` for TLS, ``unix://``); the cache creates the client and
            closes it in :meth:`close`. Default: ``redis://127.0.0.1:6379/0``.
        prefix: Prepended to every key, so the cache's keys do not collide with
            other data in the database. Must not be empty.
        socket_timeout: Seconds to wait for a connection or a reply before
            raising BackendUnavailable (only used with ``url``).

    Raises:
        ConfigurationError: Both ``client`` and ``url`` are given, the URL or
            prefix is invalid, or the ``redis`` package is not installed.
    """

    def __init__(
        self,
        client: redis.Redis | None = None,
        *,
        url: str | None = None,
        prefix: str = "melange:dedup:",
        socket_timeout: float = 5.0,
    ) -> None:
        if client is not None and url is not None:
            raise ConfigurationError(
                "RedisDedupCache takes a client or a url, not both; pass only one"
            )
        if not isinstance(prefix, str) or not prefix:
            raise ConfigurationError(
                f"RedisDedupCache needs a non-empty key prefix, got {prefix!r}; "
                "keep the default 'melange:dedup:' or choose one for this application"
            )
        redis_module = _import_redis()
        self._prefix = prefix
        self._owns_client = client is None
        if client is None:
            url = DEFAULT_REDIS_URL if url is None else url
            self._location = _redact_url(url)
            self._secrets = _url_secrets(url)
            try:
                client = redis_module.Redis.from_url(
                    url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout
                )
            except ValueError as exc:
                raise ConfigurationError(
                    f"invalid Redis URL {self._location!r}: {self._scrub(str(exc))}; "
                    "use redis://[[user]:password@]host:port/db, rediss://... or unix://path"
                ) from None
        else:
            self._location, self._secrets = self._describe_client(client)
        self._client: redis.Redis = client
        self._release_script = client.register_script(_RELEASE_SCRIPT)
        self._renew_script = client.register_script(_RENEW_SCRIPT)
        # Random per instance; _claim_value adds the pid so a forked child's claims differ.
        self._token = uuid.uuid4().hex
        self._closed = False

    @property
    def prefix(self) -> str:
        """The string prepended to every key in Redis."""
        return self._prefix

    def claim(self, key: str, ttl: float) -> ClaimResult:
        """``SET key claimed:<token> NX PX ttl``, else read who holds it; see DedupCache.claim."""
        _check_key(key)
        _check_ttl(ttl)
        self._check_open("claim")
        name = self._prefix + key
        with self._translate_errors("claim"):
            # The key can expire between a refused SET and the GET; try again then.
            for _ in range(3):
                if self._client.set(name, self._claim_value(), nx=True, px=_millis(ttl)):
                    return "claimed"
                current = self._client.get(name)
                if current is not None:
                    return self._classify(name, current)
        # Three expiries in a row: someone claims and drops it constantly; leave it for now.
        return "busy"

    def complete(self, key: str, ttl: float) -> None:
        """``SET key done PX ttl``; see :meth:`DedupCache.complete`."""
        _check_key(key)
        _check_ttl(ttl)
        self._check_open("complete")
        with self._translate_errors("complete"):
            self._client.set(self._prefix + key, _DONE, px=_millis(ttl))

    def renew(self, key: str, ttl: float) -> bool:
        """``PEXPIRE`` ``key`` only while it holds this instance's claim; see DedupCache.renew."""
        _check_key(key)
        _check_ttl(ttl)
        self._check_open("renew")
        with self._translate_errors("renew"):
            renewed = self._renew_script(
                keys=[self._prefix + key], args=[self._claim_value(), _millis(ttl)]
            )
        return bool(renewed)

    def release(self, key: str) -> None:
        """Delete ``key`` only while it holds this instance's claim; see DedupCache.release."""
        _check_key(key)
        self._check_open("release")
        with self._translate_errors("release"):
            self._release_script(keys=[self._prefix + key], args=[self._claim_value()])

    def close(self) -> None:
        """Stop using the cache; closes the client only when the cache created it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._owns_client:
            with contextlib.suppress(Exception):
                self._client.close()

    def __repr__(self) -> str:
        return f"RedisDedupCache(url={self._location!r}, prefix={self._prefix!r})"

    # ------------------------------------------------------------------ helpers
    def _claim_value(self) -> str:
        return f"{_CLAIM_PREFIX}{self._token}:{os.getpid()}"

    def _classify(self, name: str, value: object) -> ClaimResult:
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        if text == _DONE:
            return "done"
        if text.startswith(_CLAIM_PREFIX):
            return "busy"
        # Not written by a dedup cache: its value is not shown, it may be another app's data.
        raise ConfigurationError(
            f"Redis key {name!r} at {self._location} holds a value melange's dedup cache did "
            "not write; give RedisDedupCache a prefix of its own (prefix=...)"
        )

    def _check_open(self, operation: str) -> None:
        if self._closed:
            raise BackendClosed("redis dedup cache", operation)

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    @contextlib.contextmanager
    def _translate_errors(self, operation: str) -> Iterator[None]:
        """Turn redis-py errors into melange errors that never carry the password."""
        from redis import exceptions as redis_errors

        try:
            yield
        except (redis_errors.ConnectionError, redis_errors.TimeoutError) as exc:
            # AuthenticationError is a ConnectionError: a wrong password lands here too.
            raise BackendUnavailable(
                f"dedup cache cannot {operation}: Redis at {self._location} is unavailable "
                f"({type(exc).__name__}: {self._scrub(str(exc))}); check that Redis runs "
                "there and that the URL and credentials are right"
            ) from None
        except redis_errors.RedisError as exc:
            detail = self._scrub(str(exc))
            error = BrokerError(
                f"dedup cache cannot {operation}: Redis at {self._location} refused it "
                f"({type(exc).__name__}: {detail}); check the server's ACLs and that the "
                "prefix holds only dedup keys",
                broker_code=detail.split(" ", 1)[0] or None,
            )
            raise error from None

    @staticmethod
    def _describe_client(client: redis.Redis) -> tuple[str, list[str]]:
        """Return a password-free description of a client's server, and the secrets to scrub."""
        options = client.connection_pool.connection_kwargs
        password = options.get("password")
        secrets = [password] if isinstance(password, str) and password else []
        if options.get("path"):
            return f"unix://{options['path']}", secrets
        host = options.get("host", "localhost")
        port = options.get("port", 6379)
        db = options.get("db", 0)
        return f"redis://{host}:{port}/{db}", secrets


def _millis(ttl: float) -> int:
    """Return ``ttl`` seconds as whole milliseconds, at least 1 (Redis refuses PX 0)."""
    return max(1, math.ceil(ttl * 1000))
