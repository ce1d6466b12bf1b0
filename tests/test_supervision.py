"""`dtmon up` keeps the stack running: a child killed with SIGKILL is restarted and results keep
flowing; a killed in-memory broker is restarted, its loss said, producer and processor start over.
(The S3-storage broker `--persist` uses is restarted with every message in
tests/dtmon/test_services.py.)

Real parts throughout: Tansu broker, moto S3, producer, Spark processor, Bokeh dashboard, on the
genuine default source. The times from each `kill -9` to the
child working again are printed and saved to artifacts/supervision-<case>.json
(docs/reliability.md quotes them).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from dtmon.kafka import KafkaClients
from dtmon.schema import ResultsMessage
from dtmon.services import free_port
from dtmon.supervisor import descendants
from dtmon.supervisor import running as alive
from dtmon.wire import CONTENT_TYPE_ARROW, HEADER_CONTENT_TYPE, decode_message
from tests.dtmon.test_cli import DTMON, REPO, kill_tree, port_open
from tests.test_stack import _answers, _logs

pytestmark = pytest.mark.integration

START_TIMEOUT_S = 300  # Spark takes 10-20 s on an idle 2-core machine, minutes under load
BACK_TIMEOUT_S = 420  # a Spark restart took 2-4 min at load average 12 on 2 cores


class Up:
    """One `dtmon up` run in the background on free ports, with helpers to look at it."""

    def __init__(self, tmp_path: Path, *extra: str) -> None:
        self.broker_port, self.s3_port, self.dashboard_port = free_port(), free_port(), free_port()
        self.workdir = tmp_path / "up"
        self.out = tmp_path / "up.out"
        self.url = f"http://127.0.0.1:{self.dashboard_port}/dashboard"
        self.bootstrap = f"127.0.0.1:{self.broker_port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("DTMON_")}  # the genuine default source
        cmd = [*DTMON, "up", "--rate", "1000", "--trigger-interval", "1", "--broker-port", str(self.broker_port),
               "--s3-port", str(self.s3_port), "--dashboard-port", str(self.dashboard_port),
               "--workdir", str(self.workdir), *extra]  # fmt: skip
        with open(self.out, "wb") as sink:
            self.proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
        self.pids: set[int] = set()

    @property
    def text(self) -> str:
        return self.out.read_text(errors="replace")

    def wait(self, condition, timeout: float, what: str) -> float:
        """Block until ``condition()``; returns the seconds waited. Fails if `dtmon up` exits."""
        t0 = time.monotonic()
        while not condition():
            if self.proc.poll() is not None:
                pytest.fail(f"dtmon up exited with {self.proc.returncode}:\n{self.text}\n{_logs(self.workdir)}")
            if time.monotonic() - t0 > timeout:
                pytest.fail(f"no {what} after {timeout} s:\n{self.text[-4000:]}\n{_logs(self.workdir)}")
            time.sleep(0.2)
        return time.monotonic() - t0

    def children(self) -> dict[str, dict]:
        state = json.loads((self.workdir / "stack.json").read_text())
        self.pids |= {c["pid"] for c in state["children"]} | descendants(self.proc.pid)
        return {c["name"]: c for c in state["children"]}

    def kill(self, name: str) -> tuple[int, float]:
        """SIGKILL child ``name``'s main process; returns (its pid, time.time() of the kill)."""
        pid = self.children()[name]["pid"]
        os.kill(pid, signal.SIGKILL)
        return pid, time.time()

    def restarted(self, name: str, old_pid: int) -> bool:
        child = self.children()[name]
        return child["pid"] != old_pid and alive(child["pid"])

    def stop(self) -> None:
        self.pids |= descendants(self.proc.pid)
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(120)


def read_topic(bootstrap: str, topic: str, timeout: float = 30.0) -> list:
    """Every message of every partition of ``topic``, from offset 0 to the end (empty if no topic)."""
    from confluent_kafka import KafkaError, TopicPartition

    consumer = KafkaClients(bootstrap).consumer(f"supervision-{time.monotonic_ns()}", enable_partition_eof=True)
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            return []
        consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
        waiting, messages = set(meta.partitions), []
        deadline = time.monotonic() + timeout
        while waiting and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error() is None:
                messages.append(msg)
            elif msg.error().code() == KafkaError._PARTITION_EOF:
                waiting.discard(msg.partition())
        return messages
    finally:
        consumer.close()


def raw_rows(bootstrap: str, topic: str = "minidt-hits") -> dict[tuple[int, int], int]:
    """(partition, offset) -> DAQ rows of every data message in the raw topic."""
    rows = {}
    for msg in read_topic(bootstrap, topic):
        content_type = dict(msg.headers() or []).get(HEADER_CONTENT_TYPE, b"").decode()
        if content_type == CONTENT_TYPE_ARROW:
            rows[(msg.partition(), msg.offset())] = decode_message(msg.value(), content_type).num_rows
    return rows


def results(bootstrap: str) -> list[ResultsMessage]:
    """Every results message on the results topic, in offset order."""
    try:
        return [ResultsMessage.from_json(m.value()) for m in read_topic(bootstrap, "minidt-results", timeout=10)]
    except Exception:  # noqa: BLE001 - the broker may be between restarts: no answer yet
        return []


def published_after(bootstrap: str, t: float) -> bool:
    return any(r.published > t for r in results(bootstrap))


def save(case: str, figures: dict) -> None:
    print(f"supervision {case}:", figures)
    (REPO / "artifacts").mkdir(exist_ok=True)
    (REPO / "artifacts" / f"supervision-{case}.json").write_text(json.dumps(figures, indent=2) + "\n")


def test_killed_children_are_restarted_and_results_keep_flowing(tmp_path):
    up = Up(tmp_path)
    figures: dict[str, float | int] = {}
    try:
        up.wait(lambda: "dashboard answering after" in up.text, START_TIMEOUT_S, "dashboard")
        up.wait(lambda: published_after(up.bootstrap, 0), START_TIMEOUT_S, "first results message")
        broker_pid = up.children()["broker"]["pid"]
        before = raw_rows(up.bootstrap)
        assert before

        # the dashboard: back when its page answers again
        pid, t_kill = up.kill("dashboard")
        up.wait(lambda: up.restarted("dashboard", pid) and _answers(up.url), BACK_TIMEOUT_S, "dashboard restart")
        figures["dashboard_back_s"] = round(time.time() - t_kill, 1)
        assert "restart 1 of dashboard (exit code -9 (SIGKILL))" in up.text

        # the producer: back when a data message of the restarted producer reaches the raw topic; it resumes
        pid, t_kill = up.kill("producer")
        sent = len(raw_rows(up.bootstrap))  # after the kill: nothing more comes from the killed one

        def producer_log_after_restart() -> str:
            text = (up.workdir / "logs" / "producer.log").read_text(errors="replace")
            return text.split("---- dtmon: restart 1 of producer", 1)[1] if "restart 1 of producer" in text else ""

        up.wait(lambda: up.restarted("producer", pid) and len(raw_rows(up.bootstrap)) > sent, BACK_TIMEOUT_S,
                "producer restart")
        figures["producer_back_s"] = round(time.time() - t_kill, 1)
        assert "resuming s3://minidt-stream/ at" in " ".join(producer_log_after_restart().split())

        # the processor (Spark driver): back when a results message published after the kill arrives
        last_batch = max(r.batch_id for r in results(up.bootstrap))
        pid, t_kill = up.kill("processor")
        figures["processor_back_s"] = round(up.wait(lambda: published_after(up.bootstrap, t_kill), BACK_TIMEOUT_S,
                                                    "results after the processor restart"), 1)  # fmt: skip
        assert up.restarted("processor", pid)
        batch_ids = [r.batch_id for r in results(up.bootstrap)]
        assert max(batch_ids) > last_batch and len(batch_ids) == len(set(batch_ids))  # same query, no batch twice

        # nothing was lost: the broker was never restarted, every row produced before is still there
        assert up.children()["broker"]["pid"] == broker_pid
        after = raw_rows(up.bootstrap)
        assert {k: after.get(k) for k in before} == before
        figures.update(raw_rows_before=sum(before.values()), raw_rows_after=sum(after.values()),
                       results_messages=len(batch_ids))  # fmt: skip

        # the in-memory broker: restarted, its loss said in one line, producer and processor start over
        pid, t_kill = up.kill("broker")
        figures["memory_broker_results_again_s"] = round(up.wait(lambda: published_after(up.bootstrap, t_kill),
                                                                 BACK_TIMEOUT_S, "results after the broker restart"), 1)
        assert "the in-memory broker's data was lost on restart" in up.text
        assert "restart 1 of broker (exit code -9 (SIGKILL))" in up.text
        assert sum(raw_rows(up.bootstrap).values()) < sum(after.values())  # it really started empty
        up.stop()
    finally:
        kill_tree(up.proc, up.pids if up.proc.poll() is None else set())
    save("memory", figures)
    assert up.proc.returncode == 0, up.text
    assert "all dtmon children stopped" in up.text
    assert not [p for p in up.pids if alive(p)]
    assert not any(port_open(p) for p in (up.broker_port, up.s3_port, up.dashboard_port))


def test_embedded_apache_kafka_restarted_after_kill_keeps_every_message(tmp_path):
    """`dtmon up --broker apache`: Apache Kafka on disk in WORKDIR/kafka, the raw topic created with its
    retention; a `kill -9` of the broker restarts it on the same storage, every row produced before is
    still there, the processor goes on with the same query (no start over)."""
    from confluent_kafka.admin import ConfigResource

    up = Up(tmp_path, "--broker", "apache")
    figures: dict[str, float | int] = {}
    try:
        up.wait(lambda: "dashboard answering after" in up.text, START_TIMEOUT_S, "dashboard")
        up.wait(lambda: published_after(up.bootstrap, 0), START_TIMEOUT_S, "first results message")
        assert "broker: Apache Kafka, storage" in up.text
        resource = ConfigResource(ConfigResource.Type.TOPIC, "minidt-hits")
        admin = KafkaClients(up.bootstrap).admin()
        described = admin.describe_configs([resource])[resource].result(30)
        assert described["retention.ms"].value == "3600000"
        before = raw_rows(up.bootstrap)
        assert before
        last_batch = max(r.batch_id for r in results(up.bootstrap))

        pid, t_kill = up.kill("broker")
        figures["apache_broker_results_again_s"] = round(up.wait(lambda: published_after(up.bootstrap, t_kill),
                                                                 BACK_TIMEOUT_S, "results after the broker restart"), 1)
        assert "restart 1 of broker (exit code -9 (SIGKILL))" in up.text
        assert "broker restarted on its durable storage" in up.text
        assert "data was lost" not in up.text
        after = raw_rows(up.bootstrap)
        assert {k: after.get(k) for k in before} == before  # every row produced before the kill is kept
        batch_ids = [r.batch_id for r in results(up.bootstrap)]
        assert max(batch_ids) > last_batch and len(batch_ids) == len(set(batch_ids))  # same query, no batch twice
        figures.update(raw_rows_before=sum(before.values()), raw_rows_after=sum(after.values()),
                       results_messages=len(batch_ids))  # fmt: skip
        up.stop()
    finally:
        kill_tree(up.proc, up.pids if up.proc.poll() is None else set())
    save("apache", figures)
