"""The streaming query on a real Tansu broker and real Spark: results add up exactly,
and a query restarted from its checkpoint resumes without loss or duplicates."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition

from dtmon.schema import ResultsMessage
from dtmon.settings import load_settings
from processor.app import ResultsPublisher, start_query
from tests.processor.conftest import create_topic, expected_outputs, produce_table

pytestmark = pytest.mark.integration


def read_results(bootstrap: str, topic: str, rows_wanted: int, timeout_s: float = 180.0) -> list[ResultsMessage]:
    """Consume results messages from the start until they cover ``rows_wanted`` rows."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-results", "enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, 0, 0)])
    messages: list[ResultsMessage] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and sum(m.rows_read for m in messages) < rows_wanted:
            msg = consumer.poll(0.5)
            if msg is None or (msg.error() and msg.error().code() == KafkaError._PARTITION_EOF):
                continue
            assert msg.error() is None, msg.error()
            messages.append(ResultsMessage.from_json(msg.value()))
            assert msg.key() == str(messages[-1].batch_id).encode()
    finally:
        consumer.close()
    return messages


def run_until(spark, settings, rows_wanted: int) -> list[ResultsMessage]:
    query = start_query(spark, settings, ResultsPublisher(settings.bootstrap_servers, settings.results_topic))
    try:
        return read_results(settings.bootstrap_servers, settings.results_topic, rows_wanted)
    finally:
        query.stop()


def assert_sums_match(messages: list[ResultsMessage], table: pa.Table) -> None:
    expected = expected_outputs(table.to_pandas())
    assert sum(m.rows_read for m in messages) == table.num_rows
    assert sum(m.hits for m in messages) == expected["hits"]
    assert sum(m.hits_outside_chambers for m in messages) == expected["hits_outside_chambers"]
    per_chamber = np.sum([m.hits_per_chamber for m in messages], axis=0)
    np.testing.assert_array_equal(per_chamber, expected["hits_per_chamber"])
    occupancy = np.sum([[c.occupancy.bin_counts for c in m.chambers] for m in messages], axis=0)
    np.testing.assert_array_equal(occupancy, expected["occupancy"])


def test_stream_then_restart_from_checkpoint(spark, kafka_bootstrap, genuine_table, tmp_path, topic_name):
    raw, results = f"{topic_name}-raw", f"{topic_name}-results"
    create_topic(kafka_bootstrap, raw, partitions=2)
    create_topic(kafka_bootstrap, results)
    settings = load_settings(
        bootstrap_servers=kafka_bootstrap, raw_topic=raw, results_topic=results, trigger_interval_s=1.0,
        checkpoint_location=str(tmp_path / "checkpoint"), starting_offsets="earliest",
    )
    first, second = genuine_table.slice(0, 600), genuine_table.slice(600)
    produce_table(kafka_bootstrap, raw, first, rows_per_message=50, partitions=2)
    before = run_until(spark, settings, first.num_rows)
    assert_sums_match(before, first)
    # one micro-batch holds everything that was there when it started: the multiplicity
    # histogram of a single batch equals pandas' on the same rows
    if len(before) == 1:
        multiplicity = np.array([c.multiplicity.bin_counts for c in before[0].chambers])
        np.testing.assert_array_equal(multiplicity, expected_outputs(first.to_pandas())["multiplicity"])

    produce_table(kafka_bootstrap, raw, second, rows_per_message=50, partitions=2)
    everything = run_until(spark, settings, genuine_table.num_rows)
    assert_sums_match(everything, genuine_table)
    batch_ids = [m.batch_id for m in everything]
    assert batch_ids == sorted(set(batch_ids)), "a batch was published twice"
    latest = everything[-1]
    assert latest.produced_first <= latest.produced_last <= latest.published
