"""Unit tests of the dashboard view (column builders, status line, widgets) and consumer offsets."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bokeh.events import ButtonClick
from confluent_kafka import OFFSET_BEGINNING

from dashboard.consumer import REPLAY_MARGIN, start_offset
from dashboard.state import ResultsStore, ViewChoice, channel_status, flagged_channels
from dashboard.view import (
    SessionView,
    histogram_columns,
    map_colours,
    map_columns,
    occupancy_columns,
    status_html,
)
from tests.dashboard.factory import T0, make_batch


def test_status_line_reports_batch_age_broker_and_bad_input():
    store = ResultsStore(history=10, clock=lambda: 1000.0)
    store.ingest(make_batch(41, seed=1, malformed=2).message)
    store.ingest(make_batch(42, seed=2, malformed=5).message)
    store.record_invalid("partition 0 offset 9: Invalid JSON")
    store.set_broker(False, "1/1 brokers are down")
    text = status_html(store.snapshot(), now=1007.4, bootstrap_servers="127.0.0.1:9", topic="res")
    assert "last batch <b>42</b>" in text
    assert "updated <b>7 s</b> ago" in text
    assert "UNREACHABLE" in text and "1/1 brokers are down" in text
    assert "malformed rows: 5 in last batch, 7 in last 2 batches" in text
    assert "invalid messages: 1" in text and "offset 9: Invalid JSON" in text
    assert "events" not in text
    jump = make_batch(43, seed=3, v2=True).message.model_copy(update={"orbit_jumps": 2})
    store.ingest(jump)
    store.ingest(make_batch(44, seed=4, quality=("good",) * 4, rejected=3).message)
    text = status_html(store.snapshot(), 1008.0, "127.0.0.1:9", "res")
    assert "events: 1 (last orbit_jump" in text  # an event to look up, not a red alarm
    assert "rejected raw: 3" in text


def test_status_line_before_any_result():
    text = status_html(ResultsStore(history=10).snapshot(), 0.0, "127.0.0.1:9", "res<x>")
    assert "waiting for results on topic <b>res&lt;x&gt;</b>" in text
    assert "connecting" in text


def test_histogram_columns_are_quad_edges_and_counts():
    b = make_batch(0, seed=3)
    store = ResultsStore(history=10)
    store.ingest(b.message)
    hists = ViewChoice(mode="current").select(store.snapshot()).histograms("multiplicity")
    cols = histogram_columns(hists)
    assert cols["left"] == [k - 0.5 for k in range(1, 65)]
    assert cols["right"] == [k + 0.5 for k in range(1, 65)]
    for c in range(4):
        assert cols[f"ch{c}"] == b.multiplicity[c].tolist()
        assert cols[f"y{c}"] == b.multiplicity[c].tolist()
        assert all(math.isnan(v) for v in cols[f"ref_ch{c}"])
    assert cols["bottom"] == [0.0] * 64
    assert histogram_columns(None)["left"] == []
    log = histogram_columns(hists, log=True)
    assert log["ch1"] == b.multiplicity[1].tolist()  # the hover still shows counts
    for count, drawn in zip(b.multiplicity[1], log["y1"]):
        assert math.isnan(drawn) if count == 0 else drawn == pytest.approx(math.log10(count))
    assert log["bottom"][0] < 0


def test_occupancy_marks_and_map_cells_show_channel_health():
    b = make_batch(0, seed=8, v2=True, dead=((2, 9),), noisy=((2, 30),))
    store = ResultsStore(history=10)
    store.ingest(b.message)
    occupancy = ViewChoice().select(store.snapshot()).histograms("occupancy")
    status = channel_status(*flagged_channels(b.message))
    cols = occupancy_columns(occupancy, status)
    assert cols["centre"][:3] == [0.5, 1.5, 2.5]
    dead = [i for i, y in enumerate(cols["dead_ch2"]) if not math.isnan(y)]
    noisy = [(i, y) for i, y in enumerate(cols["noisy_ch2"]) if not math.isnan(y)]
    assert dead == [9] and cols["dead_ch2"][9] == float(b.occupancy[2].max())  # a full-height band
    assert noisy == [(30, float(b.occupancy[2, 30]))]
    assert all(math.isnan(y) for y in cols["dead_ch0"] + cols["noisy_ch1"])

    cells = map_columns(occupancy, 2, status)
    assert cells["hits"] == b.occupancy[2].tolist()
    assert cells["chamber"] == [2] * 64
    assert (cells["layer"][9], cells["cell"][9], cells["x"][9], cells["y"][9]) == (2, 2, 105.0, 19.5)
    assert [cells["status"][i] for i in (9, 30, 0)] == ["dead", "noisy", "ok"]
    assert cells["line_width"][9] > cells["line_width"][0]


def test_session_widgets_switch_views_and_reset_only_the_cumulative_view():
    store = ResultsStore(history=20)
    batches = [make_batch(i, seed=30 + i, v2=True) for i in range(4)]
    for b in batches[:2]:
        store.ingest(b.message)
    view = SessionView("127.0.0.1:9", "res", history=20)
    assert view.choice.mode == "window" and view.choice.window == 20  # a moving window by default
    view.mode.active = 0  # "Last batch"
    view.tabs.active = 1  # Occupancy
    view.refresh(store.snapshot(), now=0.0)

    def occupancy(c: int) -> list:
        return list(view.sources["occupancy"].data[f"ch{c}"])

    assert occupancy(1) == batches[1].occupancy[1].tolist()
    view.mode.active = 2  # "Cumulative"
    assert occupancy(1) == (batches[0].occupancy[1] + batches[1].occupancy[1]).tolist()
    assert list(view.sources["drift_time"].data["ch3"]) == []  # hidden tab: not drawn yet
    view.tabs.active = 2  # Time box: drawn when it becomes visible
    assert list(view.sources["drift_time"].data["ch3"]) == (batches[0].drift[3] + batches[1].drift[3]).tolist()
    view.tabs.active = 1
    view.reset._trigger_event(ButtonClick(view.reset))  # what a click in the browser delivers
    assert occupancy(1) == [0] * 64
    for b in batches[2:]:
        store.ingest(b.message)
    view.refresh(store.snapshot(), now=0.0)
    assert occupancy(1) == (batches[2].occupancy[1] + batches[3].occupancy[1]).tolist()
    assert list(view.maps[1].data.get("hits", [])) == []  # maps hidden: untouched by the update
    view.tabs.active = 3
    assert list(view.maps[1].data["hits"]) == occupancy(1)
    assert "Reset" in view.caption.text
    view.tabs.active = 1
    view.mode.active = 1
    view.window.value = 3
    assert occupancy(0) == sum(b.occupancy[0] for b in batches[1:]).tolist()
    assert "FPGA 1 ch 138" in view.scintillator.text
    assert "Run <b>7</b>" in view.run.text


def _maps_view():
    """A session showing the Chamber maps tab, with one version-2 batch in its store."""
    store = ResultsStore(history=5)
    b = make_batch(0, seed=5, v2=True)
    store.ingest(b.message)
    view = SessionView("127.0.0.1:9", "res", history=5)
    view.tabs.active = 3  # maps
    return store, b, view


def test_log_scale_draws_log10_of_counts_with_one_colour_scale():
    store, b, view = _maps_view()
    view.refresh(store.snapshot(), now=0.0)
    top = b.occupancy.max()  # one scale: from the highest cell of all four chambers
    assert top <= view.mapper.high <= 2 * top
    assert all(f.right[0].color_mapper is view.mapper for f in view.map_figures)
    view.log_toggle.active = True
    assert math.log10(top) <= view.mapper.high <= math.log10(top) + 1
    cell = int(np.argmax(b.occupancy[2]))
    assert view.maps[2].data["colour"][cell] == pytest.approx(math.log10(b.occupancy[2, cell]))
    assert view.maps[2].data["fill"][cell] == map_colours(np.array([math.log10(b.occupancy[2, cell])]),
                                                          view.mapper.high)[0]
    assert view.maps[2].data["hits"][cell] == b.occupancy[2, cell]
    view.tabs.active = 1
    assert view.hist_figures["occupancy"][0].y_range.start < 0
    assert view.sources["occupancy"].data["y0"][cell] == pytest.approx(math.log10(b.occupancy[0, cell]))


def test_map_colours_follow_bokehs_linear_colour_mapper():
    from bokeh.palettes import Viridis256

    from dashboard.view import MAP_NAN_COLOUR

    values = np.array([0.0, 49.9, 50.0, 99.99, 100.0, 250.0, -3.0, np.nan])
    # LinearColorMapper: index floor((v - low) / (high - low) * 256), clipped to the palette
    assert map_colours(values, high=100.0) == [Viridis256[0], Viridis256[127], Viridis256[128], Viridis256[255],
                                               Viridis256[255], Viridis256[255], Viridis256[0], MAP_NAN_COLOUR]
    assert map_colours(np.zeros((2, 3)), high=0.0) == [Viridis256[0]] * 6  # a zero-width scale does not divide by 0


def test_the_shared_colour_scale_moves_only_when_the_data_leave_it_or_fill_less_than_a_third():
    store, b, view = _maps_view()
    top = float(b.occupancy.max())
    view.mapper.high = 1.2 * top  # holds the data: kept (no recolouring of four maps + colour bar)
    view.refresh(store.snapshot(), now=0.0)
    assert view.mapper.high == 1.2 * top
    view.mapper.high = 0.9 * top  # a cell above the scale: grows
    view.drawn_ingests = -1  # redraw the same data
    view.refresh(store.snapshot(), now=0.0)
    assert top <= view.mapper.high <= 2 * top
    view.mapper.high = 10 * top  # data fill less than a third: shrinks
    view.drawn_ingests = -1  # redraw the same data
    view.refresh(store.snapshot(), now=0.0)
    assert top <= view.mapper.high <= 2 * top


def test_stale_banner_run_state_and_red_tile_follow_the_snapshot():
    clock = [T0]
    store = ResultsStore(history=5, clock=lambda: clock[0])
    store.ingest(make_batch(0, seed=1, started=T0 - 0.5, quality=("good", "bad", "good", "good"),
                            reasons=("ok", "rate 0.0 Hz below 50 Hz", "ok", "ok")).message)
    view = SessionView("127.0.0.1:9", "res", history=5)
    view.refresh(store.snapshot(), now=T0 + 1.0)
    assert view.stale.visible is False and "running" in view.run.text
    assert "data-tile='chamber-1' data-quality='bad'" in view.summary.text
    assert "rate 0.0 Hz below 50 Hz" in view.summary.text
    view.refresh(store.snapshot(), now=T0 + 6.5)  # 3 trigger intervals of 2 s without a message
    assert view.stale.visible is True and "no results for 6 s" in view.stale.text
    assert "stale" in view.run.text and "running" not in view.run.text.replace("last seen running", "")
    store.set_broker(False, "1/1 brokers are down")
    view.refresh(store.snapshot(), now=T0 + 7.0)
    assert view.stale.text.startswith("BROKER UNREACHABLE") and "1/1 brokers are down" in view.stale.text


def test_start_offset_replays_history_before_the_end():
    assert start_offset(0, 500, 300) == 200 - REPLAY_MARGIN
    assert start_offset(0, 8, 300) == 0
    assert start_offset(120, 200, 300) == 120
    assert start_offset(-1, -1, 300) == OFFSET_BEGINNING


def test_trend_range_moves_only_when_values_leave_it_or_fill_under_a_third():
    from dashboard.view import trend_range

    start, end = trend_range((0.0, 1.0), 50.0, 54.0)  # drift velocity, µm/ns
    assert start <= 50.0 - 0.4 and end >= 54.0 + 0.4 and (end - start) < 3 * 4.0
    assert trend_range((start, end), 50.5, 53.5) is None  # inside and filling over a third: kept
    assert trend_range((start, end), 50.0, 60.0) is not None  # a value above the end: moved
    assert trend_range((0.0, 1000.0), 50.0, 54.0) is not None  # filling 0.4 %: shrunk
    t0 = 1.7e12  # epoch ms: the padding follows the span, not the magnitude
    start, end = trend_range((0.0, 1.0), t0, t0 + 60_000)
    assert t0 - 20_000 <= start <= t0 - 6_000 and t0 + 66_000 <= end <= t0 + 80_000
    assert trend_range((0.0, 1.0), 0.0, 0.0) == (0.0, 1.0)  # non-negative values: the axis starts at 0
    assert trend_range((0.0, 1.0), 600.0, 22_800.0)[0] == 0.0  # rates in Hz, padding would go below 0
    assert trend_range((0.0, 1.0), -5.0, 30.0)[0] < -5.0  # a t0 below 0 keeps its padding


def test_fit_table_names_each_chambers_time_box_fit_or_no_fit():
    from dashboard.view import fit_table_html
    from dtmon.schema import TimeBoxFit

    fit = TimeBoxFit(chamber=2, tagged_hits=900, t0_ns=3.25, t0_err_ns=0.4, t_max_ns=391.0, t_max_err_ns=0.6,
                     v_drift_um_per_ns=54.26, v_drift_err_um_per_ns=0.1)
    text = fit_table_html({2: fit})
    assert "chamber 2</b>: t0 3.2 ± 0.4 ns · t_max 391.0 ± 0.6 ns · v 54.3 ± 0.1 µm/ns" in text
    assert text.count("no fit") == 3


def test_histogram_updates_send_float_buffers_and_the_bins_only_when_they_change():
    from bokeh.document import Document
    from bokeh.models import ColumnDataSource

    from dashboard.state import HistogramSet
    from dashboard.view import HISTOGRAM_BIN_COLUMNS, set_histogram_columns

    def hists(counts, edges):
        return HistogramSet(edges=list(edges), counts=np.asarray(counts, dtype=np.int64))

    source = ColumnDataSource()
    doc = Document()
    doc.add_root(source)
    sent = []
    doc.callbacks.on_change(lambda event: sent.append(event))
    edges = [0.0, 5.0, 10.0]
    set_histogram_columns(source, histogram_columns(hists(np.ones((4, 2)), edges)))
    assert all(v.dtype == np.float64 for v in source.data.values())
    set_histogram_columns(source, histogram_columns(hists(np.full((4, 2), 7), edges)))
    changed = set(sent[-1].cols)
    assert changed and not changed & set(HISTOGRAM_BIN_COLUMNS)
    assert source.data["ch2"].tolist() == [7.0, 7.0] and math.isnan(source.data["ref_ch0"][0])
    set_histogram_columns(source, histogram_columns(hists(np.full((4, 2), 7), edges), log=True))
    assert source.data["bottom"].tolist() != [0.0, 0.0]  # the log toggle moves the bars' bottom: sent again
    set_histogram_columns(source, histogram_columns(hists(np.ones((4, 3)), [0.0, 1.0, 2.0, 3.0])))
    assert source.data["left"].tolist() == [0.0, 1.0, 2.0]
