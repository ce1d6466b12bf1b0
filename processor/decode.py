"""Decoding the source's message rows into DAQ rows: the first step of every micro-batch.

The source (``processor.kafka_source``) yields one row per Kafka message
(``MESSAGE_SCHEMA``); ``decode_messages`` turns a batch of them into Arrow DAQ rows
(``OUTPUT_SCHEMA``) following the raw-topic protocol (``dtmon.wire``): Arrow or CSV data
messages give their rows, a run marker gives one all-null row with ``run`` and
``run_event`` set (``dtmon.wire.RunEvent``), a message that cannot be decoded gives one
all-null row with ``run_event`` = DATA (a malformed row, counted downstream), never a
failed task. Pure, tested without Spark or a broker.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pyarrow as pa

from dtmon.hits import HIT_SCHEMA, DecodeError, decode_csv
from dtmon.validation import MessageLimits, MessageRejected, sanitize_rows
from dtmon.wire import CONTENT_TYPE_CONTROL, CONTENT_TYPE_CSV, RunEvent, decode_control, decode_message
from processor.message_rows import MESSAGE_SCHEMA

log = logging.getLogger(__name__)

OUTPUT_SCHEMA = pa.schema(
    list(HIT_SCHEMA)
    + [
        pa.field("produced_ms", pa.int64()),
        pa.field("synthetic", pa.bool_()),
        pa.field("run", pa.int32()),
        pa.field("run_event", pa.int8()),
    ]
)
"""DAQ rows decoded from messages (``decode_records``): the DAQ columns
(``dtmon.hits.HIT_SCHEMA``), the Kafka timestamp of the message each row came in (ms since
the epoch), the synthetic flag, the run and the run event (``dtmon.wire.RunEvent`` code)."""


def decode_records(
    values: list[bytes],
    content_types: list[str | None],
    timestamps_ms: list[int],
    synthetic: list[bool],
    runs: list[int | None] | None = None,
    origins: list[str] | None = None,
    rejected: Counter | None = None,
    limits: MessageLimits | None = None,
    refused: list[str] | None = None,
) -> pa.RecordBatch:
    """Decode raw-topic message values into one record batch with ``OUTPUT_SCHEMA``.

    Consecutive ``text/csv`` messages (one CSV line each) are decoded
    together. A message that cannot be decoded gives one all-null row (malformed); a
    control message gives one all-null row with ``run`` and ``run_event`` set.

    Args:
        values, content_types, timestamps_ms, synthetic: per message, length M.
        runs: per message, the ``dtmon-run`` header as an int (None: no header); default all None.
        origins: per message, where it came from (e.g. ``topic/partition@offset``), for the log.
        rejected: if given, gets the rows rejected per reason (``dtmon.validation``: they
            become malformed rows) and ``rejected message: <reason>`` per refused message.
        limits: size caps of one message (``Settings.max_message_bytes/max_message_rows``).
        refused: if given, gets ``<origin>: <reason>`` per message refused whole (too large,
            undecodable), each counted as one malformed row.
    Returns:
        record batch of N rows (N = rows in all messages, + 1 per undecodable or control message).
    """
    no_run = -1  # stands for null until the Arrow column is built
    runs = [no_run] * len(values) if runs is None else [no_run if r is None else r for r in runs]
    tables: list[pa.Table] = []
    extra: list[tuple] = []  # per table: produced_ms, synthetic, run, run_event (scalars or per-row lists)

    def add(table: pa.Table, ts, syn, run, event: int = RunEvent.DATA) -> None:
        tables.append(table)
        extra.append((ts, syn, run, event))

    i = 0
    while i < len(values):
        if content_types[i] == CONTENT_TYPE_CSV:
            j = i
            while j < len(values) and content_types[j] == CONTENT_TYPE_CSV:
                j += 1
            chunk = [v if v.endswith(b"\n") else v + b"\n" for v in values[i:j]]
            table, reasons = sanitize_rows(decode_csv(b"".join(chunk)).table)
            _count_rejected(reasons, rejected, origins[i] if origins else f"#{i} of the batch")
            if table.num_rows == j - i:
                add(table, timestamps_ms[i:j], synthetic[i:j], runs[i:j])
            else:  # multi-line CSV messages: the block's first message stamps every row
                add(table, timestamps_ms[i], synthetic[i], runs[i])
            i = j
            continue
        try:
            if content_types[i] == CONTENT_TYPE_CONTROL:
                run, event = decode_control(values[i], None if runs[i] == no_run else runs[i])
                add(_null_row(), timestamps_ms[i], synthetic[i], no_run if run is None else run, event)
            else:
                reasons: Counter = Counter()
                add(decode_message(values[i], content_types[i], limits, rejected=reasons), timestamps_ms[i], synthetic[i], runs[i])
                _count_rejected(reasons, rejected, origins[i] if origins else f"#{i} of the batch")
        except DecodeError as exc:
            where = origins[i] if origins else f"#{i} of the batch"
            reason = exc.reason if isinstance(exc, MessageRejected) else "undecodable"
            if rejected is not None:
                rejected[f"rejected message: {reason}"] += 1
            if refused is not None:
                refused.append(f"{where}: {reason}")
            log.error("undecodable raw message %s (%s): counted as one malformed row", where, exc)
            add(_null_row(), timestamps_ms[i], synthetic[i], runs[i])
        i += 1
    if not tables:
        return pa.RecordBatch.from_pylist([], OUTPUT_SCHEMA)
    rows = pa.concat_tables(tables).combine_chunks()
    sizes = [t.num_rows for t in tables]

    def column(k: int, dtype) -> np.ndarray:
        return np.concatenate([np.broadcast_to(np.asarray(e[k], dtype), (n,)) for e, n in zip(extra, sizes)])

    run = column(2, np.int64)
    columns = [c.combine_chunks() for c in rows.columns] + [
        pa.array(column(0, np.int64)),
        pa.array(column(1, bool)),
        pa.array(run, type=pa.int32(), mask=run == no_run),
        pa.array(column(3, np.int8)),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=OUTPUT_SCHEMA)


def _count_rejected(reasons: Counter, rejected: Counter | None, where: str) -> None:
    """Log the rows of one message that failed validation (one line) and add them to ``rejected``."""
    if reasons:
        log.error("raw message %s: %d row(s) rejected, counted as malformed: %s", where, sum(reasons.values()), dict(reasons))
        if rejected is not None:
            rejected.update(reasons)


def _null_row() -> pa.Table:
    return pa.Table.from_pylist([{}], HIT_SCHEMA)


def decode_messages(
    messages: pa.RecordBatch | pa.Table, limits: MessageLimits | None = None, refused: list[str] | None = None
) -> pa.RecordBatch:
    """Decode a batch of source rows (``MESSAGE_SCHEMA``) into DAQ rows (``OUTPUT_SCHEMA``).

    ``decode_records`` on the message columns; an undecodable or refused message is logged
    with its topic, partition and offset, becomes one malformed row and, with ``refused``,
    adds ``topic/partition@offset: reason`` there.
    """
    cols = {name: messages.column(name).to_pylist() for name in MESSAGE_SCHEMA.names}
    return decode_records(
        [v or b"" for v in cols["value"]],
        cols["content_type"],
        [0 if t is None else t for t in cols["produced_ms"]],
        [bool(x) for x in cols["synthetic"]],
        cols["run"],
        [f"{t}/{p}@{o}" for t, p, o in zip(cols["topic"], cols["partition"], cols["offset"])],
        limits=limits,
        refused=refused,
    )
