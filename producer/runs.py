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

Run number of a path or S3 key, first rule that applies:

1. the file name holds a run token ``run<digits>`` (``Run_50.txt``, ``run810_data_3.txt``;
   ``run``, then an optional ``_`` or ``-``, then digits; any case; not part of a longer
   word such as ``rerun5``) -> those digits;
2. the innermost directory named exactly like a run (``Run000810``, ``run_810``,
   ``RUN-810``) -> those digits;
3. the file name holds ``data_<digits>`` (``data_000003.txt``) -> those digits;
4. the last run of digits in the file name (``test_3.csv`` -> 3);
5. otherwise a ``ValueError``: pass ``--run``.

Run numbers are integers 0 .. 2**31 - 1 (the processor's int32 ``run`` column).

Markers (``RunMarkers``): before the first data message of a run the producer sends a
``run-start`` control message, after its last data message a ``run-end`` one (message
format in ``producer.messages.control_message``). A run cut short by a clean stop
(Ctrl-C, SIGTERM, ``--max-rows``, ``--duration``) or by an error also gets its run-end,
with the rows actually sent.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Callable

MAX_RUN = 2**31 - 1
"""Largest run number (the processor keeps runs in an int32 column)."""

RUN_START = "run-start"
RUN_END = "run-end"

_RUN_IN_NAME = re.compile(r"(?<![a-z0-9])run[_-]?(\d+)(?![0-9])", re.IGNORECASE)
_RUN_DIRECTORY = re.compile(r"run[_-]?(\d+)", re.IGNORECASE)
_DATA_IN_NAME = re.compile(r"(?<![a-z0-9])data_(\d+)(?![0-9])", re.IGNORECASE)
_DIGITS = re.compile(r"\d+")


def _checked(run: int, origin: str) -> int:
    if not 0 <= run <= MAX_RUN:
        raise ValueError(f"run number {run} of {origin} is outside 0 .. {MAX_RUN}")
    return run


def run_number(path_or_key: str, explicit: int | None = None) -> int:
    """The run number of a DAQ file (rules in the module docstring).

    Args:
        path_or_key: local path (``/data/Run000810/data_000003.txt``), S3 key
            (``minidt/data_000003.txt``) or ``s3://`` URL of the file.
        explicit: the run number asked for (``--run``, already advanced per pass);
            it wins over the path when given.
    Returns:
        Run number, 0 .. ``MAX_RUN``.
    Raises:
        ValueError: no rule gives a number, or the number is outside 0 .. ``MAX_RUN``.
    """
    if explicit is not None:
        return _checked(explicit, "--run")
    parts = [p for p in re.split(r"[/\\]", path_or_key) if p]
    if not parts:
        raise ValueError("no file name to take a run number from: pass --run N")
    name, directories = parts[-1], parts[:-1]
    stem = PurePosixPath(name).stem
    if found := _RUN_IN_NAME.findall(stem):
        return _checked(int(found[-1]), path_or_key)
    for directory in reversed(directories):
        if match := _RUN_DIRECTORY.fullmatch(directory):
            return _checked(int(match.group(1)), path_or_key)
    if found := _DATA_IN_NAME.findall(stem):
        return _checked(int(found[-1]), path_or_key)
    if found := _DIGITS.findall(stem):
        return _checked(int(found[-1]), path_or_key)
    raise ValueError(
        f"cannot tell the run number of {path_or_key!r}: no Run000810/run_810 directory and no number "
        "in the file name; pass --run N"
    )


SendControl = Callable[[str, int, str, int], None]
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
            self.send(RUN_START, run, file_name, 0)
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
        self.send(RUN_END, run, self.file, self.rows)
