"""``melange worker MODULE:ATTR``: run an application's dispatchers in supervised processes.

The command (``melange/cli_worker.py``) hands its options to
:func:`melange.worker.supervisor.run_supervisor`, which starts worker
processes (:mod:`melange.worker.child`); each imports the target
(:mod:`melange.worker.target`), runs its dispatchers until told to stop, and,
with ``--health-port``, writes metrics (:mod:`melange.worker.metrics`) that
the supervisor serves (:mod:`melange.worker.health`). docs/worker.md is the
user's guide.

Nothing here is imported by ``import melange``; prometheus-client is imported
only when metrics are on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from melange.observability import Hooks

__all__ = ["metrics_hooks"]


def metrics_hooks() -> Hooks:
    """Return hooks that feed the worker's handler-latency histogram; chain them with yours.

    Inside a ``melange worker --health-port`` process these record
    ``melange_handler_seconds`` per queue and consumer; anywhere else they
    do nothing, so a factory can include them unconditionally::

        from melange.observability import CompositeHooks
        from melange.tracing import default_hooks
        from melange.worker import metrics_hooks

        def dispatchers():
            hooks = CompositeHooks(default_hooks(), metrics_hooks())
            return [MessageDispatcher(backend, "orders", [bill], hooks=hooks)]

    The message counters and in-flight gauge need no hooks: the worker reads
    every dispatcher's :attr:`~melange.dispatcher.MessageDispatcher.stats`.
    """
    from melange.worker.child import current_metrics_hooks

    return current_metrics_hooks()
