"""Per-micro-batch outputs with numpy (pure, no Spark): the MAPD-B streaming task (course PDF
section 5.2, tasks 1-4), the extras E1/E2 (section 5.2.4: scintillator-tagged occupancy,
drift time), detector time and run markers.

``reduce_totals`` counts rows, malformed rows, Kafka times, runs and run markers;
``reduce_hits`` builds every histogram from hit rows holding whole orbits; ``reduce_rows``
is both on one batch of rows (the reference in tests); ``merge_aggregates`` adds up the
partial results of several partitions. How they run in Spark: ``processor.plan``.

Orbits are matched within the micro-batch: the DAQ interleaves the two FPGAs' words in
blocks, so an orbit split across two micro-batches loses its scintillator tag for the
part that lands in the other batch (its hits then count only in the untagged outputs).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dtmon.hits import (
    BX_NS,
    BX_PER_ORBIT,
    CELLS_PER_CHAMBER,
    HEAD_HIT,
    N_CHAMBERS,
    SCINT_CHAMBER_OFFSET_NS,
    SCINT_CHANNEL,
    SCINT_FPGA,
    chamber_of_channel,
    hit_time_ns,
    local_channel,
)
from dtmon.wire import RunEvent
from processor.scint import N_CANDIDATES, STATS, candidate_stats

if TYPE_CHECKING:  # Spark's task workers import this module: not pydantic (docs/performance.md, start-up)
    from dtmon.settings import Settings

ORBIT_S = BX_PER_ORBIT * BX_NS * 1e-9
"""One orbit in s: 3564 BX x 25 ns = 89.1 us."""

_OFFSETS_NS = np.asarray(SCINT_CHAMBER_OFFSET_NS, np.float64)
_CELLS = N_CHAMBERS * CELLS_PER_CHAMBER


def drift_time_edges(low_ns: float, high_ns: float, bin_ns: float) -> list[float]:
    """Bin edges of the drift-time histograms in ns: ``low + i * bin`` for i = 0..n,
    n = ceil((high - low) / bin) (the last edge may lie a little above ``high``).

    Raises:
        ValueError: ``high <= low`` or ``bin <= 0``.
    """
    if high_ns <= low_ns or bin_ns <= 0:
        raise ValueError(f"drift-time range {low_ns}..{high_ns} ns with bin {bin_ns} ns is empty")
    n = math.ceil((high_ns - low_ns) / bin_ns - 1e-9)
    return [low_ns + i * bin_ns for i in range(n + 1)]


def detector_span(buckets: np.ndarray, max_gap: int) -> tuple[int, int]:
    """Orbits of detector time spanned by a batch's hit orbits, and the number of jumps.

    The distinct hit orbits, sorted, form segments wherever consecutive orbits are more
    than ``max_gap`` apart (a jump: counter reset, pause); the span is the sum over
    segments of ``last - first + 1`` orbits. Orbits come grouped in buckets
    ``orbit div max_gap``: two orbits of one bucket are never more than ``max_gap``
    apart, so only the gaps between consecutive buckets can be jumps.

    Args:
        buckets: int array (B, 2), the lowest and highest hit orbit of each non-empty bucket.
        max_gap: the longest gap, in orbits, that still counts as detector time.
    Returns:
        (orbits, jumps); (0, 0) for no buckets.
    """
    if len(buckets) == 0:
        return 0, 0
    b = np.asarray(buckets, np.int64)
    b = b[np.argsort(b[:, 0])]
    gaps = b[1:, 0] - b[:-1, 1]
    kept = gaps <= max_gap
    return int((b[:, 1] - b[:, 0] + 1).sum() + (gaps[kept] - 1).sum()), int((~kept).sum())


def _zeros_cells() -> np.ndarray:
    return np.zeros((N_CHAMBERS, CELLS_PER_CHAMBER), np.int64)


REJECTED_KEPT = 10
"""Rejected raw messages of a micro-batch described one by one (the rest are counted)."""


@dataclass
class BatchAggregates:
    """What one micro-batch (or one partition of it) reduces to, before it becomes a message.

    Arrays: ``occupancy`` and ``occupancy_scint`` (4, 64) hits per chamber and local
    channel (all orbits / orbits with a scintillator hit); ``multiplicity`` (4, 64) orbits
    per chamber with k = 1..64 distinct active channels (index k-1); ``drift_time``
    (4, len(drift_edges) - 1) hits per DRIFTIME bin, ``drift_edges`` in ns;
    ``orbit_buckets`` (B, 3) int64: bucket ``orbit div max_gap``, lowest and highest hit
    orbit in it. Times in ms since the epoch. ``newest_ms``/``run``: Kafka time and run of
    the newest row that has a run. ``run_events``: (run, event, Kafka ms) of the control
    messages, event ``RunEvent.START`` or ``RunEvent.END``. ``scint_candidates``
    (384, 3): t0-channel candidate counts (``processor.scint.candidate_stats``).
    ``occupancy_orbits`` (4, 64): distinct orbits with a hit per chamber and local channel (a
    replayed sample inside one batch counts once; for the data-quality window). ``rejected_messages``: raw
    messages refused whole (too large, undecodable), each also one malformed row;
    ``rejected_details``: ``topic/partition@offset: reason`` of the first ``REJECTED_KEPT``.
    """

    rows_read: int = 0
    malformed_rows: int = 0
    hits: int = 0
    hits_outside_chambers: int = 0
    orbit_min: int | None = None
    orbit_max: int | None = None
    orbits_with_hits: int = 0
    produced_first_ms: int | None = None
    produced_last_ms: int | None = None
    synthetic: bool = False
    occupancy: np.ndarray = field(default_factory=_zeros_cells)
    multiplicity: np.ndarray = field(default_factory=_zeros_cells)
    occupancy_scint: np.ndarray = field(default_factory=_zeros_cells)
    drift_edges: list[float] = field(default_factory=lambda: drift_time_edges(-200.0, 600.0, 5.0))
    drift_time: np.ndarray | None = None
    scintillator: tuple[int, int] = (SCINT_FPGA, SCINT_CHANNEL)
    orbits_with_scintillator: int = 0
    orbit_buckets: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))
    detector_orbits: int = 0
    orbit_jumps: int = 0
    newest_ms: int | None = None
    run: int | None = None
    run_events: list[tuple[int | None, int, int]] = field(default_factory=list)
    scint_candidates: np.ndarray = field(default_factory=lambda: np.zeros((N_CANDIDATES, len(STATS)), np.int64))
    occupancy_orbits: np.ndarray = field(default_factory=_zeros_cells)
    rejected_messages: int = 0
    rejected_details: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.drift_time is None:
            self.drift_time = np.zeros((N_CHAMBERS, len(self.drift_edges) - 1), np.int64)

    @property
    def detector_time_s(self) -> float | None:
        """Detector time spanned by the hit orbits in s (``detector_orbits`` x 89.1 us); None without hits."""
        return self.detector_orbits * ORBIT_S if self.detector_orbits else None


@dataclass(frozen=True)
class Binning:
    """What ``reduce_rows`` needs from the settings: scintillator (FPGA, TDC_CHANNEL),
    drift-time edges in ns, and the orbit gap (orbits) beyond which detector time jumps."""

    scintillator: tuple[int, int]
    drift_edges: tuple[float, ...]
    drift_bin_ns: float
    max_orbit_gap: int

    @classmethod
    def from_settings(cls, s: Settings) -> "Binning":
        """Raises ValueError for an empty drift-time range."""
        edges = drift_time_edges(s.drift_time_min_ns, s.drift_time_max_ns, s.drift_time_bin_ns)
        channel = SCINT_CHANNEL if s.scint_channel is None else s.scint_channel
        return cls((s.scint_fpga, channel), tuple(edges), s.drift_time_bin_ns, s.max_orbit_gap)


def int_column(column: pa.ChunkedArray | pa.Array, fill: int) -> np.ndarray:
    """``column`` as an int64 array (N,), nulls replaced by ``fill``."""
    return pc.fill_null(column, fill).to_numpy().astype(np.int64, copy=False)


def _distinct(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values of a 1-D int array (sort-based: faster here than ``np.unique``'s hashing)."""
    ordered = np.sort(values)
    return ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))] if len(ordered) else ordered


def reduce_rows(rows: pa.Table, binning: Binning) -> BatchAggregates:
    """Reduce DAQ rows holding whole orbits to every per-batch output, with numpy (pure).

    Definitions (course PDF 5.2 and 5.2.4; ``dtmon.hits`` for the map and the time):
    a hit is a row with HEAD 2; a chamber hit has FPGA 0/1 and TDC_CHANNEL 0-127, chamber
    = 2 FPGA + (TDC_CHANNEL >= 64), local channel = TDC_CHANNEL mod 64; t = 25 (ORBIT_CNT
    3564 + BX_COUNTER + TDC_MEAS / 30) ns. Multiplicity: distinct local channels per
    (orbit, chamber). The scintillator is the hit on ``binning.scintillator``; its earliest
    time per orbit is t_scint. E1: occupancy of chamber hits in orbits with t_scint; E2:
    DRIFTIME = t - t_scint + ``SCINT_CHAMBER_OFFSET_NS[chamber]``, bin
    floor((DRIFTIME - edge_0) / width); values outside the edges are dropped. Detector
    time: ``detector_span`` of the orbit buckets of all hits. Malformed rows have HEAD
    null and run_event 0; control rows have run_event 1/2 and count only as run markers.

    Args:
        rows: N rows with the columns of ``processor.decode.OUTPUT_SCHEMA``; every
            orbit present must be complete (all its rows of the micro-batch are here).
        binning: scintillator, drift-time edges, max orbit gap.
    Returns:
        ``BatchAggregates`` with ``detector_orbits``/``orbit_jumps`` filled.
    """
    out = reduce_totals(rows, binning)
    hits = reduce_hits(rows.filter(hit_mask(rows)), binning)
    for name in HIT_FIELDS:
        setattr(out, name, getattr(hits, name))
    return out


def hit_mask(rows: pa.Table | pa.RecordBatch) -> pa.Array:
    """Boolean (N,): the rows that are TDC hits (HEAD 2; null HEAD is a malformed row, not a hit)."""
    return pa.array(int_column(rows["HEAD"], -1) == HEAD_HIT)


def reduce_totals(rows: pa.Table | pa.RecordBatch, binning: Binning) -> BatchAggregates:
    """The bookkeeping half of ``reduce_rows``: counts of rows, Kafka times, runs (pure).

    Additive over any split of the rows (no need for whole orbits): ``rows_read`` (data
    rows, run_event 0), ``malformed_rows`` (data rows with HEAD null), the oldest and
    newest Kafka time in ms, ``synthetic``, the newest row's run and the run markers.

    Args:
        rows: N rows with the columns of ``processor.decode.OUTPUT_SCHEMA``.
        binning: only for the drift-time shape and scintillator of the empty histograms.
    Returns:
        ``BatchAggregates`` with the hit fields (``HIT_FIELDS``) empty.
    """
    out = BatchAggregates(drift_edges=list(binning.drift_edges), scintillator=binning.scintillator)
    if rows.num_rows == 0:
        return out
    event = int_column(rows["run_event"], RunEvent.DATA)
    data = event == RunEvent.DATA
    head_null = rows["HEAD"].is_null().to_numpy(zero_copy_only=False)
    produced = int_column(rows["produced_ms"], 0)
    out.rows_read = int(data.sum())
    out.malformed_rows = int((head_null & data).sum())
    out.produced_first_ms, out.produced_last_ms = int(produced.min()), int(produced.max())
    out.synthetic = bool(pc.any(rows["synthetic"]).as_py() or False)

    run_valid = rows["run"].is_valid().to_numpy(zero_copy_only=False)
    if run_valid.any():
        run = int_column(rows["run"], -1)
        newest = produced[run_valid].max()
        out.newest_ms = int(newest)
        out.run = int(run[run_valid & (produced == newest)].max())
    control = ~data
    if control.any():
        run_list = rows["run"].to_pylist()
        out.run_events = [(run_list[i], int(event[i]), int(produced[i])) for i in np.flatnonzero(control)]
    return out


HIT_FIELDS = ("hits", "hits_outside_chambers", "orbit_min", "orbit_max", "orbits_with_hits", "orbits_with_scintillator",
              "occupancy", "multiplicity", "occupancy_scint", "drift_time", "orbit_buckets", "detector_orbits", "orbit_jumps",
              "scint_candidates", "occupancy_orbits")
"""The ``BatchAggregates`` fields that come from the hits alone (``reduce_hits``)."""

HIT_COLUMNS = ("FPGA", "TDC_CHANNEL", "ORBIT_CNT", "BX_COUNTER", "TDC_MEAS")
"""The columns ``reduce_hits`` reads."""


def reduce_hits(hits: pa.Table, binning: Binning) -> BatchAggregates:
    """The hit fields (``HIT_FIELDS``) of ``reduce_rows`` from hit rows alone (pure).

    Args:
        hits: H rows with HEAD 2 and at least the ``HIT_COLUMNS``; every orbit present
            must be complete.
        binning: scintillator, drift-time edges, max orbit gap.
    Returns:
        ``BatchAggregates`` with only the ``HIT_FIELDS`` filled (counts of rows, Kafka
        times and runs stay empty).
    """
    edges = np.asarray(binning.drift_edges, np.float64)
    n_drift = len(edges) - 1
    out = BatchAggregates(drift_edges=list(binning.drift_edges), scintillator=binning.scintillator)
    out.hits = hits.num_rows
    if out.hits == 0:
        return out
    fpga, channel = int_column(hits["FPGA"], -1), int_column(hits["TDC_CHANNEL"], -1)
    orbit = int_column(hits["ORBIT_CNT"], 0)
    t_ns = hit_time_ns(orbit, int_column(hits["BX_COUNTER"], 0), pc.fill_null(hits["TDC_MEAS"], 0.0).to_numpy())
    out.orbit_min, out.orbit_max = int(orbit.min()), int(orbit.max())
    orbits, orbit_index = np.unique(orbit, return_inverse=True)
    orbit_index = orbit_index.reshape(-1)

    scint = (fpga == binning.scintillator[0]) & (channel == binning.scintillator[1])
    t_scint = np.full(len(orbits), np.inf)
    np.minimum.at(t_scint, orbit_index[scint], t_ns[scint])
    tagged_orbit = np.isfinite(t_scint)
    out.orbits_with_scintillator = int(tagged_orbit.sum())

    chamber = chamber_of_channel(fpga, channel)
    in_chamber = chamber >= 0
    out.hits_outside_chambers = int(out.hits - in_chamber.sum())
    chamber = chamber[in_chamber].astype(np.int64)
    local = local_channel(channel[in_chamber])
    cell = chamber * CELLS_PER_CHAMBER + local
    cell_orbit = orbit_index[in_chamber]
    out.occupancy = np.bincount(cell, minlength=_CELLS).reshape(N_CHAMBERS, CELLS_PER_CHAMBER)
    out.orbits_with_hits = int(_distinct(cell_orbit).size)
    # multiplicity: distinct (orbit, chamber, channel), then channels per (orbit, chamber)
    pairs = _distinct(cell_orbit * _CELLS + cell)
    out.occupancy_orbits = np.bincount(pairs % _CELLS, minlength=_CELLS).reshape(N_CHAMBERS, CELLS_PER_CHAMBER)
    orbit_chamber, k = np.unique(pairs // CELLS_PER_CHAMBER, return_counts=True)
    out.multiplicity = np.bincount((orbit_chamber % N_CHAMBERS) * CELLS_PER_CHAMBER + k - 1, minlength=_CELLS).reshape(
        N_CHAMBERS, CELLS_PER_CHAMBER
    )
    tagged = tagged_orbit[cell_orbit]
    out.occupancy_scint = np.bincount(cell[tagged], minlength=_CELLS).reshape(N_CHAMBERS, CELLS_PER_CHAMBER)
    drift = t_ns[in_chamber][tagged] - t_scint[cell_orbit[tagged]] + _OFFSETS_NS[chamber[tagged]]
    drift_bin = np.floor((drift - edges[0]) / binning.drift_bin_ns)
    kept = (drift_bin >= 0) & (drift_bin <= n_drift - 1)
    out.drift_time = np.bincount(
        chamber[tagged][kept] * n_drift + drift_bin[kept].astype(np.int64), minlength=N_CHAMBERS * n_drift
    ).reshape(N_CHAMBERS, n_drift)
    out.scint_candidates = candidate_stats(fpga, channel, orbit_index, len(orbits), t_ns, in_chamber, chamber, _OFFSETS_NS)

    bucket = orbits // binning.max_orbit_gap
    _, first = np.unique(bucket, return_index=True)
    last = np.append(first[1:], len(orbits)) - 1
    out.orbit_buckets = np.stack([bucket[first], orbits[first], orbits[last]], axis=1)
    out.detector_orbits, out.orbit_jumps = detector_span(out.orbit_buckets[:, 1:], binning.max_orbit_gap)
    return out


def _min(values: Iterable[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def _max(values: Iterable[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def merge_aggregates(parts: list[BatchAggregates], binning: Binning) -> BatchAggregates:
    """Add up the partial aggregates of partitions that hold disjoint sets of whole orbits (pure).

    Counts and histograms add; orbit and Kafka-time ranges take min/max; orbit buckets
    merge per bucket (lowest lo, highest hi) before ``detector_span``; the run is that of
    the newest row with a run (ties: the highest run); run markers are concatenated.
    """
    out = BatchAggregates(drift_edges=list(binning.drift_edges), scintillator=binning.scintillator)
    if not parts:
        return out
    for name in ("rows_read", "malformed_rows", "hits", "hits_outside_chambers", "orbits_with_hits",
                 "orbits_with_scintillator"):
        setattr(out, name, sum(getattr(p, name) for p in parts))
    for name in ("occupancy", "multiplicity", "occupancy_scint", "drift_time", "scint_candidates", "occupancy_orbits"):
        setattr(out, name, np.sum([getattr(p, name) for p in parts], axis=0))
    out.orbit_min, out.produced_first_ms = _min(p.orbit_min for p in parts), _min(p.produced_first_ms for p in parts)
    out.orbit_max, out.produced_last_ms = _max(p.orbit_max for p in parts), _max(p.produced_last_ms for p in parts)
    out.synthetic = any(p.synthetic for p in parts)
    newest = [(p.newest_ms, p.run) for p in parts if p.newest_ms is not None]
    if newest:
        out.newest_ms, out.run = max(newest)
    out.run_events = [e for p in parts for e in p.run_events]
    out.rejected_messages = sum(p.rejected_messages for p in parts)
    out.rejected_details = [d for p in parts for d in p.rejected_details][:REJECTED_KEPT]
    buckets = np.concatenate([p.orbit_buckets for p in parts])
    if len(buckets):
        keys, index = np.unique(buckets[:, 0], return_inverse=True)
        lo = np.full(len(keys), np.iinfo(np.int64).max)
        hi = np.full(len(keys), np.iinfo(np.int64).min)
        np.minimum.at(lo, index.reshape(-1), buckets[:, 1])
        np.maximum.at(hi, index.reshape(-1), buckets[:, 2])
        out.orbit_buckets = np.stack([keys, lo, hi], axis=1)
        out.detector_orbits, out.orbit_jumps = detector_span(out.orbit_buckets[:, 1:], binning.max_orbit_gap)
    return out
