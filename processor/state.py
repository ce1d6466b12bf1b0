"""Driver-side state kept across micro-batches: runs (data quality: ``processor.quality``).

Works on the run markers of each batch, never on rows. The state lives in the processor's
memory: a restarted processor knows a run's start time only if it reads its marker again.
"""

from __future__ import annotations

from dataclasses import dataclass

from dtmon.wire import RunEvent


@dataclass(frozen=True)
class RunStatus:
    """Run fields of a results message: run number, ``running``/``ended``, start time (epoch s)."""

    run: int | None = None
    state: str | None = None
    started: float | None = None


class RunTracker:
    """Remembers run-start times and ended runs from the producer's control messages.

    The producer sends each marker to every raw partition. A run is ``ended`` from the
    batch holding its first end marker on (rows of it that arrive later from another
    partition do not revive it) until a new start marker of the same run number (a
    looping producer); its start time is the earliest start marker of the open run.
    """

    def __init__(self) -> None:
        self.started: dict[int, float] = {}
        self.ended: set[int] = set()

    def update(self, newest_run: int | None, events: list[tuple[int | None, int, int]]) -> RunStatus:
        """Apply one batch's run markers and describe its newest run.

        Args:
            newest_run: run of the batch's newest raw message (None: no run header seen).
            events: (run, ``RunEvent.START``/``RunEvent.END``, Kafka timestamp in ms) per control message.
        Returns:
            ``RunStatus`` of ``newest_run``; all None when it is None.
        """
        for run, event, ms in sorted((e for e in events if e[0] is not None), key=lambda e: (e[2], e[1])):
            if event == RunEvent.START:  # one marker per raw partition: keep the earliest of an open run
                opened = run not in self.started or run in self.ended
                self.started[run] = ms / 1000.0 if opened else min(self.started[run], ms / 1000.0)
                self.ended.discard(run)
            elif event == RunEvent.END:
                self.ended.add(run)
        if newest_run is None:
            return RunStatus()
        state = "ended" if newest_run in self.ended else "running"
        return RunStatus(newest_run, state, self.started.get(newest_run))
