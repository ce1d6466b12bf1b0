"""The processor console script (real Spark) rides out a restart of a real Tansu broker whose data
survive (S3 storage on a moto server): every row sent before the outage is counted once, the
processor keeps running, few lines logged."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from dtmon.services import ensure_bucket, free_port, s3_client, start_s3, stop_process, tansu_binary, wait_for_port

pytestmark = pytest.mark.integration


def start_persistent_broker(port: int, s3: str, log: Path) -> subprocess.Popen:
    """Tansu on ``port`` storing in bucket ``tansu`` of the moto server ``s3`` (survives a restart)."""
    url = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "AWS_ENDPOINT": s3, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}
    proc = subprocess.Popen([tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                             "--storage-engine", "s3://tansu/"], stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)
    wait_for_port("127.0.0.1", port, 30)
    return proc


def counted_rows(err_file: Path) -> dict[int, int]:
    """Batch id -> rows of every results message the processor published (its ``batch N: ... R rows`` lines)."""
    found = re.findall(r"batch (\d+): run .*?, (\d+) rows,", err_file.read_text())
    batches: dict[int, int] = {}
    for batch, rows in found:
        assert int(batch) not in batches, f"batch {batch} published twice"
        batches[int(batch)] = int(rows)
    return batches


def test_processor_rides_out_a_broker_restart(tmp_path, genuine_csv):
    s3 = start_s3(port=free_port(), log=tmp_path / "s3.log")
    ensure_bucket(s3_client(s3.address), "tansu")
    port = free_port()
    address = f"127.0.0.1:{port}"
    broker = start_persistent_broker(port, s3.address, tmp_path / "tansu.log")
    env = {**os.environ, "DTMON_BOOTSTRAP_SERVERS": address, "DTMON_RAW_TOPIC": "outage-hits",
           "DTMON_RESULTS_TOPIC": "outage-results", "COLUMNS": "300"}
    processor = subprocess.Popen(["processor", "--checkpoint-location", str(tmp_path / "ck"), "--starting-offsets", "earliest",
                                  "--trigger-interval-s", "2"], stdout=subprocess.DEVNULL,
                                 stderr=open(tmp_path / "processor.err", "w"), env=env)
    producer = None
    try:
        producer = subprocess.run(["producer", "--source", str(genuine_csv), "--loop", "--rate", "3000",
                                   "--rows-per-message", "500", "--no-progress", "--max-rows", "30000"],
                                  capture_output=True, text=True, env=env, timeout=120)
        sent_before = int(producer.stdout.split("sent ")[1].split(" rows")[0].replace(",", ""))
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and not counted_rows(tmp_path / "processor.err"):
            time.sleep(2)
        err_before = (tmp_path / "processor.err").read_text().count("\n")
        stop_process(broker)
        down = time.monotonic()
        time.sleep(10)
        broker = start_persistent_broker(port, s3.address, tmp_path / "tansu.log")
        back = time.monotonic()
        after = subprocess.run(["producer", "--source", str(genuine_csv), "--loop", "--rate", "3000",
                                "--rows-per-message", "500", "--no-progress", "--max-rows", "9000"],
                               capture_output=True, text=True, env={**env, "DTMON_EXACTLY_ONCE": "false"}, timeout=120)
        assert after.returncode == 0, after.stderr
        total = sent_before + int(after.stdout.split("sent ")[1].split(" rows")[0].replace(",", ""))
        counted = 0
        while time.monotonic() < back + 150 and counted < sent_before:
            counted = sum(counted_rows(tmp_path / "processor.err").values())
            time.sleep(2)
        recovered = time.monotonic() - back
        assert processor.poll() is None, (tmp_path / "processor.err").read_text()[-3000:]
    finally:
        processor.terminate()
        processor.wait(60)
        stop_process(broker)
        s3.stop()
    err = (tmp_path / "processor.err").read_text().splitlines()[err_before:]
    outage = [line for line in err if any(w in line for w in ("Kafka", "kafka", "Connect", "FAIL", "ERROR", "Traceback"))]
    print(f"outage 10 s: rows sent {total} ({sent_before} before the outage), counted {counted}, {recovered:.1f} s "
          f"from the broker's return to every row sent before the outage counted, {len(outage)} Kafka/error lines: {outage}")
    # every row sent before the outage is counted, none twice; the rows after it up to the log end the
    # broker reports (Tansu's S3 engine answers no end-of-partition probe: the newest record batch waits for more)
    assert sent_before <= counted <= total
    assert len(outage) <= 8, outage
