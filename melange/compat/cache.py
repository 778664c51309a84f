"""melange 7.x's deduplication caches (``melange.infrastructure.cache``) on melange 8's dedup.

7.x's dispatchers took a ``cache`` with ``store(key, value, expire)``,
``get(key)`` and ``key in cache`` (the ``DeduplicationCache`` protocol):
``NullCache`` (no deduplication, the default) or ``RedisCache(**kwargs)``.
melange 8 takes a :class:`~melange.dedup.DedupCache` as the dispatcher option
``dedup`` (:class:`~melange.dedup.RedisDedupCache` for Redis), whose
claim/complete/release protocol also keeps two workers from handling the same
message at once.

:func:`dedup_from_7x` turns a 7.x cache into those dispatcher options; the 7.x
dispatcher form calls it.
"""

from __future__ import annotations

import inspect
import math
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import quote

from melange.compat.calls_common import warn_7x
from melange.dedup import ClaimResult, DedupCache, RedisDedupCache, _import_redis
from melange.exceptions import BackendUnavailable, ConfigurationError, did_you_mean, raise_unchained

if TYPE_CHECKING:
    from melange.dispatcher_config import DispatcherOptions

__all__ = ["DeduplicationCache", "NullCache", "RedisCache", "dedup_from_7x"]

_REDIS_KEYWORDS = ("host", "port", "db", "password", "namespace", "expire")

_NEW_DEDUP = (
    "melange.dedup.RedisDedupCache(url='redis://host:port/db', prefix='namespace:'), passed "
    "as MessageDispatcher(backend, queue_name, consumers, dedup=cache, dedup_ttl=expire)"
)


@runtime_checkable
class DeduplicationCache(Protocol):
    """7.x's cache interface: remembers which consumer handled which message.

    melange 8 uses :class:`melange.dedup.DedupCache` instead; an object with
    these three methods still works as a 7.x dispatcher's ``cache`` (without
    melange 8's protection against two workers handling a message at once).
    """

    def store(self, key: str, value: Any, expire: int | None = None) -> None:
        """Store ``value`` under ``key``, for ``expire`` seconds (or the cache's default)."""

    def get(self, key: str) -> Any:
        """Return the value stored under ``key``, or ``None``."""

    def __contains__(self, key: str) -> bool:
        """Return whether ``key`` is stored."""


class NullCache:
    """7.x's cache that remembers nothing: no deduplication, melange 8's default."""

    def __init__(self) -> None:
        warn_7x(
            "NullCache()",
            "no dedup option: a MessageDispatcher without dedup= deduplicates nothing",
        )

    def store(self, key: str, value: Any, expire: int | None = None) -> None:
        """Do nothing."""

    def get(self, key: str) -> Any:
        """Return ``None``."""
        return None

    def __contains__(self, key: str) -> bool:
        return False


def _check(name: str, value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigurationError(f"RedisCache {name} must be {what}, got {value!r}")
    return value


class RedisCache:
    """7.x's Redis deduplication cache, on melange 8's :class:`~melange.dedup.RedisDedupCache`.

    Needs the ``redis`` package (``pip install "melange[redis]"``). Nothing
    connects until the cache is used; then an unreachable server raises
    :class:`~melange.exceptions.BackendUnavailable` (7.x logged a warning and
    silently stopped deduplicating).

    Args:
        host: The Redis host; ``"localhost"`` by default.
        port: The Redis port; 6379 by default.
        db: The database number; 0 by default.
        password: The password, if the server needs one.
        namespace: Prefix of this cache's keys; ``"melange"`` by default.
        expire: Seconds a handled message is remembered; 3600 by default.

    Raises:
        ConfigurationError: An unknown keyword or a value of the wrong type, or
            the ``redis`` package is not installed.
    """

    def __init__(self, **kwargs: Any) -> None:
        unknown = [name for name in kwargs if name not in _REDIS_KEYWORDS]
        if unknown:
            raise ConfigurationError(
                f"unknown RedisCache keyword {unknown[0]!r}"
                f"{did_you_mean(unknown[0], _REDIS_KEYWORDS)}; 7.x's RedisCache took "
                f"{', '.join(_REDIS_KEYWORDS)}. In melange 8 use {_NEW_DEDUP}"
            )
        self.host: str = _check("host", kwargs.get("host", "localhost"), str, "a host name")
        self.port: int = _check("port", kwargs.get("port", 6379), int, "a port number")
        self.db: int = _check("db", kwargs.get("db", 0), int, "a database number")
        password = kwargs.get("password")
        if password is not None and not isinstance(password, str):
            # Its type only: the value is a secret.
            raise ConfigurationError(
                f"RedisCache password must be a str, got {type(password).__name__}"
            )
        namespace = _check("namespace", kwargs.get("namespace", "melange"), str, "a str")
        if not namespace:
            raise ConfigurationError("RedisCache namespace must not be empty")
        self.namespace: str = namespace
        expire = _check("expire", kwargs.get("expire", 3600), (int, float), "a number of seconds")
        if not 0 < expire < math.inf:
            raise ConfigurationError(f"RedisCache expire must be > 0 seconds, got {expire!r}")
        self.expire: float = expire
        warn_7x("RedisCache(...)", _NEW_DEDUP)
        self._redis = _import_redis()
        self._location = f"redis://{self.host}:{self.port}/{self.db}"
        self._password = password
        self._client = self._redis.Redis(
            host=self.host,
            port=self.port,
            db=self.db,
            password=password,
            socket_timeout=5.0,
            socket_connect_timeout=5.0,
        )
        # melange 8's claims live under their own prefix, beside the 7.x store()/get() keys.
        self.dedup = RedisDedupCache(client=self._client, prefix=f"{namespace}:dedup:")

    def __repr__(self) -> str:
        return f"RedisCache(url={self._location!r}, namespace={self.namespace!r})"

    @property
    def url(self) -> str:
        """The Redis URL melange 8's ``RedisDedupCache(url=...)`` takes, password included."""
        auth = "" if self._password is None else f":{quote(self._password, safe='')}@"
        return f"redis://{auth}{self.host}:{self.port}/{self.db}"

    def _key(self, key: str) -> str:
        return f"{self.namespace}:{key}"

    def _call(self, operation: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self._client, operation)(*args, **kwargs)
        except self._redis.exceptions.RedisError as exc:
            detail = str(exc)
            if self._password:
                detail = detail.replace(self._password, "***")
            raise_unchained(
                BackendUnavailable(
                    f"RedisCache cannot {operation}: Redis at {self._location} failed "
                    f"({type(exc).__name__}: {detail}); check that Redis runs there and "
                    "that the host, port and password are right"
                )
            )

    def store(self, key: str, value: Any, expire: int | None = None) -> None:
        """Store ``value`` (as text) under ``key`` for ``expire`` seconds (default: the cache's)."""
        seconds = self.expire if expire is None else expire
        self._call("set", self._key(key), str(value), px=max(1, math.ceil(seconds * 1000)))

    def get(self, key: str) -> Any:
        """Return the text stored under ``key``, or ``None``."""
        value = self._call("get", self._key(key))
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else value

    def __contains__(self, key: str) -> bool:
        return bool(self._call("exists", self._key(key)))

    def close(self) -> None:
        """Close the connection to Redis."""
        self.dedup.close()
        self._client.close()


class _StoreGetDedup(DedupCache):
    """A user's 7.x ``DeduplicationCache`` behind melange 8's claim protocol.

    As in 7.x: a key that is in the cache was handled; anything else is handled
    now (no ``"busy"``: two workers may both handle one message at once).
    """

    def __init__(self, cache: Any) -> None:
        self.cache = cache
        self._takes_expire = _takes_expire(cache.store)

    def __repr__(self) -> str:
        return f"<7.x cache {type(self.cache).__qualname__}>"

    def claim(self, key: str, ttl: float) -> ClaimResult:
        """``"done"`` when the 7.x cache holds ``key``, else ``"claimed"``."""
        return "done" if key in self.cache else "claimed"

    def complete(self, key: str, ttl: float) -> None:
        """Store ``key`` in the 7.x cache for ``ttl`` seconds (rounded up).

        A ``store(key, value)`` without ``expire`` is called as 7.x's dispatcher
        called it: the cache keeps the key as long as it keeps anything.
        """
        if self._takes_expire:
            self.cache.store(key, key, expire=max(1, math.ceil(ttl)))
        else:
            self.cache.store(key, key)

    def release(self, key: str) -> None:
        """Nothing to drop: 7.x caches hold only handled messages."""

    def close(self) -> None:
        """The application owns the 7.x cache: nothing to close."""


def _takes_expire(store: Any) -> bool:
    """Whether a 7.x cache's ``store`` takes ``expire=`` (7.x's dispatcher never passed it)."""
    try:
        parameters = inspect.signature(store).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a builtin): pass it, as before
        return True
    return any(p.kind is p.VAR_KEYWORD or p.name == "expire" for p in parameters)


def dedup_from_7x(cache: Any) -> DispatcherOptions | None:
    """Return the melange 8 dispatcher options for a 7.x dispatcher's ``cache``.

    Args:
        cache: What 7.x's ``MessageDispatcher(..., cache=...)`` took: ``None``,
            a :class:`NullCache`, a :class:`RedisCache`, any object with
            ``store``/``get``/``__contains__``, or a melange 8
            :class:`~melange.dedup.DedupCache`.

    Returns:
        ``None`` for no deduplication, else ``{"dedup": ..., "dedup_ttl": ...}``
        (``dedup_ttl`` only for a :class:`RedisCache`: its ``expire``), to pass
        as keyword options to :class:`~melange.dispatcher.MessageDispatcher`.

    Raises:
        ConfigurationError: ``cache`` is none of these.
    """
    if cache is None or isinstance(cache, NullCache):
        return None
    if isinstance(cache, RedisCache):
        return {"dedup": cache.dedup, "dedup_ttl": cache.expire}
    if isinstance(cache, DedupCache):
        return {"dedup": cache}
    if all(callable(getattr(cache, name, None)) for name in ("store", "get", "__contains__")):
        return {"dedup": _StoreGetDedup(cache)}
    raise ConfigurationError(
        f"cache must be a 7.x DeduplicationCache (store, get and __contains__) or a melange 8 "
        f"DedupCache, got {type(cache).__name__}; in melange 8 use {_NEW_DEDUP}, or "
        "melange.dedup.MemoryDedupCache() within one process"
    )
