"""The Bokeh models of one dashboard session and how a ``Snapshot`` is drawn on them.

Model names (for ``Bokeh.documents[0].get_model_by_name`` in the browser test):
header divs ``summary`` (quality tiles, each a ``[data-tile]`` element with ``data-quality``),
``stale``, ``synthetic``, ``run``, ``status``, ``scintillator``, ``flags``, ``view-caption``;
widgets ``view-mode``, ``window-n``, ``log-scale``, ``reset``, ``use-reference``; ``tabs``.
Figures ``total-hits``, ``chamber-rates``, ``occupancy``, ``occupancy_scint`` (E1) and
``multiplicity`` (the four chambers side by side), ``drift_time-0..3`` (E2), ``map-0..3``, ``trend-rate``, ``trend-t0``,
``trend-vdrift``, ``trend-quality``, ``event-timeline``; data sources ``series-source``,
``occupancy-source``, ``occupancy_scint-source``, ``multiplicity-source``, ``drift_time-source``,
``map-0-source..map-3-source``, ``rates-source``, ``health-source``, ``trend-source``,
``trend-quality-source``, ``events-source``.

Only the visible tab's sources are written on an update; a tab hidden during updates is
redrawn when it becomes active.
"""

from __future__ import annotations

import html
import math
import time
from pathlib import Path

import numpy as np
from bokeh.layouts import column, row
from bokeh.models import (
    BasicTicker,
    BoxAnnotation,
    Button,
    ColorBar,
    ColumnDataSource,
    CustomJS,
    CustomJSTickFormatter,
    DataTable,
    DateFormatter,
    Div,
    FixedTicker,
    HoverTool,
    InlineStyleSheet,
    LinearColorMapper,
    NumberFormatter,
    RadioButtonGroup,
    Range1d,
    Span,
    Spinner,
    TableColumn,
    TabPanel,
    Tabs,
    Toggle,
)
from bokeh.palettes import Category10, Viridis256
from bokeh.plotting import figure
from bokeh.transform import dodge

from dashboard.state import (
    CELL_WIDTH_MM,
    LAYER_HEIGHT_MM,
    MODES,
    QUALITY_COLOURS,
    RATE_DEFINITION,
    SERIES_COLUMNS,
    HistogramSet,
    Snapshot,
    Tile,
    Totals,
    ViewChoice,
    cell_layout,
    channel_status,
    event_columns,
    flagged_channels,
    flags_html,
    freshness,
    health_rows,
    normalised_reference,
    quality_tiles,
    rate_columns,
    reference_histograms,
    reference_messages,
    run_html,
    scintillator_text,
    trend_quality_columns,
)
from dtmon.hits import CELLS_PER_CHAMBER, CELLS_PER_LAYER, N_CHAMBERS, N_LAYERS
from dtmon.reference import load_reference, reference_from_messages, save_reference
from dtmon.schema import SCINT_CHAMBER_OFFSET_NS

TITLE = "dtmon — MiniDT live monitor"
COLORS = Category10[10][:N_CHAMBERS]
TIME_BOX_NS = (0.0, 390.0)  # half a cell / v_drift = 21 mm / 53.8 um/ns (domain notes §4)
STATUS_LINE = {"": "white", "dead": "#d62728", "noisy": "black"}
HIST_LABELS = {  # kind -> (figure title, x label, y label)
    "occupancy": ("occupancy", "local channel", "hits"),
    "occupancy_scint": ("E1 (scint-tagged)", "local channel", "hits"),
    "multiplicity": ("multiplicity", "active channels per orbit", "orbits"),
    "drift_time": ("E2: drift time", "DRIFTIME (ns)", "hits"),
}
GRID = {"sizing_mode": "stretch_width"}
TABS = ("Overview", "Occupancy", "Time box", "Chamber maps", "Channel health", "Trends", "Events")
LOG_BOTTOM = -0.3  # log10 of the bottom of log-scale histograms (~0.5: a bin with 1 count shows)
#: Axis labels for values drawn by ``display_values``: 10**tick on a log scale; padded to a fixed
#: width with figure spaces (digit-wide) because BokehJS re-lays out the WHOLE root whenever an
#: axis gets wider or narrower (e.g. 0-30 -> 0-150 hits).
LABELS_JS = ("const v = log.active ? Math.pow(10, tick) : tick;"
             "return String(Number(v.toPrecision(log.active ? 2 : 6))).{pad}(7, '\u2007')")


def display_values(counts: np.ndarray, log: bool) -> np.ndarray:
    """What the histograms and maps draw for ``counts`` (any shape): the counts on a linear scale, or
    log10(counts) on a log scale (NaN, not drawn, for 0); axis labels show 10**value then."""
    counts = np.asarray(counts, dtype=float)
    if not log:
        return counts
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(counts > 0, np.log10(np.where(counts > 0, counts, 1.0)), np.nan)


def histogram_columns(hists: HistogramSet | None, log: bool = False,
                      reference: np.ndarray | None = None) -> dict[str, list[float]]:
    """Quad-glyph columns: ``left``/``right`` bin edges (n,), ``centre``, ``ch0..ch3`` counts (n,),
    ``y0..y3`` what is drawn (``display_values``), ``bottom`` (0, or ``LOG_BOTTOM`` on a log scale)
    and ``ref_ch0..3`` the normalised reference as drawn (NaN without one); empty lists for None."""
    keys = ("left", "right", "centre", "bottom", *(f"{p}{c}" for p in ("ch", "y", "ref_ch") for c in range(N_CHAMBERS)))
    if hists is None:
        return {k: [] for k in keys}
    n = len(hists.edges) - 1
    data: dict[str, list[float]] = {"left": hists.edges[:-1], "right": hists.edges[1:]}
    data["centre"] = [(a + b) / 2 for a, b in zip(data["left"], data["right"])]
    data["bottom"] = [LOG_BOTTOM if log else 0.0] * n
    shown = display_values(hists.counts, log)
    ref = display_values(reference, log) if reference is not None else np.full((N_CHAMBERS, n), np.nan)
    for c, counts in enumerate(hists.counts):
        data[f"ch{c}"] = counts.tolist()
        data[f"y{c}"] = shown[c].tolist()
        data[f"ref_ch{c}"] = ref[c].tolist()
    return data


def occupancy_columns(hists: HistogramSet, status: np.ndarray, log: bool = False,
                      reference: np.ndarray | None = None) -> dict[str, list[float]]:
    """``histogram_columns`` plus health marks as drawn, NaN (not drawn) where the channel is not
    flagged: ``dead_ch{c}`` = the chamber's highest drawn value (at least the value of 1 count; a
    full-height band) and ``noisy_ch{c}`` = the bin's drawn value. ``status`` shape (4, 64)."""
    data = histogram_columns(hists, log, reference)
    for c in range(N_CHAMBERS):
        drawn = np.nan_to_num(np.asarray(data[f"y{c}"], dtype=float), nan=LOG_BOTTOM if log else 0.0)
        top = max(float(display_values(np.array([1.0]), log)[0]), float(drawn.max()))
        data[f"dead_ch{c}"] = np.where(status[c] == "dead", top, np.nan).tolist()
        data[f"noisy_ch{c}"] = np.where(status[c] == "noisy", drawn, np.nan).tolist()
    return data


HISTOGRAM_BIN_COLUMNS = ("left", "right", "centre", "bottom")
"""Columns of ``histogram_columns`` that change only with the binning or the log toggle."""


def set_histogram_columns(source: ColumnDataSource, data: dict[str, list[float]]) -> None:
    """Put ``histogram_columns`` data into ``source`` as float arrays (binary buffers on the wire;
    a NaN in a list goes as one JSON object), sending the bin columns only when they changed.

    Every column of ``data`` has the same length n (bins); a new key set or new bin columns
    replace the whole data, anything else is one update of the count columns.
    """
    arrays = {k: np.asarray(v, dtype=float) for k, v in data.items()}
    old = source.data
    if set(old) == set(arrays) and all(
        np.array_equal(np.asarray(old[k], dtype=float), arrays[k]) for k in HISTOGRAM_BIN_COLUMNS if k in arrays
    ):
        old.update({k: v for k, v in arrays.items() if k not in HISTOGRAM_BIN_COLUMNS})
    else:
        source.data = arrays


MAP_PALETTE = Viridis256
MAP_LAYOUT_COLUMNS = ("x", "y", "layer", "cell", "channel", "chamber")  # fixed per chamber
MAP_NAN_COLOUR = "#e0e0e0"  # an empty cell on a log scale


def map_colours(values: np.ndarray, high: float, low: float = 0.0) -> list[str]:
    """Fill colours (hex strings, same shape as ``values``, flattened) of map cells whose drawn
    values (``display_values``) are ``values``, on the linear ``MAP_PALETTE`` scale [``low``, ``high``]
    as Bokeh's LinearColorMapper maps it: values at or above ``high`` take the last colour, below
    ``low`` the first, NaN ``MAP_NAN_COLOUR``. Done here, not by a mapper in the page, because every
    mapping there re-renders every colour bar on the mapper (Bokeh's ``metrics_change``)."""
    values = np.asarray(values, dtype=float).ravel()
    n = len(MAP_PALETTE)
    span = (high - low) or 1.0
    with np.errstate(invalid="ignore"):
        index = np.clip(np.floor((np.nan_to_num(values, nan=low) - low) / span * n), 0, n - 1).astype(int)
    return [MAP_NAN_COLOUR if v != v else MAP_PALETTE[i] for v, i in zip(values.tolist(), index.tolist())]


def map_columns(hists: HistogramSet, chamber: int, status: np.ndarray, log: bool = False,
                high: float = 1.0) -> dict[str, list]:
    """Rect-glyph columns of one chamber's 2D map, one row per local channel (64,): cell centre
    ``x``/``y`` (mm), ``layer``, ``cell``, ``channel``, ``hits``, ``colour`` (``display_values`` of the
    hits), ``fill`` (``map_colours`` of those on the scale [0, ``high``]), ``status`` and outline
    colour/width."""
    layout = cell_layout()
    flags = status[chamber].tolist()
    shown = display_values(hists.counts[chamber], log)
    return {
        **{k: v.tolist() for k, v in layout.items()},
        "chamber": [chamber] * CELLS_PER_CHAMBER,
        "hits": hists.counts[chamber].tolist(),
        "colour": shown.tolist(),
        "fill": map_colours(shown, high),
        "status": [f or "ok" for f in flags],
        "line_color": [STATUS_LINE[f] for f in flags],
        "line_width": [4 if f else 1 for f in flags],
    }


def summary_html(tiles: list[Tile], stale: bool) -> str:
    """The summary strip: one coloured tile per ``Tile`` (quality word, reason, counts), reason on hover
    (``title``); tiles are dimmed while the results are ``stale``."""
    parts = []
    for t in tiles:
        colour = QUALITY_COLOURS[t.quality]
        text = "#222" if t.quality == "warning" else "white"
        hover = html.escape(f"{t.label}: {t.quality} — {t.reason}" + (f" ({t.detail})" if t.detail else ""), quote=True)
        parts.append(
            f"<div data-tile='{t.key}' data-quality='{t.quality}' title='{hover}' style='flex:1 1 0;min-width:0;"
            f"background:{colour};color:{text};border-radius:5px;padding:3px 8px;opacity:{0.55 if stale else 1}'>"
            f"<div style='font-size:15px;font-weight:bold;white-space:nowrap'>{html.escape(t.label)}: "
            f"{t.quality.upper()}</div>"
            f"<div style='font-size:12px;line-height:14px;height:28px;overflow:hidden;display:-webkit-box;"
            f"-webkit-line-clamp:2;-webkit-box-orient:vertical'>{html.escape(t.reason)}</div>"
            f"<div style='font-size:11px;opacity:.9;white-space:nowrap'>{html.escape(t.detail) or '&nbsp;'}</div></div>")
    return f"<div style='display:flex;gap:6px;width:100%'>{''.join(parts)}</div>"


def status_html(snap: Snapshot, now: float, bootstrap_servers: str, topic: str) -> str:
    """The status line: last batch id, seconds since the last update (``now`` in epoch s),
    broker reachability, malformed rows, invalid and rejected messages, stream events."""
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
        f" · rejected raw: {snap.rejected_messages}"
    )
    if snap.invalid_messages:
        quality += f" <span style='color:#b30000'>(last: {html.escape(snap.last_invalid[:200])})</span>"
    parts = [batch, broker, quality]
    if snap.events:
        last = snap.events[-1]
        clock = time.strftime("%H:%M:%S", time.gmtime(last.time))
        parts.append(f"events: {len(snap.events)} (last {html.escape(last.kind)} {clock} UTC)")
    return " · ".join(parts)


def _table(source: ColumnDataSource, **kwargs) -> DataTable:
    """A DataTable that redraws when ``source.data`` is replaced by rows of the same count.

    BokehJS 3.9 refreshes a table only when its CDSView's indices change, which they do
    not for a same-length replacement; the tiny JS callback re-emits the view's change.
    """
    table = DataTable(source=source, index_position=None, sizing_mode="stretch_width", **kwargs)
    source.js_on_change("data", CustomJS(args={"view": table.view}, code="view.change.emit()"))
    return table


def _figure(name: str, title: str, height: int, **kwargs):
    return figure(name=name, title=title, height=height, sizing_mode="stretch_width", min_width=200,
                  tools="pan,box_zoom,wheel_zoom,reset,save", **kwargs)


def _histogram_figure(kind: str, chamber: int, source: ColumnDataSource, height: int):
    title, xlabel, ylabel = HIST_LABELS[kind]
    fig = _figure(f"{kind}-{chamber}", f"Chamber {chamber} {title}", height, x_axis_label=xlabel,
                  y_axis_label=ylabel, y_range=Range1d(0, 1))  # set by SessionView._fit_y (y_end)
    fig.quad(left="left", right="right", top=f"y{chamber}", bottom="bottom", source=source, color=COLORS[chamber],
             line_color="white")
    fig.add_tools(HoverTool(tooltips=[("bin", "@left{0.[0]} – @right{0.[0]}"), ("count", f"@ch{chamber}")]))
    fig.yaxis.ticker = BasicTicker(min_interval=1)  # counts: integer ticks only
    return fig


SIDE_BY_SIDE = 66.0
"""x offset between chambers drawn side by side in one figure (64 bins and a gap)."""


def _chambers_figure(kind: str, source: ColumnDataSource, height: int):
    """One figure with the four chambers' ``kind`` histograms side by side (chamber c shifted by
    ``SIDE_BY_SIDE * c``), x ticks in local bins, a label per chamber."""
    title, xlabel, ylabel = HIST_LABELS[kind]
    fig = _figure(kind, f"{title[0].upper()}{title[1:]} — chamber 0 (blue) | 1 (orange) | 2 (green) | 3 (red)",
                  height, x_axis_label=xlabel,
                  y_axis_label=ylabel, y_range=Range1d(0, 1), x_range=(-1.5, SIDE_BY_SIDE * N_CHAMBERS - 1))
    ticks, labels = [], {}
    for c in range(N_CHAMBERS):
        shift = SIDE_BY_SIDE * c
        r = fig.quad(left=dodge("left", shift), right=dodge("right", shift), top=f"y{c}", bottom="bottom",
                     source=source, color=COLORS[c], line_color="white", line_width=0.5)
        fig.add_tools(HoverTool(renderers=[r], tooltips=[("chamber", str(c)), ("bin", "@left{0.[0]} – @right{0.[0]}"),
                                                         ("count", f"@ch{c}")]))
        if c:
            fig.add_layout(Span(location=shift - 1.0, dimension="height", line_color="#888", line_width=1))
        for local in (0, 16, 32, 48):
            ticks.append(shift + local)
            labels[shift + local] = str(local)
    fig.xaxis.ticker = FixedTicker(ticks=ticks)
    fig.xaxis.major_label_overrides = labels
    fig.yaxis.ticker = BasicTicker(min_interval=1)  # counts: integer ticks only
    fig.xgrid.visible = False
    return fig


def map_title(chamber: int) -> str:
    """Title of a 2D map; chamber 1 sits rotated by 90° in the telescope (domain notes §2)."""
    return f"Chamber {chamber} map" + (", rotated 90° in the telescope (local frame)" if chamber == 1 else "")


def _map_figure(chamber: int, source: ColumnDataSource, mapper):
    width = CELLS_PER_LAYER * CELL_WIDTH_MM + CELL_WIDTH_MM / 2
    fig = figure(name=f"map-{chamber}", title=map_title(chamber), height=210, sizing_mode="stretch_width",
                 min_width=300, x_range=(0, width), y_range=(0, N_LAYERS * LAYER_HEIGHT_MM), tools="save",
                 x_axis_label="x along the layer (mm, chamber frame; not to scale vertically)")
    fig.rect(x="x", y="y", width=CELL_WIDTH_MM, height=LAYER_HEIGHT_MM, source=source,
                        fill_color="fill", line_color="line_color",
                        line_width="line_width")
    fig.add_tools(HoverTool(tooltips=[("chamber", "@chamber"), ("layer", "@layer"), ("cell", "@cell"),
                                      ("channel", "@channel"), ("hits", "@hits"), ("status", "@status")]))
    centres = [LAYER_HEIGHT_MM * (k + 0.5) for k in range(N_LAYERS)]
    fig.yaxis.ticker = FixedTicker(ticks=centres)
    fig.yaxis.major_label_overrides = {y: f"layer {k + 1}" for k, y in enumerate(centres)}
    fig.xgrid.visible = fig.ygrid.visible = False
    fig.add_layout(ColorBar(color_mapper=mapper, title="hits", width=12), "right")
    return fig


def _trend_figure(name: str, title: str, ylabel: str, source: ColumnDataSource, column: str, x_range):
    # fixed ranges, moved by SessionView._draw_trends only when the data leave them (trend_range): an
    # auto-ranged axis re-measures its tick labels and re-lays out the four figures on every update
    fig = _figure(name, title, 190, x_axis_type="datetime", y_axis_label=ylabel, x_range=x_range,
                  y_range=Range1d(0, 1))
    for c in range(N_CHAMBERS):  # no Bokeh legend: BokehJS re-renders a legend on every data change (~10 ms each)
        fig.line("time_ms", f"{column}_ch{c}", source=source, color=COLORS[c], line_width=2)
    fig.add_tools(HoverTool(tooltips=[("time", "@time_ms{%F %T}"), ("batches", "@batches"),
                                      *((f"ch{c}", f"@{column}_ch{c}{{0.[00]}}") for c in range(N_CHAMBERS))],
                            formatters={"@time_ms": "datetime"}, mode="vline"))
    return fig


def chamber_key() -> str:
    """HTML line naming the chamber colours (the key of the trend plots)."""
    return "Chambers: " + " ".join(f"<b style='color:{COLORS[c]}'>━ {c}</b>" for c in range(N_CHAMBERS))


def nice_top(data_max: float, log: bool) -> float:
    """Upper end of a count axis showing ``data_max``: the next 1-2-5 step above 1.05 * data_max
    (at least 1), or on a log scale log10 of the next power of ten above it."""
    if log:
        return float(math.ceil(math.log10(max(data_max, 1.0)) + 0.05))
    target = max(1.05 * data_max, 1.0)
    exponent = 10.0 ** math.floor(math.log10(target))
    return next(step * exponent for step in (1, 2, 5, 10) if step * exponent >= target)


def y_end(current: float, data_max: float, log: bool) -> float | None:
    """New end of a fixed count axis, or None to keep ``current``: the axis grows as soon as the data
    reach it and shrinks only when the data fill less than a third of it, so that the axes (and the
    plot layout BokehJS recomputes when they change) stay put across most live updates."""
    top = nice_top(data_max, log)
    if log:
        return top if top != current else None
    if data_max >= current or current > 3 * top:
        return top
    return None


def trend_range(current: tuple[float, float], lo: float, hi: float) -> tuple[float, float] | None:
    """New (start, end) of a trend axis showing values in [``lo``, ``hi``], or None to keep ``current``.

    The axis moves when a value leaves it or when the values fill less than a third of it; then it is
    [lo, hi] widened by 10 % of the span on each side (for one value: 1 % of it, or 1 around zero)
    and rounded outward to a 1-2-5 step of a fifth of that width, so most live updates keep it. An
    axis of values that are all ≥ 0 (rates) does not start below 0.
    """
    start, end = current
    if start <= lo and hi <= end and (hi - lo) * 3 >= end - start:
        return None
    pad = 0.1 * (hi - lo) or 0.01 * abs(hi) or 1.0  # one value: 1 % of it, or 1 around zero
    width = (hi - lo) + 2 * pad
    exponent = 10.0 ** math.floor(math.log10(width / 5))
    step = next(k * exponent for k in (1, 2, 5, 10) if k * exponent >= width / 5)
    start = math.floor((lo - pad) / step) * step
    return (max(start, 0.0) if lo >= 0 else start), math.ceil((hi + pad) / step) * step  # rates stay above 0


def _pm(value: float, error: float | None) -> str:
    return f"{value:.1f}" + (f" ± {error:.1f}" if error is not None else "")


def fit_table_html(fits: dict) -> str:
    """One line per chamber (0..3) with its time-box fit from the results (``TimeBoxFit`` by chamber):
    t0 and t_max in ns and the drift velocity in µm/ns, each ± its error; "no fit" for a chamber
    without one. One Div for the four fits, not four plot titles: a title change makes BokehJS lay
    out its plot again."""
    cells = []
    for c in range(N_CHAMBERS):
        fit = fits.get(c)
        if fit is None or fit.t0_ns is None or fit.t_max_ns is None:
            text = "no fit"
        else:
            text = f"t0 {_pm(fit.t0_ns, fit.t0_err_ns)} ns · t_max {_pm(fit.t_max_ns, fit.t_max_err_ns)} ns"
            if fit.v_drift_um_per_ns is not None:
                text += f" · v {_pm(fit.v_drift_um_per_ns, fit.v_drift_err_um_per_ns)} µm/ns"
        cells.append(f"<span data-fit='{c}' style='white-space:nowrap'><b style='color:{COLORS[c]}'>chamber {c}"
                     f"</b>: {html.escape(text)}</span>")
    return "Time-box fits: " + " &nbsp;|&nbsp; ".join(cells)


NOT_LOADED = "reference not loaded"
_reference_cache: dict[Path, tuple[float, dict[str, HistogramSet]]] = {}


def cached_reference(path: Path | None) -> dict[str, HistogramSet]:
    """The histograms of the reference file ``path`` (``dtmon.reference.load_reference``), read
    again only when its modification time changes; empty when ``path`` is None or missing.

    Raises:
        dtmon.reference.ReferenceError: the file exists but is not a valid reference.
    """
    if path is None:
        return {}
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return {}
    cached = _reference_cache.get(path)
    if cached is None or cached[0] != mtime:
        cached = (mtime, reference_histograms(load_reference(path)))
        _reference_cache[path] = cached
    return cached[1]


class SessionView:
    """Figures, widgets and data sources of one browser session; ``refresh`` copies a snapshot into them.

    Widget callbacks run on the session's own event loop and redraw from the last snapshot
    seen; Reset resets this session's cumulative view only; "Use as reference" sums the kept
    results messages of the session's cumulative view (``dtmon.reference.reference_from_messages``)
    into ``reference_file``, the file the processor compares with and the page overlays.
    """

    def __init__(self, bootstrap_servers: str, topic: str, history: int = 300,
                 reference_file: Path | None = None) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.reference_file = None if reference_file is None else Path(reference_file)
        self.reference_note = ""
        self.choice = ViewChoice(window=min(30, history))
        self.log = False
        self.snap: Snapshot | None = None
        self.drawn_ingests = -1
        self.dirty: set[int] = set()
        self.shown: Totals | None = None

        self.series = ColumnDataSource({name: [] for name in SERIES_COLUMNS}, name="series-source")
        self.sources = {kind: ColumnDataSource(histogram_columns(None), name=f"{kind}-source") for kind in HIST_LABELS}
        self.maps = [ColumnDataSource(name=f"map-{c}-source") for c in range(N_CHAMBERS)]
        # one scale for the 4 maps; drawn by the colour bars only (cells are coloured by map_colours)
        self.mapper = LinearColorMapper(palette=MAP_PALETTE, low=0, high=1, nan_color=MAP_NAN_COLOUR)
        self.rates = ColumnDataSource(rate_columns(Totals()), name="rates-source")
        self.health_table = ColumnDataSource(health_rows((), None), name="health-source")
        self.trend = ColumnDataSource(name="trend-source")
        self.trend_quality = ColumnDataSource(trend_quality_columns({"time_ms": []}), name="trend-quality-source")
        self.events = ColumnDataSource(event_columns(()), name="events-source")

        # --- header ------------------------------------------------------------------------
        self.summary = Div(name="summary", text=summary_html(quality_tiles(None), True), sizing_mode="stretch_width",
                           stylesheets=[InlineStyleSheet(css=".bk-clearfix { display: block !important; }")])
        self.stale = Div(name="stale", visible=False, text="", sizing_mode="stretch_width",
                         styles={"background": "#e6550d", "color": "white", "font-size": "16px",
                                 "font-weight": "bold", "padding": "3px 10px"})
        self.synthetic = Div(
            name="synthetic", visible=False, text="SYNTHETIC DATA — generated rows, not detector data",
            sizing_mode="stretch_width", styles={"background": "#d62728", "color": "white", "font-size": "15px",
                                                 "font-weight": "bold", "padding": "2px 10px"})
        self.run = Div(name="run", text="", styles={"font-size": "14px"}, width=290)
        self.scintillator = Div(name="scintillator", text="", styles={"font-size": "13px"},
                                sizing_mode="stretch_width")
        self.status = Div(name="status", text="starting…", styles={"font-size": "12px", "color": "#333"},
                          sizing_mode="stretch_width")
        self.flags = Div(name="flags", text="", styles={"font-size": "13px"}, sizing_mode="stretch_width")
        self.caption = Div(name="view-caption", text="", styles={"font-size": "13px"}, sizing_mode="stretch_width")
        self.mode = RadioButtonGroup(name="view-mode", labels=["Last batch", "Last N batches", "Cumulative"],
                                     active=MODES.index(self.choice.mode))
        self.window = Spinner(name="window-n", title="", low=1, high=history, step=1, value=self.choice.window,
                              width=70, description="N: micro-batches in the moving window")
        self.log_toggle = Toggle(name="log-scale", label="log scale", width=85, active=False)
        self.reset = Button(name="reset", label="Reset cumulative (this tab)", button_type="warning", width=190)
        self.use_reference = Button(name="use-reference", label="Use as reference", width=130,
                                    html_attributes={"title": "save the cumulative occupancy and drift-time "
                                                              "histograms as the reference run the processor compares with"})
        self.mode.on_change("active", lambda attr, old, new: self._choose(mode=MODES[new]))
        self.window.on_change("value", lambda attr, old, new: self._choose(window=int(new or 1)))
        self.log_toggle.on_change("active", lambda attr, old, new: self._set_log(bool(new)))
        self.reset.on_click(self._reset)
        self.use_reference.on_click(self._save_reference)

        # Tab contents are built, and join the document, when a tab is first shown: a new page
        # costs the server and BokehJS only the header and the Overview.
        self.count_figures: list = []
        self.hist_figures: dict[str, list] = {}
        self.fit_spans: list[tuple[Span, Span]] = []
        # a fixed height: new text then changes no size, so BokehJS does not lay the tab out again
        self.fit_text = Div(text="", name="fit-text", height=40, sizing_mode="stretch_width",
                            styles={"font-size": "13px", "overflow": "hidden"})
        self.map_figures: list = []
        self.timeline = None
        self.count_labels = CustomJSTickFormatter(args={"log": self.log_toggle}, code=LABELS_JS.format(pad="padStart"))
        self.tab_builders = [self._build_overview, self._build_occupancy, self._build_time_box, self._build_maps,
                             self._build_health, self._build_trends, self._build_events]
        self.tab_drawers = [self._draw_overview, self._draw_occupancy, self._draw_time_box, self._draw_maps,
                            self._draw_health, self._draw_trends, self._draw_events]
        self.tabs = Tabs(name="tabs", sizing_mode="stretch_width", tabs=[
            TabPanel(title=title, child=column(Div(text="loading…"), **GRID)) for title in TABS])
        self.built: set[int] = set()
        self._show_tab(self.tabs.active)
        self.tabs.on_change("active", lambda attr, old, new: self._show_tab(new))

        # Two roots: a Div that changes re-lays out its whole root in BokehJS, and the header's Divs
        # change every second (batch age, run clock) — they must not re-lay out the plots.
        header = column(
            self.summary,
            self.stale,
            self.synthetic,
            row(self.run, self.scintillator, sizing_mode="stretch_width"),
            self.status,
            self.flags,
            row(self.mode, Div(text="N =", styles={"font-size": "14px", "padding-top": "6px"}), self.window,
                self.log_toggle, self.reset, self.use_reference, self.caption, sizing_mode="stretch_width"),
            sizing_mode="stretch_width",
        )
        self.roots = [header, self.tabs]

    # --- tab contents (built on first showing) -------------------------------------------------
    def _count_axes(self, figs: list) -> None:
        """Register histogram figures: log-aware labels, and the y start of the current scale."""
        for fig in figs:
            fig.yaxis.formatter = self.count_labels
            fig.y_range.start = LOG_BOTTOM if self.log else 0
        self.count_figures.extend(figs)

    def _build_overview(self):
        total = _figure("total-hits", "Hits per micro-batch (all chambers)", 230, x_axis_type="datetime",
                        x_axis_label="batch start (UTC)", y_axis_label="hits/batch")
        total.line("time_ms", "total_hits", source=self.series, line_width=2)
        total.scatter("time_ms", "total_hits", source=self.series, size=4)
        total.add_tools(HoverTool(tooltips=[("batch", "@batch_id"), ("hits", "@total_hits"),
                                            ("rows read", "@rows_read")]))
        total.yaxis.ticker = BasicTicker(min_interval=1)
        rates = _figure("chamber-rates", "Rate per chamber per micro-batch (Hz)", 230, x_axis_type="datetime",
                        x_range=total.x_range, x_axis_label="batch start (UTC)", y_axis_label="Hz")
        for c in range(N_CHAMBERS):  # no Bokeh legend: it is re-rendered on every data change
            rates.line("time_ms", f"rate_ch{c}", source=self.series, color=COLORS[c], line_width=2)
        fixed = CustomJSTickFormatter(code="return String(Number(tick.toPrecision(6))).padStart(7, '\u2007')")
        for fig in (total, rates):
            fig.yaxis.formatter = fixed
        hz = NumberFormatter(format="0.0", nan_format="—")
        rates_table = _table(source=self.rates, height=165, columns=[
            TableColumn(field="chamber", title="chamber"),
            TableColumn(field="hits", title="hits in view", formatter=NumberFormatter(format="0,0")),
            TableColumn(field="rate_hz", title="rate (Hz)", formatter=hz)])
        rates_note = Div(text=f"<b>{RATE_DEFINITION}.</b> Every rate on this page uses it.",
                         sizing_mode="stretch_width", styles={"font-size": "13px"})
        return column(row(total, column(Div(text=chamber_key()), rates, **GRID), **GRID),
                      row(rates_table, rates_note, **GRID), **GRID)

    def _build_occupancy(self):
        # One figure per kind, the four chambers side by side (BokehJS spends its update time per
        # figure, measuring axes and laying out: 3 figures, not 12).
        for kind in ("occupancy", "occupancy_scint", "multiplicity"):
            self.hist_figures[kind] = [_chambers_figure(kind, self.sources[kind], 185)]
        occ = self.hist_figures["occupancy"][0]
        src = self.sources["occupancy"]
        for c in range(N_CHAMBERS):
            shift = {"left": dodge("left", SIDE_BY_SIDE * c), "right": dodge("right", SIDE_BY_SIDE * c)}
            occ.quad(**shift, top=f"dead_ch{c}", bottom="bottom", source=src, line_color=None,
                     fill_color=STATUS_LINE["dead"], fill_alpha=0.5)
            occ.quad(**shift, top=f"noisy_ch{c}", bottom="bottom", source=src, line_color=None,
                     fill_color=STATUS_LINE["noisy"])
            occ.scatter(x=dodge("centre", SIDE_BY_SIDE * c), y=f"noisy_ch{c}", source=src,
                        marker="inverted_triangle", size=9, color=STATUS_LINE["noisy"])
            occ.step(x=dodge("centre", SIDE_BY_SIDE * c), y=f"ref_ch{c}", source=src, mode="center",
                     line_color="black", line_width=1.5, line_dash="dashed")
        figs = [self.hist_figures[k][0] for k in ("occupancy", "occupancy_scint", "multiplicity")]
        self._count_axes(figs)
        legend = ("<span style='color:#d62728'>red band: dead</span> · black bar ▼: noisy · dashed black line: "
                  "reference, normalised to the hits shown")
        return column(Div(text=f"<b>Chambers 0 | 1 | 2 | 3 side by side</b>, local channel 0–63 "
                               f"(TDC_CHANNEL mod 64) each · {legend}"), *figs, **GRID)

    def _build_time_box(self):
        figs = []
        for c in range(N_CHAMBERS):
            fig = _histogram_figure("drift_time", c, self.sources["drift_time"], 220)
            fig.add_layout(BoxAnnotation(left=TIME_BOX_NS[0], right=TIME_BOX_NS[1], fill_color="green",
                                         fill_alpha=0.08))
            spans = tuple(Span(location=edge, dimension="height", line_color="#1b7f1b", line_dash="dashed",
                               line_width=2) for edge in TIME_BOX_NS)
            for span in spans:
                fig.add_layout(span)
            self.fit_spans.append(spans)
            fig.step(x="centre", y=f"ref_ch{c}", source=self.sources["drift_time"], mode="center",
                     line_color="black", line_width=1.5, line_dash="dashed")
            figs.append(fig)
        self.hist_figures["drift_time"] = figs
        self._count_axes(figs)
        return column(
            Div(text="<b>E2 — time box</b>: DRIFTIME = t_hit − t_scint + offset[chamber] (offsets "
                     f"{', '.join(f'{o:g}' for o in SCINT_CHAMBER_OFFSET_NS)} ns); green box 0–390 ns "
                     "expected (21 mm ÷ 53.8 µm/ns); dashed green lines: fitted t0 and t_max when the results "
                     "carry a time-box fit; dashed black: reference."),
            self.fit_text, row(*figs[:2], **GRID), row(*figs[2:], **GRID), **GRID)

    def _build_maps(self):
        self.map_figures = [_map_figure(c, self.maps[c], self.mapper) for c in range(N_CHAMBERS)]
        bar_labels = CustomJSTickFormatter(args={"log": self.log_toggle}, code=LABELS_JS.format(pad="padEnd"))
        for fig in self.map_figures:
            fig.right[0].formatter = bar_labels  # the colour bar
        return column(
            Div(text="<b>Occupancy maps</b>, layer × cell as the cells sit in the chamber (layers 1 and 3 "
                     "shifted by half a cell), <b>one colour scale for the four chambers</b>; outlines: "
                     "<span style='color:#d62728'>dead</span>, <b>noisy</b> (black)."),
            row(*self.map_figures[:2], **GRID), row(*self.map_figures[2:], **GRID), **GRID)

    def _build_health(self):
        columns = [TableColumn(field=f, title=t) for f, t in (
            ("status", "status"), ("chamber", "chamber"), ("channel", "local channel"), ("layer", "layer"),
            ("cell", "cell"), ("fpga", "FPGA"), ("tdc_channel", "TDC_CHANNEL"), ("hits", "hits"))]
        columns.append(TableColumn(field="since", title="flagged since (UTC)", formatter=DateFormatter(format="%F %T")))
        return column(Div(text="<b>Flagged channels</b> now, with the time each was first flagged (hits: in the "
                               "selected view)"), _table(source=self.health_table, height=300, columns=columns), **GRID)

    def _build_trends(self):
        x_range = Range1d(0, 1)  # one time axis for the four figures, set by _draw_trends
        trend_rate = _trend_figure("trend-rate", "Rate per chamber over the shift (Hz)", "Hz", self.trend, "rate",
                                   x_range)
        trend_t0 = _trend_figure("trend-t0", "Time-box t0 per chamber (ns)", "t0 (ns)", self.trend, "t0", x_range)
        trend_vd = _trend_figure("trend-vdrift", "Drift velocity per chamber (µm/ns)", "µm/ns", self.trend,
                                 "vdrift", x_range)
        self.trend_figures = {"rate": trend_rate, "t0": trend_t0, "vdrift": trend_vd}
        trend_q = _figure("trend-quality", "Quality per chamber (green good, yellow warning, red bad, grey null)",
                          150, x_axis_type="datetime", x_range=x_range, y_range=(-0.5, N_CHAMBERS - 0.5))
        trend_q.rect(x="x", y="y", width="width", height=0.9, source=self.trend_quality, fill_color="colour",
                     line_color=None)
        trend_q.yaxis.ticker = FixedTicker(ticks=list(range(N_CHAMBERS)))
        trend_q.yaxis.major_label_overrides = {c: f"ch {c}" for c in range(N_CHAMBERS)}
        trend_q.add_tools(HoverTool(tooltips=[("time", "@x{%F %T}"), ("chamber", "@y"), ("quality", "@quality")],
                                    formatters={"@x": "datetime"}))
        # one time axis, drawn under the bottom figure only: BokehJS measures every drawn axis's tick
        # labels on each repaint and re-lays out a figure whose axis moves
        for fig in (trend_q, trend_rate, trend_t0):
            fig.xaxis.visible = False
        trend_vd.xaxis.axis_label = "time (UTC)"
        return column(Div(text=chamber_key()), trend_q, trend_rate, trend_t0, trend_vd, **GRID)

    def _build_events(self):
        timeline = _figure("event-timeline", "Stream events (one marker per event; not alarms)", 170,
                           x_axis_type="datetime", x_axis_label="time (UTC)")
        timeline.scatter("time_ms", "y", source=self.events, size=11, marker="diamond", color="#6a3d9a")
        timeline.yaxis.ticker = FixedTicker(ticks=[])
        timeline.add_tools(HoverTool(tooltips=[("time", "@time_ms{%F %T}"), ("kind", "@kind"), ("what", "@detail")],
                                     formatters={"@time_ms": "datetime"}))
        self.timeline = timeline
        events_table = _table(source=self.events, height=260, columns=[
            TableColumn(field="time_ms", title="time (UTC)", formatter=DateFormatter(format="%F %T"), width=150),
            TableColumn(field="kind", title="kind", width=120),
            TableColumn(field="detail", title="detail", width=700)])
        return column(timeline, events_table, **GRID)

    # --- widget callbacks ---------------------------------------------------------------------
    def _choose(self, **changes) -> None:
        for name, value in changes.items():
            setattr(self.choice, name, value)
        self._redraw()

    def _reset(self) -> None:
        if self.snap is not None:
            self.choice.reset(self.snap)
            self._redraw()

    def _set_log(self, log: bool) -> None:
        """Draw the histograms and the maps' colours as log10 of the counts (labels show the counts)."""
        self.log = log
        for fig in self.count_figures:
            fig.y_range.start = LOG_BOTTOM if log else 0
        self._redraw()

    def _fit_y(self, kind: str, data: dict[str, list[float]]) -> None:
        """Set the fixed y ranges of the ``kind`` histograms to their drawn values (``y_end``)."""
        figs = self.hist_figures[kind]
        for i, fig in enumerate(figs):
            chambers = [i] if len(figs) == N_CHAMBERS else range(N_CHAMBERS)
            values = [v for c in chambers for key in (f"y{c}", f"ref_ch{c}") for v in data.get(key, ()) if v == v]
            top = max(values, default=0.0)
            end = y_end(fig.y_range.end, 10.0 ** top if self.log else top, self.log)
            if end is not None:
                fig.y_range.end = end

    def _save_reference(self) -> None:
        """Save the kept messages of this session's cumulative view as the reference file (overlaid)."""
        if self.snap is None:
            return
        if self.reference_file is None:
            note = "<b style='color:#b30000'>reference not saved: no reference_file setting</b>"
        else:
            try:
                reference = reference_from_messages(reference_messages(self.snap, self.choice.baseline))
                save_reference(reference, self.reference_file)
                note = (f"reference saved: <b>{html.escape(reference.name)}</b> ({reference.batches} batches) → "
                        f"{html.escape(str(self.reference_file))}")
            except (ValueError, OSError) as exc:  # dtmon.reference.ReferenceError: no messages with hits
                note = f"<b style='color:#b30000'>reference not saved: {html.escape(str(exc))}</b>"
        self.reference_note = note
        self._redraw()

    # --- drawing ---------------------------------------------------------------------------------
    def refresh(self, snap: Snapshot, now: float) -> None:
        """Redraw the data if a message arrived since the last draw; always refresh the header's
        freshness (banner, run state, status line; they live in their own root)."""
        self.snap = snap
        fresh = freshness(snap, now)
        if snap.ingests != self.drawn_ingests:
            self.drawn_ingests = snap.ingests
            self.synthetic.visible = snap.synthetic
            self._redraw()
        if snap.broker_reachable is False:
            banner = f"BROKER UNREACHABLE — {html.escape(snap.broker_detail or self.bootstrap_servers)}; results are stale"
        else:
            banner = f"STALE — {html.escape(fresh.reason)}"
        updates = ((self.status, "text", status_html(snap, now, self.bootstrap_servers, self.topic)),
                   (self.run, "text", run_html(snap.last, now, fresh.stale)),
                   (self.stale, "visible", fresh.stale),
                   (self.stale, "text", banner if fresh.stale else self.stale.text),
                   (self.summary, "text", summary_html(quality_tiles(snap.last), fresh.stale)))
        for model, attr, value in updates:
            if getattr(model, attr) != value:
                setattr(model, attr, value)

    def _redraw(self) -> None:
        """Select the session's view, update the header and draw the visible tab (others marked dirty)."""
        snap = self.snap
        if snap is None:
            return
        self.shown = self.choice.select(snap)
        self.flags.text = flags_html(snap.flags, snap.last is not None and (
            snap.last.quality is not None or snap.last.channel_health is not None))
        self.scintillator.text = (f"E1/E2 scintillator: <b>{html.escape(scintillator_text(snap.last))}</b> · "
                                  f"orbits with a t0 hit in view: <b>{self.shown.orbits_with_scintillator}</b>")
        self.dirty = set(range(len(self.tab_drawers)))
        self._draw_tab(self.tabs.active)
        self.caption.text = self.choice.caption(snap, self.shown) + self._note_suffix()  # after a reference load

    def _note_suffix(self) -> str:
        return f" · {self.reference_note}" if self.reference_note else ""

    def _show_tab(self, index: int) -> None:
        """Build the tab's plots on its first showing, then draw it if it missed updates."""
        if index not in self.built:
            self.built.add(index)
            # New children of the panel's column: BokehJS re-renders a layout whose children change,
            # not a panel whose child is replaced.
            self.tabs.tabs[index].child.children = [self.tab_builders[index]()]
        self._draw_tab(index)

    def _draw_tab(self, index: int) -> None:
        if self.shown is None or index not in self.dirty:
            return
        self.dirty.discard(index)
        self.tab_drawers[index]()

    def _label(self) -> str:
        return {"current": f"batch {self.shown.last_batch_id}", "window": f"last {self.choice.window} batches",
                "cumulative": "cumulative"}[self.choice.mode]

    def _status(self) -> np.ndarray:
        return channel_status(*flagged_channels(self.snap.last))

    def _reference(self) -> dict[str, HistogramSet]:
        """The reference to overlay: ``reference_file`` (empty while it does not exist)."""
        try:
            ref = cached_reference(self.reference_file)
        except ValueError as exc:  # dtmon.reference.ReferenceError
            self.reference_note = f"<b style='color:#b30000'>{NOT_LOADED}: {html.escape(str(exc))}</b>"
            return {}
        if NOT_LOADED in self.reference_note:  # a good file replaced the bad one
            self.reference_note = ""
        return ref

    def _draw_overview(self) -> None:
        # float arrays go to the page as binary buffers (snapshots are shared: copies)
        self.series.data = {k: np.array(v, dtype=float) for k, v in self.snap.series.items()}
        self.rates.data = rate_columns(self.shown)

    def _draw_occupancy(self) -> None:
        ref = self._reference()
        occupancy = self.shown.histograms("occupancy")
        data = occupancy_columns(occupancy, self._status(), self.log,
                                 normalised_reference(ref.get("occupancy"), occupancy))
        self._fit_y("occupancy", data)
        set_histogram_columns(self.sources["occupancy"], data)
        for kind in ("occupancy_scint", "multiplicity"):
            data = histogram_columns(self.shown.histograms(kind), self.log)
            self._fit_y(kind, data)
            set_histogram_columns(self.sources[kind], data)

    def _draw_time_box(self) -> None:
        drift = self.shown.histograms("drift_time")
        ref = self._reference()
        data = histogram_columns(drift, self.log, normalised_reference(ref.get("drift_time"), drift))
        self._fit_y("drift_time", data)
        set_histogram_columns(self.sources["drift_time"], data)
        fits = {}
        last = self.snap.last
        if last is not None and last.quality is not None:
            fits = {f.chamber: f for f in last.quality.time_box}
        for c, fig in enumerate(self.hist_figures["drift_time"]):
            fit = fits.get(c)
            if fit is not None and fit.t0_ns is not None and fit.t_max_ns is not None:
                self.fit_spans[c][0].location, self.fit_spans[c][1].location = fit.t0_ns, fit.t_max_ns
            else:
                self.fit_spans[c][0].location, self.fit_spans[c][1].location = TIME_BOX_NS
            text = f"Chamber {c}" + (" — no data (version-1 results)" if drift is None else "")
            if fig.title.text != text:
                fig.title.text = text
        text = fit_table_html(fits)
        if self.fit_text.text != text:
            self.fit_text.text = text

    def _draw_maps(self) -> None:
        occupancy = self.shown.histograms("occupancy")
        status = self._status()
        # like the count axes (y_end): a colour scale that moves only when the data leave it or fill less
        # than a third of it, so the colour bars are not redrawn on most updates
        top = y_end(self.mapper.high, max(2.0, float(occupancy.counts.max())), self.log)
        if top is not None:
            self.mapper.high = top
        for c in range(N_CHAMBERS):
            columns = map_columns(occupancy, c, status, self.log, self.mapper.high)
            if self.maps[c].data.get("x"):  # the cell layout is sent once: update the other columns only
                self.maps[c].data.update({k: v for k, v in columns.items() if k not in MAP_LAYOUT_COLUMNS})
            else:
                self.maps[c].data = columns
            text = f"{map_title(c)} — {self._label()}"
            if self.map_figures[c].title.text != text:
                self.map_figures[c].title.text = text

    def _draw_health(self) -> None:
        self.health_table.data = health_rows(self.snap.flags, self.shown.histograms("occupancy"))

    def _draw_trends(self) -> None:
        trend = self.snap.trend
        # float arrays go to the page as binary buffers (lists with NaN go as JSON objects, one per NaN)
        self.trend.data = {k: v if k.startswith("quality_") else np.asarray(v, dtype=float)
                           for k, v in trend.items()}  # fmt: skip
        strip = trend_quality_columns(trend)
        self.trend_quality.data = {k: np.asarray(v, dtype=float) if k in ("x", "width", "y") else v
                                   for k, v in strip.items()}  # fmt: skip
        starts, ends = trend.get("start_ms", []), trend.get("end_ms", [])
        if not starts:
            return
        x_range = self.trend_figures["rate"].x_range
        moved = trend_range((x_range.start, x_range.end), starts[0], max(ends[-1], starts[0] + 60_000.0))
        if moved is not None and (x_range.start > starts[0] or x_range.end < ends[-1] or x_range.end <= 1):
            x_range.start, x_range.end = moved  # the time axis moves only when the newest bucket passes its end
        for column, fig in self.trend_figures.items():
            values = np.concatenate([np.asarray(trend[f"{column}_ch{c}"], dtype=float) for c in range(N_CHAMBERS)])
            values = values[np.isfinite(values)]
            if values.size:
                moved = trend_range((fig.y_range.start, fig.y_range.end), float(values.min()), float(values.max()))
                if moved is not None:
                    fig.y_range.start, fig.y_range.end = moved

    def _draw_events(self) -> None:
        cols = event_columns(self.snap.events)
        self.events.data = cols
        kinds = list(dict.fromkeys(reversed(cols["kind"])))
        self.timeline.yaxis.ticker.ticks = list(range(len(kinds)))
        self.timeline.yaxis.major_label_overrides = {i: k for i, k in enumerate(kinds)}
