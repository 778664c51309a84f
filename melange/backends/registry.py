"""Finding backends by name: entry points (through stevedore) and in-process registrations.

Backends are registered in the ``melange.backends`` entry-point group under
short names (``memory``, ``aws``, ...). Nothing here runs at import time:
``import melange`` scans no entry point and imports no plugin.
"""

from __future__ import annotations

import importlib
import inspect
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from melange.backends.base import Capabilities, MessagingBackend
from melange.exceptions import BackendLoadError, BackendNotFound, ConfigurationError, did_you_mean

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

ENTRY_POINT_GROUP = "melange.backends"


@dataclass(frozen=True)
class KnownBackend:
    """A first-party backend that may not be installed, and how to install it."""

    name: str
    distribution: str
    extra: str | None
    class_name: str

    @property
    def install_hint(self) -> str:
        """The command that installs the backend."""
        return f'pip install "melange[{self.extra}]"' if self.extra else "pip install melange"


KNOWN_BACKENDS: dict[str, KnownBackend] = {
    known.name: known
    for known in (
        KnownBackend("memory", "melange", None, "MemoryBackend"),
        KnownBackend("aws", "melange-aws", "aws", "AWSBackend"),
        KnownBackend("localsqs", "melange-localsqs", "localsqs", "LocalSQSBackend"),
        KnownBackend("gcp", "melange-gcp", "gcp", "GCPPubSubBackend"),
        KnownBackend("azure", "melange-azure", "azure", "AzureServiceBusBackend"),
        KnownBackend("rabbitmq", "melange-rabbitmq", "rabbitmq", "RabbitMQBackend"),
    )
}
"""First-party backends by name: the package that provides each and its install command."""

_registered: dict[str, str] = {}
_registered_lock = threading.Lock()


def _entry_points() -> dict[str, EntryPoint]:
    from importlib.metadata import entry_points

    found: dict[str, EntryPoint] = {}
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry_point.name, entry_point)
    return found


def available_backends() -> list[str]:
    """Return the names of every installed or registered backend, without importing any.

    Returns:
        Sorted backend names, e.g. ``["aws", "memory"]``.
    """
    with _registered_lock:
        names = set(_registered)
    return sorted(names | set(_entry_points()))


def register_backend(name: str, target: str, *, replace: bool = False) -> None:
    """Register a backend class that is not packaged with an entry point.

    The class is imported lazily, on first use.

    Args:
        name: The short name to load it by.
        target: ``"package.module:ClassName"``.
        replace: Allow replacing a name that is already registered or installed.

    Raises:
        ConfigurationError: The target is malformed or the name is taken.
    """
    module, _, attribute = target.partition(":")
    if not name or not module or not attribute:
        raise ConfigurationError(
            f"register_backend({name!r}, {target!r}): give a non-empty name and a target "
            "of the form 'package.module:ClassName'"
        )
    with _registered_lock:
        taken = name in _registered or name in _entry_points()
        if taken and not replace:
            raise ConfigurationError(
                f"a backend named {name!r} is already registered; pass replace=True to override it"
            )
        _registered[name] = target


def unregister_backend(name: str) -> None:
    """Remove a name added with :func:`register_backend` (no error if absent)."""
    with _registered_lock:
        _registered.pop(name, None)


def _not_found(name: str) -> BackendNotFound:
    known = KNOWN_BACKENDS.get(name)
    if known is not None:
        return BackendNotFound(
            f"backend {name!r} is not installed: it is provided by the distribution "
            f"{known.distribution!r}. Install it with: {known.install_hint}",
            backend_name=name,
            install_hint=known.install_hint,
        )
    choices = set(available_backends()) | set(KNOWN_BACKENDS)
    return BackendNotFound(
        f"no backend named {name!r}{did_you_mean(name, choices)}; installed backends: "
        f"{', '.join(available_backends()) or 'none'}. Third-party backends register in the "
        f"{ENTRY_POINT_GROUP!r} entry-point group, or call melange.backends.register_backend()",
        backend_name=name,
    )


def _checked(name: str, candidate: object) -> type[MessagingBackend]:
    if not (isinstance(candidate, type) and issubclass(candidate, MessagingBackend)):
        raise BackendLoadError(
            f"backend {name!r} resolves to {candidate!r}, which is not a subclass of "
            "melange.backends.MessagingBackend; point the entry point at the backend class",
            backend_name=name,
        )
    return candidate


def _load_registered(name: str, target: str) -> type[MessagingBackend]:
    module_name, _, attribute = target.partition(":")
    try:
        candidate = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise BackendLoadError(
            f"backend {name!r} (registered as {target!r}) failed to load: {exc}",
            backend_name=name,
        ) from exc
    return _checked(name, candidate)


def _load_entry_point(name: str) -> type[MessagingBackend]:
    from stevedore import DriverManager
    from stevedore.exception import NoMatches

    def on_failure(_manager: object, entry_point: EntryPoint, exc: BaseException) -> None:
        # stevedore's cached entry points carry no distribution: look it up for the message.
        found = _entry_points().get(name)
        dist = getattr(found.dist if found else None, "name", None) or "its distribution"
        raise BackendLoadError(
            f"backend {name!r} is installed ({dist}, {entry_point.value}) but failed to "
            f"load: {type(exc).__name__}: {exc}. Reinstall or upgrade {dist}",
            backend_name=name,
        ) from exc

    try:
        manager: DriverManager[Any] = DriverManager(
            namespace=ENTRY_POINT_GROUP,
            name=name,
            invoke_on_load=False,
            on_load_failure_callback=on_failure,
        )
    except NoMatches:
        raise _not_found(name) from None
    return _checked(name, manager.driver)


def get_backend_class(name: str) -> type[MessagingBackend]:
    """Return the backend class registered under ``name``, importing it if needed.

    Args:
        name: A backend name such as ``"memory"`` or ``"aws"``.

    Raises:
        BackendNotFound: Nothing is registered under ``name``; the message names the
            distribution and install command for first-party backends.
        BackendLoadError: The plugin is installed but cannot be imported, or is not a
            :class:`MessagingBackend`.
    """
    with _registered_lock:
        target = _registered.get(name)
    if target is not None:
        return _load_registered(name, target)
    return _load_entry_point(name)


def accepted_options(backend_class: type[MessagingBackend]) -> dict[str, inspect.Parameter]:
    """Return the keyword options a backend's constructor accepts, by name."""
    parameters = inspect.signature(backend_class.__init__).parameters
    return {
        pname: param
        for pname, param in parameters.items()
        if pname != "self"
        and param.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    }


def check_options(backend_class: type[MessagingBackend], options: dict[str, Any]) -> None:
    """Raise :class:`ConfigurationError` for options the backend does not accept."""
    accepted = accepted_options(backend_class)
    takes_any = any(
        p.kind is inspect.Parameter.VAR_KEYWORD
        for p in inspect.signature(backend_class.__init__).parameters.values()
    )
    unknown = sorted(set(options) - set(accepted))
    if unknown and not takes_any:
        raise ConfigurationError(
            f"backend {backend_class.name!r} does not accept option(s) {', '.join(unknown)}"
            f"{did_you_mean(unknown[0], accepted)}; accepted options: "
            f"{', '.join(sorted(accepted)) or 'none'}"
        )


def load_backend(name: str, **options: Any) -> MessagingBackend:
    """Create a backend by name.

    Args:
        name: A backend name such as ``"memory"`` or ``"aws"``.
        **options: Keyword arguments for the backend's constructor.

    Returns:
        A new backend instance.

    Raises:
        BackendNotFound: See :func:`get_backend_class`.
        BackendLoadError: See :func:`get_backend_class`.
        ConfigurationError: An option the backend does not accept.
    """
    backend_class = get_backend_class(name)
    check_options(backend_class, options)
    return backend_class(**options)


@dataclass(frozen=True)
class BackendInfo:
    """What ``melange backends`` shows about one backend."""

    name: str
    distribution: str | None
    version: str | None
    capabilities: Capabilities | None
    error: str | None = None

    @property
    def status(self) -> str:
        """``"ok"``, ``"not installed"`` or ``"error"``."""
        if self.error is None:
            return "ok"
        return "not installed" if self.distribution is None else "error"


def describe_backends(include_known: bool = True) -> list[BackendInfo]:
    """Load every installed backend and report it; one broken plugin hides no other.

    Args:
        include_known: Also list first-party backends that are not installed.
    """
    entry_points = _entry_points()
    infos: list[BackendInfo] = []
    for name in available_backends():
        entry_point = entry_points.get(name)
        dist = entry_point.dist if entry_point is not None else None
        dist_name = dist.name if dist is not None else "(registered in-process)"
        version = dist.version if dist is not None else None
        try:
            capabilities: Capabilities | None = get_backend_class(name).capabilities
            error = None
        except (BackendLoadError, BackendNotFound) as exc:
            capabilities, error = None, str(exc)
        infos.append(BackendInfo(name, dist_name, version, capabilities, error))
    if include_known:
        installed = {info.name for info in infos}
        for known in KNOWN_BACKENDS.values():
            if known.name not in installed:
                infos.append(BackendInfo(known.name, None, None, None, known.install_hint))
    return infos
