"""Topology files: topics, queues and their backend declared in TOML.

``melange plan FILE`` and ``melange apply FILE`` read this format::

    [backend]                     # optional; otherwise the configured backend
    name = "memory"               # (see melange.config)
    options = {}                  # keyword options for the backend

    [[topics]]
    name = "payments"
    # fifo = false                # default: whether the name ends with ".fifo"

    [[queues]]
    name = "payment-updates"
    topics = ["payments"]         # subscribe to these topics (created if missing)
    dead_letter_queue = "payment-updates-dlq"
    max_receive_count = 3         # needs dead_letter_queue
    visibility_timeout = 30       # seconds
    # message_retention_period = 345600
    # delay_seconds = 0
    # fifo = false
    subscription_filter = { event = ["paid"] }

The whole file is checked and planned before anything is applied: an unknown
key, a wrong type or a request the backend refuses changes nothing.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from melange.exceptions import InvalidTopology, did_you_mean
from melange.factory import MessagingBackendFactory
from melange.topology import Action, Plan, QueueSpec, SubscriptionSpec, TopicSpec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "BackendEntry",
    "QueueEntry",
    "TopicEntry",
    "TopologyFile",
    "load_topology",
]

_SECTIONS = ("backend", "topics", "queues")
_BACKEND_KEYS = ("name", "options")
_TOPIC_KEYS = ("name", "fifo")
_QUEUE_KEYS = (
    "name",
    "topics",
    "dead_letter_queue",
    "max_receive_count",
    "visibility_timeout",
    "message_retention_period",
    "delay_seconds",
    "fifo",
    "subscription_filter",
)
# Expected TOML types per key, checked here so errors can name the file and entry.
_SECONDS = (int, float)
_KEY_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "options": (dict,),
    "fifo": (bool,),
    "topics": (list,),
    "dead_letter_queue": (str,),
    "max_receive_count": (int,),
    "visibility_timeout": _SECONDS,
    "message_retention_period": _SECONDS,
    "delay_seconds": _SECONDS,
    "subscription_filter": (dict,),
}
_TYPE_NAMES = {
    str: "a string",
    dict: "a table",
    bool: "true or false",
    list: "an array",
    int: "a whole number",
}


@dataclass(frozen=True)
class BackendEntry:
    """The ``[backend]`` table: which backend the file's topology is meant for.

    Attributes:
        name: The backend name (``"memory"``, ``"aws"``, ...).
        options: Keyword options for the backend.
    """

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TopicEntry:
    """One ``[[topics]]`` entry; its fields are :meth:`MessagingBackendFactory.init_topic`'s."""

    name: str
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class QueueEntry:
    """One ``[[queues]]`` entry; its fields are :meth:`MessagingBackendFactory.init_queue`'s.

    Attributes:
        name: The queue name.
        topics: Topics to subscribe the queue to.
        dead_letter_queue: The dead-letter queue, if any.
        settings: The other keyword settings (``max_receive_count``, ``visibility_timeout``, ...).
    """

    name: str
    topics: tuple[str, ...] = ()
    dead_letter_queue: str | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TopologyFile:
    """A loaded topology file.

    Attributes:
        path: Where it was read from.
        backend: Its ``[backend]`` table, if it has one.
        topics: Its topics, in file order.
        queues: Its queues, in file order.
    """

    path: Path
    backend: BackendEntry | None = None
    topics: tuple[TopicEntry, ...] = ()
    queues: tuple[QueueEntry, ...] = ()

    def factory(self, backend: str | None = None, **options: Any) -> MessagingBackendFactory:
        """Create a factory over the backend this file is meant for.

        Args:
            backend: A backend name that overrides the file's ``[backend]``
                table. The file's options are used only when the names agree.
            **options: Backend options added to (or replacing) the file's.

        Returns:
            A factory over the overriding backend, else the file's, else the
            configured one (:func:`melange.config.load_backend_from_config`).

        Raises:
            BackendNotFound: The backend is not installed.
            ConfigurationError: An option the backend does not accept.
        """
        entry = self.backend
        if backend is not None and (entry is None or entry.name != backend):
            return MessagingBackendFactory.from_config(backend, **options)
        if entry is not None:
            return MessagingBackendFactory.from_config(entry.name, **{**entry.options, **options})
        return MessagingBackendFactory.from_config(**options)

    def plan(self, factory: MessagingBackendFactory) -> Plan:
        """Plan the whole file against the factory's backend, changing nothing.

        Every entry is validated and diffed first; actions shared between
        entries (a topic several queues subscribe to, a dead-letter queue that
        is also declared on its own) appear once, topics first, then queues
        with dead-letter queues before the queues that use them, then subscriptions.

        Raises:
            InvalidTopology: An entry is invalid or the backend would refuse it.
            UnsupportedCapability: An entry needs something the backend cannot do.
            ImmutableSettingError: An existing resource differs in a setting the
                broker cannot change.
        """
        declared_queues = {entry.name for entry in self.queues}
        actions: dict[tuple[str, str], Action] = {}
        unchanged: list[str] = []

        def add(plan: Plan, owner: str | None) -> None:
            for action in plan:
                spec = action.spec
                # A queue declared by its own entry is planned by that entry only,
                # not with the defaults another entry uses for its dead-letter queue.
                if (
                    isinstance(spec, QueueSpec)
                    and spec.name != owner
                    and spec.name in declared_queues
                ):
                    continue
                actions.setdefault((_category(action), action.target), action)
            unchanged.extend(plan.unchanged)

        for topic in self.topics:
            with self._context(f"[[topics]] {topic.name!r}"):
                add(factory.plan_topic(topic.name, **topic.settings), None)
        for queue in _dead_letter_queues_first(self.queues):
            with self._context(f"[[queues]] {queue.name!r}"):
                plan = factory.plan_queue(
                    queue.name,
                    list(queue.topics) or None,
                    queue.dead_letter_queue,
                    **queue.settings,
                )
            add(plan, queue.name)

        ordered = sorted(actions.values(), key=lambda a: _ORDER[_category(a)])
        touched = {action.target for action in ordered}
        kept = tuple(dict.fromkeys(name for name in unchanged if name not in touched))
        return Plan(tuple(ordered), kept)

    @contextlib.contextmanager
    def _context(self, label: str) -> Iterator[None]:
        """Name the file and entry in plain InvalidTopology errors from the factory."""
        try:
            yield
        except InvalidTopology as exc:
            # Subclasses (InvalidName, ImmutableSettingError) already name their
            # resource and are kept as they are, so callers can still catch them.
            if type(exc) is not InvalidTopology:
                raise
            raise InvalidTopology(f"topology file {str(self.path)!r}, {label}: {exc}") from exc

    def apply(self, factory: MessagingBackendFactory) -> Plan:
        """Plan the whole file, then apply it; return what was applied.

        Nothing is applied unless every entry is valid (see :meth:`plan`).
        """
        return factory.apply(self.plan(factory))


_ORDER = {"topic": 0, "queue": 1, "subscription": 2}


def _category(action: Action) -> str:
    if isinstance(action.spec, TopicSpec):
        return "topic"
    if isinstance(action.spec, SubscriptionSpec):
        return "subscription"
    return "queue"


def _dead_letter_queues_first(queues: tuple[QueueEntry, ...]) -> list[QueueEntry]:
    """Order entries so a dead-letter queue declared in the file is planned before its users."""
    by_name = {entry.name: entry for entry in queues}
    ordered: list[QueueEntry] = []
    seen: set[str] = set()

    def visit(entry: QueueEntry) -> None:
        if entry.name in seen:
            return
        seen.add(entry.name)
        dead_letter = by_name.get(entry.dead_letter_queue or "")
        if dead_letter is not None:
            visit(dead_letter)
        ordered.append(entry)

    for entry in queues:
        visit(entry)
    return ordered


# ------------------------------------------------------------------- loading
def load_topology(path: str | os.PathLike[str]) -> TopologyFile:
    """Read and check a topology file.

    Args:
        path: The TOML file.

    Returns:
        The file's backend, topics and queues.

    Raises:
        InvalidTopology: The file cannot be read, is not TOML, or has an unknown
            key, a wrong type or a duplicate name; the message names the file,
            the entry and the accepted keys.
    """
    file = Path(path)
    try:
        with file.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise InvalidTopology(
            f"cannot read topology file {str(file)!r}: {exc.strerror or exc}"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidTopology(f"topology file {str(file)!r} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:  # tomllib decodes the bytes before it parses them
        raise InvalidTopology(
            f"topology file {str(file)!r} is not UTF-8 (byte {exc.start}): a topology file "
            "must be UTF-8 TOML; save it with UTF-8 encoding"
        ) from None
    return _parse(file, data)


def _parse(file: Path, data: dict[str, Any]) -> TopologyFile:
    where = f"topology file {str(file)!r}"
    _check_keys(where, "the top level", data, _SECTIONS)

    backend = None
    if "backend" in data:
        table = _table(where, "[backend]", data["backend"])
        _check_keys(where, "[backend]", table, _BACKEND_KEYS)
        _check_types(where, "[backend]", table)
        if "name" not in table:
            raise InvalidTopology(f'{where}: [backend] needs a name, e.g. name = "memory"')
        backend = BackendEntry(table["name"], dict(table.get("options", {})))

    topics = tuple(
        TopicEntry(
            table["name"],
            {key: value for key, value in table.items() if key != "name"},
        )
        for table in _entries(where, "topics", data, _TOPIC_KEYS)
    )
    queues = tuple(
        QueueEntry(
            table["name"],
            tuple(table.get("topics", ())),
            table.get("dead_letter_queue"),
            {
                key: value
                for key, value in table.items()
                if key not in ("name", "topics", "dead_letter_queue")
            },
        )
        for table in _entries(where, "queues", data, _QUEUE_KEYS)
    )
    return TopologyFile(file, backend, topics, queues)


def _entries(
    where: str, section: str, data: dict[str, Any], accepted: tuple[str, ...]
) -> list[dict[str, Any]]:
    value = data.get(section, [])
    if not isinstance(value, list):
        raise InvalidTopology(
            f"{where}: {section!r} must be an array of tables, written as [[{section}]] "
            "sections, one per entry"
        )
    entries: list[dict[str, Any]] = []
    names: set[str] = set()
    for index, item in enumerate(value, start=1):
        label = f"[[{section}]] entry #{index}"
        table = _table(where, label, item)
        if isinstance(table.get("name"), str):
            label = f"{label} ({table['name']!r})"
        _check_keys(where, label, table, accepted)
        if "name" not in table:
            raise InvalidTopology(f'{where}: {label} needs a name, e.g. name = "payments"')
        _check_types(where, label, table)
        if table["name"] in names:
            raise InvalidTopology(
                f"{where}: {label} repeats the name {table['name']!r}; declare each "
                f"{section[:-1]} once"
            )
        names.add(table["name"])
        entries.append(table)
    return entries


def _table(where: str, label: str, value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidTopology(f"{where}: {label} must be a table, got {_describe(value)}")
    return value


def _check_keys(
    where: str, label: str, table: Mapping[str, Any], accepted: tuple[str, ...]
) -> None:
    for key in table:
        if key not in accepted:
            raise InvalidTopology(
                f"{where}: {label} has an unknown key {key!r}{did_you_mean(key, accepted)}; "
                f"accepted keys: {', '.join(accepted)}"
            )


def _check_types(where: str, label: str, table: Mapping[str, Any]) -> None:
    for key, value in table.items():
        expected = _KEY_TYPES[key]
        # bool is an int in Python but not a number of seconds or a count in TOML terms.
        wrong_bool = isinstance(value, bool) and bool not in expected
        if wrong_bool or not isinstance(value, expected):
            wanted = "a number" if expected is _SECONDS else _TYPE_NAMES[expected[0]]
            raise InvalidTopology(
                f"{where}: in {label}, {key} must be {wanted}, got {_describe(value)}"
            )
        if key == "name" and not value:
            raise InvalidTopology(f"{where}: in {label}, name must not be empty")
        if isinstance(value, list) and not all(isinstance(item, str) and item for item in value):
            raise InvalidTopology(
                f'{where}: in {label}, topics must be an array of topic names, e.g. ["payments"]'
            )
        if key == "subscription_filter" and isinstance(value, dict):
            for attribute, allowed in value.items():
                if not (
                    isinstance(allowed, list)
                    and allowed
                    and all(isinstance(item, str) for item in allowed)
                ):
                    raise InvalidTopology(
                        f"{where}: in {label}, subscription_filter.{attribute} must be a "
                        f'non-empty array of strings, e.g. {{ {attribute} = ["paid"] }}'
                    )


def _describe(value: object) -> str:
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    kinds = {str: "a string", int: "an integer", float: "a number", list: "an array"}
    kind = "a table" if isinstance(value, dict) else kinds.get(type(value), type(value).__name__)
    return f"{value!r} ({kind})"
