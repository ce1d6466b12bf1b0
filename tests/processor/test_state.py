"""Driver-side state: the run tracker."""

from __future__ import annotations

from dtmon.wire import RunEvent
from processor.state import RunTracker


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
