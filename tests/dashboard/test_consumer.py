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
