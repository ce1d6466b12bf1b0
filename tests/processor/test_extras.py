"""Version-2 outputs (E1 scintillator-tagged occupancy, E2 drift time, detector time, runs)
from Spark against independent pandas computations, on genuine and synthetic rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from dtmon.hits import HIT_SCHEMA
from dtmon.schema import RESULTS_VERSION, ResultsMessage
from dtmon.settings import load_settings
from dtmon.synth import SynthParams, generate
from dtmon.wire import RunEvent
from processor.decode import OUTPUT_SCHEMA
from processor.message import build_message
from processor.plan import aggregate_batch
from processor.reduce import detector_span, drift_time_edges
from processor.state import RunStatus
from tests.processor.conftest import (
    edges_of,
    expected_extras,
    expected_outputs,
    message_frame,
    with_source_columns,
)

SYNTH_ROWS = 200_000


def as_frame(spark, table: pa.Table):
    return message_frame(spark, table)


def assert_extras_match(agg, expected: dict, settings) -> None:
    np.testing.assert_array_equal(agg.occupancy_scint, expected["occupancy_scint"])
    np.testing.assert_allclose(agg.drift_edges, edges_of(settings), rtol=0, atol=1e-9)
    np.testing.assert_array_equal(agg.drift_time, expected["drift_time"])  # bin by bin
    assert agg.orbits_with_scintillator == expected["orbits_with_scintillator"]
    assert agg.detector_orbits == expected["detector_orbits"]
    assert agg.orbit_jumps == expected["orbit_jumps"]
    assert agg.detector_time_s == pytest.approx(expected["detector_time_s"], rel=1e-12)
    # no value sits on the last edge, where np.histogram (included) and dtmon (dropped) differ
    assert not np.any(expected["drift_values"] == edges_of(settings)[-1])


@pytest.fixture(scope="module")
def genuine_run(spark, genuine_table):
    """Genuine rows aggregated with the channel that is really there (FPGA 1, channel 138)."""
    settings = load_settings(scint_fpga=1, scint_channel=138)
    return settings, aggregate_batch(as_frame(spark, with_source_columns(genuine_table, run=3)), settings)


@pytest.fixture(scope="module")
def synthetic_run(spark):
    """SYNTHETIC rows (dtmon.synth, seed 11, scintillator at the PDF's FPGA 1 channel 128)."""
    table = generate(SYNTH_ROWS, seed=11)
    settings = load_settings()
    return table, settings, aggregate_batch(as_frame(spark, with_source_columns(table, rows_per_message=10_000)), settings)


def test_genuine_rows_extras_match_pandas(genuine_run, genuine_table):
    settings, agg = genuine_run
    frame = genuine_table.to_pandas()
    expected = expected_extras(frame, (1, 138), edges_of(settings), settings.max_orbit_gap)
    assert expected["orbits_with_scintillator"] == 2  # 2 hits on channel 138 in 999 rows (SOURCES.md)
    assert expected["occupancy_scint"].sum() > 0 and expected["drift_time"].sum() > 0
    assert_extras_match(agg, expected, settings)
    assert agg.scintillator == (1, 138)
    # the version-1 outputs are unchanged
    v1 = expected_outputs(frame)
    np.testing.assert_array_equal(agg.occupancy, v1["occupancy"])
    np.testing.assert_array_equal(agg.multiplicity, v1["multiplicity"])
    assert agg.hits == v1["hits"] and agg.hits_outside_chambers == v1["hits_outside_chambers"]


def test_genuine_orbit_counter_reset_is_one_jump(genuine_run, genuine_table):
    """The stale ORBIT_CNT ~3.387e9 block and the restart near 617 000: one jump, < 1 s."""
    _, agg = genuine_run
    orbits = genuine_table.to_pandas().query("HEAD == 2").ORBIT_CNT
    assert orbits.max() - orbits.min() > 3e9  # the raw span would be ~84 hours
    assert agg.orbit_jumps == 1
    assert 0 < agg.detector_time_s < 1.0
    assert agg.run == 3 and agg.run_events == []


def test_default_channel_128_finds_no_scintillator_in_genuine_rows(spark, genuine_table):
    agg = aggregate_batch(as_frame(spark, with_source_columns(genuine_table)), load_settings(scint_channel=128))
    assert agg.orbits_with_scintillator == 0
    assert agg.occupancy_scint.sum() == 0 and agg.drift_time.sum() == 0
    assert agg.run is None


def test_synthetic_extras_match_pandas(synthetic_run):
    table, settings, agg = synthetic_run
    frame = table.to_pandas()
    expected = expected_extras(frame, (1, 128), edges_of(settings), settings.max_orbit_gap)
    assert expected["orbits_with_scintillator"] > 300
    assert_extras_match(agg, expected, settings)
    np.testing.assert_array_equal(agg.occupancy, expected_outputs(frame)["occupancy"])


def half_max_edges(counts: np.ndarray, edges: np.ndarray, level: float) -> tuple[float, float]:
    """Lower edge of the first and upper edge of the last bin with counts >= level."""
    above = np.flatnonzero(counts >= level)
    return edges[above[0]], edges[above[-1] + 1]


def test_synthetic_drift_time_box_has_sharp_edges_at_0_and_390_ns(synthetic_run):
    """Half a cell (21 mm) at 53.8 um/ns: the time box spans 0 to 390 ns (domain notes section 4)."""
    _, _, agg = synthetic_run
    edges = np.asarray(agg.drift_edges)
    centres = 0.5 * (edges[1:] + edges[:-1])
    total = agg.drift_time.sum(axis=0)
    plateau = np.median(total[(centres > 50) & (centres < 340)])
    assert plateau > 50
    rise, fall = half_max_edges(total, edges, plateau / 2)
    assert -5 <= rise <= 5 and 385 <= fall <= 395, (rise, fall)
    # sharp: 10 % to 90 % of the plateau within 10 ns on both sides, nothing outside the box
    rise10, fall10 = half_max_edges(total, edges, 0.1 * plateau)
    rise90, fall90 = half_max_edges(total, edges, 0.9 * plateau)
    assert rise90 - rise10 <= 10 and fall10 - fall90 <= 10, (rise10, rise90, fall90, fall10)
    outside = (edges[1:] <= -10) | (edges[:-1] >= 400)
    assert total[outside].max() < 0.05 * plateau
    for chamber in range(4):
        counts = agg.drift_time[chamber]
        level = np.median(counts[(centres > 50) & (centres < 340)]) / 2
        c_rise, c_fall = half_max_edges(counts, edges, level)
        assert -10 <= c_rise <= 10 and 380 <= c_fall <= 400, (chamber, c_rise, c_fall)


def test_synthetic_counter_jump_is_left_out_of_detector_time(spark):
    """Two synthetic blocks 10^7 orbits apart (15 min): one jump with the default max gap (2^20)."""
    first = generate(20_000, seed=3)
    start = int(first.column("ORBIT_CNT").to_numpy().max()) + 10_000_000
    second = generate(20_000, seed=4, params=SynthParams(start_orbit=start))
    table = pa.concat_tables([first, second])
    settings = load_settings()
    agg = aggregate_batch(as_frame(spark, with_source_columns(table, rows_per_message=1_000)), settings)
    expected = expected_extras(table.to_pandas(), (1, 128), edges_of(settings), settings.max_orbit_gap)
    assert expected["orbit_jumps"] == 1
    assert_extras_match(agg, expected, settings)
    # a max gap wider than the jump keeps it: the whole span counts
    wide = load_settings(max_orbit_gap=20_000_000)
    agg_wide = aggregate_batch(as_frame(spark, with_source_columns(table, rows_per_message=1_000)), wide)
    hits = table.to_pandas().query("HEAD == 2").ORBIT_CNT
    assert agg_wide.orbit_jumps == 0
    assert agg_wide.detector_orbits == hits.max() - hits.min() + 1


def test_control_rows_carry_runs_and_are_not_rows_or_malformed(spark, genuine_table):
    data = with_source_columns(genuine_table.slice(0, 50), produced_ms=2_000, run=7)
    markers = pa.Table.from_pylist(
        [
            {"produced_ms": 1_000, "synthetic": False, "run": 7, "run_event": RunEvent.START},
            {"produced_ms": 3_000, "synthetic": False, "run": 7, "run_event": RunEvent.END},
            {"produced_ms": 3_001, "synthetic": False, "run": 8, "run_event": RunEvent.START},
            {"produced_ms": 3_002, "synthetic": False, "run": None, "run_event": 0},  # malformed
        ],
        schema=OUTPUT_SCHEMA,
    )
    agg = aggregate_batch(as_frame(spark, pa.concat_tables([data, markers])), load_settings())
    assert agg.rows_read == 51 and agg.malformed_rows == 1
    assert agg.hits == int((genuine_table.slice(0, 50).column("HEAD").to_numpy() == 2).sum())
    assert sorted(agg.run_events) == [(7, RunEvent.START, 1_000), (7, RunEvent.END, 3_000), (8, RunEvent.START, 3_001)]
    assert agg.run == 8  # the newest message's run
    assert (agg.produced_first_ms, agg.produced_last_ms) == (1_000, 3_002)


def test_detector_span_against_sorted_orbits():
    rng = np.random.default_rng(5)
    for max_gap in (1, 7, 100):
        orbits = np.unique(np.concatenate([rng.integers(0, 400, 30), rng.integers(10_000, 10_050, 10), [5_000]]))
        gaps = np.diff(orbits)
        expected = (int(gaps[gaps <= max_gap].sum()) + int((gaps > max_gap).sum()) + 1, int((gaps > max_gap).sum()))
        buckets = pd.DataFrame({"o": orbits, "b": orbits // max_gap}).groupby("b").o.agg(["min", "max"]).to_numpy()
        assert detector_span(buckets[::-1], max_gap) == expected
    assert detector_span(np.zeros((0, 2), np.int64), 10) == (0, 0)


def test_drift_time_edges():
    assert drift_time_edges(-200, 600, 5)[:3] == [-200, -195, -190]
    assert len(drift_time_edges(-200, 600, 5)) == 161
    assert drift_time_edges(0, 10, 3) == [0, 3, 6, 9, 12]
    with pytest.raises(ValueError):
        drift_time_edges(10, 0, 5)


def test_build_message_version_2_fields(genuine_run):
    settings, agg = genuine_run
    run = RunStatus(run=3, state="ended", started=1_700_000_000.5)
    message = build_message(4, agg, trigger_interval_s=2.0, batch_started=1.0, published=2.0, run=run)
    parsed = ResultsMessage.from_json(message.to_json())
    assert parsed.version == RESULTS_VERSION == 3
    assert (parsed.scintillator.fpga, parsed.scintillator.channel) == (1, 138)
    assert [c.drift_time.bin_counts for c in parsed.chambers] == agg.drift_time.tolist()
    assert [c.occupancy_scint.bin_counts for c in parsed.chambers] == agg.occupancy_scint.tolist()
    assert parsed.chambers[0].drift_time.bin_edges[0] == settings.drift_time_min_ns
    assert (parsed.run, parsed.run_state, parsed.run_started) == (3, "ended", 1_700_000_000.5)
    assert parsed.detector_time_s == pytest.approx(agg.detector_orbits * 89.1e-6)
    assert parsed.orbit_jumps == 1 and parsed.orbits_with_scintillator == 2


def test_earliest_scintillator_hit_of_the_orbit_is_t0(spark):
    """Orbit 100 has scintillator hits at BX 20 and BX 10 (listed first, then earliest):
    DRIFTIME of the chamber 0 hit at BX 12 = 25 ns x (12 - 10) + 93.9 ns = 143.9 ns.
    Orbit 101 has a chamber hit but no scintillator hit: untagged."""
    rows = pd.DataFrame(
        {
            "HEAD": [2, 2, 2, 2, 2],
            "FPGA": [1, 1, 0, 0, 1],
            "TDC_CHANNEL": [128, 128, 3, 3, 70],
            "ORBIT_CNT": [100, 100, 100, 101, 100],
            "BX_COUNTER": [20, 10, 12, 12, 30],
            "TDC_MEAS": [1.0, 1.0, 1.0, 1.0, 7.0],
        }
    )
    table = pa.Table.from_pandas(rows, schema=HIT_SCHEMA, preserve_index=False)
    settings = load_settings()
    agg = aggregate_batch(as_frame(spark, with_source_columns(table)), settings)
    edges = edges_of(settings)
    expected = np.zeros((4, len(edges) - 1), int)
    expected[0, int((143.9 + 200) // 5)] = 1
    expected[3, int((25 * (30 - 10) + 25 * 6 / 30 + 92.4 + 200) // 5)] = 1  # FPGA 1 channel 70: chamber 3
    np.testing.assert_array_equal(agg.drift_time, expected)
    np.testing.assert_array_equal(agg.drift_time, expected_extras(rows, (1, 128), edges, settings.max_orbit_gap)["drift_time"])
    assert agg.occupancy_scint[0, 3] == 1 and agg.occupancy_scint[3, 6] == 1 and agg.occupancy_scint.sum() == 2
    assert agg.occupancy[0, 3] == 2 and agg.orbits_with_scintillator == 1 and agg.orbits_with_hits == 2


def test_the_one_stage_plan_of_small_batches_gives_the_two_stage_result(spark, synthetic_run):
    """``single_stage`` (no shuffle) reduces the same SYNTHETIC rows to the same aggregates, every field."""
    import dataclasses

    table, settings, two_stage = synthetic_run
    frame = as_frame(spark, with_source_columns(table, rows_per_message=10_000))
    one_stage = aggregate_batch(frame.repartition(3), settings, single_stage=True)  # 3 source partitions -> 1 task
    assert one_stage.hits > 0 and one_stage.orbits_with_scintillator > 0
    for f in dataclasses.fields(two_stage):
        a, b = getattr(one_stage, f.name), getattr(two_stage, f.name)
        if f.name == "orbit_buckets":  # row order follows the partitions
            a, b = a[np.lexsort(a.T[::-1])], b[np.lexsort(b.T[::-1])]
        if isinstance(b, np.ndarray):
            np.testing.assert_array_equal(a, b, err_msg=f.name)
        else:
            assert a == b, f.name
