"""melange 7.x's deduplication caches; deprecated, use :mod:`melange.dedup`.

``RedisCache``, ``NullCache`` and ``DeduplicationCache`` are 7.x's
(:mod:`melange.compat.cache`), running on melange 8's deduplication.
"""

from melange.compat import deprecated
from melange.compat.cache import DeduplicationCache, NullCache, RedisCache

__all__ = ["DeduplicationCache", "NullCache", "RedisCache"]

deprecated(
    "melange.infrastructure.cache",
    "melange.dedup: RedisDedupCache(url=...) or MemoryDedupCache(), passed as "
    "MessageDispatcher(..., dedup=cache)",
)
