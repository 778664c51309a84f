"""How a dispatcher runs: :class:`DispatcherConfig`, validated once, shared by both drivers.

Both :class:`~melange.dispatcher.MessageDispatcher` (threads) and
:class:`~melange.aio.AsyncMessageDispatcher` (asyncio) take a
``DispatcherConfig``, or the same options as keywords::

    config = DispatcherConfig(batch_size=10, grace_period=10.0, on_unhandled="ack")
    MessageDispatcher(backend, "orders", [record_order], config=config)
    AsyncMessageDispatcher(backend, "orders", [record_order], config=config)
    MessageDispatcher(backend, "orders", [record_order], grace_period=10.0)  # the same keywords

A config is frozen, so one object can configure many dispatchers; derive a
variant with :meth:`DispatcherConfig.replace`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict

from melange._outage import RECONNECT_BACKOFF
from melange.exceptions import ConfigurationError, did_you_mean
from melange.lease import LeasePolicy
from melange.observability import Hooks
from melange.retry import RetryPolicy
from melange.settlement import OUTCOMES, Outcome

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

    from melange.dedup import DedupCache

__all__ = ["DispatcherConfig", "DispatcherOptions"]


@dataclass(frozen=True)
class DispatcherConfig:
    """The options of a dispatcher, checked when the object is created.

    Create it with the attributes below as keywords; each one left out takes
    its default.

    Examples:
        >>> config = DispatcherConfig(workers=20, on_undecodable="ack")
        >>> config.capacity
        20

    Attributes:
        workers: The most messages held (received and not finished) at once,
            hence the most handlers running at once (threads of the threaded
            driver; ``concurrency`` of the asyncio one). Default
            ``batch_size * concurrent_receives``, so that every receive can ask
            for a full batch.
        concurrent_receives: Receive calls in progress at the same time (more
            hide the broker's round trip).
        batch_size: Most messages asked for by one receive call.
        wait_seconds: Long-poll wait of one receive call; also bounds how long a
            stop waits for a receive in progress. ``0`` short-polls: after a
            receive that found the queue empty, the next one starts 0.05 s later.
        retry: Delays before failed messages come back; default :class:`RetryPolicy`.
        on_undecodable: Outcome for bodies the serializers cannot decode:
            ``"dead_letter"`` (publish it unchanged to the dead-letter queue,
            then ack it), ``"ack"`` (drop it with a warning) or ``"leave"`` (let
            the broker redeliver and eventually dead-letter it).
        on_unhandled: Outcome for messages no consumer accepts (the same choices).
        dedup: A deduplication cache, so each consumer handles a message id once.
        dedup_ttl: Seconds a consumer's "done" mark is kept; defaults to the
            queue's message retention period.
        dedup_claim_ttl: Seconds a claim lives if its handler dies without
            releasing it; defaults to the queue's visibility timeout (at least
            1 s), after which the broker delivers the message again anyway.
        hooks: Observability hooks; exceptions in them are logged and ignored.
            Defaults to :func:`melange.tracing.default_hooks` (OpenTelemetry
            trace context when ``opentelemetry-api`` is installed).
        lease: When to extend leases of long-running handlers; default
            :class:`LeasePolicy`. Used only when the backend supports lease extension.
        grace_period: Seconds a stop lets running handlers finish.
        close_backend: Also close the backend when the dispatcher stops. Off by
            default: the caller opened the backend, so the caller closes it (it
            may share it with publishers or another dispatcher).
        startup_timeout: Seconds ``start()`` waits for a broker that cannot be
            reached (``BackendUnavailable``) before it raises; 0 raises at once.
        reconnect_backoff: Waits between attempts while receives fail, and while
            waiting for the broker at start-up; default 0.1 s doubling up to 5 s,
            with 20% jitter (``RetryPolicy(0.1, 2.0, 5.0, 0.2)``). The cap bounds
            how long the dispatcher stays idle once the broker is back.

    Raises:
        ConfigurationError: An option is invalid (an unknown outcome, a
            non-positive count, a negative number of seconds, a wrong type).
    """

    workers: int | None = None
    concurrent_receives: int = 1
    batch_size: int = 10
    wait_seconds: float = 5.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    on_undecodable: Outcome = "dead_letter"
    on_unhandled: Outcome = "dead_letter"
    dedup: DedupCache | None = None
    dedup_ttl: float | None = None
    dedup_claim_ttl: float | None = None
    hooks: Hooks = field(default_factory=Hooks)
    lease: LeasePolicy = field(default_factory=LeasePolicy)
    grace_period: float = 30.0
    close_backend: bool = False
    startup_timeout: float = 60.0
    reconnect_backoff: RetryPolicy = RECONNECT_BACKOFF

    def __init__(self, **options: Unpack[DispatcherOptions]) -> None:
        unknown = [name for name in options if name not in _FIELDS]
        if unknown:
            name = unknown[0]
            raise ConfigurationError(
                f"unknown dispatcher option {name!r}{did_you_mean(name, _FIELDS)}; "
                f"the options are {', '.join(_FIELDS)}"
            )
        given: dict[str, Any] = dict(options)
        checked = {name: _CHECKS[name](name, given.get(name)) for name in _FIELDS}
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @property
    def capacity(self) -> int:
        """The most messages held at once: ``workers``, or its default."""
        if self.workers is not None:
            return self.workers
        return self.batch_size * self.concurrent_receives

    def replace(self, **options: Any) -> DispatcherConfig:
        """Return a copy with ``options`` changed (checked like the constructor's)."""
        return DispatcherConfig(**{**self.as_options(), **options})

    def as_options(self) -> dict[str, Any]:
        """Return the options as keywords, as given (``hooks`` resolved)."""
        return {name: getattr(self, name) for name in _FIELDS}


class DispatcherOptions(TypedDict, total=False):
    """The keyword arguments both dispatchers accept: the fields of :class:`DispatcherConfig`.

    For type checkers (``**options: Unpack[DispatcherOptions]``); a test keeps it
    equal to the config's fields.
    """

    workers: int | None
    concurrent_receives: int
    batch_size: int
    wait_seconds: float
    retry: RetryPolicy | None
    on_undecodable: Outcome
    on_unhandled: Outcome
    dedup: DedupCache | None
    dedup_ttl: float | None
    dedup_claim_ttl: float | None
    hooks: Hooks | None
    lease: LeasePolicy | None
    grace_period: float
    close_backend: bool
    startup_timeout: float
    reconnect_backoff: RetryPolicy | None


# ------------------------------------------------------------------- checks
def positive_int(label: str, value: Any) -> int:
    """Return ``value`` if it is a whole number >= 1, else raise :class:`ConfigurationError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{label} must be a whole number >= 1, got {value!r}")
    return value


def seconds(label: str, value: Any) -> float:
    """Return ``value`` as a float if it is a finite number >= 0, else raise."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0 <= value < float("inf")
    ):
        raise ConfigurationError(f"{label} must be a number of seconds >= 0, got {value!r}")
    return float(value)


def _default(label: str) -> Any:
    found = _DEFAULTS[label]
    return found.default_factory() if callable(found.default_factory) else found.default


def _checked(check: Any) -> Any:
    """Wrap ``check`` so that a missing (or ``None``) option takes its default first."""

    def checked(label: str, value: Any) -> Any:
        return check(label, _default(label) if value is None else value)

    return checked


def _optional(check: Any) -> Any:
    def checked(label: str, value: Any) -> Any:
        return None if value is None else check(label, value)

    return checked


def _positive_seconds(label: str, value: Any) -> float:
    if not seconds(label, value) > 0:
        raise ConfigurationError(f"{label} must be a positive number, got {value!r}")
    return float(value)


def _outcome(label: str, value: Any) -> Outcome:
    if value not in OUTCOMES:
        raise ConfigurationError(
            f"{label} must be one of {', '.join(map(repr, OUTCOMES))}, got {value!r}"
        )
    result: Outcome = value
    return result


def _instance(kind: type) -> Any:
    def checked(label: str, value: Any) -> Any:
        if not isinstance(value, kind):
            raise ConfigurationError(
                f"{label} must be a melange {kind.__name__}, got {type(value).__name__}"
            )
        return value

    return checked


def _hooks(label: str, value: Any) -> Hooks:
    if value is None:
        from melange.tracing import default_hooks  # OpenTelemetry only when installed

        return default_hooks()
    checked: Hooks = _instance(Hooks)(label, value)
    return checked


def _dedup(label: str, value: Any) -> Any:
    # Any object with the DedupCache methods will do, a subclass or not.
    if not all(callable(getattr(value, name, None)) for name in ("claim", "complete", "release")):
        raise ConfigurationError(
            f"{label} must be a melange DedupCache (e.g. MemoryDedupCache() or "
            f"RedisDedupCache(client)), got {type(value).__name__}"
        )
    return value


def _flag(label: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{label} must be True or False, got {value!r}")
    return value


_DEFAULTS = {f.name: f for f in dataclasses.fields(DispatcherConfig)}
_FIELDS = DISPATCHER_OPTIONS = tuple(_DEFAULTS)
"""The names of the options, in order."""
_CHECKS: dict[str, Any] = {
    "workers": _optional(positive_int),
    "concurrent_receives": _checked(positive_int),
    "batch_size": _checked(positive_int),
    "wait_seconds": _checked(seconds),
    "retry": _checked(_instance(RetryPolicy)),
    "on_undecodable": _checked(_outcome),
    "on_unhandled": _checked(_outcome),
    "dedup": _optional(_dedup),
    "dedup_ttl": _optional(_positive_seconds),
    "dedup_claim_ttl": _optional(_positive_seconds),
    "hooks": _hooks,
    "lease": _checked(_instance(LeasePolicy)),
    "grace_period": _checked(seconds),
    "close_backend": _checked(_flag),
    "startup_timeout": _checked(seconds),
    "reconnect_backoff": _checked(_instance(RetryPolicy)),
}
