"""The exceptions melange raises.

Every error melange raises on purpose is a :class:`MelangeError`, so one
``except MelangeError`` catches them all. Each subclass names one kind of
problem, and its message says what is wrong and how to fix it. Messages never
include credentials: backends translate broker errors into these classes and
keep only the broker's error code.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from melange.backends.base import PublishResult


class MelangeError(Exception):
    """Base class of every error melange raises on purpose.

    Attributes:
        broker_code: The broker's own error code when the error was translated from
            one (e.g. ``"AWS.SimpleQueueService.NonExistentQueue"``), else ``None``.
    """

    broker_code: str | None = None

    results: list[PublishResult] | None = None
    """Set on an error a publisher raises after sending: one result per message of the call."""


class RemovedIn8(MelangeError, AttributeError):
    """A melange 7.x attribute or method that melange 8 does not have.

    The message names its replacement; docs/upgrading.md lists them all.
    """


class InvalidArgument(MelangeError, TypeError):
    """An argument has the wrong type (a queue name that is not a string, ...).

    Also a :class:`TypeError`, as Python users expect. Raised before anything is sent
    or created.

    Attributes:
        argument: The argument's name.
    """

    def __init__(self, argument: str, expected: str, value: object, hint: str = ""):
        got = "None" if value is None else f"{type(value).__name__} {_short_repr(value)}"
        fix = f"; {hint}" if hint else ""
        super().__init__(f"{argument} must be {expected}, got {got}{fix}")
        self.argument = argument


def _short_repr(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def require_str(argument: str, value: object, what: str = "a string") -> str:
    """Return ``value`` if it is a ``str``, else raise :class:`InvalidArgument`.

    Only the type is checked: what a valid value is (an empty name, say) is for
    the caller's own rules. Bytes get a hint to decode them.
    """
    if isinstance(value, str):
        return value
    hint = "decode it first, e.g. name.decode()" if isinstance(value, (bytes, bytearray)) else ""
    raise InvalidArgument(argument, what, value, hint)


def require_number(argument: str, value: object) -> float:
    """Return ``value`` if it is an int or a float (not a bool); else raise InvalidArgument."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    hint = "convert it first, e.g. float(value)" if isinstance(value, str) else ""
    raise InvalidArgument(argument, "a number of seconds", value, hint)


def raise_unchained(error: BaseException) -> NoReturn:
    """Raise ``error`` with neither a cause nor a context, even inside an ``except`` block.

    For a translated error whose original may quote a secret (a key, a token, a
    connection string): ``raise ... from None`` only hides the original from
    tracebacks, while Python still attaches it as ``__context__`` for any tool
    that walks the chain; it is cleared here on the way out.
    """
    try:
        raise error from None
    finally:
        error.__context__ = None


class ConfigurationError(MelangeError, ValueError):
    """A backend option or configuration source is invalid."""


class BackendNotFound(MelangeError, ImportError):
    """No backend is registered under the requested name.

    Also an :class:`ImportError`, so ``from melange.backends import AWSBackend``
    fails the way Python users expect when the plugin is not installed.

    Attributes:
        backend_name: The name that was asked for.
        install_hint: The command that installs the plugin, when it is known.
    """

    def __init__(self, message: str, *, backend_name: str, install_hint: str | None = None):
        super().__init__(message, name=backend_name)
        self.backend_name = backend_name
        self.install_hint = install_hint


class BackendLoadError(MelangeError, ImportError):
    """A backend plugin is installed but cannot be imported or is not a backend.

    The original exception is chained as ``__cause__``.
    """

    def __init__(self, message: str, *, backend_name: str):
        super().__init__(message, name=backend_name)
        self.backend_name = backend_name


class UnsupportedCapability(MelangeError):
    """The backend cannot honour what was asked (e.g. FIFO queues on a standard-only broker).

    Attributes:
        backend_name: The backend that lacks the capability.
        capability: The name of the missing :class:`~melange.backends.Capabilities` field.
    """

    def __init__(self, backend_name: str, capability: str, what: str):
        super().__init__(
            f"backend {backend_name!r} does not support {capability!r}, needed for {what}; "
            f"use a backend whose capabilities include {capability!r} "
            "(`melange backends` lists them) or drop that setting"
        )
        self.backend_name = backend_name
        self.capability = capability


class InvalidTopology(MelangeError, ValueError):
    """A topology request (names, settings, dead-letter queues, subscriptions) is invalid.

    Raised before anything is created.
    """


class InvalidName(InvalidTopology):
    """A queue or topic name breaks the backend's naming rules."""

    def __init__(self, kind: str, name: str, rule: str):
        super().__init__(f"invalid {kind} name {name!r}: {rule}")
        self.kind = kind
        self.name = name
        self.rule = rule


class ImmutableSettingError(InvalidTopology):
    """An existing resource differs in a setting the broker cannot change after creation.

    Attributes:
        resource: The queue or topic name.
        setting: The setting that differs.
        current: The value the resource has.
        declared: The value that was declared.
    """

    def __init__(self, resource: str, setting: str, current: object, declared: object):
        super().__init__(
            f"{resource!r} exists with {setting}={current!r} but {setting}={declared!r} was "
            f"declared; the broker cannot change {setting!r} after creation, so nothing was "
            f"changed. Declare {setting}={current!r}, or delete {resource!r} and init it again"
        )
        self.resource = resource
        self.setting = setting
        self.current = current
        self.declared = declared


class ResourceNotFound(MelangeError, LookupError):
    """A queue or topic does not exist."""

    kind = "resource"

    def __init__(self, name: str, hint: str | None = None):
        fix = hint or f"create it first with MessagingBackendFactory.init_{self.kind}({name!r})"
        super().__init__(f"{self.kind} {name!r} does not exist; {fix}")
        self.name = name


class QueueNotFound(ResourceNotFound):
    """The queue does not exist."""

    kind = "queue"


class TopicNotFound(ResourceNotFound):
    """The topic does not exist."""

    kind = "topic"


class MessageTooLarge(MelangeError, ValueError):
    """A message is larger than the backend accepts; it was not sent.

    Attributes:
        size: The message's size in bytes (body plus attributes).
        limit: The backend's limit in bytes.
    """

    def __init__(self, size: int, limit: int, backend_name: str):
        super().__init__(
            f"message of {size} bytes (body plus attributes) exceeds the {limit}-byte limit of "
            f"backend {backend_name!r}; nothing was sent. Store large payloads elsewhere "
            "and send a reference"
        )
        self.size = size
        self.limit = limit


class InvalidMessage(MelangeError, ValueError):
    """A message is malformed for the backend (bad attribute, missing group id, ...)."""


class BackendUnavailable(MelangeError, ConnectionError):
    """The broker cannot be reached or refused the credentials."""


class OutcomeUnknown(BackendUnavailable):
    """A request was sent, but no answer came: the broker may or may not have stored it.

    A publish result holding this error is *unknown*: the message may be in the
    queue. Publishing it again may make a duplicate; with producer ids (the
    ``melange.id`` attribute melange sets) a deduplication cache on the
    consumer handles such a duplicate once.
    """


class BrokerError(MelangeError):
    """The broker refused a request for a reason no more specific error describes.

    Backends raise it with :attr:`broker_code` set, so callers can still branch on
    the broker's own code.
    """

    def __init__(self, message: str, *, broker_code: str | None = None):
        super().__init__(message)
        self.broker_code = broker_code


class BackendClosed(MelangeError, RuntimeError):
    """The backend was used after :meth:`~melange.backends.MessagingBackend.close`."""

    def __init__(self, backend_name: str, operation: str):
        super().__init__(
            f"backend {backend_name!r} is closed; cannot {operation}. "
            "Create a new backend (or factory) instead of reusing a closed one"
        )


class SerializationError(MelangeError, ValueError):
    """A payload cannot be serialized or a body cannot be deserialized."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return a ' (did you mean ...?)' suffix for the closest choice, or ''."""
    import difflib

    close: Sequence[str] = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class LeaseLost(MelangeError):
    """A message's lease cannot be extended any more (redelivered, acked, or queue gone)."""

    def __init__(
        self,
        message_id: str,
        queue_name: str,
        reason: str = "it was acknowledged, delivered again after its visibility timeout, "
        "or its queue was deleted",
    ):
        super().__init__(
            f"lease on message {message_id!r} from queue {queue_name!r} was lost: {reason}. "
            "Extend leases before they expire (or raise the queue's visibility_timeout)"
        )
        self.message_id = message_id
        self.queue_name = queue_name
        self.reason = reason
