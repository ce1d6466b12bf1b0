"""Finding the scintillator (t0) channel in the data (pure).

The course PDF puts the t0 on FPGA 1 TDC_CHANNEL 128, the genuine rows carry it on 138.
When the channel is not configured, every FPGA-1 channel >= 128 is a candidate: in each
micro-batch ``candidate_stats`` counts, per candidate, the orbits where it fired together with
chamber hits, those chamber hits, and how many of them fall in the coincidence window
(DRIFTIME = t_hit - t_candidate + offset[chamber] within ``COINCIDENCE_NS``, the 0-400 ns time
box with margins). A scintillator lines its orbits' muon hits up in that window; a channel
unrelated to muons spreads them over the whole 89 us orbit (a ~1 % chance to land in 1.2 us).
``choose_scintillator`` picks the candidate from the counts summed over batches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from dtmon.hits import SCINT_FPGA

if TYPE_CHECKING:  # Spark's task workers import this module: not pydantic
    from dtmon.checks_config import ScintillatorConfig

FIRST_CANDIDATE = 128
N_CANDIDATES = 384
"""Candidates: FPGA 1, TDC_CHANNEL 128..511."""
COINCIDENCE_NS = (-400.0, 800.0)
"""DRIFTIME range (ns) counted as in coincidence with a candidate."""
STATS = ("orbits", "hits", "coincident")
"""Columns of ``candidate_stats``: orbits where the candidate fired with chamber hits, chamber
hits in those orbits, and those inside ``COINCIDENCE_NS``."""


def candidate_stats(fpga: np.ndarray, channel: np.ndarray, orbit_index: np.ndarray, n_orbits: int,
                    t_ns: np.ndarray, in_chamber: np.ndarray, chamber: np.ndarray,
                    offsets_ns: np.ndarray) -> np.ndarray:
    """Coincidence counts of every t0 candidate in one set of whole orbits.

    Args:
        fpga, channel, orbit_index, t_ns: (H,) per hit: FPGA, TDC_CHANNEL, index of its orbit
            (0..n_orbits-1), time in ns.
        in_chamber: bool (H,), the chamber hits; ``chamber``: (C,) their chamber, C = in_chamber.sum().
        offsets_ns: (4,) scintillator delay per chamber (``dtmon.schema.SCINT_CHAMBER_OFFSET_NS``).
    Returns:
        int64 (N_CANDIDATES, 3): ``STATS`` per candidate channel 128 + i (additive over orbits).
    """
    out = np.zeros((N_CANDIDATES, len(STATS)), np.int64)
    cand = (fpga == SCINT_FPGA) & (channel >= FIRST_CANDIDATE) & (channel < FIRST_CANDIDATE + N_CANDIDATES)
    if not cand.any() or not in_chamber.any():
        return out
    chamber_orbit = orbit_index[in_chamber]
    chamber_t = t_ns[in_chamber]
    hits_per_orbit = np.bincount(chamber_orbit, minlength=n_orbits)
    for ch in np.unique(channel[cand]):
        own = cand & (channel == ch)
        t_c = np.full(n_orbits, np.inf)
        np.minimum.at(t_c, orbit_index[own], t_ns[own])
        fired = np.isfinite(t_c)
        tagged = fired[chamber_orbit]
        drift = chamber_t[tagged] - t_c[chamber_orbit[tagged]] + offsets_ns[chamber[tagged]]
        inside = (drift >= COINCIDENCE_NS[0]) & (drift <= COINCIDENCE_NS[1])
        out[ch - FIRST_CANDIDATE] = [int((fired & (hits_per_orbit > 0)).sum()), int(tagged.sum()), int(inside.sum())]
    return out


def choose_scintillator(stats: np.ndarray, cfg: ScintillatorConfig) -> tuple[int | None, str]:
    """The t0 channel from summed ``candidate_stats`` (N_CANDIDATES, 3), with the reason.

    A candidate qualifies with >= ``detect_min_orbits`` orbits, >= ``detect_min_hits``
    coincident chamber hits and a coincident share >= ``detect_min_fraction``; the one with
    the most coincident hits wins.

    Returns:
        (TDC_CHANNEL, reason) or (None, why none qualified yet).
    """
    s = np.asarray(stats, np.int64).reshape(N_CANDIDATES, len(STATS))
    orbits, hits, coincident = s[:, 0], s[:, 1], s[:, 2]
    share = np.divide(coincident, hits, out=np.zeros(len(s)), where=hits > 0)
    ok = (orbits >= cfg.detect_min_orbits) & (coincident >= cfg.detect_min_hits) & (share >= cfg.detect_min_fraction)
    seen = [FIRST_CANDIDATE + int(i) for i in np.flatnonzero(hits > 0)]
    if not ok.any():
        best = int(np.argmax(coincident))
        detail = (f"best FPGA 1 channel {FIRST_CANDIDATE + best}: {coincident[best]} of {hits[best]} chamber hits "
                  f"in {orbits[best]} orbits coincident" if seen else "no FPGA 1 channel >= 128 fired with chamber hits")
        return None, f"no t0 channel found yet ({detail}; need {cfg.detect_min_hits} hits in {cfg.detect_min_orbits} "\
                     f"orbits, {cfg.detect_min_fraction:.0%} coincident)"
    i = int(np.argmax(np.where(ok, coincident, -1)))
    others = [c for c in seen if c != FIRST_CANDIDATE + i]
    return FIRST_CANDIDATE + i, (
        f"FPGA 1 channel {FIRST_CANDIDATE + i}: {coincident[i]} of {hits[i]} chamber hits in the orbits where it fired "
        f"({orbits[i]}) lie within {COINCIDENCE_NS[0]:.0f}..{COINCIDENCE_NS[1]:.0f} ns DRIFTIME of it ({share[i]:.0%})"
        + (f"; other candidates seen: {', '.join(map(str, others[:5]))}" if others else "")
    )
