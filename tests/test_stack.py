"""`dtmon up` end to end: real Tansu broker, moto S3, producer, Spark processor and Bokeh dashboard
as child processes; results on the results topic; the plots in Debian's chromium; Ctrl-C stops it all.

Timings (s from `dtmon up` to the dashboard answering, to the first results message, to the
first plotted batch) are printed and saved to artifacts/stack-timings.json with the screenshot.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bench.browser import CHROMIUM_ARGS
from dtmon.kafka import KafkaClients
from dtmon.schema import ResultsMessage
from dtmon.services import free_port
from dtmon.supervisor import descendants
from dtmon.supervisor import running as alive
from tests.dtmon.test_cli import DTMON, REPO, kill_tree, port_open

pytestmark = pytest.mark.integration

DASHBOARD_TIMEOUT_S = 120
FIRST_RESULT_TIMEOUT_S = 300  # Spark needs 8-11 s to start on an idle 2-core machine, minutes under load
PLOT_TIMEOUT_S = 60

# Rows of the time series the dashboard has received (Bokeh model names are listed in dashboard/view.py).
SERIES_ROWS_JS = """() => {
  const doc = window.Bokeh && Bokeh.documents && Bokeh.documents[0];
  const source = doc && doc.get_model_by_name('series-source');
  if (!source) return 0;
  const columns = source.data instanceof Map ? [...source.data.values()] : Object.values(source.data);
  return columns.length ? columns[0].length : 0;
}"""


# Sum of the four chambers' drawn counts (columns y0..y3) of a histogram source, -1 before it exists.
HIST_SUM_JS = """(name) => {
  const source = Bokeh.documents[0].get_model_by_name(name);
  if (!source) return -1;
  const data = source.data instanceof Map ? Object.fromEntries(source.data) : source.data;
  let total = 0;
  for (const c of [0, 1, 2, 3]) for (const v of (data['y' + c] || [])) if (v === v) total += v;
  return total;
}"""
SCINT_TEXT_JS = "() => Bokeh.documents[0].get_model_by_name('scintillator').text"


def show_tab(page, title: str) -> None:
    """Click the tab ``title`` and wait until its plots joined the page."""
    from bench.page_timing import TAB_ATTACHED

    page.locator(".bk-tab", has_text=title).first.click()
    page.wait_for_function(TAB_ATTACHED, timeout=60_000)


def _logs(workdir: Path) -> str:
    parts = []
    for log in sorted((workdir / "logs").glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()[-15:]
        parts.append(f"--- {log.name}\n" + "\n".join(lines))
    return "\n".join(parts)


def _check_running(proc: subprocess.Popen, out: Path, workdir: Path) -> None:
    if proc.poll() is not None:
        pytest.fail(f"dtmon up exited with {proc.returncode}:\n{out.read_text()}\n{_logs(workdir)}")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def test_dtmon_up_streams_genuine_rows_to_the_dashboard_and_stops_cleanly(tmp_path):
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition
    from playwright.sync_api import sync_playwright

    broker_port, s3_port, dashboard_port = free_port(), free_port(), free_port()
    workdir = tmp_path / "up"
    out = tmp_path / "up.out"
    url = f"http://127.0.0.1:{dashboard_port}/dashboard"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DTMON_")}  # the defaults, as a newcomer has
    cmd = [*DTMON, "up", "--rate", "1000", "--trigger-interval", "1", "--broker-port", str(broker_port),
           "--s3-port", str(s3_port), "--dashboard-port", str(dashboard_port), "--workdir", str(workdir)]  # fmt: skip

    t0 = time.monotonic()
    with open(out, "wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    pids: set[int] = set()
    consumer = None
    try:
        deadline = t0 + DASHBOARD_TIMEOUT_S
        while "dashboard answering after" not in out.read_text():  # dtmon up's own check of the URL
            _check_running(proc, out, workdir)
            assert time.monotonic() < deadline, f"no dashboard after {DASHBOARD_TIMEOUT_S} s:\n{out.read_text()}"
            time.sleep(0.2)
        t_dashboard = time.monotonic() - t0
        assert _answers(url)
        state = json.loads((workdir / "stack.json").read_text())
        names = [c["name"] for c in state["children"]]
        assert names == ["broker", "processor", "s3", "producer", "dashboard"]  # Spark starts while S3 is seeded
        pids = {c["pid"] for c in state["children"]} | descendants(proc.pid)
        text = out.read_text()
        assert "(genuine, 1 file(s))" in text and url in text

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(url)

                consumer = KafkaClients(f"127.0.0.1:{broker_port}").consumer("stack-test")
                consumer.assign([TopicPartition("minidt-results", 0, OFFSET_BEGINNING)])
                message = None
                deadline = t0 + FIRST_RESULT_TIMEOUT_S
                while message is None:
                    _check_running(proc, out, workdir)
                    assert time.monotonic() < deadline, f"no results message:\n{_logs(workdir)}"
                    polled = consumer.poll(0.5)
                    if polled is not None and polled.error() is None:
                        message = polled
                t_result = time.monotonic() - t0

                results = ResultsMessage.from_json(message.value())
                assert results.hits > 0 and results.rows_read >= results.hits
                assert not results.synthetic
                assert results.hits == sum(results.hits_per_chamber) + results.hits_outside_chambers
                for chamber in results.chambers:
                    assert sum(chamber.occupancy.bin_counts) == chamber.hits

                page.wait_for_function(f"({SERIES_ROWS_JS})() > 0", timeout=PLOT_TIMEOUT_S * 1000)
                t_plotted = time.monotonic() - t0
                page.locator("canvas").first.wait_for(state="visible", timeout=30_000)
                page.wait_for_timeout(1000)  # let the next refresh draw
                (REPO / "artifacts").mkdir(exist_ok=True)
                page.screenshot(path=str(REPO / "artifacts" / "stack.png"), full_page=True)

                # the genuine rows carry the t0 on FPGA 1 ch 138: found in the data, said on the page,
                # and E1 (scintillator-tagged occupancy) and E2 (drift time) are filled
                page.wait_for_function(f"({SCINT_TEXT_JS})().includes('ch 138 (detected')", timeout=PLOT_TIMEOUT_S * 1000)
                scint_text = page.evaluate(SCINT_TEXT_JS)
                assert "lie within" in scint_text, scint_text  # the why: coincidences with chamber hits
                show_tab(page, "Occupancy")
                page.wait_for_function(f"({HIST_SUM_JS})('occupancy_scint-source') > 0", timeout=PLOT_TIMEOUT_S * 1000)
                show_tab(page, "Time box")
                page.wait_for_function(f"({HIST_SUM_JS})('drift_time-source') > 0", timeout=PLOT_TIMEOUT_S * 1000)
                e1, e2 = (page.evaluate(HIST_SUM_JS, n) for n in ("occupancy_scint-source", "drift_time-source"))
                print(f"genuine default: {scint_text!r}; E1 {e1:.0f} tagged hits, E2 {e2:.0f} drift times")
                show_tab(page, "Overview")
                page.set_viewport_size({"width": 1280, "height": 720})
                page.wait_for_timeout(1500)
                page.screenshot(path=str(REPO / "artifacts" / "genuine-summary.png"))
            finally:
                browser.close()

        timings = {"dashboard_answering_s": round(t_dashboard, 1), "first_results_message_s": round(t_result, 1),
                   "first_plotted_batch_s": round(t_plotted, 1)}  # fmt: skip
        print("dtmon up timings:", timings)
        (REPO / "artifacts" / "stack-timings.json").write_text(json.dumps(timings, indent=2) + "\n")

        pids |= descendants(proc.pid)  # Spark's JVM and Python workers included
        t_stop = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(90)
        stop_s = time.monotonic() - t_stop
    finally:
        if consumer is not None:
            consumer.close()
        kill_tree(proc, pids if proc.poll() is None else set())

    text = out.read_text()
    assert proc.returncode == 0, text
    assert "all dtmon children stopped" in text
    processor_log = (workdir / "logs" / "processor.log").read_text()
    assert "processor stopped" in processor_log, processor_log[-3000:]  # query and Spark stopped in order, exit 0
    # Spark's progress report of every micro-batch with input is logged (processor.app.ProgressLog); bench reads it
    published = {int(b) for b in re.findall(r"(?<!micro-)batch (\d+): run ", processor_log)}
    reported = {int(b) for b in re.findall(r"micro-batch (\d+): \d+ messages, \d+ ms", processor_log)}
    assert published and published <= reported, (sorted(published), sorted(reported))
    left = [p for p in pids if alive(p)]
    assert not left, f"still running after dtmon up stopped ({stop_s:.1f} s): {left}"
    assert not any(port_open(p) for p in (broker_port, s3_port, dashboard_port))
    assert not (workdir / "stack.json").exists()


def test_dtmon_up_without_genuine_rows_streams_labelled_synthetic_files(tmp_path):
    from dtmon.services import s3_client

    broker_port, s3_port, dashboard_port = free_port(), free_port(), free_port()
    workdir = tmp_path / "up"
    out = tmp_path / "up.out"
    # an empty source is what a machine without ../shared/data/minidt gets by default
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DTMON_")}, "DTMON_SOURCE": ""}
    cmd = [*DTMON, "up", "--broker-port", str(broker_port), "--s3-port", str(s3_port),
           "--dashboard-port", str(dashboard_port), "--workdir", str(workdir)]  # fmt: skip
    with open(out, "wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    pids: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while not (workdir / "stack.json").exists() or "producer" not in (workdir / "stack.json").read_text():
            _check_running(proc, out, workdir)
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.2)
        pids = descendants(proc.pid)
        text = out.read_text()
        assert "SYNTHETIC DATA" in text and "(SYNTHETIC, 1 file(s))" in text

        client = s3_client(f"http://127.0.0.1:{s3_port}")
        keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket="minidt-stream")["Contents"])
        assert keys == ["data_000000.txt", "dtmon-synthetic.json"]
        assert client.head_object(Bucket="minidt-stream", Key="data_000000.txt")["Metadata"] == {"dtmon-synthetic": "1"}
        manifest = json.loads(client.get_object(Bucket="minidt-stream", Key="dtmon-synthetic.json")["Body"].read())
        generated = (workdir / "synthetic" / "data_000000.txt").read_bytes()
        assert manifest["synthetic"] is True and generated.count(b"\n") == manifest["rows_per_file"] + 1  # + header

        pids |= descendants(proc.pid)
        proc.send_signal(signal.SIGINT)
        proc.wait(90)
    finally:
        kill_tree(proc, pids if proc.poll() is None else set())
    assert proc.returncode == 0, out.read_text()
    assert not [p for p in pids if alive(p)]
    assert not any(port_open(p) for p in (broker_port, s3_port, dashboard_port))


@pytest.mark.parametrize("kafka_source", ["python", "spark"])
def test_dtmon_up_on_an_existing_apache_kafka_cluster(tmp_path, kafka_source):
    """`dtmon up --bootstrap-servers` against a running Apache Kafka (KRaft) broker, with either Kafka
    source (``DTMON_KAFKA_SOURCE``): no embedded broker starts, results arrive on that broker, Ctrl-C
    stops dtmon's children and leaves the cluster running."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    from dtmon.apache_kafka import start_apache_kafka

    broker_port, s3_port, dashboard_port = free_port(), free_port(), free_port()
    kafka = start_apache_kafka(port=free_port(), log=tmp_path / "apache-kafka.log")
    workdir = tmp_path / "up"
    out = tmp_path / "up.out"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DTMON_")}, "DTMON_KAFKA_SOURCE": kafka_source}
    cmd = [*DTMON, "up", "--bootstrap-servers", kafka.address, "--rate", "1000", "--trigger-interval", "1",
           "--broker-port", str(broker_port), "--s3-port", str(s3_port), "--dashboard-port", str(dashboard_port),
           "--workdir", str(workdir)]  # fmt: skip
    proc = None
    pids: set[int] = set()
    consumer = KafkaClients(kafka.address).consumer("stack-test")
    try:
        with open(out, "wb") as sink:
            proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
        consumer.assign([TopicPartition("minidt-results", 0, OFFSET_BEGINNING)])
        message = None
        deadline = time.monotonic() + FIRST_RESULT_TIMEOUT_S
        while message is None:
            _check_running(proc, out, workdir)
            assert time.monotonic() < deadline, f"no results message:\n{_logs(workdir)}"
            polled = consumer.poll(0.5)
            if polled is not None and polled.error() is None:
                message = polled
        results = ResultsMessage.from_json(message.value())
        assert results.hits > 0 and not results.synthetic
        assert results.hits == sum(results.hits_per_chamber) + results.hits_outside_chambers
        state = json.loads((workdir / "stack.json").read_text())
        assert [c["name"] for c in state["children"]] == ["processor", "s3", "producer", "dashboard"]  # no broker
        assert f"Kafka: external, {kafka.address}" in out.read_text()
        assert not port_open(broker_port)
        assert f"Kafka source {kafka_source}" in (workdir / "logs" / "processor.log").read_text()

        pids = {c["pid"] for c in state["children"]} | descendants(proc.pid)
        proc.send_signal(signal.SIGINT)
        proc.wait(90)
    finally:
        consumer.close()
        if proc is not None:
            kill_tree(proc, pids if proc.poll() is None else set())
        cluster_alive = kafka.process.poll() is None
        kafka.stop()
    assert proc.returncode == 0, out.read_text()
    assert "processor stopped" in (workdir / "logs" / "processor.log").read_text()
    assert not [p for p in pids if alive(p)]
    assert cluster_alive  # dtmon up stops only what it started
