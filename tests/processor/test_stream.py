"""The streaming query on real brokers (Tansu and Apache Kafka) and real Spark: results add up exactly,
and a query restarted from its checkpoint resumes without loss or duplicates."""

from __future__ import annotations

import json
import time

import numpy as np
import pyarrow as pa
import pytest
from confluent_kafka import KafkaError, TopicPartition

from dtmon.kafka import KafkaClients
from dtmon.schema import RESULTS_VERSION, ResultsMessage
from dtmon.settings import load_settings
from dtmon.wire import CONTENT_TYPE_ARROW, CONTENT_TYPE_CONTROL, encode_arrow
from processor.app import ResultsPublisher, start_query
from tests.processor.conftest import (
    create_topic,
    edges_of,
    expected_extras,
    expected_outputs,
    produce_table,
)

pytestmark = pytest.mark.integration


def read_results(bootstrap: str, topic: str, rows_wanted: int, timeout_s: float = 180.0) -> list[ResultsMessage]:
    """Consume results messages from the start until they cover ``rows_wanted`` rows."""
    consumer = KafkaClients(bootstrap).consumer("test-results", enable_partition_eof=True)
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
    query = start_query(spark, settings, ResultsPublisher(settings.kafka, settings.results_topic))
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


def produce_run(bootstrap: str, topic: str, run: int, table: pa.Table, start_ms: int, end: bool) -> int:
    """Send a run as the producer does: run-start marker, Arrow messages of 100 rows with header
    ``dtmon-run``, and (if ``end``) the run-end marker; Kafka timestamps start_ms, start_ms + 1, ...
    Returns the timestamp of the last message."""
    producer = KafkaClients(bootstrap).producer(acks="all", enable_idempotence=True, linger_ms=5)
    run_header = ("dtmon-run", str(run).encode())

    def marker(event: str) -> tuple[bytes, list]:
        doc = {"event": event, "run": run, "file": f"data_{run:06d}.txt", "rows": table.num_rows}
        return json.dumps(doc).encode(), [("content-type", CONTENT_TYPE_CONTROL.encode()), run_header]

    messages = [marker("run-start")]
    for first in range(0, table.num_rows, 100):
        messages.append((encode_arrow(table.slice(first, 100)), [("content-type", CONTENT_TYPE_ARROW.encode()), run_header]))
    if end:
        messages.append(marker("run-end"))
    for i, (value, headers) in enumerate(messages):
        producer.produce(topic, value=value, headers=headers, timestamp=start_ms + i)
    assert producer.flush(30) == 0
    return start_ms + len(messages) - 1


def read_until(bootstrap: str, topic: str, done, timeout_s: float = 180.0) -> list[ResultsMessage]:
    """Consume the results topic from the start until ``done(messages)`` is true."""
    consumer = KafkaClients(bootstrap).consumer("test-runs", enable_partition_eof=True)
    consumer.assign([TopicPartition(topic, 0, 0)])
    messages: list[ResultsMessage] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not done(messages):
            msg = consumer.poll(0.5)
            if msg is None or (msg.error() and msg.error().code() == KafkaError._PARTITION_EOF):
                continue
            assert msg.error() is None, msg.error()
            messages.append(ResultsMessage.from_json(msg.value()))
    finally:
        consumer.close()
    assert done(messages), f"timed out with {len(messages)} results messages"
    return messages


def test_runs_are_carried_into_the_results(spark, kafka_bootstrap, genuine_table, tmp_path, topic_name):
    """Run markers on the raw topic: run number, running/ended and start time in every message;
    E1/E2 with the genuine rows' scintillator channel 138."""
    raw, results = f"{topic_name}-raw", f"{topic_name}-results"
    create_topic(kafka_bootstrap, raw)
    create_topic(kafka_bootstrap, results)
    settings = load_settings(
        bootstrap_servers=kafka_bootstrap, raw_topic=raw, results_topic=results, trigger_interval_s=1.0,
        checkpoint_location=str(tmp_path / "checkpoint"), starting_offsets="earliest", scint_channel=138,
    )
    start5 = int(time.time() * 1000) - 60_000
    end5 = produce_run(kafka_bootstrap, raw, 5, genuine_table, start5, end=True)
    query = start_query(spark, settings, ResultsPublisher(kafka_bootstrap, results))
    try:
        first = read_until(kafka_bootstrap, results, lambda ms: any(m.run_state == "ended" for m in ms))
        assert sum(m.rows_read for m in first) == genuine_table.num_rows
        start6 = end5 + 1
        produce_run(kafka_bootstrap, raw, 6, genuine_table.slice(0, 300), start6, end=False)
        everything = read_until(kafka_bootstrap, results, lambda ms: sum(m.rows_read for m in ms) >= genuine_table.num_rows + 300)
    finally:
        query.stop()

    run5 = [m for m in everything if m.run == 5]
    run6 = [m for m in everything if m.run == 6]
    assert run5 and run6 and len(run5) + len(run6) == len(everything)
    assert all(m.run_started == start5 / 1000 for m in run5)
    assert run5[-1].run_state == "ended"
    assert all((m.run_state, m.run_started) == ("running", start6 / 1000) for m in run6)
    assert sum(m.rows_read for m in run5) == genuine_table.num_rows  # markers are not rows
    assert sum(m.malformed_rows for m in everything) == 0
    for m in everything:
        assert m.version == RESULTS_VERSION and (m.scintillator.fpga, m.scintillator.channel) == (1, 138)
        assert m.scintillator.source == "configured"
        assert m.channel_health is not None and m.channel_health.window_batches == 30  # dtmon/checks.toml window
        assert m.detector_time_s is not None and m.detector_time_s < 1.0
    # run 5 was on the topic before the query started: the first micro-batch holds all of
    # it, so its E1/E2 equal pandas' on the whole run (no orbit split across batches)
    assert len(run5) == 1
    expected = expected_extras(genuine_table.to_pandas(), (1, 138), edges_of(settings), settings.max_orbit_gap)
    np.testing.assert_array_equal([c.occupancy_scint.bin_counts for c in run5[0].chambers], expected["occupancy_scint"])
    np.testing.assert_array_equal([c.drift_time.bin_counts for c in run5[0].chambers], expected["drift_time"])
    assert run5[0].orbit_jumps == expected["orbit_jumps"] == 1
    assert run5[0].orbits_with_scintillator == expected["orbits_with_scintillator"] == 2
