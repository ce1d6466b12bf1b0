"""S3 seeding (dtmon.services): what is uploaded, and the upload to a real moto server."""

from __future__ import annotations

import shutil
import socket
import uuid
from pathlib import Path

import pytest

from dtmon.daqfiles import SYNTHETIC_MANIFEST, SourceError
from dtmon import services
from dtmon.services import plan_uploads, s3_client, seed


def daq_dir(tmp_path: Path, genuine_csv: Path, name: str = "daq") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    shutil.copy(genuine_csv, folder / "data_000010.txt")
    (folder / "data_000009.txt").write_bytes(b"".join(genuine_csv.read_bytes().splitlines(keepends=True)[:11]))
    (folder / "notes.txt").write_text("not a DAQ file: there are data_*.txt files beside it\n")
    (folder / "notes.md").write_text("not a DAQ file\n")
    (folder / "raw.dat").write_bytes(b"\x00" * 16)
    (folder / ".hidden.txt").write_text("2,0,1,2,3,4\n")
    return folder


def test_plan_uploads_takes_daq_files_in_name_order_and_marks_synthetic(tmp_path, genuine_csv):
    genuine = daq_dir(tmp_path, genuine_csv)
    plan = plan_uploads([genuine, genuine_csv], prefix="/run1/")
    assert [(u.key, u.path, u.synthetic) for u in plan] == [
        ("run1/data_000009.txt", genuine / "data_000009.txt", False),
        ("run1/data_000010.txt", genuine / "data_000010.txt", False),
        (f"run1/{genuine_csv.name}", genuine_csv, False),
    ]

    synthetic = daq_dir(tmp_path, genuine_csv, "synthetic")
    (synthetic / SYNTHETIC_MANIFEST).write_text('{"synthetic": true}')
    plan = plan_uploads([synthetic / "data_000010.txt"])
    assert [(u.key, u.synthetic) for u in plan] == [("data_000010.txt", True), (SYNTHETIC_MANIFEST, True)]

    with pytest.raises(SourceError, match="genuine and synthetic"):
        plan_uploads([genuine, synthetic])
    with pytest.raises(SourceError, match="data_000010.txt"):
        plan_uploads([genuine, genuine / "data_000010.txt"])
    with pytest.raises(SourceError, match="no DAQ files"):
        plan_uploads([_empty(tmp_path)])
    with pytest.raises(SourceError, match="no such file"):
        plan_uploads([tmp_path / "missing"])


def _empty(tmp_path: Path) -> Path:
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "README").write_text("nothing here\n")
    return folder


def test_seed_uploads_synthetic_files_with_metadata_and_manifest(tmp_path, genuine_csv, s3_endpoint):
    synthetic = tmp_path / "synthetic"
    synthetic.mkdir()
    shutil.copy(genuine_csv, synthetic / "data_000000.txt")
    (synthetic / SYNTHETIC_MANIFEST).write_text('{"synthetic": true, "seed": 7}')
    bucket = f"b-{uuid.uuid4().hex[:8]}"

    seed(s3_endpoint, bucket, plan_uploads([synthetic], prefix="gen"))

    client = s3_client(s3_endpoint)
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == ["gen/data_000000.txt", f"gen/{SYNTHETIC_MANIFEST}"]
    head = client.head_object(Bucket=bucket, Key="gen/data_000000.txt")
    assert head["Metadata"] == {"dtmon-synthetic": "1"}
    body = client.get_object(Bucket=bucket, Key="gen/data_000000.txt")["Body"].read()
    assert body == genuine_csv.read_bytes()


@pytest.mark.integration
def test_broker_on_s3_storage_restarted_after_kill_keeps_every_message(tmp_path, s3_endpoint):
    """Tansu's S3 storage engine on the moto server: a supervised broker killed with SIGKILL comes
    back on the same port with every acknowledged message (the storage `dtmon up --persist` uses)."""
    import os
    import signal
    import time

    from confluent_kafka import KafkaError, TopicPartition

    from dtmon.kafka import KafkaClients
    from dtmon.services import ensure_bucket, free_port, s3_storage_env, start_broker
    from dtmon.supervisor import RestartPolicy, Stack

    bucket = f"broker-{uuid.uuid4().hex[:8]}"
    ensure_bucket(s3_client(s3_endpoint), bucket)
    port = free_port()
    stack = Stack(policy=RestartPolicy(first_delay_s=0.0))
    broker = stack.start_service(lambda: start_broker(port=port, log=tmp_path / "tansu.log", storage=f"s3://{bucket}/",
                                                      env=s3_storage_env(s3_endpoint)), restart=True)  # fmt: skip
    clients = KafkaClients(f"127.0.0.1:{port}")

    def count() -> int:
        consumer = clients.consumer(f"count-{time.monotonic_ns()}", enable_partition_eof=True)
        consumer.assign([TopicPartition("raw", p, 0) for p in (0, 1)])
        seen, ends = 0, set()
        deadline = time.monotonic() + 30
        while len(ends) < 2 and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error() is None:
                seen += 1
            elif msg.error().code() == KafkaError._PARTITION_EOF:
                ends.add(msg.partition())
        consumer.close()
        return seen

    try:
        clients.ensure_topic("raw", 2, timeout=30)
        producer = clients.producer(acks="all", enable_idempotence=True, linger_ms=5)
        for i in range(300):
            producer.produce("raw", value=b"%d" % i, partition=i % 2)
        assert producer.flush(30) == 0
        assert count() == 300
        old_pid = broker.process.pid
        os.kill(old_pid, signal.SIGKILL)
        t_kill = time.monotonic()
        while not stack.supervise():
            assert time.monotonic() - t_kill < 30, "broker not restarted"
            time.sleep(0.05)
        kept = count()
        recovered_s = time.monotonic() - t_kill
        print(f"S3-storage broker: restarted and all {kept} messages read back {recovered_s:.2f} s after kill -9")
        assert broker.process.pid != old_pid and kept == 300
    finally:
        stack.stop()


def test_free_port_never_hands_out_a_port_twice(monkeypatch):
    """A broker and its controller asked for ports in a row must not get the same one (Apache
    Kafka then refuses to start), even when the kernel offers the same port again."""
    offered = iter([41001, 41001, 41001, 41002])

    class OneSocket:
        def __init__(self, *args):
            self.port = next(offered)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def bind(self, address):
            pass

        def getsockname(self):
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(services, "_HANDED_OUT", set())
    monkeypatch.setattr(socket, "socket", OneSocket)
    assert services.free_port() == 41001
    assert services.free_port() == 41002


def test_free_ports_in_a_row_are_distinct_and_bindable():
    ports = [services.free_port() for _ in range(20)]
    assert len(set(ports)) == 20
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
