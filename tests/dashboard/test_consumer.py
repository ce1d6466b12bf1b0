"""The results consumer against a real broker (Tansu and Apache Kafka): missing topic, history
replay, invalid messages, broker loss and recovery."""

from __future__ import annotations

import time

import pytest

from dashboard.consumer import ResultsConsumer
from dashboard.state import ResultsStore
from dtmon.kafka import KafkaClients
from dtmon.services import free_port
from tests.conftest import start_test_broker
from tests.dashboard.factory import make_batch


def wait_until(store: ResultsStore, predicate, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = store.snapshot()
        if predicate(snap):
            return snap
        time.sleep(0.1)
    snap = store.snapshot()
    raise AssertionError(f"{what} not seen in {timeout} s: broker={snap.broker_reachable} {snap.broker_detail!r}")


@pytest.mark.integration
def test_consumer_retries_replays_history_counts_invalid_and_tracks_broker(broker_kind, tmp_path):
    port = free_port()
    broker = start_test_broker(broker_kind, port, tmp_path / "broker.log")
    store = ResultsStore(history=10)
    consumer = ResultsConsumer(store, broker.address, "results", history=10, retry_s=0.5, health_interval_s=1.0)
    try:
        consumer.start()
        wait_until(store, lambda s: s.broker_reachable and "not found" in s.broker_detail, "missing topic")

        clients = KafkaClients(broker.address)
        clients.ensure_topic("results", 1, timeout=30)
        producer = clients.producer()
        batches = [make_batch(i, seed=i) for i in range(15)]
        for b in batches:
            producer.produce("results", b.message.to_json())
        producer.produce("results", b"not json")
        assert producer.flush(10) == 0

        snap = wait_until(store, lambda s: s.last_batch_id == 14 and s.invalid_messages == 1, "batch 14")
        assert snap.series["batch_id"] == list(range(5, 15))  # only the last `history` kept
        assert snap.series["total_hits"] == [int(b.occupancy.sum()) for b in batches[5:]]
        assert "results/0@15" in snap.last_invalid and "Invalid JSON" in snap.last_invalid
        assert snap.broker_reachable is True

        # A restarted dashboard refills its shift trends from the topic: it replays more messages
        # (replay_messages) than the time series keeps.
        refill = ResultsStore(history=5)
        restarted = ResultsConsumer(refill, broker.address, "results", history=1000, retry_s=0.5)
        try:
            restarted.start()
            snap = wait_until(refill, lambda s: s.last_batch_id == 14, "refilled batch 14")
        finally:
            restarted.stop()
        assert snap.series["batch_id"] == list(range(10, 15))
        assert sum(snap.trend["batches"]) == 15
        assert snap.trend["start_ms"][0] == batches[0].message.batch_started * 1000

        broker.stop()
        wait_until(store, lambda s: s.broker_reachable is False, "broker down")
        broker = start_test_broker(broker_kind, port, tmp_path / "broker2.log")  # empty again (new storage)
        wait_until(store, lambda s: s.broker_reachable is True, "broker back", timeout=120)
        assert consumer._thread.is_alive()
    finally:
        consumer.stop()
        broker.stop()
    assert not consumer._thread.is_alive()


@pytest.mark.integration
def test_results_on_four_partitions_are_shown_in_batch_order(kafka_bootstrap, topic_name, caplog):
    """A results topic the broker auto-created with 4 partitions: the store still ends at the highest batch id."""
    clients = KafkaClients(kafka_bootstrap)
    assert clients.ensure_topic(topic_name, 4, timeout=30) == 4
    with caplog.at_level("WARNING", logger="dtmon.kafka"):
        assert clients.ensure_results_topic(topic_name) == 4
    assert "has 4 partitions, not 1" in caplog.text
    producer = clients.producer()
    batches = [make_batch(i, seed=i, v2=True, run_state="ended" if i == 19 else "running") for i in range(20)]
    for b in batches:  # keyed by batch id as the processor does; partition chosen here to spread them for sure
        producer.produce(topic_name, b.message.to_json(), key=str(b.message.batch_id).encode(),
                         partition=b.message.batch_id % 4)
    assert producer.flush(10) == 0

    store = ResultsStore(history=10)
    consumer = ResultsConsumer(store, kafka_bootstrap, topic_name, history=100, retry_s=0.5)
    try:
        consumer.start()
        snap = wait_until(store, lambda s: s.ingests == 20, "20 batches")
    finally:
        consumer.stop()
    assert snap.series["batch_id"] == list(range(10, 20))
    assert snap.last_batch_id == 19 and snap.last.run_state == "ended"
    assert snap.cumulative.batches == 20


@pytest.mark.integration
def test_dashboard_consumer_creates_a_missing_results_topic_with_one_partition(kafka_bootstrap, topic_name):
    store = ResultsStore(history=10)
    consumer = ResultsConsumer(store, kafka_bootstrap, topic_name, history=10, retry_s=0.5, create_topic=True)
    try:
        consumer.start()
        wait_until(store, lambda s: s.broker_reachable and not s.broker_detail, "the topic found")
    finally:
        consumer.stop()
    meta = KafkaClients(kafka_bootstrap).admin().list_topics(topic_name, timeout=10).topics[topic_name]
    assert meta.error is None and len(meta.partitions) == 1
