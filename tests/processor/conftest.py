"""Fixtures for the processor: one local Spark session, and helpers to fill a raw topic."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from dtmon.hits import decode_csv
from dtmon.settings import load_settings
from dtmon.wire import CONTENT_TYPE_ARROW, encode_arrow


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """A real local Spark session (2 cores) with the dtmon Kafka source registered."""
    from processor.app import spark_session

    settings = load_settings(spark_master="local[2]", shuffle_partitions=2)
    session = spark_session(settings, app_name="dtmon-tests")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def genuine_table(genuine_csv) -> pa.Table:
    """The genuine rows decoded with dtmon.hits (999 rows)."""
    return decode_csv(genuine_csv.read_bytes()).table


def create_topic(bootstrap: str, topic: str, partitions: int = 1) -> None:
    """Create ``topic`` on the broker and wait for it."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, partitions)]).values():
        future.result(30)


def produce_table(bootstrap: str, topic: str, table: pa.Table, rows_per_message: int, partitions: int = 1) -> int:
    """Send ``table`` as Arrow messages, round-robin over partitions; return the message count."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5})
    count = 0
    for start in range(0, table.num_rows, rows_per_message):
        producer.produce(
            topic,
            value=encode_arrow(table.slice(start, rows_per_message)),
            partition=count % partitions,
            headers=[("content-type", CONTENT_TYPE_ARROW.encode())],
        )
        count += 1
    assert producer.flush(30) == 0
    return count


def expected_outputs(frame: pd.DataFrame) -> dict:
    """Task 1-4 outputs computed independently with pandas from DAQ rows (PDF section 5.2).

    Returns hits, hits per chamber (4,), occupancy (4, 64) and multiplicity (4, 64).
    """
    hits = frame[frame.HEAD == 2]
    cells = hits[(hits.TDC_CHANNEL <= 127) & hits.FPGA.isin([0, 1])].copy()
    cells["chamber"] = cells.FPGA.astype(int) * 2 + (cells.TDC_CHANNEL >= 64).astype(int)
    cells["channel"] = cells.TDC_CHANNEL.astype(int) % 64
    occupancy = np.zeros((4, 64), dtype=int)
    for (chamber, channel), n in cells.groupby(["chamber", "channel"]).size().items():
        occupancy[chamber, channel] = n
    multiplicity = np.zeros((4, 64), dtype=int)
    per_orbit = cells.groupby(["chamber", "ORBIT_CNT"]).channel.nunique()
    for (chamber, _orbit), k in per_orbit.items():
        multiplicity[chamber, k - 1] += 1
    return {
        "hits": len(hits),
        "hits_outside_chambers": len(hits) - len(cells),
        "hits_per_chamber": occupancy.sum(axis=1),
        "occupancy": occupancy,
        "multiplicity": multiplicity,
    }
