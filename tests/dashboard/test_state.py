"""Unit tests of the dashboard's pure logic (dashboard/state.py)."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from dashboard.state import (
    ResultsStore,
    ViewChoice,
    cell_layout,
    channel_status,
    flagged_channels,
    flags_html,
    health_rows,
    rate_columns,
    run_html,
    scintillator_text,
)
from dtmon.schema import MULTIPLICITY_EDGES, OCCUPANCY_EDGES, Histogram, Scintillator
from tests.dashboard.factory import DRIFT_EDGES, T0, make_batch


class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def shown(store: ResultsStore, mode: str, window: int = 10, choice: ViewChoice | None = None):
    choice = choice or ViewChoice(mode=mode, window=window)
    choice.mode, choice.window = mode, window
    return choice.select(store.snapshot())


def assert_sums(totals, batches) -> None:
    """``totals`` holds exactly the element-wise sums of ``batches``' arrays."""
    assert totals.batches == len(batches)
    for kind, attr in (("occupancy", "occupancy"), ("multiplicity", "multiplicity"),
                       ("occupancy_scint", "occupancy_scint"), ("drift_time", "drift")):
        expected = sum(getattr(b, attr) for b in batches)
        hists = totals.histograms(kind)
        if hists is None:  # version 1: no drift-time histogram at all
            assert kind == "drift_time" and not np.any(expected)
            continue
        assert np.array_equal(hists.counts, expected) if batches else not hists.counts.any(), kind
    assert totals.hits.tolist() == sum((b.occupancy.sum(axis=1) for b in batches), np.zeros(4)).tolist()


def test_empty_store_has_default_bins_and_no_batch():
    store = ResultsStore(history=10)
    snap = store.snapshot()
    assert snap.version == 0
    assert snap.last_batch_id is None and snap.last_update is None and snap.last is None
    assert snap.series["total_hits"] == []
    assert snap.broker_reachable is None
    for mode in ("current", "window", "cumulative"):
        t = shown(store, mode)
        assert t.batches == 0
        assert t.histograms("occupancy").edges == OCCUPANCY_EDGES
        assert t.histograms("occupancy_scint").edges == OCCUPANCY_EDGES
        assert np.array_equal(t.histograms("occupancy").counts, np.zeros((4, 64)))
        assert t.histograms("multiplicity").edges == MULTIPLICITY_EDGES
        assert t.histograms("drift_time") is None


def test_series_and_latest_histograms_of_version_1_messages():
    clock = FakeClock(123.0)
    store = ResultsStore(history=10, clock=clock)
    batches = [make_batch(i, seed=i, malformed=i % 3) for i in range(4)]
    for i, b in enumerate(batches):
        clock.t = 100.0 + i
        store.ingest(b.message)
    snap = store.snapshot()

    assert snap.series["batch_id"] == [0, 1, 2, 3]
    assert snap.series["time_ms"] == [(T0 + 2.0 * i) * 1000 for i in range(4)]
    assert snap.series["duration_s"] == pytest.approx([0.25] * 4)
    assert snap.series["total_hits"] == [int(b.occupancy.sum()) for b in batches]
    for c in range(4):
        assert snap.series[f"hits_ch{c}"] == [int(b.occupancy[c].sum()) for b in batches]
    assert snap.series["rows_read"] == [int(b.occupancy.sum()) + b.extra_rows + b.malformed for b in batches]
    assert snap.series["malformed_rows"] == [0, 1, 2, 0]
    assert snap.malformed_rows_kept == 3

    current = shown(store, "current")
    assert np.array_equal(current.histograms("occupancy").counts, batches[-1].occupancy)
    assert np.array_equal(current.histograms("multiplicity").counts, batches[-1].multiplicity)
    assert np.array_equal(current.histograms("occupancy_scint").counts, np.zeros((4, 64)))  # v1: no E1
    assert current.histograms("drift_time") is None  # v1: no E2
    assert math.isnan(rate_columns(current)["rate_hz"][0])  # v1: no detector time
    assert snap.last_batch_id == 3 and snap.last_update == 103.0 and snap.synthetic is False
    assert "no run number" in run_html(snap.last, 0.0)
    assert "version-1" in flags_html((), False) and "version-1" in scintillator_text(snap.last)
    assert_sums(shown(store, "cumulative"), batches)  # v1 messages accumulate too (run None)


def test_window_sums_the_last_n_batches_of_every_kind():
    store = ResultsStore(history=10)
    batches = [make_batch(i, seed=20 + i, v2=True) for i in range(6)]
    for b in batches:
        store.ingest(b.message)
    assert_sums(shown(store, "window", 3), batches[-3:])
    assert_sums(shown(store, "window", 1), batches[-1:])
    assert_sums(shown(store, "current"), batches[-1:])
    assert_sums(shown(store, "window", 50), batches)
    assert shown(store, "current").histograms("drift_time").edges == DRIFT_EDGES


def test_cumulative_outlives_the_kept_history():
    store = ResultsStore(history=3)
    batches = [make_batch(i, seed=40 + i, v2=True) for i in range(7)]
    for b in batches:
        store.ingest(b.message)
    snap = store.snapshot()
    assert [r.message.batch_id for r in snap.records] == [4, 5, 6]
    assert_sums(shown(store, "cumulative"), batches)
    assert_sums(shown(store, "window", 10), batches[-3:])
    choice = ViewChoice(mode="cumulative")
    assert "run 7" in choice.caption(snap, choice.select(snap)) and "7 batches" in choice.caption(snap, choice.select(snap))


def test_reset_is_per_session_and_restarts_the_cumulative_view():
    store = ResultsStore(history=10)
    batches = [make_batch(i, seed=60 + i, v2=True) for i in range(5)]
    mine, other = ViewChoice(mode="cumulative"), ViewChoice(mode="cumulative")
    for b in batches[:3]:
        store.ingest(b.message)
    mine.reset(store.snapshot())
    assert_sums(mine.select(store.snapshot()), [])
    for b in batches[3:]:
        store.ingest(b.message)
    snap = store.snapshot()
    assert_sums(mine.select(snap), batches[3:])
    assert_sums(other.select(snap), batches)  # the other session did not reset
    assert "Reset" in mine.caption(snap, mine.select(snap)) and "after batch 2" in mine.caption(snap, mine.select(snap))
    mine.mode = "window"
    mine.window = 4
    assert_sums(mine.select(snap), batches[1:])  # reset touches only the cumulative view


def test_new_run_restarts_cumulative_window_and_voids_a_reset():
    store = ResultsStore(history=20)
    run7 = [make_batch(i, seed=80 + i, v2=True, run=7) for i in range(4)]
    run8 = [make_batch(i, seed=90 + i, v2=True, run=8, run_started=T0 + 100) for i in range(4, 7)]
    choice = ViewChoice(mode="cumulative")
    for b in run7:
        store.ingest(b.message)
    choice.reset(store.snapshot())
    for b in run8:
        store.ingest(b.message)
    assert_sums(choice.select(store.snapshot()), run8)
    assert_sums(shown(store, "cumulative"), run8)
    assert_sums(shown(store, "window", 10), run8)
    assert store.snapshot().series["batch_id"] == list(range(7))  # time series keeps both runs
    assert "run 8" in choice.caption(store.snapshot(), choice.select(store.snapshot()))


def test_changed_drift_time_bins_start_a_new_accumulation():
    store = ResultsStore(history=10)
    first = make_batch(0, seed=1, v2=True)
    store.ingest(first.message)
    chambers = [ch.model_copy(update={"drift_time": Histogram(bin_edges=[0.0, 200.0, 400.0], bin_counts=[c, 1])})
                for c, ch in enumerate(first.message.chambers)]
    store.ingest(first.message.model_copy(update={"batch_id": 1, "chambers": chambers}))
    cumulative = shown(store, "cumulative")
    assert cumulative.batches == 1
    assert cumulative.histograms("drift_time").counts.tolist() == [[c, 1] for c in range(4)]


def test_replayed_batch_replaces_the_newest_point_and_its_sums():
    store = ResultsStore(history=10)
    a = make_batch(6, seed=1, v2=True)
    store.ingest(a.message)
    store.ingest(make_batch(7, seed=2, v2=True).message)
    replay = make_batch(7, seed=3, synthetic=True, v2=True)
    store.ingest(replay.message)
    snap = store.snapshot()
    assert snap.series["batch_id"] == [6, 7]
    assert snap.series["total_hits"] == [int(a.occupancy.sum()), int(replay.occupancy.sum())]
    assert snap.synthetic is True
    assert_sums(shown(store, "cumulative"), [a, replay])


def test_rates_are_hits_per_second_of_detector_time():
    store = ResultsStore(history=10)
    starts, det = [T0, T0 + 3.0, T0 + 4.5], [1.25, 2.5, 0.75]
    batches = [make_batch(i, seed=5 + i, v2=True, started=s, detector_time_s=d)
               for i, (s, d) in enumerate(zip(starts, det))]
    for b in batches:
        store.ingest(b.message)
    hits = sum(b.occupancy.sum(axis=1) for b in batches)
    rates = rate_columns(shown(store, "cumulative"))
    assert rates["chamber"] == ["0", "1", "2", "3", "all"]
    assert rates["hits"] == [*hits.tolist(), int(hits.sum())]
    assert rates["rate_hz"] == pytest.approx([*(hits / sum(det)).tolist(), hits.sum() / sum(det)])
    assert set(rates) == {"chamber", "hits", "rate_hz"}  # one rate definition only
    last = rate_columns(shown(store, "current"))
    assert last["rate_hz"][:4] == pytest.approx((batches[2].occupancy.sum(axis=1) / 0.75).tolist())
    series = store.snapshot().series
    for c in range(4):
        assert series[f"rate_ch{c}"] == pytest.approx([b.occupancy[c].sum() / d for b, d in zip(batches, det)])


def test_cell_layout_matches_the_chamber_drawing():
    layout = cell_layout()
    # PDF p. 19: top layer 4 holds 0 4 8 ..., layer 3 (shifted) 2 6 ..., layer 2 1 5 ..., layer 1 (shifted) 3 7 ...
    expected = {0: (4, 0, 21.0, 45.5), 2: (3, 0, 42.0, 32.5), 1: (2, 0, 21.0, 19.5), 3: (1, 0, 42.0, 6.5),
                60: (4, 15, 651.0, 45.5), 63: (1, 15, 672.0, 6.5), 22: (3, 5, 252.0, 32.5)}
    for c, (layer, cell, x, y) in expected.items():
        assert (layout["layer"][c], layout["cell"][c], layout["x"][c], layout["y"][c]) == (layer, cell, x, y)
    assert sorted(zip(layout["layer"].tolist(), layout["cell"].tolist())) == [(l, k) for l in range(1, 5) for k in range(16)]


def test_health_counts_list_status_and_rows():
    b = make_batch(0, seed=3, v2=True, dead=((0, 12), (3, 5)), noisy=((1, 7),))
    store = ResultsStore(history=5)
    store.ingest(b.message)
    snap = store.snapshot()
    text = flags_html(snap.flags, True)
    assert "<details>" in text and "ch0: 1 dead, 0 noisy · ch1: 0 dead, 1 noisy · ch3: 1 dead, 0 noisy" in text
    assert "ch0/12 dead since" in text and "ch1/7 noisy since" in text
    status = channel_status(*flagged_channels(b.message))
    assert (status[0, 12], status[3, 5], status[1, 7]) == ("dead", "dead", "noisy")
    assert (status != "").sum() == 3
    rows = health_rows(snap.flags, shown(store, "current").histograms("occupancy"))
    assert rows["status"] == ["dead", "noisy", "dead"]  # by chamber
    assert rows["layer"] == [4, 1, 2]  # 12 % 4 = 0, 7 % 4 = 3, 5 % 4 = 1
    assert rows["cell"] == [3, 1, 1]
    assert rows["fpga"] == [0, 0, 1] and rows["tdc_channel"] == [12, 71, 69]
    assert rows["hits"] == [b.occupancy[0, 12], b.occupancy[1, 7], b.occupancy[3, 5]]
    assert rows["since"] == [b.message.batch_started * 1000.0] * 3
    assert flags_html((), True) == "Flagged channels: none"


def test_run_state_and_elapsed_time():
    running = make_batch(0, seed=1, v2=True, run=12, run_started=T0).message
    assert run_html(running, T0 + 3725.0) == "Run <b>12</b> · <b style='color:green'>running</b> · elapsed <b>1:02:05</b>"
    ended = make_batch(1, seed=1, v2=True, run=12, run_state="ended", run_started=T0 - 98.75).message
    text = run_html(ended, T0 + 1e6)
    assert "ended" in text and "0:01:41" in text  # published (T0 + 2.25) - run_started
    assert scintillator_text(running) == "t0 = FPGA 1 ch 138"
    found = Scintillator(fpga=1, channel=138, source="detected", reason="detected FPGA 1 channel 138: 98% in the window")
    assert scintillator_text(running.model_copy(update={"scintillator": found})) == (
        "t0 = FPGA 1 ch 138 (detected FPGA 1 channel 138: 98% in the window)")
    chosen = Scintillator(fpga=1, channel=128, source="configured", reason="scint_channel setting")
    assert scintillator_text(running.model_copy(update={"scintillator": chosen})) == (
        "t0 = FPGA 1 ch 128 (configured: scint_channel setting)")


def test_version_counts_every_change():
    store = ResultsStore(history=10)
    store.ingest(make_batch(0, seed=1).message)
    store.ingest(make_batch(1, seed=2).message)
    assert store.version == 2
    store.record_invalid("offset 7: not JSON")
    assert store.version == 3
    store.set_broker(True)
    store.set_broker(True)  # no change, no new version
    assert store.version == 4
    store.set_broker(False, "all brokers down")
    snap = store.snapshot()
    assert snap.version == 5
    assert (snap.broker_reachable, snap.broker_detail) == (False, "all brokers down")
    assert (snap.invalid_messages, snap.last_invalid) == (1, "offset 7: not JSON")
    assert snap.ingests == 2  # histograms are redrawn only when this moves
    assert store.snapshot() is snap  # cached until the next change


def test_message_with_inconsistent_bins_is_rejected_and_nothing_kept():
    good = make_batch(0, seed=1)
    store = ResultsStore(history=10)
    store.ingest(good.message)
    chambers = list(good.message.chambers)
    odd = Histogram(bin_edges=[0.0, 32.0, 64.0], bin_counts=[1, 2])
    chambers[2] = chambers[2].model_copy(update={"occupancy": odd})
    bad = good.message.model_copy(update={"batch_id": 1, "chambers": chambers})
    with pytest.raises(ValueError, match="bin edges differ"):
        store.ingest(bad)
    assert store.version == 1
    assert store.snapshot().last_batch_id == 0
    assert_sums(shown(store, "cumulative"), [good])


def test_concurrent_ingest_loses_nothing():
    store = ResultsStore(history=1000)
    messages = [make_batch(i, seed=i).message for i in range(40)]

    def feed(part):
        for m in part:
            store.ingest(m)
            store.snapshot()

    threads = [threading.Thread(target=feed, args=(messages[k::4],)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    snap = store.snapshot()
    assert snap.version == 40
    assert sorted(snap.series["batch_id"]) == list(range(40))
    assert shown(store, "cumulative").batches == 40


def test_quality_tiles_carry_each_chamber_verdict_and_null_for_older_results():
    from dashboard.state import quality_tiles

    v3 = make_batch(0, seed=1, quality=("good", "warning", "bad", "null"),
                    reasons=("ok", "t0 12 ns", "rate 0 Hz", "12 tagged hits < 100"), dead=((2, 3), (2, 4))).message
    tiles = quality_tiles(v3)
    assert [t.key for t in tiles] == ["detector", "chamber-0", "chamber-1", "chamber-2", "chamber-3"]
    assert [t.quality for t in tiles] == ["bad", "good", "warning", "bad", "null"]
    assert tiles[0].reason == "chamber 2: rate 0 Hz" and tiles[3].reason == "rate 0 Hz"
    assert tiles[3].detail == "dead 2 · noisy 0"
    v2 = quality_tiles(make_batch(1, seed=1, v2=True, dead=((0, 1),)).message)
    assert {t.quality for t in v2} == {"null"} and "no verdict" in v2[1].reason
    assert v2[1].detail == "dead 1 · noisy 0"  # version-2 channel health still counted
    assert quality_tiles(None)[0].reason == "no results yet"


def test_freshness_flags_three_missed_trigger_intervals_a_down_broker_and_old_data():
    from dashboard.state import freshness

    clock = FakeClock(T0 + 1.0)
    store = ResultsStore(history=5, clock=clock)
    assert freshness(store.snapshot(), T0).stale  # nothing received yet
    store.ingest(make_batch(0, seed=1, started=T0).message)  # trigger interval 2 s, published T0 + 0.25
    snap = store.snapshot()
    assert not freshness(snap, T0 + 6.9).stale
    stale = freshness(snap, T0 + 7.1)
    assert stale.stale and stale.limit_s == 6.0 and "no results for 6 s" in stale.reason
    store.set_broker(False, "1/1 brokers are down")
    assert "broker unreachable: 1/1 brokers are down" == freshness(store.snapshot(), T0 + 2.0).reason
    store.set_broker(True)
    clock.t = T0 + 500.0  # replayed on a restart long after the processor stopped
    store.ingest(make_batch(1, seed=2, started=T0 + 2.0).message)
    old = freshness(store.snapshot(), T0 + 501.0)
    assert old.stale and "old" in old.reason
    assert run_html(make_batch(2, seed=1, v2=True).message, T0, stale=True).count("running") == 1  # "last seen running"


def test_channel_flags_keep_the_time_each_channel_was_first_flagged():
    store = ResultsStore(history=3)
    for i in range(5):
        dead = ((1, 12),) if i >= 1 else ()
        noisy = ((2, 7),) if i in (1, 2, 4) else ()
        store.ingest(make_batch(i, seed=i, quality=("good",) * 4, dead=dead, noisy=noisy).message)
    flags = store.snapshot().flags
    assert flags == ((1, 12, "dead", T0 + 2.0), (2, 7, "noisy", T0 + 8.0))  # noisy cleared at batch 3, flagged again


def test_trend_history_merges_buckets_and_keeps_time_box_rate_and_worst_quality():
    from dashboard.state import TrendHistory, trend_quality_columns

    trend = TrendHistory(max_buckets=8, bucket_s=2.0)
    n = 8 * 3600 // 2  # 8 hours of 2 s micro-batches
    batch = make_batch(0, seed=1, quality=("good", "bad", "warning", "null"), t0_ns=2.0)
    for i in range(n):
        trend.add(batch.message.model_copy(update={"batch_id": i, "batch_started": T0 + 2.0 * i}))
    assert len(trend.buckets) <= 8
    cols = trend.columns()
    assert sum(cols["batches"]) == n
    assert cols["start_ms"][0] == T0 * 1000 and cols["end_ms"][-1] == (T0 + 2.0 * (n - 1)) * 1000
    hits = batch.occupancy.sum(axis=1)
    for c in range(4):
        assert cols[f"rate_ch{c}"] == pytest.approx([hits[c] / 1.5] * len(cols["batches"]))
        assert cols[f"t0_ch{c}"] == pytest.approx([2.0 + c] * len(cols["batches"]))
    assert set(cols["quality_ch1"]) == {"bad"} and set(cols["quality_ch3"]) == {"null"}
    strip = trend_quality_columns(cols)
    assert len(strip["x"]) == 4 * len(cols["batches"]) and strip["colour"][1] == "#d62728"

    short = TrendHistory(max_buckets=4, bucket_s=2.0, horizon_s=60.0)
    for i in range(100):
        short.add(batch.message.model_copy(update={"batch_id": i, "batch_started": T0 + 2.0 * i}))
    assert short.buckets[0].end >= T0 + 198.0 - 60.0 - short.bucket_s  # older than the horizon: dropped


def test_stream_events_from_v3_messages_and_orbit_jumps_of_v2():
    from dashboard.state import event_columns

    store = ResultsStore(history=3)
    store.ingest(make_batch(0, seed=1, v2=True).message.model_copy(update={"orbit_jumps": 2}))
    store.ingest(make_batch(1, seed=1, quality=("good",) * 4, rejected=2,
                            events=(("checkpoint_reset", "offsets reset on minidt-hits/0"),)).message)
    store.ingest(make_batch(2, seed=1, quality=("good",) * 4, rejected=1).message)
    snap = store.snapshot()
    assert [e.kind for e in snap.events] == ["orbit_jump", "checkpoint_reset"]
    assert "2 ORBIT_CNT jump(s) in batch 0" in snap.events[0].detail
    assert snap.rejected_messages == 3
    cols = event_columns(snap.events)
    assert cols["kind"] == ["checkpoint_reset", "orbit_jump"]  # newest first
    assert cols["y"] == [1, 0]


def test_reference_histograms_and_normalisation():
    from dashboard.state import normalised_reference, reference_histograms
    from dtmon.reference import reference_from_messages

    store = ResultsStore(history=5)
    batches = [make_batch(i, seed=i, v2=True) for i in range(2)]
    for b in batches:
        store.ingest(b.message)
    hists = reference_histograms(reference_from_messages(r.message for r in store.snapshot().records))
    assert np.array_equal(hists["occupancy"].counts, sum(b.occupancy for b in batches))
    assert np.array_equal(hists["drift_time"].counts, sum(b.drift for b in batches))
    last = shown(store, "current").histograms("occupancy")
    scaled = normalised_reference(hists["occupancy"], last)
    assert scaled.sum(axis=1) == pytest.approx(batches[-1].occupancy.sum(axis=1))
    assert normalised_reference(hists["drift_time"], last) is None  # other bins
# ------------------------------------------------------------------ results arriving out of batch order


def _interleaved(n: int, partitions: int) -> list[int]:
    """Batch ids 0..n-1 in the order a reader of ``partitions`` partitions may get them (one partition after another)."""
    return [i for p in range(partitions) for i in range(p, n, partitions)]


def test_batches_arriving_out_of_order_are_kept_in_batch_order_with_the_same_sums():
    batches = [make_batch(i, seed=40 + i, v2=True, run_state="ended" if i == 11 else "running") for i in range(12)]
    in_order, shuffled = ResultsStore(history=8), ResultsStore(history=8)
    for b in batches:
        in_order.ingest(b.message)
    order = _interleaved(12, 4)
    assert order[:4] == [0, 4, 8, 1]
    for i in order:
        shuffled.ingest(batches[i].message)
    want, got = in_order.snapshot(), shuffled.snapshot()
    assert got.series["batch_id"] == list(range(4, 12))
    assert got.series == want.series  # wall times, rates, hits: as if they had come in order
    assert got.last_batch_id == 11 and got.last.run_state == "ended"
    assert_sums(shown(shuffled, "cumulative"), batches)
    assert_sums(shown(shuffled, "window", window=8), batches[4:])
    assert got.trend == want.trend


def test_a_late_batch_of_the_previous_run_does_not_restart_the_accumulation():
    old_run = [make_batch(i, seed=60 + i, v2=True, run=7) for i in range(4)]
    new_run = [make_batch(i, seed=60 + i, v2=True, run=8) for i in range(4, 7)]
    store = ResultsStore(history=10)
    for b in old_run[:3] + new_run:
        store.ingest(b.message)
    epoch = store.snapshot().epoch
    store.ingest(old_run[3].message)  # batch 3 of run 7 arrives after batch 6 of run 8
    snap = store.snapshot()
    assert snap.epoch == epoch and snap.last.run == 8 and snap.last_batch_id == 6
    assert snap.series["batch_id"] == list(range(7))
    assert_sums(shown(store, "cumulative"), new_run)
    assert_sums(shown(store, "window", window=10), new_run)


def test_lower_batch_ids_published_later_are_a_new_query_and_become_the_newest():
    store = ResultsStore(history=10)
    store.ingest(make_batch(50, seed=1, v2=True).message)
    fresh = make_batch(0, seed=2, v2=True, started=T0 + 500.0, run_state="ended")  # checkpoint cleared: ids from 0
    store.ingest(fresh.message)
    snap = store.snapshot()
    assert snap.series["batch_id"] == [50, 0] and snap.last.run_state == "ended"


def test_a_late_batch_older_than_everything_kept_is_summed_not_shown():
    batches = [make_batch(i, seed=80 + i, v2=True) for i in range(6)]
    store = ResultsStore(history=3)
    for i in (3, 4, 5, 0, 1, 2):
        store.ingest(batches[i].message)
    snap = store.snapshot()
    assert snap.series["batch_id"] == [3, 4, 5]
    assert_sums(shown(store, "cumulative"), batches)
