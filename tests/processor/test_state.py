"""Driver-side state: channel health (pure function + window) and the run tracker."""

from __future__ import annotations

import statistics

import numpy as np
import pytest

from dtmon.wire import RunEvent
from processor.state import ChannelHealthTracker, RunTracker, channel_health


def brute_force_health(window: np.ndarray, factor: float) -> tuple[list, list]:
    """The definitions spelled out with plain loops: dead = 0 hits in a chamber with hits;
    noisy = hits > factor x max(median of the chamber's 64 channels, 1)."""
    dead, noisy = [], []
    for chamber in range(4):
        per_channel = [int(window[:, chamber, k].sum()) for k in range(64)]
        median = max(statistics.median(per_channel), 1)
        for k, n in enumerate(per_channel):
            if n == 0 and sum(per_channel) > 0:
                dead.append((chamber, k))
            if n > factor * median:
                noisy.append((chamber, k))
    return dead, noisy


def test_channel_health_hand_made_window():
    window = np.zeros((3, 4, 64), np.int64)
    window[:, 0, :] = 4  # chamber 0: 12 hits per channel over the window ...
    window[:, 0, 5] = 0  # ... channel 5 silent: dead
    window[0, 0, 7] = 61 - 8  # channel 7: 61 hits > 5 x 12: noisy
    window[0, 0, 9] = 60 - 8  # channel 9: 60 hits, not above 5 x 12
    # chamber 1: no hits at all -> nothing dead (chamber not live)
    window[1, 2, 3] = 5  # chamber 2 sparse: median 0 -> floor 1, 5 hits is not > 5
    window[2, 2, 4] = 6  # 6 > 5: noisy; the other 62 channels are dead
    dead, noisy = channel_health(window, noisy_factor=5.0)
    assert (0, 5) in dead and not any(c == 1 for c, _ in dead)
    assert noisy == [(0, 7), (2, 4)]
    assert len([d for d in dead if d[0] == 2]) == 62
    assert (dead, noisy) == brute_force_health(window, 5.0)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_channel_health_random_windows_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    window = rng.poisson(rng.uniform(0, 3, (1, 4, 64)), (10, 4, 64))
    window[:, rng.integers(0, 4), rng.integers(0, 64)] += 40  # a hot channel
    window[:, 3, rng.integers(0, 64, 3)] = 0  # some silent channels
    assert channel_health(window, 3.0) == brute_force_health(window, 3.0)


def test_health_tracker_forgets_batches_older_than_the_window():
    tracker = ChannelHealthTracker(window_batches=3, noisy_factor=5.0)
    first = np.ones((4, 64), np.int64)
    later = np.ones((4, 64), np.int64)
    later[1, 10] = 0
    health = tracker.update(first)
    assert health.dead == [] and health.window_batches == 3
    for _ in range(2):
        health = tracker.update(later)
    assert health.dead == []  # channel (1, 10) still has its hit from the first batch
    health = tracker.update(later)
    assert [(r.chamber, r.channel) for r in health.dead] == [(1, 10)]
    assert tracker.report() == health


def test_run_tracker_states_and_start_times():
    runs = RunTracker()
    assert runs.update(None, []).run is None
    status = runs.update(5, [(5, RunEvent.START, 1_000_500)])
    assert (status.run, status.state, status.started) == (5, "running", 1000.5)
    assert runs.update(5, []).state == "running"
    status = runs.update(5, [(5, RunEvent.END, 2_000_000)])
    assert (status.state, status.started) == ("ended", 1000.5)
    # late rows of run 5 (another partition) do not revive it
    assert runs.update(5, []).state == "ended"
    # end of 5 and start of 6 in one batch; 6 is the newest
    status = runs.update(6, [(6, RunEvent.START, 3_000_000)])
    assert (status.run, status.state, status.started) == (6, "running", 3000.0)
    # a run seen without its start marker (processor started mid-run)
    status = runs.update(9, [])
    assert (status.run, status.state, status.started) == (9, "running", None)
    # one start marker per partition, in two batches: the run started at the earliest
    runs.update(7, [(7, RunEvent.START, 5_000_100)])
    status = runs.update(7, [(7, RunEvent.START, 5_000_000), (7, RunEvent.START, 5_000_200)])
    assert (status.state, status.started) == ("running", 5000.0)
    # a looping producer starts run 5 again
    status = runs.update(5, [(5, RunEvent.START, 4_000_000)])
    assert (status.state, status.started) == ("running", 4000.0)
