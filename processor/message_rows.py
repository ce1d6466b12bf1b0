"""The rows both Kafka sources give Spark, one per Kafka message (pure, no Spark, no Kafka client).

``processor.kafka_source`` (dtmon's Python source) yields them and ``processor.spark_kafka`` maps
Spark's built-in source onto them; the micro-batch's first stage (``processor.decode``) reads them.
Kept apart from both sources so that Spark's Python task workers, which decode, import neither
the Kafka client nor pydantic (unpickling their functions 0.4–0.5 s → 0.08 s, docs/performance.md).
"""

from __future__ import annotations

import pyarrow as pa

MESSAGE_SCHEMA = pa.schema(
    [
        pa.field("topic", pa.string()),
        pa.field("partition", pa.int32()),
        pa.field("offset", pa.int64()),
        pa.field("produced_ms", pa.int64()),
        pa.field("content_type", pa.string()),
        pa.field("synthetic", pa.bool_()),
        pa.field("run", pa.int32()),
        pa.field("value", pa.binary()),
    ]
)
"""Rows the source yields, one per Kafka message: where it sits, its Kafka timestamp in ms
since the epoch, its ``content-type`` header, whether it holds synthetic rows
(``dtmon-synthetic: 1``), its run (``dtmon-run``, null without the header or when it is
not an integer >= 0) and the value bytes."""

SPARK_SCHEMA = (
    "topic string, partition int, offset bigint, produced_ms bigint, content_type string, synthetic boolean, "
    "run int, value binary"
)
"""``MESSAGE_SCHEMA`` as a Spark DDL string (the source's schema)."""
