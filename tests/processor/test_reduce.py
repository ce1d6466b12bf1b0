"""The pure reductions (``reduce_rows``, the two stages ``split_rows``/``reduce_split``), their merge and Arrow round trip,
without Spark, against the independent pandas computations of ``conftest``."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from dtmon.hits import SCINT_CHAMBER_OFFSET_NS
from dtmon.settings import load_settings
from dtmon.synth import generate
from dtmon.wire import RunEvent
from processor.codec import SPLIT_SCHEMA, from_partial_rows, reduce_split, split_rows, to_partial_row
from processor.decode import OUTPUT_SCHEMA
from processor.plan import reduce_partition
from processor.reduce import Binning, drift_time_edges, merge_aggregates, reduce_rows
from tests.processor.conftest import edges_of, expected_extras, expected_outputs, with_source_columns


@pytest.fixture(scope="module")
def synthetic_rows() -> pa.Table:
    """SYNTHETIC rows (dtmon.synth, seed 5) with the source's columns, run 4."""
    return with_source_columns(generate(60_000, seed=5), run=4)


def assert_same(a, b) -> None:
    for name in ("rows_read", "malformed_rows", "hits", "hits_outside_chambers", "orbit_min", "orbit_max",
                 "orbits_with_hits", "orbits_with_scintillator", "produced_first_ms", "produced_last_ms",
                 "synthetic", "detector_orbits", "orbit_jumps", "run", "newest_ms"):
        assert getattr(a, name) == getattr(b, name), name
    for name in ("occupancy", "multiplicity", "occupancy_scint", "drift_time", "scint_candidates", "occupancy_orbits"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert sorted(a.run_events, key=repr) == sorted(b.run_events, key=repr)


def test_reduce_rows_matches_pandas_on_genuine_rows(genuine_table):
    settings = load_settings(scint_channel=138)
    agg = reduce_rows(with_source_columns(genuine_table, run=2), Binning.from_settings(settings))
    frame = genuine_table.to_pandas()
    v1 = expected_outputs(frame)
    extras = expected_extras(frame, (1, 138), edges_of(settings), settings.max_orbit_gap)
    assert agg.occupancy.sum(axis=1).tolist() == [80, 171, 103, 143]  # SOURCES.md
    np.testing.assert_array_equal(agg.occupancy, v1["occupancy"])
    np.testing.assert_array_equal(agg.multiplicity, v1["multiplicity"])
    np.testing.assert_array_equal(agg.occupancy_scint, extras["occupancy_scint"])
    np.testing.assert_array_equal(agg.drift_time, extras["drift_time"])
    assert (agg.detector_orbits, agg.orbit_jumps) == (extras["detector_orbits"], extras["orbit_jumps"])
    assert agg.orbits_with_scintillator == 2 and agg.run == 2 and agg.rows_read == 999


def test_parts_with_disjoint_orbits_merge_to_the_whole(synthetic_rows):
    """Split by ORBIT_CNT parity (as a hash shuffle would): merged parts == the whole batch."""
    binning = Binning.from_settings(load_settings())
    whole = reduce_rows(synthetic_rows, binning)
    odd = pc.equal(pc.bit_wise_and(pc.fill_null(synthetic_rows["ORBIT_CNT"], 0), 1), 1)
    parts = [reduce_rows(synthetic_rows.filter(odd), binning), reduce_rows(synthetic_rows.filter(pc.invert(odd)), binning)]
    assert 0 < parts[0].hits < whole.hits
    assert_same(merge_aggregates(parts, binning), whole)
    assert whole.drift_time.sum() > 0 and whole.multiplicity.sum() > 0


def test_a_split_orbit_loses_its_tag():
    """Why the processor shuffles by ORBIT_CNT first: orbit 100's scintillator hit and its
    chamber hit reduced apart lose the E1 tag and the drift time they have together."""
    rows = with_source_columns(pa.Table.from_pylist(
        [{"HEAD": 2, "FPGA": 1, "TDC_CHANNEL": 128, "ORBIT_CNT": 100, "BX_COUNTER": 10, "TDC_MEAS": 0.0},
         {"HEAD": 2, "FPGA": 0, "TDC_CHANNEL": 3, "ORBIT_CNT": 100, "BX_COUNTER": 12, "TDC_MEAS": 0.0}],
        OUTPUT_SCHEMA.remove(9).remove(8).remove(7).remove(6)))
    binning = Binning.from_settings(load_settings())
    together = reduce_rows(rows, binning)
    apart = merge_aggregates([reduce_rows(rows.slice(0, 1), binning), reduce_rows(rows.slice(1), binning)], binning)
    assert together.occupancy_scint[0, 3] == 1 and together.drift_time.sum() == 1
    assert apart.occupancy_scint.sum() == 0 and apart.drift_time.sum() == 0
    assert apart.occupancy[0, 3] == together.occupancy[0, 3] == 1


def test_drift_time_edges_are_half_open_low_kept_high_dropped():
    """Bins are [edge_i, edge_i+1): a drift time equal to the lower edge lands in bin 0, one just
    below the upper edge in the last bin, one equal to the upper edge (``drift_time_max_ns``)
    or just below the lower edge is dropped, never counted in another bin or chamber."""
    offset = SCINT_CHAMBER_OFFSET_NS[0]
    low, high = offset - 100.0, offset + 100.0  # t_hit - t_scint = -100 / +100 ns at the edges
    binning = Binning((1, 128), tuple(drift_time_edges(low, high, 5.0)), 5.0, 2**20)
    assert len(binning.drift_edges) == 41 and binning.drift_edges[-1] == pytest.approx(high, abs=1e-9)
    scint = {"HEAD": 2, "FPGA": 1, "TDC_CHANNEL": 128, "ORBIT_CNT": 0, "BX_COUNTER": 100, "TDC_MEAS": 0.0}
    hits = [  # (BX_COUNTER, TDC_MEAS) of chamber-0 hits; 25 ns per BX, 25/30 ns per TDC count
        (104, 0.0),  # drift = high: dropped
        (103, 29.0),  # drift = high - 0.83 ns: last bin
        (96, 0.0),  # drift = low: bin 0
        (95, 29.0),  # drift = low - 0.83 ns: dropped
    ]
    rows = with_source_columns(pa.Table.from_pylist(
        [scint] + [{**scint, "FPGA": 0, "TDC_CHANNEL": c, "BX_COUNTER": bx, "TDC_MEAS": tdc} for c, (bx, tdc) in enumerate(hits)],
        OUTPUT_SCHEMA.remove(9).remove(8).remove(7).remove(6)))
    agg = reduce_rows(rows, binning)
    assert agg.occupancy_scint[0, :4].tolist() == [1, 1, 1, 1]  # all four hits are tagged
    expected = np.zeros((4, 40), np.int64)
    expected[0, 0] = expected[0, 39] = 1
    np.testing.assert_array_equal(agg.drift_time, expected)


def test_partial_row_round_trip_and_run_markers(synthetic_rows):
    binning = Binning.from_settings(load_settings())
    markers = pa.Table.from_pylist(
        [{"produced_ms": 5, "synthetic": True, "run": 4, "run_event": RunEvent.START},
         {"produced_ms": 1_800_000_000_000, "synthetic": True, "run": 4, "run_event": RunEvent.END},
         {"produced_ms": 7, "synthetic": True, "run": None, "run_event": RunEvent.END}],
        OUTPUT_SCHEMA,
    )
    nulls = pa.Table.from_pylist([{"produced_ms": 6, "synthetic": True, "run": 4, "run_event": 0}] * 3, OUTPUT_SCHEMA)
    rows = pa.concat_tables([synthetic_rows, markers, nulls])
    agg = reduce_rows(rows, binning)
    assert agg.malformed_rows == 3 and agg.rows_read == synthetic_rows.num_rows + 3
    expected = [(4, RunEvent.START, 5), (4, RunEvent.END, 1_800_000_000_000), (None, RunEvent.END, 7)]
    assert sorted(agg.run_events, key=repr) == sorted([(r, int(e), t) for r, e, t in expected], key=repr)
    assert agg.run == 4 and agg.newest_ms == 1_800_000_000_000 and agg.synthetic
    (back,) = from_partial_rows(pa.Table.from_batches([to_partial_row(agg)]), binning)
    assert_same(back, agg)
    np.testing.assert_array_equal(back.orbit_buckets, agg.orbit_buckets)


def test_two_stages_over_any_split_of_messages_give_the_whole(synthetic_rows):
    """Stage 1 (``split_rows``) on input partitions that cut orbits apart, rows grouped by
    bucket (as the shuffle does), stage 2 (``reduce_split``) per group, merged: == the whole batch."""
    binning = Binning.from_settings(load_settings())
    orbit = pc.fill_null(synthetic_rows["ORBIT_CNT"], -1).to_numpy()
    hit = np.flatnonzero(pc.fill_null(synthetic_rows["HEAD"], -1).to_numpy() == 2)
    inside = hit[1:][orbit[hit[1:]] == orbit[hit[:-1]]]  # a hit whose orbit began before it
    cut = int(inside[inside > synthetic_rows.num_rows // 3][0])
    assert orbit[cut] in set(orbit[hit[hit < cut]])  # the cut splits this orbit's hits
    splits = pa.Table.from_batches([split_rows(synthetic_rows.slice(0, cut), binning, 4),
                                    split_rows(synthetic_rows.slice(cut), binning, 4)])
    assert splits.schema.equals(SPLIT_SCHEMA)
    assert sorted(set(splits["bucket"].to_pylist())) == [-1, 0, 1, 2, 3]
    groups = [splits.filter(pc.is_in(splits["bucket"], pa.array(g, pa.int32()))) for g in ([-1, 2], [0, 1, 3])]
    merged = merge_aggregates([reduce_split(g, binning) for g in groups], binning)
    assert_same(merged, reduce_rows(synthetic_rows, binning))
    # each bucket holds only its orbits, and every hit once
    hits = sum(pa.ipc.open_stream(h).read_all().num_rows for h in splits["hits"].to_pylist() if h is not None)
    assert hits == int(pc.sum(pc.equal(synthetic_rows["HEAD"], 2)).as_py())


def test_reduce_partition_skips_empty_partitions(synthetic_rows):
    binning = Binning.from_settings(load_settings())
    reduce = reduce_partition(binning)
    assert list(reduce(iter([]))) == []
    split = split_rows(synthetic_rows.slice(0, 500), binning, 2)
    (row,) = list(reduce(iter([split, split.slice(0, 0)])))
    (agg,) = from_partial_rows(pa.Table.from_batches([row]), binning)
    assert_same(agg, reduce_rows(synthetic_rows.slice(0, 500), binning))
    assert agg.rows_read == 500 and agg.occupancy.sum() + agg.hits_outside_chambers == agg.hits > 0


def test_empty_and_hitless_batches(synthetic_rows):
    binning = Binning.from_settings(load_settings())
    empty = reduce_rows(synthetic_rows.slice(0, 0), binning)
    assert empty.rows_read == 0 and empty.orbit_min is None and empty.drift_time.shape == (4, len(binning.drift_edges) - 1)
    ancillary = synthetic_rows.filter(pc.not_equal(synthetic_rows["HEAD"], 2))
    agg = reduce_rows(ancillary, binning)
    assert agg.hits == 0 and agg.rows_read == ancillary.num_rows and agg.detector_orbits == 0
    assert merge_aggregates([], binning).rows_read == 0


def test_refused_messages_travel_in_the_totals_row_and_merge_capped(synthetic_rows):
    """``split_rows`` carries the refused messages of its input in the totals row; merging partitions
    adds the counts and keeps at most ``REJECTED_KEPT`` descriptions."""
    from processor.reduce import REJECTED_KEPT

    binning = Binning.from_settings(load_settings())
    refused = [f"hits/0@{i}: too many rows" for i in range(7)]
    parts = []
    for half in (synthetic_rows.slice(0, 100), synthetic_rows.slice(100)):
        split = pa.Table.from_batches([split_rows(half, binning, 2, refused)])
        agg = reduce_split(split, binning)
        assert agg.rejected_messages == 7 and agg.rejected_details == refused
        parts.append(agg)
    merged = merge_aggregates(parts, binning)
    assert merged.rejected_messages == 14 and len(merged.rejected_details) == REJECTED_KEPT
    (back,) = from_partial_rows(pa.Table.from_batches([to_partial_row(merged)]), binning)
    assert back.rejected_messages == 14 and back.rejected_details == merged.rejected_details
