"""The Kafka stream source: offset planning (pure), its Kafka paths on client doubles, and reading from real brokers (Tansu and Apache Kafka)."""

from __future__ import annotations

import time

import pyarrow as pa
import pytest
from confluent_kafka import KafkaError

from dtmon.hits import HIT_SCHEMA
from dtmon.kafka import KafkaClients
from dtmon.wire import CONTENT_TYPE_ARROW, encode_arrow
from processor.decode import OUTPUT_SCHEMA, decode_messages
from processor.kafka_source import (
    MESSAGE_SCHEMA,
    KafkaRange,
    KafkaStreamReader,
    cap_offsets,
    plan_ranges,
    read_range,
    with_tails,
)
from tests.doubles.kafka import FakeClients, FakeError, FakeMessage, eof
from tests.processor.conftest import create_topic, produce_table


def test_plan_ranges_one_per_partition_with_new_data():
    start = {"t": {"0": 5, "1": 7}}
    end = {"t": {"0": 9, "1": 7, "2": 3}}
    assert plan_ranges(start, end) == [KafkaRange("t", 0, 5, 9), KafkaRange("t", 2, 0, 3)]


def test_plan_ranges_splits_only_into_slices_of_min_slice_offsets():
    assert len(plan_ranges({"t": {"0": 0}}, {"t": {"0": 127}}, min_partitions=2, min_slice=64)) == 1
    assert [(r.start, r.end) for r in plan_ranges({"t": {"0": 0}}, {"t": {"0": 128}}, min_partitions=4, min_slice=64)] \
        == [(0, 64), (64, 128)]


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

    batches = [b for rng in plan_ranges(start, end, min_partitions=3) for b in read_range(KafkaClients(kafka_bootstrap), rng)]
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
        producer = KafkaClients(kafka_bootstrap).producer(linger_ms=50)
        for i in range(5):
            producer.produce(topic_name, value=encode_arrow(genuine_table.slice(i * 10, 10)), headers=[("content-type", CONTENT_TYPE_ARROW.encode())])
        producer.flush(30)
        end = reader.latestOffset(start, reader.getDefaultReadLimit())
        assert end == {topic_name: {"0": 5}}
        reader.commit(end)
    finally:
        reader.stop()


def test_recreated_topic_stops_the_source_with_one_line(kafka_bootstrap, topic_name, genuine_table):
    """A raw topic deleted and created again under a running query: its end moved back, so reading
    on would skip the new rows up to the old position; the source raises one line instead."""
    from confluent_kafka.admin import AdminClient

    from dtmon.kafka import KafkaSetupError

    create_topic(kafka_bootstrap, topic_name)
    reader = KafkaStreamReader({"kafka.bootstrap.servers": kafka_bootstrap, "subscribe": topic_name, "startingOffsets": "earliest"})
    producer = KafkaClients(kafka_bootstrap).producer(linger_ms=0)
    try:
        start = reader.initialOffset()
        for i in range(5):
            producer.produce(topic_name, value=encode_arrow(genuine_table.slice(i * 10, 10)), headers=[("content-type", CONTENT_TYPE_ARROW.encode())])
            producer.flush(30)
        end = reader.latestOffset(start, reader.getDefaultReadLimit())
        assert end == {topic_name: {"0": 5}}
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        admin.delete_topics([topic_name])[topic_name].result(30)
        create_topic(kafka_bootstrap, topic_name)
        producer.produce(topic_name, value=encode_arrow(genuine_table.slice(0, 10)), headers=[("content-type", CONTENT_TYPE_ARROW.encode())])
        producer.flush(30)
        deadline = time.monotonic() + 30
        with pytest.raises(KafkaSetupError, match=r"now ends at offset 1, before offset 5 .*--reset-checkpoint"):
            while time.monotonic() < deadline:  # the client learns the new topic's metadata first
                assert reader.latestOffset(end, reader.getDefaultReadLimit()) == end
                time.sleep(0.5)
    finally:
        reader.stop()


# -- the source's Kafka paths on client doubles (no broker) --------------------------------------------------


def test_read_range_skips_replayed_offsets_and_stops_at_the_range_end():
    events = [FakeMessage("t", 0, 3, b"x", [("content-type", b"text/csv"), ("dtmon-run", b"4")]),
              FakeMessage("t", 0, 2, b"replayed"), FakeMessage("t", 0, 4, b"y"), FakeMessage("t", 0, 5, b"beyond")]
    clients = FakeClients(lambda: {"events": list(events)})
    batches = list(read_range(clients, KafkaRange("t", 0, 3, 5)))
    table = pa.Table.from_batches(batches, MESSAGE_SCHEMA)
    assert table.column("offset").to_pylist() == [3, 4] and table.column("value").to_pylist() == [b"x", b"y"]
    assert table.column("run").to_pylist() == [4, None] and table.column("content_type").to_pylist() == ["text/csv", None]
    consumer = clients.consumers[0]
    assert consumer.assigned == [("t", 0, 3)] and consumer.closed and consumer.config["auto.offset.reset"] == "error"


def test_a_range_with_its_last_message_known_stops_there_without_an_end_of_partition_event():
    """Offsets 6 and 7 are transaction markers (the probe saw message 5, then the end at 8): the reader
    stops after 5, though no end-of-partition event comes (it would raise after the stall timeout)."""
    events = [FakeMessage("t", 0, 4, b"a"), FakeMessage("t", 0, 5, b"b")]
    clients = FakeClients(lambda: {"events": list(events)})
    table = pa.Table.from_batches(list(read_range(clients, KafkaRange("t", 0, 4, 8, last_message=5), stall_timeout_s=5.0)),
                                  MESSAGE_SCHEMA)
    assert table.column("value").to_pylist() == [b"a", b"b"] and clients.consumers[0].closed
    with pytest.raises(TimeoutError):  # the same range without the probe's tail waits for the end
        list(read_range(FakeClients(lambda: {"events": list(events)}), KafkaRange("t", 0, 4, 8), stall_timeout_s=0.0))
    assert list(read_range(clients, KafkaRange("t", 0, 6, 8, last_message=5))) == []  # markers only: nothing read
    assert len(clients.consumers) == 1


def test_a_reader_never_waits_for_more_messages_than_are_there():
    """A range's offsets include transaction markers, which are never delivered: a reader that asked
    librdkafka for (end - next offset) messages with a timeout waited out that timeout."""
    events = [FakeMessage("t", 0, 0, b"a"), FakeMessage("t", 0, 2, b"b"), None, FakeMessage("t", 0, 4, b"c")]
    clients = FakeClients(lambda: {"events": list(events)})
    table = pa.Table.from_batches(list(read_range(clients, KafkaRange("t", 0, 0, 6, last_message=4))), MESSAGE_SCHEMA)
    assert table.column("value").to_pylist() == [b"a", b"b", b"c"]
    assert clients.consumers[0].overlong_waits == 0


def test_with_tails_marks_only_the_ranges_that_end_at_a_probed_end():
    ranges = plan_ranges({"t": {"0": 0, "1": 0}}, {"t": {"0": 10, "1": 4}}, min_partitions=3)
    marked = with_tails(ranges, {("t", 0): (10, 8), ("t", 1): (5, 3)})
    assert [(r.start, r.end, r.last_message) for r in marked] == [(0, 5, None), (5, 10, 8), (0, 4, None)]
    assert [r.stop for r in marked] == [5, 9, 4]


def test_read_range_raises_on_a_stall_and_on_a_fatal_error():
    stalled = FakeClients(lambda: {"events": [FakeMessage("t", 0, 0, b"x")]})
    with pytest.raises(TimeoutError, match="offset 1"):
        list(read_range(stalled, KafkaRange("t", 0, 0, 3), stall_timeout_s=0.0))
    assert stalled.consumers[0].closed
    fatal = FakeClients(lambda: {"events": [FakeMessage("t", 0, 0, None, err=FakeError(KafkaError._FATAL, True))]})
    with pytest.raises(RuntimeError, match="Kafka error"):
        list(read_range(fatal, KafkaRange("t", 0, 0, 3)))


def test_a_reader_whose_short_fetches_bring_nothing_falls_back_to_the_default_wait(monkeypatch):
    """Tansu's S3 engine answers no 25-ms fetch: after SHORT_WAIT_STALL_S without a message the
    reader reads on from the same offset with 500-ms fetches, and later reads of that broker start so."""
    from processor import kafka_source

    monkeypatch.setattr(kafka_source, "_fetch_wait_ms", {})
    monkeypatch.setattr(kafka_source, "SHORT_WAIT_STALL_S", 0.0)
    scripts = iter([{"events": [FakeMessage("t", 0, 3, b"x")]},  # then nothing with short fetches
                    {"events": [FakeMessage("t", 0, 4, b"y")]},
                    {"events": [FakeMessage("t", 0, 5, b"z")]}])
    clients = FakeClients(lambda: next(scripts))
    table = pa.Table.from_batches(list(read_range(clients, KafkaRange("t", 0, 3, 5))), MESSAGE_SCHEMA)
    assert table.column("value").to_pylist() == [b"x", b"y"]  # nothing lost, nothing twice
    first, second = clients.consumers
    assert first.config["fetch.wait.max.ms"] == kafka_source.SHORT_FETCH_WAIT_MS and first.closed
    assert second.config["fetch.wait.max.ms"] == kafka_source.LONG_FETCH_WAIT_MS and second.assigned == [("t", 0, 4)]
    list(read_range(clients, KafkaRange("t", 0, 5, 6)))
    assert clients.consumers[2].config["fetch.wait.max.ms"] == kafka_source.LONG_FETCH_WAIT_MS


def test_max_offsets_per_trigger_caps_the_planned_end(monkeypatch):
    from processor import kafka_source

    script = lambda: {"partitions": {"t": [0, 1]}, "watermarks": {("t", 0): (0, 300), ("t", 1): (0, 200)},  # noqa: E731
                      "events": [eof("t", 0, 300), eof("t", 1, 200)]}
    monkeypatch.setattr(KafkaStreamReader, "clients_cls", lambda self, config: FakeClients(script, config), raising=False)
    reader = KafkaStreamReader({"kafka.bootstrap.servers": "fake:1", "subscribe": "t", "maxOffsetsPerTrigger": "100",
                                "kafka.security.protocol": "SSL"})
    assert reader.clients.config.as_librdkafka_dict()["security.protocol"] == "SSL"
    limit = reader.getDefaultReadLimit()
    first = reader.latestOffset({"t": {"0": 0, "1": 100}}, limit)  # the first micro-batch: FIRST_BATCH_MAX_OFFSETS
    assert first == {"t": {"0": 48, "1": 116}} and kafka_source.FIRST_BATCH_MAX_OFFSETS == 64
    end = reader.latestOffset({"t": {"0": 0, "1": 100}}, limit)
    assert end == {"t": {"0": 75, "1": 125}}
    assert reader.reportLatestOffset() == {"t": {"0": 300, "1": 200}}
    reader.commit(end)
    assert reader.clients.consumers[0].committed == [[("t", 0, 75), ("t", 1, 125)]]


def test_source_options_carry_the_whole_kafka_config_and_hide_its_secrets():
    """``kafka_options`` -> Spark (keys lower-cased) -> ``config_from_options``: the same librdkafka dictionary."""
    from dtmon.kafka import KafkaConfig
    from processor.kafka_source import config_from_options, kafka_options

    config = KafkaConfig(
        bootstrap_servers="b1:9093", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
        sasl_username="dq", sasl_password="pw-1", ssl_ca_location="/ca.pem", extra={"client.id": "x"},
    )  # fmt: skip
    options = {k.lower(): v for k, v in kafka_options(config).items()}
    rebuilt = config_from_options({**options, "subscribe": "raw"})
    assert rebuilt.as_librdkafka_dict() == config.as_librdkafka_dict()
    assert "pw-1" not in repr(rebuilt)
