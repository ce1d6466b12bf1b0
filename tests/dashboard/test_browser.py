"""Browser test: real Tansu broker, `bokeh serve dashboard`, Debian chromium via Playwright.

Starts the dashboard before its results topic exists (the consumer must retry), then
publishes results messages and checks that the page shows them and follows new ones.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from dtmon.services import free_port, stop_process, wait_for_port
from tests.dashboard.factory import Batch, make_batch

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

# Reads the plotted values back from BokehJS (data may be a Map or a plain object).
READ_PAGE = """() => {
  const doc = Bokeh.documents[0];
  const cols = (name) => {
    const d = doc.get_model_by_name(name).data;
    const get = (k) => Array.from(d instanceof Map ? d.get(k) : d[k]);
    const keys = d instanceof Map ? [...d.keys()] : Object.keys(d);
    return Object.fromEntries(keys.map((k) => [k, get(k)]));
  };
  return {
    status: doc.get_model_by_name("status").text,
    synthetic: doc.get_model_by_name("synthetic").visible,
    series: cols("series-source"),
    occupancy: cols("occupancy-source"),
    multiplicity: cols("multiplicity-source"),
  };
}"""

SHOWS_BATCH = """(id) => {
  if (!window.Bokeh || Bokeh.documents.length === 0) return false;
  const status = Bokeh.documents[0].get_model_by_name("status");
  return status !== null && status.text.includes(`last batch <b>${id}</b>`);
}"""


def publish(bootstrap: str, topic: str, values: list[bytes], keys: list[str]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for key, value in zip(keys, values):
        producer.produce(topic, key=key.encode(), value=value)
    assert producer.flush(10) == 0


def publish_batches(bootstrap: str, topic: str, batches: list[Batch]) -> None:
    publish(bootstrap, topic, [b.message.to_json() for b in batches], [str(b.message.batch_id) for b in batches])


def check_page(data: dict, shown: list[Batch]) -> None:
    """The page plots exactly what was published: series of all ``shown``, histograms of the last."""
    assert data["series"]["batch_id"] == [b.message.batch_id for b in shown]
    assert data["series"]["total_hits"] == [int(b.occupancy.sum()) for b in shown]
    for c in range(4):
        assert data["series"][f"hits_ch{c}"] == [int(b.occupancy[c].sum()) for b in shown]
        assert data["occupancy"][f"ch{c}"] == shown[-1].occupancy[c].tolist()
        assert data["multiplicity"][f"ch{c}"] == shown[-1].multiplicity[c].tolist()
    assert data["occupancy"]["left"] == list(range(64))
    assert data["multiplicity"]["left"] == [k - 0.5 for k in range(1, 65)]


@pytest.mark.integration
def test_dashboard_follows_results_topic(kafka_bootstrap, topic_name, tmp_path):
    from playwright.sync_api import sync_playwright

    port = free_port()
    env = dict(os.environ, DTMON_BOOTSTRAP_SERVERS=kafka_bootstrap, DTMON_RESULTS_TOPIC=topic_name,
               DTMON_DASHBOARD_HISTORY="50", DTMON_DASHBOARD_REFRESH_MS="200")
    cmd = [sys.executable, "-m", "bokeh", "serve", "dashboard", "--port", str(port), "--address", "127.0.0.1",
           "--allow-websocket-origin", f"127.0.0.1:{port}"]
    log_path = tmp_path / "bokeh.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        wait_for_port("127.0.0.1", port, 60, server)
        # The topic appears only now: the dashboard's consumer has to retry.
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        admin.create_topics([NewTopic(topic_name, 1, 1)])[topic_name].result(30)
        first = [make_batch(i, seed=10 + i, malformed=i) for i in range(3)]
        publish_batches(kafka_bootstrap, topic_name, first)
        publish(kafka_bootstrap, topic_name, [b'{"schema": "dtmon.results", "batch_id": -1}'], ["bad"])

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1260, "height": 900})
                page.goto(f"http://127.0.0.1:{port}/dashboard", timeout=30_000)
                page.wait_for_function(SHOWS_BATCH, arg=2, timeout=30_000)
                page.locator("canvas").nth(9).wait_for(timeout=30_000)  # 10 plots rendered
                before = page.evaluate(READ_PAGE)
                check_page(before, first)
                assert "invalid messages: 1" in before["status"]
                assert "reachable" in before["status"] and "UNREACHABLE" not in before["status"]
                assert before["synthetic"] is False

                later = [make_batch(i, seed=10 + i, malformed=0, synthetic=i == 5) for i in range(3, 6)]
                publish_batches(kafka_bootstrap, topic_name, later)
                page.wait_for_function(SHOWS_BATCH, arg=5, timeout=30_000)
                after = page.evaluate(READ_PAGE)
                check_page(after, first + later)
                assert after["occupancy"] != before["occupancy"]
                assert after["synthetic"] is True
                assert "malformed rows: 0 in last batch, 3 in last 6 batches" in after["status"]

                page.wait_for_timeout(500)  # let the last redraw paint
                shot = REPO / "artifacts" / "dashboard.png"
                shot.parent.mkdir(exist_ok=True)
                page.screenshot(path=str(shot), full_page=True)
            finally:
                browser.close()
        assert server.poll() is None, log_path.read_text()
    finally:
        stop_process(server)
    assert "Traceback" not in log_path.read_text(), log_path.read_text()
