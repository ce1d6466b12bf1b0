"""ConnectionWatch: one log line per connection state change; librdkafka's connection noise rate-limited."""

from __future__ import annotations

import json
import logging
import time

import pytest

from dtmon import kafka as dk
from dtmon.kafka import ConnectionWatch, KafkaClients


class Err:
    def __init__(self, name: str, text: str = "Connect to ipv4#127.0.0.1:1 failed: Connection refused", fatal: bool = False):
        self._name, self._text, self._fatal = name, text, fatal

    def name(self):
        return self._name

    def str(self):
        return self._text

    def fatal(self):
        return self._fatal


def stats(state: str) -> str:
    return json.dumps({"brokers": {"127.0.0.1:1/1": {"state": state}}})


def test_one_line_per_state_change(caplog):
    now = [100.0]
    watch = ConnectionWatch("127.0.0.1:1", clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="dtmon.kafka"):
        watch.on_stats(stats("UP"))
        for _ in range(50):  # every reconnect attempt reports again
            watch.on_error(Err("_TRANSPORT"))
            watch.on_error(Err("_ALL_BROKERS_DOWN", "1/1 brokers are down"))
            watch.on_stats(stats("CONNECT"))
            now[0] += 0.2
        assert watch.state == "lost" and watch.down_for() == pytest.approx(10.0)
        watch.on_stats(stats("UP"))
        watch.on_stats(stats("UP"))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "unreachable" in lines[0] and "Connection refused" in lines[0]
    assert "reachable again after 10.0 s" in lines[1]
    assert watch.state == "up" and watch.outages == 1 and watch.down_for() == 0.0


def test_other_errors_rate_limited(caplog, monkeypatch):
    monkeypatch.setattr(dk, "_last_logged", {})
    monkeypatch.setattr(dk, "_suppressed", {})
    watch = ConnectionWatch("x")
    with caplog.at_level(logging.INFO, logger="dtmon.kafka"):
        for i in range(20):
            watch.on_error(Err("_MSG_TIMED_OUT", f"{i} messages timed out"))
    assert len(caplog.records) == 1 and watch.state == "connecting"


@pytest.mark.integration
def test_broker_down_for_10_s_logs_a_handful_of_lines(caplog):
    """A real librdkafka consumer polling a port where nothing listens, for 10 s: without the watch
    librdkafka prints a FAIL line per reconnect attempt (162 in 10 s measured); with it one line."""
    from dtmon.services import free_port

    address = f"127.0.0.1:{free_port()}"
    consumer = KafkaClients(address).consumer("noise-test")
    with caplog.at_level(logging.DEBUG):
        t0 = time.monotonic()
        while time.monotonic() - t0 < 10:
            consumer.poll(0.5)
    consumer.close()
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("dtmon.kafka")]
    assert 1 <= len(lines) <= 3, lines
    assert any("unreachable" in line for line in lines)
    assert dk.connection_watch(address).state == "lost"
