"""The real stages as child processes for one benchmark scenario, and Kafka readers.

A ``Stack`` owns everything one scenario starts: a fresh broker (Tansu from ``dtmon.services`` or Apache Kafka from ``dtmon.apache_kafka``),
optionally a moto S3 server, and the ``producer``, ``processor`` and ``bokeh serve
dashboard`` console scripts, each in its own process group with its output in a log
file. Their process trees are sampled for CPU seconds and peak RSS
(``bench.procstats``). ``Stack.close()`` stops whatever still runs (SIGTERM to the
group, SIGKILL after a timeout) and reaps it with ``os.wait4``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import KafkaError, TopicPartition

from bench.procstats import TreeSampler, wait_reap
from dtmon.kafka import KafkaClients
from dtmon.schema import ResultsMessage
from dtmon.services import Service, free_port, start_broker, start_s3, wait_for_port
from dtmon.supervisor import console_script, start_in_session



def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child: this one, unbuffered Python, Spark workers on this interpreter."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DTMON_")}
    env.update(PYTHONUNBUFFERED="1", PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    env.update(extra)
    return env


@dataclass
class Child:
    """A child process of the benchmark: name, process, log file, start time (monotonic s)."""

    name: str
    process: subprocess.Popen
    log: Path
    started: float
    ended: float | None = None

    def log_text(self) -> str:
        """The child's output so far."""
        return self.log.read_text(errors="replace") if self.log.is_file() else ""


@dataclass
class Stack:
    """Children of one scenario; see module docstring."""

    workdir: Path
    sampler: TreeSampler = field(default_factory=TreeSampler)
    children: list[Child] = field(default_factory=list)
    bootstrap: str = ""
    s3_endpoint: str = ""
    broker_kind: str = "tansu"
    """``tansu`` (in-memory Tansu) or ``apache`` (one-node Apache Kafka, ``dtmon.apache_kafka``)."""
    kafka_source: str = "python"
    """The processor's ``--kafka-source``: ``python`` or ``spark``."""
    driver_java_options: str = ""
    """The processor's ``--spark-driver-java-options`` (more options for its driver JVM)."""
    services: list[Service] = field(default_factory=list)

    # -- starting -------------------------------------------------------------
    def adopt(self, service: Service, log: Path) -> Child:
        child = Child(service.name, service.process, log, time.monotonic())
        self.children.append(child)
        self.sampler.add(service.name, service.process.pid)
        return child

    def start_broker(self) -> str:
        """A fresh broker of ``broker_kind`` on a free loopback port; returns bootstrap.servers."""
        log = self.workdir / "broker.log"
        if self.broker_kind == "apache":
            from dtmon.apache_kafka import start_apache_kafka

            service = start_apache_kafka("127.0.0.1", free_port(), log=log, data_root=self.workdir)
        else:
            service = start_broker("127.0.0.1", free_port(), log)
        self.services.append(service)
        self.adopt(service, log)
        self.bootstrap = service.address
        return self.bootstrap

    def start_s3(self) -> str:
        """A moto S3 server on a free loopback port; returns its endpoint URL."""
        log = self.workdir / "s3.log"
        service = start_s3("127.0.0.1", free_port(), log)
        self.adopt(service, log)
        self.s3_endpoint = service.address
        return self.s3_endpoint

    def spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Child:
        """Start ``cmd`` in its own session, output to ``<workdir>/<name>.log``."""
        log = self.workdir / f"{name}.log"
        child = Child(name, start_in_session(cmd, log, env or child_env(), cwd), log, time.monotonic())
        self.children.append(child)
        self.sampler.add(name, child.process.pid)
        return child

    def create_topic(self, topic: str, partitions: int = 1) -> None:
        """Create ``topic`` with ``partitions`` partitions and wait for it."""
        KafkaClients(self.bootstrap).ensure_topic(topic, partitions, timeout=30)

    def producer(self, name: str, source: str, topic: str, rate: float, *, wire: str = "arrow", loop: bool = False,
                 duration: float | None = None, max_rows: int | None = None, partitions: int | None = None,
                 endpoint_url: str | None = None) -> Child:
        """Start the ``producer`` CLI (no live display)."""
        cmd = console_script("producer") + [
            "--source", source, "--bootstrap-servers", self.bootstrap, "--raw-topic", topic,
            "--rate", f"{rate:g}", "--wire", wire, "--no-progress",
        ]  # fmt: skip
        if loop:
            cmd.append("--loop")
        if duration is not None:
            cmd += ["--duration", f"{duration:g}"]
        if max_rows is not None:
            cmd += ["--max-rows", str(max_rows)]
        if partitions is not None:
            cmd += ["--raw-partitions", str(partitions)]
        if endpoint_url:
            cmd += ["--s3-endpoint-url", endpoint_url]
        cmd += ["--stats-json", str(self.stats_file(name))]
        return self.spawn(name, cmd)

    def stats_file(self, producer: str) -> Path:
        """Where the producer child ``producer`` writes its final statistics (``producer --stats-json``)."""
        return self.workdir / f"{producer}-stats.json"

    def producer_summary(self, producer: Child) -> dict | None:
        """rows, messages, MB, elapsed s and rows/s of a finished producer child, from its
        ``--stats-json`` file; None if it wrote none."""
        return producer_summary(self.stats_file(producer.name))

    def processor(self, raw_topic: str, results_topic: str, trigger_s: float, *, master: str | None = None,
                  max_offsets_per_trigger: int | None = None, name: str = "processor") -> Child:
        """Start the ``processor`` CLI reading ``raw_topic`` from the earliest offsets, with a fresh checkpoint."""
        cmd = console_script("processor") + [
            "--bootstrap-servers", self.bootstrap, "--raw-topic", raw_topic, "--results-topic", results_topic,
            "--trigger-interval-s", f"{trigger_s:g}", "--checkpoint-location", str(self.checkpoint(name)),
            "--starting-offsets", "earliest", "--kafka-source", self.kafka_source,
        ]  # fmt: skip
        if master:
            cmd += ["--spark-master", master]
        if max_offsets_per_trigger:
            cmd += ["--max-offsets-per-trigger", str(max_offsets_per_trigger)]
        if self.driver_java_options:
            cmd += ["--spark-driver-java-options", self.driver_java_options]
        return self.spawn(name, cmd)

    def dashboard(self, results_topic: str) -> tuple[Child, str]:
        """Start ``bokeh serve dashboard`` on a free port; returns the child and the page URL."""
        port = free_port()
        spec = importlib.util.find_spec("dashboard")
        app_dir = Path(next(iter(spec.submodule_search_locations)))
        cmd = [sys.executable, "-m", "bokeh", "serve", str(app_dir), "--port", str(port), "--address", "127.0.0.1",
               "--allow-websocket-origin", f"127.0.0.1:{port}"]
        env = child_env(DTMON_BOOTSTRAP_SERVERS=self.bootstrap, DTMON_RESULTS_TOPIC=results_topic,
                        DTMON_DASHBOARD_REFRESH_MS="500")
        child = self.spawn("dashboard", cmd, env)
        wait_for_port("127.0.0.1", port, 60, child.process)
        return child, f"http://127.0.0.1:{port}/{app_dir.name}"

    # -- waiting and stopping ---------------------------------------------------
    def wait_for_query(self, processor: Child, timeout_s: float) -> float:
        """Block until the processor child's streaming query has started (Spark wrote the query
        id into its checkpoint, ``processor.app.read_query_id``); return the monotonic time.

        Raises:
            RuntimeError: the child exited first. TimeoutError: not started in ``timeout_s``.
        """
        from processor.app import read_query_id

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if read_query_id(str(self.checkpoint(processor.name))):
                return time.monotonic()
            if processor.process.poll() is not None:
                raise RuntimeError(f"{processor.name} exited ({processor.process.returncode}):\n{processor.log_text()[-3000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"{processor.name}: no streaming query after {timeout_s} s")

    def checkpoint(self, processor: str) -> Path:
        """Checkpoint directory of the processor child ``processor``."""
        return self.workdir / f"{processor}-checkpoint"

    def _reap(self, child: Child, timeout_s: float) -> bool:
        got = wait_reap(child.process.pid, timeout_s)
        if got is None:
            return child.process.poll() is not None
        rusage, status = got
        child.process.returncode = os.waitstatus_to_exitcode(status)
        child.ended = child.ended or time.monotonic()
        self.sampler.reap(child.name, rusage)
        return True

    def wait(self, child: Child, timeout_s: float) -> int:
        """Wait for a child to exit by itself; returns its exit code.

        Raises:
            TimeoutError: still running after ``timeout_s`` (it is then stopped).
        """
        if not self._reap(child, timeout_s):
            self.stop(child)
            raise TimeoutError(f"{child.name} still running after {timeout_s} s")
        return child.process.returncode

    def stop(self, child: Child, timeout_s: float = 30.0) -> None:
        """SIGTERM the child (it shuts down its own children, e.g. the processor stops Spark),
        SIGKILL its whole process group after ``timeout_s``; reap it."""
        if child.process.returncode is None:
            self.sampler.sample()
            child.ended = time.monotonic()
            try:
                os.kill(child.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            if not self._reap(child, timeout_s):
                os.killpg(child.process.pid, signal.SIGKILL)
                self._reap(child, timeout_s)
        try:  # stragglers of the group (e.g. Spark's Python workers) after the leader exits
            os.killpg(child.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def close(self, cpu_since: dict[str, float] | None = None, cpu_until: dict[str, float] | None = None
              ) -> dict[str, dict[str, float]]:
        """Stop every child (newest first) and return CPU/RSS per child name (see ``TreeSampler.result``)."""
        for child in reversed(self.children):
            self.stop(child)
        for service in self.services:  # what a service leaves behind (Apache Kafka: its data directory)
            service.stop()
        self.sampler.close()
        return self.sampler.result(cpu_since, cpu_until)


def producer_summary(path: Path) -> dict | None:
    """rows, messages, MB, elapsed s and rows/s from a ``producer --stats-json`` file, or None if
    there is none (``producer.run.ProducerStats.as_json``)."""
    if not path.is_file():
        return None
    stats = json.loads(path.read_text())
    return {"rows": stats["rows"], "messages": stats["messages"], "mb": stats["bytes"] / 1e6,
            "elapsed_s": stats["elapsed_s"], "rows_per_s": stats["achieved_rate"]}


class ResultsReader:
    """Reads the results topic (partition 0, from offset 0) in a thread while a scenario runs.

    ``messages`` holds (ResultsMessage, receive time epoch s) in topic order; messages that
    do not parse are counted in ``invalid``.
    """

    def __init__(self, bootstrap: str, topic: str):
        self.messages: list[tuple[ResultsMessage, float]] = []
        self.invalid = 0
        self._stop = threading.Event()
        self._consumer = KafkaClients(bootstrap).consumer("dtmon-bench-results")
        self._topic = topic
        self._thread = threading.Thread(target=self._run, name="bench-results", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self._consumer.assign([TopicPartition(self._topic, 0, 0)])
        while not self._stop.is_set():
            msg = self._consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            try:
                self.messages.append((ResultsMessage.from_json(msg.value()), time.time()))
            except ValueError:
                self.invalid += 1

    def rows(self) -> int:
        """Rows read by the processor in the batches received so far."""
        return sum(m.rows_read for m, _ in self.messages)

    def wait_rows(self, rows: int, timeout_s: float, alive: Child | None = None) -> bool:
        """Block until the batches cover ``rows`` rows (True) or ``timeout_s`` passes / ``alive`` exits (False)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.rows() >= rows:
                return True
            if alive is not None and alive.process.poll() is not None:
                return False
            time.sleep(0.2)
        return False

    def close(self) -> list[ResultsMessage]:
        """Stop reading; return the messages."""
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()
        return [m for m, _ in self.messages]


def read_raw_topic(bootstrap: str, topic: str, timeout_s: float = 120.0) -> list[tuple[int, int]]:
    """(Kafka timestamp in ms, DAQ rows) of every message of ``topic``, all partitions, from the start.

    Arrow messages are decoded to count their rows; a ``text/csv`` message counts its lines;
    messages of other content types (control messages) are left out.
    """
    import pyarrow as pa

    from dtmon.wire import CONTENT_TYPE_ARROW, CONTENT_TYPE_CSV, HEADER_CONTENT_TYPE, header_dict

    consumer = KafkaClients(bootstrap).consumer("dtmon-bench-raw", enable_partition_eof=True, fetch_max_bytes=64 << 20)
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        waiting, out = set(partitions), []
        deadline = time.monotonic() + timeout_s
        while waiting and time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=0.5):
                if msg.error() is not None:
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        waiting.discard(msg.partition())
                    continue
                value = msg.value() or b""
                content_type = header_dict(msg.headers()).get(HEADER_CONTENT_TYPE)
                if content_type == CONTENT_TYPE_CSV:
                    rows = max(1, value.rstrip(b"\n").count(b"\n") + 1)
                elif content_type in (None, CONTENT_TYPE_ARROW):
                    rows = pa.ipc.open_stream(value).read_next_batch().num_rows
                else:  # e.g. the producer's run-start/run-end control messages: no DAQ rows
                    continue
                out.append((msg.timestamp()[1], rows))
        return out
    finally:
        consumer.close()
