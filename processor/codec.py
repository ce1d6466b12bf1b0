"""The Arrow codec between the two Spark stages of a micro-batch (pure, no Spark).

Stage 1 sends ``SPLIT_SCHEMA`` rows: a batch's counts (``reduce_totals``) and its hits by
orbit bucket, each as an Arrow IPC payload (``split_rows``); stage 2 reduces the rows of
whole buckets (``reduce_split``) and sends one ``PARTIAL_SCHEMA`` row per partition
(``to_partial_row``), which the driver reads back (``from_partial_rows``).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from dtmon.hits import CELLS_PER_CHAMBER, N_CHAMBERS
from processor.scint import N_CANDIDATES, STATS
from processor.reduce import (
    HIT_COLUMNS,
    REJECTED_KEPT,
    BatchAggregates,
    Binning,
    int_column,
    detector_span,
    hit_mask,
    merge_aggregates,
    reduce_hits,
    reduce_totals,
)

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
        ("rejected_messages", pa.int64()),
        ("rejected_details", pa.list_(pa.string())),
    ]
)
"""One row per partition: a ``BatchAggregates`` with its arrays flattened (row-major;
``orbit_buckets`` as bucket, lo, hi triples) and its run markers as three parallel lists."""

_SPARK_TYPES = {pa.int64(): "bigint", pa.int32(): "int", pa.bool_(): "boolean", pa.string(): "string"}
PARTIAL_SPARK_SCHEMA = ", ".join(
    f"{f.name} array<{_SPARK_TYPES[f.type.value_type]}>" if pa.types.is_list(f.type) else f"{f.name} {_SPARK_TYPES[f.type]}"
    for f in PARTIAL_SCHEMA
)
"""``PARTIAL_SCHEMA`` as a Spark DDL string (the ``mapInArrow`` output type)."""

_SCALARS = [f.name for f in PARTIAL_SCHEMA if not pa.types.is_list(f.type)]  # includes rejected_messages
_ARRAYS = ("occupancy", "multiplicity", "occupancy_scint", "drift_time", "orbit_buckets", "scint_candidates",
           "occupancy_orbits")


def to_partial_row(agg: BatchAggregates) -> pa.RecordBatch:
    """One ``PARTIAL_SCHEMA`` row holding ``agg`` (inverse: ``from_partial_rows``)."""
    values = {name: [getattr(agg, name)] for name in _SCALARS}
    values.update({name: [np.asarray(getattr(agg, name), np.int64).reshape(-1)] for name in _ARRAYS})
    values["event_run"] = [[e[0] for e in agg.run_events]]
    values["event_kind"] = [[e[1] for e in agg.run_events]]
    values["event_ms"] = [[e[2] for e in agg.run_events]]
    values["rejected_details"] = [list(agg.rejected_details)]
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
        agg.rejected_details = list(row["rejected_details"] or [])
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


def split_rows(
    rows: pa.Table | pa.RecordBatch, binning: Binning, buckets: int, refused: list[str] | None = None
) -> pa.RecordBatch:
    """Stage 1 on decoded DAQ rows (pure): their counts and their hits by orbit bucket.

    Args:
        rows: N rows with the columns of ``processor.decode.OUTPUT_SCHEMA``.
        binning: passed to ``reduce_totals``.
        buckets: number of orbit buckets (>= 1); a hit goes to bucket ORBIT_CNT mod ``buckets``.
        refused: ``topic/partition@offset: reason`` of the raw messages the rows' decoding
            refused (``processor.decode.decode_messages``): counted in the totals row.
    Returns:
        ``SPLIT_SCHEMA`` rows: one totals row (bucket -1), then one row per non-empty bucket
        with its hits (``HIT_COLUMNS``, in row order).
    """
    counts = reduce_totals(rows, binning)
    counts.rejected_messages, counts.rejected_details = len(refused or []), list(refused or [])[:REJECTED_KEPT]
    bucket_ids, hit_payloads, totals = [-1], [None], [_to_ipc(to_partial_row(counts))]
    hits = rows.filter(hit_mask(rows)).select(list(HIT_COLUMNS))
    if hits.num_rows:
        bucket = int_column(hits["ORBIT_CNT"], 0) % buckets
        for k in np.unique(bucket):
            bucket_ids.append(int(k))
            hit_payloads.append(_to_ipc(hits.filter(pa.array(bucket == k))))
            totals.append(None)
    return pa.RecordBatch.from_arrays(
        [pa.array(bucket_ids, pa.int32()), pa.array(hit_payloads, pa.binary()), pa.array(totals, pa.binary())],
        schema=SPLIT_SCHEMA,
    )


def reduce_split(split: pa.Table, binning: Binning) -> BatchAggregates | None:
    """Stage 2 (pure): ``SPLIT_SCHEMA`` rows that hold whole orbit buckets -> one aggregate.

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
