"""The dashboard's reference run: "use as reference" writes the dtmon.reference file the processor
reads (reference_file setting), and the page overlays that file, normalised to the hits shown."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from bokeh.events import ButtonClick

from dashboard.consumer import replay_messages
from dashboard.state import ResultsStore, reference_messages
from dashboard.view import SessionView, cached_reference
from dtmon.reference import load_reference, reference_from_messages, save_reference
from dtmon.settings import load_settings
from tests.dashboard.factory import make_batch


def _store(batches) -> ResultsStore:
    store = ResultsStore(history=10)
    for b in batches:
        store.ingest(b.message)
    return store


def test_use_as_reference_saves_the_processors_reference_file_and_overlays_it(tmp_path):
    batches = [make_batch(i, seed=50 + i, v2=True) for i in range(3)]
    store = _store(batches)
    path = tmp_path / "var" / "reference.json"
    view = SessionView("127.0.0.1:9", "res", history=10, reference_file=path)
    view.tabs.active = 1  # occupancy
    view.refresh(store.snapshot(), now=0.0)
    assert all(math.isnan(v) for v in view.sources["occupancy"].data["ref_ch0"])  # no file yet: no overlay

    view.use_reference._trigger_event(ButtonClick(view.use_reference))
    reference = load_reference(path)  # the processor's loader reads what the dashboard wrote
    assert (reference.run, reference.batches, reference.first_batch, reference.last_batch) == (7, 3, 0, 2)
    assert reference.occupancy()[2].tolist() == sum(b.occupancy[2] for b in batches).tolist()
    assert reference.drift_time()[1].tolist() == sum(b.drift[1] for b in batches).tolist()
    assert "reference saved" in view.caption.text and "run 7, batches 0-2" in view.caption.text

    view.mode.active = 0  # last batch: the reference is scaled to its hits
    ref = np.asarray(view.sources["occupancy"].data["ref_ch2"])
    cumulative = sum(b.occupancy[2] for b in batches)
    assert ref == pytest.approx(cumulative * batches[-1].occupancy[2].sum() / cumulative.sum())
    view.tabs.active = 2  # time box
    ref = np.asarray(view.sources["drift_time"].data["ref_ch1"])
    drift = sum(b.drift[1] for b in batches)
    assert ref == pytest.approx(drift * batches[-1].drift[1].sum() / drift.sum())


def test_reference_after_reset_sums_only_the_batches_since_reset():
    store = _store([make_batch(i, seed=i, v2=True) for i in range(5)])
    view = SessionView("127.0.0.1:9", "res", history=10, reference_file=None)
    view.refresh(store.snapshot(), now=0.0)
    assert [m.batch_id for m in reference_messages(store.snapshot(), view.choice.baseline)] == [0, 1, 2, 3, 4]
    view.reset._trigger_event(ButtonClick(view.reset))
    for i in (5, 6):
        store.ingest(make_batch(i, seed=i, v2=True).message)
    assert [m.batch_id for m in reference_messages(store.snapshot(), view.choice.baseline)] == [5, 6]
    view.refresh(store.snapshot(), now=0.0)
    view.use_reference._trigger_event(ButtonClick(view.use_reference))
    assert "reference not saved: no reference_file setting" in view.caption.text


def test_overlay_follows_the_file_on_disk(tmp_path):
    path = tmp_path / "reference.json"
    assert cached_reference(path) == {}
    first = reference_from_messages([make_batch(0, seed=1, v2=True).message])
    save_reference(first, path)
    assert cached_reference(path)["occupancy"].counts.tolist() == first.occupancy().tolist()
    second = reference_from_messages([make_batch(1, seed=2, v2=True).message])
    save_reference(second, path)
    os.utime(path, (1e9, 1e9))  # a new modification time, as a later save has
    assert cached_reference(path)["occupancy"].counts.tolist() == second.occupancy().tolist()
    path.write_text('{"schema": "dtmon.reference", "version": 1, "chambers": []}')
    os.utime(path, (2e9, 2e9))
    with pytest.raises(ValueError, match="reference.json"):
        cached_reference(path)

    view = SessionView("127.0.0.1:9", "res", history=10, reference_file=path)
    view.tabs.active = 1
    view.refresh(_store([make_batch(0, seed=1, v2=True)]).snapshot(), now=0.0)
    assert "reference not loaded" in view.caption.text
    save_reference(first, path)
    os.utime(path, (3e9, 3e9))
    view.refresh(_store([make_batch(0, seed=1, v2=True), make_batch(1, seed=2, v2=True)]).snapshot(), now=0.0)
    assert "reference not loaded" not in view.caption.text
    assert not math.isnan(view.sources["occupancy"].data["ref_ch0"][0])


def test_replay_covers_the_trend_hours():
    settings = load_settings(dashboard_history=300, dashboard_trend_hours=8.0, trigger_interval_s=2.0)
    assert replay_messages(settings) == 14_400
    assert replay_messages(settings.model_copy(update={"dashboard_trend_hours": 0.01})) == 300
