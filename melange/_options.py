"""Checking the options both dispatchers take, once; see :class:`DispatcherOptions`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from melange._outage import RECONNECT_BACKOFF
from melange.backends.base import MessagingBackend
from melange.consumers import Consumer, is_async_consumer
from melange.exceptions import ConfigurationError
from melange.lease import LeasePolicy
from melange.observability import Hooks, safe
from melange.retry import RetryPolicy
from melange.serializers import SerializerRegistry
from melange.settlement import OUTCOMES, DispatchStats, Outcome, Settlement

if TYPE_CHECKING:
    from melange.dedup import DedupCache


class DispatcherOptions:
    """The validated options and shared parts of a dispatcher, synchronous or asyncio.

    Both dispatchers inherit it and call :meth:`_configure` first in ``__init__``,
    so the same argument fails with the same :class:`ConfigurationError` in both.
    """

    backend: MessagingBackend
    queue_name: str
    consumers: tuple[Consumer, ...]
    serializers: SerializerRegistry
    concurrent_receives: int
    batch_size: int
    wait_seconds: float
    grace_period: float
    startup_timeout: float
    reconnect_backoff: RetryPolicy
    dedup_ttl: float | None
    dedup_claim_ttl: float | None
    on_undecodable: Outcome
    on_unhandled: Outcome
    retry: RetryPolicy
    lease: LeasePolicy
    dedup: DedupCache | None
    hooks: Hooks
    close_backend: bool
    stats: DispatchStats
    _hooks: Hooks
    _settlement: Settlement

    def _configure(
        self,
        backend: MessagingBackend,
        queue_name: str,
        consumers: Sequence[Consumer],
        serializers: SerializerRegistry | None,
        *,
        asynchronous: bool,
        concurrent_receives: int,
        batch_size: int,
        wait_seconds: float,
        retry: RetryPolicy | None,
        on_undecodable: Outcome,
        on_unhandled: Outcome,
        dedup: DedupCache | None,
        dedup_ttl: float | None,
        dedup_claim_ttl: float | None,
        hooks: Hooks | None,
        lease: LeasePolicy | None,
        grace_period: float,
        close_backend: bool,
        startup_timeout: float,
        reconnect_backoff: RetryPolicy | None,
    ) -> None:
        if not isinstance(backend, MessagingBackend):
            raise ConfigurationError(
                f"backend must be a melange MessagingBackend, got {type(backend).__name__}; "
                "create one with melange.backends.load_backend(...)"
            )
        if not isinstance(queue_name, str) or not queue_name:
            raise ConfigurationError(f"queue_name must be a non-empty string, got {queue_name!r}")
        self.backend = backend
        self.queue_name = queue_name
        self.consumers = check_consumers(consumers, asynchronous=asynchronous)
        if serializers is not None and not isinstance(serializers, SerializerRegistry):
            raise ConfigurationError(
                f"serializers must be a melange.serializers.SerializerRegistry, "
                f"got {type(serializers).__name__}"
            )
        self.serializers = serializers if serializers is not None else SerializerRegistry()
        self.concurrent_receives = positive_int("concurrent_receives", concurrent_receives)
        self.batch_size = positive_int("batch_size", batch_size)
        self.wait_seconds = seconds("wait_seconds", wait_seconds)
        self.grace_period = seconds("grace_period", grace_period)
        self.startup_timeout = seconds("startup_timeout", startup_timeout)
        self.dedup_ttl = _optional_positive_seconds("dedup_ttl", dedup_ttl)
        self.dedup_claim_ttl = _optional_positive_seconds("dedup_claim_ttl", dedup_claim_ttl)
        for label, outcome in (("on_undecodable", on_undecodable), ("on_unhandled", on_unhandled)):
            if outcome not in OUTCOMES:
                raise ConfigurationError(
                    f"{label} must be one of {', '.join(map(repr, OUTCOMES))}, got {outcome!r}"
                )
        self.on_undecodable = on_undecodable
        self.on_unhandled = on_unhandled
        for label, value, kind in (
            ("retry", retry, RetryPolicy),
            ("reconnect_backoff", reconnect_backoff, RetryPolicy),
            ("lease", lease, LeasePolicy),
        ):
            if value is not None and not isinstance(value, kind):
                raise ConfigurationError(
                    f"{label} must be a melange {kind.__name__}, got {type(value).__name__}"
                )
        self.retry = retry if retry is not None else RetryPolicy()
        self.lease = lease if lease is not None else LeasePolicy()
        self.reconnect_backoff = (
            reconnect_backoff if reconnect_backoff is not None else RECONNECT_BACKOFF
        )
        self.dedup = dedup
        if hooks is None:
            from melange.tracing import default_hooks  # OpenTelemetry only when installed

            hooks = default_hooks()
        elif not isinstance(hooks, Hooks):
            raise ConfigurationError(
                f"hooks must be a melange.observability.Hooks, got {type(hooks).__name__}"
            )
        self.hooks = hooks
        self._hooks = safe(hooks)  # a failing hook is logged, never changes a message's fate
        self.close_backend = bool(close_backend)
        self.stats = DispatchStats()
        """What the dispatcher did so far; live counters."""
        self._settlement = Settlement(
            backend,
            queue_name,
            hooks=self._hooks,
            stats=self.stats,
            retry=self.retry,
            dedup=dedup,
            dedup_ttl=self.dedup_ttl,
            dedup_claim_ttl=self.dedup_claim_ttl,
            reconnect_backoff=self.reconnect_backoff,
        )


def check_consumers(consumers: Sequence[Consumer], *, asynchronous: bool) -> tuple[Consumer, ...]:
    """Return ``consumers`` as a tuple once each is a valid, distinctly named :class:`Consumer`.

    Args:
        consumers: What the application passed.
        asynchronous: For the asyncio dispatcher, which accepts ``async def`` consumers.
    """
    if isinstance(consumers, (Consumer, str, bytes)) or not isinstance(consumers, Sequence):
        hint = (
            ""
            if asynchronous
            else "; for one consumer use SimpleMessageDispatcher(consumer, backend, queue_name)"
        )
        raise ConfigurationError(
            f"consumers must be a list of Consumer objects, e.g. [record_payment]{hint}"
        )
    if not consumers:
        raise ConfigurationError("a dispatcher needs at least one consumer")
    names: dict[str, Consumer] = {}
    for candidate in consumers:
        if not isinstance(candidate, Consumer):
            hint = (
                " (decorate the function with @melange.consumers.consumer)"
                if callable(candidate)
                else ""
            )
            raise ConfigurationError(f"{candidate!r} is not a melange Consumer{hint}")
        if not asynchronous and is_async_consumer(candidate):
            raise ConfigurationError(
                f"consumer {candidate.name!r} is asynchronous (async def); run it with "
                "melange.aio.AsyncMessageDispatcher, or make it a plain function"
            )
        candidate.validate()
        other = names.get(candidate.name)
        if other is not None:
            raise ConfigurationError(
                f"two consumers are named {candidate.name!r} ({other!r} and {candidate!r}); "
                "names key the deduplication cache and logs, so give each a distinct one "
                "with name=..."
            )
        names[candidate.name] = candidate
    return tuple(consumers)


def positive_int(label: str, value: int) -> int:
    """Return ``value`` if it is a whole number >= 1, else raise :class:`ConfigurationError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{label} must be a whole number >= 1, got {value!r}")
    return value


def seconds(label: str, value: float) -> float:
    """Return ``value`` as a float if it is a finite number >= 0, else raise."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0 <= value < float("inf")
    ):
        raise ConfigurationError(f"{label} must be a number of seconds >= 0, got {value!r}")
    return float(value)


def _optional_positive_seconds(label: str, value: float | None) -> float | None:
    if value is not None and not (seconds(label, value) > 0):
        raise ConfigurationError(f"{label} must be a positive number, got {value!r}")
    return value
