"""Scale out: the processor runs unchanged on a real Spark standalone cluster.

A master and two workers (1 core, 1 GiB each) are started on 127.0.0.1 from pyspark's own
jars (``spark-class``), beside a real Tansu broker. A raw topic with 4 partitions is filled
once with SYNTHETIC rows from ``dtmon.synth``; the ``processor`` CLI reads it twice, once
with a local master and once with ``--master spark://127.0.0.1:<port>`` (separate
checkpoints and results topics), with the same ``--max-offsets-per-trigger`` so both cut
the same micro-batches. The summed results must be identical, and match what pandas
computes from the same rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyspark
import pytest
from confluent_kafka import TopicPartition

from dtmon.kafka import KafkaClients
from dtmon.schema import ResultsMessage
from dtmon.services import free_port, stop_process, wait_for_port
from dtmon.wire import CONTENT_TYPE_ARROW, encode_arrow

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

ROWS = 60_000
ROWS_PER_MESSAGE = 2_000
PARTITIONS = 4
MESSAGES_PER_BATCH = 15  # 30 messages -> 2 micro-batches in both runs
SPARK_HOME = Path(pyspark.__file__).resolve().parent


def spark_env(tmp: Path) -> dict[str, str]:
    """Environment for spark-class and the processor: loopback only, this interpreter for Python workers."""
    return dict(
        os.environ,
        SPARK_HOME=str(SPARK_HOME),
        SPARK_LOCAL_IP="127.0.0.1",
        SPARK_LOG_DIR=str(tmp / "spark-logs"),
        PYSPARK_PYTHON=sys.executable,
        PYSPARK_DRIVER_PYTHON=sys.executable,
        PYTHONUNBUFFERED="1",
    )


def spawn(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)


def alive_workers(webui: int) -> int:
    """Workers the master lists as ALIVE (its web UI's JSON view)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{webui}/json/", timeout=5) as response:
            return int(json.load(response).get("aliveworkers", 0))
    except (OSError, ValueError):  # not up yet, or a starting web UI's partial answer
        return 0


@pytest.fixture
def spark_cluster(tmp_path):
    """A standalone master and two 1-core workers on 127.0.0.1; yields the master URL."""
    env = spark_env(tmp_path)
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    port, webui = free_port(), free_port()
    children = [spawn([spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                       "--port", str(port), "--webui-port", str(webui)], tmp_path / "master.log", env)]
    try:
        wait_for_port("127.0.0.1", port, 120, children[0])
        for i in range(2):
            children.append(spawn([spark_class, "org.apache.spark.deploy.worker.Worker", f"spark://127.0.0.1:{port}",
                                   "--host", "127.0.0.1", "--cores", "1", "--memory", "1g",
                                   "--webui-port", str(free_port()), "--work-dir", str(tmp_path / f"worker-{i}")],
                                  tmp_path / f"worker-{i}.log", env))
        deadline = time.monotonic() + 120
        while alive_workers(webui) < 2:
            assert time.monotonic() < deadline, (tmp_path / "master.log").read_text()[-3000:]
            assert all(c.poll() is None for c in children), "a Spark daemon exited"
            time.sleep(0.5)
        yield f"spark://127.0.0.1:{port}"
    finally:
        for child in reversed(children):
            stop_process(child, 20)


def fill_raw_topic(bootstrap: str, topic: str, table: pa.Table) -> None:
    """Create ``topic`` with PARTITIONS partitions and send ``table`` as Arrow messages, round-robin."""
    clients = KafkaClients(bootstrap)
    clients.ensure_topic(topic, PARTITIONS, timeout=30)
    producer = clients.producer(acks="all", enable_idempotence=True)
    headers = [("content-type", CONTENT_TYPE_ARROW.encode()), ("dtmon-synthetic", b"1")]
    for i, start in enumerate(range(0, table.num_rows, ROWS_PER_MESSAGE)):
        producer.produce(topic, value=encode_arrow(table.slice(start, ROWS_PER_MESSAGE)), partition=i % PARTITIONS,
                         headers=headers)
    assert producer.flush(30) == 0


def start_processor(bootstrap: str, raw: str, results: str, master: str, tmp: Path) -> tuple[subprocess.Popen, Path]:
    """Start the ``processor`` CLI on ``raw`` -> ``results`` with its own checkpoint; returns it and its log."""
    name = "cluster" if master.startswith("spark://") else "local"
    cmd = [str(Path(sys.executable).parent / "processor"), "--bootstrap-servers", bootstrap, "--raw-topic", raw,
           "--results-topic", results, "--master", master, "--trigger-interval", "1",
           "--checkpoint-location", str(tmp / f"checkpoint-{name}"), "--starting-offsets", "earliest",
           "--max-offsets-per-trigger", str(MESSAGES_PER_BATCH), "--shuffle-partitions", "2"]
    log = tmp / f"processor-{name}.log"
    return spawn(cmd, log, spark_env(tmp)), log


def collect_results(bootstrap: str, runs: dict[str, tuple[subprocess.Popen, Path]], timeout_s: float = 300.0
                    ) -> dict[str, list[ResultsMessage]]:
    """Read each results topic (name -> (processor, log)) until its batches cover every row; stop the processors."""
    consumer = KafkaClients(bootstrap).consumer("test-cluster")
    messages: dict[str, list[ResultsMessage]] = {topic: [] for topic in runs}
    try:
        consumer.assign([TopicPartition(topic, 0, 0) for topic in runs])
        deadline = time.monotonic() + timeout_s
        while any(sum(m.rows_read for m in got) < ROWS for got in messages.values()):
            for topic, (process, log) in runs.items():
                assert time.monotonic() < deadline, f"{topic}: rows missing after {timeout_s} s\n{log.read_text()[-4000:]}"
                assert process.poll() is None, f"{topic}: processor exited\n{log.read_text()[-4000:]}"
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                messages[msg.topic()].append(ResultsMessage.from_json(msg.value()))
    finally:
        consumer.close()
        for process, _log in runs.values():
            stop_process(process, 60)
    return messages


def summed(messages: list[ResultsMessage]) -> dict:
    """Totals over the micro-batches: rows, hits, per-chamber hits, occupancy and multiplicity (4, 64)."""
    return {
        "rows": sum(m.rows_read for m in messages),
        "malformed": sum(m.malformed_rows for m in messages),
        "hits": sum(m.hits for m in messages),
        "hits_per_chamber": np.sum([m.hits_per_chamber for m in messages], axis=0).tolist(),
        "occupancy": np.sum([[c.occupancy.bin_counts for c in m.chambers] for m in messages], axis=0).tolist(),
        "multiplicity": np.sum([[c.multiplicity.bin_counts for c in m.chambers] for m in messages], axis=0).tolist(),
    }


# one broker is enough for a test of Spark's deployment: Apache Kafka, as in docker-compose.yml
@pytest.mark.parametrize("broker_kind", ["apache"], indirect=True)
def test_cluster_results_identical_to_local(spark_cluster, kafka_bootstrap, topic_name, tmp_path):
    from dtmon.synth import generate

    table = generate(ROWS, seed=7)
    raw = f"{topic_name}-raw"
    fill_raw_topic(kafka_bootstrap, raw, table)
    KafkaClients(kafka_bootstrap).ensure_topics({f"{topic_name}-local": 1, f"{topic_name}-cluster": 1})

    # both processors at once: each has its own checkpoint and results topic
    runs = {f"{topic_name}-local": start_processor(kafka_bootstrap, raw, f"{topic_name}-local", "local[2]", tmp_path),
            f"{topic_name}-cluster": start_processor(kafka_bootstrap, raw, f"{topic_name}-cluster", spark_cluster,
                                                     tmp_path)}
    results = collect_results(kafka_bootstrap, runs)
    local, cluster = results[f"{topic_name}-local"], results[f"{topic_name}-cluster"]

    assert len(local) > 1, "the cap should give several micro-batches"
    assert [m.rows_read for m in cluster] == [m.rows_read for m in local], "same cap, same topic: same batches"
    assert summed(cluster) == summed(local)
    assert all(m.synthetic for m in local + cluster)
    # and both agree with an independent count of the rows that were sent
    frame = table.to_pandas()
    hits = frame[frame.HEAD == 2]
    cells = hits[(hits.TDC_CHANNEL <= 127) & hits.FPGA.isin([0, 1])]
    chamber = cells.FPGA.astype(int) * 2 + (cells.TDC_CHANNEL >= 64).astype(int)
    occupancy = np.zeros((4, 64), dtype=int)
    np.add.at(occupancy, (chamber.to_numpy(), cells.TDC_CHANNEL.to_numpy().astype(int) % 64), 1)
    totals = summed(local)
    assert totals["rows"] == ROWS
    assert totals["hits"] == len(hits)
    assert totals["occupancy"] == occupancy.tolist()
    # the cluster really ran tasks on the workers: each worker started an executor for the app
    work_dirs = [p for p in tmp_path.glob("worker-*/app-*/*") if p.is_dir()]
    assert len(work_dirs) >= 2, f"executors on the workers: {work_dirs}"
