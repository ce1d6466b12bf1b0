"""Decoding message rows into DAQ rows (processor.decode): Arrow, CSV, undecodable and control messages."""

from __future__ import annotations

import json

import pyarrow as pa

from dtmon.hits import HIT_SCHEMA
from dtmon.wire import CONTENT_TYPE_ARROW, CONTENT_TYPE_CONTROL, CONTENT_TYPE_CSV, RunEvent, encode_arrow
from processor.decode import OUTPUT_SCHEMA, decode_records


def test_decode_records_arrow_csv_and_garbage(genuine_table):
    arrow = encode_arrow(genuine_table.slice(0, 10))
    values = [arrow, b"2,0,5,100,7,3", b"2,1,70,101,8,4\n", b"not arrow at all"]
    ctypes = [CONTENT_TYPE_ARROW, CONTENT_TYPE_CSV, CONTENT_TYPE_CSV, CONTENT_TYPE_ARROW]
    batch = decode_records(values, ctypes, [1000, 2000, 3000, 4000], [False, True, True, False])
    assert batch.schema.equals(OUTPUT_SCHEMA)
    assert batch.num_rows == 13
    table = pa.Table.from_batches([batch])
    assert table.slice(0, 10).select(HIT_SCHEMA.names).equals(genuine_table.slice(0, 10))
    assert table.column("TDC_CHANNEL").to_pylist()[10:12] == [5, 70]
    assert table.column("produced_ms").to_pylist()[9:] == [1000, 2000, 3000, 4000]
    assert table.column("synthetic").to_pylist()[10:] == [True, True, False]
    assert table.column("HEAD").to_pylist()[12] is None  # the undecodable message: one malformed row


def control(event: str, run: int) -> bytes:
    return json.dumps({"event": event, "run": run, "file": "data_000007.txt", "rows": 10}).encode()


def test_decode_records_run_headers_and_control_messages(genuine_table):
    arrow = encode_arrow(genuine_table.slice(0, 4))
    values = [control("run-start", 7), arrow, b"2,0,5,100,7,3", control("run-end", 7), b'{"event": "pause"}', arrow]
    ctypes = [CONTENT_TYPE_CONTROL, CONTENT_TYPE_ARROW, CONTENT_TYPE_CSV, CONTENT_TYPE_CONTROL, CONTENT_TYPE_CONTROL, CONTENT_TYPE_ARROW]
    runs = [7, 7, 7, 7, 7, None]
    batch = decode_records(values, ctypes, [1, 2, 3, 4, 5, 6], [False] * 6, runs)
    table = pa.Table.from_batches([batch])
    assert batch.schema.equals(OUTPUT_SCHEMA)
    assert table.num_rows == 1 + 4 + 1 + 1 + 1 + 4
    assert table.column("run_event").to_pylist() == [RunEvent.START] + [RunEvent.DATA] * 5 + [RunEvent.END] + [RunEvent.DATA] * 5
    assert table.column("run").to_pylist() == [7] * 7 + [7] + [None] * 4  # the bad control row keeps its header run
    heads = table.column("HEAD").to_pylist()
    assert heads[0] is None and heads[6] is None and heads[7] is None  # marker rows and the bad one: DAQ columns null
    assert table.column("produced_ms").to_pylist()[6:8] == [4, 5]
