"""Per-micro-batch outputs: the MAPD-B streaming task (course PDF section 5.2, tasks 1-4),
the extras E1/E2 (section 5.2.4: scintillator-tagged occupancy, drift time), detector time
and run markers.

``aggregate_batch`` is one Spark job of two stages over the source's message rows (one
row per Kafka message, ~10 000 DAQ rows each), so the JVM never handles a row per hit.
Stage 1 (``mapInArrow(decode_partition)``) decodes each partition's messages straight into
Arrow DAQ rows (``processor.decode.decode_messages``), counts rows, malformed rows,
Kafka times, runs and run markers (``reduce_totals``) and splits the hits into orbit
buckets (``split_rows``: ORBIT_CNT mod the bucket count), each bucket one row holding its
hits as an Arrow IPC payload. The one shuffle groups rows by bucket, so each partition
holds whole orbits (a muon's chamber hits and its scintillator hit share the orbit).
Stage 2 (``mapInArrow(reduce_partition)``) reduces each partition's hits with numpy
(``reduce_hits``) and its share of the counts to a single small row of partial sums
(``PARTIAL_SCHEMA``). The driver collects those rows as Arrow and adds them up
(``merge_aggregates``). ``reduce_rows`` (the same outputs from a whole batch of rows, the
reference in tests), ``reduce_totals``, ``split_rows``, ``reduce_hits`` and
``merge_aggregates`` are pure and tested without Spark. ``build_message`` (pure) turns the
result into the results message.

Orbits are matched within the micro-batch: the DAQ interleaves the two FPGAs' words in
blocks, so an orbit split across two micro-batches loses its scintillator tag for the
part that lands in the other batch (its hits then count only in the untagged outputs).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame

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
from dtmon.schema import (
    MULTIPLICITY_EDGES,
    OCCUPANCY_EDGES,
    ChamberHistograms,
    ChannelHealth,
    Histogram,
    QualityReport,
    ResultsMessage,
    Scintillator,
    StreamEvent,
)
from dtmon.settings import Settings
from dtmon.wire import RunEvent
from processor.decode import decode_messages
from processor.scint import DEFAULT_SCINT_CHANNEL, N_CANDIDATES, STATS, candidate_stats
from processor.state import RunStatus

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
    replayed sample inside one batch counts once; for the data-quality window).
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
        channel = DEFAULT_SCINT_CHANNEL if s.scint_channel is None else s.scint_channel
        return cls((s.scint_fpga, channel), tuple(edges), s.drift_time_bin_ns, s.max_orbit_gap)


def _ints(column: pa.ChunkedArray | pa.Array, fill: int) -> np.ndarray:
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
    return pa.array(_ints(rows["HEAD"], -1) == HEAD_HIT)


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
    event = _ints(rows["run_event"], RunEvent.DATA)
    data = event == RunEvent.DATA
    head_null = rows["HEAD"].is_null().to_numpy(zero_copy_only=False)
    produced = _ints(rows["produced_ms"], 0)
    out.rows_read = int(data.sum())
    out.malformed_rows = int((head_null & data).sum())
    out.produced_first_ms, out.produced_last_ms = int(produced.min()), int(produced.max())
    out.synthetic = bool(pc.any(rows["synthetic"]).as_py() or False)

    run_valid = rows["run"].is_valid().to_numpy(zero_copy_only=False)
    if run_valid.any():
        run = _ints(rows["run"], -1)
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
    fpga, channel = _ints(hits["FPGA"], -1), _ints(hits["TDC_CHANNEL"], -1)
    orbit = _ints(hits["ORBIT_CNT"], 0)
    t_ns = hit_time_ns(orbit, _ints(hits["BX_COUNTER"], 0), pc.fill_null(hits["TDC_MEAS"], 0.0).to_numpy())
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


PARTIAL_SCHEMA = pa.schema(
    [
        ("rows_read", pa.int64()),
        ("malformed_rows", pa.int64()),
        ("hits", pa.int64()),
        ("hits_outside_chambers", pa.int64()),
        ("orbit_min", pa.int64()),
        ("orbit_max", pa.int64()),
        ("orbits_with_hits", pa.int64()),
        ("orbits_with_scintillator", pa.int64()),
        ("produced_first_ms", pa.int64()),
        ("produced_last_ms", pa.int64()),
        ("synthetic", pa.bool_()),
        ("newest_ms", pa.int64()),
        ("run", pa.int32()),
        ("occupancy", pa.list_(pa.int64())),
        ("multiplicity", pa.list_(pa.int64())),
        ("occupancy_scint", pa.list_(pa.int64())),
        ("drift_time", pa.list_(pa.int64())),
        ("orbit_buckets", pa.list_(pa.int64())),
        ("scint_candidates", pa.list_(pa.int64())),
        ("occupancy_orbits", pa.list_(pa.int64())),
        ("event_run", pa.list_(pa.int32())),
        ("event_kind", pa.list_(pa.int32())),
        ("event_ms", pa.list_(pa.int64())),
    ]
)
"""One row per partition: a ``BatchAggregates`` with its arrays flattened (row-major;
``orbit_buckets`` as bucket, lo, hi triples) and its run markers as three parallel lists."""

_SPARK_TYPES = {pa.int64(): "bigint", pa.int32(): "int", pa.bool_(): "boolean"}
PARTIAL_SPARK_SCHEMA = ", ".join(
    f"{f.name} array<{_SPARK_TYPES[f.type.value_type]}>" if pa.types.is_list(f.type) else f"{f.name} {_SPARK_TYPES[f.type]}"
    for f in PARTIAL_SCHEMA
)
"""``PARTIAL_SCHEMA`` as a Spark DDL string (the ``mapInArrow`` output type)."""

_SCALARS = [f.name for f in PARTIAL_SCHEMA if not pa.types.is_list(f.type)]
_ARRAYS = ("occupancy", "multiplicity", "occupancy_scint", "drift_time", "orbit_buckets", "scint_candidates",
           "occupancy_orbits")


def to_partial_row(agg: BatchAggregates) -> pa.RecordBatch:
    """One ``PARTIAL_SCHEMA`` row holding ``agg`` (inverse: ``from_partial_rows``)."""
    values = {name: [getattr(agg, name)] for name in _SCALARS}
    values.update({name: [np.asarray(getattr(agg, name), np.int64).reshape(-1)] for name in _ARRAYS})
    values["event_run"] = [[e[0] for e in agg.run_events]]
    values["event_kind"] = [[e[1] for e in agg.run_events]]
    values["event_ms"] = [[e[2] for e in agg.run_events]]
    return pa.RecordBatch.from_pydict(values, schema=PARTIAL_SCHEMA)


def from_partial_rows(table: pa.Table, binning: Binning) -> list[BatchAggregates]:
    """The ``BatchAggregates`` of each ``PARTIAL_SCHEMA`` row (drift-time shape from ``binning``)."""
    n_drift = len(binning.drift_edges) - 1
    shapes = {"occupancy": (N_CHAMBERS, CELLS_PER_CHAMBER), "multiplicity": (N_CHAMBERS, CELLS_PER_CHAMBER),
              "occupancy_scint": (N_CHAMBERS, CELLS_PER_CHAMBER), "drift_time": (N_CHAMBERS, n_drift),
              "orbit_buckets": (-1, 3), "scint_candidates": (N_CANDIDATES, len(STATS)),
              "occupancy_orbits": (N_CHAMBERS, CELLS_PER_CHAMBER)}
    parts = []
    for row in table.to_pylist():
        agg = BatchAggregates(drift_edges=list(binning.drift_edges), scintillator=binning.scintillator)
        for name in _SCALARS:
            setattr(agg, name, row[name])
        for name, shape in shapes.items():
            setattr(agg, name, np.asarray(row[name], np.int64).reshape(shape))
        agg.run_events = list(zip(row["event_run"], row["event_kind"], row["event_ms"]))
        agg.detector_orbits, agg.orbit_jumps = detector_span(agg.orbit_buckets[:, 1:], binning.max_orbit_gap)
        parts.append(agg)
    return parts


SPLIT_SCHEMA = pa.schema([("bucket", pa.int32()), ("hits", pa.binary()), ("totals", pa.binary())])
"""Rows between the two stages: orbit ``bucket`` and either ``hits``, the bucket's hit rows
(``HIT_COLUMNS``) as an Arrow IPC stream, or ``totals``, one ``PARTIAL_SCHEMA`` row of
counts (``reduce_totals``) as an Arrow IPC stream (bucket -1)."""
SPLIT_SPARK_SCHEMA = "bucket int, hits binary, totals binary"
"""``SPLIT_SCHEMA`` as a Spark DDL string (stage 1's ``mapInArrow`` output type)."""


def _to_ipc(data: pa.Table | pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, data.schema) as writer:
        writer.write(data)
    return sink.getvalue().to_pybytes()


def _from_ipc(payload: bytes) -> pa.Table:
    return pa.ipc.open_stream(payload).read_all()


def split_rows(rows: pa.Table | pa.RecordBatch, binning: Binning, buckets: int) -> pa.RecordBatch:
    """Stage 1 of ``aggregate_batch`` on decoded DAQ rows (pure): their counts and their hits by orbit bucket.

    Args:
        rows: N rows with the columns of ``processor.decode.OUTPUT_SCHEMA``.
        binning: passed to ``reduce_totals``.
        buckets: number of orbit buckets (>= 1); a hit goes to bucket ORBIT_CNT mod ``buckets``.
    Returns:
        ``SPLIT_SCHEMA`` rows: one totals row (bucket -1), then one row per non-empty bucket
        with its hits (``HIT_COLUMNS``, in row order).
    """
    bucket_ids, hit_payloads, totals = [-1], [None], [_to_ipc(to_partial_row(reduce_totals(rows, binning)))]
    hits = rows.filter(hit_mask(rows)).select(list(HIT_COLUMNS))
    if hits.num_rows:
        bucket = _ints(hits["ORBIT_CNT"], 0) % buckets
        for k in np.unique(bucket):
            bucket_ids.append(int(k))
            hit_payloads.append(_to_ipc(hits.filter(pa.array(bucket == k))))
            totals.append(None)
    return pa.RecordBatch.from_arrays(
        [pa.array(bucket_ids, pa.int32()), pa.array(hit_payloads, pa.binary()), pa.array(totals, pa.binary())],
        schema=SPLIT_SCHEMA,
    )


def reduce_split(split: pa.Table, binning: Binning) -> BatchAggregates | None:
    """Stage 2 of ``aggregate_batch`` (pure): ``SPLIT_SCHEMA`` rows that hold whole orbit buckets -> one aggregate.

    The hits of all rows are reduced together (``reduce_hits``) and merged with the counts
    of the totals rows (``merge_aggregates``). Returns None for no rows.
    """
    if split.num_rows == 0:
        return None
    hits = [_from_ipc(h) for h in split["hits"].to_pylist() if h is not None]
    parts = [p for t in split["totals"].to_pylist() if t is not None for p in from_partial_rows(_from_ipc(t), binning)]
    if hits:
        parts.append(reduce_hits(pa.concat_tables(hits), binning))
    return merge_aggregates(parts, binning)


def decode_partition(binning: Binning, buckets: int):
    """Stage 1's ``mapInArrow`` function: record batches of source rows (``MESSAGE_SCHEMA``)
    -> ``SPLIT_SCHEMA`` record batches (``decode_messages`` then ``split_rows``)."""

    def decode(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            if batch.num_rows:
                yield split_rows(decode_messages(batch), binning, buckets)

    return decode


def reduce_partition(binning: Binning):
    """Stage 2's ``mapInArrow`` function: all ``SPLIT_SCHEMA`` record batches of one
    partition (whole orbit buckets) -> one ``PARTIAL_SCHEMA`` row (none for an empty partition)."""

    def reduce(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        agg = reduce_split(pa.Table.from_batches(list(batches), schema=SPLIT_SCHEMA), binning)
        if agg is not None:
            yield to_partial_row(agg)

    return reduce


BUCKETS_PER_PARTITION = 4
"""Orbit buckets per shuffle partition: Spark hashes bucket ids to partitions, and a few
buckets per partition keep the partitions' shares of hits close to even."""


def aggregate_batch(messages: DataFrame, settings: Settings | None = None) -> BatchAggregates:
    """Reduce one micro-batch of raw-topic messages to the task 1-4 outputs and the extras, in Spark.

    One Spark job of two stages (see the module docstring):
    ``mapInArrow(decode_partition)`` decodes every message to DAQ rows, counts them and
    splits the hits into ``settings.shuffle_partitions`` x ``BUCKETS_PER_PARTITION`` orbit
    buckets; ``repartition(settings.shuffle_partitions, "bucket")`` puts whole orbits in
    each partition; ``mapInArrow(reduce_partition)`` reduces each partition to one row;
    the driver merges the rows (``merge_aggregates``). Same result as ``reduce_rows`` on
    the whole batch's decoded rows.

    Args:
        messages: source rows, columns of ``processor.kafka_source.SPARK_SCHEMA`` (one row
            per Kafka message).
        settings: scintillator channel, drift-time range and bins, max orbit gap, shuffle
            partitions (default: ``Settings()``).
    Returns:
        ``BatchAggregates`` of the whole micro-batch.
    Raises:
        ValueError: an empty drift-time range in the settings.
    """
    s = settings or Settings()
    binning = Binning.from_settings(s)
    buckets = s.shuffle_partitions * BUCKETS_PER_PARTITION
    split = messages.mapInArrow(decode_partition(binning, buckets), SPLIT_SPARK_SCHEMA)
    partials = split.repartition(s.shuffle_partitions, "bucket").mapInArrow(reduce_partition(binning), PARTIAL_SPARK_SCHEMA)
    return merge_aggregates(from_partial_rows(partials.toArrow(), binning), binning)


def build_message(
    batch_id: int,
    agg: BatchAggregates,
    *,
    trigger_interval_s: float,
    batch_started: float,
    published: float,
    health: ChannelHealth | None = None,
    run: RunStatus | None = None,
    quality: QualityReport | None = None,
    scintillator: Scintillator | None = None,
    events: list[StreamEvent] | None = None,
) -> ResultsMessage:
    """The results message (version ``dtmon.schema.RESULTS_VERSION``) of one micro-batch (pure).

    Args:
        batch_id: Spark micro-batch id.
        agg: the batch's aggregates.
        trigger_interval_s: the query's trigger interval in s.
        batch_started, published: wall-clock times in epoch s.
        health: dead/noisy channels (``processor.quality.QualityMonitor.update``).
        run: the run fields from ``processor.state.RunTracker``.
        quality, scintillator, events: from ``processor.quality.QualityMonitor.update``
            (default: no quality, ``agg.scintillator`` without source, no events).
    """
    run = run or RunStatus()
    chambers = [
        ChamberHistograms(
            chamber=c,
            hits=int(agg.occupancy[c].sum()),
            occupancy=Histogram(bin_edges=OCCUPANCY_EDGES, bin_counts=agg.occupancy[c].tolist()),
            multiplicity=Histogram(bin_edges=MULTIPLICITY_EDGES, bin_counts=agg.multiplicity[c].tolist()),
            occupancy_scint=Histogram(bin_edges=OCCUPANCY_EDGES, bin_counts=agg.occupancy_scint[c].tolist()),
            drift_time=Histogram(bin_edges=agg.drift_edges, bin_counts=agg.drift_time[c].tolist()),
        )
        for c in range(N_CHAMBERS)
    ]
    ms = lambda v: None if v is None else v / 1000.0  # noqa: E731
    return ResultsMessage(
        batch_id=batch_id,
        synthetic=agg.synthetic,
        trigger_interval_s=trigger_interval_s,
        batch_started=batch_started,
        published=published,
        produced_first=ms(agg.produced_first_ms),
        produced_last=ms(agg.produced_last_ms),
        rows_read=agg.rows_read,
        malformed_rows=agg.malformed_rows,
        hits=agg.hits,
        hits_outside_chambers=agg.hits_outside_chambers,
        orbit_min=agg.orbit_min,
        orbit_max=agg.orbit_max,
        orbits_with_hits=agg.orbits_with_hits,
        chambers=chambers,
        detector_time_s=agg.detector_time_s,
        orbit_jumps=agg.orbit_jumps,
        scintillator=scintillator or Scintillator(fpga=agg.scintillator[0], channel=agg.scintillator[1]),
        orbits_with_scintillator=agg.orbits_with_scintillator,
        channel_health=health,
        run=run.run,
        run_state=run.state,
        run_started=run.started,
        quality=quality,
        events=events or [],
    )
