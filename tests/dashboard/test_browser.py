"""Browser test: real broker (Tansu and Apache Kafka), `bokeh serve dashboard`, Debian chromium via Playwright.

Starts the dashboard before its results topic exists (the consumer must retry), publishes
version-1 and version-2 results messages and checks, by reading the plotted data back from
BokehJS, that every view (last batch, last N, cumulative, Reset, new run) shows exactly what
was published. Saves one screenshot per tab to artifacts/dashboard-*.png.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from dtmon.services import free_port, stop_process, wait_for_port
from tests.dashboard.factory import Batch, make_batch

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SOURCES = ["series-source", "occupancy-source", "occupancy_scint-source", "multiplicity-source", "drift_time-source",
           "rates-source", "health-source", *(f"map-{c}-source" for c in range(4))]
DIVS = ["status", "run", "health", "view-caption", "scintillator"]
TABS = ["Overview", "Occupancy", "Time box", "Chamber maps", "Channel health"]

# Reads the plotted values back from BokehJS (data may be a Map or a plain object).
READ_PAGE = """([sources, divs]) => {
  const doc = Bokeh.documents[0];
  const cols = (name) => {
    const d = doc.get_model_by_name(name).data;
    const get = (k) => Array.from(d instanceof Map ? d.get(k) : d[k]);
    const keys = d instanceof Map ? [...d.keys()] : Object.keys(d);
    return Object.fromEntries(keys.map((k) => [k, get(k)]));
  };
  const out = {synthetic: doc.get_model_by_name("synthetic").visible};
  for (const s of sources) out[s] = cols(s);
  for (const d of divs) out[d] = doc.get_model_by_name(d).text;
  return out;
}"""

DIV_HAS = """([name, text]) => {
  if (!window.Bokeh || Bokeh.documents.length === 0) return false;
  const div = Bokeh.documents[0].get_model_by_name(name);
  return div !== null && div.text.includes(text);
}"""


def publish(bootstrap: str, topic: str, values: list[bytes], keys: list[str]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for key, value in zip(keys, values):
        producer.produce(topic, key=key.encode(), value=value)
    assert producer.flush(10) == 0


def publish_batches(bootstrap: str, topic: str, batches: list[Batch]) -> None:
    publish(bootstrap, topic, [b.message.to_json() for b in batches], [str(b.message.batch_id) for b in batches])


def read(page) -> dict:
    return page.evaluate(READ_PAGE, [SOURCES, DIVS])


def wait_div(page, name: str, text: str) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(DIV_HAS, arg=[name, text], timeout=20_000)
    except PlaywrightTimeout:
        shown = page.evaluate("(n) => Bokeh.documents[0].get_model_by_name(n).text", name)
        raise AssertionError(f"{name} never showed {text!r}; it shows {shown!r}") from None


def check_histograms(data: dict, summed: list[Batch]) -> None:
    """Every histogram and map on the page is the element-wise sum of ``summed`` (independent numpy sums)."""
    expected = {name: sum(getattr(b, name) for b in summed)
                for name in ("occupancy", "occupancy_scint", "multiplicity", "drift")}
    for c in range(4):
        assert data["occupancy-source"][f"ch{c}"] == expected["occupancy"][c].tolist()
        assert data["occupancy_scint-source"][f"ch{c}"] == expected["occupancy_scint"][c].tolist()
        assert data["multiplicity-source"][f"ch{c}"] == expected["multiplicity"][c].tolist()
        assert data["drift_time-source"][f"ch{c}"] == expected["drift"][c].tolist()
        assert data[f"map-{c}-source"]["hits"] == expected["occupancy"][c].tolist()
    hits = expected["occupancy"].sum(axis=1)
    assert data["rates-source"]["hits"] == [*hits.tolist(), int(hits.sum())]
    assert data["rates-source"]["detector_hz"][:4] == pytest.approx((hits / (1.5 * len(summed))).tolist())


def check_zero(data: dict) -> None:
    for c in range(4):
        for name in ("occupancy-source", "occupancy_scint-source", "multiplicity-source", "drift_time-source"):
            assert not any(data[name][f"ch{c}"]), name
    assert data["rates-source"]["hits"] == [0] * 5


@pytest.mark.integration
def test_dashboard_follows_results_topic(kafka_bootstrap, topic_name, tmp_path):
    from playwright.sync_api import sync_playwright

    port = free_port()
    env = dict(os.environ, DTMON_BOOTSTRAP_SERVERS=kafka_bootstrap, DTMON_RESULTS_TOPIC=topic_name,
               DTMON_DASHBOARD_HISTORY="50", DTMON_DASHBOARD_REFRESH_MS="200")
    cmd = [sys.executable, "-m", "bokeh", "serve", "dashboard", "--port", str(port), "--address", "127.0.0.1",
           "--allow-websocket-origin", f"127.0.0.1:{port}"]
    log_path = tmp_path / "bokeh.log"
    health = {"dead": ((0, 12), (3, 5)), "noisy": ((1, 7),)}
    with open(log_path, "wb") as log:
        server = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        wait_for_port("127.0.0.1", port, 60, server)
        # The topic appears only now: the dashboard's consumer has to retry.
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        admin.create_topics([NewTopic(topic_name, 1, 1)])[topic_name].result(30)
        now = time.time()  # batch times close to now, so the screenshots show a live run
        v1 = make_batch(0, seed=10, malformed=1, started=now - 24)  # a version-1 message (run None) still displays
        run7 = [make_batch(i, seed=10 + i, malformed=i, v2=True, started=now - 24 + 2 * i, run_started=now - 30,
                           **health) for i in range(1, 4)]
        publish_batches(kafka_bootstrap, topic_name, [v1, *run7])
        publish(kafka_bootstrap, topic_name, [b'{"schema": "dtmon.results", "batch_id": -1}'], ["bad"])

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(f"http://127.0.0.1:{port}/dashboard", timeout=30_000)
                wait_div(page, "status", "last batch <b>3</b>")
                page.locator("canvas").first.wait_for(timeout=30_000)  # Overview plots rendered
                data = read(page)
                assert data["series-source"]["batch_id"] == [0, 1, 2, 3]
                assert data["series-source"]["total_hits"] == [int(b.occupancy.sum()) for b in [v1, *run7]]
                check_histograms(data, run7[-1:])  # default view: the last micro-batch
                assert "invalid messages: 1" in data["status"] and "UNREACHABLE" not in data["status"]
                assert "Run <b>7</b>" in data["run"] and "running" in data["run"]
                assert "Dead: ch0/12, ch3/5" in data["health"] and "Noisy: ch1/7" in data["health"]
                assert data["health-source"]["tdc_channel"] == [12, 69, 71]
                assert "t0 = FPGA 1 ch 138" in data["scintillator"]
                assert data["synthetic"] is False

                page.get_by_role("button", name="Cumulative", exact=True).click()
                wait_div(page, "view-caption", "cumulative over run 7")
                check_histograms(read(page), run7)  # the v1 batch (no run) is another accumulation

                page.get_by_role("button", name="Last N batches").click()
                spinner = page.locator("input.bk-input").first
                spinner.fill("2")
                spinner.press("Enter")
                wait_div(page, "view-caption", "last 2 micro-batches")
                check_histograms(read(page), run7[-2:])

                page.get_by_role("button", name="Cumulative", exact=True).click()
                wait_div(page, "view-caption", "cumulative over run 7")
                page.get_by_role("button", name="Reset cumulative (this tab)").click()
                wait_div(page, "view-caption", "since <b>Reset</b> (after batch 3")
                check_zero(read(page))
                more7 = [make_batch(i, seed=10 + i, v2=True, started=now - 24 + 2 * i, run_started=now - 30,
                                    **health) for i in (4, 5)]
                publish_batches(kafka_bootstrap, topic_name, more7)
                wait_div(page, "status", "last batch <b>5</b>")
                wait_div(page, "view-caption", ": 2 batches")
                check_histograms(read(page), more7)

                run8 = [make_batch(i, seed=10 + i, v2=True, run=8, started=now - 24 + 2 * i, run_started=now - 13,
                                   synthetic=True, **health) for i in range(6, 12)]
                publish_batches(kafka_bootstrap, topic_name, run8)
                wait_div(page, "status", "last batch <b>11</b>")
                wait_div(page, "view-caption", "cumulative over run 8")
                after = read(page)
                check_histograms(after, run8)  # a new run restarts the cumulative view (and voids the Reset)
                assert "Run <b>8</b>" in after["run"]
                assert after["synthetic"] is True
                assert after["series-source"]["batch_id"] == list(range(12))
                assert "malformed rows: 0 in last batch, 7 in last 12 batches" in after["status"]

                first_row = page.locator(".slick-row").first.inner_text()  # the rates table repaints too
                assert f"{int(sum(b.occupancy[0].sum() for b in run8)):,}" in first_row, first_row

                shots = REPO / "artifacts"
                shots.mkdir(exist_ok=True)
                for tab in TABS:
                    page.locator(".bk-tab", has_text=tab).click()
                    page.wait_for_timeout(700)  # let the tab lay out and paint
                    name = tab.lower().replace(" ", "-")
                    page.screenshot(path=str(shots / f"dashboard-{name}.png"), full_page=True)
            finally:
                browser.close()
        assert server.poll() is None, log_path.read_text()
    finally:
        stop_process(server)
    assert "Traceback" not in log_path.read_text(), log_path.read_text()
    assert all((shots / f"dashboard-{t.lower().replace(' ', '-')}.png").stat().st_size > 0 for t in TABS)
