"""Bokeh server lifecycle hooks: ONE results consumer per server process, shared by all sessions.

``on_server_loaded`` puts a ``DashboardRuntime`` on ``server_context.dtmon``; each
session (``main.py``) finds it at ``curdoc().session_context.server_context.dtmon``.
Bokeh runs this file as a module missing from ``sys.modules``: keep classes (dataclasses
in particular) in the real ``dashboard`` package, not here.
"""

import logging

from dashboard.consumer import start_runtime
from dtmon.settings import load_settings

log = logging.getLogger("dtmon.dashboard")


def on_server_loaded(server_context) -> None:
    """Read DTMON_* settings, create the store and start the results consumer thread."""
    runtime = start_runtime(load_settings())
    server_context.dtmon = runtime
    log.info("dashboard reads %s from %s", runtime.settings.results_topic, runtime.settings.bootstrap_servers)


def on_server_unloaded(server_context) -> None:
    """Stop the consumer thread (it closes the Kafka consumer)."""
    runtime = getattr(server_context, "dtmon", None)
    if runtime is not None:
        runtime.consumer.stop()
