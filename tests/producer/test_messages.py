"""Decoding DAQ files into messages: header / no header / CRLF / blank / malformed lines, line numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dtmon.hits import COLUMNS
from dtmon.wire import CONTENT_TYPE_ARROW, CONTENT_TYPE_CSV, HITS_SCHEMA_ID, decode_message, header_dict
from producer.messages import arrow_message, csv_line_messages, index_lines, load_file
from producer.sources import DaqFile, FileBytes
from tests.producer.helpers import read_csv_independently


def build_variant(genuine: bytes, *, header: bool, eol: str, final_newline: bool, blanks: bool, bad: bool):
    """Rewrite the genuine rows in a layout; return (bytes, line number of each genuine row, bad line numbers)."""
    rows = genuine.decode().splitlines()[1:]
    out: list[str] = []
    row_lines: list[int] = []
    bad_lines: list[int] = []
    if header:
        out.append("HEAD,FPGA,TDC_CHANNEL,ORBIT_CNT,BX_COUNTER,TDC_MEAS")
    for i, row in enumerate(rows):
        if blanks and i % 97 == 5:
            out.extend(["", "   "])
        if bad and i % 131 == 7:
            out.append("2,0,75,not-a-number,2922,2")
            bad_lines.append(len(out))
            out.append("2,0,75")
            bad_lines.append(len(out))
        out.append(row)
        row_lines.append(len(out))
    text = eol.join(out) + (eol if final_newline else "")
    return text.encode(), row_lines, bad_lines


def load(data: bytes, keep_text: bool = False, synthetic: bool = False):
    return load_file(FileBytes(DaqFile("data_000007.txt", "x", len(data)), data, synthetic), keep_text=keep_text)


def frame_of(table) -> pd.DataFrame:
    frame = table.to_pandas()
    return frame.astype({c: "int64" for c in COLUMNS[:5]} | {"TDC_MEAS": "float64"})


@pytest.mark.parametrize("header", [True, False])
@pytest.mark.parametrize("eol", ["\n", "\r\n"])
@pytest.mark.parametrize("final_newline", [True, False])
@pytest.mark.parametrize("blanks,bad", [(False, False), (True, False), (True, True)])
def test_rows_and_line_numbers_in_every_layout(genuine_csv, header, eol, final_newline, blanks, bad):
    genuine = genuine_csv.read_bytes()
    expected = read_csv_independently(genuine_csv)
    data, row_lines, bad_lines = build_variant(
        genuine, header=header, eol=eol, final_newline=final_newline, blanks=blanks, bad=bad
    )
    f = load(data)
    all_lines = sorted(row_lines + bad_lines)
    assert f.num_rows == len(expected) + len(bad_lines)
    assert f.lines.all_numbers().tolist() == all_lines
    null_rows = np.flatnonzero(f.table.column("HEAD").is_null().to_numpy(zero_copy_only=False))
    assert [all_lines[i] for i in null_rows] == bad_lines  # malformed lines are all-null rows, in place
    assert [m.line for m in f.malformed] == bad_lines
    good = f.table.filter(f.table.column("HEAD").is_valid())
    pd.testing.assert_frame_equal(frame_of(good), expected)


def test_csv_line_texts_are_the_file_lines(genuine_csv):
    data, row_lines, _ = build_variant(
        genuine_csv.read_bytes(), header=True, eol="\r\n", final_newline=False, blanks=True, bad=True
    )
    f = load(data, keep_text=True)
    file_lines = data.decode().split("\r\n")
    messages = csv_line_messages(f, 0, f.num_rows, run=12)
    assert [m[0].decode() for m in messages] == [file_lines[n - 1] for n in f.lines.all_numbers()]
    assert [int(header_dict(m[1])["dtmon-first-line"]) for m in messages] == f.lines.all_numbers().tolist()
    assert {header_dict(m[1])["dtmon-run"] for m in messages} == {"12"}


def test_odd_line_breaks_fall_back_to_line_by_line_reading():
    data = b"HEAD,FPGA,TDC_CHANNEL,ORBIT_CNT,BX_COUNTER,TDC_MEAS\r1,1,0,5,0,130\r\r2,0,3,5,10,4\n\xc3\xa9\n"
    lines = index_lines(data, 3)  # lone CRs and a non-ASCII malformed line
    assert lines.all_numbers().tolist() == [2, 4, 5]
    assert [lines.text(data, i) for i in range(3)] == [b"1,1,0,5,0,130", b"2,0,3,5,10,4", "\u00e9".encode()]


def test_arrow_messages_carry_slices_and_headers(genuine_csv):
    f = load(genuine_csv.read_bytes(), synthetic=True)
    expected = read_csv_independently(genuine_csv)
    parts, starts = [], range(0, f.num_rows, 100)
    for start in starts:
        n = min(100, f.num_rows - start)
        value, headers = arrow_message(f, start, n, "zstd", run=810 + start)
        h = header_dict(headers)
        assert h == {
            "content-type": CONTENT_TYPE_ARROW,
            "dtmon-schema": HITS_SCHEMA_ID,
            "dtmon-file": "data_000007.txt",
            "dtmon-first-line": str(start + 2),  # line 1 is the header
            "dtmon-synthetic": "1",
            "dtmon-run": str(810 + start),
        }
        parts.append(frame_of(decode_message(value, h["content-type"])))
    pd.testing.assert_frame_equal(pd.concat(parts, ignore_index=True), expected)


def test_csv_line_message_decodes_to_its_row(genuine_csv):
    f = load(genuine_csv.read_bytes(), keep_text=True)
    expected = read_csv_independently(genuine_csv)
    value, headers = csv_line_messages(f, 10, 1, run=0)[0]
    h = header_dict(headers)
    assert h["content-type"] == CONTENT_TYPE_CSV and h["dtmon-synthetic"] == "0" and h["dtmon-first-line"] == "12"
    assert h["dtmon-run"] == "0"
    pd.testing.assert_frame_equal(frame_of(decode_message(value, CONTENT_TYPE_CSV)), expected.iloc[[10]].reset_index(drop=True))
