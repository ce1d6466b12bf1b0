"""Dashboard page timing in real Chromium: main-thread blocking per live update and time to data.

Starts a Tansu broker, fills the results topic with ``--prefill`` version-3 results messages
(as a processor at a 2 s trigger interval would have written over the last minutes), serves
``bokeh serve dashboard`` from ``--repo`` and opens the page in Debian Chromium (Playwright).
Then publishes one message every ``--interval`` s, ``--updates`` times, per tab listed.

Measured in the page with the Long Tasks API (``PerformanceObserver`` type ``longtask``: any
main-thread task longer than 50 ms, W3C Long Tasks API):

* ``data_shown_ms`` — from navigation start (``performance.timeOrigin``) until the status line
  names a batch and a plot canvas exists, and the page is idle again (the end of the last long
  task that started before that moment);
* ``load_longest_ms`` — the longest long task up to then;
* ``tab_shown_ms`` — from a click on a tab until its plots are built and a new plot canvas is
  on the page (the server builds a tab's plots on its first showing);
* ``update_block_ms`` — per live update, the summed duration of the long tasks that started
  within ``--interval`` s after the message was published (0 when no task exceeded 50 ms);
  reported as max and median over the updates, per tab.

Wall-clock long tasks grow with the machine's load (other processes take the CPU from the
renderer). So the page is also traced (Chromium tracing, ``toplevel`` tasks of the renderer's
main thread with their thread CPU time ``tdur``): ``update_cpu_ms`` is the main thread's CPU
time per update window and ``update_longest_task_cpu_ms`` the CPU time of its longest task —
figures that do not depend on the load. The 1-minute load average is recorded with each run.

Run from the repository root: ``python -m bench.page_timing [--repo DIR] [--json out.json]``.
Targets (issue 10): update_block_ms <= 100, data_shown_ms <= 3000.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from dtmon.kafka import KafkaClients

from dtmon.schema import (
    MULTIPLICITY_EDGES,
    OCCUPANCY_EDGES,
    ChamberHistograms,
    ChamberQuality,
    CheckResult,
    Histogram,
    QualityReport,
    QualityWindow,
    ResultsMessage,
    Scintillator,
    TimeBoxFit,
)
from bench.browser import CHROMIUM, CHROMIUM_ARGS
from dtmon.services import free_port, start_broker, stop_process, wait_for_port

DRIFT_EDGES = [float(e) for e in np.arange(-200.0, 600.0 + 5.0, 5.0)]  # the processor's default bins, 160

OBSERVE_LONG_TASKS = """
window.__longtasks = [];
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) window.__longtasks.push([e.startTime, e.duration]);
}).observe({type: "longtask", buffered: true});
"""

DATA_SHOWN = """() => {
  if (!window.Bokeh || Bokeh.documents.length === 0) return false;
  const status = Bokeh.documents[0].get_model_by_name("status");
  if (status === null || !status.text.includes("last batch <b>")) return false;
  return document.querySelector(".bk-Column, .bk-Tabs") !== null;
}"""


TAB_ATTACHED = """() => {
  const tabs = Bokeh.documents[0].get_model_by_name("tabs");
  const child = tabs.tabs[tabs.active].child.children[0];
  return !(typeof child.text === "string" && child.text.startsWith("loading"));
}"""
"""True once the active tab holds its plots (the dashboard attaches a tab's plots on first showing)."""


def results_message(batch_id: int, started: float, rng: np.random.Generator) -> ResultsMessage:
    """A version-3 results message of realistic size (processor default bins) with random counts."""
    occupancy = rng.poisson(20.0, size=(4, 64))
    multiplicity = rng.poisson(2.0, size=(4, 64)) * (np.arange(1, 65) <= 4)  # k <= 4: sum of k x orbits <= hits
    centres = (np.array(DRIFT_EDGES[:-1]) + np.array(DRIFT_EDGES[1:])) / 2
    drift = rng.poisson(np.where((centres > 0) & (centres < 390), 6.0, 0.3), size=(4, len(centres)))
    chambers = [ChamberHistograms(
        chamber=c, hits=int(occupancy[c].sum()),
        occupancy=Histogram(bin_edges=OCCUPANCY_EDGES, bin_counts=occupancy[c].tolist()),
        multiplicity=Histogram(bin_edges=MULTIPLICITY_EDGES, bin_counts=multiplicity[c].tolist()),
        occupancy_scint=Histogram(bin_edges=OCCUPANCY_EDGES, bin_counts=(occupancy[c] // 2).tolist()),
        drift_time=Histogram(bin_edges=DRIFT_EDGES, bin_counts=drift[c].tolist()),
    ) for c in range(4)]
    check = CheckResult(check="rate", quality="good", reason="rate 640 Hz within 100-5000 Hz",
                        values={"rate_hz": 640.0})
    quality = QualityReport(
        quality="good", reason="all checks good", window=QualityWindow(batches=30, hits=20000, detector_time_s=45.0),
        chambers=[ChamberQuality(chamber=c, quality="good", reason="all checks good", checks=[check])
                  for c in range(4)],
        time_box=[TimeBoxFit(chamber=c, tagged_hits=2000, t0_ns=1.0, t0_err_ns=0.5, t_max_ns=391.0,
                             t_max_err_ns=0.8, v_drift_um_per_ns=53.8, v_drift_err_um_per_ns=0.2)
                  for c in range(4)])
    hits = int(occupancy.sum())
    return ResultsMessage(
        batch_id=batch_id, trigger_interval_s=2.0, batch_started=started, published=started + 0.3,
        rows_read=hits + 100, malformed_rows=0, hits=hits, hits_outside_chambers=50, orbits_with_hits=900,
        chambers=chambers, detector_time_s=1.5, scintillator=Scintillator(fpga=1, channel=138, source="detected",
                                                                          reason="bench"),
        orbits_with_scintillator=300, run=1, run_state="running", run_started=started - 600.0 - 2.0 * batch_id,
        quality=quality)


def publish(producer, topic: str, messages: list[ResultsMessage]) -> None:
    for m in messages:
        producer.produce(topic, key=str(m.batch_id).encode(), value=m.to_json())
    if producer.flush(30) != 0:
        raise RuntimeError("results messages not delivered")


def main_thread_cpu(trace: dict, marks: list[str], window_ms: float) -> list[tuple[float, float, float]]:
    """Per mark (``performance.mark`` names, in order): (main-thread CPU ms, longest task CPU ms,
    longest task wall ms) of the renderer tasks that started within ``window_ms`` after it."""
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    at = {e["name"]: e for e in events if e.get("name") in marks and e.get("ph") in ("R", "I", "n", "b")}
    out = []
    for name in marks:
        mark = at.get(name)
        if mark is None:
            out.append((float("nan"),) * 3)
            continue
        start, end = mark["ts"], mark["ts"] + window_ms * 1000
        tasks = [e for e in events if e.get("ph") == "X" and e.get("name") in ("RunTask", "ThreadControllerImpl::RunTask")
                 and e.get("pid") == mark["pid"] and e.get("tid") == mark["tid"] and start <= e["ts"] < end]
        cpu = [e.get("tdur", e.get("dur", 0)) / 1000 for e in tasks]
        wall = [e.get("dur", 0) / 1000 for e in tasks]
        out.append((sum(cpu), max(cpu, default=0.0), max(wall, default=0.0)))
    return out


def load_cpu(trace: dict, mark_name: str) -> dict:
    """Main-thread CPU of the page load: ``load_cpu_ms`` (all renderer main-thread tasks up to the
    mark) and ``load_longest_task_cpu_ms``."""
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    mark = next((e for e in events if e.get("name") == mark_name), None)
    if mark is None:
        return {}
    cpu = [e.get("tdur", e.get("dur", 0)) / 1000 for e in events
           if e.get("ph") == "X" and e.get("name") in ("RunTask", "ThreadControllerImpl::RunTask")
           and e.get("pid") == mark["pid"] and e.get("tid") == mark["tid"] and e["ts"] <= mark["ts"]]
    return {"load_cpu_ms": round(sum(cpu), 1), "load_longest_task_cpu_ms": round(max(cpu, default=0.0), 1)}


def measure(repo: Path, prefill: int, updates: int, interval: float, tabs: list[str], viewport: tuple[int, int],
            workdir: Path) -> dict:
    """Run the whole measurement once; returns the figures (milliseconds)."""
    from playwright.sync_api import sync_playwright

    broker = start_broker(port=free_port(), log=workdir / "tansu.log")
    topic = "bench-results"
    server = None
    try:
        clients = KafkaClients(broker.address)
        clients.ensure_topic(topic, 1, timeout=30)
        producer = clients.producer(acks="all")
        rng = np.random.default_rng(1)
        now = time.time()
        batch = 0
        history = [results_message(i, now - 2.0 * (prefill - i), rng) for i in range(prefill)]
        publish(producer, topic, history)
        batch = prefill
        port = free_port()
        env = dict(os.environ, PYTHONPATH=str(repo), DTMON_BOOTSTRAP_SERVERS=broker.address,
                   DTMON_RESULTS_TOPIC=topic)
        with open(workdir / "bokeh.log", "wb") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "bokeh", "serve", "dashboard", "--port", str(port), "--address", "127.0.0.1",
                 "--allow-websocket-origin", f"127.0.0.1:{port}"],
                cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_port("127.0.0.1", port, 60, server)
        time.sleep(3.0)  # let the server's consumer replay the prefill before the page opens
        out: dict = {"repo": str(repo), "prefill": prefill, "viewport": list(viewport), "tabs": {},
                     "loadavg_1min_at_load": round(os.getloadavg()[0], 2)}
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
                page.add_init_script(OBSERVE_LONG_TASKS)
                browser.start_tracing(page=page, categories=["toplevel", "blink.user_timing",
                                                             "disabled-by-default-devtools.timeline"])
                page.goto(f"http://127.0.0.1:{port}/dashboard", timeout=60_000)
                page.wait_for_function(DATA_SHOWN, timeout=60_000, polling=20)
                shown = page.evaluate("performance.now()")
                page.wait_for_timeout(1500)
                page.evaluate("performance.mark('dtmon-loaded')")
                trace = json.loads(browser.stop_tracing())
                out.update(load_cpu(trace, "dtmon-loaded"))
                tasks = page.evaluate("window.__longtasks")
                during = [(s, d) for s, d in tasks if s <= shown]
                out["data_shown_ms"] = round(max([shown, *(s + d for s, d in during)]), 1)
                out["load_longest_ms"] = round(max((d for _, d in during), default=0.0), 1)
                out["load_long_tasks_ms"] = round(sum(d for _, d in during), 1)
                for tab in tabs:
                    canvases = page.locator("canvas").count()
                    clicked = page.evaluate("performance.now()")
                    page.locator(".bk-tab", has_text=tab).first.click()
                    page.wait_for_function(TAB_ATTACHED, timeout=60_000, polling=20)
                    deadline = time.monotonic() + 60
                    while tab != tabs[0] and page.locator("canvas").count() <= canvases and time.monotonic() < deadline:
                        page.wait_for_timeout(20)  # the tab's first plot canvas is on the page
                    tab_shown = page.evaluate("performance.now()") - clicked
                    page.wait_for_timeout(int(interval * 1000))
                    blocks, marks = [], []
                    browser.start_tracing(page=page, categories=["toplevel", "blink.user_timing",
                                                                 "disabled-by-default-devtools.timeline"])
                    for k in range(updates):
                        marks.append(f"dtmon-update-{tab}-{k}")
                        mark = page.evaluate("(n) => { performance.mark(n); return performance.now(); }", marks[-1])
                        publish(producer, topic, [results_message(batch, time.time(), rng)])
                        batch += 1
                        page.wait_for_timeout(int(interval * 1000))
                        tasks = page.evaluate("window.__longtasks")
                        blocks.append(sum(d for s, d in tasks if mark <= s < mark + interval * 1000))
                    cpu = main_thread_cpu(json.loads(browser.stop_tracing()), marks, interval * 1000)
                    out["tabs"][tab] = {"update_block_max_ms": round(max(blocks), 1),
                                        "update_block_median_ms": round(statistics.median(blocks), 1),
                                        "update_cpu_median_ms": round(statistics.median(c[0] for c in cpu), 1),
                                        "update_longest_task_cpu_median_ms": round(statistics.median(c[1] for c in cpu), 1),
                                        "update_longest_task_cpu_max_ms": round(max(c[1] for c in cpu), 1),
                                        "tab_shown_ms": round(tab_shown, 1),
                                        "updates": len(blocks), "loadavg_1min": round(os.getloadavg()[0], 2)}
            finally:
                browser.close()
        return out
    finally:
        if server is not None:
            stop_process(server)
        broker.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1],
                        help="checkout whose dashboard/ is served (default: this one)")
    parser.add_argument("--prefill", type=int, default=300, help="results messages on the topic before the page opens")
    parser.add_argument("--updates", type=int, default=10, help="live updates measured per tab")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between live updates (trigger interval)")
    parser.add_argument("--tabs", default="Overview,Occupancy,Time box,Trends", help="comma-separated tab titles to measure")
    parser.add_argument("--viewport", default="1280x720", help="browser window WxH in px")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.viewport.split("x"))
    with tempfile.TemporaryDirectory(prefix="dtmon-page-timing-") as tmp:
        result = measure(args.repo.resolve(), args.prefill, args.updates, args.interval,
                         [t.strip() for t in args.tabs.split(",") if t.strip()], (width, height), Path(tmp))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
