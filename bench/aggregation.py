"""``python -m bench.aggregation``: the per-batch Spark aggregation alone, on a cached SYNTHETIC batch.

The batch is what the source yields: one row per Kafka message (``processor.kafka_source.
MESSAGE_SCHEMA``), each an Arrow IPC message of ``--rows-per-message`` DAQ rows, as the
producer sends them. Times, in one local Spark session and interleaved (so machine load
hits both alike):

* ``aggregate_batch`` - ``processor.plan.aggregate_batch``: every output, one Spark job;
* ``aggregate_batch one stage`` - the same with ``single_stage`` (one task, no shuffle);
* ``count``           - ``batch.count()`` on the cached rows: one trivial job, the floor of any batch;

then, after Spark stopped, the pure functions on one core: ``decode_messages`` (Arrow IPC + zstd)
and ``reduce_rows`` (every histogram, numpy), the per-core ceiling of a batch's work.

Also counts the Spark jobs each variant runs per batch and checks the result against the
pure reference ``processor.reduce.reduce_rows`` on the same rows.
"""

from __future__ import annotations

import os
import sys
import json
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import pyarrow as pa
import typer

app = typer.Typer(add_completion=False, help=__doc__, pretty_exceptions_enable=False)


def message_table(rows: pa.Table, rows_per_message: int, produced_ms: int) -> pa.Table:
    """Source rows (``MESSAGE_SCHEMA``) carrying ``rows`` (``HIT_SCHEMA``) as SYNTHETIC Arrow messages."""
    from dtmon.wire import CONTENT_TYPE_ARROW, encode_arrow
    from processor.message_rows import MESSAGE_SCHEMA

    messages = [
        {"topic": "bench", "partition": 0, "offset": i, "produced_ms": produced_ms, "content_type": CONTENT_TYPE_ARROW,
         "synthetic": True, "run": 0, "value": encode_arrow(rows.slice(start, rows_per_message))}
        for i, start in enumerate(range(0, rows.num_rows, rows_per_message))
    ]
    return pa.Table.from_pylist(messages, MESSAGE_SCHEMA)


@app.command()
def main(
    rows: Annotated[int, typer.Option(help="SYNTHETIC rows in the cached batch")] = 600_000,
    rows_per_message: Annotated[int, typer.Option(help="DAQ rows per Kafka message")] = 10_000,
    repeats: Annotated[int, typer.Option(help="timed runs per variant (after one warm-up each)")] = 5,
    master: Annotated[str, typer.Option(help="Spark master")] = "local[*]",
    shuffle_partitions: Annotated[int, typer.Option(help="spark.sql.shuffle.partitions")] = 2,
    out: Annotated[Path, typer.Option(help="JSON output")] = Path("artifacts/bench-aggregation.json"),
) -> None:
    """Time the per-batch aggregation on one cached SYNTHETIC batch."""
    from bench.procstats import read_process, tree
    from dtmon.supervisor import process_parents
    from dtmon.settings import load_settings
    from dtmon.synth import generate
    from processor.session import spark_session
    from processor.plan import aggregate_batch
    from processor.reduce import Binning, reduce_rows
    from processor.decode import decode_messages
    from processor.message_rows import SPARK_SCHEMA

    settings = load_settings(spark_master=master, shuffle_partitions=shuffle_partitions)
    spark = spark_session(settings, app_name="dtmon-aggregation")
    table = generate(rows, seed=2026)
    messages = message_table(table, rows_per_message, int(time.time() * 1000))
    batch = spark.createDataFrame(messages, schema=SPARK_SCHEMA)
    batch = batch.repartition(spark.sparkContext.defaultParallelism).persist()
    batch.count()

    tracker = spark.sparkContext.statusTracker()
    variants = {"aggregate_batch": lambda: aggregate_batch(batch, settings),
                "aggregate_batch one stage": lambda: aggregate_batch(batch, settings, single_stage=True),
                "count (1 job, floor)": lambda: batch.count()}

    def tree_cpu() -> float:  # this process + the JVM + Python workers, s
        procs = [read_process(pid) for pid in tree(os.getpid(), process_parents())]
        return sum(p.cpu_s for p in procs if p is not None)

    times: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    jobs: dict[str, int] = {}
    results = {}
    for name, run in variants.items():
        spark.sparkContext.setJobGroup(name, name)
        results[name] = run()  # warm-up
        jobs[name] = len(tracker.getJobIdsForGroup(name))
    for _ in range(repeats):
        for name, run in variants.items():
            t0, c0 = time.perf_counter(), tree_cpu()
            run()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(tree_cpu() - c0)
    spark.stop()
    # the pure functions on one core, no Spark: the ceiling of the per-core work of a batch
    binning = Binning.from_settings(settings)
    decoded = pa.Table.from_batches([decode_messages(messages)])
    pure: dict[str, list[float]] = {"decode_messages (Arrow IPC + zstd, one core)": [], "reduce_rows (numpy, one core)": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        decode_messages(messages)
        t1 = time.perf_counter()
        reduce_rows(decoded, binning)
        pure["decode_messages (Arrow IPC + zstd, one core)"].append(t1 - t0)
        pure["reduce_rows (numpy, one core)"].append(time.perf_counter() - t1)
    reference = reduce_rows(decoded, binning)
    same = all(bool(got.rows_read == reference.rows_read and all(
        np.array_equal(getattr(got, k), getattr(reference, k)) for k in ("occupancy", "multiplicity", "occupancy_scint", "drift_time")))
        for got in (results["aggregate_batch"], results["aggregate_batch one stage"]))
    report = {
        "synthetic_input": True, "rows": table.num_rows, "messages": messages.num_rows, "master": master,
        "shuffle_partitions": shuffle_partitions, "command": "python -m bench.aggregation " + " ".join(sys.argv[1:]),
        "loadavg": os.getloadavg(),
        "variants": {k: {"median_s": float(np.median(v)), "runs_s": v, "rows_per_s": table.num_rows / float(np.median(v)),
                         "median_cpu_s": float(np.median(cpu[k])), "cpu_runs_s": cpu[k],
                         "spark_jobs": jobs[k]} for k, v in times.items()},
        "matches_reduce_rows": same,
        "pure_one_core": {k: {"median_s": float(np.median(v)), "runs_s": v, "rows_per_s": table.num_rows / float(np.median(v))}
                          for k, v in pure.items()},
    }
    for k, v in report["variants"].items():
        print(f"SYNTHETIC {table.num_rows:,} rows in {messages.num_rows} messages  {k:20s} median {v['median_s']:.2f} s wall "
              f"({v['rows_per_s']:,.0f} rows/s), {v['median_cpu_s']:.2f} CPU s (JVM + Python), {v['spark_jobs']} Spark jobs")
    for k, v in report["pure_one_core"].items():
        print(f"SYNTHETIC {table.num_rows:,} rows  {k:44s} median {v['median_s']:.3f} s ({v['rows_per_s']:,.0f} rows/s)")
    print(f"aggregate_batch (both plans) identical to reduce_rows: {same}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    app()
