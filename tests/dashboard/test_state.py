"""Unit tests of the dashboard's results store (dashboard/state.py)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from dashboard.state import ResultsStore, sum_histograms
from dtmon.schema import MULTIPLICITY_EDGES, OCCUPANCY_EDGES, Histogram
from tests.dashboard.factory import T0, make_batch


class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_empty_store_has_default_bins_and_no_batch():
    snap = ResultsStore(history=10).snapshot()
    assert snap.version == 0
    assert snap.last_batch_id is None and snap.last_update is None
    assert snap.series["total_hits"] == []
    assert snap.occupancy.edges == OCCUPANCY_EDGES
    assert np.array_equal(snap.occupancy.counts, np.zeros((4, 64)))
    assert snap.multiplicity.edges == MULTIPLICITY_EDGES
    assert snap.broker_reachable is None


def test_series_and_latest_histograms():
    clock = FakeClock(123.0)
    store = ResultsStore(history=10, clock=clock)
    batches = [make_batch(i, seed=i, malformed=i % 3) for i in range(4)]
    for i, b in enumerate(batches):
        clock.t = 100.0 + i
        store.ingest(b.message)
    snap = store.snapshot()

    assert snap.series["batch_id"] == [0, 1, 2, 3]
    assert snap.series["time_ms"] == [(T0 + 2.0 * i) * 1000 for i in range(4)]
    assert snap.series["duration_s"] == pytest.approx([0.25] * 4)
    assert snap.series["total_hits"] == [int(b.occupancy.sum()) for b in batches]
    for c in range(4):
        assert snap.series[f"hits_ch{c}"] == [int(b.occupancy[c].sum()) for b in batches]
    assert snap.series["rows_read"] == [int(b.occupancy.sum()) + b.extra_rows + b.malformed for b in batches]
    assert snap.series["malformed_rows"] == [0, 1, 2, 0]
    assert snap.malformed_rows_kept == 3

    last = batches[-1]
    assert np.array_equal(snap.occupancy.counts, last.occupancy)
    assert np.array_equal(snap.multiplicity.counts, last.multiplicity)
    assert snap.occupancy.edges == [float(i) for i in range(65)]
    assert snap.multiplicity.edges == [i + 0.5 for i in range(65)]
    assert snap.last_batch_id == 3
    assert snap.last_update == 103.0
    assert snap.synthetic is False


def test_history_is_trimmed_to_the_last_n_batches():
    store = ResultsStore(history=10)
    batches = [make_batch(i, seed=100 + i, malformed=i) for i in range(25)]
    for b in batches:
        store.ingest(b.message)
    snap = store.snapshot()
    assert snap.series["batch_id"] == list(range(15, 25))
    assert snap.series["total_hits"] == [int(b.occupancy.sum()) for b in batches[15:]]
    assert snap.malformed_rows_kept == sum(range(15, 25))
    assert np.array_equal(snap.occupancy.counts, batches[24].occupancy)


def test_version_counts_every_change():
    store = ResultsStore(history=10)
    store.ingest(make_batch(0, seed=1).message)
    store.ingest(make_batch(1, seed=2).message)
    assert store.version == 2
    store.record_invalid("offset 7: not JSON")
    assert store.version == 3
    store.set_broker(True)
    store.set_broker(True)  # no change, no new version
    assert store.version == 4
    store.set_broker(False, "all brokers down")
    snap = store.snapshot()
    assert snap.version == 5
    assert (snap.broker_reachable, snap.broker_detail) == (False, "all brokers down")
    assert (snap.invalid_messages, snap.last_invalid) == (1, "offset 7: not JSON")
    assert store.snapshot() is snap  # cached until the next change


def test_replayed_batch_replaces_the_newest_point():
    store = ResultsStore(history=10)
    store.ingest(make_batch(7, seed=1).message)
    replay = make_batch(7, seed=2, synthetic=True)
    store.ingest(replay.message)
    snap = store.snapshot()
    assert snap.series["batch_id"] == [7]
    assert snap.series["total_hits"] == [int(replay.occupancy.sum())]
    assert snap.synthetic is True


def test_sum_histograms_adds_per_chamber():
    a, b = make_batch(0, seed=5), make_batch(1, seed=6)
    total = sum_histograms([a.message, b.message], "occupancy")
    assert np.array_equal(total.counts, a.occupancy + b.occupancy)
    with pytest.raises(ValueError, match="unknown"):
        sum_histograms([a.message], "drift")


def test_message_with_inconsistent_bins_is_rejected_and_nothing_kept():
    good = make_batch(0, seed=1)
    store = ResultsStore(history=10)
    store.ingest(good.message)
    chambers = list(good.message.chambers)
    odd = Histogram(bin_edges=[0.0, 32.0, 64.0], bin_counts=[1, 2])
    chambers[2] = chambers[2].model_copy(update={"occupancy": odd})
    bad = good.message.model_copy(update={"batch_id": 1, "chambers": chambers})
    with pytest.raises(ValueError, match="bin edges differ"):
        store.ingest(bad)
    assert store.version == 1
    assert store.snapshot().last_batch_id == 0


def test_concurrent_ingest_loses_nothing():
    store = ResultsStore(history=1000)
    messages = [make_batch(i, seed=i).message for i in range(40)]

    def feed(part):
        for m in part:
            store.ingest(m)
            store.snapshot()

    threads = [threading.Thread(target=feed, args=(messages[k::4],)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    snap = store.snapshot()
    assert snap.version == 40
    assert sorted(snap.series["batch_id"]) == list(range(40))
