"""Driver-side state kept across micro-batches: channel health and runs.

Works on the small per-batch results only (4 x 64 occupancy arrays, a few run markers),
never on rows. The state lives in the processor's memory: a restarted processor starts
with an empty health window and knows a run's start time only if it reads its marker again.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from dtmon.hits import CELLS_PER_CHAMBER, N_CHAMBERS
from dtmon.schema import ChannelHealth, ChannelRef
from dtmon.wire import RunEvent


def channel_health(window: np.ndarray, noisy_factor: float) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Dead and noisy channels over a window of micro-batches (pure).

    Dead: no hit in the window while its chamber had hits in the window. Noisy: hits in
    the window > ``noisy_factor`` x the median over the chamber's 64 channels, the median
    taken as at least 1 hit so that a sparse window (median 0) does not flag every channel
    that fired.

    Args:
        window: int array (B, 4, 64), hits per batch, chamber and local channel (B >= 0).
        noisy_factor: threshold multiple of the chamber median (> 1).
    Returns:
        (dead, noisy): lists of (chamber, local channel), sorted.
    """
    counts = np.asarray(window).reshape(-1, N_CHAMBERS, CELLS_PER_CHAMBER).sum(axis=0)
    live = counts.sum(axis=1) > 0
    dead = (counts == 0) & live[:, None]
    threshold = noisy_factor * np.maximum(np.median(counts, axis=1), 1.0)
    noisy = counts > threshold[:, None]
    return [(int(c), int(k)) for c, k in np.argwhere(dead)], [(int(c), int(k)) for c, k in np.argwhere(noisy)]


class ChannelHealthTracker:
    """The occupancy of the last ``window_batches`` micro-batches with rows, and its verdict."""

    def __init__(self, window_batches: int, noisy_factor: float):
        self.window_batches = window_batches
        self.noisy_factor = noisy_factor
        self._window: deque[np.ndarray] = deque(maxlen=window_batches)

    def update(self, occupancy: np.ndarray) -> ChannelHealth:
        """Add one batch's occupancy (4, 64) and return the health over the window."""
        self._window.append(np.asarray(occupancy, np.int64))
        return self.report()

    def report(self) -> ChannelHealth:
        """Dead and noisy channels over the current window (``channel_health``)."""
        window = np.array(self._window) if self._window else np.zeros((0, N_CHAMBERS, CELLS_PER_CHAMBER), np.int64)
        dead, noisy = channel_health(window, self.noisy_factor)
        return ChannelHealth(
            window_batches=self.window_batches,
            noisy_factor=self.noisy_factor,
            dead=[ChannelRef(chamber=c, channel=k) for c, k in dead],
            noisy=[ChannelRef(chamber=c, channel=k) for c, k in noisy],
        )


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
