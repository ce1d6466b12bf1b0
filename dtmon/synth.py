"""Synthetic DAQ generator: seeded, vectorised model of the MiniDT telescope (labelled synthetic).

Writes DAQ-format rows (``HEAD,FPGA,TDC_CHANNEL,ORBIT_CNT,BX_COUNTER,TDC_MEAS``) that look
like the genuine ``data_000000.txt`` rows: cosmic muons crossing the four chambers, a
scintillator hit per muon that crosses both paddles, uncorrelated noise and hot channels,
and the ancillary HEAD 0/1/3/4/5 trigger words, interleaved in 4-word blocks as the DAQ
does. Geometry, timing and the channel map follow the domain notes
(``../shared/docs/minidt-domain.md``, from the MAPD-B course PDF sections 4.1-4.2, 5.2.4).
Which defaults are calibrated on the genuine rows and which are assumed is listed in
``docs/synthetic.md``; every output is labelled synthetic (manifest ``dtmon-synthetic.json``,
S3 object metadata ``dtmon-synthetic: 1``).

Time convention (exact): a muon passes at ``t0``; the scintillator hit is at
``t_scint = t0 + scint_delay_ns (95) + jitter``; a hit in chamber ``k`` with true drift time
``d`` is at ``t_hit = t0 + (scint_delay_ns - offset[k]) + d + resolution`` so that the
processor's ``DRIFTIME = t_hit - t_scint + offset[k]`` recovers ``d`` (up to the jitter,
the resolution and the 25/30 ns TDC step).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import pyarrow as pa
import typer
from pydantic import BaseModel, ConfigDict, Field, field_validator

from dtmon.hits import (
    BX_NS,
    BX_PER_ORBIT,
    CELLS_PER_CHAMBER,
    CELLS_PER_LAYER,
    COLUMNS,
    HEAD_HIT,
    HIT_SCHEMA,
    N_CHAMBERS,
    REMAINDER_OF_LAYER,
    SCINT_CHAMBER_OFFSET_NS,
    SCINT_CHANNEL,
    SCINT_FPGA,
    TDC_PER_BX,
    chamber_of,
    encode_csv,
    layer_of,
)
from dtmon.daqfiles import SYNTHETIC_MANIFEST, SYNTHETIC_METADATA, daq_file_name
from dtmon.synth_faults import SynthFaults, apply_faults

GENERATOR_NAME = "dtmon.synth"
GENERATOR_VERSION = "1.0.0"
MANIFEST_NAME = SYNTHETIC_MANIFEST
DEFAULT_ROWS_PER_FILE = 1_310_720  # 10 240 DMA transfers x 128 words (SOURCES.md)

# ---- geometry (domain notes section 2; mm) -------------------------------------------
CELL_WIDTH_MM = 42.0
CELL_HEIGHT_MM = 13.0
STAGGER_MM = 21.0
CHAMBER_WIDTH_MM = CELLS_PER_LAYER * CELL_WIDTH_MM  # 672 mm across the cells
CHAMBER_LENGTH_MM = 672.0  # ASSUMED: wire length (square footprint); not in the notes
CHAMBER_Z_MM = (219.8, 977.3, 1035.6, 1819.8)  # reference frame = bottom of layer 1
MEASURES_Y = (False, True, False, False)  # chamber 1 is rotated by 90 degrees
LAYER_SHIFT_MM = (STAGGER_MM, 0.0, STAGGER_MM, 0.0)  # layers 1..4: 1 and 3 staggered +21 mm
# scintillator paddles (ASSUMED): same footprint as a chamber, between Ch1/Ch0 and Ch3/Ch2
SCINT_Z_MM = (0.5 * (CHAMBER_Z_MM[0] + 52.0 + CHAMBER_Z_MM[1]), 0.5 * (CHAMBER_Z_MM[2] + 52.0 + CHAMBER_Z_MM[3]))
SCINT_HALF_MM = 336.0
Z_REF_MM = 0.5 * (CHAMBER_Z_MM[0] + CHAMBER_Z_MM[3] + 52.0)

TDC_NS = BX_NS / TDC_PER_BX  # 0.8333 ns per TDC count
ORBIT_NS = BX_NS * BX_PER_ORBIT  # 89 100 ns
MAX_ORBIT = 2**32 - 1

# ---- ancillary-word payloads, empirical from the 999 genuine rows (calibrated) -------
HEAD_CYCLE = (3, 1, 0, 4, 5)  # one trigger-primitive group: 5 words sharing ORBIT_CNT
HEAD0_LABELS = (0, 1, 2, 3, 4, 7, 10, 11, 13, 18, 31)
HEAD0_WEIGHTS = (9, 40, 8, 12, 14, 3, 5, 3, 3, 1, 3)
HEAD1_VALUES = (2, 4, 8, 10, 32, 34, 36, 38, 40, 41, 72, 74, 96, 98, 129, 130, 132, 134, 136, 138, 144, 146, 160, 161,
                162, 168)
HEAD1_WEIGHTS = (1, 3, 7, 2, 3, 13, 7, 2, 5, 2, 5, 3, 1, 4, 2, 9, 1, 1, 13, 2, 1, 3, 1, 1, 8, 1)
HEAD3_ZERO_NIBBLE_FRACTION = 35 / 99  # words with one of the 4 nibbles empty
HEAD4_SIGMA = 0.55  # slope-like half float: genuine mean 0.02, std 0.55, range -1.26..1.61
HEAD4_LIMIT = 1.6
HEAD5_RANGE = (-70.0, 90.0)  # position-like half float: genuine -67.3..86.6, quartiles -25/10/56


class SynthParams(BaseModel):
    """Parameters of the synthetic telescope (rates in Hz of detector time, times in ns).

    Defaults marked *calibrated* were tuned so that ``calibration_report`` of the output
    matches the genuine rows (docs/synthetic.md); the others are assumptions.
    """

    model_config = ConfigDict(frozen=True)

    muon_rate_hz: float = Field(200.0, gt=0, description="muons crossing at least one chamber per second (calibrated)")
    hit_efficiency: float = Field(0.95, gt=0, le=1, description="probability that a crossed cell gives a hit (assumed)")
    max_zenith_deg: float = Field(75.0, gt=0, lt=90, description="largest zenith angle generated (assumed)")
    drift_velocity_um_per_ns: float = Field(53.8, gt=0, description="electron drift velocity (domain notes)")
    drift_resolution_ns: float = Field(2.0, ge=0, description="Gaussian smearing of hit times (assumed)")
    scint_channel: int = Field(SCINT_CHANNEL, ge=128, le=511, description="TDC_CHANNEL of the scintillator on FPGA 1")
    scint_fpga: int = Field(SCINT_FPGA, ge=0, le=7, description="FPGA of the scintillator (PDF: 1)")
    scint_delay_ns: float = Field(95.0, description="scintillator signal delay w.r.t. muon passage (domain notes)")
    scint_jitter_ns: float = Field(1.0, ge=0, description="Gaussian jitter of the scintillator time (assumed)")
    scint_efficiency: float = Field(0.98, ge=0, le=1, description="scintillator coincidence efficiency (assumed)")
    chamber_offsets_ns: tuple[float, float, float, float] = Field(
        SCINT_CHAMBER_OFFSET_NS, description="per-chamber offsets the processor adds (domain notes)"
    )
    noise_rate_hz: tuple[float, float, float, float] = Field(
        (2.2, 6.8, 4.3, 5.1), description="uncorrelated noise per channel, chambers 0-3 (calibrated)"
    )
    hot_channels: tuple[tuple[int, int, float], ...] = Field(
        ((1, 126, 180.0), (0, 113, 140.0), (0, 66, 85.0)),
        description="(FPGA, TDC_CHANNEL, extra noise Hz): the genuine rows' hottest channels (calibrated)",
    )
    start_orbit: int = Field(616_953, ge=0, le=MAX_ORBIT, description="first ORBIT_CNT (genuine counter after reset)")
    faults: SynthFaults = Field(default_factory=SynthFaults, description="injected detector faults (dtmon.synth_faults)")

    @field_validator("hot_channels")
    @classmethod
    def _chamber_channels(cls, value: tuple[tuple[int, int, float], ...]) -> tuple[tuple[int, int, float], ...]:
        for fpga, channel, rate in value:
            if fpga not in (0, 1) or not 0 <= channel <= 127 or rate < 0:
                raise ValueError(f"hot channel {(fpga, channel, rate)}: FPGA 0/1, channel 0-127, rate >= 0 Hz")
        return value


@dataclass(frozen=True)
class SynthOutput:
    """Generated rows plus the generator's truth for each row (for tests and studies).

    ``table``: N rows with ``HIT_SCHEMA`` in DAQ order. ``kind``: int8 (N,), 0 ancillary
    word, 1 muon chamber hit, 2 scintillator hit, 3 noise hit. ``drift_ns``: float64 (N,),
    true drift time of muon hits (NaN otherwise). ``muon``: int64 (N,), index of the muon
    a muon or scintillator hit belongs to (-1 otherwise). ``chamber``, ``layer``: int8 (N,),
    chamber 0-3 and layer 1-4 the generator placed a muon hit in (-1 otherwise).
    ``end_orbit``: the ORBIT_CNT the next file should start at.
    """

    table: pa.Table
    kind: np.ndarray
    drift_ns: np.ndarray
    muon: np.ndarray
    chamber: np.ndarray
    layer: np.ndarray
    end_orbit: int


KIND_ANCILLARY, KIND_MUON, KIND_SCINT, KIND_NOISE = 0, 1, 2, 3


# ---- physics ---------------------------------------------------------------------------
def _sample_muons(rng: np.random.Generator, n: int, p: SynthParams) -> dict[str, np.ndarray]:
    """Sample ``n`` muons crossing at least one chamber.

    Flux model: positions uniform on any horizontal plane, intensity ~cos^2(theta) per solid
    angle, so the rate through a horizontal plane goes as cos^3(theta) sin(theta):
    ``cos(theta) = U**(1/4)`` (truncated at ``max_zenith_deg``), azimuth uniform. Exact
    sampling of the union of the four footprints: pick a chamber uniformly, a point
    uniformly on its footprint at mid-height, a direction; keep the track with probability
    1 / (number of chambers it crosses).

    Returns arrays of shape (n,): x, y [mm at z = Z_REF_MM], tx, ty [dx/dz, dy/dz].
    """
    cos_min4 = np.cos(np.radians(p.max_zenith_deg)) ** 4
    z_mid = np.asarray(CHAMBER_Z_MM) + 2 * CELL_HEIGHT_MM
    parts: list[np.ndarray] = [np.zeros((4, 0))]
    have = 0
    while have < n:
        m = int(2.5 * (n - have)) + 256
        k = rng.integers(0, N_CHAMBERS, m)
        cos_t = (cos_min4 + rng.random(m) * (1 - cos_min4)) ** 0.25
        tan_t = np.sqrt(1 - cos_t**2) / cos_t
        phi = rng.uniform(0, 2 * np.pi, m)
        tx, ty = tan_t * np.cos(phi), tan_t * np.sin(phi)
        dz = Z_REF_MM - z_mid[k]
        x = rng.uniform(-0.5, 0.5, m) * CHAMBER_WIDTH_MM + tx * dz
        y = rng.uniform(-0.5, 0.5, m) * CHAMBER_LENGTH_MM + ty * dz
        crossed = np.zeros(m, np.int8)
        for z in z_mid:
            crossed += (np.abs(x + tx * (z - Z_REF_MM)) < 0.5 * CHAMBER_WIDTH_MM) & (
                np.abs(y + ty * (z - Z_REF_MM)) < 0.5 * CHAMBER_LENGTH_MM
            )
        keep = rng.random(m) * np.maximum(crossed, 1) < 1
        parts.append(np.stack([x, y, tx, ty])[:, keep])
        have += int(keep.sum())
    x, y, tx, ty = np.concatenate(parts, axis=1)[:, :n]
    return {"x": x, "y": y, "tx": tx, "ty": ty}


def _muon_hits(mu: dict[str, np.ndarray], rng: np.random.Generator, p: SynthParams):
    """Cells crossed by each muon and their drift times.

    For every chamber k and layer l the track's measured coordinate u (x, or y for the
    rotated chamber 1; u = 0 at the chamber edge) spans [u(z_bottom), u(z_top)] inside the
    13 mm layer; every cell whose 42 mm width overlaps that span is crossed (at most 3 for
    zenith <= 75 deg). Drift distance = closest approach of the track segment inside the
    cell to the wire; a cell crossed only through a corner (closest approach beyond half a
    cell, 21 mm) gives no hit, so drift time = distance / v_drift lies in the 0-390 ns box.

    Returns arrays of shape (H,): muon index, chamber, layer, local channel (0-63), drift [ns].
    """
    v_mm_per_ns = p.drift_velocity_um_per_ns * 1e-3
    out_mu, out_c, out_d = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0)]
    out_ch, out_l = [np.zeros(0, np.int8)], [np.zeros(0, np.int8)]
    idx = np.arange(len(mu["x"]))
    for k, zc in enumerate(CHAMBER_Z_MM):
        u0, t = (mu["y"], mu["ty"]) if MEASURES_Y[k] else (mu["x"], mu["tx"])
        v0, tv = (mu["x"], mu["tx"]) if MEASURES_Y[k] else (mu["y"], mu["ty"])
        for layer in range(1, 5):
            z_bot = zc + CELL_HEIGHT_MM * (layer - 1)
            z_w = z_bot + 0.5 * CELL_HEIGHT_MM
            v_mid = v0 + tv * (z_w - Z_REF_MM)
            u_w_track = u0 + t * (z_w - Z_REF_MM) + 0.5 * CHAMBER_WIDTH_MM  # u at wire height
            half_span = 0.5 * CELL_HEIGHT_MM * np.abs(t)
            shift = LAYER_SHIFT_MM[layer - 1]
            lo = np.floor((u_w_track - half_span - shift) / CELL_WIDTH_MM).astype(np.int64)
            hi = np.floor((u_w_track + half_span - shift) / CELL_WIDTH_MM).astype(np.int64)
            for j in range(4):
                cell = lo + j
                ok = (cell <= hi) & (cell >= 0) & (cell < CELLS_PER_LAYER) & (np.abs(v_mid) < 0.5 * CHAMBER_LENGTH_MM)
                if not ok.any():
                    continue
                i = idx[ok]
                tt, cl = t[ok], cell[ok]
                delta = u_w_track[ok] - (CELL_WIDTH_MM * cl + 0.5 * CELL_WIDTH_MM + shift)  # track - wire at z_w
                # z range (relative to z_w) where the track is inside this cell, within the layer
                with np.errstate(divide="ignore", invalid="ignore"):
                    s1 = (-0.5 * CELL_WIDTH_MM - delta) / tt
                    s2 = (0.5 * CELL_WIDTH_MM - delta) / tt
                s_lo = np.where(tt == 0, -6.5, np.maximum(-6.5, np.minimum(s1, s2)))
                s_hi = np.where(tt == 0, 6.5, np.minimum(6.5, np.maximum(s1, s2)))
                s_star = np.clip(-tt * delta / (1 + tt * tt), s_lo, s_hi)
                dist = np.hypot(delta + tt * s_star, s_star)
                near = dist <= 0.5 * CELL_WIDTH_MM  # corner clips beyond half a cell: no hit
                out_mu.append(i[near])
                out_ch.append(np.full(int(near.sum()), k, np.int8))
                out_l.append(np.full(int(near.sum()), layer, np.int8))
                out_c.append(4 * cl[near] + REMAINDER_OF_LAYER[layer - 1])
                out_d.append(dist[near] / v_mm_per_ns)
    mu_i = np.concatenate(out_mu)
    keep = rng.random(len(mu_i)) < p.hit_efficiency
    return (
        mu_i[keep],
        np.concatenate(out_ch)[keep],
        np.concatenate(out_l)[keep],
        np.concatenate(out_c)[keep].astype(np.int16),
        np.concatenate(out_d)[keep],
    )


def _crosses_scintillators(mu: dict[str, np.ndarray]) -> np.ndarray:
    """True where the track crosses both (assumed) paddles; shape (M,)."""
    ok = np.ones(len(mu["x"]), bool)
    for z in SCINT_Z_MM:
        ok &= (np.abs(mu["x"] + mu["tx"] * (z - Z_REF_MM)) < SCINT_HALF_MM) & (
            np.abs(mu["y"] + mu["ty"] * (z - Z_REF_MM)) < SCINT_HALF_MM
        )
    return ok


def _noise_rates(p: SynthParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-channel noise: FPGA (256,), TDC_CHANNEL (256,), rate Hz (256,) incl. hot channels."""
    fpga = np.repeat(np.array([0, 1], np.int8), 2 * CELLS_PER_CHAMBER)
    chan = np.tile(np.arange(2 * CELLS_PER_CHAMBER, dtype=np.int16), 2)
    rate = np.repeat(np.asarray(p.noise_rate_hz, float), CELLS_PER_CHAMBER)
    for f, c, r in p.hot_channels:
        rate[f * 2 * CELLS_PER_CHAMBER + c] += r
    return fpga, chan, rate


def _hit_stream(rng: np.random.Generator, p: SynthParams, duration_ns: float, t_start_ns: float, first_muon: int):
    """All HEAD 2 words in [t_start, t_start + duration) (before quantisation).

    Returns a dict of arrays (H,): t [ns], fpga, chan, kind, drift [ns] (true, NaN if not a
    muon hit), muon (index from ``first_muon``, -1 for noise), chamber, layer (-1 unless a
    muon chamber hit); and ``n_muons``.
    """
    n_mu = rng.poisson(p.muon_rate_hz * duration_ns * 1e-9)
    mu = _sample_muons(rng, n_mu, p)
    t0 = t_start_ns + rng.random(n_mu) * duration_ns
    mi, ch, lay, c, drift = _muon_hits(mu, rng, p)
    delay = p.scint_delay_ns - np.asarray(p.chamber_offsets_ns)
    t_mu = t0[mi] + delay[ch] + drift + rng.normal(0, p.drift_resolution_ns, len(mi))
    scint = _crosses_scintillators(mu) & (rng.random(n_mu) < p.scint_efficiency)
    t_sc = t0[scint] + p.scint_delay_ns + rng.normal(0, p.scint_jitter_ns, int(scint.sum()))
    nf, nc, nr = _noise_rates(p)
    counts = rng.poisson(nr * duration_ns * 1e-9)
    n_noise = int(counts.sum())
    t_no = t_start_ns + rng.random(n_noise) * duration_ns
    times = np.concatenate([t_mu, t_sc, t_no])
    n_sc = len(t_sc)
    fpga = np.concatenate([(ch // 2).astype(np.int8), np.full(n_sc, p.scint_fpga, np.int8), np.repeat(nf, counts)])
    mu_chan = (c + CELLS_PER_CHAMBER * (ch % 2)).astype(np.int16)
    chan = np.concatenate([mu_chan, np.full(n_sc, p.scint_channel, np.int16), np.repeat(nc, counts)])
    kind = np.repeat(np.array([KIND_MUON, KIND_SCINT, KIND_NOISE], np.int8), [len(t_mu), n_sc, n_noise])
    none = np.full(n_sc + n_noise, -1, np.int8)
    return {
        "t": times,
        "fpga": fpga,
        "chan": chan,
        "kind": kind,
        "drift": np.concatenate([drift, np.full(len(t_sc) + n_noise, np.nan)]),
        "muon": np.concatenate([mi + first_muon, np.flatnonzero(scint) + first_muon, np.full(n_noise, -1)]),
        "chamber": np.concatenate([ch, none]),
        "layer": np.concatenate([lay, none]),
        "n_muons": n_mu,
    }


def ticks_to_counters(ticks: np.ndarray, start_orbit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DAQ counters of times given in TDC counts (25/30 ns) since the start of ``start_orbit``.

    ``n`` counts -> BX total b = (n-1) // 30, TDC_MEAS = n - 30 b (1..30, the genuine
    range), BX_COUNTER = b mod 3564, ORBIT_CNT = start_orbit + b // 3564 (carry into the
    next orbit), so 25 * (ORBIT_CNT * 3564 + BX_COUNTER + TDC_MEAS / 30)
    = 25 * start_orbit * 3564 + n * 25/30 ns exactly (PDF 4.2.4 formula).

    Args:
        ticks: int64 (N,), >= 1.
    Returns:
        ORBIT_CNT int64 (N,), BX_COUNTER int64 (N,) in 0..3563, TDC_MEAS int64 (N,) in 1..30.
    Raises:
        ValueError: a tick count < 1.
    """
    ticks = np.asarray(ticks, np.int64)
    if len(ticks) and ticks.min() < 1:
        raise ValueError("tick counts must be >= 1")
    bx_total = (ticks - 1) // TDC_PER_BX
    return start_orbit + bx_total // BX_PER_ORBIT, bx_total % BX_PER_ORBIT, ticks - TDC_PER_BX * bx_total


def _slot_pattern(n_rows: int) -> np.ndarray:
    """DAQ word order, shape (n_rows,): blocks of 4 words cycling ancillary FPGA 1, hits,
    hits, ancillary FPGA 0 (as in the genuine rows: A1 H0 H1 A0 ...). Codes: 0 = A0,
    1 = A1, 2 = hit."""
    cycle = np.array([1, 2, 2, 0], np.int8)
    return cycle[(np.arange(n_rows) // 4) % 4]


def _order_hits(ticks: np.ndarray, fpga: np.ndarray, n_hits: int) -> np.ndarray:
    """Row order of hits as the DAQ interleaves them; returns indices, shape (n_hits,).

    Each FPGA's words are time ordered and cut into blocks of 4; the blocks of both FPGAs
    are merged by the time of their first word, so hits of one muon stay within a few
    blocks of each other while ORBIT_CNT is not monotonic row by row.
    """
    order = np.lexsort((np.arange(len(ticks)), ticks, fpga))  # by FPGA, then time
    f_sorted = fpga[order]
    start = np.searchsorted(f_sorted, f_sorted, side="left")
    block = (np.arange(len(order)) - start) // 4
    first_tick = ticks[order][start + block * 4]
    merged = order[np.lexsort((np.arange(len(order)), f_sorted, first_tick))]
    return merged[:n_hits]


def generate_with_truth(
    n_rows: int, seed: int, params: SynthParams | None = None, start_orbit: int | None = None
) -> SynthOutput:
    """Generate ``n_rows`` DAQ rows with the generator's truth (see ``SynthOutput``).

    Half of the rows (2 of every 4 blocks of 4 words) are HEAD 2 hits, the rest the
    ancillary HEAD 3/1/0/4/5 groups of FPGA 0 and 1. Hit time t [ns] after the start of
    orbit ``start_orbit`` is quantised to n = ceil(t / (25/30 ns)) TDC counts, written as
    BX_COUNTER = ((n-1) // 30) mod 3564, TDC_MEAS = n - 30 * ((n-1) // 30) in 1..30 (the
    genuine range), ORBIT_CNT = start_orbit + ((n-1) // 30) // 3564; so
    25 * (ORBIT_CNT * 3564 + BX_COUNTER + TDC_MEAS / 30) = start + n * 25/30 exactly.

    Args:
        n_rows: rows to generate (>= 0).
        seed: seed of numpy's PCG64 generator; same seed and params -> same rows.
        params: model parameters (defaults: ``SynthParams()``).
        start_orbit: overrides ``params.start_orbit`` (used to continue a previous file).
    Raises:
        ValueError: n_rows < 0, or ORBIT_CNT would exceed the 32-bit counter.
    """
    p = params or SynthParams()
    if n_rows < 0:
        raise ValueError(f"n_rows must be >= 0, got {n_rows}")
    orbit0 = p.start_orbit if start_orbit is None else int(start_orbit)
    rng = np.random.default_rng(seed)
    slots = _slot_pattern(n_rows)
    n_hits = int((slots == 2).sum())

    # hit stream long enough for n_hits (+ margin); extend if a fluctuation left it short
    _, _, noise = _noise_rates(p)
    est_rate = noise.sum() + p.muon_rate_hz * 8.0  # hits/s, rough (8 hits per muon)
    parts: list[dict] = []
    t_edge, total, n_mu = 500.0, 0, 0  # start 500 ns into the first orbit: every tick count >= 1
    while total < n_hits + 64:
        duration = max((n_hits + 64 - total) / est_rate * 1.15, 1e-3) * 1e9
        origin = (orbit0 - p.start_orbit) * ORBIT_NS
        parts.append(apply_faults(_hit_stream(rng, p, duration, t_edge, n_mu), p.faults, rng, t_edge, duration, origin,
                                  p.drift_velocity_um_per_ns))
        t_edge += duration
        total += len(parts[-1]["t"])
        n_mu += parts[-1]["n_muons"]
    hits = {k: np.concatenate([part[k] for part in parts]) for k in parts[0] if k != "n_muons"}
    ticks = np.ceil(np.maximum(hits["t"], 1e-3) / TDC_NS).astype(np.int64)
    pick = _order_hits(ticks, hits["fpga"], n_hits)
    hits = {k: v[pick] for k, v in hits.items()}
    hit_orbit, hit_bx, hit_tdc = ticks_to_counters(ticks[pick], orbit0)
    if len(hit_orbit) and hit_orbit.max() > MAX_ORBIT:
        raise ValueError("ORBIT_CNT would exceed the 32-bit counter: lower start_orbit")

    head = np.empty(n_rows, np.int8)
    cols = {
        "FPGA": np.empty(n_rows, np.int8),
        "TDC_CHANNEL": np.zeros(n_rows, np.int16),
        "ORBIT_CNT": np.empty(n_rows, np.int64),
        "BX_COUNTER": np.zeros(n_rows, np.int32),
        "TDC_MEAS": np.zeros(n_rows, np.float64),
    }
    is_hit = slots == 2
    head[is_hit] = HEAD_HIT
    cols["FPGA"][is_hit] = hits["fpga"]
    cols["TDC_CHANNEL"][is_hit] = hits["chan"]
    cols["ORBIT_CNT"][is_hit] = hit_orbit
    cols["BX_COUNTER"][is_hit] = hit_bx
    cols["TDC_MEAS"][is_hit] = hit_tdc
    truth = {
        "kind": np.full(n_rows, KIND_ANCILLARY, np.int8),
        "drift": np.full(n_rows, np.nan),
        "muon": np.full(n_rows, -1, np.int64),
        "chamber": np.full(n_rows, -1, np.int8),
        "layer": np.full(n_rows, -1, np.int8),
    }
    for k, v in truth.items():
        v[is_hit] = hits[k]

    # ancillary trigger-primitive words; ORBIT_CNT = latest hit orbit written before the group
    seen = np.where(is_hit, cols["ORBIT_CNT"], orbit0)
    running = np.maximum.accumulate(seen) if n_rows else seen
    for f in (0, 1):
        rows = np.flatnonzero(slots == f)
        m = len(rows)
        j = np.arange(m)
        group = j // len(HEAD_CYCLE)
        h = np.asarray(HEAD_CYCLE, np.int8)[j % len(HEAD_CYCLE)]
        head[rows] = h
        cols["FPGA"][rows] = f
        first_row = rows[np.minimum(group * len(HEAD_CYCLE), m - 1)] if m else rows
        cols["ORBIT_CNT"][rows] = running[first_row]
        _fill_ancillary(rng, h, rows, cols)

    table = pa.Table.from_arrays(
        [pa.array(head, HIT_SCHEMA.field("HEAD").type)]
        + [pa.array(cols[n], HIT_SCHEMA.field(n).type) for n in COLUMNS[1:]],
        schema=HIT_SCHEMA,
    )
    end = int(hit_orbit.max()) + 1 if len(hit_orbit) else orbit0
    return SynthOutput(table, truth["kind"], truth["drift"], truth["muon"], truth["chamber"], truth["layer"], end)


def _fill_ancillary(rng: np.random.Generator, h: np.ndarray, rows: np.ndarray, cols: dict[str, np.ndarray]) -> None:
    """Payloads of ancillary words (value ranges of the genuine rows, SOURCES.md table)."""
    w0 = np.asarray(HEAD0_WEIGHTS, float)
    w1 = np.asarray(HEAD1_WEIGHTS, float)
    r0, r1, r3, r4, r5 = (rows[h == x] for x in (0, 1, 3, 4, 5))
    cols["TDC_CHANNEL"][r0] = rng.choice(HEAD0_LABELS, len(r0), p=w0 / w0.sum())
    cols["BX_COUNTER"][r0] = rng.integers(0, BX_PER_ORBIT, len(r0))
    cols["TDC_MEAS"][r0] = rng.integers(1, TDC_PER_BX + 1, len(r0))
    cols["TDC_MEAS"][r1] = rng.choice(HEAD1_VALUES, len(r1), p=w1 / w1.sum())
    # HEAD 3: 4 nibbles, each one-hot (1, 2, 4 or 8); about a third have one empty nibble
    nib = np.left_shift(1, rng.integers(0, 4, (len(r3), 4)))
    empty = rng.random(len(r3)) < HEAD3_ZERO_NIBBLE_FRACTION
    nib[np.flatnonzero(empty), rng.integers(0, 4, int(empty.sum()))] = 0
    cols["BX_COUNTER"][r3] = (nib << np.array([0, 4, 8, 12])).sum(axis=1)
    slope = np.clip(rng.normal(0.0, HEAD4_SIGMA, len(r4)), -HEAD4_LIMIT, HEAD4_LIMIT)
    cols["TDC_MEAS"][r4] = _half_float_as_written(slope)
    cols["TDC_MEAS"][r5] = _half_float_as_written(rng.uniform(*HEAD5_RANGE, len(r5)))


def _half_float_as_written(values: np.ndarray) -> np.ndarray:
    """Round to IEEE half precision, then to the 6 decimals the DAQ writes (``%.6f``), so a
    decoded file equals the generated table. Shape (N,) -> (N,) float64."""
    uniq, inverse = np.unique(values.astype(np.float16).astype(np.float64), return_inverse=True)
    return np.array([float(f"{v:.6f}") for v in uniq])[inverse].reshape(values.shape)


def generate(n_rows: int, seed: int, params: SynthParams | None = None, start_orbit: int | None = None) -> pa.Table:
    """``n_rows`` synthetic DAQ rows with ``HIT_SCHEMA`` in DAQ order (see ``generate_with_truth``)."""
    return generate_with_truth(n_rows, seed, params, start_orbit).table


# ---- CSV writing -------------------------------------------------------------------------
# ---- calibration ---------------------------------------------------------------------------
def calibration_report(table: pa.Table, scint_channel: int = SCINT_CHANNEL) -> dict:
    """Statistics used to calibrate the generator against the genuine rows.

    Returns a dict (plain floats/ints, JSON-ready):
      ``rows``; ``head_fraction`` {HEAD: fraction of rows} for 0..5; ``hits`` (HEAD 2 rows);
      ``hits_per_orbit`` = hits / distinct ORBIT_CNT among hits (genuine 1.78);
      ``single_hit_orbit_fraction`` = orbits with exactly one hit / orbits with hits;
      ``chamber_fraction`` [4] = chamber hits per chamber / all chamber hits;
      ``channels_hit`` [4] = distinct local channels with a hit per chamber;
      ``top3_channel_share`` = hits in the 3 busiest chamber channels / chamber hits;
      ``layer_fraction`` [4] = chamber hits per layer 1..4 / chamber hits;
      ``special_hit_fraction`` = hits on channels > 127 / hits;
      ``scint_hits`` = hits on FPGA 1 / ``scint_channel``;
      ``hit_rate_hz`` = sum over FPGAs of hits / (ORBIT_CNT span x 89.1 us), ignoring a
      stale block of orbits more than 1e6 above the median (the genuine start-of-file quirk).
    """
    head = table.column("HEAD").to_numpy(zero_copy_only=False)
    fpga = table.column("FPGA").to_numpy(zero_copy_only=False)
    chan = table.column("TDC_CHANNEL").to_numpy(zero_copy_only=False)
    orbit = table.column("ORBIT_CNT").to_numpy(zero_copy_only=False)
    n = len(head)
    hit = head == HEAD_HIT
    h_orbit = orbit[hit]
    _, per_orbit = np.unique(h_orbit, return_counts=True)
    chamber = chamber_of(head, fpga, chan)
    cmask = chamber >= 0
    local = chan[cmask] % CELLS_PER_CHAMBER
    ch_counts = np.bincount(chamber[cmask], minlength=N_CHAMBERS)
    per_channel = np.bincount(chamber[cmask].astype(np.int64) * 64 + local, minlength=256)
    layer = layer_of(local)
    n_ch = max(int(cmask.sum()), 1)
    rate = 0.0
    for f in (0, 1):
        o = orbit[hit & (fpga == f)]
        if len(o):
            o = o[o <= np.median(o) + 1_000_000]
            span = (o.max() - o.min() + 1) * ORBIT_NS * 1e-9
            rate += len(o) / span
    return {
        "rows": int(n),
        "head_fraction": {h: float((head == h).sum() / max(n, 1)) for h in range(6)},
        "hits": int(hit.sum()),
        "hits_per_orbit": float(per_orbit.mean()) if len(per_orbit) else 0.0,
        "single_hit_orbit_fraction": float((per_orbit == 1).mean()) if len(per_orbit) else 0.0,
        "chamber_fraction": [float(x / n_ch) for x in ch_counts],
        "channels_hit": [int((per_channel[64 * k : 64 * k + 64] > 0).sum()) for k in range(N_CHAMBERS)],
        "top3_channel_share": float(np.sort(per_channel)[-3:].sum() / n_ch),
        "layer_fraction": [float((layer == lay).sum() / n_ch) for lay in (1, 2, 3, 4)],
        "special_hit_fraction": float((hit & (chan > 127)).sum() / max(int(hit.sum()), 1)),
        "scint_hits": int((hit & (fpga == 1) & (chan == scint_channel)).sum()),
        "hit_rate_hz": float(rate),
    }


# ---- files -------------------------------------------------------------------------------
file_name = daq_file_name


def manifest(seed: int, params: SynthParams, n_files: int, rows_per_file: int, files: list[dict]) -> dict:
    """The ``dtmon-synthetic.json`` document: generator, version, seed, parameters, files."""
    return {
        "synthetic": True,
        "generator": GENERATOR_NAME,
        "version": GENERATOR_VERSION,
        "seed": seed,
        "n_files": n_files,
        "rows_per_file": rows_per_file,
        "params": params.model_dump(mode="json"),
        "files": files,
        "note": "SYNTHETIC data from a seeded model of the MiniDT telescope, not detector data",
    }


def _split_s3(dest: str) -> tuple[str, str]:
    rest = dest[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {dest!r}")
    return bucket, prefix.strip("/")


def write_files(
    dest: str | Path,
    n_files: int,
    rows_per_file: int = DEFAULT_ROWS_PER_FILE,
    seed: int = 0,
    params: SynthParams | None = None,
    endpoint_url: str | None = None,
    on_file: Callable[[int, str, int], None] | None = None,
) -> dict:
    """Write ``n_files`` synthetic DAQ files and the manifest to a directory or S3 prefix.

    Files are ``data_000000.txt``, ... with the DAQ header; file i uses seed
    ``[seed, i]`` and starts at the orbit after file i-1's last hit, so the ORBIT_CNT
    counter continues across files. ``dest`` ``s3://bucket/prefix`` writes objects with
    metadata ``dtmon-synthetic: 1`` through ``dtmon.services.s3_client(endpoint_url)``,
    creating the bucket if needed; anything else is a local directory (created).

    Args:
        on_file: called after each file with (index, name, rows) (progress display).
    Returns:
        the manifest dict (also written as ``dtmon-synthetic.json``).
    Raises:
        ValueError: n_files < 1 or rows_per_file < 1, or a bad s3:// address.
        botocore errors when the S3 endpoint refuses the writes.
    """
    if n_files < 1 or rows_per_file < 1:
        raise ValueError("n_files and rows_per_file must be >= 1")
    p = params or SynthParams()
    dest = str(dest)
    put = _s3_writer(dest, endpoint_url) if dest.startswith("s3://") else _dir_writer(Path(dest))
    files, orbit = [], p.start_orbit
    for i in range(n_files):
        out = generate_with_truth(rows_per_file, file_seed(seed, i), p, start_orbit=orbit)
        body = encode_csv(out.table)
        name = file_name(i)
        put(name, body, "text/plain")
        hits_orbit = out.table.column("ORBIT_CNT").to_numpy()[out.table.column("HEAD").to_numpy() == HEAD_HIT]
        files.append(
            {
                "name": name,
                "rows": out.table.num_rows,
                "seed": file_seed(seed, i),
                "start_orbit": orbit,
                "first_orbit": int(hits_orbit.min()) if len(hits_orbit) else orbit,
                "last_orbit": int(hits_orbit.max()) if len(hits_orbit) else orbit,
                "sha256": hashlib.sha256(body).hexdigest(),
            }
        )
        orbit = out.end_orbit
        if on_file:
            on_file(i, name, out.table.num_rows)
    doc = manifest(seed, p, n_files, rows_per_file, files)
    put(MANIFEST_NAME, (json.dumps(doc, indent=2) + "\n").encode(), "application/json")
    return doc


def file_seed(seed: int, index: int) -> int:
    """Seed of file ``index`` of a run with ``seed`` (numpy SeedSequence([seed, index]))."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0])


def _dir_writer(root: Path) -> Callable[[str, bytes, str], None]:
    root.mkdir(parents=True, exist_ok=True)

    def put(name: str, body: bytes, content_type: str) -> None:
        tmp = root / (name + ".part")
        tmp.write_bytes(body)
        tmp.replace(root / name)

    return put


def _s3_writer(dest: str, endpoint_url: str | None) -> Callable[[str, bytes, str], None]:
    from dtmon.services import ensure_bucket, s3_client

    bucket, prefix = _split_s3(dest)
    client = s3_client(endpoint_url)
    ensure_bucket(client, bucket)

    def put(name: str, body: bytes, content_type: str) -> None:
        key = f"{prefix}/{name}" if prefix else name
        client.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type, Metadata=SYNTHETIC_METADATA)

    return put


# ---- command line ----------------------------------------------------------------------------
_DEFAULTS = SynthParams()


def cli_synth(
    dest: Annotated[str, typer.Option("--dest", "--out", "-o", help="output directory, or s3://bucket/prefix")],
    files: Annotated[int, typer.Option(min=1, help="number of DAQ files data_000000.txt, ...")] = 1,
    rows: Annotated[int, typer.Option(min=1, help="rows per file (genuine files hold ~1.31 M)")] = DEFAULT_ROWS_PER_FILE,
    seed: Annotated[int, typer.Option(help="random seed; same seed, same files")] = 0,
    muon_rate_hz: Annotated[
        float, typer.Option(min=0.001, help="muons crossing at least one chamber, Hz")
    ] = _DEFAULTS.muon_rate_hz,
    scint_channel: Annotated[int, typer.Option(min=128, max=511, help="scintillator TDC_CHANNEL on FPGA 1")] = SCINT_CHANNEL,
    endpoint_url: Annotated[
        str | None, typer.Option("--s3-endpoint-url", "--endpoint-url", help="S3 endpoint (e.g. moto) for s3:// destinations")
    ] = None,
    dead_chamber: Annotated[int | None, typer.Option(min=0, max=3, help="FAULT: chamber that goes dead")] = None,
    dead_from: Annotated[float, typer.Option(min=0, help="FAULT: s of detector time after which --dead-chamber is dead")] = 0.0,
    dead_channel: Annotated[list[str] | None, typer.Option(help="FAULT: dead channel CHAMBER:CHANNEL (repeatable)")] = None,
    noisy_channel: Annotated[
        list[str] | None, typer.Option(help="FAULT: noisy channel CHAMBER:CHANNEL[:HZ] (default 200 Hz; repeatable)")
    ] = None,
    t0_shift: Annotated[list[str] | None, typer.Option(help="FAULT: t0 shift CHAMBER:NS (repeatable)")] = None,
    drift_velocity: Annotated[
        list[str] | None, typer.Option(help="FAULT: drift velocity CHAMBER:UM_PER_NS (repeatable)")
    ] = None,
    no_scintillator: Annotated[bool, typer.Option("--no-scintillator", help="FAULT: no scintillator (t0) hits")] = False,
) -> None:
    """Write SYNTHETIC MiniDT DAQ files (seeded telescope model) plus the dtmon-synthetic.json manifest.

    Muons, drift times in the 0-390 ns box, scintillator, noise and ancillary words; see docs/synthetic.md.
    The FAULT options inject labelled detector faults (recorded in the manifest's params.faults).
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from dtmon.synth_faults import faults_from_options

    try:
        faults = faults_from_options(dead_chamber, dead_from, dead_channel, noisy_channel, t0_shift, drift_velocity,
                                     no_scintillator)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    params = SynthParams(**{**_DEFAULTS.model_dump(), "muon_rate_hz": muon_rate_hz, "scint_channel": scint_channel,
                            "faults": faults})
    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("synthetic files", total=files)
        doc = write_files(dest, files, rows, seed, params, endpoint_url, on_file=lambda i, name, n: bar.advance(task))
    total = sum(f["rows"] for f in doc["files"])
    console.print(f"wrote {files} SYNTHETIC file(s), {total} rows, and {MANIFEST_NAME} to {dest}")
    if faults.active:
        console.print("with FAULTS: " + "; ".join(faults.describe()))
