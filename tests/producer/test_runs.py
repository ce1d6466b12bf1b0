"""The run-start / run-end bookkeeping (pure, no broker)."""

from __future__ import annotations

from dtmon.wire import RunEvent
from producer.runs import RunMarkers


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
