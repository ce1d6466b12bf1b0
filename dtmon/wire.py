"""The raw-topic wire protocol: message values, header names, content types and run events.

This module is the one description of the protocol; other modules point here.

**Data messages.** One Kafka message carries many DAQ rows as one Arrow IPC *stream*
(schema + one record batch with ``dtmon.hits.HIT_SCHEMA``; body compressed with zstd or
lz4), ``content-type: application/vnd.apache.arrow.stream``. The read side also accepts
``text/csv`` (one or more DAQ CSV lines, with or without header; one row per message
is the ``--wire csv-line`` producer mode). A malformed CSV line travels as an all-null
row, so the processor counts it.

Headers (constants below):

=====================  =========================================================
``content-type``       ``CONTENT_TYPE_ARROW``, ``CONTENT_TYPE_CSV`` or ``CONTENT_TYPE_CONTROL``
``dtmon-schema``       ``dtmon.hits/1`` (data messages)
``dtmon-file``         name of the DAQ file the rows come from
``dtmon-first-line``   1-based line of the first row in that file (data messages)
``dtmon-synthetic``    ``1`` when the rows come from the synthetic generator, else ``0``
``dtmon-run``          run number, decimal, 0 .. ``MAX_RUN`` (data and control messages)
=====================  =========================================================

**Run markers.** At the start and end of every run the producer sends a control message
to every partition of the raw topic: ``content-type: application/vnd.dtmon.control+json``,
headers ``dtmon-run`` and ``dtmon-file``, value JSON
``{"event": "run-start"|"run-end", "run": N, "file": name, "rows": n}`` (``rows``: DAQ
rows sent in the run so far, 0 at run-start) and no DAQ rows (``encode_control``,
``decode_control``). Downstream the events are the ``RunEvent`` codes (data 0, start 1,
end 2) in the processor's ``run_event`` column.

**Results topic.** One JSON message per micro-batch (``dtmon.schema.ResultsMessage``),
key = batch id, headers ``content-type: application/json``, ``dtmon-schema:
dtmon.results/<version>`` and ``dtmon-query-id`` (the Spark query that published it).
"""

from __future__ import annotations

import json
import logging
from enum import IntEnum

import pyarrow as pa

from dtmon.hits import HIT_SCHEMA, DecodeError, decode_csv

log = logging.getLogger(__name__)

# header names
HEADER_CONTENT_TYPE = "content-type"
HEADER_SCHEMA = "dtmon-schema"
HEADER_FILE = "dtmon-file"
HEADER_FIRST_LINE = "dtmon-first-line"
HEADER_SYNTHETIC = "dtmon-synthetic"
HEADER_RUN = "dtmon-run"
HEADER_QUERY_ID = "dtmon-query-id"

# content types
CONTENT_TYPE_ARROW = "application/vnd.apache.arrow.stream"
CONTENT_TYPE_CSV = "text/csv"
CONTENT_TYPE_CONTROL = "application/vnd.dtmon.control+json"
CONTENT_TYPE_JSON = "application/json"
HITS_SCHEMA_ID = "dtmon.hits/1"

MAX_RUN = 2**31 - 1
"""Largest run number (the processor keeps runs in an int32 column)."""


class RunEvent(IntEnum):
    """What a raw-topic message means for the run: data, or a run-start / run-end marker."""

    DATA = 0
    START = 1
    END = 2

    @property
    def wire_name(self) -> str:
        """The ``event`` value of a control message: ``run-start`` or ``run-end`` (``""`` for DATA)."""
        return {RunEvent.START: "run-start", RunEvent.END: "run-end"}.get(self, "")

    @classmethod
    def from_wire(cls, name: str) -> "RunEvent":
        """The event of a control message's ``event`` value.

        Raises:
            ValueError: not ``run-start`` or ``run-end``.
        """
        for event in (cls.START, cls.END):
            if event.wire_name == name:
                return event
        raise ValueError(f"control event must be 'run-start' or 'run-end', got {name!r}")


Headers = list[tuple[str, bytes]]


def data_headers(content_type: str, file_name: str, first_line: int, synthetic: bool, run: int) -> Headers:
    """Kafka headers of one data message (table in the module docstring)."""
    return [
        (HEADER_CONTENT_TYPE, content_type.encode()),
        (HEADER_SCHEMA, HITS_SCHEMA_ID.encode()),
        (HEADER_FILE, file_name.encode()),
        (HEADER_FIRST_LINE, str(first_line).encode()),
        (HEADER_SYNTHETIC, b"1" if synthetic else b"0"),
        (HEADER_RUN, str(run).encode()),
    ]


def encode_control(event: RunEvent, run: int, file_name: str, rows: int) -> tuple[bytes, Headers]:
    """A run marker: ``RunEvent.START`` before a run's first data message, ``RunEvent.END`` after its last.

    Args:
        event: ``RunEvent.START`` or ``RunEvent.END`` (or their wire names).
        run: run number, 0 .. ``MAX_RUN``.
        file_name: the run's first file (start) or the file of its last data (end).
        rows: DAQ rows sent in the run so far: 0 at start, the run's total at end.
    Returns:
        (value, headers) of the control message (format in the module docstring).
    Raises:
        ValueError: unknown event, run out of range, negative rows, or rows != 0 at start.
    """
    if isinstance(event, str) and not isinstance(event, RunEvent):
        event = RunEvent.from_wire(event)
    if event not in (RunEvent.START, RunEvent.END):
        raise ValueError(f"control event must be run-start or run-end, got {event!r}")
    if not 0 <= run <= MAX_RUN or rows < 0 or (event == RunEvent.START and rows != 0):
        raise ValueError(f"bad {event.wire_name} marker: run {run}, rows {rows}")
    value = json.dumps({"event": event.wire_name, "run": run, "file": file_name, "rows": rows}).encode()
    headers = [
        (HEADER_CONTENT_TYPE, CONTENT_TYPE_CONTROL.encode()),
        (HEADER_RUN, str(run).encode()),
        (HEADER_FILE, file_name.encode()),
    ]
    return value, headers


def decode_control(value: bytes, header_run: int | None = None) -> tuple[int | None, RunEvent]:
    """Run number and event of a control message's value.

    The run comes from the JSON ``run`` field, else from the ``dtmon-run`` header (``header_run``).

    Raises:
        DecodeError: the value is not a JSON object with ``event`` run-start or run-end,
            or its run is not an integer 0 .. ``MAX_RUN``.
    """
    try:
        doc = json.loads(value)
        event = RunEvent.from_wire(doc["event"])
        run = doc.get("run", header_run)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise DecodeError(f"bad control message {value[:200]!r}: {exc!r}") from exc
    if run is not None and (not isinstance(run, int) or isinstance(run, bool) or not 0 <= run <= MAX_RUN):
        raise DecodeError(f"bad run {run!r} in control message")
    return run, event


def parse_run(header: str | None) -> int | None:
    """The run number of a ``dtmon-run`` header value; None if missing or not an integer 0 .. ``MAX_RUN`` (logged)."""
    if header is None:
        return None
    try:
        run = int(header)
    except ValueError:
        log.error("dtmon-run header %r is not an integer: rows get no run", header)
        return None
    return run if 0 <= run <= MAX_RUN else None


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
