"""Producer benchmark: rows/s at ``--rate 0`` (local files, moto S3, CSV-line baseline) and pacing accuracy.

Everything runs on this machine on loopback: a real Tansu broker and a real moto S3
server (dtmon.services), and the ``producer`` console script as a child process per
scenario (its CPU time and peak RSS are taken from the child's rusage).

Input is SYNTHETIC: files from the generator ``dtmon.synth`` when it is importable, else
the 999 genuine rows repeated with ORBIT_CNT shifted by the orbit span on every copy.
Either way the directory gets a ``dtmon-synthetic.json`` manifest, so the producer
labels the messages ``dtmon-synthetic: 1``.

Scenarios:
* ``--rate 0`` arrow from the local directory and from the moto S3 prefix (all files);
* ``--rate 0`` csv-line (one CSV line per message, the earlier implementations' design)
  from the local directory, capped at ``--csv-line-rows`` rows;
* pacing: ``--rate R --duration N --loop`` for each R in ``--rates``; the topic is read
  back and the rows per 1-s bin of the messages' CreateTime timestamps are compared
  with R (worst second) and the total with R x N.

Usage: ``python bench/producer_rate.py [--files 3] [--pacing-seconds 10] [--rates 1000,10000,100000]``
(``--profile`` also runs the local rate-0 scenario under cProfile in-process).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from dtmon.hits import COLUMNS, decode_csv
from dtmon.services import free_port, seed_bucket, start_broker, start_s3
from dtmon.settings import default_genuine_source
from dtmon.wire import CONTENT_TYPE_CSV, decode_message, header_dict

SUMMARY = re.compile(
    r"sent ([\d,]+) rows in ([\d,]+) messages \(([\d.,]+) MB\) in ([\d.,]+) s: ([\d,]+) rows/s .*"
    r"start-up ([\d.,]+) s, ([\d,]+) rows/s with it"
)


def repeated_genuine(n_rows: int) -> pa.Table:
    """SYNTHETIC stand-in: the genuine rows repeated, ORBIT_CNT shifted by the orbit span per copy.

    The 328 stale rows (ORBIT_CNT >= 5e8) keep their value, as in the genuine file.
    """
    genuine = decode_csv(Path(default_genuine_source()).read_bytes()).table
    orbit = genuine.column("ORBIT_CNT").to_numpy()
    fresh = orbit < 5e8
    span = int(orbit[fresh].max() - orbit[fresh].min() + 1)
    copies = -(-n_rows // genuine.num_rows)
    shift = np.repeat(np.arange(copies, dtype=np.int64) * span, genuine.num_rows)
    table = pa.concat_tables([genuine] * copies)
    new_orbit = np.where(np.tile(fresh, copies), np.tile(orbit, copies) + shift, np.tile(orbit, copies))
    table = table.set_column(COLUMNS.index("ORBIT_CNT"), "ORBIT_CNT", pa.array(new_orbit, pa.int64()))
    return table.slice(0, n_rows)


def make_input(directory: Path, files: int, rows: int) -> str:
    """Write ``files`` SYNTHETIC DAQ files + manifest into ``directory``; return what generated them."""
    try:
        from dtmon.synth import write_files

        write_files(directory, files, rows, seed=2026)
        return "dtmon.synth (SYNTHETIC telescope model)"
    except ImportError:
        pass
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        table = repeated_genuine(rows)
        out = io.BytesIO()
        out.write((",".join(COLUMNS) + "\n").encode())
        pacsv.write_csv(table, out, pacsv.WriteOptions(include_header=False, quoting_style="none"))
        (directory / f"data_{i:06d}.txt").write_bytes(out.getvalue())
    manifest = {"generator": "bench/producer_rate.py repeated genuine rows", "synthetic": True, "files": files, "rows": rows}
    (directory / "dtmon-synthetic.json").write_text(json.dumps(manifest))
    return "genuine rows repeated with shifted ORBIT_CNT (SYNTHETIC)"


def run_cli_measured(args: list[str], timeout: float) -> dict:
    """Run the producer console script; its summary numbers plus the child's CPU s and peak RSS (os.wait4)."""
    cmd = [sys.executable, "-m", "producer.cli", "--no-progress", "--log-level", "WARNING", *args]
    started = time.monotonic()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                process.kill()
                raise TimeoutError(f"producer did not finish in {timeout} s: {cmd}")
            time.sleep(0.05)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text, errors = out.read(), err.read()
    match = SUMMARY.search(text)
    if process.returncode != 0 or not match:
        raise RuntimeError(f"producer failed ({process.returncode}): {text}\n{errors}")
    rows, messages, mb, elapsed, rate, startup, overall = (float(g.replace(",", "")) for g in match.groups())
    return {
        "rows": int(rows),
        "messages": int(messages),
        "mb": mb,
        "elapsed": elapsed,
        "rate": rate,
        "startup": startup,
        "overall": overall,
        "wall": time.monotonic() - started,
        "cpu": usage.ru_utime + usage.ru_stime,
        "rss_mb": usage.ru_maxrss / 1024,
    }


def read_back(bootstrap: str, topic: str, timeout: float = 120.0) -> tuple[np.ndarray, np.ndarray, bool]:
    """(CreateTime in s, rows) of every message of ``topic``, and whether all were labelled synthetic."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex[:8]}", "enable.partition.eof": True}
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        times, rows, synthetic, at_end = [], [], True, set()
        deadline = time.monotonic() + timeout
        while len(at_end) < len(partitions) and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        at_end.add(msg.partition())
                    continue
                at_end.discard(msg.partition())
                h = header_dict(msg.headers())
                synthetic &= h.get("dtmon-synthetic") == "1"
                times.append(msg.timestamp()[1] / 1000)
                if h.get("content-type") == CONTENT_TYPE_CSV:  # count lines; decoding each 1-line CSV costs ~1 ms
                    rows.append(sum(1 for line in msg.value().splitlines() if line.strip() and not line.startswith(b"HEAD")))
                else:
                    rows.append(len(decode_message(msg.value(), h.get("content-type"))))
        return np.array(times), np.array(rows), synthetic
    finally:
        consumer.close()


def per_second(times: np.ndarray, rows: np.ndarray, seconds: int) -> np.ndarray:
    """Rows in each full 1-s bin from the first message's timestamp, shape (seconds,)."""
    counts, _ = np.histogram(times - times.min(), bins=np.arange(seconds + 1), weights=rows)
    return counts


def profile_local(bootstrap: str, source: Path) -> None:
    """Run the local rate-0 scenario in-process under cProfile; print the top functions."""
    import cProfile
    import pstats

    from dtmon.settings import load_settings
    from producer.run import run_producer

    settings = load_settings(bootstrap_servers=bootstrap, raw_topic=f"bench-prof-{uuid.uuid4().hex[:6]}", rate=0)
    profiler = cProfile.Profile()
    profiler.enable()
    stats = run_producer(settings, source=str(source))
    profiler.disable()
    print(f"\nprofile of the local --rate 0 run: {stats.summary()}")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=3, help="synthetic DAQ files")
    parser.add_argument("--rows-per-file", type=int, default=1_310_720)
    parser.add_argument("--pacing-seconds", type=float, default=10.0)
    parser.add_argument("--rates", default="1000,10000,100000", help="comma-separated paced rates, rows/s")
    parser.add_argument("--csv-line-rows", type=int, default=300_000, help="rows for the csv-line baseline")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="dtmon-bench-"))
    broker = start_broker(port=free_port(), log=work / "tansu.log")
    s3 = start_s3(port=free_port(), log=work / "moto.log")
    try:
        data = work / "synthetic"
        t = time.monotonic()
        generator = make_input(data, args.files, args.rows_per_file)
        print(f"input: {args.files} x {args.rows_per_file:,} rows, {generator}, {time.monotonic() - t:.1f} s to write")
        files = sorted(data.glob("data_*.txt"))
        seed_bucket(s3.address, "bench", files + [data / "dtmon-synthetic.json"], prefix="synthetic")
        common = ["--bootstrap-servers", broker.address]

        results = []

        def scenario(name: str, extra: list[str], target: float, seconds: float | None = None) -> None:
            topic = f"bench-{uuid.uuid4().hex[:8]}"
            r = run_cli_measured([*common, "--topic", topic, *extra], timeout=900)
            times, rows, synthetic = read_back(broker.address, topic)
            r.update(name=name, target=target, delivered=int(rows.sum()), synthetic=synthetic, worst=None, total_dev=None)
            if seconds:
                counts = per_second(times, rows, int(seconds))
                r["worst"] = float(np.max(np.abs(counts - target)) / target * 100)
                r["total_dev"] = (rows.sum() / seconds - target) / target * 100
            results.append(r)
            print(f"  done: {name}: {r['rate']:,.0f} rows/s", flush=True)

        scenario("rate 0, arrow, local files", ["--source", str(data), "--rate", "0"], 0)
        scenario(
            "rate 0, arrow, moto S3",
            ["--source", "s3://bench/synthetic/", "--endpoint-url", s3.address, "--rate", "0"],
            0,
        )
        scenario(
            "rate 0, csv-line (1 row/msg), local",
            ["--source", str(data), "--rate", "0", "--wire", "csv-line", "--compression", "none",
             "--max-rows", str(args.csv_line_rows)],
            0,
        )  # fmt: skip
        for rate in (float(x) for x in args.rates.split(",")):
            scenario(
                f"rate {rate:,.0f}, arrow, local, {args.pacing_seconds:g} s",
                ["--source", str(data), "--rate", str(rate), "--loop", "--duration", str(args.pacing_seconds)],
                rate,
                args.pacing_seconds,
            )

        print("\nproducer benchmark (SYNTHETIC input; 2-core machine, broker + moto on the same machine)")
        head = f"{'scenario':<38} {'rows':>10} {'msgs':>7} {'MB':>6} {'start s':>7} {'s':>6} {'rows/s':>10} {'w/ start':>10} {'vs target':>9} {'worst 1s':>8} {'CPU s':>6} {'RSS MB':>6} {'deliv.':>6}"
        print(head)
        print("-" * len(head))
        for r in results:
            vs = "" if r["total_dev"] is None else f"{r['total_dev']:+.2f}%"
            worst = "" if r["worst"] is None else f"{r['worst']:.1f}%"
            ok = "ok" if r["delivered"] == r["rows"] and r["synthetic"] else "LOST" if r["delivered"] != r["rows"] else "label?"
            print(
                f"{r['name']:<38} {r['rows']:>10,} {r['messages']:>7,} {r['mb']:>6.1f} {r['startup']:>7.2f} {r['elapsed']:>6.2f} "
                f"{r['rate']:>10,.0f} {r['overall']:>10,.0f} {vs:>9} {worst:>8} {r['cpu']:>6.1f} {r['rss_mb']:>6.0f} {ok:>6}"
            )
        arrow0 = results[0]["overall"]
        csv0 = results[2]["overall"]
        print(f"\narrow (many rows/message) vs csv-line (one row/message) at --rate 0 (w/ start): {arrow0 / csv0:.1f}x")
        print("rows/s = producer's rows / s (first send to end of flush); 'start s' = listing + topic + first file read and")
        print("decoded before the first send; 'w/ start' = rows / (start s + s); 'vs target' = rows read back / duration;")
        print("'worst 1s' = largest deviation of one 1-s bin (message CreateTime) from the target; deliv. = rows read back == rows sent")
        if args.profile:
            profile_local(broker.address, data)
    finally:
        broker.stop()
        s3.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
