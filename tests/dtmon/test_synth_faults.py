"""Labelled faults in SYNTHETIC data (dtmon.synth_faults) run through the pure reduction and the
checks: the affected chamber gets the expected quality and reason, the healthy chambers stay
good, and clean synthetic data over 10 minutes of detector time raises no alarm."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from dtmon.checks_config import ChecksConfig, WindowConfig
from dtmon.settings import load_settings
from dtmon.synth import KIND_MUON, KIND_NOISE, KIND_SCINT, SynthParams, generate, generate_with_truth
from dtmon.synth_faults import SynthFaults, faults_from_options
from dtmon.synth_faults import KIND_MUON as F_MUON, KIND_NOISE as F_NOISE, KIND_SCINT as F_SCINT
from processor.reduce import Binning, reduce_rows
from processor.quality import QualityMonitor
from tests.processor.conftest import with_source_columns

CLEAN = SynthParams(hot_channels=())  # the default model's three hot channels are real noisy channels, not "clean"


def judge_stream(params: SynthParams, batches: int, rows_per_batch: int, window_batches: int = 30, seed: int = 3):
    """Feed consecutive SYNTHETIC stretches as micro-batches; returns the reports, one per batch."""
    monitor = QualityMonitor(load_settings(scint_channel=None), ChecksConfig(window=WindowConfig(batches=window_batches)))
    orbit, reports = params.start_orbit, []
    for b in range(batches):
        out = generate_with_truth(rows_per_batch, seed * 1000 + b, params, start_orbit=orbit)
        orbit = out.end_orbit
        agg = reduce_rows(with_source_columns(out.table, run=1), Binning.from_settings(monitor.binning_settings()))
        reports.append((agg, monitor.update(b, agg).quality))
    return reports


def test_kind_codes_agree():
    assert (F_MUON, F_SCINT, F_NOISE) == (KIND_MUON, KIND_SCINT, KIND_NOISE)


def test_clean_synthetic_data_over_ten_minutes_raises_no_alarm():
    reports = judge_stream(CLEAN, batches=32, rows_per_batch=100_000)
    detector_time = sum(agg.detector_time_s for agg, _ in reports)
    assert detector_time > 600  # 10 minutes of detector time
    for agg, report in reports:
        assert report.quality == "good", report.reason
        assert [c.quality for c in report.chambers] == ["good"] * 4
    fits = reports[-1][1].time_box
    assert all(abs(f.t0_ns) < 3 and f.v_drift_um_per_ns == pytest.approx(53.8, rel=0.01) for f in fits)


def chamber_checks(report, chamber):
    return {r.check: r for r in report.chambers[chamber].checks}


def assert_others_good(report, affected):
    for c in report.chambers:
        if c.chamber not in affected:
            assert c.quality == "good", (c.chamber, c.reason)


def test_dead_chamber_from_a_time_turns_bad_once_the_window_has_no_hits_of_it():
    params = CLEAN.model_copy(update={"faults": SynthFaults(dead_chamber=2, dead_chamber_from_s=30.0)})
    reports = judge_stream(params, batches=8, rows_per_batch=50_000, window_batches=2)
    first, last = reports[0][1], reports[-1][1]
    assert first.chambers[2].quality == "good"  # alive during the first ~10 s
    assert last.chambers[2].quality == "bad" and last.chambers[2].reason.startswith("rate: rate 0 Hz")
    assert last.reason.startswith("chamber 2: rate")
    assert_others_good(last, {2})


@pytest.mark.parametrize(("faults", "chamber", "check", "quality", "words"), [
    (SynthFaults(dead_channels=((1, 10), (1, 11))), 1, "dead_channels", "warning", "2 dead channels: 10, 11"),
    (SynthFaults(dead_channels=tuple((0, c) for c in range(8))), 0, "dead_channels", "bad", "8 dead channels"),
    (SynthFaults(noisy_channels=((3, 5, 300.0),)), 3, "noisy_channels", "warning", "1 noisy channel: 5"),
    (SynthFaults(t0_shift_ns=(0.0, 30.0, 0.0, 0.0)), 1, "time_box", "bad", "t0 3"),
    (SynthFaults(t0_shift_ns=(0.0, 0.0, 15.0, 0.0)), 2, "time_box", "warning", "t0 1"),
    (SynthFaults(drift_velocity_um_per_ns=(None, None, None, 45.0)), 3, "time_box", "bad", "v_drift 45"),
])
def test_fault_gives_the_expected_chamber_quality(faults, chamber, check, quality, words):
    params = CLEAN.model_copy(update={"faults": faults})
    _, report = judge_stream(params, batches=1, rows_per_batch=200_000)[0]
    result = chamber_checks(report, chamber)[check]
    assert result.quality == quality and words in result.reason, result.reason
    assert report.chambers[chamber].quality == quality
    assert report.reason.startswith(f"chamber {chamber}: {check}")
    assert_others_good(report, {chamber})


def test_missing_scintillator_is_a_detector_warning():
    params = CLEAN.model_copy(update={"faults": SynthFaults(missing_scintillator=True)})
    _, report = judge_stream(params, batches=1, rows_per_batch=100_000)[0]
    assert report.quality == "warning" and report.reason.startswith("scintillator: no t0 hit on FPGA 1 channel 128")
    assert all(c.quality == "good" for c in report.chambers)  # time box null, everything else good


def test_fault_free_output_is_unchanged():
    assert generate(5_000, seed=4, params=CLEAN).equals(
        generate(5_000, seed=4, params=CLEAN.model_copy(update={"faults": SynthFaults()})))


def test_synth_cli_writes_labelled_faults(tmp_path):
    from dtmon.cli import app

    result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path), "--rows", "2000", "--dead-channel", "1:10",
                                      "--noisy-channel", "3:5:250", "--t0-shift", "2:20", "--drift-velocity", "0:48",
                                      "--no-scintillator", "--dead-chamber", "3", "--dead-from", "60"])
    assert result.exit_code == 0, result.output
    assert "with FAULTS" in result.output and "chamber 1 channel 10 dead" in result.output
    faults = json.loads((tmp_path / "dtmon-synthetic.json").read_text())["params"]["faults"]
    assert faults["dead_channels"] == [[1, 10]] and faults["noisy_channels"] == [[3, 5, 250.0]]
    assert faults["t0_shift_ns"] == [0.0, 0.0, 20.0, 0.0] and faults["drift_velocity_um_per_ns"][0] == 48.0
    assert faults["missing_scintillator"] and (faults["dead_chamber"], faults["dead_chamber_from_s"]) == (3, 60.0)
    bad = CliRunner().invoke(app, ["synth", "--out", str(tmp_path), "--rows", "10", "--dead-channel", "1"])
    assert bad.exit_code != 0 and "dead-channel" in bad.output


def test_fault_options_parse_and_reject():
    f = faults_from_options(None, 0.0, ["0:1"], ["2:3"], ["1:-5.5"], ["3:50"], False)
    assert f.dead_channels == ((0, 1),) and f.noisy_channels == ((2, 3, 200.0),)
    assert f.t0_shift_ns == (0.0, -5.5, 0.0, 0.0) and f.drift_velocity_um_per_ns == (None, None, None, 50.0)
    for bad in (["7:1"], ["0:99"]):
        with pytest.raises(ValueError):
            faults_from_options(None, 0.0, bad, None, None, None, False)
    with pytest.raises(ValueError):
        faults_from_options(None, 0.0, None, None, ["9:3"], None, False)
