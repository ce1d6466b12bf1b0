"""Wire format of the raw topic: many DAQ rows per Kafka message.

Default: one Arrow IPC *stream* per message (schema + one record batch with
``HIT_SCHEMA``; body compressed with zstd or lz4), marked with the Kafka header
``content-type: application/vnd.apache.arrow.stream``. Also accepted on the read side:
``text/csv`` (one or more DAQ CSV lines, with or without header), the design of
earlier implementations that sent one CSV line per message.

Headers on every message the producer sends:

=================  =========================================================
``content-type``   ``application/vnd.apache.arrow.stream`` or ``text/csv``
``dtmon-schema``   ``dtmon.hits/1``
``dtmon-file``     name of the DAQ file the rows come from
``dtmon-first-line`` 1-based line of the first row in that file
``dtmon-synthetic`` ``1`` when the rows come from the synthetic generator
``dtmon-run``      run number, decimal (data and control messages)
=================  =========================================================

Run markers: at the start and end of every run the producer sends a control message
(``CONTENT_TYPE_CONTROL``, no DAQ rows) to every partition of the raw topic.
"""

from __future__ import annotations

import pyarrow as pa

from dtmon.hits import HIT_SCHEMA, DecodeError, decode_csv

CONTENT_TYPE_ARROW = "application/vnd.apache.arrow.stream"
CONTENT_TYPE_CSV = "text/csv"
HITS_SCHEMA_ID = "dtmon.hits/1"
CONTENT_TYPE_CONTROL = "application/vnd.dtmon.control+json"
"""Run-start / run-end control messages: JSON {"event": "run-start"|"run-end", "run": N, "file": name, "rows": n}; no DAQ rows."""


def encode_arrow(batch: pa.RecordBatch | pa.Table, compression: str | None = "zstd", use_threads: bool = True) -> bytes:
    """Serialise rows with ``HIT_SCHEMA`` as one Arrow IPC stream.

    Args:
        batch: rows to send (a table is combined into one record batch).
        compression: ``zstd``, ``lz4`` or ``None``/``none``.
        use_threads: compress columns on pyarrow's shared thread pool. Off for paced
            sending: there it queues behind other pyarrow work (e.g. a CSV parse) and
            one message can take 300 ms instead of 10 ms.
    Raises:
        ValueError: if the rows do not have ``HIT_SCHEMA``.
    """
    if isinstance(batch, pa.Table):
        batch = batch.combine_chunks().to_batches()[0] if batch.num_rows else pa.RecordBatch.from_pylist([], HIT_SCHEMA)
    if not batch.schema.equals(HIT_SCHEMA):
        raise ValueError(f"rows must have the dtmon hit schema, got {batch.schema}")
    codec = None if compression in (None, "none") else compression
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, HIT_SCHEMA, options=pa.ipc.IpcWriteOptions(compression=codec, use_threads=use_threads)) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def decode_message(value: bytes, content_type: str | None) -> pa.Table:
    """Decode one raw-topic message into rows with ``HIT_SCHEMA``.

    Args:
        value: the Kafka message value.
        content_type: the ``content-type`` header (None is read as Arrow).
    Returns:
        Table of N rows; malformed CSV lines are all-null rows.
    Raises:
        DecodeError: the payload is not a readable message of that content type.
    """
    if content_type == CONTENT_TYPE_CSV:
        return decode_csv(value).table
    if content_type not in (None, CONTENT_TYPE_ARROW):
        raise DecodeError(f"unknown content-type {content_type!r}")
    try:
        table = pa.ipc.open_stream(value).read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        raise DecodeError(f"not an Arrow IPC stream: {exc}") from exc
    if not table.schema.equals(HIT_SCHEMA):
        raise DecodeError(f"unexpected schema {table.schema}")
    return table


def header_dict(headers: list[tuple[str, bytes]] | None) -> dict[str, str]:
    """Kafka headers as a str -> str dict (last value wins)."""
    return {k: (v.decode() if isinstance(v, bytes) else (v or "")) for k, v in (headers or [])}
