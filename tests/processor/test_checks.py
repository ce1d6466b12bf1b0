"""The data-quality checks (processor.checks) as pure functions: good, warning, bad and null cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special

from dtmon.checks_config import load_checks_config
from dtmon.schema import ChamberQuality, CheckResult, QualityWindow
from processor import checks

CFG = load_checks_config()
RNG = np.random.default_rng(7)
EDGES = np.arange(-200.0, 600.0 + 1e-9, 5.0)


def box_histogram(n: int, t0: float = 0.0, t_max: float = 390.0, resolution: float = 2.0, noise: int = 0,
                  rng=RNG) -> np.ndarray:
    """Counts (160,) of ``n`` drift times uniform in t0..t_max, smeared, plus ``noise`` flat hits."""
    times = np.concatenate([rng.uniform(t0, t_max, n) + rng.normal(0, resolution, n), rng.uniform(-200, 600, noise)])
    return np.histogram(times, EDGES)[0]


# --- rate -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("hits", "seconds", "quality"), [
    (10_000, 10.0, "good"),      # 1 kHz, inside 50-20000 Hz
    (200, 10.0, "warning"),      # 20 Hz
    (5, 10.0, "bad"),            # 0.5 Hz: nearly silent chamber
    (0, 10.0, "bad"),
    (300_000, 10.0, "warning"),  # 30 kHz
    (10_000, 0.01, "null"),      # too little detector time
])
def test_rate_band(hits, seconds, quality):
    result = checks.rate_check(hits, seconds, CFG.rate)
    assert result.quality == quality
    if quality != "null":
        assert result.values["rate_hz"] == pytest.approx(hits / seconds)


@pytest.mark.parametrize(("hits", "quality"), [(1000, "good"), (1250, "good"), (600, "warning"), (1500, "warning"),
                                               (300, "bad"), (2000, "bad")])
def test_rate_against_reference(hits, quality):
    result = checks.rate_check(hits, 1.0, CFG.rate, reference_hz=1000.0)
    assert result.quality == quality
    assert result.values["deviation"] == pytest.approx(hits / 1000 - 1)
    assert "reference 1000 Hz" in result.reason


# --- dead channels ----------------------------------------------------------------------------

def test_sparse_chamber_gives_null_not_dead():
    counts = RNG.poisson(0.5, 64)
    assert (counts == 0).sum() > 20  # many silent channels ...
    result, dead = checks.dead_channels_check(counts, CFG.dead_channels)
    assert (result.quality, dead) == ("null", [])  # ... but silence proves nothing at a mean of 0.5


def test_one_silent_channel_at_mean_50_is_dead():
    counts = RNG.poisson(50, 64)
    counts[17] = 0
    result, dead = checks.dead_channels_check(counts, CFG.dead_channels)
    assert dead == [17] and result.quality == "warning" and "17" in result.reason
    assert result.values["p_zero"] < 1e-3


def test_four_dead_channels_are_bad_and_none_is_good():
    counts = RNG.poisson(50, 64)
    counts[[3, 4, 5, 6]] = 0
    result, dead = checks.dead_channels_check(counts, CFG.dead_channels)
    assert (result.quality, dead) == ("bad", [3, 4, 5, 6])
    result, dead = checks.dead_channels_check(RNG.poisson(50, 64) + 1, CFG.dead_channels)
    assert (result.quality, dead) == ("good", [])


def test_dead_threshold_follows_poisson_probability():
    """Zero hits is improbable (p < 1e-3) only above a mean of -ln(1e-3) = 6.9 hits."""
    counts = np.full(64, 6)
    counts[0] = 0  # mean 5.9: P(0) = 2.7e-3
    assert checks.dead_channels_check(counts, CFG.dead_channels)[0].quality == "null"
    counts = np.full(64, 8)
    counts[0] = 0  # mean 7.9: P(0) = 3.8e-4
    assert checks.dead_channels_check(counts, CFG.dead_channels)[1] == [0]


# --- noisy channels ---------------------------------------------------------------------------

def test_noisy_channel_flag_with_hysteresis():
    counts = np.full(64, 100)
    counts[9] = 600  # 6x median: on
    result, noisy = checks.noisy_channels_check(counts, set(), CFG.noisy_channels)
    assert (result.quality, noisy) == ("warning", [9])
    counts[9] = 400  # 4x: below factor_on 5, above factor_off 3 -> stays noisy
    assert checks.noisy_channels_check(counts, set(noisy), CFG.noisy_channels)[1] == [9]
    assert checks.noisy_channels_check(counts, set(), CFG.noisy_channels)[1] == []  # a new one would not turn on
    counts[9] = 250  # 2.5x: off
    result, noisy = checks.noisy_channels_check(counts, {9}, CFG.noisy_channels)
    assert (result.quality, noisy) == ("good", [])


def test_noisy_flags_do_not_flicker_on_replayed_data():
    """The same window judged again and again (a replayed sample) gives the same flags every time."""
    base = RNG.poisson(100, 64)
    base[30] = 480  # 4.8x: between off and on
    base[40] = 900
    state: set[int] = set()
    seen = []
    for _ in range(10):
        counts = base + RNG.poisson(2, 64)  # small fluctuations around the thresholds
        _, noisy = checks.noisy_channels_check(counts, state, CFG.noisy_channels)
        state = set(noisy)
        seen.append(tuple(noisy))
    assert len(set(seen[1:])) == 1 and 40 in seen[-1]


def test_many_noisy_channels_are_bad_and_low_median_is_null():
    counts = np.full(64, 100)
    counts[:4] = 1000
    assert checks.noisy_channels_check(counts, set(), CFG.noisy_channels)[0].quality == "bad"
    sparse = np.zeros(64, int)
    sparse[5] = 50
    result, noisy = checks.noisy_channels_check(sparse, {5}, CFG.noisy_channels)
    assert result.quality == "null" and noisy == [5]  # state kept while it cannot be judged


# --- time box ---------------------------------------------------------------------------------

def test_time_box_fit_recovers_t0_and_drift_velocity():
    fit = checks.fit_time_box(box_histogram(20_000, noise=2_000), EDGES, chamber=2)
    assert fit.t0_ns == pytest.approx(0.0, abs=2.0) and fit.t_max_ns == pytest.approx(390.0, abs=2.0)
    assert 0 < fit.t0_err_ns < 2 and 0 < fit.t_max_err_ns < 3
    assert fit.v_drift_um_per_ns == pytest.approx(21_000 / 390, rel=0.01)
    assert abs(fit.t0_ns) < 4 * fit.t0_err_ns + 0.5  # the uncertainty covers the truth
    assert checks.time_box_check(fit, CFG.time_box).quality == "good"


@pytest.mark.parametrize(("t0", "t_max", "quality"), [
    (15.0, 405.0, "warning"),   # t0 shifted by 15 ns (> 10, and > 3 sigma)
    (40.0, 430.0, "bad"),       # 40 ns (> 25)
    (0.0, 420.0, "warning"),    # v_drift 50.0 um/ns: -7 %
    (0.0, 470.0, "bad"),        # v_drift 44.7 um/ns: -17 %
])
def test_time_box_shift_and_slow_drift(t0, t_max, quality):
    fit = checks.fit_time_box(box_histogram(20_000, t0=t0, t_max=t_max), EDGES, chamber=0)
    assert fit.t0_ns == pytest.approx(t0, abs=2.5)
    assert fit.v_drift_um_per_ns == pytest.approx(21_000 / (t_max - t0), rel=0.02)
    result = checks.time_box_check(fit, CFG.time_box)
    assert result.quality == quality, result.reason


def test_time_box_null_below_minimum_and_warning_without_box():
    fit = checks.fit_time_box(box_histogram(100), EDGES, chamber=1)
    assert checks.time_box_check(fit, CFG.time_box).quality == "null"
    flat = np.histogram(RNG.uniform(-200, 600, 5000), EDGES)[0]
    result = checks.time_box_check(checks.fit_time_box(flat, EDGES, chamber=1), CFG.time_box)
    assert result.quality in ("warning", "bad")  # a flat histogram is no 0-390 ns box


def test_time_box_half_maximum_model_agrees_with_erf_shape():
    """The fit model is a box with error-function edges: its half-height points are t0 and t_max."""
    t = np.array([10.0, 300.0])
    y = checks._box(t, 0.0, 100.0, 10.0, 3.0, 300.0, 5.0)
    far_edge = 0.5 * special.erfc(-290 / (np.sqrt(2) * 5))  # the other edge, 290 ns away: ~1
    assert y == pytest.approx([50.0 * far_edge, 50.0 * far_edge], rel=1e-9)
    assert far_edge == pytest.approx(1.0, abs=1e-12)


# --- shapes -----------------------------------------------------------------------------------

def test_chi2_two_histograms_matches_its_definition():
    a, b = np.array([10, 20, 30, 0]), np.array([12, 18, 33, 0])
    chi2, ndf, p = checks.chi2_two_histograms(a, b)
    n1, n2 = a.sum(), b.sum()
    expected = sum((n2 * x - n1 * y) ** 2 / (x + y) for x, y in zip(a[:3], b[:3])) / (n1 * n2)
    assert (chi2, ndf) == (pytest.approx(expected), 2) and 0 < p < 1
    with pytest.raises(ValueError):
        checks.chi2_two_histograms(a, np.zeros(4))


def test_shape_checks():
    shape = np.linspace(1, 3, 64)
    ref = RNG.poisson(shape * 200)
    same = RNG.poisson(shape * 50)
    assert checks.shape_check("occupancy_shape", same, ref, CFG.shape).quality == "good"
    dead_half = same.copy()
    dead_half[:32] = 0
    assert checks.shape_check("occupancy_shape", dead_half, ref, CFG.shape).quality == "bad"
    assert checks.shape_check("occupancy_shape", same, None, CFG.shape).quality == "null"
    assert checks.shape_check("occupancy_shape", same[:10] * 0 + 1, ref[:10], CFG.shape).quality == "null"  # few hits
    shifted = box_histogram(5000, t0=8.0, t_max=398.0)
    result = checks.shape_check("drift_time_shape", shifted, box_histogram(20_000), CFG.shape, "run 7")
    assert result.quality in ("warning", "bad") and "run 7" in result.reason


# --- scintillator, events, aggregation --------------------------------------------------------

def test_scintillator_check():
    assert checks.scintillator_check(40, 5000, (1, 138), CFG.scintillator).quality == "good"
    missing = checks.scintillator_check(0, 5000, (1, 138), CFG.scintillator)
    assert missing.quality == "warning" and "FPGA 1 channel 138" in missing.reason
    assert checks.scintillator_check(0, 3, (1, 128), CFG.scintillator).quality == "null"


def test_orbit_jump_is_an_event():
    events = checks.orbit_jump_events(17, 1, 616_953, 3_387_201_636, now=5.0)
    assert [e.kind for e in events] == ["orbit_jump"] and "batch 17" in events[0].detail
    assert checks.orbit_jump_events(18, 0, 1, 2) == []


def r(check: str, quality: str) -> CheckResult:
    return CheckResult(check=check, quality=quality, reason=f"{check} is {quality}")


def test_chamber_and_detector_aggregation():
    c0 = checks.chamber_quality(0, [r("rate", "good"), r("time_box", "null")])
    c1 = checks.chamber_quality(1, [r("rate", "good"), r("dead_channels", "warning")])
    c2 = checks.chamber_quality(2, [r("rate", "bad"), r("noisy_channels", "warning")])
    c3 = checks.chamber_quality(3, [r("rate", "null")])
    assert (c0.quality, c1.quality, c2.quality, c3.quality) == ("good", "warning", "bad", "null")
    assert c2.reason == "rate: rate is bad" and c3.reason.startswith("not enough data")
    assert c0.reason == "good: rate; not judged: time_box"
    window = QualityWindow(batches=3, hits=100, detector_time_s=1.0)
    report = checks.quality_report([c0, c1, c2, c3], [r("scintillator", "warning")], window)
    assert report.quality == "bad" and report.reason == "chamber 2: rate: rate is bad"
    good = checks.quality_report([c0, c0.model_copy(update={"chamber": 1}), c0.model_copy(update={"chamber": 2}),
                                  c0.model_copy(update={"chamber": 3})], [r("scintillator", "warning")], window)
    assert good.quality == "warning" and good.reason == "scintillator: scintillator is warning"
    nulls = [ChamberQuality(chamber=i, quality="null", reason="x") for i in range(4)]
    assert checks.quality_report(nulls, [], window).quality == "null"
