"""The check window (processor.window): last N batches or last M hits, cumulative histograms."""

from __future__ import annotations

import numpy as np

from dtmon.checks_config import WindowConfig
from processor.window import CheckWindow, WindowBatch

EDGES = (0.0, 10.0, 20.0)


def batch(hits_per_channel: int, seconds: float = 1.0, edges=EDGES) -> WindowBatch:
    occ = np.full((4, 64), hits_per_channel, np.int64)
    return WindowBatch(occ, occ // 2, np.ones((4, len(edges) - 1), np.int64), tuple(edges), seconds, 10, 1)


def test_last_n_batches():
    w = CheckWindow(WindowConfig(batches=3))
    for k in range(1, 6):
        w.add(batch(k))
    t = w.totals()
    assert t.batches == 3 and t.occupancy[0, 0] == 3 + 4 + 5 and t.detector_time_s == 3.0
    assert t.hits_per_chamber.tolist() == [12 * 64] * 4 and t.orbits_with_scintillator == 3


def test_last_m_hits_keeps_the_newest_batches_that_reach_m():
    w = CheckWindow(WindowConfig(batches=100, hits=2 * 256))  # two batches of 256 hits
    for _ in range(5):
        w.add(batch(1))
    assert len(w) == 2 and w.totals().hits == 512
    w.add(batch(4))  # 1024 hits alone
    assert len(w) == 1


def test_reset_and_binning_change_empty_the_window():
    w = CheckWindow(WindowConfig(batches=10))
    w.add(batch(1))
    w.add(batch(1, edges=(0.0, 5.0, 10.0, 15.0)))
    assert len(w) == 1 and w.totals().drift_time.shape == (4, 3)
    w.reset()
    empty = w.totals(EDGES)
    assert empty.batches == 0 and empty.hits == 0 and empty.drift_time.shape == (4, 2)
