"""The Bokeh models of one dashboard session and how a ``Snapshot`` is drawn on them.

Model names (for ``Bokeh.documents[0].get_model_by_name`` in the browser test):
figures ``total-hits``, ``chamber-hits``, ``occupancy-0..3``, ``multiplicity-0..3``;
data sources ``series-source``, ``occupancy-source``, ``multiplicity-source``;
divs ``status`` and ``synthetic``.
"""

from __future__ import annotations

import html

from bokeh.layouts import column, row
from bokeh.models import ColumnDataSource, Div, HoverTool
from bokeh.palettes import Category10
from bokeh.plotting import figure

from dashboard.state import SERIES_COLUMNS, HistogramSet, Snapshot
from dtmon.hits import N_CHAMBERS

TITLE = "dtmon — MiniDT live monitor"
COLORS = Category10[10][:N_CHAMBERS]


def histogram_columns(hists: HistogramSet) -> dict[str, list[float]]:
    """Quad-glyph columns: ``left``/``right`` bin edges (n,) and ``ch0..ch3`` counts (n,)."""
    data: dict[str, list[float]] = {"left": hists.edges[:-1], "right": hists.edges[1:]}
    for c, counts in enumerate(hists.counts):
        data[f"ch{c}"] = counts
    return data


def status_html(snap: Snapshot, now: float, bootstrap_servers: str, topic: str) -> str:
    """The status line: last batch id, seconds since the last update (``now`` in epoch s),
    broker reachability, malformed rows and invalid messages."""
    if snap.last_batch_id is None or snap.last_update is None:
        batch = f"waiting for results on topic <b>{html.escape(topic)}</b>"
    else:
        batch = f"last batch <b>{snap.last_batch_id}</b> · updated <b>{now - snap.last_update:.0f} s</b> ago"
    detail = f" ({html.escape(snap.broker_detail)})" if snap.broker_detail else ""
    if snap.broker_reachable is None:
        broker = f"broker {html.escape(bootstrap_servers)}: connecting…"
    elif snap.broker_reachable:
        broker = f"broker {html.escape(bootstrap_servers)}: <span style='color:green'>reachable</span>{detail}"
    else:
        broker = f"broker {html.escape(bootstrap_servers)}: <b style='color:red'>UNREACHABLE</b>{detail}"
    malformed = snap.series["malformed_rows"]
    quality = (
        f"malformed rows: {int(malformed[-1]) if malformed else 0} in last batch, "
        f"{snap.malformed_rows_kept} in last {len(malformed)} batches · invalid messages: {snap.invalid_messages}"
    )
    if snap.invalid_messages:
        quality += f" <span style='color:red'>(last: {html.escape(snap.last_invalid[:200])})</span>"
    return " · ".join([batch, broker, quality])


class SessionView:
    """Figures and data sources of one browser session; ``draw`` copies a snapshot into them."""

    def __init__(self, bootstrap_servers: str, topic: str) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.drawn_version = -1
        self.series = ColumnDataSource({name: [] for name in SERIES_COLUMNS}, name="series-source")
        self.occupancy = ColumnDataSource(name="occupancy-source")
        self.multiplicity = ColumnDataSource(name="multiplicity-source")
        self.status = Div(name="status", text="starting…", styles={"font-size": "14px"})
        self.synthetic = Div(
            name="synthetic",
            visible=False,
            text="SYNTHETIC DATA — generated rows, not detector data",
            styles={"background": "#d62728", "color": "white", "font-size": "22px", "font-weight": "bold",
                    "padding": "6px 12px"},
        )

        hover = [("batch", "@batch_id"), ("hits", "@total_hits"), ("rows read", "@rows_read")]
        total = figure(name="total-hits", title="Total hits per micro-batch", x_axis_type="datetime",
                       width=600, height=260, x_axis_label="batch start (UTC)", y_axis_label="hits/batch")
        total.line("time_ms", "total_hits", source=self.series, line_width=2)
        total.scatter("time_ms", "total_hits", source=self.series, size=4)
        total.add_tools(HoverTool(tooltips=hover))

        chambers = figure(name="chamber-hits", title="Hits per chamber per micro-batch", x_axis_type="datetime",
                          width=600, height=260, x_axis_label="batch start (UTC)", y_axis_label="hits/batch")
        for c in range(N_CHAMBERS):
            chambers.line("time_ms", f"hits_ch{c}", source=self.series, color=COLORS[c], line_width=2,
                          legend_label=f"chamber {c}")
        chambers.add_layout(chambers.legend[0], "right")  # outside the plot area, lines stay visible

        self.hist_figures = {"occupancy": [], "multiplicity": []}
        labels = {"occupancy": ("channel", "hits"), "multiplicity": ("active channels per orbit", "orbits")}
        sources = {"occupancy": self.occupancy, "multiplicity": self.multiplicity}
        for kind, (xlabel, ylabel) in labels.items():
            for c in range(N_CHAMBERS):
                fig = figure(name=f"{kind}-{c}", title=f"Chamber {c} {kind}", width=300, height=240,
                             x_axis_label=xlabel, y_axis_label=ylabel)
                fig.quad(left="left", right="right", top=f"ch{c}", bottom=0, source=sources[kind],
                         color=COLORS[c], line_color="white")
                fig.y_range.start = 0
                self.hist_figures[kind].append(fig)

        self.layout = column(
            Div(text=f"<h2 style='margin:4px 0'>{TITLE}</h2>"),
            self.synthetic,
            self.status,
            row(total, chambers),
            row(*self.hist_figures["occupancy"]),
            row(*self.hist_figures["multiplicity"]),
        )

    def refresh(self, snap: Snapshot, now: float) -> None:
        """Redraw the data if ``snap.version`` is new; always refresh the status line."""
        if snap.version != self.drawn_version:
            self.drawn_version = snap.version
            self.series.data = {k: list(v) for k, v in snap.series.items()}  # snapshots are shared
            self.occupancy.data = histogram_columns(snap.occupancy)
            self.multiplicity.data = histogram_columns(snap.multiplicity)
            self.synthetic.visible = snap.synthetic
            batch = "" if snap.last_batch_id is None else f" — batch {snap.last_batch_id}"
            for kind, figs in self.hist_figures.items():
                for c, fig in enumerate(figs):
                    fig.title.text = f"Chamber {c} {kind}{batch}"
        text = status_html(snap, now, self.bootstrap_servers, self.topic)
        if text != self.status.text:
            self.status.text = text
