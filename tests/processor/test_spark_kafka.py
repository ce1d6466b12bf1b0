"""Spark's own Kafka source (``format("kafka")``): the column mapping to message rows, and
identical results messages from both sources on the same raw topic, on both brokers."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from dtmon.schema import ResultsMessage
from dtmon.settings import load_settings
from processor.app import ResultsPublisher, start_query
from dtmon.wire import parse_run
from processor.message_rows import MESSAGE_SCHEMA
from processor.spark_kafka import connector_package, message_rows
from tests.processor.conftest import create_topic
from tests.processor.test_stream import produce_run, read_until

KAFKA_ROW = (
    "topic string, partition int, offset bigint, timestamp timestamp, "
    "headers array<struct<key: string, value: binary>>, value binary"
)
"""The built-in Kafka source's columns with ``includeHeaders=true`` (key and timestampType left out)."""

TIMING_FIELDS = {"batch_started", "published"}
"""Fields of a results message that depend on when the batch ran, not on its input."""


def test_connector_matches_the_installed_spark():
    import pyspark

    assert connector_package() == f"org.apache.spark:spark-sql-kafka-0-10_2.13:{pyspark.__version__}"
    assert connector_package("4.2.0").endswith(":4.2.0")


def test_message_rows_maps_the_builtin_columns_like_the_python_source(spark):
    """Headers as ``dtmon.wire.header_dict`` reads them (last value wins) and ``dtmon-run`` as ``parse_run``."""
    ts = dt.datetime(2026, 12, 2, 7, 0, 0, 123000, tzinfo=dt.timezone.utc)
    arrow = b"application/vnd.apache.arrow.stream"
    rows = [
        ("raw", 0, 5, ts, [("content-type", arrow), ("dtmon-synthetic", b"1"), ("dtmon-run", b"810")], b"a"),
        ("raw", 1, 6, ts, [("dtmon-run", b"7"), ("dtmon-run", b"8"), ("dtmon-synthetic", b"0")], b"b"),
        ("raw", 1, 7, ts, [("dtmon-run", b"x")], b"c"),
        ("raw", 1, 8, ts, [("dtmon-run", b"-3")], b"d"),
        ("raw", 1, 9, ts, [("dtmon-run", b"4294967296")], b""),
        ("raw", 2, 0, ts, None, None),
    ]
    got = message_rows(spark.createDataFrame(rows, KAFKA_ROW)).collect()
    assert [tuple(r.asDict()) for r in got][0] == tuple(MESSAGE_SCHEMA.names)
    ms = int(ts.timestamp() * 1000)
    assert [r.produced_ms for r in got] == [ms] * 6
    assert [r.content_type for r in got] == [arrow.decode(), None, None, None, None, None]
    assert [r.synthetic for r in got] == [True, False, False, False, False, False]
    headers = ["810", "8", "x", "-3", "4294967296", None]
    assert [r.run for r in got] == [parse_run(h) for h in headers] == [810, 8, None, None, None, None]
    assert [(r.topic, r.partition, r.offset, r.value) for r in got][:2] == [("raw", 0, 5, b"a"), ("raw", 1, 6, b"b")]
    assert got[-1].value is None


@pytest.mark.integration
def test_builtin_source_reads_up_to_the_list_offsets_answer(spark, kafka_bootstrap, broker_kind, genuine_table, topic_name):
    """Spark's source plans up to ListOffsets(latest). Apache Kafka answers the log end; Tansu 0.6
    answers the last record batch's base offset + 1, so on Tansu the built-in source misses the
    tail of the log (dtmon's Python source confirms the end with PARTITION_EOF and reads it all)."""
    from confluent_kafka import TopicPartition

    from dtmon.kafka import KafkaClients

    raw = f"{topic_name}-raw"
    create_topic(kafka_bootstrap, raw)
    first_ms = int(time.time() * 1000) - 30_000
    sent = produce_run(kafka_bootstrap, raw, 9, genuine_table, first_ms, end=True) - first_ms + 1  # messages on the topic
    consumer = KafkaClients(kafka_bootstrap).consumer("test-list-offsets")
    try:
        _, listed = consumer.get_watermark_offsets(TopicPartition(raw, 0), timeout=10, cached=False)
    finally:
        consumer.close()
    read = (spark.read.format("kafka").option("kafka.bootstrap.servers", kafka_bootstrap).option("subscribe", raw)
            .option("startingOffsets", "earliest").load().count())  # fmt: skip
    assert read == listed
    if broker_kind == "apache":
        assert listed == sent
    else:
        assert listed < sent  # the quirk: kafka_source=spark needs a real Kafka broker


def results_of(spark, kafka_bootstrap, raw: str, source: str, tmp_path, rows: int) -> list[ResultsMessage]:
    """Results messages of a query with ``kafka_source=source`` over the whole raw topic (until ``rows`` DAQ rows and the run end)."""
    results = f"{raw}-{source}"
    create_topic(kafka_bootstrap, results)
    settings = load_settings(
        bootstrap_servers=kafka_bootstrap, raw_topic=raw, results_topic=results, trigger_interval_s=1.0,
        checkpoint_location=str(tmp_path / f"checkpoint-{source}"), starting_offsets="earliest", scint_channel=138,
        kafka_source=source,
    )  # fmt: skip
    query = start_query(spark, settings, ResultsPublisher(kafka_bootstrap, results))
    try:
        return read_until(kafka_bootstrap, results, lambda ms: sum(m.rows_read for m in ms) >= rows
                          and any(m.run_state == "ended" for m in ms), timeout_s=120)  # fmt: skip
    finally:
        query.stop()


@pytest.mark.integration
@pytest.mark.parametrize("broker_kind", ["apache"], indirect=True)  # Tansu: see the ListOffsets test above
def test_both_sources_give_identical_results(spark, kafka_bootstrap, genuine_table, tmp_path, topic_name):
    """The same raw topic (a run with its markers) read by the Python data source and by Spark's
    Kafka source: every results field equal except the batch timing."""
    raw = f"{topic_name}-raw"
    create_topic(kafka_bootstrap, raw)
    produce_run(kafka_bootstrap, raw, 9, genuine_table, int(time.time() * 1000) - 30_000, end=True)

    python = results_of(spark, kafka_bootstrap, raw, "python", tmp_path, genuine_table.num_rows)
    builtin = results_of(spark, kafka_bootstrap, raw, "spark", tmp_path, genuine_table.num_rows)
    assert len(python) == len(builtin) == 1  # the whole run was on the topic before each query started
    a, b = (m.model_dump(exclude=TIMING_FIELDS) for m in (python[0], builtin[0]))
    for doc in (a, b):  # an event's time is when the driver saw it, like the timing fields
        doc["events"] = [{k: v for k, v in e.items() if k != "time"} for e in doc["events"]]
    assert a == b
    assert a["rows_read"] == genuine_table.num_rows and a["hits"] > 0 and a["run"] == 9 and a["run_state"] == "ended"
    assert a["orbits_with_scintillator"] == 2  # E1/E2 computed on both (scintillator channel 138)


def test_kafka_secrets_are_redacted_in_the_plans_of_both_sources(spark, tmp_path):
    """A SASL password and a client key given to either Kafka source never show in Spark's plan strings
    (``spark.redaction.regex``, ``spark.sql.redaction.options.regex`` of ``processor.session.spark_session``)."""
    from dtmon.kafka import KafkaConfig
    from processor import spark_kafka
    from processor.kafka_source import SOURCE_NAME, kafka_options

    password, key_body = "pw-never-logged-123", "KEYBODYnever-logged-456"
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    cert.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    key.write_text(f"-----BEGIN PRIVATE KEY-----\n{key_body}\n-----END PRIVATE KEY-----\n")
    config = KafkaConfig(
        bootstrap_servers="127.0.0.1:1", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
        sasl_username="alice", sasl_password=password, ssl_certificate_location=str(cert), ssl_key_location=str(key),
    )  # fmt: skip
    frames = {
        "spark": spark.readStream.format("kafka").options(**spark_kafka.kafka_options(config)),
        "python": spark.readStream.format(SOURCE_NAME).options(**kafka_options(config)),
    }
    for name, reader in frames.items():
        plan = reader.option("subscribe", "t").load()._jdf.queryExecution().toString()
        assert "alice" in plan or name == "spark", plan  # the options are in the plan ...
        assert "*********(redacted)" in plan, plan
        assert password not in plan and key_body not in plan, f"secret in the {name} source's plan"  # ... the secrets not
