"""Session document of the dashboard (``bokeh serve dashboard``): built once per browser tab.

Absolute imports on purpose: Bokeh runs this file as a throw-away module inside a
synthetic package, so ``dashboard`` must be the installed package.
"""

import time
from pathlib import Path

from bokeh.io import curdoc
from bokeh.models import Div

from dashboard.view import TITLE, SessionView

doc = curdoc()
doc.title = TITLE
runtime = getattr(doc.session_context and doc.session_context.server_context, "dtmon", None)
if runtime is None:
    doc.add_root(Div(text="dtmon dashboard: no results consumer (serve the directory: bokeh serve dashboard)"))
else:
    view = SessionView(runtime.settings.bootstrap_servers, runtime.settings.results_topic,
                       runtime.settings.dashboard_history,
                       Path(runtime.settings.reference_file) if runtime.settings.reference_file else None)
    for root in view.roots:
        doc.add_root(root)

    def refresh() -> None:
        view.refresh(runtime.store.snapshot(), time.time())

    refresh()
    doc.add_periodic_callback(refresh, runtime.settings.dashboard_refresh_ms)
