"""melange 7.x's documented import paths on melange 8: each works and warns, or raises a way on.

The paths come from the 7.x README and docs (commit c62ee77): their snippets'
imports and the API reference pages (``::: melange.serializers.interfaces``, ...).
Each import runs as a 7.x application's line (compiled as ``user_app.py``) after the
alias module is forgotten, as in a new process; the warning must point at that line
and name the melange 8 form.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings
from typing import Any

import pytest

import melange.backends
import melange.serializers
from melange.backends import registry
from melange.backends.memory import MemoryBackend
from melange.compat import RemovedIn8Error
from melange.compat import backends as compat_backends
from melange.compat import cache as compat_cache
from melange.compat import models as compat_models
from melange.compat import testing as compat_testing
from melange.compat.backend_manager import BackendManager
from melange.compat.serialization import LegacySerializer
from melange.dispatcher import MessageDispatcher, SimpleMessageDispatcher
from melange.exceptions import BackendNotFound, ConfigurationError, MelangeError
from melange.factory import MessagingBackendFactory
from melange.message import Message
from melange.serializers import JSONSerializer, PickleSerializer, SerializerRegistry

USER_FILE = "user_app.py"


def run_user_code(
    source: str, monkeypatch: pytest.MonkeyPatch, forget: tuple[str, ...] = ()
) -> tuple[dict[str, Any], list[warnings.WarningMessage]]:
    """Run ``source`` as a user's module after forgetting the alias modules ``forget``."""
    for name in forget:
        monkeypatch.delitem(sys.modules, name, raising=False)
        parent, _, child = name.rpartition(".")
        if parent in sys.modules and child in vars(sys.modules[parent]):
            monkeypatch.delattr(sys.modules[parent], child)
    namespace: dict[str, Any] = {"__name__": "user_app"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(compile(textwrap.dedent(source), USER_FILE, "exec"), namespace)
    return namespace, [w for w in caught if issubclass(w.category, DeprecationWarning)]


def plugin_class(name: str) -> type:
    return registry.get_backend_class(name)


# (7.x import line, modules to forget, {name: melange 8 object}, text the warning must name)
ALIASES = [
    (
        "from melange.serializers.registry import SerializerRegistry",
        ("melange.serializers.registry",),
        {"SerializerRegistry": SerializerRegistry},
        "from melange.serializers import SerializerRegistry",
    ),
    (
        "from melange.serializers.json import JsonSerializer",
        ("melange.serializers.json",),
        {"JsonSerializer": JSONSerializer},
        "from melange.serializers import JSONSerializer",
    ),
    (
        "from melange.serializers.pickle import PickleSerializer",
        ("melange.serializers.pickle",),
        {"PickleSerializer": PickleSerializer},
        "SerializerRegistry(PickleSerializer(), allow_pickle=True)",
    ),
    (
        "from melange.serializers.interfaces import Serializer",
        ("melange.serializers.interfaces",),
        {"Serializer": LegacySerializer},
        "from melange.serializers import Serializer",
    ),
    (
        "from melange.serializers import JsonSerializer",
        (),
        {"JsonSerializer": JSONSerializer},
        "melange.serializers.JSONSerializer",
    ),
    (
        "from melange.models import Message, QueueWrapper, TopicWrapper",
        ("melange.models",),
        {
            "Message": compat_models.Message,
            "QueueWrapper": compat_models.QueueWrapper,
            "TopicWrapper": compat_models.TopicWrapper,
        },
        "melange.Message for payloads",
    ),
    (
        "from melange.backends.sqs.localsqs import LocalSQSBackend",
        ("melange.backends.sqs.localsqs",),
        {"LocalSQSBackend": "localsqs"},
        "from melange.backends import LocalSQSBackend",
    ),
    (
        "from melange.backends.sqs.sqs_backend import AWSBackend",
        ("melange.backends.sqs.sqs_backend",),
        {"AWSBackend": "aws"},
        "from melange.backends import AWSBackend",
    ),
    (
        "from melange.backends.interfaces import MessagingBackend",
        ("melange.backends.interfaces",),
        {"MessagingBackend": compat_backends.MessagingBackend},
        "from melange.backends import MessagingBackend",
    ),
    (
        "from melange.backends.factory import MessagingBackendFactory",
        ("melange.backends.factory",),
        {"MessagingBackendFactory": MessagingBackendFactory},
        "from melange import MessagingBackendFactory",
    ),
    (
        "from melange.backends.testing import InMemoryMessagingBackend, link_synchronously",
        ("melange.backends.testing",),
        {
            "InMemoryMessagingBackend": compat_testing.InMemoryMessagingBackend,
            "link_synchronously": compat_testing.link_synchronously,
        },
        "melange.backends.MemoryBackend with MessageDispatcher",
    ),
    (
        "from melange.backends.backend_manager import BackendManager",
        ("melange.backends.backend_manager",),
        {"BackendManager": BackendManager},
        "an explicit backend: QueuePublisher(backend)",
    ),
    (
        "from melange.message_dispatcher import MessageDispatcher, SimpleMessageDispatcher",
        ("melange.message_dispatcher",),
        {
            "MessageDispatcher": MessageDispatcher,
            "SimpleMessageDispatcher": SimpleMessageDispatcher,
        },
        "from melange import MessageDispatcher, SimpleMessageDispatcher",
    ),
    (
        "from melange.infrastructure.cache import DeduplicationCache, NullCache, RedisCache",
        ("melange.infrastructure.cache",),
        {
            "DeduplicationCache": compat_cache.DeduplicationCache,
            "NullCache": compat_cache.NullCache,
            "RedisCache": compat_cache.RedisCache,
        },
        "melange.dedup: RedisDedupCache(url=...)",
    ),
    (
        "from melange.helpers.typing import T",
        ("melange.helpers.typing",),
        {"T": None},
        "typing.TypeVar",
    ),
    (
        "from melange.backends import BackendManager",
        (),
        {"BackendManager": BackendManager},
        "an explicit backend: QueuePublisher(backend)",
    ),
    (
        "from melange.backends import InMemoryMessagingBackend",
        (),
        {"InMemoryMessagingBackend": compat_testing.InMemoryMessagingBackend},
        "melange.backends.MemoryBackend with MessageDispatcher",
    ),
    (
        "from melange.backends import link_synchronously",
        (),
        {"link_synchronously": compat_testing.link_synchronously},
        "melange.backends.MemoryBackend with MessageDispatcher",
    ),
]


@pytest.mark.parametrize(
    ("line", "forget", "names", "new_form"), ALIASES, ids=[a[0] for a in ALIASES]
)
def test_a_7x_import_works_and_warns_once_at_the_import_line(
    monkeypatch: pytest.MonkeyPatch,
    line: str,
    forget: tuple[str, ...],
    names: dict[str, Any],
    new_form: str,
) -> None:
    namespace, caught = run_user_code(line, monkeypatch, forget)
    for name, expected in names.items():
        if isinstance(expected, str):  # a plugin's backend class
            expected = plugin_class(expected)
        if expected is not None:
            assert namespace[name] is expected
    assert len(caught) == 1, [str(w.message) for w in caught]
    warning = caught[0]
    assert (warning.filename, warning.lineno) == (USER_FILE, 1)
    text = str(warning.message)
    assert "melange 7.x" in text
    assert new_form in text


def test_the_7x_type_variable_is_a_type_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    namespace, _ = run_user_code("from melange.helpers.typing import T", monkeypatch)
    assert namespace["T"].__name__ == "T"


def test_base_sqs_backend_is_the_aws_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    namespace, caught = run_user_code(
        "from melange.backends.sqs.sqs_backend import BaseSQSBackend",
        monkeypatch,
        ("melange.backends.sqs.sqs_backend",),
    )
    assert namespace["BaseSQSBackend"] is plugin_class("aws")
    assert issubclass(plugin_class("localsqs"), namespace["BaseSQSBackend"])
    assert any("BaseSQSBackend" in str(w.message) for w in caught)
    assert all(w.filename == USER_FILE for w in caught)


UNCHANGED = """\
from melange import (
    Consumer, MessageDispatcher, MessagingBackendFactory, QueuePublisher,
    SimpleMessageDispatcher, SingleDispatchConsumer, TopicPublisher, consumer,
)
from melange.backends import AWSBackend, LocalSQSBackend, MessagingBackend
from melange.exceptions import SerializationError
from melange.serializers import PickleSerializer, Serializer, SerializerRegistry
"""


def test_7x_names_that_melange_8_keeps_import_without_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    namespace, caught = run_user_code(UNCHANGED, monkeypatch)
    assert caught == []
    assert issubclass(namespace["SerializationError"], MelangeError)
    assert namespace["Serializer"] is melange.serializers.Serializer
    assert namespace["MessagingBackend"] is melange.backends.MessagingBackend


def test_kafka_backend_raises_backend_not_found_naming_the_way_on() -> None:
    with pytest.raises(BackendNotFound, match="melange 8 has no Kafka backend") as raised:
        from melange.backends import KafkaBackend  # noqa: F401
    assert isinstance(raised.value, ImportError)
    assert "docs/writing-a-backend.md" in str(raised.value)
    assert raised.value.backend_name == "kafka"


def test_the_7x_example_applications_raise_naming_the_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "melange.examples", raising=False)
    with pytest.raises(RemovedIn8Error, match="melange demo") as raised:
        from melange.examples.shared import serializer_registry  # noqa: F401
    assert isinstance(raised.value, MelangeError)
    assert isinstance(raised.value, ImportError)
    assert "in your own module" in str(raised.value)


@pytest.mark.parametrize(
    ("line", "module", "backend"),
    [
        (
            "from melange.backends.sqs.localsqs import LocalSQSBackend",
            "melange.backends.sqs.localsqs",
            "localsqs",
        ),
        (
            "from melange.backends.sqs.sqs_backend import AWSBackend",
            "melange.backends.sqs.sqs_backend",
            "aws",
        ),
    ],
)
def test_without_the_plugin_the_7x_path_raises_what_the_8x_path_raises(
    monkeypatch: pytest.MonkeyPatch, line: str, module: str, backend: str
) -> None:
    def not_installed(name: str) -> type:
        raise registry._not_found(name)

    monkeypatch.setattr(registry, "_load_entry_point", not_installed)
    class_name = registry.KNOWN_BACKENDS[backend].class_name
    with pytest.raises(BackendNotFound) as eight:
        getattr(melange.backends, class_name)
    with pytest.raises(BackendNotFound) as seven:
        run_user_code(line, monkeypatch, (module,))
    assert str(seven.value) == str(eight.value)
    assert f'pip install "melange[{backend}]"' in str(seven.value)


def test_importing_the_json_alias_keeps_the_json_serializer_working(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The submodule melange.serializers.json becomes an attribute of the package;
    # it must not replace the standard library's json there.
    run_user_code(
        "import melange.serializers.json\nimport melange.serializers.pickle",
        monkeypatch,
        ("melange.serializers.json", "melange.serializers.pickle"),
    )
    registry_ = SerializerRegistry(PickleSerializer(), allow_pickle=True)
    registry_.register(JSONSerializer(), manifests="doc")
    encoded = registry_.encode(Message({"a": [1, 2]}, manifest="doc"))
    assert json.loads(encoded.body) == {"a": [1, 2]}
    assert registry_.encode(("x", 1)).body.startswith(b"\x80")  # pickled


# ---------------------------------------------------------------- 7.x backend interface
def test_every_8x_backend_is_a_7x_messaging_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    namespace, _ = run_user_code(
        "from melange.backends.interfaces import MessagingBackend",
        monkeypatch,
        ("melange.backends.interfaces",),
    )
    interface = namespace["MessagingBackend"]
    assert isinstance(MemoryBackend(), interface)
    assert issubclass(plugin_class("aws"), interface)
    assert not isinstance(object(), interface)
    assert not issubclass(int, melange.backends.MessagingBackend)  # no recursion either way


def test_a_backend_written_the_7x_way_is_refused_naming_the_8x_contract(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = """\
    from melange.backends.interfaces import MessagingBackend

    class MyBackend(MessagingBackend):
        def declare_topic(self, topic_name):
            pass

        def retrieve_messages(self, queue, **kwargs):
            return []

        def acknowledge(self, message):
            pass
    """
    with pytest.raises(ConfigurationError) as raised:
        run_user_code(source, monkeypatch, ("melange.backends.interfaces",))
    text = str(raised.value)
    assert "MyBackend implements melange 7.x's backend interface" in text
    assert "retrieve_messages, acknowledge" in text
    assert "subclass melange.backends.MessagingBackend" in text
    assert "docs/writing-a-backend.md" in text


def test_a_backend_written_for_melange_8_may_subclass_the_7x_name() -> None:
    class Mine(MemoryBackend, compat_backends.MessagingBackend):
        pass

    backend = Mine()
    MessagingBackendFactory(backend).init_queue("q")
    registry_ = SerializerRegistry()
    backend.publish("q", [registry_.encode({"n": 1})])
    assert registry_.decode(backend.receive("q")[0]).body == {"n": 1}


# ---------------------------------------------------------------- import melange stays clean
def test_import_melange_loads_no_compat_module() -> None:
    code = (
        "import sys\n"
        "import melange, melange.serializers, melange.backends, melange.message\n"
        "import melange.dispatcher, melange.publishers, melange.factory, melange.consumers\n"
        "from melange.serializers import SerializerRegistry\n"
        "SerializerRegistry().encode({'a': 1})\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('melange.compat'))\n"
        "assert 'melange.compat' not in sys.modules, loaded\n"
        "assert not loaded, loaded\n"
        "print('clean')\n"
    )
    result = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", code],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "clean"
