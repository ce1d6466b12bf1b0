"""Unit tests of the pure parts of the dashboard view and consumer."""

from __future__ import annotations

from confluent_kafka import OFFSET_BEGINNING

from dashboard.consumer import start_offset
from dashboard.state import ResultsStore
from dashboard.view import histogram_columns, status_html
from tests.dashboard.factory import make_batch


def test_status_line_reports_batch_age_broker_and_bad_input():
    store = ResultsStore(history=10, clock=lambda: 1000.0)
    store.ingest(make_batch(41, seed=1, malformed=2).message)
    store.ingest(make_batch(42, seed=2, malformed=5).message)
    store.record_invalid("partition 0 offset 9: Invalid JSON")
    store.set_broker(False, "1/1 brokers are down")
    text = status_html(store.snapshot(), now=1007.4, bootstrap_servers="127.0.0.1:9", topic="res")
    assert "last batch <b>42</b>" in text
    assert "updated <b>7 s</b> ago" in text
    assert "UNREACHABLE" in text and "1/1 brokers are down" in text
    assert "malformed rows: 5 in last batch, 7 in last 2 batches" in text
    assert "invalid messages: 1" in text and "offset 9: Invalid JSON" in text


def test_status_line_before_any_result():
    text = status_html(ResultsStore(history=10).snapshot(), 0.0, "127.0.0.1:9", "res<x>")
    assert "waiting for results on topic <b>res&lt;x&gt;</b>" in text
    assert "connecting" in text


def test_histogram_columns_are_quad_edges_and_counts():
    b = make_batch(0, seed=3)
    store = ResultsStore(history=10)
    store.ingest(b.message)
    cols = histogram_columns(store.snapshot().multiplicity)
    assert cols["left"] == [k - 0.5 for k in range(1, 65)]
    assert cols["right"] == [k + 0.5 for k in range(1, 65)]
    for c in range(4):
        assert cols[f"ch{c}"] == b.multiplicity[c].tolist()


def test_start_offset_replays_history_before_the_end():
    assert start_offset(0, 500, 300) == 200
    assert start_offset(0, 8, 300) == 0
    assert start_offset(120, 200, 300) == 120
    assert start_offset(-1, -1, 300) == OFFSET_BEGINNING
