"""The raw-topic protocol (dtmon.wire): run events, control messages, headers, Arrow values."""

from __future__ import annotations

import json

import pytest

from dtmon.hits import DecodeError, decode_csv
from dtmon.wire import (
    CONTENT_TYPE_ARROW,
    CONTENT_TYPE_CONTROL,
    HEADER_FIRST_LINE,
    HEADER_RUN,
    HEADER_SYNTHETIC,
    MAX_RUN,
    RunEvent,
    data_headers,
    decode_control,
    decode_message,
    encode_arrow,
    encode_control,
    header_dict,
    parse_run,
)


def test_run_events_have_one_code_and_one_wire_name():
    assert [int(e) for e in RunEvent] == [0, 1, 2]
    assert [RunEvent.from_wire(n) for n in ("run-start", "run-end")] == [RunEvent.START, RunEvent.END]
    assert RunEvent.START.wire_name == "run-start" and RunEvent.END.wire_name == "run-end"
    with pytest.raises(ValueError):
        RunEvent.from_wire("run-stop")


@pytest.mark.parametrize(
    "event,run,name,rows",
    [(RunEvent.START, 0, "data_000000.txt", 0), (RunEvent.END, 810, "data_000003.txt", 1_310_592), (RunEvent.END, MAX_RUN, "\u00e9.csv", 0)],
)
def test_control_message_carries_event_run_file_and_rows(event, run, name, rows):
    value, headers = encode_control(event, run, name, rows)
    assert json.loads(value) == {"event": event.wire_name, "run": run, "file": name, "rows": rows}
    assert headers == [
        ("content-type", b"application/vnd.dtmon.control+json"),
        ("dtmon-run", str(run).encode("ascii")),
        ("dtmon-file", name.encode("utf-8")),
    ]
    assert CONTENT_TYPE_CONTROL == "application/vnd.dtmon.control+json"
    assert decode_control(value) == (run, event)  # round trip


@pytest.mark.parametrize(
    "event,run,rows",
    [("run-stop", 1, 0), ("start", 1, 0), (RunEvent.DATA, 1, 0), (RunEvent.START, -1, 0), (RunEvent.END, 2**31, 5),
     (RunEvent.END, 3, -1), (RunEvent.START, 3, 7)],
)
def test_control_message_refuses_bad_markers(event, run, rows):
    with pytest.raises(ValueError):
        encode_control(event, run, "data_000003.txt", rows)


def control(event: str, run: int) -> bytes:
    return json.dumps({"event": event, "run": run, "file": "data_000007.txt", "rows": 10}).encode()


def test_decode_control_takes_the_run_from_the_value_else_the_header():
    assert decode_control(control("run-end", 3), None) == (3, RunEvent.END)
    assert decode_control(b'{"event": "run-start"}', 12) == (12, RunEvent.START)
    for bad in (b"not json", b'{"event": "stop", "run": 1}', b'{"event": "run-end", "run": -1}', b"[1, 2]", b"7",
                b'{"event": "run-end", "run": true}'):
        with pytest.raises(DecodeError):
            decode_control(bad, 1)


def test_run_header_parsing():
    assert parse_run("42") == 42 and parse_run(None) is None and parse_run("x") is None
    assert parse_run(str(MAX_RUN)) == MAX_RUN and parse_run(str(MAX_RUN + 1)) is None and parse_run("-1") is None


def test_data_headers_and_arrow_round_trip(genuine_csv):
    genuine_table = decode_csv(genuine_csv.read_bytes()).table
    headers = header_dict(data_headers(CONTENT_TYPE_ARROW, "data_000001.txt", 12, True, 5))
    assert headers == {"content-type": CONTENT_TYPE_ARROW, "dtmon-schema": "dtmon.hits/1", "dtmon-file": "data_000001.txt",
                       HEADER_FIRST_LINE: "12", HEADER_SYNTHETIC: "1", HEADER_RUN: "5"}
    rows = genuine_table.slice(0, 50)
    assert decode_message(encode_arrow(rows), headers["content-type"]).equals(rows)
    with pytest.raises(DecodeError):
        decode_message(b"garbage", CONTENT_TYPE_ARROW)
