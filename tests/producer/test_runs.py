"""Run numbers from file paths and the run-start / run-end bookkeeping (pure, no broker)."""

from __future__ import annotations

import pytest

from dtmon.wire import RunEvent
from producer.runs import MAX_RUN, RunMarkers, run_number


@pytest.mark.parametrize(
    "path,expected",
    [
        ("data_000003.txt", 3),  # each DAQ file its own run
        ("/data/minidt/data_000000.txt", 0),
        ("minidt/data_000081.txt", 81),  # an S3 key
        ("/data/Run000810/data_000003.txt", 810),  # a run directory wins over the DAQ file number
        ("minidt/run_810/data_000000.txt", 810),
        ("s3://bucket/RUN-12/data_000001.txt", 12),
        ("/runs/Run000966/sub/data_5.txt", 966),  # the run directory need not be the parent
        ("/a/Run000001/Run000810/data_5.txt", 810),  # the innermost run directory
        ("C:\\daq\\Run000810\\data_000001.txt", 810),
        ("MiniDT_data_example/Run_50.txt", 50),  # a run token in the file name
        ("/x/Run000810/run966_data_000001.txt", 966),  # ... wins over the directory
        ("/tmp/pytest-7/test_abc0/data_000007.txt", 7),  # other directories' digits are ignored
        ("/x/rerun5/data_2.txt", 2),  # rerun5 is not a run directory
        ("/x/run7x/data_2.txt", 2),
        ("prerun9_data_4.txt", 4),  # nor is prerun9 a run token
        ("TamannaTasneem__mapd_try__data_000000.txt", 0),
        ("merged__data_000000__rows0000-0998.csv", 0),  # data_N beats the other numbers
        ("eigen-carmona__MAPDBproj__Data__test_3.csv", 3),  # else the last number in the name
        ("hits-2026.csv", 2026),
        (f"data_{MAX_RUN}.txt", MAX_RUN),
    ],
)
def test_run_number_from_the_path(path, expected):
    assert run_number(path, None) == expected


@pytest.mark.parametrize("path", ["data_000003.txt", "/data/Run000810/data_000003.txt", "notes.txt", ""])
def test_an_explicit_run_wins(path):
    assert run_number(path, 42) == 42
    assert run_number(path, 0) == 0


@pytest.mark.parametrize(
    "path,explicit,match",
    [
        ("notes.txt", None, "--run"),
        ("/data/Run000810x/hits.csv", None, "--run"),
        ("", None, "--run"),
        (f"data_{MAX_RUN + 1}.txt", None, "outside"),
        ("data_1.txt", -1, "outside"),
        ("data_1.txt", MAX_RUN + 1, "outside"),
    ],
)
def test_run_number_refuses_what_it_cannot_tell(path, explicit, match):
    with pytest.raises(ValueError, match=match):
        run_number(path, explicit)


def test_markers_frame_each_run_once_with_its_rows():
    sent = []
    markers = RunMarkers(lambda *args: sent.append(args))
    markers.data(0, "data_000000.txt")
    markers.sent(5)
    markers.data(0, "data_000000.txt")  # same run: no new marker
    markers.sent(3)
    markers.data(1, "data_000001.txt")  # next run: end of the previous one first
    markers.sent(2)
    markers.end()
    markers.end()  # nothing open: nothing sent
    assert sent == [
        (RunEvent.START, 0, "data_000000.txt", 0),
        (RunEvent.END, 0, "data_000000.txt", 8),
        (RunEvent.START, 1, "data_000001.txt", 0),
        (RunEvent.END, 1, "data_000001.txt", 2),
    ]
    assert markers.started == 2 and markers.run is None


def test_a_run_over_several_files_ends_with_its_last_file():
    sent = []
    markers = RunMarkers(lambda *args: sent.append(args))
    for name, rows in (("data_000000.txt", 7), ("data_000001.txt", 4), ("data_000000.txt", 2)):
        markers.data(810, name)
        markers.sent(rows)
    markers.end()
    markers.data(810, "data_000001.txt")  # the same number after an end: a new run
    markers.end()
    assert sent == [
        (RunEvent.START, 810, "data_000000.txt", 0),
        (RunEvent.END, 810, "data_000000.txt", 13),
        (RunEvent.START, 810, "data_000001.txt", 0),
        (RunEvent.END, 810, "data_000001.txt", 0),
    ]
