"""Labelled faults through the real stack: `dtmon synth` fault flags -> `dtmon up --source` (Tansu,
moto S3, producer, Spark processor, Bokeh dashboard) -> results topic -> Chromium.

One stack run: chamber 3 dead, chamber 1's t0 shifted by +40 ns. The results topic must give
chamber 3 "bad" by the rate check (0 Hz), chamber 1 "bad" by the time-box check (t0 ~ 40 ns),
chambers 0 and 2 "good", the detector "bad"; the live page must show the same tiles. A
1280x720 screenshot of the live page goes to artifacts/fault-caught.png (README's picture).
The default model's hot channels sit in chambers 1 and 3, so the healthy chambers 0 and 2 have none.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from dtmon.kafka import KafkaClients
from dtmon.reference import load_reference, read_results
from dtmon.schema import ResultsMessage
from dtmon.services import free_port
from dtmon.supervisor import descendants
from dtmon.supervisor import running as alive
from tests.dtmon.test_cli import DTMON, REPO, kill_tree
from tests.test_stack import CHROMIUM_ARGS, SERIES_ROWS_JS, _check_running, _logs

pytestmark = pytest.mark.integration

JUDGED_TIMEOUT_S = 300  # Spark start (minutes under load) + a window with 1000 tagged hits per chamber
T0_SHIFT_NS = 40.0  # above the 25 ns "bad" threshold of dtmon/checks.toml
FAULTS = ["--dead-chamber", "3", "--t0-shift", f"1:{T0_SHIFT_NS:g}"]
EXPECTED = {0: "good", 1: "bad", 2: "good", 3: "bad"}
SAVED_JS = "() => Bokeh.documents[0].get_model_by_name('view-caption').text.includes('reference saved')"
STEADY_JS = f"() => ({SERIES_ROWS_JS})() >= 10 && !Bokeh.documents[0].get_model_by_name('stale').visible"


def _judged(m: ResultsMessage) -> bool:
    """The window has the statistics to judge every check the faults touch (no null left)."""
    if m.quality is None:
        return False
    checks = {(c.chamber, r.check): r.quality for c in m.quality.chambers for r in c.checks}
    return all(checks.get((c, "time_box")) not in (None, "null") for c in (0, 1, 2)) and \
        checks.get((3, "rate")) not in (None, "null")


def test_synthetic_faults_turn_the_affected_chambers_bad_on_the_live_stack(tmp_path):
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    data = tmp_path / "faulty"
    synth = subprocess.run([*DTMON, "synth", "--out", str(data), "--rows", "150000", *FAULTS],
                           capture_output=True, text=True, timeout=120)
    assert synth.returncode == 0, synth.stdout + synth.stderr
    faults = json.loads((data / "dtmon-synthetic.json").read_text())["params"]["faults"]  # the labels
    assert (faults["dead_chamber"], faults["dead_chamber_from_s"], faults["t0_shift_ns"][1]) == (3, 0.0, T0_SHIFT_NS)

    broker_port, s3_port, dashboard_port = free_port(), free_port(), free_port()
    workdir, out = tmp_path / "up", tmp_path / "up.out"
    url = f"http://127.0.0.1:{dashboard_port}/dashboard"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DTMON_")}
    cmd = [*DTMON, "up", "--source", str(data), "--rate", "5000", "--trigger-interval", "1",
           "--broker-port", str(broker_port), "--s3-port", str(s3_port), "--dashboard-port", str(dashboard_port),
           "--workdir", str(workdir)]  # fmt: skip
    with open(out, "wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    pids: set[int] = set()
    consumer = None
    try:
        deadline = time.monotonic() + JUDGED_TIMEOUT_S
        while "dashboard answering after" not in out.read_text():
            _check_running(proc, out, workdir)
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.2)
        pids = descendants(proc.pid)

        # --- the results topic: first message whose window judges every affected check
        consumer = KafkaClients(f"127.0.0.1:{broker_port}").consumer("fault-test")
        consumer.assign([TopicPartition("minidt-results", 0, OFFSET_BEGINNING)])
        seen, judged = 0, None
        while judged is None:
            _check_running(proc, out, workdir)
            assert time.monotonic() < deadline, f"no judged window in {seen} results messages:\n{_logs(workdir)}"
            polled = consumer.poll(0.5)
            if polled is None or polled.error() is not None:
                continue
            seen += 1
            m = ResultsMessage.from_json(polled.value())
            assert m.synthetic
            judged = m if _judged(m) else None

        consumer.close()
        consumer = None
        q = judged.quality
        chambers = {c.chamber: c for c in q.chambers}
        assert {c: chambers[c].quality for c in chambers} == EXPECTED, [c.reason for c in q.chambers]
        assert q.quality == "bad"
        checks = {c: {r.check: r for r in chambers[c].checks} for c in chambers}
        # chamber 3: no hits at all, so the rate check says 0 Hz and carries the verdict
        assert checks[3]["rate"].quality == "bad" and chambers[3].reason.startswith("rate: rate 0 Hz")
        assert judged.chambers[3].hits == 0
        # chamber 1: the time box moved by the t0 shift; the fit finds it
        assert checks[1]["time_box"].quality == "bad" and chambers[1].reason.startswith("time_box: t0 ")
        fits = {f.chamber: f for f in q.time_box}
        assert fits[1].t0_ns == pytest.approx(T0_SHIFT_NS, abs=5.0)
        assert abs(fits[0].t0_ns) < 5.0 and abs(fits[2].t0_ns) < 5.0
        assert fits[1].v_drift_um_per_ns == pytest.approx(53.8, rel=0.05)  # only t0 moved
        # healthy chambers: every judged check good, nothing flagged
        for c in (0, 2):
            assert {r.quality for r in checks[c].values()} <= {"good", "null"}, chambers[c].reason
            assert checks[c]["rate"].quality == "good" and checks[c]["time_box"].quality == "good"
            assert chambers[c].dead_channels == [] and chambers[c].noisy_channels == []
        assert judged.scintillator is not None and judged.scintillator.channel == 128  # synth's t0 channel

        # --- the live page: the same verdicts on the tiles
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 720})
                page.goto(url)
                for c, quality in EXPECTED.items():
                    page.wait_for_selector(f"[data-tile='chamber-{c}'][data-quality='{quality}']", timeout=60_000)
                page.wait_for_selector("[data-tile='detector'][data-quality='bad']", timeout=10_000)
                tile = page.locator("[data-tile='chamber-3']")
                assert "rate 0 Hz" in tile.get_attribute("title")
                assert "time_box" in page.locator("[data-tile='chamber-1']").get_attribute("title")
                # the picture: once the stream is steady (10 batches plotted, no stale banner) if it gets so
                try:
                    page.wait_for_function(STEADY_JS, timeout=90_000)
                except PlaywrightTimeout:
                    print("fault-caught.png: the stream did not settle within 90 s (busy machine)")
                page.wait_for_timeout(1500)  # let the plots paint
                (REPO / "artifacts").mkdir(exist_ok=True)
                page.screenshot(path=str(REPO / "artifacts" / "fault-caught.png"))

                # "Use as reference" writes the file the processor re-reads (dtmon up: var/reference.json)
                page.get_by_role("button", name="Use as reference").click()
                page.wait_for_function(SAVED_JS, timeout=30_000)
            finally:
                browser.close()

        reference = load_reference(tmp_path / "var" / "reference.json")
        assert reference.synthetic and reference.batches >= 1 and reference.chambers[3].hits == 0
        compared = None
        while compared is None:  # the processor's next windows are compared with it
            _check_running(proc, out, workdir)
            assert time.monotonic() < deadline + 120, f"reference never used:\n{_logs(workdir)}"
            newest = read_results(f"127.0.0.1:{broker_port}", "minidt-results", last_batches=1)
            q = newest[-1].quality if newest else None
            shapes = {} if q is None else {c.chamber: {r.check: r for r in c.checks}["occupancy_shape"] for c in q.chambers}
            if q is not None and q.reference == reference.name and all(shapes[c].quality != "null" for c in (0, 2)):
                compared = newest[-1]
            else:
                time.sleep(1.0)
        for c in (0, 2):  # the same healthy chamber as in the reference: its shape agrees
            assert shapes[c].quality == "good" and "vs reference" in shapes[c].reason, shapes[c]

        pids |= descendants(proc.pid)
        proc.send_signal(signal.SIGINT)
        proc.wait(90)
    finally:
        if consumer is not None:
            consumer.close()
        kill_tree(proc, pids if proc.poll() is None else set())
    assert proc.returncode == 0, out.read_text()
    assert not [p for p in pids if alive(p)]
