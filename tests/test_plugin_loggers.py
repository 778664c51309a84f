"""The first-party plugins log under ``melange.``, so configuring the ``melange`` logger sees them.

docs/observability.md tells users to configure the ``melange`` logger; a plugin
logging under its module name (``melange_aws.backend``) would escape that. Every
module of every plugin is imported, then the logging registry is read: no logger
may be named after a plugin's package, and each plugin has loggers under
``melange.<backend>``.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil

import pytest

PLUGINS = {
    "melange_aws": "melange.aws",
    "melange_localsqs": "melange.localsqs",
    "melange_gcp": "melange.gcp",
    "melange_azure": "melange.azure",
    "melange_rabbitmq": "melange.rabbitmq",
}


def _import_every_module(package_name: str) -> None:
    package = importlib.import_module(package_name)
    for module in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}."):
        importlib.import_module(module.name)


@pytest.mark.parametrize(("package", "logger_prefix"), sorted(PLUGINS.items()))
def test_plugin_loggers_sit_under_melange(package: str, logger_prefix: str) -> None:
    _import_every_module(package)
    names = list(logging.root.manager.loggerDict)
    assert [name for name in names if name.split(".")[0] == package] == []
    assert any(name == logger_prefix or name.startswith(f"{logger_prefix}.") for name in names)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_handler_on_the_melange_logger_receives_plugin_records() -> None:
    # The recipe of docs/observability.md: one handler on "melange", nothing on the plugins.
    handler = _Collect()
    melange_logger = logging.getLogger("melange")
    melange_logger.addHandler(handler)
    try:
        for package, prefix in PLUGINS.items():
            _import_every_module(package)
            plugin_logger_names = sorted(
                name for name in logging.root.manager.loggerDict if name.startswith(f"{prefix}.")
            )
            assert plugin_logger_names, package
            logging.getLogger(plugin_logger_names[0]).error("from %s", package)
    finally:
        melange_logger.removeHandler(handler)
    assert sorted(r.getMessage() for r in handler.records) == sorted(
        f"from {package}" for package in PLUGINS
    )
