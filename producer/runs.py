"""Runs: which run each DAQ file belongs to, and the run-start / run-end markers.

A *run* is a stretch of the stream the dashboard treats as one data-taking period
(its cumulative views start again at a new run). The producer decides the runs:

* without ``--run``: the run number of each file comes from its path or S3 key
  (``run_number``), and a run is a stretch of consecutive files with the same number.
  With the DAQ naming every file is its own run (``data_000003.txt`` -> run 3); all
  files under a ``Run000810/`` directory are one run 810. With ``--loop`` the replays
  give the same numbers again: ``data_0, data_1, data_0, ...`` are runs 0, 1, 0, ...
  (each a new run with its own markers), but a source with a single run number (one
  file, or one run directory) stays ONE run across its replays, so a looped sample
  does not restart the dashboard's cumulative views at every replay.
* with ``--run N``: one pass over the whole source is one run; with ``--loop`` the
  passes are runs N, N+1, N+2, ...

The run number of a path or S3 key (``run_number``) follows the rules in ``dtmon.daqfiles``.

Markers (``RunMarkers``): before the first data message of a run the producer sends a
``run-start`` control message, after its last data message a ``run-end`` one (message
format in ``dtmon.wire``). A run cut short by a clean stop
(Ctrl-C, SIGTERM, ``--max-rows``, ``--duration``) or by an error also gets its run-end,
with the rows actually sent.
"""

from __future__ import annotations

from typing import Callable

from dtmon.daqfiles import run_number
from dtmon.wire import MAX_RUN, RunEvent

__all__ = ["MAX_RUN", "RunMarkers", "SendControl", "run_number"]

SendControl = Callable[[RunEvent, int, str, int], None]
"""``send(event, run, file_name, rows)``: puts one control message on the raw topic."""


class RunMarkers:
    """Keeps track of the run in progress and sends its start and end markers.

    Usage, per data chunk: ``markers.data(run, file_name)`` just before the chunk is
    sent (sends run-end of the previous run and run-start of this one when the run
    number changes), then ``markers.sent(n)``; ``markers.end()`` when the run is over
    (its last file done, or a stop).

    Args:
        send: sends one control message (``SendControl``).

    Attributes:
        run: number of the run in progress; None between runs.
        file: the file name of its latest data; rows: rows sent in it.
        started: runs begun so far.
    """

    def __init__(self, send: SendControl):
        self.send = send
        self.run: int | None = None
        self.file = ""
        self.rows = 0
        self.started = 0

    def data(self, run: int, file_name: str) -> None:
        """Data of run ``run`` from ``file_name`` is about to be sent."""
        if self.run is not None and self.run != run:
            self.end()
        if self.run is None:
            self.send(RunEvent.START, run, file_name, 0)
            self.run, self.rows = run, 0
            self.started += 1
        self.file = file_name

    def sent(self, rows: int) -> None:
        """``rows`` DAQ rows of the run in progress went out."""
        self.rows += rows

    def end(self) -> None:
        """Send run-end for the run in progress, if any (rows = rows sent in it)."""
        if self.run is None:
            return
        run, self.run = self.run, None  # closed even if sending fails
        self.send(RunEvent.END, run, self.file, self.rows)
