"""The check window: cumulative per-chamber histograms of the newest micro-batches (pure, driver side).

The data-quality checks judge a window, not one 2 s micro-batch: the last ``batches``
micro-batches, or fewer once the newest batches hold ``hits`` chamber hits
(``dtmon.checks_config.WindowConfig``). Each batch enters as a ``WindowBatch`` of small
arrays (a few kB), so the window costs memory in batches, never in hits.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from dtmon.checks_config import WindowConfig
from dtmon.hits import CELLS_PER_CHAMBER, N_CHAMBERS


@dataclass(frozen=True)
class WindowBatch:
    """One micro-batch's contribution to the window.

    ``occupancy``: int (4, 64) distinct orbits with a hit per chamber and local channel;
    ``occupancy_scint``: int (4, 64) hits in orbits with a scintillator hit; ``drift_time``: int (4, D) tagged hits per
    DRIFTIME bin (edges ``drift_edges``, ns, D + 1 values); ``detector_time_s``: detector
    time the batch's hits span (s); ``orbits_with_hits``: orbits with a chamber hit;
    ``orbits_with_scintillator``: orbits with a t0 hit.
    """

    occupancy: np.ndarray
    occupancy_scint: np.ndarray
    drift_time: np.ndarray
    drift_edges: tuple[float, ...]
    detector_time_s: float = 0.0
    orbits_with_hits: int = 0
    orbits_with_scintillator: int = 0

    @classmethod
    def from_aggregates(cls, agg) -> "WindowBatch":
        """From a ``processor.reduce.BatchAggregates`` (same array shapes).

        ``occupancy`` is the batch's ``occupancy_orbits``: each (orbit, channel) counts once, so
        a sample replayed several times inside one micro-batch (a looping producer that the
        processor lags behind) is not mistaken for more statistics; for real data it equals
        the hit occupancy up to channels firing twice in one 89 us orbit.
        """
        return cls(
            occupancy=np.asarray(agg.occupancy_orbits, np.int64),
            occupancy_scint=np.asarray(agg.occupancy_scint, np.int64),
            drift_time=np.asarray(agg.drift_time, np.int64),
            drift_edges=tuple(agg.drift_edges),
            detector_time_s=float(agg.detector_time_s or 0.0),
            orbits_with_hits=int(agg.orbits_with_hits),
            orbits_with_scintillator=int(agg.orbits_with_scintillator),
        )

    @property
    def hits(self) -> int:
        """Chamber hits in the batch."""
        return int(self.occupancy.sum())


@dataclass(frozen=True)
class WindowTotals:
    """Cumulative histograms of the window; shapes as in ``WindowBatch``; ``hits_per_chamber`` (4,)."""

    batches: int
    occupancy: np.ndarray
    occupancy_scint: np.ndarray
    drift_time: np.ndarray
    drift_edges: tuple[float, ...]
    detector_time_s: float
    orbits_with_hits: int
    orbits_with_scintillator: int

    @property
    def hits_per_chamber(self) -> np.ndarray:
        """int (4,): chamber hits in the window."""
        return self.occupancy.sum(axis=1)

    @property
    def hits(self) -> int:
        """Chamber hits in the window."""
        return int(self.occupancy.sum())

    @property
    def tagged_hits_per_chamber(self) -> np.ndarray:
        """int (4,): scintillator-tagged hits inside the drift-time histogram range."""
        return self.drift_time.sum(axis=1)


def empty_totals(drift_edges: tuple[float, ...]) -> WindowTotals:
    """Totals of an empty window with drift-time edges ``drift_edges`` (ns)."""
    zeros = np.zeros((N_CHAMBERS, CELLS_PER_CHAMBER), np.int64)
    return WindowTotals(0, zeros, zeros.copy(), np.zeros((N_CHAMBERS, len(drift_edges) - 1), np.int64),
                        tuple(drift_edges), 0.0, 0, 0)


class CheckWindow:
    """Rolling window of ``WindowBatch``es (``WindowConfig``: at most ``batches``; with ``hits`` > 0,
    the newest batches that together hold at least ``hits`` chamber hits)."""

    def __init__(self, config: WindowConfig):
        self.config = config
        self._batches: deque[WindowBatch] = deque(maxlen=config.batches)

    def __len__(self) -> int:
        return len(self._batches)

    def reset(self) -> None:
        """Empty the window (new run, new scintillator channel)."""
        self._batches.clear()

    def add(self, batch: WindowBatch) -> None:
        """Append one batch; drop the oldest beyond the batch limit or the hit limit.

        A batch with different drift-time edges from the window's empties the window first.
        """
        if self._batches and self._batches[-1].drift_edges != batch.drift_edges:
            self._batches.clear()
        self._batches.append(batch)
        if self.config.hits > 0:
            while len(self._batches) > 1 and sum(b.hits for b in list(self._batches)[1:]) >= self.config.hits:
                self._batches.popleft()

    def totals(self, drift_edges: tuple[float, ...] | None = None) -> WindowTotals:
        """Sum of the window's batches (``empty_totals(drift_edges)`` for an empty window).

        Raises:
            ValueError: the window is empty and no ``drift_edges`` are given.
        """
        if not self._batches:
            if drift_edges is None:
                raise ValueError("empty window: drift-time edges needed")
            return empty_totals(drift_edges)
        bs = list(self._batches)
        return WindowTotals(
            batches=len(bs),
            occupancy=np.sum([b.occupancy for b in bs], axis=0),
            occupancy_scint=np.sum([b.occupancy_scint for b in bs], axis=0),
            drift_time=np.sum([b.drift_time for b in bs], axis=0),
            drift_edges=bs[-1].drift_edges,
            detector_time_s=float(sum(b.detector_time_s for b in bs)),
            orbits_with_hits=sum(b.orbits_with_hits for b in bs),
            orbits_with_scintillator=sum(b.orbits_with_scintillator for b in bs),
        )
