"""Where the two test brokers differ, shown on both (Tansu 0.6 and Apache Kafka 4): the answer of
ListOffsets(latest) against the true log end, and time-based retention.

dtmon's code must be right on both: the Python source's end-offset probe confirms the log end
with the PARTITION_EOF event, so it gets the true end whatever ListOffsets answers.
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import NewTopic

from dtmon.kafka import KafkaClients

from processor.kafka_source import KafkaRange, KafkaStreamReader

pytestmark = pytest.mark.integration


def watermarks(bootstrap: str, topic: str) -> tuple[int, int]:
    """(low, high) watermarks of partition 0 as the broker's ListOffsets answers them."""
    consumer = KafkaClients(bootstrap).consumer("test-watermarks")
    try:
        return consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10, cached=False)
    finally:
        consumer.close()


def produce(bootstrap: str, topic: str, n: int) -> None:
    """``n`` small messages, in as few record batches as the producer makes (one linger window)."""
    producer = KafkaClients(bootstrap).producer(linger_ms=200, acks="all")
    for i in range(n):
        producer.produce(topic, value=f"m{i}".encode())
    assert producer.flush(30) == 0


def test_list_offsets_against_the_true_log_end(kafka_bootstrap, broker_kind, topic_name):
    admin = KafkaClients(kafka_bootstrap).admin()
    admin.create_topics([NewTopic(topic_name, 1)])[topic_name].result(30)
    produce(kafka_bootstrap, topic_name, 50)
    _, listed = watermarks(kafka_bootstrap, topic_name)
    reader = KafkaStreamReader({"kafka.bootstrap.servers": kafka_bootstrap, "subscribe": topic_name})
    try:
        probed = reader._end_offsets()[topic_name]["0"]
    finally:
        reader.stop()
    assert probed == 50  # the probe's answer: the true end on both brokers
    if broker_kind == "apache":
        assert listed == 50  # ListOffsets is the log end: the probe's extra read costs one empty fetch
    else:
        assert listed < 50  # Tansu 0.6: the last record batch's base offset + 1


def test_time_retention_drops_old_segments(kafka_bootstrap, broker_kind, topic_name):
    """A topic with retention.ms=3000 and segment.ms=1000: Apache Kafka deletes the closed segment
    (the low watermark rises past its messages); Tansu 0.6 (memory engine) keeps everything."""
    config = {"retention.ms": "3000", "segment.ms": "1000", "cleanup.policy": "delete"}
    admin = KafkaClients(kafka_bootstrap).admin()
    admin.create_topics([NewTopic(topic_name, 1, config=config)])[topic_name].result(30)
    produce(kafka_bootstrap, topic_name, 10)
    time.sleep(1.5)
    produce(kafka_bootstrap, topic_name, 10)  # rolls the first segment (older than segment.ms)
    deadline = time.monotonic() + (30 if broker_kind == "apache" else 8)
    low, high = watermarks(kafka_bootstrap, topic_name)
    while low == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
        low, high = watermarks(kafka_bootstrap, topic_name)
    if broker_kind == "apache":
        assert low >= 10, (low, high)  # the first segment is gone
    else:
        assert low == 0, (low, high)


def test_dtmon_creates_the_raw_topic_with_its_retention(kafka_bootstrap, broker_kind, topic_name, monkeypatch):
    """``dtmon topics`` (also ``dtmon up`` and the producer) creates the raw topic with the
    retention of ``Settings.raw_topic_config``: the broker reports those values for the topic."""
    from confluent_kafka.admin import ConfigResource
    from typer.testing import CliRunner

    from dtmon.cli import app

    monkeypatch.setenv("DTMON_RAW_RETENTION_S", "7200")
    done = CliRunner().invoke(app, ["topics", "--bootstrap-servers", kafka_bootstrap, "--raw-topic", topic_name,
                                    "--results-topic", f"{topic_name}-results", "--raw-retention-mb", "500"])  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "retention.ms 7200000" in done.output
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic_name)
    admin = KafkaClients(kafka_bootstrap).admin()
    described = admin.describe_configs([resource])[resource].result(30)
    values = {name: entry.value for name, entry in described.items()}
    assert values["retention.ms"] == "7200000", broker_kind
    assert values["retention.bytes"] == "500000000"
    assert values["segment.ms"] == "600000"
    assert values["cleanup.policy"] == "delete"


def test_the_probe_sees_the_last_message_before_the_commit_marker(kafka_bootstrap, broker_kind, topic_name):
    """A transactional producer ends each transaction with a commit marker (one offset). The end
    probe reports the true end and the last message before it, so a reader of the last range stops
    there; that range read with and without the tail gives the same messages, on both brokers."""
    from processor.kafka_source import plan_ranges, read_range, with_tails

    clients = KafkaClients(kafka_bootstrap)
    clients.ensure_topic(topic_name, 1)
    producer = clients.producer({"transactional.id": f"{topic_name}-tx"})
    producer.init_transactions(30)
    delivered: list[int] = []
    for txn in range(3):
        producer.begin_transaction()
        for i in range(5):
            producer.produce(topic_name, value=f"t{txn}m{i}".encode(),
                             on_delivery=lambda err, msg: delivered.append(msg.offset()) if err is None else None)
        producer.commit_transaction(30)
    reader = KafkaStreamReader({"kafka.bootstrap.servers": kafka_bootstrap, "subscribe": topic_name})
    try:
        end = reader._end_offsets()
        ranges = with_tails(plan_ranges({topic_name: {"0": 0}}, end, min_partitions=2), reader._tails)
    finally:
        reader.stop()
    assert end[topic_name]["0"] == max(delivered) + 2  # the last message, then its transaction's commit marker
    assert reader._tails[(topic_name, 0)] == (max(delivered) + 2, max(delivered))
    last = ranges[-1]
    assert last.end == max(delivered) + 2 and last.last_message == max(delivered) and last.stop == last.end - 1
    with_tail = [m for b in read_range(clients, last) for m in b.column("value").to_pylist()]
    without = [m for b in read_range(clients, KafkaRange(last.topic, 0, last.start, last.end))
               for m in b.column("value").to_pylist()]
    assert with_tail == without and with_tail[-1] == b"t2m4"
