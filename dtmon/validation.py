"""Checks for meaning on everything that crosses a boundary: raw DAQ rows, raw messages, results messages.

Pure functions, no I/O. Three layers:

* **raw rows** (``check_rows``): a decoded DAQ row is valid when no field is null and every
  value is inside its range: HEAD 0..5 (the word types the DAQ writes: 2 = TDC hit,
  0/1/3/4/5 = trigger words), FPGA 0..7 and TDC_CHANNEL 0..511 (3- and 9-bit fields),
  ORBIT_CNT 0..2**32-1 (32-bit counter), BX_COUNTER 0..2**24-1 (HEAD 3 words carry a
  24-bit pattern there), TDC_MEAS finite; on hit words (HEAD 2) also BX_COUNTER 0..3563
  (3564 BX per orbit) and TDC_MEAS an integer 0..31 (the 5-bit TDC field; the genuine
  rows have hit TDC_MEAS 1..30). Ranges from the raw 64-bit word layout and the timing
  (MAPD-B course PDF sections 4.2.1, 4.2.4; ``shared/docs/minidt-domain.md`` sections 3-4).
  An all-null row is a malformed CSV line already counted as such; it is left alone.
  ``sanitize_rows`` turns every invalid row into an all-null (malformed) row, so readers
  count it as malformed and never as a hit, and returns the count per reason.
* **raw messages** (``check_arrow_message``): an Arrow IPC stream is measured from its
  message headers *before* any buffer is decompressed: rows per record batch from the
  RecordBatch metadata and the decompressed size from the 8-byte uncompressed-length
  prefix every compressed buffer carries (Arrow IPC format, ``BodyCompression``). A
  message above ``MessageLimits`` is refused (``MessageRejected``) without expanding it.
* **results messages** (``validate_results``, ``parse_results``): what the pydantic schema
  (``dtmon.schema``) cannot say: histogram lengths and bin edges, finite and bounded
  numbers, hits consistent with the histogram sums, sane timestamps.
"""

from __future__ import annotations

import math
import struct
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from dtmon.hits import BX_PER_ORBIT, BX_NS, CELLS_PER_CHAMBER, COLUMNS, HEAD_HIT, HIT_SCHEMA, N_CHAMBERS, DecodeError

ROW_RANGES: dict[str, tuple[int, int]] = {
    "HEAD": (0, 5),
    "FPGA": (0, 7),
    "TDC_CHANNEL": (0, 511),
    "ORBIT_CNT": (0, 2**32 - 1),
    "BX_COUNTER": (0, 2**24 - 1),
}
"""Inclusive ranges of every DAQ row (module docstring)."""

HIT_BX_MAX = BX_PER_ORBIT - 1
"""Largest BX_COUNTER of a hit word: 3563."""

HIT_TDC_MAX = 31
"""Largest TDC_MEAS of a hit word: the 5-bit TDC field."""

NULL_FIELD = "null field"


def _range_reason(name: str, low: float, high: float, hits_only: bool = False) -> str:
    return f"{name} outside {low}..{high}" + (" on a hit word" if hits_only else "")


def _all_valid(table: pa.Table | pa.RecordBatch) -> bool:
    """Fast path of ``check_rows``: True when no row can fail (no nulls, every column inside its rules)."""
    if any(table.column(name).null_count for name in COLUMNS):
        return False
    v = {name: table.column(name).to_numpy() for name in COLUMNS}
    for name, (low, high) in ROW_RANGES.items():
        if v[name].min() < low or v[name].max() > high:
            return False
    tdc = v["TDC_MEAS"]
    if not np.isfinite(tdc.sum()):  # a NaN or inf anywhere (a sum that overflows only sends the rows to the exact check)
        return False
    hit = v["HEAD"] == HEAD_HIT
    if not hit.any():
        return True
    hit_tdc = tdc[hit]
    return bool(
        v["BX_COUNTER"][hit].max() <= HIT_BX_MAX
        and hit_tdc.min() >= 0
        and hit_tdc.max() <= HIT_TDC_MAX
        and (hit_tdc == np.floor(hit_tdc)).all()
    )


def check_rows(table: pa.Table | pa.RecordBatch) -> tuple[np.ndarray, Counter]:
    """Which rows of decoded DAQ rows are valid (rules in the module docstring).

    Args:
        table: N rows with ``dtmon.hits.HIT_SCHEMA`` columns.
    Returns:
        (bad, reasons): ``bad`` bool array (N,), True for an invalid row (all-null rows
        are not bad: they are malformed rows, counted by readers); ``reasons`` counts the
        bad rows per reason (a row is counted under its first failed rule, in the order
        null field, HEAD, FPGA, TDC_CHANNEL, ORBIT_CNT, BX_COUNTER, TDC_MEAS, hit BX, hit TDC).
    """
    n = table.num_rows
    bad = np.zeros(n, dtype=bool)
    reasons: Counter = Counter()
    if n == 0 or _all_valid(table):
        return bad, reasons
    nulls = np.zeros((len(COLUMNS), n), dtype=bool)
    values = {}
    for k, name in enumerate(COLUMNS):
        column = table.column(name)
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        nulls[k] = column.is_null().to_numpy(zero_copy_only=False)
        values[name] = column.fill_null(0).to_numpy(zero_copy_only=False)
    all_null = nulls.all(axis=0)

    def flag(mask: np.ndarray, reason: str) -> None:
        new = mask & ~bad & ~all_null
        count = int(new.sum())
        if count:
            reasons[reason] += count
            bad[new] = True

    flag(nulls.any(axis=0), NULL_FIELD)
    for name, (low, high) in ROW_RANGES.items():
        v = values[name]
        flag((v < low) | (v > high), _range_reason(name, low, high))
    tdc = values["TDC_MEAS"].astype(np.float64)
    flag(~np.isfinite(tdc), "TDC_MEAS not finite")
    hit = values["HEAD"] == HEAD_HIT
    flag(hit & (values["BX_COUNTER"] > HIT_BX_MAX), _range_reason("BX_COUNTER", 0, HIT_BX_MAX, True))
    with np.errstate(invalid="ignore"):
        tdc_bad = (tdc < 0) | (tdc > HIT_TDC_MAX) | (np.mod(tdc, 1) != 0)
    flag(hit & tdc_bad, f"TDC_MEAS not an integer 0..{HIT_TDC_MAX} on a hit word")
    return bad, reasons


def sanitize_rows(table: pa.Table) -> tuple[pa.Table, Counter]:
    """``table`` with every invalid row (``check_rows``) replaced by an all-null (malformed) row.

    Row count and order are kept, so nothing disappears: readers count the replaced rows
    as malformed rows and never as hits.

    Args:
        table: N rows with ``HIT_SCHEMA``.
    Returns:
        (table of N rows with ``HIT_SCHEMA``, rows rejected per reason). The input is
        returned as is when every row is valid.
    """
    bad, reasons = check_rows(table)
    if not reasons:
        return table, reasons
    keep = pa.array(~bad)
    columns = [pa.compute.if_else(keep, table.column(f.name), pa.scalar(None, f.type)) for f in HIT_SCHEMA]
    return pa.Table.from_arrays(columns, schema=HIT_SCHEMA), reasons


# --- raw messages -------------------------------------------------------------------------


@dataclass(frozen=True)
class MessageLimits:
    """Caps on one raw-topic message (``Settings.max_message_bytes`` / ``max_message_rows``).

    Attributes:
        max_bytes: largest decompressed body, bytes (sum of the record batches' buffers).
        max_rows: most DAQ rows.
    """

    max_bytes: int = 64 * 2**20
    max_rows: int = 1_000_000


class MessageRejected(DecodeError):
    """A raw message refused for its size or structure before it was decoded; ``reason`` is short."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


TOO_MANY_ROWS = "message over the row cap"
TOO_LARGE = "message over the size cap"
BAD_STRUCTURE = "malformed Arrow IPC message"


def _table_field(buf: bytes, table: int, index: int) -> int | None:
    """Absolute position of field ``index`` of the flatbuffer table at ``table``; None if absent."""
    vtable = table - struct.unpack_from("<i", buf, table)[0]
    vtable_size = struct.unpack_from("<H", buf, vtable)[0]
    slot = 4 + 2 * index
    if slot + 2 > vtable_size:
        return None
    offset = struct.unpack_from("<H", buf, vtable + slot)[0]
    return table + offset if offset else None


def _deref(buf: bytes, pos: int) -> int:
    return pos + struct.unpack_from("<I", buf, pos)[0]


def record_batch_layout(metadata: bytes) -> tuple[int, list[tuple[int, int]], bool]:
    """Rows, body buffers and compression of an Arrow IPC RecordBatch message, read from its flatbuffer.

    Reads ``Message.header`` (a ``RecordBatch`` table): ``length`` (rows), ``buffers``
    (vector of 16-byte ``Buffer`` structs: offset, length in the body) and whether a
    ``compression`` table is present (Arrow format ``Message.fbs``, ``Schema.fbs``).

    Args:
        metadata: the message's flatbuffer bytes (``pyarrow.ipc.Message.metadata``).
    Returns:
        (rows, [(offset, length) per buffer], compressed).
    Raises:
        MessageRejected: the flatbuffer is truncated or inconsistent.
    """
    try:
        root = _deref(metadata, 0)
        header = _table_field(metadata, root, 2)  # Message.header
        if header is None:
            raise ValueError("no header")
        batch = _deref(metadata, header)
        length_at = _table_field(metadata, batch, 0)
        rows = struct.unpack_from("<q", metadata, length_at)[0] if length_at is not None else 0
        buffers: list[tuple[int, int]] = []
        buffers_at = _table_field(metadata, batch, 2)
        if buffers_at is not None:
            vector = _deref(metadata, buffers_at)
            count = struct.unpack_from("<I", metadata, vector)[0]
            if count > 10_000:
                raise ValueError(f"{count} buffers")
            buffers = [struct.unpack_from("<qq", metadata, vector + 4 + 16 * i) for i in range(count)]
        compressed = _table_field(metadata, batch, 3) is not None
    except (struct.error, ValueError, IndexError) as exc:
        raise MessageRejected(BAD_STRUCTURE, f"unreadable RecordBatch metadata: {exc}") from exc
    return rows, buffers, compressed


def check_arrow_message(value: bytes, limits: MessageLimits) -> int:
    """Measure an Arrow IPC stream message without decompressing it; refuse it above ``limits``.

    Walks the stream's messages (schema, record batches): rows from each RecordBatch's
    metadata; decompressed bytes from each compressed buffer's 8-byte uncompressed-length
    prefix (``-1`` = stored uncompressed), else the buffer length.

    Args:
        value: the Kafka message value (an Arrow IPC stream).
        limits: the caps.
    Returns:
        Total decompressed body bytes of the record batches.
    Raises:
        MessageRejected: more rows than ``limits.max_rows``, more bytes than
            ``limits.max_bytes``, or buffers outside the body.
        pyarrow.ArrowInvalid: not an Arrow IPC stream (the caller's decode error).
    """
    reader = pa.ipc.MessageReader.open_stream(pa.BufferReader(value))
    rows = size = 0
    for message in reader:
        if message.type != "record batch":
            continue
        n, buffers, compressed = record_batch_layout(message.metadata.to_pybytes())
        body = message.body
        body_size = 0 if body is None else body.size
        rows += n
        if n < 0 or rows > limits.max_rows:
            raise MessageRejected(TOO_MANY_ROWS, f"{rows:,} rows > {limits.max_rows:,}")
        for offset, length in buffers:
            if offset < 0 or length < 0 or offset + length > body_size:
                raise MessageRejected(BAD_STRUCTURE, f"buffer {offset}+{length} outside a body of {body_size} bytes")
            if compressed and length >= 8:
                declared = struct.unpack("<q", body.slice(offset, 8).to_pybytes())[0]
                size += length - 8 if declared == -1 else declared
            else:
                size += length
            if size > limits.max_bytes:
                raise MessageRejected(TOO_LARGE, f"more than {limits.max_bytes:,} bytes decompressed")
    return size


# --- results messages ---------------------------------------------------------------------

EPOCH_2000 = 946_684_800.0
"""2000-01-01T00:00:00Z in epoch s: no dtmon timestamp is older."""

CLOCK_SLACK_S = 86_400.0
"""Timestamps may lie at most one day in the future (clock skew between hosts)."""

MAX_COUNT = 2**53
"""Largest count accepted (exact in a float64 and in a browser's JavaScript number)."""

MAX_DETECTOR_TIME_S = 2**32 * BX_PER_ORBIT * BX_NS * 1e-9
"""Longest detector time a batch can span: the whole 32-bit orbit counter, ≈ 382 000 s."""

MAX_DRIFT_BINS = 10_000
"""Most drift-time bins accepted."""


def _finite_fields(obj, path: str, problems: list[str]) -> None:
    """Append a problem for every non-finite float inside a pydantic model / list / dict."""
    if isinstance(obj, float):
        if not math.isfinite(obj):
            problems.append(f"{path} is not finite ({obj})")
    elif isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            _finite_fields(item, f"{path}[{i}]", problems)
    elif isinstance(obj, dict):
        for key, item in obj.items():
            _finite_fields(item, f"{path}.{key}", problems)
    elif hasattr(obj, "__pydantic_fields__"):
        for name in type(obj).model_fields:
            _finite_fields(getattr(obj, name), f"{path}.{name}" if path else name, problems)


def _check_histogram(h, path: str, problems: list[str], edges: list[float] | None, max_count: int) -> int | None:
    """Check one histogram; return its sum of counts (None when malformed)."""
    if edges is not None and list(h.bin_edges) != edges:
        problems.append(f"{path}: {len(h.bin_counts)} bins on other edges (want {len(edges) - 1} bins {edges[0]}..{edges[-1]})")
        return None
    if edges is None:
        if len(h.bin_counts) > MAX_DRIFT_BINS:
            problems.append(f"{path}: {len(h.bin_counts)} bins > {MAX_DRIFT_BINS}")
            return None
        if any(b <= a for a, b in zip(h.bin_edges, h.bin_edges[1:])):
            problems.append(f"{path}: bin edges not increasing")
            return None
    if any(c < 0 or c > max_count for c in h.bin_counts):
        problems.append(f"{path}: a bin count outside 0..{max_count}")
        return None
    return sum(h.bin_counts)


def validate_results(msg, now: float | None = None) -> list[str]:
    """Problems of meaning in a parsed results message (``dtmon.schema.ResultsMessage``); [] when sane.

    Checks: every float finite; counts within 0..2**53 and ``hits <= rows_read``,
    ``malformed_rows <= rows_read``, the chambers' hits ``<= hits``; chambers 0..3 each
    once; occupancy and E1 on the 64 unit bins 0..64, multiplicity on 0.5..64.5;
    occupancy sum == the chamber's hits, E1 sum <= hits, sum over k of k x multiplicity
    <= hits (each orbit counts its distinct channels); drift-time bins increasing, at
    most ``MAX_DRIFT_BINS``, the same for every chamber; ``detector_time_s`` <= the
    32-bit orbit counter's span; ``orbit_min <= orbit_max`` within 0..2**32-1; timestamps
    (batch start, publication, Kafka times, run start) after 2000-01-01 and at most one
    day after ``now``; publication within a day of the batch start; run start not after
    publication; trigger interval <= 3600 s.

    Args:
        msg: a ``ResultsMessage``.
        now: wall-clock time, epoch s (default ``time.time()``).
    Returns:
        One line per problem (empty list: the message is sane).
    """
    from dtmon.schema import MULTIPLICITY_EDGES, OCCUPANCY_EDGES

    now = time.time() if now is None else now
    problems: list[str] = []
    _finite_fields(msg, "", problems)
    if problems:
        return problems
    for name in ("rows_read", "malformed_rows", "hits", "hits_outside_chambers", "orbits_with_hits", "orbits_with_scintillator", "batch_id"):
        if getattr(msg, name) > MAX_COUNT:
            problems.append(f"{name} = {getattr(msg, name):.3g} > 2**53")
    if problems:
        return problems
    if msg.hits > msg.rows_read:
        problems.append(f"hits {msg.hits:,} > rows_read {msg.rows_read:,}")
    if msg.malformed_rows > msg.rows_read:
        problems.append(f"malformed_rows {msg.malformed_rows:,} > rows_read {msg.rows_read:,}")
    if sorted(c.chamber for c in msg.chambers) != list(range(N_CHAMBERS)):
        problems.append(f"chambers {[c.chamber for c in msg.chambers]} are not 0..{N_CHAMBERS - 1} once each")
    chamber_hits = 0
    drift_edges = None
    for c in msg.chambers:
        where = f"chamber {c.chamber}"
        if c.hits > MAX_COUNT:
            problems.append(f"{where}: hits = {c.hits:.3g} > 2**53")
            continue
        chamber_hits += c.hits
        occupancy = _check_histogram(c.occupancy, f"{where} occupancy", problems, OCCUPANCY_EDGES, c.hits)
        if occupancy is not None and occupancy != c.hits:
            problems.append(f"{where}: occupancy sums to {occupancy:,}, hits says {c.hits:,}")
        _check_histogram(c.multiplicity, f"{where} multiplicity", problems, MULTIPLICITY_EDGES, c.hits)
        if len(c.multiplicity.bin_counts) == CELLS_PER_CHAMBER:
            active = sum(k * n for k, n in enumerate(c.multiplicity.bin_counts, start=1))
            if active > c.hits:
                problems.append(f"{where}: multiplicity counts {active:,} active channels for {c.hits:,} hits")
        if c.occupancy_scint is not None:
            _check_histogram(c.occupancy_scint, f"{where} occupancy_scint", problems, OCCUPANCY_EDGES, c.hits)
        if c.drift_time is not None:
            _check_histogram(c.drift_time, f"{where} drift_time", problems, drift_edges, c.hits)
            drift_edges = drift_edges or list(c.drift_time.bin_edges)
    if chamber_hits > msg.hits:
        problems.append(f"chambers hold {chamber_hits:,} hits, the batch {msg.hits:,}")
    if msg.detector_time_s is not None and msg.detector_time_s > MAX_DETECTOR_TIME_S:
        problems.append(f"detector_time_s {msg.detector_time_s:.3g} > {MAX_DETECTOR_TIME_S:,.0f}")
    for name in ("orbit_min", "orbit_max"):
        value = getattr(msg, name)
        if value is not None and not 0 <= value <= ROW_RANGES["ORBIT_CNT"][1]:
            problems.append(f"{name} {value} outside 0..2**32-1")
    if msg.orbit_min is not None and msg.orbit_max is not None and msg.orbit_min > msg.orbit_max:
        problems.append(f"orbit_min {msg.orbit_min} > orbit_max {msg.orbit_max}")
    if msg.trigger_interval_s > 3600:
        problems.append(f"trigger_interval_s {msg.trigger_interval_s} > 3600")
    latest = now + CLOCK_SLACK_S
    for name in ("batch_started", "published", "produced_first", "produced_last", "run_started"):
        value = getattr(msg, name)
        if value is not None and not EPOCH_2000 <= value <= latest:
            problems.append(f"{name} {value:.6g} is not between 2000-01-01 and a day from now")
    if abs(msg.published - msg.batch_started) > CLOCK_SLACK_S:
        problems.append(f"published {msg.published:.6g} more than a day from batch_started {msg.batch_started:.6g}")
    if msg.run_started is not None and msg.run_started > msg.published + CLOCK_SLACK_S:
        problems.append("run_started after published")
    return problems


def parse_results(data: bytes | str, now: float | None = None):
    """Parse (pydantic schema) and check (``validate_results``) one results message.

    Returns:
        (message, problems): the ``ResultsMessage`` or None when it does not parse, and
        the problems (schema errors first); use the message only when problems is empty.
    """
    from pydantic import ValidationError

    from dtmon.schema import ResultsMessage

    try:
        msg = ResultsMessage.from_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "message"
        return None, [f"schema: {exc.error_count()} error(s), first: {where}: {first['msg']}"]
    except ValueError as exc:
        return None, [f"not a results document: {exc}"]
    return msg, validate_results(msg, now)
