"""DAQ rows: columns, dtypes, CSV decoding, the channel <-> chamber/layer/cell map, the
scintillator (t0) channel and the per-chamber time offsets.

Formulas and numbers follow the MAPD-B course PDF ("MAPD-B distributed processing exam -
default projects", rev. 08-06-2023), section 4.2 (data format, mapping, timing), as
summarised in ``../shared/docs/minidt-domain.md``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

COLUMNS: tuple[str, ...] = ("HEAD", "FPGA", "TDC_CHANNEL", "ORBIT_CNT", "BX_COUNTER", "TDC_MEAS")
"""CSV columns of a DAQ file, in file order."""

HIT_SCHEMA = pa.schema(
    [
        ("HEAD", pa.int8()),  # 3 bits: 2 = TDC hit, 0/1/3/4/5 = ancillary trigger words
        ("FPGA", pa.int8()),  # 3 bits
        ("TDC_CHANNEL", pa.int16()),  # 9 bits; 0-127 chamber cells, >127 special (scintillator)
        ("ORBIT_CNT", pa.int64()),  # 32-bit unsigned counter, up to ~3.39e9 in the genuine rows
        ("BX_COUNTER", pa.int32()),  # 0-3563 for hits; HEAD 3 carries a 24-bit pattern here
        ("TDC_MEAS", pa.float64()),  # 1-30 counts for hits; a half-precision float for HEAD 4/5
    ]
)
"""Arrow schema of decoded DAQ rows. A row whose every column is null is a malformed row."""

HEAD_HIT = 2
N_CHAMBERS = 4
CELLS_PER_CHAMBER = 64
N_LAYERS = 4
CELLS_PER_LAYER = 16
MAX_CHAMBER_CHANNEL = 127

BX_PER_ORBIT = 3564
BX_NS = 25.0
TDC_PER_BX = 30

LAYER_OF_REMAINDER: tuple[int, int, int, int] = (4, 2, 3, 1)
"""Layer (1 bottom .. 4 top) of a local channel c, indexed by ``c % 4`` (PDF figure, p. 19)."""
REMAINDER_OF_LAYER: tuple[int, int, int, int] = tuple(LAYER_OF_REMAINDER.index(layer) for layer in (1, 2, 3, 4))
"""The inverse: ``c % 4`` of the channels of layer 1..4, indexed by ``layer - 1`` -> (3, 1, 2, 0)."""

SCINT_FPGA = 1
"""FPGA of the scintillator (t0) channel (course PDF section 4.2.2)."""
SCINT_CHANNEL = 128
"""TDC_CHANNEL of the scintillator (t0) channel (course PDF; the genuine rows show 138)."""
SCINT_CHAMBER_OFFSET_NS: tuple[float, ...] = (93.9, 101.4, 95.5, 92.4)
"""Scintillator delay to subtract per chamber, ns: 95.0 - 1.1, 95.0 + 6.4, 95.0 + 0.5, 95.0 - 2.6
(course PDF section 4.2.4); DRIFTIME = t_hit - t_scint + offset[chamber]."""

# Valid value ranges, inclusive (raw 64-bit word layout, PDF section 4.2.1).
_RANGES = {
    "HEAD": (0, 7),
    "FPGA": (0, 7),
    "TDC_CHANNEL": (0, 511),
    "ORBIT_CNT": (0, 2**32 - 1),
    "BX_COUNTER": (0, 2**24 - 1),
}


class DecodeError(ValueError):
    """Raised when a whole input cannot be decoded (not for single bad rows)."""


@dataclass(frozen=True)
class MalformedRow:
    """One input line that could not be decoded; ``line`` is 1-based in its file."""

    line: int
    text: str
    reason: str


@dataclass
class DecodedRows:
    """Result of decoding a DAQ CSV file.

    ``table`` has ``HIT_SCHEMA`` and one row per data line, in file order; malformed
    lines are kept as all-null rows so they travel downstream and are counted there.
    ``malformed`` lists them with line number and reason.
    """

    table: pa.Table
    malformed: list[MalformedRow] = field(default_factory=list)


def _has_header(data: bytes) -> bool:
    return data.lstrip()[:4].upper() == b"HEAD"


def _fast_decode(data: bytes, header: bool) -> pa.Table:
    read_options = pacsv.ReadOptions(
        column_names=None if header else list(COLUMNS),
        skip_rows=0,
        block_size=1 << 24,
    )
    convert_options = pacsv.ConvertOptions(
        column_types={f.name: f.type for f in HIT_SCHEMA}, include_columns=list(COLUMNS), strings_can_be_null=False
    )
    table = pacsv.read_csv(io.BytesIO(data), read_options=read_options, convert_options=convert_options)
    if table.schema.names != list(COLUMNS):
        raise DecodeError(f"unexpected header {table.schema.names}")
    for name in COLUMNS:
        if table.column(name).null_count:
            raise DecodeError(f"empty value in column {name}")
    for name, (low, high) in _RANGES.items():
        col = table.column(name)
        if len(col) and (pc.min(col).as_py() < low or pc.max(col).as_py() > high):
            raise DecodeError(f"{name} outside {low}..{high}")
    return table.cast(HIT_SCHEMA)


def _parse_line(text: str) -> tuple | str:
    """Parse one CSV line; return the typed tuple, or the reason it is malformed."""
    parts = text.split(",")
    if len(parts) != len(COLUMNS):
        return f"expected {len(COLUMNS)} fields, found {len(parts)}"
    try:
        ints = [int(p) for p in parts[:5]]
        tdc = float(parts[5])
    except ValueError as exc:
        return f"not a number: {exc}"
    for name, value in zip(COLUMNS[:5], ints):
        low, high = _RANGES[name]
        if not low <= value <= high:
            return f"{name}={value} outside {low}..{high}"
    if not np.isfinite(tdc):
        return "TDC_MEAS is not finite"
    return (*ints, tdc)


def _slow_decode(data: bytes, header: bool) -> DecodedRows:
    lines = data.decode("utf-8", errors="replace").splitlines()
    rows: list[tuple | None] = []
    malformed: list[MalformedRow] = []
    for number, text in enumerate(lines, start=1):
        if number == 1 and header:
            continue
        stripped = text.strip()
        if not stripped:
            continue
        parsed = _parse_line(stripped)
        if isinstance(parsed, str):
            malformed.append(MalformedRow(number, text[:200], parsed))
            rows.append(None)
        else:
            rows.append(parsed)
    columns = []
    for i, f in enumerate(HIT_SCHEMA):
        columns.append(pa.array([None if r is None else r[i] for r in rows], type=f.type))
    return DecodedRows(pa.Table.from_arrays(columns, schema=HIT_SCHEMA), malformed)


def decode_csv(data: bytes) -> DecodedRows:
    """Decode DAQ CSV text (``HEAD,FPGA,TDC_CHANNEL,ORBIT_CNT,BX_COUNTER,TDC_MEAS``).

    Accepts the file with or without its header line, LF or CRLF line ends, last
    newline optional. Blank lines are skipped. A line with the wrong number of
    fields, a non-number, or a value outside its bit width becomes an all-null row
    and a ``MalformedRow`` entry; nothing raises for bad rows.

    Args:
        data: the file's bytes.
    Returns:
        ``DecodedRows`` with a table of N rows (``HIT_SCHEMA``).
    """
    header = _has_header(data)
    if not data.strip():
        return DecodedRows(HIT_SCHEMA.empty_table())
    try:
        return DecodedRows(_fast_decode(data, header))
    except (pa.ArrowInvalid, DecodeError):
        return _slow_decode(data, header)


def encode_csv(table: pa.Table, header: bool = True) -> bytes:
    """DAQ CSV text of ``table`` as the DAQ writes it, vectorised in Arrow.

    Integers as integers; TDC_MEAS of HEAD 4/5 words (half floats) always as ``%.6f``
    (also when integral, e.g. ``-37.000000``, as in the genuine file), other TDC_MEAS as
    ``%d`` (``%.6f`` if not integral). Re-encoding the decoded genuine rows gives the
    genuine bytes. Shape: N rows -> N lines (+ header), LF line ends.
    """
    n = table.num_rows
    if n == 0:
        return (",".join(COLUMNS) + "\n").encode() if header else b""
    texts = [pc.cast(table.column(name), pa.string()) for name in COLUMNS[:5]]
    tdc = table.column("TDC_MEAS").to_numpy()
    head = table.column("HEAD").to_numpy()
    as_float = (head == 4) | (head == 5) | ~np.equal(np.mod(tdc, 1), 0)
    tdc_text = pc.cast(pa.array(np.where(as_float, 0, tdc).astype(np.int64)), pa.string())
    if as_float.any():  # few distinct half floats: format each once, take() them into place
        u_flt, inverse = np.unique(tdc[as_float], return_inverse=True)
        floats = pa.array([f"{v:.6f}" for v in u_flt], pa.string()).take(pa.array(inverse.ravel()))
        tdc_text = pc.replace_with_mask(tdc_text, pa.array(as_float), floats)
    out = pa.Table.from_arrays([*texts, tdc_text], names=list(COLUMNS))
    sink = io.BytesIO()
    if header:
        sink.write((",".join(COLUMNS) + "\n").encode())
    pacsv.write_csv(out, sink, pacsv.WriteOptions(include_header=False, quoting_style="none", delimiter=","))
    return sink.getvalue()


def chamber_of(head: np.ndarray, fpga: np.ndarray, channel: np.ndarray) -> np.ndarray:
    """Chamber index of each row (PDF section 4.2.2), -1 where the row is not a chamber hit.

    chamber 0 = FPGA 0 channels 0-63, 1 = FPGA 0 channels 64-127,
    chamber 2 = FPGA 1 channels 0-63, 3 = FPGA 1 channels 64-127.
    Rows with HEAD != 2, another FPGA, or a channel > 127 (scintillator, trigger
    channels) get -1.

    Args:
        head, fpga, channel: integer arrays of shape (N,).
    Returns:
        int8 array of shape (N,), values -1..3.
    """
    return np.where(np.asarray(head) == HEAD_HIT, chamber_of_channel(fpga, channel), -1).astype(np.int8)


def chamber_of_channel(fpga: np.ndarray, channel: np.ndarray) -> np.ndarray:
    """Chamber index of a hit's (FPGA, TDC_CHANNEL), -1 outside the chambers (``chamber_of`` without HEAD).

    Args:
        fpga, channel: integer arrays of shape (N,).
    Returns:
        int8 array of shape (N,), values -1..3.
    """
    fpga = np.asarray(fpga)
    channel = np.asarray(channel)
    valid = (fpga >= 0) & (fpga <= 1) & (channel >= 0) & (channel <= MAX_CHAMBER_CHANNEL)
    chamber = fpga.astype(np.int16) * 2 + (channel >= CELLS_PER_CHAMBER)
    return np.where(valid, chamber, -1).astype(np.int8)


def local_channel(channel: np.ndarray) -> np.ndarray:
    """Channel inside its chamber, ``TDC_CHANNEL mod 64`` (0-63), shape (N,)."""
    return np.asarray(channel) % CELLS_PER_CHAMBER


def layer_of(local: np.ndarray) -> np.ndarray:
    """Layer 1 (bottom) ... 4 (top) of a local channel (PDF figure, p. 19).

    ``c % 4``: 0 -> layer 4, 2 -> layer 3, 1 -> layer 2, 3 -> layer 1. Shape (N,).
    """
    return np.array(LAYER_OF_REMAINDER)[np.asarray(local) % 4]


def cell_of(local: np.ndarray) -> np.ndarray:
    """Cell position along the layer, ``c // 4`` (0-15), shape (N,)."""
    return np.asarray(local) // 4


def local_channel_of(layer: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """Local channel (0-63) of (layer 1..4, cell 0..15): the inverse of ``layer_of``/``cell_of``. Shape (N,)."""
    return 4 * np.asarray(cell) + np.array(REMAINDER_OF_LAYER)[np.asarray(layer) - 1]


def daq_channel_of(chamber: np.ndarray, local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPGA, TDC_CHANNEL) of (chamber 0..3, local channel 0..63): the inverse of ``chamber_of``/``local_channel``.

    Shapes (N,) -> two arrays (N,): FPGA = chamber // 2, TDC_CHANNEL = local + 64 * (chamber % 2).
    """
    chamber = np.asarray(chamber)
    return chamber // 2, np.asarray(local) + CELLS_PER_CHAMBER * (chamber % 2)


def hit_time_ns(orbit: np.ndarray, bx: np.ndarray, tdc: np.ndarray) -> np.ndarray:
    """Absolute hit time in ns: ``25 * (ORBIT_CNT * 3564 + BX_COUNTER + TDC_MEAS / 30)``.

    PDF section 4.2.4 (ABSOLUTETIME). float64 keeps sub-ns precision up to
    ORBIT_CNT ~ 4e9 (3.6e14 ns). Shapes (N,) -> (N,).
    """
    orbit = np.asarray(orbit, dtype=np.float64)
    return BX_NS * (orbit * BX_PER_ORBIT + np.asarray(bx, dtype=np.float64) + np.asarray(tdc, dtype=np.float64) / TDC_PER_BX)
