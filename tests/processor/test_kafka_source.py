"""The Kafka stream source: offset planning (pure) and reading from a real Tansu broker."""

from __future__ import annotations

import pyarrow as pa
import pytest
from confluent_kafka import Producer

from dtmon.hits import HIT_SCHEMA
from dtmon.wire import CONTENT_TYPE_ARROW, CONTENT_TYPE_CSV, encode_arrow
from processor.kafka_source import (
    OUTPUT_SCHEMA,
    KafkaRange,
    KafkaStreamReader,
    cap_offsets,
    decode_records,
    plan_ranges,
    read_range,
)
from tests.processor.conftest import create_topic, produce_table


def test_plan_ranges_one_per_partition_with_new_data():
    start = {"t": {"0": 5, "1": 7}}
    end = {"t": {"0": 9, "1": 7, "2": 3}}
    assert plan_ranges(start, end) == [KafkaRange("t", 0, 5, 9), KafkaRange("t", 2, 0, 3)]


def test_plan_ranges_splits_to_min_partitions_without_gaps():
    ranges = plan_ranges({"t": {"0": 0}}, {"t": {"0": 10}}, min_partitions=3)
    assert len(ranges) == 3
    assert ranges[0].start == 0 and ranges[-1].end == 10
    assert all(a.end == b.start for a, b in zip(ranges, ranges[1:]))


def test_cap_offsets_shares_budget_by_backlog():
    start = {"t": {"0": 0, "1": 100}}
    latest = {"t": {"0": 300, "1": 200}}
    capped = cap_offsets(start, latest, 100)
    assert capped == {"t": {"0": 75, "1": 125}}
    assert cap_offsets(start, latest, 10_000) == latest


def test_decode_records_arrow_csv_and_garbage(genuine_table):
    arrow = encode_arrow(genuine_table.slice(0, 10))
    values = [arrow, b"2,0,5,100,7,3", b"2,1,70,101,8,4\n", b"not arrow at all"]
    ctypes = [CONTENT_TYPE_ARROW, CONTENT_TYPE_CSV, CONTENT_TYPE_CSV, CONTENT_TYPE_ARROW]
    batch = decode_records(values, ctypes, [1000, 2000, 3000, 4000], [False, True, True, False])
    assert batch.schema.equals(OUTPUT_SCHEMA)
    assert batch.num_rows == 13
    table = pa.Table.from_batches([batch])
    assert table.slice(0, 10).select(HIT_SCHEMA.names).equals(genuine_table.slice(0, 10))
    assert table.column("TDC_CHANNEL").to_pylist()[10:12] == [5, 70]
    assert table.column("produced_ms").to_pylist()[9:] == [1000, 2000, 3000, 4000]
    assert table.column("synthetic").to_pylist()[10:] == [True, True, False]
    assert table.column("HEAD").to_pylist()[12] is None  # the undecodable message: one malformed row


@pytest.mark.integration
def test_end_offsets_and_read_back_on_real_broker(kafka_bootstrap, topic_name, genuine_table):
    """Many messages land in one record batch; the end offset must still be the true log end."""
    create_topic(kafka_bootstrap, topic_name, partitions=2)
    sent = produce_table(kafka_bootstrap, topic_name, genuine_table, rows_per_message=37, partitions=2)

    reader = KafkaStreamReader({"kafka.bootstrap.servers": kafka_bootstrap, "subscribe": topic_name, "startingOffsets": "earliest"})
    try:
        start = reader.initialOffset()
        end = reader.latestOffset(start, reader.getDefaultReadLimit())
    finally:
        reader.stop()
    assert start == {topic_name: {"0": 0, "1": 0}}
    assert sum(end[topic_name].values()) == sent

    batches = [b for rng in plan_ranges(start, end, min_partitions=3) for b in read_range(kafka_bootstrap, rng)]
    rows = pa.Table.from_batches(batches, schema=OUTPUT_SCHEMA)
    assert rows.num_rows == genuine_table.num_rows
    key = ["ORBIT_CNT", "BX_COUNTER", "TDC_CHANNEL", "FPGA", "HEAD", "TDC_MEAS"]
    got = rows.select(HIT_SCHEMA.names).to_pandas().sort_values(key).reset_index(drop=True)
    want = genuine_table.to_pandas().sort_values(key).reset_index(drop=True)
    assert got.equals(want)


@pytest.mark.integration
def test_latest_offset_follows_new_messages(kafka_bootstrap, topic_name, genuine_table):
    create_topic(kafka_bootstrap, topic_name)
    reader = KafkaStreamReader({"kafka.bootstrap.servers": kafka_bootstrap, "subscribe": topic_name, "startingOffsets": "latest"})
    try:
        start = reader.initialOffset()
        assert start == {topic_name: {"0": 0}}
        producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 50})
        for i in range(5):
            producer.produce(topic_name, value=encode_arrow(genuine_table.slice(i * 10, 10)), headers=[("content-type", CONTENT_TYPE_ARROW.encode())])
        producer.flush(30)
        end = reader.latestOffset(start, reader.getDefaultReadLimit())
        assert end == {topic_name: {"0": 5}}
        reader.commit(end)
    finally:
        reader.stop()
