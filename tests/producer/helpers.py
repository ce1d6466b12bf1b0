"""Helpers shared by the producer tests: read a topic back, read a CSV independently."""

from __future__ import annotations

import io
import time
import uuid
from pathlib import Path

import pandas as pd
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from dtmon.hits import COLUMNS


def consume_all(bootstrap: str, topic: str, timeout: float = 30.0) -> list:
    """Every message of ``topic`` (all partitions, from the beginning), read with assign().

    Uses enable.partition.eof to know where each partition ends (Tansu's ListOffsets
    "latest" is off, platform notes). Raises TimeoutError after ``timeout`` s.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        at_end: set[int] = set()
        messages = []
        deadline = time.monotonic() + timeout
        while len(at_end) < len(partitions):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: read {len(messages)} messages, partitions at end {at_end}")
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())
                    continue
                raise RuntimeError(msg.error())
            at_end.discard(msg.partition())
            messages.append(msg)
        return messages
    finally:
        consumer.close()


def read_csv_independently(path: Path | bytes, has_header: bool = True) -> pd.DataFrame:
    """The DAQ rows of a CSV file with pandas (not dtmon code), int64/float64 columns."""
    source = io.BytesIO(path) if isinstance(path, bytes) else path
    frame = pd.read_csv(
        source, header=0 if has_header else None, names=list(COLUMNS), dtype={c: "int64" for c in COLUMNS[:5]}
    )
    frame["TDC_MEAS"] = frame["TDC_MEAS"].astype("float64")
    return frame
