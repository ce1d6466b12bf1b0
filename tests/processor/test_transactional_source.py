"""The Kafka stream source on a raw topic written by the transactional producer (real Tansu broker).

Transaction markers take offsets, so a planned range may end in markers that no reader
ever receives: the range must close at the end-of-partition event, not wait for a message.
"""

from __future__ import annotations

import time

import pyarrow as pa
import pytest

from dtmon.settings import load_settings
from dtmon.kafka import KafkaClients
from processor.decode import OUTPUT_SCHEMA, decode_messages
from processor.kafka_source import MESSAGE_SCHEMA, KafkaStreamReader, plan_ranges, read_range
from producer.run import run_producer

pytestmark = pytest.mark.integration


def test_source_reads_every_row_the_transactional_producer_committed(kafka_bootstrap, topic_name, genuine_csv):
    settings = load_settings(
        bootstrap_servers=kafka_bootstrap, raw_topic=topic_name, raw_partitions=2, rate=0, rows_per_message=100,
        producer_commit_interval_s=0.01,
    )  # fmt: skip
    stats = run_producer(settings, source=str(genuine_csv))
    assert stats.rows == 999 and stats.commits >= 1

    reader = KafkaStreamReader({"kafka.bootstrap.servers": kafka_bootstrap, "subscribe": topic_name, "startingOffsets": "earliest"})
    try:
        start = reader.initialOffset()
        end = reader.latestOffset(start, reader.getDefaultReadLimit())
    finally:
        reader.stop()
    t = time.monotonic()
    batches = [b for rng in plan_ranges(start, end) for b in read_range(KafkaClients(kafka_bootstrap), rng, stall_timeout_s=20)]
    took = time.monotonic() - t
    assert took < 10, f"read_range waited {took:.1f} s for offsets that are transaction markers"
    messages = pa.Table.from_batches(batches, schema=MESSAGE_SCHEMA)
    assert messages.num_rows == stats.messages + stats.control_messages  # 10 data + run-start/run-end on 2 partitions
    assert sum(end[topic_name].values()) > messages.num_rows  # the markers' offsets are inside the planned ranges
    rows = pa.Table.from_batches([decode_messages(b) for b in batches], schema=OUTPUT_SCHEMA)
    data = rows.filter(pa.compute.equal(rows["run_event"], 0))
    assert data.num_rows == 999 and data["HEAD"].null_count == 0
