"""The original melange's (7.x) documentation, and a harness that runs it on melange 8.

Shared by ``tests/test_compat7_documented.py`` (the memory backend) and
``plugins/melange_localsqs/tests/test_compat7_snippets_sqs.py`` (a moto server). No tests here.

What is embedded (:data:`SOURCES`), verbatim: the code blocks of the 7.x README.md and docs/
pages (commit c62ee77 of the original repository) and the files those pages include
(``--8<--``) or tell the reader to run (``melange/examples/...``, ``tests/doc_examples/...``).

How :class:`Docs` runs them, adapted only at the endpoint:

- A file runs the way its page says: as a script (``__name__ == "__main__"``), or as the
  module other files import (``melange.examples.shared``). The 7.x wheel shipped
  ``melange/examples``; melange 8 does not, so the harness serves those files under the
  module paths they were imported from (a ``sys.meta_path`` finder, removed afterwards).
- Modules the files import that are not melange (simple-cqrs's ``DomainEvent``, ``bunch``,
  and the docs' test page's ``polling``, ``hamcrest``, ``tests.probe``) are small stand-ins
  written here (:data:`STAND_INS`): they belong to the 7.x application, not to melange.
- The endpoint: an ``adapt`` function rewrites the backend lines, e.g.
  :func:`adapt_to_memory` (``LocalSQSBackend(...)`` becomes the test's ``broker``) or
  :func:`adapt_port` (``port=9324`` becomes the moto server's port).

Every ``DeprecationWarning`` raised meanwhile is recorded; :meth:`Docs.assert_warned`
checks that one names the 8.x form of a 7.x form (:data:`FORMS`).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import re
import sys
import threading
import time
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

WAIT_SECONDS = 10.0
"""Longest real time a test waits for a consumer running in a thread."""


# ------------------------------------------------------------------ what the warnings must name
@dataclass(frozen=True)
class Form:
    """A 7.x form and what the DeprecationWarning it raises on melange 8 must name."""

    seven: str
    """The 7.x form, as the docs write it."""
    eight: str
    """A regular expression that the warning's 8.x part (after its last "; use ") must match."""


FORMS: dict[str, Form] = {
    form.seven: form
    for form in [
        # import paths (7.x module -> the 8.x module the name lives in now)
        Form("melange.serializers.registry", r"melange\.serializers import SerializerRegistry"),
        Form("melange.serializers.pickle", r"melange\.serializers import PickleSerializer"),
        Form("melange.serializers.json", r"melange\.serializers import JSONSerializer"),
        Form("melange.message_dispatcher", r"from melange import (Simple)?MessageDispatcher"),
        Form("melange.backends.sqs.localsqs", r"from melange\.backends import LocalSQSBackend"),
        Form("melange.backends.interfaces", r"from melange\.backends import MessagingBackend"),
        Form("melange.infrastructure.cache", r"melange\.dedup\.RedisDedupCache"),
        Form("melange.helpers.typing", r"typing\.TypeVar"),
        Form("InMemoryMessagingBackend", r"\bMemoryBackend\b"),
        Form("link_synchronously", r"run_until_idle\("),
        Form("JsonSerializer", r"JSONSerializer"),
        # call forms
        Form("SerializerRegistry(config)", r"SerializerRegistry\("),
        Form("QueuePublisher(registry, backend)", r"QueuePublisher\(backend"),
        Form("TopicPublisher(registry, backend)", r"TopicPublisher\(backend"),
        Form("MessageDispatcher(registry, backend=)", r"MessageDispatcher\(backend, queue_name"),
        Form(
            "SimpleMessageDispatcher(consumer, registry, backend=)",
            r"MessageDispatcher\(backend, queue_name|SimpleMessageDispatcher\(consumer, backend",
        ),
        Form("attach_consumer()", r"MessageDispatcher\(backend, queue_name, \[consumer"),
        Form("consume_loop()", r"\.run\(\)"),
        Form("consume_event()", r"\.run_until_idle\("),
        Form("Consumer(on_message)", r"@consumer"),
        # 8.x has no option to acknowledge a failed message: the warning must say what to do.
        Form("always_ack=True", r"(?i)always_ack|\bcatch|\bexcept"),
        Form("7.x Serializer subclass", r"melange\.serializers(\.| import )Serializer\b"),
        Form("BackendManager", r"explicit backend"),
        Form("no backend (BackendManager default)", r"explicit backend"),
        Form("RedisCache(**kwargs)", r"RedisDedupCache\("),
        Form("message_group_id=", r"\bgroup_id="),
        Form("message_deduplication_id=", r"\bdedup_id="),
        Form("init_queue(name, topics, dlq_name)", r"dead_letter_queue_name="),
        Form("LocalSQSBackend(host='http://...', port='...')", r"endpoint_url="),
    ]
}


def eight_part(text: str) -> str:
    """The part of a warning that names the 8.x form: after its last "; use " (if any)."""
    return text.rsplit("; use ", 1)[-1]


MODULES_7X = (
    "melange.serializers.registry",
    "melange.serializers.json",
    "melange.serializers.pickle",
    "melange.serializers.interfaces",
    "melange.models",
    "melange.message_dispatcher",
    "melange.backends.sqs",
    "melange.backends.sqs.localsqs",
    "melange.backends.sqs.sqs_backend",
    "melange.backends.interfaces",
    "melange.backends.factory",
    "melange.backends.testing",
    "melange.backends.backend_manager",
    "melange.infrastructure",
    "melange.infrastructure.cache",
    "melange.helpers",
    "melange.helpers.typing",
)
"""The 7.x-only module paths: imported afresh in each test, as in a new process, so that a
warning given once per import shows in every test."""

# ------------------------------------------------------------------ third-party stand-ins
STAND_INS: dict[str, str] = {
    "simple_cqrs": '"""Stand-in for simple-cqrs, which the 7.x examples\' events use."""\n',
    "simple_cqrs.domain_event": '''\
"""Stand-in for simple_cqrs.domain_event: the constructor 7.x's examples call."""
import datetime


class DomainEvent:
    def __init__(self, occurred_on=None, metadata=None, correlation_id=None):
        self.occurred_on = occurred_on or datetime.datetime.now(datetime.timezone.utc)
        self.metadata = metadata or {}
        self.correlation_id = correlation_id
''',
    "bunch": '''\
"""Stand-in for bunch: a dict whose keys read as attributes."""


class Bunch(dict):
    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None
''',
    "polling": f'''\
"""Stand-in for polling.poll; waits at most {WAIT_SECONDS:g} s whatever the caller asks."""
import time


class TimeoutException(Exception):
    pass


def poll(target, step, timeout):
    deadline = time.monotonic() + min(timeout, {WAIT_SECONDS!r})
    while not target():
        if time.monotonic() >= deadline:
            raise TimeoutException("nothing came")
        time.sleep(min(step, 0.05))
    return True
''',
    "hamcrest": '''\
"""Stand-in for PyHamcrest: the two names the docs' tests use, as an equality check."""
__all__ = ["assert_that", "is_"]


def is_(expected):
    return expected


def assert_that(actual, expected):
    assert actual == expected, f"{actual!r} != {expected!r}"
''',
    "tests.probe": '''\
"""Stand-in for the original repository's tests/probe.py: the Probe interface."""


class Probe:
    def can_be_measured(self):
        raise NotImplementedError

    def sample(self):
        raise NotImplementedError
''',
}


# ------------------------------------------------------------------ endpoint adaptation
_SQS_CLASSES = ("LocalSQSBackend", "AWSBackend")
_SQS_CALL = re.compile(r"\b(?:LocalSQSBackend|AWSBackend)\((?:[^()]|\([^()]*\))*\)")
_BACKEND_IMPORT = re.compile(r"^from (melange\.backends(?:\.sqs(?:\.\w+)?)?) import (.+)$", re.M)


def adapt_to_memory(source: str) -> str:
    """Point a snippet at the test's ``broker``: SQS backends are neither imported nor built."""

    def imports(match: re.Match[str]) -> str:
        names = [name.strip() for name in match.group(2).split(",")]
        kept = [name for name in names if name not in _SQS_CLASSES]
        if kept == names:
            return match.group(0)
        if not kept:
            return f"# {match.group(0)}  (the test backend replaces it)"
        return f"from {match.group(1)} import {', '.join(kept)}"

    return _SQS_CALL.sub("broker", _BACKEND_IMPORT.sub(imports, source))


def adapt_port(port: int) -> Callable[[str], str]:
    """Point snippets that name port 9324 (ElasticMQ's) at ``port``; nothing else changes."""

    def adapt(source: str) -> str:
        return source.replace("port=9324", f"port={port}")

    return adapt


def module_name(path: str) -> str | None:
    """The module path a 7.x file was imported under, or None for README/docs blocks."""
    if not path.endswith(".py") or ":" in path:
        return None
    return path[: -len(".py")].replace("/", ".")


def filename(path: str) -> str:
    """The file name a snippet runs under: warnings raised on its lines name it."""
    return f"<7.x docs> {path}"


# ------------------------------------------------------------------ the module finder
class _Served(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves the 7.x example files and the stand-ins under their import paths."""

    def __init__(self, modules: dict[str, tuple[str, str]], namespace: dict[str, Any]) -> None:
        self.modules = modules  # module name -> (file name, source)
        self.namespace = namespace  # names every served module starts with (the broker)
        self.packages = {
            ".".join(name.split(".")[:depth])
            for name in modules
            for depth in range(1, name.count(".") + 1)
        } - {"melange", "tests"}

    def names(self) -> set[str]:
        return set(self.modules) | self.packages

    def find_spec(
        self, fullname: str, path: Any = None, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname in self.modules or fullname in self.packages:
            return importlib.util.spec_from_loader(
                fullname, self, is_package=fullname in self.packages
            )
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        if module.__name__ not in self.modules:
            return  # a package that only holds served modules
        file, source = self.modules[module.__name__]
        module.__dict__.update(self.namespace)
        module.__file__ = file
        exec(compile(source, file, "exec"), module.__dict__)


# ------------------------------------------------------------------ running scripts
class Running:
    """A 7.x script running in a thread (one that calls the never-returning ``consume_loop``)."""

    def __init__(self, path: str, module: types.ModuleType) -> None:
        self.path = path
        self.namespace = module.__dict__
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"7.x {path}", daemon=True)

    def _run(self) -> None:
        try:
            code = compile(self.namespace["__source__"], self.namespace["__file__"], "exec")
            exec(code, self.namespace)
        except BaseException as error:  # reported by check()/stop() in the test's thread
            self.error = error

    def check(self) -> None:
        """Raise what the script raised, if it ended with an error."""
        if self.error is not None:
            raise AssertionError(f"{self.path} raised {self.error!r}") from self.error

    def stop(self, variable: str) -> None:
        """Stop the dispatcher the script holds in ``variable``; its consume_loop must return."""
        self.check()
        dispatcher = self.namespace.get(variable)
        assert dispatcher is not None, f"{self.path} has not created {variable!r}"
        stop_dispatcher(dispatcher, f"{self.path}'s {variable}")
        self.thread.join(WAIT_SECONDS)
        assert not self.thread.is_alive(), (
            f"{self.path}: consume_loop() did not return within {WAIT_SECONDS:g} s of stop()"
        )
        self.check()


def stop_dispatcher(dispatcher: Any, what: str) -> None:
    """Stop a 7.x-form dispatcher whose consume_loop runs in another thread."""
    stop = getattr(dispatcher, "stop", None)
    if stop is None:
        pytest.fail(
            f"{what} ({type(dispatcher).__qualname__}, a 7.x-form dispatcher) has no stop(): "
            "a consume_loop() started in a thread, as the 7.x testing page does, cannot be ended"
        )
    stop()


def wait_until(condition: Callable[[], Any], what: str, *running: Running) -> Any:
    """Poll ``condition`` until true; fail early if a running script died."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        for script in running:
            script.check()
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"waited {WAIT_SECONDS:g} s for {what}")
        time.sleep(0.02)


class Output:
    """What the snippets printed so far (pytest's capsys, accumulated)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys
        self._text = ""

    @property
    def text(self) -> str:
        self._text += self._capsys.readouterr().out
        return self._text

    def wait_for(self, line: str, *running: Running) -> None:
        wait_until(lambda: line in self.text, f"{line!r} to be printed", *running)


class Docs:
    """Runs the embedded 7.x files on melange 8 (see the module docstring)."""

    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        adapt: Callable[[str], str],
        namespace: dict[str, Any] | None = None,
    ) -> None:
        self.adapt = adapt
        self.namespace = dict(namespace or {})
        self.filenames = {filename(path) for path in SOURCES}
        for name in MODULES_7X:
            # As in a new process: a warning given once per import is given again.
            monkeypatch.delitem(sys.modules, name, raising=False)
        modules = {name: (f"<stand-in> {name}", text) for name, text in STAND_INS.items()}
        for path, text in SOURCES.items():
            name = module_name(path)
            if name is not None:
                modules[name] = (filename(path), self.adapt(text))
        self._served = _Served(modules, self.namespace)
        self._stack = contextlib.ExitStack()
        self.warnings = self._stack.enter_context(warnings.catch_warnings(record=True))
        warnings.simplefilter("always")
        sys.meta_path.insert(0, self._served)
        self._stack.callback(self._unserve)

    def _unserve(self) -> None:
        sys.meta_path.remove(self._served)
        for name in self._served.names():
            sys.modules.pop(name, None)
        for name in ("melange", "tests"):
            package = sys.modules.get(name)
            for attribute in ("examples", "probe"):
                if package is not None and isinstance(
                    package.__dict__.get(attribute), types.ModuleType
                ):
                    delattr(package, attribute)

    def close(self) -> None:
        self._stack.close()

    def serve_as(self, path: str, name: str) -> None:
        """Serve ``path`` as module ``name`` (before anything imports ``name``)."""
        self._served.modules[name] = (filename(path), self.adapt(SOURCES[path]))

    # ------------------------------------------------------------ running
    def _main(self, path: str, argv: list[str] | None) -> types.ModuleType:
        module = types.ModuleType("__main__")
        module.__dict__.update(self.namespace)
        module.__file__ = filename(path)
        module.__dict__["__source__"] = self.adapt(SOURCES[path])
        if argv is not None:
            sys.argv = [path.rsplit("/", 1)[-1], *argv]  # restored by the fixture
        return module

    def script(self, path: str, argv: list[str] | None = None) -> dict[str, Any]:
        """Run ``path`` as a script; return its namespace (``.partial`` when it raised)."""
        module = self._main(path, argv)
        self.partial = module.__dict__
        main = sys.modules["__main__"]
        sys.modules["__main__"] = module  # pickle finds classes the script defines
        try:
            exec(compile(module.__dict__["__source__"], filename(path), "exec"), module.__dict__)
        finally:
            sys.modules["__main__"] = main
        return module.__dict__

    def start(self, path: str, argv: list[str] | None = None) -> Running:
        """Start ``path`` as a script in a thread (for scripts that end in consume_loop)."""
        running = Running(path, self._main(path, argv))
        running.thread.start()
        return running

    def module(self, path: str) -> types.ModuleType:
        """Import a 7.x file as the module the docs import it as."""
        name = module_name(path)
        assert name is not None, path
        return importlib.import_module(name)

    def run(self, path: str, extra: str = "", **names: Any) -> dict[str, Any]:
        """Run a docs block (not a script) after ``extra`` lines; names are predefined."""
        namespace = {**self.namespace, **names, "__name__": "snippet"}
        self.partial = namespace
        code = self.adapt(extra + SOURCES[path])
        exec(compile(code, filename(path), "exec"), namespace)
        return namespace

    # ------------------------------------------------------------ warnings
    def deprecations(self) -> list[warnings.WarningMessage]:
        return [w for w in self.warnings if issubclass(w.category, DeprecationWarning)]

    def assert_warned(self, *forms: str) -> None:
        """Each 7.x form gave a DeprecationWarning naming its 8.x form."""
        texts = [str(w.message) for w in self.deprecations()]
        missing = [
            f"{seven!r} (a DeprecationWarning whose 8.x part matches {FORMS[seven].eight!r})"
            for seven in forms
            if not any(re.search(FORMS[seven].eight, eight_part(text)) for text in texts)
        ]
        assert not missing, (
            "no DeprecationWarning names the 8.x form of: "
            + "; ".join(missing)
            + "\nwarnings raised: "
            + ("\n  ".join(["", *texts]) if texts else "none")
        )

    def misplaced(self) -> list[str]:
        """DeprecationWarnings that do not point at a line of a 7.x snippet (stacklevel)."""
        return [
            f"{w.filename}:{w.lineno}: {w.message}"
            for w in self.deprecations()
            if w.filename not in self.filenames
        ]


def quick_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the dispatchers 7.x-form calls build poll briefly, for the tests' speed only.

    stop() waits for the receive in flight, a long poll of ``wait_seconds`` (5 s by
    default, on the memory backend too); each test stops one or two consume loops.
    """
    try:
        calls = importlib.import_module("melange.compat.calls_dispatcher")
    except ImportError:
        return
    options = getattr(calls, "DEFAULT_OPTIONS", None)
    if options is not None:
        monkeypatch.setattr(calls, "DEFAULT_OPTIONS", {**options, "wait_seconds": 0.2})


@contextlib.contextmanager
def default_backend_restored() -> Iterator[None]:
    """Put 7.x's process-wide BackendManager default back as it was (it outlives a test)."""
    from melange.compat.backend_manager import BackendManager

    instance = BackendManager._instance
    backend = None if instance is None else instance._backend
    try:
        yield
    finally:
        if instance is None:
            BackendManager._instance = None
        else:
            instance._backend = backend
            BackendManager._instance = instance


@contextlib.contextmanager
def docs_runner(
    monkeypatch: pytest.MonkeyPatch, adapt: Callable[[str], str], **namespace: Any
) -> Iterator[Docs]:
    """A :class:`Docs` for one test; sys.argv is restored afterwards."""
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    quick_stops(monkeypatch)
    docs = Docs(monkeypatch, adapt, namespace)
    try:
        yield docs
    finally:
        docs.close()


# ------------------------------------------------------------------ the 7.x sources
SOURCES: dict[str, str] = {
    "README.md: Publish": """\
from simple_cqrs.domain_event import DomainEvent

from melange.backends.sqs.localsqs import LocalSQSBackend
from melange.publishers import QueuePublisher
from melange.serializers.pickle import PickleSerializer
from melange.serializers.registry import SerializerRegistry


class MyTestMessage:
    def __init__(self, message: str) -> None:
        self.message = message


if __name__ == "__main__":
    serializer_settings = {
        "serializers": {"pickle": PickleSerializer},
        "serializer_bindings": {DomainEvent: "pickle"},
    }

    serializer_registry = SerializerRegistry(serializer_settings)

    backend = LocalSQSBackend(host="localhost", port=9324)
    publisher = QueuePublisher(serializer_registry, backend)
    message = MyTestMessage("Hello World!")
    publisher.publish("melangetutorial-queue", message)
    print("Message sent successfully!")
""",
    "README.md: Consume": """\
from simple_cqrs.domain_event import DomainEvent

from melange.backends.sqs.localsqs import LocalSQSBackend
from melange.consumers import SingleDispatchConsumer, consumer
from melange.examples.doc_examples.tutorial.publish import MyTestMessage
from melange.message_dispatcher import SimpleMessageDispatcher
from melange.serializers.pickle import PickleSerializer
from melange.serializers.registry import SerializerRegistry


class MyConsumer(SingleDispatchConsumer):
    @consumer
    def on_my_test_message_received(self, event: MyTestMessage) -> None:
        print(event.message)


if __name__ == "__main__":
    serializer_settings = {
        "serializers": {"pickle": PickleSerializer},
        "serializer_bindings": {DomainEvent: "pickle"},
    }

    serializer_registry = SerializerRegistry(serializer_settings)

    backend = LocalSQSBackend(host="localhost", port=9324)
    consumer = MyConsumer()
    message_dispatcher = SimpleMessageDispatcher(
        consumer,
        serializer_registry,
        backend=backend,
    )
    print("Consuming...")
    message_dispatcher.consume_loop("melangetutorial-queue")

""",
    "docs/components/serialization.md: SerializerRegistry": """\
registry_config = {
    "serializers": {
        "json": JsonSerializer,
        "pickle": PickleSerializer,
        "yourown": YourOwnSerializer,
    },
    "serializer_bindings": {
        Dict: "json",
        YourOwnMessage: "yourown",
    },
    "default": "pickle",
}

registry = SerializerRegistry(registry_config)

# The backend should be passed as well, ignored in this snippet
publisher = QueuePublisher(registry, backend)
""",
    "docs/components/advanced-topics/default-mb.md: BackendManager": """\
BackendManager().set_default_backend(AWSBackend())
""",
    "melange/examples/doc_examples/tutorial/create_queue.py": """\
from melange import MessagingBackendFactory
from melange.backends import LocalSQSBackend

backend = LocalSQSBackend(host="localhost", port=9324)
factory = MessagingBackendFactory(backend)
factory.init_queue("melangetutorial-queue")
""",
    "melange/examples/doc_examples/tutorial/publish.py": """\
from simple_cqrs.domain_event import DomainEvent

from melange import QueuePublisher
from melange.backends import LocalSQSBackend
from melange.serializers import PickleSerializer, SerializerRegistry


class MyTestMessage:
    def __init__(self, message: str) -> None:
        self.message = message


if __name__ == "__main__":
    serializer_settings = {
        "serializers": {"pickle": PickleSerializer},
        "serializer_bindings": {DomainEvent: "pickle"},
    }

    serializer_registry = SerializerRegistry(serializer_settings)

    backend = LocalSQSBackend(host="localhost", port=9324)
    publisher = QueuePublisher(serializer_registry, backend)
    message = MyTestMessage("Hello World!")
    publisher.publish("melangetutorial-queue", message)
    print("Message sent successfully!")
""",
    "melange/examples/doc_examples/tutorial/consume.py": """\
from simple_cqrs.domain_event import DomainEvent

from melange import SimpleMessageDispatcher, SingleDispatchConsumer, consumer
from melange.backends import LocalSQSBackend
from melange.examples.doc_examples.tutorial.publish import MyTestMessage
from melange.serializers import PickleSerializer, SerializerRegistry


class MyConsumer(SingleDispatchConsumer):
    @consumer
    def on_my_test_message_received(self, event: MyTestMessage) -> None:
        print(event.message)


if __name__ == "__main__":
    serializer_settings = {
        "serializers": {"pickle": PickleSerializer},
        "serializer_bindings": {DomainEvent: "pickle"},
    }

    serializer_registry = SerializerRegistry(serializer_settings)

    backend = LocalSQSBackend(host="localhost", port=9324)
    consumer = MyConsumer()
    message_dispatcher = SimpleMessageDispatcher(
        consumer,
        serializer_registry,
        backend=backend,
    )
    print("Consuming...")
    message_dispatcher.consume_loop("melangetutorial-queue")
""",
    "melange/examples/doc_examples/topic_publish.py": """\
from melange import TopicPublisher
from melange.backends import LocalSQSBackend
from melange.examples.shared import serializer_registry
from melange.serializers import PickleSerializer


class MyTestMessage:
    def __init__(self, message: str) -> None:
        self.message = message


if __name__ == "__main__":
    backend = LocalSQSBackend(host="localhost", port=9324)
    serializer = PickleSerializer()
    publisher = TopicPublisher(serializer_registry, backend)
    message = MyTestMessage("Hello World!")
    publisher.publish("melangetutorial-topic", message)
    print("Message sent successfully!")
""",
    "melange/examples/doc_examples/backend_manager.py": """\
from melange import QueuePublisher
from melange.backends import BackendManager, LocalSQSBackend
from melange.examples.shared import serializer_registry
from melange.serializers import PickleSerializer


class MyTestMessage:
    def __init__(self, message: str) -> None:
        self.message = message


if __name__ == "__main__":
    backend = LocalSQSBackend(host="localhost", port=9324)
    serializer = PickleSerializer()
    BackendManager().set_default_backend(backend)

    publisher = QueuePublisher(serializer_registry)
    message = MyTestMessage("Hello World!")
    publisher.publish("melangetutorial-queue", message)
    print("Message sent successfully!")
""",
    "melange/examples/doc_examples/serializer_example.py": '''\
import json
from typing import Dict, Optional

from bunch import Bunch

from melange.exceptions import SerializationError
from melange.helpers.typing import T
from melange.serializers import Serializer


class MyOwnSerializer(Serializer):
    # If you define a constructor for you serializer, it should accept no parameters

    @staticmethod
    def identifier() -> int:
        """
        Pick a unique identifier for your Serializer.
        The numbers 0 to 40 are reserved for Melange itself
        """
        return 123

    def manifest(self, data: T) -> Optional[str]:
        """
        The manifest is a type hint used on deserialization
        """
        if isinstance(data, Bunch):
            return "bunch"
        if isinstance(data, Dict):
            return "dictionary"
        else:
            raise SerializationError(
                "The data object cannot be used with this serializer"
            )

    def deserialize(self, data: str, manifest: Optional[str] = None) -> T:
        """
        `deserialize` uses the manifest as a type hint
        """
        if manifest == "dictionary":
            deserialized_data = json.loads(data)
            return deserialized_data
        elif manifest == "bunch":
            deserialized_data = Bunch(json.loads(data))
            return deserialized_data
        else:
            raise SerializationError("Unknown manifest")

    def serialize(self, data: T) -> str:
        """
        Serializes the given object to an string
        """
        if isinstance(data, Bunch):
            return json.dumps(dict(data))
        elif isinstance(data, Dict):
            return json.dumps(data)
        else:
            raise SerializationError("This type cannot be used with this serializer")
''',
    "melange/examples/shared.py": """\
from simple_cqrs.domain_event import DomainEvent

from melange.serializers import PickleSerializer, SerializerRegistry

serializer_settings = {
    "serializers": {"pickle": PickleSerializer},
    "serializer_bindings": {DomainEvent: "pickle"},
}

serializer_registry = SerializerRegistry(serializer_settings)
""",
    "melange/examples/init_queues.py": """\
import os

from melange import MessagingBackendFactory
from melange.backends import LocalSQSBackend

if __name__ == "__main__":
    backend = LocalSQSBackend(
        host=os.environ.get("SQSHOST"), port=os.environ.get("SQSPORT")
    )

    factory = MessagingBackendFactory(
        backend=backend,
    )
    factory.init_queue("payment-updates")
    factory.init_queue("order-updates")
    factory.init_queue("saga-updates")

    print("Queues created.")
""",
    "melange/examples/common/commands.py": """\
from datetime import datetime
from typing import Any, Optional

from simple_cqrs.domain_event import DomainEvent


class DoPayment(DomainEvent):
    def __init__(
        self,
        order_id: str,
        reference: str,
        occurred_on: Optional[datetime] = None,
        **kwargs: Any
    ) -> None:
        super().__init__(occurred_on, **kwargs)
        self.order_id = order_id
        self.reference = reference
""",
    "melange/examples/common/domain.py": """\
from dataclasses import dataclass
from datetime import datetime


@dataclass
class Payment:
    id: str
    order_id: str
    status: str
    created: datetime
""",
    "melange/examples/payment_service/app.py": """\
import os

from melange import MessageDispatcher, QueuePublisher
from melange.backends import LocalSQSBackend
from melange.examples.payment_service.consumer import PaymentConsumer
from melange.examples.payment_service.publisher import PaymentPublisher
from melange.examples.payment_service.repository import PaymentRepository
from melange.examples.payment_service.service import PaymentService
from melange.examples.shared import serializer_registry
from melange.serializers import PickleSerializer

if __name__ == "__main__":
    serializer = PickleSerializer()
    backend = LocalSQSBackend(
        host=os.environ.get("SQSHOST"), port=os.environ.get("SQSPORT")
    )

    dispatcher = MessageDispatcher(
        serializer_registry,
        backend=backend,
    )

    payment_consumer = PaymentConsumer(
        PaymentService(
            PaymentRepository(),
            PaymentPublisher(QueuePublisher(serializer_registry, backend=backend)),
        )
    )

    dispatcher.attach_consumer(payment_consumer)

    print("Consuming...")
    dispatcher.consume_loop("payment-updates")
""",
    "melange/examples/payment_service/app_simpleconsumer.py": """\
import os

from melange import QueuePublisher, SimpleMessageDispatcher
from melange.backends import LocalSQSBackend
from melange.examples.payment_service.consumer import PaymentConsumer
from melange.examples.payment_service.publisher import PaymentPublisher
from melange.examples.payment_service.repository import PaymentRepository
from melange.examples.payment_service.service import PaymentService
from melange.examples.shared import serializer_registry
from melange.serializers import PickleSerializer

if __name__ == "__main__":
    serializer = PickleSerializer()
    backend = LocalSQSBackend(
        host=os.environ.get("SQSHOST"), port=os.environ.get("SQSPORT")
    )

    payment_consumer = SimpleMessageDispatcher(
        PaymentConsumer(
            PaymentService(
                PaymentRepository(),
                PaymentPublisher(QueuePublisher(serializer_registry, backend=backend)),
            )
        ),
        serializer_registry,
        backend=backend,
    )

    print("Consuming...")
    payment_consumer.consume_loop("payment-updates")
""",
    "melange/examples/payment_service/consumer.py": """\
from melange import SingleDispatchConsumer, consumer
from melange.examples.common.commands import DoPayment
from melange.examples.payment_service.events import OrderResponse
from melange.examples.payment_service.service import PaymentService


class PaymentConsumer(SingleDispatchConsumer):
    def __init__(self, payment_service: PaymentService):
        super().__init__()
        self.payment_service = payment_service

    @consumer
    def consume_order_response(self, event: OrderResponse) -> None:
        self.payment_service.process(event)

    @consumer
    def consume_do_payment(self, command: DoPayment) -> None:
        self.payment_service.do_payment(command)
""",
    "melange/examples/payment_service/consumer_draft.py": """\
from typing import Any, Optional

from melange import Consumer
from melange.examples.common.commands import DoPayment
from melange.examples.payment_service.events import OrderResponse
from melange.examples.payment_service.service import PaymentService


class PaymentConsumer(Consumer):
    def __init__(self, payment_service: PaymentService):
        super().__init__()
        self.payment_service = payment_service

    def process(self, message: Any, **kwargs: Any) -> None:
        if isinstance(message, OrderResponse):
            self.payment_service.process(message)
        elif isinstance(message, DoPayment):
            self.payment_service.do_payment(message)

    def accepts(self, manifest: Optional[str]) -> bool:
        return manifest in ["OrderResponse", "DoPayment"]
""",
    "melange/examples/payment_service/events.py": """\
from datetime import datetime
from typing import Any, Optional

from simple_cqrs.domain_event import DomainEvent


class OrderResponse(DomainEvent):
    def __init__(
        self, id: str, reference: str, occurred_on: Optional[datetime] = None
    ) -> None:
        super().__init__(occurred_on)
        self.id = id
        self.reference = reference


class OrderStatus(DomainEvent):
    def __init__(
        self,
        order_id: str,
        payment_id: str,
        status: str,
        occurred_on: Optional[datetime] = None,
        **kwargs: Any
    ) -> None:
        super().__init__(occurred_on, **kwargs)
        self.order_id = order_id
        self.payment_id = payment_id
        self.status = status
""",
    "melange/examples/payment_service/publisher.py": """\
from melange import QueuePublisher
from melange.examples.payment_service.events import OrderStatus


class PaymentPublisher:
    def __init__(self, publisher: QueuePublisher) -> None:
        self.publisher = publisher

    def publish_orderstatus(self, orderStatus: OrderStatus) -> None:
        self.publisher.publish("order-updates", orderStatus)
        self.publisher.publish("saga-updates", orderStatus)
""",
    "melange/examples/payment_service/repository.py": """\
from typing import Dict, Optional

from melange.examples.common.domain import Payment


class PaymentRepository:
    def __init__(self) -> None:
        self.payments: Dict[str, Payment] = {}

    def save(self, payment: Payment) -> None:
        self.payments[payment.id] = payment

    def get(self, id: str) -> Optional[Payment]:
        return self.payments.get(id)
""",
    "melange/examples/payment_service/service.py": """\
import uuid
from datetime import datetime

from melange.examples.common.commands import DoPayment
from melange.examples.common.domain import Payment
from melange.examples.payment_service.events import OrderResponse, OrderStatus
from melange.examples.payment_service.publisher import PaymentPublisher
from melange.examples.payment_service.repository import PaymentRepository


class PaymentService:
    def __init__(
        self, payment_repository: PaymentRepository, payment_publisher: PaymentPublisher
    ) -> None:
        self.payment_repository = payment_repository
        self.payment_publisher = payment_publisher

    def process(self, order_response: OrderResponse) -> None:
        payment = Payment(
            str(uuid.uuid4()), order_response.id, "SUCCESS", datetime.now()
        )
        self.payment_repository.save(payment)

        order_status = OrderStatus(
            order_id=payment.order_id, payment_id=payment.id, status="ORDER_PAID"
        )
        print(f"Order {order_response.reference} paid successfully")
        self.payment_publisher.publish_orderstatus(order_status)

    def do_payment(self, do_payment: DoPayment) -> None:
        payment = Payment(
            str(uuid.uuid4()), do_payment.order_id, "SUCCESS", datetime.now()
        )
        self.payment_repository.save(payment)

        order_status = OrderStatus(
            order_id=payment.order_id,
            payment_id=payment.id,
            status="ORDER_PAID",
            correlation_id=do_payment.correlation_id,
        )
        print(f"Order {do_payment.reference} paid successfully")
        self.payment_publisher.publish_orderstatus(order_status)
""",
    "melange/examples/payment_service/triggerer.py": """\
import argparse
import os
import uuid

from melange import QueuePublisher
from melange.backends import LocalSQSBackend
from melange.examples.payment_service.events import OrderResponse
from melange.examples.shared import serializer_registry

if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description="Triggers an order event for the payment service to collect"
    )
    parser.add_argument("reference", type=str, help="The reference number of the order")
    args = parser.parse_args()

    order_reponse = OrderResponse(id=str(uuid.uuid4()), reference=args.reference)
    backend = LocalSQSBackend(
        host=os.environ.get("SQSHOST"), port=os.environ.get("SQSPORT")
    )

    QueuePublisher(serializer_registry, backend=backend).publish(
        "payment-updates", order_reponse
    )

    print(f"Order with reference {args.reference} sent.")
""",
    "melange/examples/saga_pattern/app.py": """\
import os

from melange import QueuePublisher, SimpleMessageDispatcher
from melange.backends import LocalSQSBackend
from melange.examples.saga_pattern.consumer import SagaConsumer
from melange.examples.saga_pattern.publisher import SagaPublisher
from melange.examples.saga_pattern.repository import SagaRepository
from melange.examples.shared import serializer_registry
from melange.serializers import PickleSerializer

if __name__ == "__main__":
    serializer = PickleSerializer()
    backend = LocalSQSBackend(
        host=os.environ.get("SQSHOST"), port=os.environ.get("SQSPORT")
    )

    payment_consumer = SagaConsumer(
        SagaRepository(),
        SagaPublisher(QueuePublisher(serializer_registry, backend)),
    )

    print("Consuming...")
    consumer_handler = SimpleMessageDispatcher(
        payment_consumer,
        serializer_registry,
        backend=backend,
        always_ack=True,
    )
    consumer_handler.consume_loop("saga-updates")
""",
    "melange/examples/saga_pattern/consumer.py": """\
import uuid
from typing import Any

from melange import SingleDispatchConsumer, consumer
from melange.examples.common.commands import DoPayment
from melange.examples.payment_service.events import OrderResponse, OrderStatus
from melange.examples.saga_pattern.models import Saga
from melange.examples.saga_pattern.publisher import SagaPublisher
from melange.examples.saga_pattern.repository import SagaRepository


class SagaConsumer(SingleDispatchConsumer):
    def __init__(
        self,
        saga_repository: SagaRepository,
        saga_publisher: SagaPublisher,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.saga_repository = saga_repository
        self.saga_publisher = saga_publisher

    @consumer
    def on_order_response(self, event: OrderResponse) -> None:
        print(f"Sending payment for order {event.reference}")
        saga = Saga(
            str(uuid.uuid4()),
            data={"order_id": event.id},
        )
        self.saga_repository.save(saga)

        command = DoPayment(
            order_id=event.id, reference=event.reference, correlation_id=saga.id
        )
        self.saga_publisher.publish_dopayment(command)

    @consumer
    def on_order_status(self, event: OrderStatus) -> None:
        print(f"Order received with status: {event.status}")
        saga = self.saga_repository.get(event.correlation_id)
        if not saga:
            return

        print(f"Marking saga {event.correlation_id} as COMPLETED")
        saga.complete()
        self.saga_repository.save(saga)
""",
    "melange/examples/saga_pattern/models.py": """\
from typing import Dict, Optional


class SagaState:
    FAILED = "failed"
    COMPLETED = "completed"
    RUNNING = "running"


class Saga:
    def __init__(self, id: str, data: Optional[Dict] = None) -> None:
        self.id = id
        self.data = data
        self.state = SagaState.RUNNING

    def complete(self) -> None:
        self.state = SagaState.COMPLETED

    def fail(self) -> None:
        self.state = SagaState.FAILED
""",
    "melange/examples/saga_pattern/publisher.py": """\
from melange import QueuePublisher
from melange.examples.common.commands import DoPayment


class SagaPublisher:
    def __init__(self, publisher: QueuePublisher) -> None:
        self.publisher = publisher

    def publish_dopayment(self, do_payment: DoPayment) -> None:
        self.publisher.publish("payment-updates", do_payment)
""",
    "melange/examples/saga_pattern/repository.py": """\
from typing import Dict, Optional

from melange.examples.saga_pattern.models import Saga


class SagaRepository:
    def __init__(self) -> None:
        self.sagas: Dict[str, Saga] = {}

    def save(self, payment: Saga) -> None:
        self.sagas[payment.id] = payment

    def get(self, id: str) -> Optional[Saga]:
        return self.sagas.get(id)
""",
    "melange/examples/saga_pattern/saga_triggerer.py": """\
import argparse
import os
import uuid

from melange import QueuePublisher
from melange.backends import LocalSQSBackend
from melange.examples.payment_service.events import OrderResponse
from melange.examples.shared import serializer_registry
from melange.serializers import PickleSerializer

if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description="Triggers an order event for the payment service to collect"
    )
    parser.add_argument("reference", type=str, help="The reference number of the order")
    args = parser.parse_args()

    order_reponse = OrderResponse(id=str(uuid.uuid4()), reference=args.reference)
    serializer = PickleSerializer()
    backend = LocalSQSBackend(
        host=os.environ.get("SQSHOST"), port=os.environ.get("SQSPORT")
    )

    QueuePublisher(serializer_registry, backend=backend).publish(
        "saga-updates", order_reponse
    )

    print(f"Order with reference {args.reference} sent.")
""",
    "tests/doc_examples/test_async.py": """\
import os
import threading
from dataclasses import dataclass
from typing import Dict, Optional

import polling
from hamcrest import *

from melange import (
    Consumer,
    MessagingBackendFactory,
    QueuePublisher,
    SimpleMessageDispatcher,
)
from melange.backends import LocalSQSBackend
from melange.serializers import PickleSerializer, SerializerRegistry
from tests.probe import Probe


class StateProbe(Probe):
    def __init__(self, state: "State") -> None:
        self.state = state

    def sample(self) -> None:
        pass

    def can_be_measured(self) -> bool:
        self.sample()
        return self.state.value_set is not None

    def wait(self) -> None:
        try:
            polling.poll(self.can_be_measured, 1, timeout=60)
        except polling.TimeoutException as e:
            raise Exception("Timeout!") from e


@dataclass
class State:
    value_set: Optional[int] = None


serializer_settings = {
    "serializers": {
        "pickle": PickleSerializer,
    },
    "serializer_bindings": {},
    "default": "pickle",
}


def test_async_consumer(request):
    # We'll use the ElasticMQ as backend since it works like a real SQS queue
    backend = LocalSQSBackend(
        host=os.environ.get("SQSHOST"), port=os.environ.get("SQSPORT")
    )
    queue_name = "testqueue"

    # Initialize the queue
    queue = MessagingBackendFactory(backend).init_queue(queue_name)

    # Delete the queue upon finishing the execution of the test
    def teardown():
        backend.delete_queue(queue)

    request.addfinalizer(teardown)

    # Create a consumer that, upon receiving a message, will set
    # the variable "value set" to later assert that this value
    # has, indeed, been set by the consumer that is running on another thread
    state = State()

    def set_state(message: Dict) -> None:
        state.value_set = message["value"]

    consumer = Consumer(on_message=set_state)
    registry = SerializerRegistry(serializer_settings)
    handler = SimpleMessageDispatcher(consumer, registry, backend=backend)
    # Start the consumer loop thread to run the consumer loop in the background
    threading.Thread(
        target=lambda: handler.consume_loop(queue_name), daemon=True
    ).start()

    # Publish a message and...
    publisher = QueuePublisher(registry, backend)
    publisher.publish(queue_name, {"value": 1})

    # ...wait until the value is set
    probe = StateProbe(state)
    probe.wait()

    assert_that(state.value_set, is_(1))
""",
    "tests/doc_examples/test_testing.py": """\
from melange import Consumer, QueuePublisher
from melange.backends import InMemoryMessagingBackend, link_synchronously
from melange.serializers import PickleSerializer, SerializerRegistry

serializer_settings = {
    "serializers": {
        "pickle": PickleSerializer,
    },
    "serializer_bindings": {},
    "default": "pickle",
}


def test_inmemory_messaging_backend():
    consumer_1 = Consumer(lambda message: print(f"Hello {message['message']}!"))
    consumer_2 = Consumer(lambda message: print(f"Hello {message['message']} 2!"))

    backend = InMemoryMessagingBackend()
    registry = SerializerRegistry(serializer_settings)
    link_synchronously("somequeue", [consumer_1, consumer_2], registry, backend)

    registry = SerializerRegistry(serializer_settings)
    publisher = QueuePublisher(registry, backend=backend)
    publisher.publish("somequeue", {"message": "Mary"})
""",
}
