"""``python -m bench.profile``: where the processor's time goes, piece by piece, on SYNTHETIC rows.

1. **Source read and decode**: ``processor.kafka_source.read_range`` (the source's Python
   worker: one row per Kafka message) and ``decode_messages`` (the first stage of
   ``aggregate_batch``) over a filled partition under cProfile, in this process: DAQ rows/s
   and the top functions (Kafka fetch vs Arrow/CSV decode), for the arrow and the csv-line wire.
2. **Micro-batch** in a real local Spark streaming query on the same source, with batches
   capped to the same rows: Spark's own ``durationMs`` breakdown (latestOffset, addBatch,
   walCommit, commitOffsets, ...) and, inside ``addBatch``, the source scan
   (``persist`` + ``count``) separated from ``processor.plan.aggregate_batch`` on the
   cached rows, plus the number of Spark jobs and stages per batch.

A fresh Tansu broker is started on a free loopback port and stopped at the end.
"""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from dtmon.kafka import KafkaClients
from dtmon.services import free_port, start_broker
from dtmon.wire import CONTENT_TYPE_ARROW, CONTENT_TYPE_CSV, HEADER_CONTENT_TYPE, HEADER_SYNTHETIC, encode_arrow

app = typer.Typer(add_completion=False, help=__doc__, pretty_exceptions_enable=False)


def fill(bootstrap: str, topic: str, table, wire: str, rows_per_message: int = 10_000) -> int:
    """Create ``topic`` (1 partition) and send ``table`` in the ``wire`` format; returns messages sent."""
    from dtmon.hits import encode_csv

    clients = KafkaClients(bootstrap)
    clients.ensure_topic(topic, 1, timeout=30)
    producer = clients.producer(linger_ms=20, acks="all", compression_type="none" if wire == "arrow" else "lz4",
                                queue_buffering_max_messages=1_000_000)
    headers_arrow = [(HEADER_CONTENT_TYPE, CONTENT_TYPE_ARROW.encode()), (HEADER_SYNTHETIC, b"1")]
    headers_csv = [(HEADER_CONTENT_TYPE, CONTENT_TYPE_CSV.encode()), (HEADER_SYNTHETIC, b"1")]
    sent = 0
    if wire == "arrow":
        for start in range(0, table.num_rows, rows_per_message):
            producer.produce(topic, encode_arrow(table.slice(start, rows_per_message)), headers=headers_arrow)
            sent += 1
    else:
        lines = encode_csv(table).split(b"\n")[1:]
        for line in lines:
            if not line:
                continue
            while True:
                try:
                    producer.produce(topic, line, headers=headers_csv)
                    break
                except BufferError:
                    producer.poll(0.1)
            sent += 1
    assert producer.flush(60) == 0
    return sent


def profile_source(bootstrap: str, topic: str, messages: int, rows: int) -> dict:
    """Read the whole partition with ``read_range`` and decode it under cProfile; DAQ rows/s and top functions."""
    from dtmon.kafka import KafkaClients
    from processor.decode import decode_messages
    from processor.kafka_source import KafkaRange, read_range

    profiler = cProfile.Profile()
    wall, cpu = time.perf_counter(), time.process_time()
    profiler.enable()
    got = sum(decode_messages(batch).num_rows for batch in read_range(KafkaClients(bootstrap), KafkaRange(topic, 0, 0, messages)))
    profiler.disable()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(12)
    return {"rows": got, "expected_rows": rows, "wall_s": wall, "cpu_s": cpu, "rows_per_s": got / wall,
            "top_tottime": out.getvalue()}


def profile_batches(bootstrap: str, topic: str, cap_messages: int, batches_wanted: int, master: str,
                    shuffle_partitions: int, tmp: Path) -> dict:
    """Run a local streaming query over ``topic``; per batch: Spark durationMs, scan and aggregation times, jobs."""
    from pyspark.sql.streaming import StreamingQueryListener

    from dtmon.settings import load_settings
    from processor.session import spark_session
    from processor.plan import aggregate_batch
    from processor.kafka_source import SOURCE_NAME, kafka_options

    settings = load_settings(spark_master=master, shuffle_partitions=shuffle_partitions)
    t0 = time.perf_counter()
    spark = spark_session(settings, app_name="dtmon-profile")
    session_s = time.perf_counter() - t0
    progress: list[dict] = []

    class Listener(StreamingQueryListener):
        def onQueryStarted(self, event): pass
        def onQueryIdle(self, event): pass
        def onQueryTerminated(self, event): pass

        def onQueryProgress(self, event):
            p = event.progress
            if p.numInputRows:
                progress.append({"batch": p.batchId, "messages": p.numInputRows, "duration_ms": dict(p.durationMs)})

    spark.streams.addListener(Listener())
    tracker = spark.sparkContext.statusTracker()
    inner: list[dict] = []
    group: dict[str, str] = {}  # Structured Streaming runs a query's jobs in job group = its runId

    def jobs() -> list[int]:
        return list(tracker.getJobIdsForGroup(group.get("id")))

    def process(batch, batch_id):
        jobs_before = len(jobs())
        t_a = time.perf_counter()
        batch.persist()
        n = batch.count()
        t_b = time.perf_counter()
        try:
            aggregate_batch(batch, settings)
        except TypeError:  # older signature
            aggregate_batch(batch)
        t_c = time.perf_counter()
        batch.unpersist()
        inner.append({"batch": batch_id, "messages": n, "scan_s": t_b - t_a, "aggregate_s": t_c - t_b,
                      "jobs": len(jobs()) - jobs_before})

    query = (
        spark.readStream.format(SOURCE_NAME).options(**kafka_options(KafkaClients(bootstrap).config)).option("subscribe", topic)
        .option("startingOffsets", "earliest").option("maxOffsetsPerTrigger", str(cap_messages))
        .option("minPartitions", str(spark.sparkContext.defaultParallelism)).load()
        .writeStream.foreachBatch(process).trigger(processingTime="0 seconds")
        .option("checkpointLocation", str(tmp / f"checkpoint-{topic}")).start()
    )
    group["id"] = str(query.runId)
    deadline = time.monotonic() + 900
    while len(progress) < batches_wanted and time.monotonic() < deadline and query.isActive:
        time.sleep(0.2)
    query.stop()
    stages = _stage_count(tracker, jobs())
    spark.stop()
    steady = progress[1:]
    keys = sorted({k for p in steady for k in p["duration_ms"]})
    return {
        "session_start_s": session_s,
        "first_batch_ms": progress[0]["duration_ms"] if progress else None,
        "steady_batches": len(steady),
        "messages_per_batch": float(np.mean([p["messages"] for p in steady])) if steady else None,
        "mean_duration_ms": {k: float(np.mean([p["duration_ms"].get(k, 0) for p in steady])) for k in keys},
        "mean_scan_s": float(np.mean([i["scan_s"] for i in inner[1:]])) if len(inner) > 1 else None,
        "mean_aggregate_s": float(np.mean([i["aggregate_s"] for i in inner[1:]])) if len(inner) > 1 else None,
        "jobs_per_batch": [i["jobs"] for i in inner],
        "stages_total": stages,
        "batches_total": len(progress),
    }


def _stage_count(tracker, job_ids: list[int]) -> int:
    seen = set()
    for job in job_ids:
        info = tracker.getJobInfo(job)
        if info is not None:
            seen.update(info.stageIds)
    return len(seen)


@app.command()
def main(
    rows: Annotated[int, typer.Option(help="SYNTHETIC rows per wire format")] = 1_000_000,
    batch_rows: Annotated[int, typer.Option(help="rows per micro-batch in the Spark part")] = 200_000,
    batches: Annotated[int, typer.Option(help="micro-batches to time (the first is warm-up)")] = 5,
    wires: Annotated[str, typer.Option(help="arrow,csv-line")] = "arrow,csv-line",
    master: Annotated[str, typer.Option(help="Spark master")] = "local[*]",
    shuffle_partitions: Annotated[int, typer.Option(help="spark.sql.shuffle.partitions")] = 4,
    spark_part: Annotated[bool, typer.Option("--spark/--no-spark", help="also time micro-batches in Spark")] = True,
    out: Annotated[Path, typer.Option(help="JSON output")] = Path("artifacts/bench-profile.json"),
    workdir: Annotated[Path, typer.Option(help="checkpoints, broker log")] = Path("var/bench/profile"),
) -> None:
    """Profile the processor's source read and micro-batch on SYNTHETIC rows (input labelled SYNTHETIC)."""
    from dtmon.synth import generate

    workdir.mkdir(parents=True, exist_ok=True)
    broker = start_broker("127.0.0.1", free_port(), workdir / "broker.log")
    table = generate(rows, seed=2026)
    report: dict = {"synthetic_input": True, "rows": rows, "command": "python -m bench.profile " + " ".join(sys.argv[1:])}
    try:
        for wire in [w for w in wires.split(",") if w]:
            topic = f"profile-{wire}-{int(time.time())}"
            messages = fill(broker.address, topic, table, wire)
            source = profile_source(broker.address, topic, messages, rows)
            print(f"\n== SYNTHETIC {wire}: read_range + decode_messages {source['rows']:,} rows in {source['wall_s']:.2f} s wall / "
                  f"{source['cpu_s']:.2f} s CPU = {source['rows_per_s']:,.0f} rows/s (one Python process)")
            print(source["top_tottime"])
            entry = {"messages": messages, "source": source}
            if spark_part:
                cap = max(1, batch_rows // (10_000 if wire == "arrow" else 1))
                entry["spark"] = profile_batches(broker.address, topic, cap, batches, master, shuffle_partitions, workdir)
                print(json.dumps(entry["spark"], indent=2))
            report[wire] = entry
    finally:
        broker.stop()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"JSON: {out}")


if __name__ == "__main__":
    app()
