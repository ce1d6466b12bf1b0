"""Per-micro-batch outputs of the MAPD-B streaming task (course PDF section 5.2, tasks 1-4).

``aggregate_batch`` runs in Spark: one pass over the micro-batch groups every row by
(chamber, local channel, orbit); that small table is cached and two more Spark jobs
reduce it to the histograms. Only the reduced rows (at most a few hundred) reach the
driver. ``build_message`` (pure) turns them into the results message.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from dtmon.hits import CELLS_PER_CHAMBER, HEAD_HIT, MAX_CHAMBER_CHANNEL, N_CHAMBERS
from dtmon.schema import MULTIPLICITY_EDGES, OCCUPANCY_EDGES, ChamberHistograms, Histogram, ResultsMessage


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

    Arrays: ``occupancy`` (4, 64) hits per chamber and local channel; ``multiplicity``
    (4, 64) orbits per chamber with k = 1..64 distinct active channels (index k-1).
    Times in ms since the epoch.
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


def aggregate_batch(rows: DataFrame) -> BatchAggregates:
    """Reduce one micro-batch of DAQ rows to the task 1-4 outputs, in Spark.

    Args:
        rows: columns of ``processor.kafka_source.SPARK_SCHEMA``; malformed rows have
            HEAD null.
    Returns:
        ``BatchAggregates``. Runs two Spark jobs; the source is scanned once.
    """
    is_hit = F.col("HEAD") == HEAD_HIT
    chamber = chamber_column()
    keyed = rows.select(
        chamber.alias("chamber"),
        F.when(chamber.isNotNull(), F.col("TDC_CHANNEL") % CELLS_PER_CHAMBER).alias("channel"),
        F.when(chamber.isNotNull(), F.col("ORBIT_CNT")).alias("orbit"),
        F.col("HEAD").isNull().cast("long").alias("malformed"),
        F.coalesce(is_hit, F.lit(False)).cast("long").alias("hit"),
        F.when(is_hit, F.col("ORBIT_CNT")).alias("hit_orbit"),
        "produced_ms",
        F.col("synthetic").cast("int").alias("synthetic"),
    )
    groups = (
        keyed.groupBy("chamber", "channel", "orbit")
        .agg(
            F.count(F.lit(1)).alias("rows"),
            F.sum("malformed").alias("malformed"),
            F.sum("hit").alias("hits"),
            F.min("hit_orbit").alias("hit_orbit_min"),
            F.max("hit_orbit").alias("hit_orbit_max"),
            F.min("produced_ms").alias("produced_min"),
            F.max("produced_ms").alias("produced_max"),
            F.max("synthetic").alias("synthetic"),
        )
        .persist()
    )
    try:
        totals = groups.agg(
            F.sum("rows").alias("rows"),
            F.sum("malformed").alias("malformed"),
            F.sum("hits").alias("hits"),
            F.sum(F.when(F.col("chamber").isNull(), F.col("hits"))).alias("hits_outside"),
            F.min("hit_orbit_min").alias("orbit_min"),
            F.max("hit_orbit_max").alias("orbit_max"),
            F.countDistinct("orbit").alias("orbits"),
            F.min("produced_min").alias("produced_min"),
            F.max("produced_max").alias("produced_max"),
            F.max("synthetic").alias("synthetic"),
        ).collect()[0]
        in_chamber = groups.where(F.col("chamber").isNotNull())
        occupancy = in_chamber.groupBy("chamber", "channel").agg(F.sum("hits").alias("n"))
        multiplicity = (
            in_chamber.groupBy("chamber", "orbit")
            .agg(F.count(F.lit(1)).alias("k"))
            .groupBy("chamber", "k")
            .agg(F.count(F.lit(1)).alias("n"))
        )
        histogram_rows = (
            occupancy.select(F.lit("occupancy").alias("kind"), "chamber", F.col("channel").alias("bin"), "n")
            .unionByName(multiplicity.select(F.lit("multiplicity").alias("kind"), "chamber", (F.col("k") - 1).alias("bin"), "n"))
            .collect()
        )
    finally:
        groups.unpersist()

    out = BatchAggregates(
        rows_read=int(totals["rows"] or 0),
        malformed_rows=int(totals["malformed"] or 0),
        hits=int(totals["hits"] or 0),
        hits_outside_chambers=int(totals["hits_outside"] or 0),
        orbit_min=totals["orbit_min"],
        orbit_max=totals["orbit_max"],
        orbits_with_hits=int(totals["orbits"] or 0),
        produced_first_ms=totals["produced_min"],
        produced_last_ms=totals["produced_max"],
        synthetic=bool(totals["synthetic"]),
    )
    for row in histogram_rows:
        target = out.occupancy if row["kind"] == "occupancy" else out.multiplicity
        target[row["chamber"], row["bin"]] = row["n"]
    return out


def build_message(
    batch_id: int, agg: BatchAggregates, *, trigger_interval_s: float, batch_started: float, published: float
) -> ResultsMessage:
    """The results message of one micro-batch (pure).

    Args:
        batch_id: Spark micro-batch id.
        agg: the batch's aggregates.
        trigger_interval_s: the query's trigger interval in s.
        batch_started, published: wall-clock times in epoch s.
    """
    chambers = [
        ChamberHistograms(
            chamber=c,
            hits=int(agg.occupancy[c].sum()),
            occupancy=Histogram(bin_edges=OCCUPANCY_EDGES, bin_counts=agg.occupancy[c].tolist()),
            multiplicity=Histogram(bin_edges=MULTIPLICITY_EDGES, bin_counts=agg.multiplicity[c].tolist()),
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
    )
