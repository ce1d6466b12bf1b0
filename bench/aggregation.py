"""``python -m bench.aggregation``: the per-batch Spark aggregation alone, on a cached SYNTHETIC batch.

Times, in one local Spark session and interleaved (so machine load hits all alike):

* ``current``  - ``processor.histograms.aggregate_batch`` as it is in the working tree
  (since processor v3: observed metrics + shuffle by ORBIT_CNT + one numpy ``mapInArrow``
  pass, every output);
* ``v1``       - the same function at git ``HEAD``, if it differs from the working tree;
* ``count``    - ``batch.count()`` on the cached rows: one trivial job, the floor of any batch;
* ``one-pass`` - the sketch that led to v3: one ``mapInArrow`` pass reducing each
  partition to occupancy counts and per-(chamber, orbit) 64-bit channel masks, then ONE
  Spark job merging them (``bit_or`` of masks per orbit, ``bit_count`` -> multiplicity).
  Tasks 3-4 only. Its occupancy and multiplicity are checked against ``current``.

Also counts the Spark jobs each variant runs per batch.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import numpy as np
import pyarrow as pa
import typer

app = typer.Typer(add_completion=False, help=__doc__, pretty_exceptions_enable=False)

PARTIAL_SCHEMA = "kind int, chamber int, key long, value long"
"""Rows of the one-pass reduction: kind 0 = occupancy (key = local channel, value = hits),
kind 1 = channel mask (key = ORBIT_CNT, value = 64-bit mask of the chamber's active channels)."""


def reduce_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """numpy reduction of one partition's rows to occupancy counts and per-(chamber, orbit) channel masks."""
    occupancy = np.zeros((4, 64), np.int64)
    keys_all, masks_all = [], []
    for batch in batches:
        head = batch.column("HEAD").to_numpy(zero_copy_only=False)
        fpga = batch.column("FPGA").to_numpy(zero_copy_only=False)
        channel = batch.column("TDC_CHANNEL").to_numpy(zero_copy_only=False)
        orbit = batch.column("ORBIT_CNT").to_numpy(zero_copy_only=False)
        ok = (head == 2) & (fpga >= 0) & (fpga <= 1) & (channel >= 0) & (channel <= 127)
        chamber = (fpga[ok].astype(np.int64) * 2 + (channel[ok] >= 64)).astype(np.int64)
        local = (channel[ok] % 64).astype(np.int64)
        np.add.at(occupancy, (chamber, local), 1)
        key = orbit[ok].astype(np.int64) * 4 + chamber
        bits = np.left_shift(np.uint64(1), local.astype(np.uint64))
        order = np.argsort(key, kind="stable")
        uniq, start = np.unique(key[order], return_index=True)
        keys_all.append(uniq)
        masks_all.append(np.bitwise_or.reduceat(bits[order], start) if len(order) else np.zeros(0, np.uint64))
    kinds, chambers, keys, values = [], [], [], []
    ch, ln = np.nonzero(occupancy)
    kinds.append(np.zeros(len(ch), np.int32)); chambers.append(ch.astype(np.int32))
    keys.append(ln.astype(np.int64)); values.append(occupancy[ch, ln])
    if keys_all:
        k = np.concatenate(keys_all); m = np.concatenate(masks_all)
        kinds.append(np.ones(len(k), np.int32)); chambers.append((k % 4).astype(np.int32))
        keys.append(k // 4); values.append(m.view(np.int64))
    yield pa.RecordBatch.from_arrays(
        [pa.array(np.concatenate(kinds)), pa.array(np.concatenate(chambers)), pa.array(np.concatenate(keys)),
         pa.array(np.concatenate(values))], names=["kind", "chamber", "key", "value"])


def one_pass(batch) -> tuple[np.ndarray, np.ndarray]:
    """Occupancy (4, 64) and multiplicity (4, 64) with one mapInArrow pass and one Spark job."""
    from pyspark.sql import functions as F

    partial = batch.mapInArrow(reduce_partition, PARTIAL_SCHEMA)
    merged = partial.groupBy("kind", "chamber", "key").agg(
        F.sum(F.when(F.col("kind") == 0, F.col("value"))).alias("n"), F.bit_or("value").alias("mask"))
    binned = merged.select(
        "kind", "chamber",
        F.when(F.col("kind") == 0, F.col("key")).otherwise(F.bit_count("mask") - 1).alias("bin"),
        F.when(F.col("kind") == 0, F.col("n")).otherwise(F.lit(1)).alias("n"),
    ).groupBy("kind", "chamber", "bin").agg(F.sum("n").alias("n"))
    occupancy = np.zeros((4, 64), np.int64)
    multiplicity = np.zeros((4, 64), np.int64)
    for row in binned.collect():
        (occupancy if row["kind"] == 0 else multiplicity)[row["chamber"], row["bin"]] = row["n"]
    return occupancy, multiplicity


def load_head_version(path: Path):
    """``processor/histograms.py`` at git HEAD as a module, or None if git cannot show it."""
    try:
        text = subprocess.run(["git", "show", "HEAD:processor/histograms.py"], capture_output=True, text=True,
                              check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("histograms_head", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@app.command()
def main(
    rows: Annotated[int, typer.Option(help="SYNTHETIC rows in the cached batch")] = 600_000,
    repeats: Annotated[int, typer.Option(help="timed runs per variant (after one warm-up each)")] = 3,
    master: Annotated[str, typer.Option(help="Spark master")] = "local[*]",
    shuffle_partitions: Annotated[int, typer.Option(help="spark.sql.shuffle.partitions")] = 4,
    out: Annotated[Path, typer.Option(help="JSON output")] = Path("artifacts/bench-aggregation.json"),
) -> None:
    """Time the per-batch aggregation variants on one cached SYNTHETIC batch."""
    from dtmon.settings import load_settings
    from dtmon.synth import generate
    from processor import histograms
    from processor.app import spark_session
    from processor.kafka_source import OUTPUT_SCHEMA

    head = load_head_version(Path("var/bench/histograms_head.py"))
    settings = load_settings(spark_master=master, shuffle_partitions=shuffle_partitions)
    spark = spark_session(settings, app_name="dtmon-aggregation")
    table = generate(rows, seed=2026)
    n = table.num_rows
    extra = {"produced_ms": pa.array(np.full(n, int(time.time() * 1000), np.int64)),
             "synthetic": pa.array(np.ones(n, bool)), "run": pa.array(np.zeros(n, np.int32)),
             "run_event": pa.array(np.zeros(n, np.int8))}
    for field in OUTPUT_SCHEMA:
        if field.name not in table.column_names:
            table = table.append_column(field.name, extra[field.name].cast(field.type))
    batch = spark.createDataFrame(table.select([f.name for f in OUTPUT_SCHEMA]).to_pandas())
    batch = batch.repartition(spark.sparkContext.defaultParallelism).persist()
    batch.count()

    tracker = spark.sparkContext.statusTracker()
    variants = {"current": lambda: histograms.aggregate_batch(batch, settings)
                if "settings" in histograms.aggregate_batch.__code__.co_varnames else histograms.aggregate_batch(batch)}
    if head is not None and head.__file__ and Path(head.__file__).read_text() != Path(histograms.__file__).read_text():
        variants["v1 (git HEAD)"] = lambda: head.aggregate_batch(batch)
    variants["one-pass sketch"] = lambda: one_pass(batch)
    variants["count (1 job, floor)"] = lambda: batch.count()

    def tree_cpu() -> float:  # this process + the JVM + Python workers, s
        from bench.procstats import descendants, parent_map, read_process

        procs = [read_process(pid) for pid in descendants(os.getpid(), parent_map())]
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
    current = results["current"]
    occ, mult = results["one-pass sketch"]
    same = bool(np.array_equal(occ, current.occupancy) and np.array_equal(mult, current.multiplicity))
    report = {
        "synthetic_input": True, "rows": n, "master": master, "shuffle_partitions": shuffle_partitions,
        "command": "python -m bench.aggregation " + " ".join(sys.argv[1:]),
        "loadavg": os.getloadavg(),
        "variants": {k: {"median_s": float(np.median(v)), "runs_s": v, "rows_per_s": n / float(np.median(v)),
                         "median_cpu_s": float(np.median(cpu[k])), "cpu_runs_s": cpu[k],
                         "spark_jobs": jobs[k]} for k, v in times.items()},
        "one_pass_matches_current_tasks_3_4": same,
    }
    for k, v in report["variants"].items():
        print(f"SYNTHETIC {n:,} rows  {k:18s} median {v['median_s']:.2f} s wall ({v['rows_per_s']:,.0f} rows/s), "
              f"{v['median_cpu_s']:.2f} CPU s (JVM + Python), {v['spark_jobs']} Spark jobs")
    print(f"one-pass occupancy/multiplicity identical to current: {same}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    app()
