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

from collections import Counter

import pyarrow as pa

from dtmon.hits import HIT_SCHEMA, DecodeError, decode_csv
from dtmon.validation import MessageLimits, MessageRejected, check_arrow_message, sanitize_rows

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


def decode_message(
    value: bytes, content_type: str | None, limits: MessageLimits | None = None, rejected: Counter | None = None
) -> pa.Table:
    """Decode one raw-topic message into rows with ``HIT_SCHEMA``, checked for meaning.

    An Arrow message is measured before decompression and refused above ``limits``;
    rows that fail ``dtmon.validation.check_rows`` (null fields, values out of range)
    become all-null (malformed) rows, counted per reason in ``rejected``.

    Args:
        value: the Kafka message value.
        content_type: the ``content-type`` header (None is read as Arrow).
        limits: size caps (default ``MessageLimits()``: 64 MiB, 1 000 000 rows).
        rejected: if given, rows rejected per reason are added to it.
    Returns:
        Table of N rows; malformed CSV lines and rejected rows are all-null rows.
    Raises:
        DecodeError: the payload is not a readable message of that content type.
        MessageRejected: (a DecodeError) the message is over ``limits``.
    """
    limits = limits or MessageLimits()
    if content_type == CONTENT_TYPE_CSV:
        if len(value) > limits.max_bytes:
            raise MessageRejected("message over the size cap", f"{len(value):,} bytes > {limits.max_bytes:,}")
        table = decode_csv(value).table
    elif content_type not in (None, CONTENT_TYPE_ARROW):
        raise DecodeError(f"unknown content-type {content_type!r}")
    else:
        try:
            check_arrow_message(value, limits)
            table = pa.ipc.open_stream(value).read_all()
        except MessageRejected:
            raise
        except (pa.ArrowException, OSError) as exc:  # ArrowInvalid, ArrowNotImplementedError (corrupt type ids), ...
            raise DecodeError(f"not an Arrow IPC stream: {exc}") from exc
        if not table.schema.equals(HIT_SCHEMA):
            raise DecodeError(f"unexpected schema {table.schema}")
    if table.num_rows > limits.max_rows:
        raise MessageRejected("message over the row cap", f"{table.num_rows:,} rows > {limits.max_rows:,}")
    table, reasons = sanitize_rows(table)
    if rejected is not None:
        rejected.update(reasons)
    return table


def header_dict(headers: list[tuple[str, bytes]] | None) -> dict[str, str]:
    """Kafka headers as a str -> str dict (last value wins)."""
    return {k: (v.decode() if isinstance(v, bytes) else (v or "")) for k, v in (headers or [])}
