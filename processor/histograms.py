"""Per-micro-batch outputs: the MAPD-B streaming task (course PDF section 5.2, tasks 1-4),
the extras E1/E2 (section 5.2.4: scintillator-tagged occupancy, drift time), detector time
and run markers.

``aggregate_batch`` runs in Spark: one pass over the micro-batch groups every row by
(chamber, local channel, orbit, scintillator flag, hit time, run, run event); non-hit rows
collapse into a handful of groups, hits stay about one group each. That table is cached;
one Spark job reduces it to the totals, one more (a union) to every histogram: occupancy,
multiplicity, the per-orbit earliest scintillator time broadcast-joined back to the
chamber hits for E1 and E2, and the hit orbits per ``max_orbit_gap`` bucket for the
detector time. Only the reduced rows (a few hundred) reach the driver.
``build_message`` (pure) turns them into the results message.

Orbits are matched within the micro-batch: the DAQ interleaves the two FPGAs' words in
blocks, so an orbit split across two micro-batches loses its scintillator tag for the
part that lands in the other batch (its hits then count only in the untagged outputs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from dtmon.hits import (
    BX_NS,
    BX_PER_ORBIT,
    CELLS_PER_CHAMBER,
    HEAD_HIT,
    MAX_CHAMBER_CHANNEL,
    N_CHAMBERS,
    TDC_PER_BX,
)
from dtmon.schema import (
    MULTIPLICITY_EDGES,
    OCCUPANCY_EDGES,
    SCINT_CHAMBER_OFFSET_NS,
    ChamberHistograms,
    ChannelHealth,
    Histogram,
    ResultsMessage,
    Scintillator,
)
from dtmon.settings import Settings
from processor.kafka_source import RUN_DATA
from processor.state import RunStatus

ORBIT_S = BX_PER_ORBIT * BX_NS * 1e-9
"""One orbit in s: 3564 BX x 25 ns = 89.1 us."""


def hit_time_column() -> Column:
    """Spark expression of the absolute hit time in ns (double), the twin of ``dtmon.hits.hit_time_ns``.

    ``25 * (ORBIT_CNT * 3564 + BX_COUNTER + TDC_MEAS / 30)`` (PDF section 4.2.4, ABSOLUTETIME);
    the integer part is exact in 64 bits, so the result equals numpy's bit for bit.
    """
    return F.lit(BX_NS) * (F.col("ORBIT_CNT") * BX_PER_ORBIT + F.col("BX_COUNTER") + F.col("TDC_MEAS") / TDC_PER_BX)


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


def chamber_column() -> Column:
    """Spark expression of the chamber (0-3) of a hit, null for anything else.

    Same map as ``dtmon.hits.chamber_of`` (PDF section 4.2.2): chamber = 2*FPGA + (channel >= 64)
    for HEAD == 2, FPGA 0/1, TDC_CHANNEL 0-127.
    """
    in_chamber = (
        (F.col("HEAD") == HEAD_HIT)
        & F.col("FPGA").between(0, 1)
        & F.col("TDC_CHANNEL").between(0, MAX_CHAMBER_CHANNEL)
    )
    return F.when(in_chamber, F.col("FPGA").cast("int") * 2 + (F.col("TDC_CHANNEL") >= CELLS_PER_CHAMBER).cast("int"))


@dataclass
class BatchAggregates:
    """What one micro-batch reduces to, before it becomes a message.

    Arrays: ``occupancy`` and ``occupancy_scint`` (4, 64) hits per chamber and local
    channel (all orbits / orbits with a scintillator hit); ``multiplicity`` (4, 64) orbits
    per chamber with k = 1..64 distinct active channels (index k-1); ``drift_time``
    (4, len(drift_edges) - 1) hits per DRIFTIME bin, ``drift_edges`` in ns.
    Times in ms since the epoch. ``run_events``: (run, event, Kafka ms) of the control
    messages in the batch, event ``kafka_source.RUN_START`` or ``RUN_END``.
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
    occupancy: np.ndarray = field(default_factory=lambda: np.zeros((N_CHAMBERS, CELLS_PER_CHAMBER), np.int64))
    multiplicity: np.ndarray = field(default_factory=lambda: np.zeros((N_CHAMBERS, CELLS_PER_CHAMBER), np.int64))
    occupancy_scint: np.ndarray = field(default_factory=lambda: np.zeros((N_CHAMBERS, CELLS_PER_CHAMBER), np.int64))
    drift_edges: list[float] = field(default_factory=lambda: drift_time_edges(-200.0, 600.0, 5.0))
    drift_time: np.ndarray | None = None
    scintillator: tuple[int, int] = (1, 128)
    orbits_with_scintillator: int = 0
    detector_orbits: int = 0
    orbit_jumps: int = 0
    run: int | None = None
    run_events: list[tuple[int | None, int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.drift_time is None:
            self.drift_time = np.zeros((N_CHAMBERS, len(self.drift_edges) - 1), np.int64)

    @property
    def detector_time_s(self) -> float | None:
        """Detector time spanned by the hit orbits in s (``detector_orbits`` x 89.1 us); None without hits."""
        return self.detector_orbits * ORBIT_S if self.detector_orbits else None


def aggregate_batch(rows: DataFrame, settings: Settings | None = None) -> BatchAggregates:
    """Reduce one micro-batch of DAQ rows to the task 1-4 outputs and the extras, in Spark.

    Extras (course PDF 5.2.4): the scintillator is the hit with HEAD 2, FPGA
    ``settings.scint_fpga``, TDC_CHANNEL ``settings.scint_channel``; its earliest time per
    orbit is t_scint. E1 = occupancy of chamber hits in orbits with a scintillator hit;
    E2 = DRIFTIME = t_hit - t_scint + SCINT_CHAMBER_OFFSET_NS[chamber] for those hits,
    histogrammed in ``drift_time_edges(...)`` bins; values outside the range are dropped
    (not counted anywhere). Detector time: ``detector_span`` of all hit orbits (HEAD 2)
    with ``settings.max_orbit_gap``.

    Args:
        rows: columns of ``processor.kafka_source.SPARK_SCHEMA``; malformed rows have HEAD
            null and run_event 0, control rows have run_event 1 or 2.
        settings: scintillator channel, drift-time range and bins, max orbit gap
            (default: ``Settings()``).
    Returns:
        ``BatchAggregates``. Runs two Spark jobs (totals, histograms); the source is scanned once.
    Raises:
        ValueError: an empty drift-time range in the settings.
    """
    s = settings or Settings()
    edges = drift_time_edges(s.drift_time_min_ns, s.drift_time_max_ns, s.drift_time_bin_ns)
    keyed = _keyed_rows(rows, s.scint_fpga, s.scint_channel).persist()
    # per hit orbit: a bit mask of the active local channels of each chamber, and the
    # earliest scintillator time; the one shuffle of the hits (cached: three branches use it)
    bit = F.expr("shiftleft(CAST(1 AS BIGINT), channel)")
    per_orbit = (
        keyed.where(F.col("orbit").isNotNull())
        .groupBy("orbit")
        .agg(
            *[F.bit_or(F.when(F.col("chamber") == c, bit)).alias(f"mask{c}") for c in range(N_CHAMBERS)],
            F.min(F.when(F.col("scint"), F.col("t_ns"))).alias("t_scint"),
        )
        .persist()
    )
    try:
        totals = _totals(keyed).collect()[0]
        histogram_rows = _histograms(keyed, per_orbit, edges, s.drift_time_bin_ns, s.max_orbit_gap).collect()
    finally:
        per_orbit.unpersist()
        keyed.unpersist()

    per_bucket = {k: {r["bin"]: r["n"] for r in histogram_rows if r["kind"] == k} for k in BUCKET_STATS}
    orbits, jumps = detector_span(
        np.array([(lo, per_bucket["orbit_hi"][b]) for b, lo in per_bucket["orbit_lo"].items()], np.int64).reshape(-1, 2),
        s.max_orbit_gap,
    )
    out = BatchAggregates(
        rows_read=int(totals["rows"]),
        malformed_rows=int(totals["malformed"]),
        hits=int(totals["hits"]),
        hits_outside_chambers=int(totals["hits_outside"]),
        orbit_min=totals["orbit_min"],
        orbit_max=totals["orbit_max"],
        orbits_with_hits=sum(per_bucket["chamber_orbits"].values()),
        produced_first_ms=totals["produced_min"],
        produced_last_ms=totals["produced_max"],
        synthetic=bool(totals["synthetic"]),
        drift_edges=edges,
        scintillator=(s.scint_fpga, s.scint_channel),
        orbits_with_scintillator=sum(per_bucket["scint_orbits"].values()),
        detector_orbits=orbits,
        orbit_jumps=jumps,
        run=None if totals["newest"] is None else totals["newest"]["run"],
        run_events=[(e["run"], e["run_event"], e["produced_ms"]) for e in totals["events"]],
    )
    targets = {
        "occupancy": out.occupancy,
        "multiplicity": out.multiplicity,
        "occupancy_scint": out.occupancy_scint,
        "drift_time": out.drift_time,
    }
    for row in histogram_rows:
        if row["kind"] in targets:
            targets[row["kind"]][row["chamber"], row["bin"]] = row["n"]
    return out


def _keyed_rows(rows: DataFrame, scint_fpga: int, scint_channel: int) -> DataFrame:
    """One row per source row: chamber, local channel (chamber hits), orbit (hits), scint
    flag, t_ns (chamber and scintillator hits), plus run and bookkeeping columns."""
    is_hit = F.col("HEAD") == HEAD_HIT
    is_scint = F.coalesce(is_hit & (F.col("FPGA") == scint_fpga) & (F.col("TDC_CHANNEL") == scint_channel), F.lit(False))
    chamber = chamber_column()
    return rows.select(
        chamber.alias("chamber"),
        F.when(chamber.isNotNull(), F.col("TDC_CHANNEL") % CELLS_PER_CHAMBER).alias("channel"),
        F.when(is_hit, F.col("ORBIT_CNT")).alias("orbit"),
        is_scint.alias("scint"),
        F.when(chamber.isNotNull() | is_scint, hit_time_column()).alias("t_ns"),
        "HEAD",
        "run",
        "run_event",
        "produced_ms",
        "synthetic",
    )


def _totals(keyed: DataFrame) -> DataFrame:
    """One row: counts, orbit range, Kafka time range, newest run and the run markers."""
    is_data = F.col("run_event") == RUN_DATA
    return keyed.agg(
        F.count(F.when(is_data, 1)).alias("rows"),
        F.count(F.when(F.col("HEAD").isNull() & is_data, 1)).alias("malformed"),
        F.count("orbit").alias("hits"),
        F.count(F.when(F.col("chamber").isNull(), F.col("orbit"))).alias("hits_outside"),
        F.min("orbit").alias("orbit_min"),
        F.max("orbit").alias("orbit_max"),
        F.min("produced_ms").alias("produced_min"),
        F.max("produced_ms").alias("produced_max"),
        F.max(F.col("synthetic").cast("int")).alias("synthetic"),
        F.max(F.when(F.col("run").isNotNull(), F.struct("produced_ms", "run"))).alias("newest"),
        F.collect_list(F.when(~is_data, F.struct("run", "run_event", "produced_ms"))).alias("events"),
    )


BUCKET_STATS = ("orbit_lo", "orbit_hi", "chamber_orbits", "scint_orbits")
"""Per orbit bucket (``orbit div max_gap``): lowest and highest hit orbit, orbits with
chamber hits, orbits with a scintillator hit."""


def _histograms(keyed: DataFrame, per_orbit: DataFrame, edges: list[float], bin_ns: float, max_gap: int) -> DataFrame:
    """All histograms as rows (kind, chamber, bin, n), one union (a few hundred rows).

    Kinds occupancy, multiplicity (bin k-1), occupancy_scint, drift_time, and the
    ``BUCKET_STATS`` with bin = bucket and chamber null.
    """

    def histogram(kind: str, frame: DataFrame, bin_col: Column) -> DataFrame:
        return (
            frame.groupBy(F.col("chamber").cast("int").alias("chamber"), bin_col.cast("long").alias("bin"))
            .agg(F.count(F.lit(1)).alias("n"))
            .select(F.lit(kind).alias("kind"), "chamber", "bin", "n")
        )

    hits = keyed.where(F.col("chamber").isNotNull())
    multiplicity = per_orbit.select(
        F.inline(F.array(*[F.struct(F.lit(c).alias("chamber"), F.bit_count(f"mask{c}").alias("k")) for c in range(N_CHAMBERS)]))
    ).where(F.col("k") > 0)
    scint_times = F.broadcast(per_orbit.where(F.col("t_scint").isNotNull()).select("orbit", "t_scint"))
    tagged = hits.join(scint_times, "orbit")
    offset = F.array(*[F.lit(o) for o in SCINT_CHAMBER_OFFSET_NS])[F.col("chamber")]
    drift_bin = F.floor((F.col("t_ns") - F.col("t_scint") + offset - edges[0]) / bin_ns)
    drift = tagged.select("chamber", drift_bin.alias("b")).where(F.col("b").between(0, len(edges) - 2))
    def bucket_row(stat: str) -> Column:
        return F.struct(
            F.lit(stat).alias("kind"), F.lit(None).cast("int").alias("chamber"), F.col("bucket").alias("bin"), F.col(stat).alias("n")
        )

    any_chamber = F.coalesce(*[F.col(f"mask{c}") for c in range(N_CHAMBERS)]).isNotNull()
    buckets = (
        per_orbit.groupBy(F.expr(f"orbit div {max_gap}").alias("bucket"))
        .agg(
            F.min("orbit").alias("orbit_lo"),
            F.max("orbit").alias("orbit_hi"),
            F.count(F.when(any_chamber, 1)).alias("chamber_orbits"),
            F.count("t_scint").alias("scint_orbits"),
        )
        .select(F.inline(F.array(*[bucket_row(k) for k in BUCKET_STATS])))
    )
    return (
        histogram("occupancy", hits, F.col("channel"))
        .unionByName(histogram("multiplicity", multiplicity, F.col("k") - 1))
        .unionByName(histogram("occupancy_scint", tagged, F.col("channel")))
        .unionByName(histogram("drift_time", drift, F.col("b")))
        .unionByName(buckets)
    )


def build_message(
    batch_id: int,
    agg: BatchAggregates,
    *,
    trigger_interval_s: float,
    batch_started: float,
    published: float,
    health: ChannelHealth | None = None,
    run: RunStatus | None = None,
) -> ResultsMessage:
    """The results message (version ``dtmon.schema.RESULTS_VERSION``) of one micro-batch (pure).

    Args:
        batch_id: Spark micro-batch id.
        agg: the batch's aggregates.
        trigger_interval_s: the query's trigger interval in s.
        batch_started, published: wall-clock times in epoch s.
        health: dead/noisy channels from ``processor.state.ChannelHealthTracker``.
        run: the run fields from ``processor.state.RunTracker``.
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
        scintillator=Scintillator(fpga=agg.scintillator[0], channel=agg.scintillator[1]),
        orbits_with_scintillator=agg.orbits_with_scintillator,
        channel_health=health,
        run=run.run,
        run_state=run.state,
        run_started=run.started,
    )
