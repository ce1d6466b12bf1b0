"""Driver-side data quality (processor.quality, processor.scint) on genuine and SYNTHETIC rows
reduced by the pure reduction (``reduce_rows``), without Spark."""

from __future__ import annotations

import numpy as np
import pytest

from dtmon.checks_config import load_checks_config
from dtmon.settings import load_settings
from dtmon.synth import SynthParams, generate
from dtmon.wire import RunEvent
from processor.message import build_message
from processor.reduce import Binning, reduce_rows
from processor.quality import QualityMonitor
from processor.scint import FIRST_CANDIDATE, choose_scintillator
from tests.processor.conftest import with_source_columns


def feed(monitor: QualityMonitor, rows, batch_id: int, run_start: bool = False):
    agg = reduce_rows(rows, Binning.from_settings(monitor.binning_settings()))
    if run_start:
        agg.run_events = [(agg.run, RunEvent.START, 0)]
    return agg, monitor.update(batch_id, agg, now=1.0)


def test_genuine_rows_find_channel_138_and_fill_e1_e2(genuine_table):
    """Default settings (no scint_channel): the first batch finds FPGA 1 channel 138, the next is tagged with it."""
    rows = with_source_columns(genuine_table, run=0)
    monitor = QualityMonitor(load_settings(scint_channel=None))
    agg, dq = feed(monitor, rows, 0)
    assert agg.orbits_with_scintillator == 0  # reduced with the PDF default 128: nothing there
    assert (dq.scintillator.channel, dq.scintillator.source) == (138, "detected")
    assert "channel 138" in dq.scintillator.reason and "25 of 25 chamber hits in the orbits where it fired (2)" in dq.scintillator.reason
    agg, dq = feed(monitor, rows, 1, run_start=True)
    assert agg.scintillator == (1, 138) and agg.orbits_with_scintillator == 2
    assert agg.occupancy_scint.sum() > 0 and agg.drift_time.sum() > 0  # E1 and E2 not empty
    message = build_message(1, agg, trigger_interval_s=2.0, batch_started=0.0, published=0.0, health=dq.channel_health,
                            quality=dq.quality, scintillator=dq.scintillator, events=dq.events)
    assert message.scintillator.source == "detected" and message.quality.window.batches == 1
    assert [e.kind for e in message.events] == ["orbit_jump"]  # the genuine counter reset: an event ...
    assert message.quality.quality != "bad"  # ... not an alarm


def test_replayed_genuine_loop_is_not_a_wall_of_dead_channels(genuine_table):
    """The looping producer replays the sample as one long run; each pass holds the ORBIT_CNT reset,
    so the window restarts and the sparse sample gives null, not a wall of dead channels."""
    rows = with_source_columns(genuine_table, run=0)
    monitor = QualityMonitor(load_settings(scint_channel=138))
    for b in range(20):
        _, dq = feed(monitor, rows, b)
    dead = [c for c in dq.quality.chambers for r in c.checks if r.check == "dead_channels"]
    assert all(r.quality == "null" for c in dead for r in c.checks if r.check == "dead_channels")
    assert dq.channel_health.dead == [] and dq.quality.window.batches == 1


def test_configured_channel_wins(genuine_table):
    monitor = QualityMonitor(load_settings(scint_channel=128))
    _, dq = feed(monitor, with_source_columns(genuine_table, run=0), 0)
    assert (dq.scintillator.channel, dq.scintillator.source) == (128, "configured")
    assert monitor.binning_settings().scint_channel == 128


def test_synthetic_scintillator_on_another_channel_is_found():
    rows = with_source_columns(generate(40_000, seed=2, params=SynthParams(scint_channel=141)), run=1)
    monitor = QualityMonitor(load_settings(scint_channel=None))
    _, dq = feed(monitor, rows, 0)
    assert (dq.scintillator.channel, dq.scintillator.source) == (141, "detected")


def test_no_candidate_keeps_the_default_and_says_why():
    cfg = load_checks_config().scintillator
    stats = np.zeros((384, 3), np.int64)
    assert choose_scintillator(stats, cfg)[0] is None
    stats[137 - FIRST_CANDIDATE] = [50, 500, 8]  # fires often, but its orbits' hits are spread over the orbit
    channel, reason = choose_scintillator(stats, cfg)
    assert channel is None and "channel 137: 8 of 500" in reason
    stats[140 - FIRST_CANDIDATE] = [20, 300, 290]
    assert choose_scintillator(stats, cfg)[0] == 140


def test_clean_synthetic_data_is_good():
    params = SynthParams(hot_channels=())
    monitor = QualityMonitor(load_settings(scint_channel=None))
    for b in range(3):
        rows = with_source_columns(generate(200_000, seed=20 + b, params=params), run=1)
        _, dq = feed(monitor, rows, b)
    assert dq.quality.quality == "good", dq.quality.reason
    assert all(f.v_drift_um_per_ns == pytest.approx(53.8, rel=0.02) for f in dq.quality.time_box)


def test_occupancy_orbits_counts_each_orbit_and_channel_once(genuine_table):
    """``occupancy_orbits`` = distinct (orbit, channel) pairs (pandas); a sample replayed 5 times in
    one batch gives the same, so the window does not take replays for statistics."""
    import pyarrow as pa

    binning = Binning.from_settings(load_settings(scint_channel=138))
    once = reduce_rows(with_source_columns(genuine_table, run=0), binning)
    frame = genuine_table.to_pandas()
    hits = frame[(frame.HEAD == 2) & (frame.FPGA <= 1) & (frame.TDC_CHANNEL <= 127)]
    pairs = hits.assign(chamber=2 * hits.FPGA + (hits.TDC_CHANNEL >= 64), channel=hits.TDC_CHANNEL % 64)
    pairs = pairs.drop_duplicates(["ORBIT_CNT", "chamber", "channel"])
    expected = np.zeros((4, 64), int)
    np.add.at(expected, (pairs.chamber.to_numpy(), pairs.channel.to_numpy()), 1)
    np.testing.assert_array_equal(once.occupancy_orbits, expected)
    five = reduce_rows(with_source_columns(pa.concat_tables([genuine_table] * 5), run=0), binning)
    assert five.occupancy.sum() == 5 * once.occupancy.sum()
    np.testing.assert_array_equal(five.occupancy_orbits, once.occupancy_orbits)
    monitor = QualityMonitor(load_settings(scint_channel=138))
    report = monitor.update(0, five).quality
    assert all(r.quality == "null" for c in report.chambers for r in c.checks if r.check == "dead_channels")


def test_without_orbit_jump_reset_the_replays_add_up(genuine_table):
    """The same loop with ``reset_on_orbit_jump`` off: the window grows and the replays look like statistics."""
    from dtmon.checks_config import ChecksConfig, WindowConfig

    rows = with_source_columns(genuine_table, run=0)
    config = ChecksConfig(window=WindowConfig(batches=30, reset_on_orbit_jump=False))
    monitor = QualityMonitor(load_settings(scint_channel=138), config)
    for b in range(20):
        _, dq = feed(monitor, rows, b)
    assert dq.quality.window.batches == 20
    assert any(r.quality == "bad" for c in dq.quality.chambers for r in c.checks if r.check == "dead_channels")


def test_processor_stops_at_start_on_a_bad_checks_or_reference_file(tmp_path, caplog):
    """One line naming file and key, exit code 2, before Spark starts."""
    from typer.testing import CliRunner

    from processor.cli import app

    checks = tmp_path / "checks.toml"
    checks.write_text("[time_box]\nmin_tagged_hits = -5\n")
    result = CliRunner().invoke(app, ["--checks-file", str(checks)])
    assert result.exit_code == 2
    assert "checks.toml: time_box.min_tagged_hits: must be >= 1, got -5" in caplog.text
    reference = tmp_path / "ref.json"
    reference.write_text('{"schema": "dtmon.reference", "version": 1}')
    caplog.clear()
    assert CliRunner().invoke(app, ["--reference-file", str(reference)]).exit_code == 2
    assert "ref.json: name: Field required" in caplog.text
