"""Pure helpers that turn a DAQ file's bytes into raw-topic messages (no I/O).

* ``load_file``: decode a file with ``dtmon.hits.decode_csv`` and find the line number
  (and, for ``--wire csv-line``, the bytes) of every data row;
* ``arrow_message`` / ``csv_line_messages``: one message value + headers for a slice
  of rows (wire format, headers and run markers: ``dtmon.wire``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from dtmon.hits import MalformedRow, decode_csv
from dtmon.wire import CONTENT_TYPE_ARROW, CONTENT_TYPE_CSV, HEADER_FIRST_LINE, data_headers, encode_arrow
from producer.sources import FileBytes

WIRE_FORMATS = ("arrow", "csv-line")

# Bytes that str.splitlines() treats as line breaks besides \n and \r (decode_csv's slow path uses it).
_ODD_BREAKS = (b"\x0b", b"\x0c", b"\x1c", b"\x1d", b"\x1e")


class LineMapError(ValueError):
    """The data rows of a file could not be matched to its lines."""


@dataclass(frozen=True)
class DataLines:
    """Where the N data rows of a file sit in its bytes.

    Either the rows are consecutive lines (no blank lines between them): ``first`` is the
    1-based line number of row 0 and the arrays are None; or ``numbers`` is an int64 array
    (N,) of 1-based line numbers (header and blank lines skipped, as ``decode_csv``
    does). ``starts``/``ends``: int64 arrays (N,) of byte offsets of each row's text
    (line end and ``\\r`` excluded), or ``texts`` with the row texts (text fallback);
    only built when the row texts are needed (``--wire csv-line``).
    """

    first: int = 1
    count: int = 0
    numbers: np.ndarray | None = None
    starts: np.ndarray | None = None
    ends: np.ndarray | None = None
    texts: list[bytes] | None = None

    def number(self, row: int) -> int:
        """1-based line number of data row ``row``."""
        return self.first + row if self.numbers is None else int(self.numbers[row])

    def all_numbers(self) -> np.ndarray:
        """1-based line numbers of all rows, int64 array (N,)."""
        return np.arange(self.first, self.first + self.count, dtype=np.int64) if self.numbers is None else self.numbers

    def text(self, data: bytes, row: int) -> bytes:
        """The CSV text of data row ``row`` (no line end); needs ``starts``/``ends`` or ``texts``."""
        if self.texts is not None:
            return self.texts[row]
        return data[self.starts[row] : self.ends[row]]


def _has_header(data: bytes) -> bool:
    """Same rule as dtmon.hits.decode_csv: the first non-blank text starts with HEAD."""
    return data.lstrip()[:4].upper() == b"HEAD"


def _index_lines_numpy(data: bytes, header: bool) -> DataLines | None:
    """Vectorised line index for ASCII text with LF or CRLF line ends; None for other text."""
    if not data.isascii() or any(b in data for b in _ODD_BREAKS) or data.count(b"\r") != data.count(b"\r\n"):
        return None
    if not data:
        empty = np.zeros(0, dtype=np.int64)
        return DataLines(count=0, numbers=empty, starts=empty, ends=empty)
    buf = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(buf == 10)
    starts = np.concatenate(([0], newlines + 1)).astype(np.int64)
    ends = np.concatenate((newlines, [len(buf)])).astype(np.int64)
    if buf[-1] == 10:  # the last newline ends the last line, no empty line after it
        starts, ends = starts[:-1], ends[:-1]
    cr = (ends > starts) & (buf[np.maximum(ends - 1, 0)] == 13)
    ends = ends - cr
    numbers = np.arange(1, len(starts) + 1, dtype=np.int64)
    if b" " in data or b"\t" in data or b"\x1f" in data:
        ink = np.concatenate(([0], np.cumsum(~np.isin(buf, (9, 10, 13, 32, 31)), dtype=np.int64)))
        keep = ink[ends] - ink[starts] > 0
    else:
        keep = ends > starts
    starts, ends, numbers = starts[keep], ends[keep], numbers[keep]
    if header and len(numbers):
        starts, ends, numbers = starts[1:], ends[1:], numbers[1:]
    return DataLines(count=len(numbers), numbers=numbers, starts=starts, ends=ends)


def _index_lines_text(data: bytes, header: bool) -> DataLines:
    """Line index mirroring decode_csv's line-by-line reading (str.splitlines, blank lines skipped)."""
    numbers, texts = [], []
    for number, text in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        if not text.strip():
            continue
        numbers.append(number)
        texts.append(text.encode())
    if header and numbers:
        numbers, texts = numbers[1:], texts[1:]
    return DataLines(count=len(numbers), numbers=np.asarray(numbers, dtype=np.int64), texts=texts)


def _count_byte(data: bytes, value: int) -> int:
    """Occurrences of one byte value; numpy, so other threads (the pacing loop) keep running."""
    return int(np.count_nonzero(np.frombuffer(data, dtype=np.uint8) == value))


def _consecutive_lines(data: bytes, header: bool, n_rows: int) -> DataLines | None:
    """Cheap check (a newline count) that the rows are consecutive lines; None if unsure."""
    if b"\r" in data and _count_byte(data, 13) != data.count(b"\r\n"):
        return None  # lone CR line breaks
    lines = _count_byte(data, 10) + (1 if data and not data.endswith(b"\n") else 0)
    if lines - header != n_rows:
        return None  # blank lines somewhere
    return DataLines(first=2 if header else 1, count=n_rows)


def index_lines(data: bytes, n_rows: int, need_text: bool = False, all_rows_valid: bool = False) -> DataLines:
    """Line numbers (and, if asked, text spans) of the ``n_rows`` data rows of DAQ CSV bytes.

    Args:
        data: the file's bytes (header optional, LF or CRLF, last newline optional).
        n_rows: rows ``decode_csv`` found in it.
        need_text: also locate each row's text (for ``--wire csv-line``).
        all_rows_valid: ``decode_csv`` found no malformed line; then a file whose line
            count equals ``n_rows`` (+ header) is mapped without scanning it (fast path).
    Returns:
        ``DataLines`` for ``n_rows`` rows.
    Raises:
        LineMapError: the file's non-blank lines do not match ``n_rows``.
    """
    header = _has_header(data)
    if all_rows_valid and not need_text:
        lines = _consecutive_lines(data, header, n_rows)
        if lines is not None:
            return lines
    lines = _index_lines_numpy(data, header)
    if lines is None or lines.count != n_rows:
        lines = _index_lines_text(data, header)
    if lines.count != n_rows:
        raise LineMapError(f"{lines.count} non-blank data lines but {n_rows} decoded rows")
    return lines


@dataclass
class LoadedFile:
    """A decoded DAQ file ready to be sliced into messages.

    Attributes:
        name: file name (``dtmon-file`` header).
        table: N rows with ``HIT_SCHEMA``; malformed lines are all-null rows.
        lines: line number (and text) of every row.
        malformed: the malformed lines (line number, text, reason).
        synthetic: rows come from the synthetic generator.
        data: the file's bytes, kept only for ``--wire csv-line``.
    """

    name: str
    table: pa.Table
    lines: DataLines
    malformed: list[MalformedRow] = field(default_factory=list)
    synthetic: bool = False
    data: bytes | None = None

    @property
    def num_rows(self) -> int:
        return self.table.num_rows


def load_file(content: FileBytes, keep_text: bool = False) -> LoadedFile:
    """Decode one DAQ file (``decode_csv``) and index its lines.

    Args:
        content: the file's bytes and origin.
        keep_text: keep the bytes for ``--wire csv-line`` (else they are dropped).
    Raises:
        LineMapError: rows and lines disagree (a decode_csv / line-reading mismatch).
    """
    decoded = decode_csv(content.data)
    table = decoded.table.combine_chunks()
    lines = index_lines(content.data, table.num_rows, need_text=keep_text, all_rows_valid=not decoded.malformed)
    return LoadedFile(
        name=content.file.name,
        table=table,
        lines=lines,
        malformed=decoded.malformed,
        synthetic=content.synthetic,
        data=content.data if keep_text else None,
    )


def arrow_message(
    f: LoadedFile, start: int, n: int, compression: str, use_threads: bool = True, *, run: int
) -> tuple[bytes, list[tuple[str, bytes]]]:
    """One Arrow IPC message with rows ``start .. start+n-1`` of ``f``, of run ``run``.

    ``use_threads``: see ``dtmon.wire.encode_arrow`` (off when paced).

    Returns:
        (value, headers); value is an Arrow IPC stream (``dtmon.wire.encode_arrow``).
    """
    value = encode_arrow(f.table.slice(start, n), compression, use_threads)
    return value, data_headers(CONTENT_TYPE_ARROW, f.name, f.lines.number(start), f.synthetic, run)


def csv_line_messages(f: LoadedFile, start: int, n: int, *, run: int) -> list[tuple[bytes, list[tuple[str, bytes]]]]:
    """One message per row (``--wire csv-line``): the row's CSV line as is.

    A malformed line travels as its original text; the reader's ``decode_csv`` turns
    it into an all-null row. Requires ``f.data`` (``load_file(keep_text=True)``).
    """
    if f.data is None and f.lines.texts is None:
        raise ValueError("csv-line messages need the file text: load_file(..., keep_text=True)")
    common = data_headers(CONTENT_TYPE_CSV, f.name, 0, f.synthetic, run)
    before, after = common[:3], common[4:]  # all headers but dtmon-first-line are the same for the file
    text, number, data = f.lines.text, f.lines.number, f.data
    return [(text(data, row), [*before, (HEADER_FIRST_LINE, b"%d" % number(row)), *after]) for row in range(start, start + n)]
