"""The Spark plan of one micro-batch: one job of one stage (batches of up to
``Settings.single_stage_rows`` DAQ rows, ``decode_reduce_partition``) or of two stages (larger ones,
over all cores) over the source's message rows.

The source yields one row per Kafka message (~10 000 DAQ rows each), so the JVM never
handles a row per hit. Stage 1 (``mapInArrow(decode_partition)``) decodes each
partition's messages straight into Arrow DAQ rows (``processor.decode``), counts rows,
malformed rows, Kafka times, runs and run markers and splits the hits into orbit buckets
(``processor.codec.split_rows``: ORBIT_CNT mod the bucket count). The one shuffle groups
rows by bucket, so each partition holds whole orbits (a muon's chamber hits and its
scintillator hit share the orbit). Stage 2 (``mapInArrow(reduce_partition)``) reduces each
partition with numpy (``processor.codec.reduce_split``, ``processor.reduce``) to a single
small row of partial sums. The driver collects those rows as Arrow and adds them up
(``processor.reduce.merge_aggregates``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession

from dtmon.hits import COLUMNS
from dtmon.settings import Settings
from dtmon.validation import MessageLimits
from dtmon.wire import CONTENT_TYPE_CSV
from processor.codec import (
    PARTIAL_SPARK_SCHEMA,
    SPLIT_SCHEMA,
    SPLIT_SPARK_SCHEMA,
    from_partial_rows,
    reduce_split,
    split_rows,
    to_partial_row,
)
from processor.decode import decode_messages
from processor.message_rows import MESSAGE_SCHEMA
from processor.reduce import BatchAggregates, Binning, merge_aggregates

def decode_partition(binning: Binning, buckets: int, limits: MessageLimits | None = None):
    """Stage 1's ``mapInArrow`` function: record batches of source rows (``MESSAGE_SCHEMA``)
    -> ``SPLIT_SCHEMA`` record batches (``decode_messages`` with the size caps ``limits``, then
    ``split_rows``, which carries the refused messages in its totals row)."""

    def decode(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            if batch.num_rows:
                refused: list[str] = []
                yield split_rows(decode_messages(batch, limits, refused), binning, buckets, refused)

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


def decode_reduce_partition(binning: Binning, limits: MessageLimits | None = None):
    """The one-stage plan's ``mapInArrow`` function: all source record batches of the whole
    micro-batch (one partition, so whole orbits) -> one ``PARTIAL_SCHEMA`` row: stage 1's
    decode and split into a single bucket, then stage 2's reduce, in one task."""
    decode, reduce = decode_partition(binning, 1, limits), reduce_partition(binning)

    def decode_reduce(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        return reduce(decode(batches))

    return decode_reduce


def aggregate_batch(messages: DataFrame, settings: Settings | None = None, single_stage: bool = False) -> BatchAggregates:
    """Reduce one micro-batch of raw-topic messages to the task 1-4 outputs and the extras, in Spark.

    With ``single_stage`` (``processor.app``: after a batch of fewer than ``settings.single_stage_rows``):
    ``coalesce(1).mapInArrow(decode_reduce_partition)``, one task and no shuffle, whose fixed cost
    (shuffle files, a second stage of tasks and Python workers) is most of a small batch's time and
    about a third of the processor's CPU at 1 M rows/s. Otherwise one Spark job of two stages
    (see the module docstring):
    ``mapInArrow(decode_partition)`` decodes every message to DAQ rows, counts them and
    splits the hits into ``settings.shuffle_partitions`` x ``BUCKETS_PER_PARTITION`` orbit
    buckets; ``repartition(settings.shuffle_partitions, "bucket")`` puts whole orbits in
    each partition; ``mapInArrow(reduce_partition)`` reduces each partition to one row;
    the driver merges the rows (``merge_aggregates``). Same result as ``reduce_rows`` on
    the whole batch's decoded rows.

    Args:
        messages: source rows, columns of ``processor.message_rows.SPARK_SCHEMA`` (one row
            per Kafka message).
        settings: scintillator channel, drift-time range and bins, max orbit gap, shuffle
            partitions (default: ``Settings()``).
        single_stage: run the one-stage plan (same result).
    Returns:
        ``BatchAggregates`` of the whole micro-batch.
    Raises:
        ValueError: an empty drift-time range in the settings.
    """
    s = settings or Settings()
    binning = Binning.from_settings(s)
    limits = MessageLimits(max_bytes=s.max_message_bytes, max_rows=s.max_message_rows)
    if single_stage:
        partials = messages.coalesce(1).mapInArrow(decode_reduce_partition(binning, limits), PARTIAL_SPARK_SCHEMA)
    else:
        buckets = s.shuffle_partitions * BUCKETS_PER_PARTITION
        split = messages.mapInArrow(decode_partition(binning, buckets, limits), SPLIT_SPARK_SCHEMA)
        partials = split.repartition(s.shuffle_partitions, "bucket").mapInArrow(reduce_partition(binning), PARTIAL_SPARK_SCHEMA)
    return merge_aggregates(from_partial_rows(partials.toArrow(), binning), binning)


def warm_up(spark: SparkSession, settings: Settings | None = None) -> BatchAggregates:
    """Run the one-stage plan's ``mapInArrow`` once on two header-only CSV messages (no DAQ rows), in
    two tasks; the (empty) aggregates are returned and discarded by the caller.

    Spark starts its Python worker daemon and two task workers (each importing numpy, pyarrow and the
    decode and reduce modules, ~1 CPU s) and plans and code-generates ``mapInArrow`` on first use.
    Run in a thread while the streaming query starts, the first micro-batch finds the workers idle
    (``spark.python.worker.reuse``, Spark's default): its one task needs two at once, one reading the
    source and one decoding. Measured in docs/performance.md (start-up).
    """
    s = settings or Settings()
    binning = Binning.from_settings(s)
    header = (",".join(COLUMNS) + "\n").encode()
    messages = [{"topic": "dtmon-warm-up", "partition": 0, "offset": offset, "produced_ms": 0, "content_type": CONTENT_TYPE_CSV,
                 "synthetic": True, "run": None, "value": header} for offset in range(2)]  # fmt: skip
    rows = spark.createDataFrame(pa.Table.from_pylist(messages, schema=MESSAGE_SCHEMA))  # one partition per row
    partials = rows.mapInArrow(decode_reduce_partition(binning), PARTIAL_SPARK_SCHEMA)
    return merge_aggregates(from_partial_rows(partials.toArrow(), binning), binning)
