"""The processor's session setup (pure parts, no Spark started)."""

from __future__ import annotations

from dtmon.settings import load_settings
from processor.session import spark_master


def test_the_master_of_spark_submit_is_kept_unless_one_is_configured():
    unset, set_ = load_settings(spark_master=None), load_settings(spark_master="spark://h:7077")
    assert spark_master(unset, {}) == "local[*]"  # plain `processor`: local
    assert spark_master(unset, {"PYSPARK_GATEWAY_PORT": "41234"}) is None  # spark-submit --master X: X stays
    assert spark_master(unset, {"PYSPARK_SUBMIT_ARGS": "--master spark://m:7077 pyspark-shell"}) is None
    assert spark_master(unset, {"PYSPARK_SUBMIT_ARGS": "--conf a=b pyspark-shell"}) == "local[*]"
    assert spark_master(set_, {"PYSPARK_GATEWAY_PORT": "41234"}) == "spark://h:7077"  # configured: it wins


def test_publisher_waits_for_an_away_broker_within_the_grace_period_then_fails():
    import time

    import pytest

    from dtmon.kafka import ConnectionWatch, _watches
    from dtmon.schema import StreamEvent
    from processor.app import ResultsPublisher
    from tests.doubles.kafka import FakeClients

    clients = FakeClients()
    publisher = ResultsPublisher(clients, "results")
    publisher.record(StreamEvent(kind="checkpoint_reset", time=1.0, detail="moved"))
    assert [e.kind for e in publisher.take_events()] == ["checkpoint_reset"] and publisher.take_events() == []
    publisher.publish(1, b"{}", timeout_s=0.1)
    assert publisher.last_batch == 1
    clients.producers[0].undelivered = 1
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="batch 2 not acknowledged"):
        publisher.publish(2, b"{}", timeout_s=0.1)  # broker not lost: gives up after the timeout
    assert time.monotonic() - t0 < 3
    _watches["fake:9092"] = watch = ConnectionWatch("fake:9092")
    watch.lost("Connection refused")
    publisher.grace_s = 2.5
    t0 = time.monotonic()
    with pytest.raises(RuntimeError):
        publisher.publish(3, b"{}", timeout_s=0.1)  # broker away: waits out the grace period first
    assert 2.0 <= time.monotonic() - t0 < 6  # the grace period counts from the loss, just before t0
    del _watches["fake:9092"]


def test_the_progress_log_reports_each_micro_batch_once_including_those_replaced_between_polls(caplog):
    import logging

    from processor.app import ProgressLog, progress_line

    def report(batch: int, messages: int, second: int) -> dict:
        return {"batchId": batch, "timestamp": f"2026-12-03T10:00:{second:02d}.000Z", "numInputRows": messages,
                "batchDuration": 900 + batch, "durationMs": {"addBatch": 800, "triggerExecution": 900, "walCommit": 11},
                "processedRowsPerSecond": 100.0}

    class Query:  # the two StreamingQuery properties ProgressLog reads
        lastProgress = None
        recentProgress: list = []

    assert progress_line(report(3, 0, 0)) is None  # a trigger without input
    assert progress_line(report(3, 20, 0)) == "micro-batch 3: 20 messages, 903 ms (addBatch 800, walCommit 11), 100 messages/s processed"
    query = Query()
    caplog.set_level(logging.INFO, logger="dtmon.processor")
    progress = ProgressLog(query)
    progress.poll()  # nothing reported yet
    query.recentProgress = [report(0, 5, 0)]
    query.lastProgress = query.recentProgress[-1]
    progress.poll()
    progress.poll()  # the same report: not logged again
    query.recentProgress += [report(1, 0, 2)]  # an idle trigger: no line, and it carries the next batch's id
    query.lastProgress = query.recentProgress[-1]
    progress.poll()
    query.recentProgress += [report(1, 7, 4), report(2, 8, 6), report(3, 9, 8)]  # three batches between two polls
    query.lastProgress = query.recentProgress[-1]
    progress.poll()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("micro-batch")]
    assert [ln.split(":")[0] for ln in lines] == ["micro-batch 0", "micro-batch 1", "micro-batch 2", "micro-batch 3"], lines
