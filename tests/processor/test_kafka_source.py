"""The Kafka stream source: offset planning (pure) and reading from real brokers (Tansu and Apache Kafka)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from confluent_kafka import Producer

from dtmon.hits import HIT_SCHEMA, DecodeError
from dtmon.wire import (
    CONTENT_TYPE_ARROW,
    CONTENT_TYPE_CONTROL,
    CONTENT_TYPE_CSV,
    encode_arrow,
)
from processor.kafka_source import (
    MESSAGE_SCHEMA,
    OUTPUT_SCHEMA,
    RUN_DATA,
    RUN_END,
    RUN_START,
    KafkaRange,
    KafkaStreamReader,
    cap_offsets,
    decode_messages,
    decode_records,
    parse_control,
    parse_run,
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
    messages = pa.Table.from_batches(batches, schema=MESSAGE_SCHEMA)  # one row per Kafka message, like Spark's own source
    assert messages.num_rows == sent
    assert sorted(zip(messages["partition"].to_pylist(), messages["offset"].to_pylist())) == sorted(
        (p, o) for p in (0, 1) for o in range(end[topic_name][str(p)]))
    assert set(messages["content_type"].to_pylist()) == {CONTENT_TYPE_ARROW}
    rows = pa.Table.from_batches([decode_messages(b) for b in batches], schema=OUTPUT_SCHEMA)
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


def control(event: str, run: int) -> bytes:
    return json.dumps({"event": event, "run": run, "file": "data_000007.txt", "rows": 10}).encode()


def test_decode_records_run_headers_and_control_messages(genuine_table):
    arrow = encode_arrow(genuine_table.slice(0, 4))
    values = [control("run-start", 7), arrow, b"2,0,5,100,7,3", control("run-end", 7), b'{"event": "pause"}', arrow]
    ctypes = [CONTENT_TYPE_CONTROL, CONTENT_TYPE_ARROW, CONTENT_TYPE_CSV, CONTENT_TYPE_CONTROL, CONTENT_TYPE_CONTROL, CONTENT_TYPE_ARROW]
    runs = [7, 7, 7, 7, 7, None]
    batch = decode_records(values, ctypes, [1, 2, 3, 4, 5, 6], [False] * 6, runs)
    table = pa.Table.from_batches([batch])
    assert batch.schema.equals(OUTPUT_SCHEMA)
    assert table.num_rows == 1 + 4 + 1 + 1 + 1 + 4
    assert table.column("run_event").to_pylist() == [RUN_START] + [RUN_DATA] * 5 + [RUN_END] + [RUN_DATA] * 5
    assert table.column("run").to_pylist() == [7] * 7 + [7] + [None] * 4  # the bad control row keeps its header run
    heads = table.column("HEAD").to_pylist()
    assert heads[0] is None and heads[6] is None and heads[7] is None  # marker rows and the bad one: DAQ columns null
    assert table.column("produced_ms").to_pylist()[6:8] == [4, 5]


def test_parse_control_and_run_header():
    assert parse_control(control("run-end", 3), None) == (3, RUN_END)
    assert parse_control(b'{"event": "run-start"}', 12) == (12, RUN_START)  # run from the header
    for bad in (b"not json", b'{"event": "stop", "run": 1}', b'{"event": "run-end", "run": -1}', b"[1, 2]"):
        with pytest.raises(DecodeError):
            parse_control(bad, 1)
    assert parse_run("42") == 42 and parse_run(None) is None and parse_run("x") is None
