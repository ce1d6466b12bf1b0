"""Reference files of the dashboard: saved, found by the name the results carry, overlaid."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dashboard.consumer import replay_messages
from dashboard.reference import reference_histograms, save_reference
from dashboard.state import ResultsStore, ViewChoice
from dashboard.view import SessionView
from dtmon.settings import load_settings
from tests.dashboard.factory import T0, make_batch


def test_results_naming_a_reference_get_it_overlaid(tmp_path):
    store = ResultsStore(history=5)
    good = [make_batch(i, seed=i, v2=True) for i in range(3)]
    for b in good:
        store.ingest(b.message)
    path = save_reference(tmp_path, ViewChoice(mode="cumulative").select(store.snapshot()), store.snapshot().last,
                          now=T0)
    assert path.name == "reference-run7-20260921T141320.json"
    named = make_batch(3, seed=9, quality=("good",) * 4, reference=path.stem)
    assert reference_histograms(named.message, tmp_path)["occupancy"].counts.sum() == sum(
        b.occupancy.sum() for b in good)
    assert reference_histograms(make_batch(4, seed=9, quality=("good",) * 4).message, tmp_path) == {}
    (tmp_path / "broken.json").write_text('{"schema": "dtmon.reference", "version": 1, "chambers": []}')
    with pytest.raises(ValueError, match="chambers"):
        reference_histograms(make_batch(4, seed=9, quality=("good",) * 4, reference="broken").message, tmp_path)

    store.ingest(named.message)
    view = SessionView("127.0.0.1:9", "res", history=5, reference_dir=tmp_path)
    view.tabs.active = 2  # time box
    view.mode.active = 0
    view.refresh(store.snapshot(), now=0.0)
    ref = np.asarray(view.sources["drift_time"].data["ref_ch1"])
    cumulative = sum(b.drift[1] for b in good)
    assert ref == pytest.approx(cumulative * named.drift[1].sum() / cumulative.sum())
    assert not any(math.isnan(v) for v in ref)


def test_replay_covers_the_trend_hours():
    settings = load_settings(dashboard_history=300, dashboard_trend_hours=8.0, trigger_interval_s=2.0)
    assert replay_messages(settings) == 14_400
    assert replay_messages(settings.model_copy(update={"dashboard_trend_hours": 0.01})) == 300
