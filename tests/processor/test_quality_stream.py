"""Data quality on the real stack parts (Tansu broker, Spark): every results message carries a
quality report, and with the default settings the genuine rows' t0 channel 138 is found and
fills E1 and E2."""

from __future__ import annotations

import time

import pytest

from dtmon.settings import load_settings
from processor.app import ResultsPublisher, start_query
from tests.processor.conftest import create_topic
from tests.processor.test_stream import produce_run, read_until

pytestmark = pytest.mark.integration


def test_default_settings_find_the_t0_channel_and_judge_every_batch(spark, kafka_bootstrap, genuine_table, tmp_path,
                                                                      topic_name, monkeypatch):
    monkeypatch.delenv("DTMON_SCINT_CHANNEL", raising=False)
    raw, results = f"{topic_name}-raw", f"{topic_name}-results"
    create_topic(kafka_bootstrap, raw)
    create_topic(kafka_bootstrap, results)
    settings = load_settings(
        bootstrap_servers=kafka_bootstrap, raw_topic=raw, results_topic=results, trigger_interval_s=1.0,
        checkpoint_location=str(tmp_path / "checkpoint"), starting_offsets="earliest",
    )
    assert settings.scint_channel is None  # the default: find it in the data
    start = int(time.time() * 1000) - 60_000
    end = produce_run(kafka_bootstrap, raw, 1, genuine_table, start, end=True)
    query = start_query(spark, settings, ResultsPublisher(kafka_bootstrap, results))
    try:
        first = read_until(kafka_bootstrap, results, lambda ms: sum(m.rows_read for m in ms) >= genuine_table.num_rows)
        produce_run(kafka_bootstrap, raw, 2, genuine_table, end + 1, end=True)  # the producer's next loop
        everything = read_until(kafka_bootstrap, results,
                                lambda ms: sum(m.rows_read for m in ms) >= 2 * genuine_table.num_rows)
    finally:
        query.stop()

    for m in everything:
        q = m.quality
        assert q is not None and len(q.chambers) == 4 and q.quality in ("good", "warning", "bad", "null")
        assert {r.check for r in q.chambers[0].checks} == {"rate", "dead_channels", "noisy_channels", "time_box",
                                                          "occupancy_shape", "drift_time_shape"}
        assert [r.check for r in q.detector] == ["scintillator"] and len(q.time_box) == 4
        assert (m.scintillator.channel, m.scintillator.source) == (138, "detected")
    # the first batch was reduced with the PDF default 128 and found 138; the next pass is tagged with 138
    assert sum(c.drift_time and sum(c.drift_time.bin_counts) or 0 for c in first[0].chambers) == 0
    second = [m for m in everything if m.run == 2]
    assert sum(m.orbits_with_scintillator for m in second) == 2
    assert sum(sum(c.occupancy_scint.bin_counts) for m in second for c in m.chambers) > 0  # E1
    assert sum(sum(c.drift_time.bin_counts) for m in second for c in m.chambers) > 0  # E2
    assert any(e.kind == "orbit_jump" for m in everything for e in m.events)  # the counter reset: an event
