"""The producer console script against a real Tansu broker that stops and comes back (or not)."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from dtmon.services import free_port, start_broker

pytestmark = pytest.mark.integration


def producer(address: str, genuine_csv, *args: str, env: dict | None = None) -> subprocess.Popen:
    cmd = ["producer", "--bootstrap-servers", address, "--raw-topic", "loss", "--source", str(genuine_csv),
           "--loop", "--rate", "5000", "--rows-per-message", "1000", "--no-progress", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "400", **(env or {})})


def test_broker_restart_logs_one_line_per_state_change(tmp_path, genuine_csv):
    """Broker down 6 s, back on the same port (empty: in-memory): the producer logs 'unreachable' and
    'reachable again' once each, no per-attempt librdkafka lines, and ends with one error line and a summary
    (the fresh broker cannot take the open transaction) or runs on; never a traceback."""
    port = free_port()
    broker = start_broker(port=port, log=tmp_path / "tansu.log")
    proc = producer(broker.address, genuine_csv, "--duration", "25")
    try:
        time.sleep(6)
        broker.stop()
        time.sleep(6)
        broker = start_broker(port=port, log=tmp_path / "tansu.log")
        out, err = proc.communicate(timeout=90)
    finally:
        proc.kill()
        broker.stop()
    lines = err.splitlines()
    assert sum("unreachable" in line for line in lines) == 1, err
    assert sum("reachable again after" in line for line in lines) <= 1, err  # none when the open transaction fails first
    # librdkafka's per-attempt lines name the failed connect; the one state-change line may quote it as its reason
    per_attempt = [line for line in lines if "Connect to ipv4" in line and "unreachable (" not in line]
    assert not per_attempt and not any("Traceback" in line or "SystemError" in line for line in lines), err
    assert len(lines) <= 12, err
    assert "producer: sent" in out and "rows" in out, out  # the summary, also when it stopped on an error


def test_broker_gone_stops_after_grace_period_with_summary(tmp_path, genuine_csv):
    """Broker gone for good: the producer stops about broker_grace_s after the loss with one line naming
    the setting, prints its summary and exits 1."""
    broker = start_broker(port=free_port(), log=tmp_path / "tansu.log")
    proc = producer(broker.address, genuine_csv, env={"DTMON_BROKER_GRACE_S": "4", "DTMON_EXACTLY_ONCE": "false"})
    try:
        time.sleep(5)
        broker.stop()
        lost = time.monotonic()
        out, err = proc.communicate(timeout=90)
        took = time.monotonic() - lost
    finally:
        proc.kill()
        broker.stop()
    assert proc.returncode == 1, (out, err)
    assert "broker_grace_s" in err and "unreachable for" in err, err
    assert "producer: sent" in out and "undelivered" in out, out
    assert took < 4 + 20, took
    assert len(err.splitlines()) <= 8, err
