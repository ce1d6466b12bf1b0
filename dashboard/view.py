"""The Bokeh models of one dashboard session and how a ``Snapshot`` is drawn on them.

Model names (for ``Bokeh.documents[0].get_model_by_name`` in the browser test):
figures ``total-hits``, ``chamber-hits``, ``occupancy-0..3``, ``occupancy_scint-0..3`` (E1),
``multiplicity-0..3``, ``drift_time-0..3`` (E2), ``map-0..3`` (2D chamber maps);
data sources ``series-source``, ``occupancy-source``, ``occupancy_scint-source``,
``multiplicity-source``, ``drift_time-source``, ``map-0-source..map-3-source``,
``rates-source``, ``health-source``; divs ``status``, ``synthetic``, ``run``, ``health``,
``view-caption``, ``scintillator``; widgets ``view-mode``, ``window-n``, ``reset``; ``tabs``.
"""

from __future__ import annotations

import html

import numpy as np
from bokeh.layouts import column, row
from bokeh.models import (
    BoxAnnotation,
    Button,
    ColorBar,
    ColumnDataSource,
    CustomJS,
    CustomJSTickFormatter,
    DataTable,
    Div,
    FixedTicker,
    HoverTool,
    LinearColorMapper,
    NumberFormatter,
    RadioButtonGroup,
    Span,
    Spinner,
    TableColumn,
    TabPanel,
    Tabs,
)
from bokeh.palettes import Category10, Viridis256
from bokeh.plotting import figure

from dashboard.state import (
    CELL_WIDTH_MM,
    LAYER_HEIGHT_MM,
    MODES,
    SERIES_COLUMNS,
    HistogramSet,
    Snapshot,
    Totals,
    ViewChoice,
    cell_layout,
    channel_status,
    health_html,
    health_rows,
    rate_columns,
    run_html,
    scintillator_text,
)
from dtmon.hits import CELLS_PER_CHAMBER, CELLS_PER_LAYER, N_CHAMBERS, N_LAYERS
from dtmon.schema import SCINT_CHAMBER_OFFSET_NS

TITLE = "dtmon — MiniDT live monitor"
COLORS = Category10[10][:N_CHAMBERS]
TIME_BOX_NS = (0.0, 390.0)  # half a cell / v_drift = 21 mm / 53.8 um/ns (domain notes §4)
#: y-axis and colour-bar labels padded to a fixed width with figure spaces (digit-wide): BokehJS
#: re-lays out the WHOLE root whenever an axis gets wider or narrower (e.g. 0-30 -> 0-150 hits),
#: and 20 plots doing that at every view switch froze the browser for seconds.
PAD_LABELS_JS = "return String(Number(tick.toPrecision(6))).{pad}(7, '\u2007')"
STATUS_LINE = {"": "white", "dead": "#d62728", "noisy": "black"}
HIST_LABELS = {  # kind -> (figure title, x label, y label)
    "occupancy": ("occupancy", "local channel", "hits"),
    "occupancy_scint": ("E1 (scint-tagged)", "local channel", "hits"),
    "multiplicity": ("multiplicity", "active channels per orbit", "orbits"),
    "drift_time": ("E2: drift time", "DRIFTIME (ns)", "hits"),
}


def histogram_columns(hists: HistogramSet | None) -> dict[str, list[float]]:
    """Quad-glyph columns: ``left``/``right`` bin edges (n,) and ``ch0..ch3`` counts (n,); empty for None."""
    if hists is None:
        return {"left": [], "right": [], **{f"ch{c}": [] for c in range(N_CHAMBERS)}}
    data: dict[str, list[float]] = {"left": hists.edges[:-1], "right": hists.edges[1:]}
    for c, counts in enumerate(hists.counts):
        data[f"ch{c}"] = counts.tolist()
    return data


def occupancy_columns(hists: HistogramSet, status: np.ndarray) -> dict[str, list[float]]:
    """``histogram_columns`` plus bin ``centre`` and health marks, NaN (not drawn) where the channel is
    not flagged: ``dead_ch{c}`` = the chamber's highest count (min 1; a full-height band) and
    ``noisy_ch{c}`` = the bin's count. ``status`` shape (4, 64)."""
    data = histogram_columns(hists)
    data["centre"] = [(a + b) / 2 for a, b in zip(data["left"], data["right"])]
    for c in range(N_CHAMBERS):
        counts = hists.counts[c].astype(float)
        data[f"dead_ch{c}"] = np.where(status[c] == "dead", max(1.0, counts.max()), np.nan).tolist()
        data[f"noisy_ch{c}"] = np.where(status[c] == "noisy", counts, np.nan).tolist()
    return data


def map_columns(hists: HistogramSet, chamber: int, status: np.ndarray) -> dict[str, list]:
    """Rect-glyph columns of one chamber's 2D map, one row per local channel (64,): cell centre
    ``x``/``y`` (mm), ``layer``, ``cell``, ``channel``, ``hits``, ``status`` and outline colour/width."""
    layout = cell_layout()
    flags = status[chamber].tolist()
    return {
        **{k: v.tolist() for k, v in layout.items()},
        "chamber": [chamber] * CELLS_PER_CHAMBER,
        "hits": hists.counts[chamber].tolist(),
        "status": [f or "ok" for f in flags],
        "line_color": [STATUS_LINE[f] for f in flags],
        "line_width": [4 if f else 1 for f in flags],
    }


def status_html(snap: Snapshot, now: float, bootstrap_servers: str, topic: str) -> str:
    """The status line: last batch id, seconds since the last update (``now`` in epoch s),
    broker reachability, malformed rows, invalid messages and ORBIT_CNT jumps."""
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
    parts = [batch, broker, quality]
    if snap.last is not None and snap.last.orbit_jumps:
        parts.append(f"<b style='color:#d62728'>ORBIT_CNT jumps in last batch: {snap.last.orbit_jumps}</b>")
    return " · ".join(parts)


def _table(source: ColumnDataSource, **kwargs) -> DataTable:
    """A DataTable that redraws when ``source.data`` is replaced by rows of the same count.

    BokehJS 3.9 refreshes a table only when its CDSView's indices change, which they do
    not for a same-length replacement; the tiny JS callback re-emits the view's change.
    """
    table = DataTable(source=source, index_position=None, **kwargs)
    source.js_on_change("data", CustomJS(args={"view": table.view}, code="view.change.emit()"))
    return table


def _histogram_figure(kind: str, chamber: int, source: ColumnDataSource, width: int, height: int):
    title, xlabel, ylabel = HIST_LABELS[kind]
    fig = figure(name=f"{kind}-{chamber}", title=f"Chamber {chamber} {title}", width=width, height=height,
                 x_axis_label=xlabel, y_axis_label=ylabel, tools="pan,box_zoom,wheel_zoom,reset,save")
    fig.quad(left="left", right="right", top=f"ch{chamber}", bottom=0, source=source, color=COLORS[chamber],
             line_color="white")
    fig.add_tools(HoverTool(tooltips=[("bin", "@left{0.[0]} – @right{0.[0]}"), ("count", f"@ch{chamber}")]))
    fig.y_range.start = 0
    return fig


def map_title(chamber: int) -> str:
    """Title of a 2D map; chamber 1 sits rotated by 90° in the telescope (domain notes §2)."""
    return f"Chamber {chamber} map" + (", rotated 90° in the telescope (local frame)" if chamber == 1 else "")


def _map_figure(chamber: int, source: ColumnDataSource, mapper: LinearColorMapper):
    width = CELLS_PER_LAYER * CELL_WIDTH_MM + CELL_WIDTH_MM / 2
    fig = figure(name=f"map-{chamber}", title=map_title(chamber), width=620, height=230,
                 x_range=(0, width), y_range=(0, N_LAYERS * LAYER_HEIGHT_MM), tools="save",
                 x_axis_label="x along the layer (mm, chamber frame; not to scale vertically)")
    fig.rect(x="x", y="y", width=CELL_WIDTH_MM, height=LAYER_HEIGHT_MM, source=source,
             fill_color={"field": "hits", "transform": mapper}, line_color="line_color", line_width="line_width")
    fig.add_tools(HoverTool(tooltips=[("chamber", "@chamber"), ("layer", "@layer"), ("cell", "@cell"),
                                      ("channel", "@channel"), ("hits", "@hits"), ("status", "@status")]))
    centres = [LAYER_HEIGHT_MM * (k + 0.5) for k in range(N_LAYERS)]
    fig.yaxis.ticker = FixedTicker(ticks=centres)
    fig.yaxis.major_label_overrides = {y: f"layer {k + 1}" for k, y in enumerate(centres)}
    fig.xgrid.visible = fig.ygrid.visible = False
    fig.add_layout(ColorBar(color_mapper=mapper, title="hits", width=12), "right")
    return fig


class SessionView:
    """Figures, widgets and data sources of one browser session; ``refresh`` copies a snapshot into them.

    Widget callbacks run on the session's own event loop and redraw from the last
    snapshot seen; the Reset button resets this session's cumulative view only.
    """

    def __init__(self, bootstrap_servers: str, topic: str, history: int = 300) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.choice = ViewChoice(window=min(10, history))
        self.snap: Snapshot | None = None
        self.drawn_ingests = -1
        self.series = ColumnDataSource({name: [] for name in SERIES_COLUMNS}, name="series-source")
        self.sources = {kind: ColumnDataSource(name=f"{kind}-source") for kind in
                        ("occupancy", "occupancy_scint", "multiplicity", "drift_time")}
        self.maps = [ColumnDataSource(name=f"map-{c}-source") for c in range(N_CHAMBERS)]
        self.mappers = [LinearColorMapper(palette=Viridis256, low=0, high=1) for _ in range(N_CHAMBERS)]
        self.rates = ColumnDataSource(rate_columns(Totals()), name="rates-source")
        self.health_table = ColumnDataSource(health_rows(None, None), name="health-source")
        self.status = Div(name="status", text="starting…", styles={"font-size": "14px"})
        self.synthetic = Div(
            name="synthetic",
            visible=False,
            text="SYNTHETIC DATA — generated rows, not detector data",
            styles={"background": "#d62728", "color": "white", "font-size": "22px", "font-weight": "bold",
                    "padding": "6px 12px"},
        )
        self.run = Div(name="run", text="", styles={"font-size": "15px"}, width=440)
        self.health = Div(name="health", text="", styles={"font-size": "14px"})
        self.caption = Div(name="view-caption", text="", styles={"font-size": "14px"})
        self.scintillator = Div(name="scintillator", text="", styles={"font-size": "15px"})
        self.mode = RadioButtonGroup(name="view-mode", labels=["Last batch", "Last N batches", "Cumulative"],
                                     active=MODES.index(self.choice.mode))
        self.window = Spinner(name="window-n", title="", low=1, high=history, step=1, value=self.choice.window,
                              width=80, description="N: micro-batches in the moving window")
        self.reset = Button(name="reset", label="Reset cumulative (this tab)", button_type="warning", width=200)
        self.mode.on_change("active", lambda attr, old, new: self._choose(mode=MODES[new]))
        self.window.on_change("value", lambda attr, old, new: self._choose(window=int(new or 1)))
        self.reset.on_click(self._reset)

        hover = [("batch", "@batch_id"), ("hits", "@total_hits"), ("rows read", "@rows_read")]
        total = figure(name="total-hits", title="Total hits per micro-batch", x_axis_type="datetime",
                       width=600, height=260, x_axis_label="batch start (UTC)", y_axis_label="hits/batch")
        total.line("time_ms", "total_hits", source=self.series, line_width=2)
        total.scatter("time_ms", "total_hits", source=self.series, size=4)
        total.add_tools(HoverTool(tooltips=hover))
        chambers = figure(name="chamber-hits", title="Hits per chamber per micro-batch", x_axis_type="datetime",
                          width=640, height=260, x_axis_label="batch start (UTC)", y_axis_label="hits/batch")
        for c in range(N_CHAMBERS):
            chambers.line("time_ms", f"hits_ch{c}", source=self.series, color=COLORS[c], line_width=2,
                          legend_label=f"chamber {c}")
        chambers.add_layout(chambers.legend[0], "right")  # outside the plot area, lines stay visible
        hz = NumberFormatter(format="0.00", nan_format="—")
        rates_table = _table(source=self.rates, width=520, height=170, columns=[
            TableColumn(field="chamber", title="chamber"),
            TableColumn(field="hits", title="hits in view", formatter=NumberFormatter(format="0,0")),
            TableColumn(field="detector_hz", title="rate (Hz, detector time)", formatter=hz),
            TableColumn(field="wall_hz", title="rate (Hz, wall time)", formatter=hz)])
        rates_note = Div(width=700, text=(
            "<b>Rates in the selected view.</b> Detector time: hits ÷ Σ orbit-counter span of the batches "
            "(<i>detector_time_s</i>; counter jumps left out; needs version-2 results). Wall time: hits ÷ Σ time "
            "between micro-batch starts (trigger interval for the first batch seen)."))

        self.hist_figures = {kind: [] for kind in HIST_LABELS}
        for kind in ("occupancy", "occupancy_scint", "multiplicity"):
            for c in range(N_CHAMBERS):
                self.hist_figures[kind].append(_histogram_figure(kind, c, self.sources[kind], 310, 240))
        for c, fig in enumerate(self.hist_figures["occupancy"]):
            src = self.sources["occupancy"]
            fig.quad(left="left", right="right", top=f"dead_ch{c}", bottom=0, source=src, line_color=None,
                     fill_color=STATUS_LINE["dead"], fill_alpha=0.5)
            fig.quad(left="left", right="right", top=f"noisy_ch{c}", bottom=0, source=src, line_color=None,
                     fill_color=STATUS_LINE["noisy"])
            fig.scatter(x="centre", y=f"noisy_ch{c}", source=src, marker="inverted_triangle", size=11,
                        color=STATUS_LINE["noisy"])
        for c in range(N_CHAMBERS):
            fig = _histogram_figure("drift_time", c, self.sources["drift_time"], 620, 250)
            fig.add_layout(BoxAnnotation(left=TIME_BOX_NS[0], right=TIME_BOX_NS[1], fill_color="green",
                                         fill_alpha=0.08))
            for edge in TIME_BOX_NS:
                fig.add_layout(Span(location=edge, dimension="height", line_color="green", line_dash="dashed",
                                    line_width=2))
            self.hist_figures["drift_time"].append(fig)
        self.map_figures = [_map_figure(c, self.maps[c], self.mappers[c]) for c in range(N_CHAMBERS)]

        labels = CustomJSTickFormatter(code=PAD_LABELS_JS.format(pad="padStart"))  # one per session (document)
        for fig in [total, chambers, *(f for figs in self.hist_figures.values() for f in figs)]:
            fig.yaxis.formatter = labels
        bar_labels = CustomJSTickFormatter(code=PAD_LABELS_JS.format(pad="padEnd"))
        for fig in self.map_figures:
            fig.right[0].formatter = bar_labels  # the colour bar

        legend = ("<b style='color:#d62728'>red band: dead channel</b> · "
                  "<b>black bar ▼: noisy channel</b> (processor's channel health)")
        tabs = Tabs(name="tabs", tabs=[
            TabPanel(title="Overview", child=column(row(total, chambers), row(rates_table, rates_note))),
            TabPanel(title="Occupancy", child=column(
                Div(text=f"<b>Occupancy</b> per local channel (TDC_CHANNEL mod 64) · {legend}"),
                row(*self.hist_figures["occupancy"]),
                Div(text="<b>E1 — scintillator-tagged occupancy</b>: only orbits with a scintillator hit "
                         "(t0 channel: top of the page)"),
                row(*self.hist_figures["occupancy_scint"]),
                Div(text="<b>Multiplicity</b>: orbits by number of active channels in the chamber"),
                row(*self.hist_figures["multiplicity"]))),
            TabPanel(title="Time box", child=column(
                Div(text="<b>E2 — time box</b>: DRIFTIME = t_hit − t_scint + offset[chamber] for hits in orbits "
                         "with a scintillator hit; expected box 0–390 ns (21 mm ÷ 53.8 µm/ns, green)."),
                row(*self.hist_figures["drift_time"][:2]), row(*self.hist_figures["drift_time"][2:]))),
            TabPanel(title="Chamber maps", child=column(
                Div(text="<b>Occupancy maps</b>, layer × cell as the cells sit in the chamber (layers 1 and 3 "
                         "shifted by half a cell); outlines: <span style='color:#d62728'>dead</span>, "
                         "<b>noisy</b> (black)."),
                row(*self.map_figures[:2]), row(*self.map_figures[2:]))),
            TabPanel(title="Channel health", child=column(
                Div(text="<b>Flagged channels</b> (hits column: in the selected view)"),
                _table(source=self.health_table, width=760, height=300, columns=[
                    TableColumn(field=f, title=t) for f, t in (
                        ("status", "status"), ("chamber", "chamber"), ("channel", "local channel"),
                        ("layer", "layer"), ("cell", "cell"), ("fpga", "FPGA"), ("tdc_channel", "TDC_CHANNEL"),
                        ("hits", "hits"))]))),
        ])
        # Two roots: a Div that changes re-lays out its whole root in BokehJS, and the header's Divs
        # change every second (batch age, run clock) — they must not re-lay out the 20 plots.
        header = column(
            Div(text=f"<h2 style='margin:4px 0'>{TITLE}</h2>"),
            self.synthetic,
            self.status,
            row(self.run, self.scintillator),
            self.health,
            row(self.mode, Div(text="N =", styles={"font-size": "14px", "padding-top": "6px"}), self.window,
                self.reset, self.caption),
        )
        self.roots = [header, tabs]

    def _choose(self, **changes) -> None:
        for name, value in changes.items():
            setattr(self.choice, name, value)
        self._redraw()

    def _reset(self) -> None:
        if self.snap is not None:
            self.choice.reset(self.snap)
            self._redraw()

    def refresh(self, snap: Snapshot, now: float) -> None:
        """Redraw the data if a message arrived since the last draw; always refresh the status line and
        run clock (they live in their own root, so their changes do not re-lay out the plots)."""
        self.snap = snap
        if snap.ingests != self.drawn_ingests:
            self.drawn_ingests = snap.ingests
            self.series.data = {k: list(v) for k, v in snap.series.items()}  # snapshots are shared
            self.synthetic.visible = snap.synthetic
            self._redraw()
        for div, text in ((self.status, status_html(snap, now, self.bootstrap_servers, self.topic)),
                          (self.run, run_html(snap.last, now))):
            if text != div.text:
                div.text = text

    def _redraw(self) -> None:
        """Draw the histograms, maps, rates and health of the session's selected view."""
        snap = self.snap
        if snap is None:
            return
        shown = self.choice.select(snap)
        health = snap.last.channel_health if snap.last is not None else None
        status = channel_status(health)
        occupancy = shown.histograms("occupancy")
        self.sources["occupancy"].data = occupancy_columns(occupancy, status)
        for kind in ("occupancy_scint", "multiplicity", "drift_time"):
            self.sources[kind].data = histogram_columns(shown.histograms(kind))
        for c in range(N_CHAMBERS):
            self.maps[c].data = map_columns(occupancy, c, status)
            self.mappers[c].high = max(1, int(occupancy.counts[c].max()))
        self.rates.data = rate_columns(shown)
        self.health_table.data = health_rows(health, occupancy)
        self.health.text = health_html(health)
        self.caption.text = self.choice.caption(snap, shown)
        t0 = scintillator_text(snap.last)
        self.scintillator.text = (f"E1/E2 scintillator: <b>{t0}</b> · orbits with a scintillator hit in view: "
                                  f"<b>{shown.orbits_with_scintillator}</b>")
        label = {"current": f"batch {shown.last_batch_id}", "window": f"last {self.choice.window} batches",
                 "cumulative": "cumulative"}[self.choice.mode]
        for kind, figs in self.hist_figures.items():
            for c, fig in enumerate(figs):
                extra = ""
                if kind == "drift_time":
                    extra = f" (offset {SCINT_CHAMBER_OFFSET_NS[c]} ns)" + (
                        "" if shown.histograms(kind) is not None else " — no data (version-1 results)")
                wide = kind == "drift_time"  # the 310 px plots have no room for the view label
                fig.title.text = f"Chamber {c} {HIST_LABELS[kind][0]}{extra}" + (f" — {label}" if wide else "")
        for c, fig in enumerate(self.map_figures):
            fig.title.text = f"{map_title(c)} — {label}"
