"""Data-quality checks: histograms of the check window -> a quality with a reason (pure).

Every check returns a ``dtmon.schema.CheckResult``: ``good`` / ``warning`` / ``bad``, or
``null`` when there is not enough data to judge, with a one-line reason and the numbers
behind it (``values``, units in the key names). The qualities follow ALICE QualityControl
(Good / Medium / Bad / Null); a chamber's quality is the worst non-null of its checks and the
detector's the worst of the chambers and the detector-wide checks (``chamber_quality``,
``quality_report``). Thresholds come from ``dtmon.checks_config`` (``dtmon/checks.toml``).

scipy (the time-box fit, the chi-square p-value) is imported on first use or by ``load_scipy``: it
takes 0.6-1 CPU s, which the processor spends while its Spark session starts, not before.

Input arrays: ``occupancy`` int (64,) hits per local channel of one chamber over the window;
``drift_time`` int (D,) scintillator-tagged hits per DRIFTIME bin, ``edges`` (D + 1,) in ns.
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np

from dtmon.checks_config import (
    DeadChannelsConfig,
    NoisyChannelsConfig,
    RateConfig,
    ScintillatorConfig,
    ShapeConfig,
    TimeBoxConfig,
)
from dtmon.schema import (
    QUALITY_ORDER,
    ChamberQuality,
    CheckResult,
    QualityReport,
    QualityWindow,
    StreamEvent,
    TimeBoxFit,
)

HALF_CELL_UM = 21_000.0
"""Largest drift distance: half a 42 mm cell, in um (course PDF section 4.2)."""


def _list(channels) -> str:
    shown = ", ".join(str(c) for c in list(channels)[:8])
    return shown + (f" (+{len(channels) - 8} more)" if len(channels) > 8 else "")


def _level(count: int, warning_at: int, bad_at: int) -> str:
    if count >= bad_at:
        return "bad"
    return "warning" if count >= warning_at else "good"


# --- rate ----------------------------------------------------------------------------------


def rate_check(hits: int, detector_time_s: float, cfg: RateConfig, reference_hz: float | None = None) -> CheckResult:
    """Chamber hit rate in Hz of detector time (orbit counter), judged against a band or a reference.

    Args:
        hits: chamber hits in the window.
        detector_time_s: detector time the window spans, s.
        cfg: band (``warning_min_hz``..``warning_max_hz``, bad outside ``bad_min_hz``..``bad_max_hz``)
            and the relative tolerances used instead when ``reference_hz`` is given.
        reference_hz: the reference run's rate of this chamber (Hz), or None.
    Returns:
        null when ``detector_time_s < cfg.min_detector_time_s``.
    """
    if detector_time_s < cfg.min_detector_time_s or detector_time_s <= 0:
        return CheckResult(check="rate", quality="null",
                           reason=f"{detector_time_s:.3f} s of detector time, need {cfg.min_detector_time_s:g} s",
                           values={"hits": hits, "detector_time_s": detector_time_s})
    rate = hits / detector_time_s
    values: dict = {"rate_hz": round(rate, 3), "hits": hits, "detector_time_s": round(detector_time_s, 4)}
    if reference_hz and reference_hz > 0:
        deviation = rate / reference_hz - 1.0
        values.update(reference_hz=round(reference_hz, 3), deviation=round(deviation, 4))
        quality = ("bad" if abs(deviation) > cfg.reference_bad_tolerance
                   else "warning" if abs(deviation) > cfg.reference_warning_tolerance else "good")
        return CheckResult(check="rate", quality=quality, values=values,
                           reason=f"rate {rate:.0f} Hz, {deviation:+.0%} vs reference {reference_hz:.0f} Hz "
                           f"(tolerance ±{cfg.reference_warning_tolerance:.0%})")
    if rate < cfg.bad_min_hz or rate > cfg.bad_max_hz:
        quality = "bad"
    elif rate < cfg.warning_min_hz or rate > cfg.warning_max_hz:
        quality = "warning"
    else:
        quality = "good"
    band = f"{cfg.warning_min_hz:g}-{cfg.warning_max_hz:g} Hz"
    return CheckResult(check="rate", quality=quality, values=values,
                       reason=f"rate {rate:.0f} Hz ({hits} hits in {detector_time_s:.2f} s), band {band}")


# --- dead and noisy channels ----------------------------------------------------------------


def dead_channels_check(occupancy: np.ndarray, cfg: DeadChannelsConfig) -> tuple[CheckResult, list[int]]:
    """Channels with no hit where the chamber mean makes zero improbable (Poisson).

    The expected count of a channel is the chamber mean m = sum / 64; zero hits has Poisson
    probability exp(-m). A channel with zero hits is dead only when exp(-m) < ``cfg.p_value``
    (m > -ln p: 6.9 hits for p = 1e-3); for smaller means the check is null, since silence
    proves nothing.

    Args:
        occupancy: int (64,) hits per local channel over the window.
    Returns:
        (result, dead local channels sorted).
    """
    counts = np.asarray(occupancy, np.int64)
    mean = float(counts.mean()) if counts.size else 0.0
    needed = -math.log(cfg.p_value)
    p_zero = math.exp(-mean)
    zero = [int(c) for c in np.flatnonzero(counts == 0)]
    values: dict = {"mean_hits": round(mean, 3), "p_zero": p_zero, "zero_channels": len(zero)}
    if mean <= needed:
        return CheckResult(check="dead_channels", quality="null", values=values,
                           reason=f"mean {mean:.1f} hits/channel: zero hits is not improbable "
                           f"(P = {p_zero:.2g}), need a mean > {needed:.1f}"), []
    values["dead"] = zero
    quality = _level(len(zero), cfg.warning_at, cfg.bad_at)
    if not zero:
        return CheckResult(check="dead_channels", quality=quality, values=values,
                           reason=f"no dead channel (mean {mean:.0f} hits/channel)"), []
    return CheckResult(check="dead_channels", quality=quality, values=values,
                       reason=f"{len(zero)} dead channel{'s' if len(zero) > 1 else ''}: {_list(zero)} "
                       f"(0 hits, expected {mean:.0f}, P = {p_zero:.1e})"), zero


def noisy_channels_check(
    occupancy: np.ndarray, previously_noisy: set[int] | frozenset[int], cfg: NoisyChannelsConfig
) -> tuple[CheckResult, list[int]]:
    """Channels far above the chamber median, with hysteresis so flags do not flicker.

    A channel turns noisy above ``factor_on`` x the median of the chamber's 64 channels and
    stays noisy (``previously_noisy``) until it falls below ``factor_off`` x the median.
    Null (state kept) when the median is below ``min_median_hits``.

    Args:
        occupancy: int (64,) hits per local channel over the window.
        previously_noisy: local channels flagged by the previous call (the caller keeps them).
    Returns:
        (result, noisy local channels sorted): pass the channels back as ``previously_noisy`` next time.
    """
    counts = np.asarray(occupancy, np.float64)
    median = float(np.median(counts))
    values: dict = {"median_hits": median, "factor_on": cfg.factor_on, "factor_off": cfg.factor_off}
    if median < cfg.min_median_hits:
        kept = sorted(previously_noisy)
        return CheckResult(check="noisy_channels", quality="null", values={**values, "noisy": kept},
                           reason=f"median {median:.1f} hits/channel, need {cfg.min_median_hits:g}"), kept
    on = counts > cfg.factor_on * median
    stay = np.zeros_like(on)
    stay[list(previously_noisy)] = True
    stay &= counts >= cfg.factor_off * median
    noisy = [int(c) for c in np.flatnonzero(on | stay)]
    values["noisy"] = noisy
    quality = _level(len(noisy), cfg.warning_at, cfg.bad_at)
    if not noisy:
        return CheckResult(check="noisy_channels", quality=quality, values=values,
                           reason=f"no noisy channel (median {median:.0f} hits/channel)"), []
    worst = max(noisy, key=lambda c: counts[c])
    return CheckResult(check="noisy_channels", quality=quality, values=values,
                       reason=f"{len(noisy)} noisy channel{'s' if len(noisy) > 1 else ''}: {_list(noisy)} "
                       f"(up to {counts[worst] / median:.0f}x the median {median:.0f} hits)"), noisy


# --- time box -------------------------------------------------------------------------------


def load_scipy() -> None:
    """Import the scipy modules the checks use (``scipy.optimize``, ``scipy.special``): call it in a
    thread while something slower runs, so the first check does not wait for them."""
    from scipy import optimize, special  # noqa: F401


def _box(t, background, height, t0, sigma_rise, t_max, sigma_fall):
    """Time-box model: background + height x rising error function at t0 x falling one at t_max."""
    from scipy import special

    rise = 0.5 * special.erfc(-(t - t0) / (math.sqrt(2) * sigma_rise))
    fall = 0.5 * special.erfc((t - t_max) / (math.sqrt(2) * sigma_fall))
    return background + height * rise * fall


def _crossing(x: np.ndarray, y: np.ndarray, i: int, level: float) -> float:
    """x where y crosses ``level`` between bins i - 1 and i (linear)."""
    if i <= 0 or y[i] == y[i - 1]:
        return float(x[i])
    return float(x[i - 1] + (level - y[i - 1]) * (x[i] - x[i - 1]) / (y[i] - y[i - 1]))


def fit_time_box(drift_time: np.ndarray, edges, chamber: int, min_hits: int = 50) -> TimeBoxFit:
    """Fit t0 (rising edge) and t_max (falling edge) of one chamber's drift-time histogram.

    First the half-maximum points of the 5-bin-smoothed histogram (maximum taken as the
    90th percentile of the non-empty bins, robust to a peak): the first bin rising above
    half and the last one above half, interpolated linearly. Then a least-squares fit
    (``scipy.optimize.curve_fit``; Poisson errors from the smoothed counts, sqrt(max(s, 1)), so
    that an empty bin inside the box of a sparse histogram does not pull the edge) of a box with error-function
    edges, ``b + h * erfc(-(t - t0)/(sqrt2 s_r))/2 * erfc((t - t_max)/(sqrt2 s_f))/2``, started
    at the half-maximum points, over the box and 80 ns either side, edge widths at least half a
    bin (an edge sharper than a bin is not resolved); its covariance gives the uncertainties. If the fit fails (or its
    uncertainties exceed 10 bins) the half-maximum points are returned with the bin
    width / sqrt(12) as uncertainty.
    v_drift = 21 mm / (t_max - t0) (course PDF section 4.2), in um/ns, error propagated.

    Args:
        drift_time: int (D,) tagged hits per bin; ``edges``: (D + 1,) bin edges in ns.
        chamber: chamber number for the result.
        min_hits: below this many hits no fit is tried (fields stay None).
    Returns:
        ``TimeBoxFit`` (ns, um/ns); t0/t_max None when no box was found.
    """
    from scipy import optimize

    counts = np.asarray(drift_time, np.float64)
    edges = np.asarray(edges, np.float64)
    n = int(counts.sum())
    out = TimeBoxFit(chamber=chamber, tagged_hits=n)
    if n < min_hits or len(counts) < 8:
        return out
    x = 0.5 * (edges[:-1] + edges[1:])
    width = float(edges[1] - edges[0])
    smooth = np.convolve(counts, np.ones(5) / 5, mode="same")
    plateau = float(np.percentile(smooth[smooth > 0], 90))
    half = 0.5 * plateau
    above = np.flatnonzero(smooth >= half)
    if len(above) < 2:
        return out
    i_rise, i_fall = int(above[0]), int(above[-1])
    t0 = _crossing(x, smooth, i_rise, half)
    t_max = _crossing(x[::-1], smooth[::-1], len(x) - 1 - i_fall, half)
    if t_max - t0 < 2 * width:
        return out
    err0 = errm = width / math.sqrt(12)
    background = float(np.median(counts[: max(1, i_rise - 3)])) if i_rise > 3 else 0.0
    # fit the box and 80 ns either side; edge widths hypot(s, bin / 2) keep an edge at least
    # half a bin wide without bounds, so the fast Levenberg-Marquardt method applies
    near = (x > t0 - 80.0) & (x < t_max + 80.0)
    half_bin = width / 2

    def model(t, b, h, a, s_r, m, s_f):
        return _box(t, b, h, a, math.hypot(s_r, half_bin), m, math.hypot(s_f, half_bin))

    sigma = np.sqrt(np.maximum(smooth[near], 1.0))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p, _ = optimize.curve_fit(model, x[near], counts[near], p0=[background, plateau, t0, half_bin, t_max, width],
                                      sigma=sigma, absolute_sigma=True, method="lm", maxfev=2000)
            # uncertainties of the edges with the edge widths fixed at their fit (a width at the
            # half-bin floor makes the 6-parameter covariance singular)
            p4, cov = optimize.curve_fit(lambda t, b, h, a, m: model(t, b, h, a, p[3], m, p[5]), x[near], counts[near],
                                         p0=[p[0], p[1], p[2], p[4]], sigma=sigma, absolute_sigma=True, method="lm")
        errors = np.sqrt(np.diag(cov))
        sane = np.all(np.isfinite(errors[[2, 3]])) and np.all(errors[[2, 3]] < 10 * width)
        if sane and p4[3] - p4[2] > 2 * width and edges[0] < p4[2] < p4[3] < edges[-1]:
            t0, t_max, err0, errm = float(p4[2]), float(p4[3]), float(errors[2]), float(errors[3])
    except (RuntimeError, ValueError, optimize.OptimizeWarning):
        pass
    span = t_max - t0
    v = HALF_CELL_UM / span
    v_err = v * math.hypot(err0, errm) / span
    return TimeBoxFit(chamber=chamber, tagged_hits=n, t0_ns=round(t0, 3), t0_err_ns=round(err0, 3),
                      t_max_ns=round(t_max, 3), t_max_err_ns=round(errm, 3),
                      v_drift_um_per_ns=round(v, 4), v_drift_err_um_per_ns=round(v_err, 4))


def time_box_check(fit: TimeBoxFit, cfg: TimeBoxConfig) -> CheckResult:
    """t0 and drift velocity of a ``fit_time_box`` result vs the expected values.

    Null below ``cfg.min_tagged_hits`` tagged hits; warning when no box was found in enough
    hits; otherwise bad / warning when |t0 - expected| or |v / expected - 1| exceeds the
    bad / warning tolerance and the deviation is also more than ``cfg.significance`` times
    the fit's uncertainty (a poorly measured edge is not an alarm).
    """
    values: dict = {"tagged_hits": fit.tagged_hits}
    if fit.tagged_hits < cfg.min_tagged_hits:
        return CheckResult(check="time_box", quality="null", values=values,
                           reason=f"{fit.tagged_hits} scintillator-tagged hits, need {cfg.min_tagged_hits}")
    if fit.t0_ns is None or fit.v_drift_um_per_ns is None:
        return CheckResult(check="time_box", quality="warning", values=values,
                           reason=f"no time box edges found in {fit.tagged_hits} tagged hits")
    dt0 = fit.t0_ns - cfg.expected_t0_ns
    dv = fit.v_drift_um_per_ns / cfg.expected_v_drift_um_per_ns - 1.0
    values.update(t0_ns=fit.t0_ns, t_max_ns=fit.t_max_ns, v_drift_um_per_ns=fit.v_drift_um_per_ns,
                  t0_shift_ns=round(dt0, 3), v_drift_deviation=round(dv, 4))
    k = cfg.significance
    t0_off = abs(dt0) > k * (fit.t0_err_ns or 0.0)
    v_off = abs(fit.v_drift_um_per_ns - cfg.expected_v_drift_um_per_ns) > k * (fit.v_drift_err_um_per_ns or 0.0)
    if (t0_off and abs(dt0) > cfg.t0_bad_ns) or (v_off and abs(dv) > cfg.v_drift_bad_fraction):
        quality = "bad"
    elif (t0_off and abs(dt0) > cfg.t0_warning_ns) or (v_off and abs(dv) > cfg.v_drift_warning_fraction):
        quality = "warning"
    else:
        quality = "good"
    return CheckResult(
        check="time_box", quality=quality, values=values,
        reason=f"t0 {fit.t0_ns:.1f} ± {fit.t0_err_ns:.1f} ns (expected {cfg.expected_t0_ns:g} ± {cfg.t0_warning_ns:g}), "
        f"v_drift {fit.v_drift_um_per_ns:.1f} ± {fit.v_drift_err_um_per_ns:.1f} um/ns "
        f"(expected {cfg.expected_v_drift_um_per_ns:g} ± {cfg.v_drift_warning_fraction:.0%})",
    )


# --- shapes vs reference -----------------------------------------------------------------------


def chi2_two_histograms(observed: np.ndarray, reference: np.ndarray) -> tuple[float, int, float]:
    """Chi-square test that two unweighted histograms share one shape (normalisations free).

    chi2 = sum_i (N2 n_i - N1 m_i)^2 / (N1 N2 (n_i + m_i)) over bins with n_i + m_i > 0,
    ndf = those bins - 1 (Gagunashvili, "Comparison of weighted and unweighted histograms",
    arXiv:physics/0605123; ROOT ``TH1::Chi2Test`` option "UU").

    Args:
        observed, reference: int (K,) counts in the same bins; both must have entries.
    Returns:
        (chi2, ndf, p-value); (0, 0, 1) when fewer than two bins are filled.
    Raises:
        ValueError: different shapes, or an empty histogram.
    """
    n = np.asarray(observed, np.float64)
    m = np.asarray(reference, np.float64)
    if n.shape != m.shape:
        raise ValueError(f"histograms of {n.shape} and {m.shape} bins")
    n1, n2 = n.sum(), m.sum()
    if n1 <= 0 or n2 <= 0:
        raise ValueError("empty histogram")
    filled = (n + m) > 0
    ndf = int(filled.sum()) - 1
    if ndf < 1:
        return 0.0, 0, 1.0
    chi2 = float(((n2 * n[filled] - n1 * m[filled]) ** 2 / (n[filled] + m[filled])).sum() / (n1 * n2))
    from scipy import special

    return chi2, ndf, float(special.chdtrc(ndf, chi2))  # the chi-square survival function


def shape_check(check: str, observed: np.ndarray, reference: np.ndarray | None, cfg: ShapeConfig,
                reference_name: str | None = None) -> CheckResult:
    """``check`` (``occupancy_shape`` or ``drift_time_shape``): chi2/ndf of the window's histogram
    vs the reference's (``chi2_two_histograms``); null without reference or below ``cfg.min_hits``
    entries in either."""
    obs = np.asarray(observed, np.int64)
    if reference is None:
        return CheckResult(check=check, quality="null", reason="no reference run loaded")
    ref = np.asarray(reference, np.int64)
    if ref.shape != obs.shape:
        return CheckResult(check=check, quality="null", reason=f"reference has {ref.size} bins, window {obs.size}")
    if obs.sum() < cfg.min_hits or ref.sum() < cfg.min_hits:
        return CheckResult(check=check, quality="null", values={"entries": int(obs.sum()), "reference_entries": int(ref.sum())},
                           reason=f"{int(obs.sum())} entries (reference {int(ref.sum())}), need {cfg.min_hits}")
    chi2, ndf, p = chi2_two_histograms(obs, ref)
    per = chi2 / ndf if ndf else 0.0
    quality = "bad" if per > cfg.bad_chi2_ndf else "warning" if per > cfg.warning_chi2_ndf else "good"
    name = f" {reference_name}" if reference_name else ""
    return CheckResult(check=check, quality=quality,
                       values={"chi2": round(chi2, 3), "ndf": ndf, "chi2_ndf": round(per, 3), "p_value": p,
                               "entries": int(obs.sum())},
                       reason=f"{check.replace('_', ' ')} vs reference{name}: chi2/ndf {chi2:.0f}/{ndf} = {per:.2f} "
                       f"(warning above {cfg.warning_chi2_ndf:g})")


# --- scintillator ---------------------------------------------------------------------------


def scintillator_check(orbits_with_scintillator: int, orbits_with_hits: int, scintillator: tuple[int, int],
                       cfg: ScintillatorConfig) -> CheckResult:
    """Detector-wide: warning when no orbit of the window had a hit on the t0 channel.

    Args:
        orbits_with_scintillator: orbits of the window with a hit on ``scintillator`` (FPGA, TDC_CHANNEL).
        orbits_with_hits: orbits of the window with a chamber hit; null below ``cfg.min_orbits_with_hits``.
    """
    fpga, channel = scintillator
    values = {"orbits_with_scintillator": orbits_with_scintillator, "orbits_with_hits": orbits_with_hits,
              "fpga": fpga, "channel": channel}
    if orbits_with_scintillator == 0 and orbits_with_hits < cfg.min_orbits_with_hits:
        return CheckResult(check="scintillator", quality="null", values=values,
                           reason=f"{orbits_with_hits} orbits with chamber hits, need {cfg.min_orbits_with_hits}")
    if orbits_with_scintillator == 0:
        return CheckResult(check="scintillator", quality="warning", values=values,
                           reason=f"no t0 hit on FPGA {fpga} channel {channel} in {orbits_with_hits} orbits "
                           "with chamber hits: E1/E2 and the time box are empty")
    return CheckResult(check="scintillator", quality="good", values=values,
                       reason=f"t0 hits on FPGA {fpga} channel {channel} in {orbits_with_scintillator} orbits")


# --- events -----------------------------------------------------------------------------------


def orbit_jump_events(batch_id: int, jumps: int, orbit_min: int | None, orbit_max: int | None,
                      now: float | None = None) -> list[StreamEvent]:
    """One ``orbit_jump`` event for a batch whose ORBIT_CNT jumped (reset or gap): a timeline
    entry, not a quality."""
    if jumps <= 0:
        return []
    return [StreamEvent(kind="orbit_jump", time=time.time() if now is None else now,
                        detail=f"ORBIT_CNT jumped {jumps} time{'s' if jumps > 1 else ''} in batch {batch_id} "
                        f"(orbits {orbit_min}..{orbit_max}); the jump is left out of detector time")]


# --- aggregation ------------------------------------------------------------------------------


def worst(results: list) -> tuple[str, int | None]:
    """(worst quality, index of the first object that has it) over objects with a ``quality``;
    null is the mildest, so all-null gives ("null", first index) and no objects ("null", None)."""
    if not results:
        return "null", None
    index = max(range(len(results)), key=lambda i: (QUALITY_ORDER[results[i].quality], -i))
    return results[index].quality, index


def chamber_quality(chamber: int, checks: list[CheckResult], dead: list[int] | None = None,
                    noisy: list[int] | None = None) -> ChamberQuality:
    """A chamber's quality: the worst non-null of ``checks``, its reason prefixed with the check name;
    a good chamber's reason lists the checks that were not judged (null)."""
    quality, i = worst(checks)
    if i is None:
        reason = "no checks"
    elif quality == "good":
        nulls = [c.check for c in checks if c.quality == "null"]
        reason = "all checks good" if not nulls else (
            f"good: {', '.join(c.check for c in checks if c.quality == 'good')}; not judged: {', '.join(nulls)}")
    elif quality == "null":
        reason = f"not enough data: {checks[i].check}: {checks[i].reason}"
    else:
        more = sum(1 for c in checks if c.quality == quality) - 1
        reason = f"{checks[i].check}: {checks[i].reason}" + (f" (+{more} more {quality})" if more else "")
    return ChamberQuality(chamber=chamber, quality=quality, reason=reason, checks=checks,
                          dead_channels=dead or [], noisy_channels=noisy or [])


def quality_report(chambers: list[ChamberQuality], detector: list[CheckResult], window: QualityWindow,
                   time_box: list[TimeBoxFit] | None = None, reference: str | None = None) -> QualityReport:
    """The detector's quality: the worst of the chambers and the detector-wide checks, the
    reason carried up from the object that set it (``chamber 2: ...`` or ``scintillator: ...``)."""
    objects = list(chambers) + list(detector)
    quality, i = worst(objects)
    if i is None:
        reason = "no data"
    elif quality == "good":
        reason = "all chambers good"
    else:
        obj = objects[i]
        head = f"chamber {obj.chamber}: {obj.reason}" if isinstance(obj, ChamberQuality) else f"{obj.check}: {obj.reason}"
        more = sum(1 for o in objects if o.quality == quality) - 1
        reason = head + (f" (+{more} more {quality})" if more and quality != "null" else "")
    return QualityReport(quality=quality, reason=reason, window=window, chambers=chambers, detector=detector,
                         time_box=time_box or [], reference=reference)
