"""bench.metrics: pacing and stream statistics from recorded values (pure)."""

from __future__ import annotations

import json

import pytest

from bench.metrics import pacing_stats, percentile, spark_batch_durations, stream_stats, summed_results
from bench.stack import producer_summary
from tests.dashboard.factory import make_batch


def test_pacing_of_an_even_stream_and_of_a_burst():
    even = [(1_000 + 100 * i, 100) for i in range(50)]  # 100 rows every 100 ms = 1000 rows/s for 5 s
    stats = pacing_stats(even, 1000.0)
    assert stats.rows == 5000 and stats.span_s == pytest.approx(5.0) and stats.achieved == pytest.approx(1000.0)
    assert stats.per_second == [1000, 1000, 1000, 1000] and stats.total_dev == pytest.approx(0.0)
    assert stats.worst_dev == pytest.approx(0.0) and stats.worst_dev_sliding == pytest.approx(0.0)
    burst = even[:10] + [(1_550, 1000)] + even[10:]  # an extra 1000 rows in the first second
    stats = pacing_stats(burst, 1000.0)
    assert stats.per_second[0] == 2000 and stats.worst_dev == pytest.approx(1.0) and stats.total_dev == pytest.approx(0.2)
    with pytest.raises(ValueError):
        pacing_stats([(0, 5)], 10.0)


def test_stream_stats_leave_out_warm_up_and_use_spark_durations_when_logged():
    batches = [make_batch(i, seed=i, started=1000.0 + 2 * i).message for i in range(8)]
    log = "\n".join(f"micro-batch {i}: 3 messages, {500 + 100 * i} ms (x)" for i in range(8))
    stats = stream_stats(batches, log, trigger_s=1.0, warmup=2)
    steady = batches[2:]
    assert stats.batches == 6 and stats.rows == sum(m.rows_read for m in steady)
    assert stats.batch_p50 == pytest.approx(percentile([0.5 + 0.1 * i for i in range(2, 8)], 50))
    assert stats.over_trigger == 2  # 1.1 s and 1.2 s
    assert stats.rows_per_s == pytest.approx(stats.rows / (steady[-1].published - batches[1].published))
    assert stats.latency_oldest_p50 is None  # the factory's messages carry no Kafka times
    assert stats.first_batch_s == pytest.approx(0.5) and stats.duration_source.startswith("spark")
    without_log = stream_stats(batches, "", trigger_s=1.0, warmup=2)
    assert without_log.batch_p50 == pytest.approx(0.25) and without_log.over_trigger == 0


def test_spark_batch_durations_and_summed_results():
    assert spark_batch_durations("micro-batch 4: 12 messages, 250 ms (addBatch 200)\nother") == {4: (12, 0.25)}
    batches = [make_batch(i, seed=i) for i in range(3)]
    total = summed_results([b.message for b in batches])
    assert total["hits"] == sum(int(b.occupancy.sum()) for b in batches)
    assert total["occupancy"][2][5] == sum(int(b.occupancy[2, 5]) for b in batches)


def test_producer_summary_reads_the_stats_file(tmp_path):
    path = tmp_path / "producer-stats.json"
    assert producer_summary(path) is None
    path.write_text(json.dumps({"rows": 5000, "messages": 5, "bytes": 2_500_000, "elapsed_s": 2.5, "achieved_rate": 2000.0}))
    assert producer_summary(path) == {"rows": 5000, "messages": 5, "mb": 2.5, "elapsed_s": 2.5, "rows_per_s": 2000.0}
