"""Dashboard screenshots for the docs, from results messages made by the test factory (not by the
processor): an 8-hour shift (one message a minute) then a live stream every 2 s, in which chamber 1
went dead 20 minutes ago and chamber 2's time-box t0 drifts over the last hour. Real Tansu broker,
real ``bokeh serve dashboard``, Chromium through Playwright.

Usage: ``python -m tests.dashboard.screenshots OUT_DIR "Overview,Trends"`` (env SIZES=1920x1080,1280x720;
STALE=1 also shoots the stale banner on the last size after the stream stops).
"""
import sys, time, threading, os
from pathlib import Path
from dtmon.kafka import KafkaClients
from dtmon.services import free_port, start_broker
from tests.dashboard.factory import make_batch
from tests.dashboard.live import dashboard_server, publish_messages, CHROMIUM, CHROMIUM_ARGS
from playwright.sync_api import sync_playwright
out = Path(sys.argv[1]); out.mkdir(exist_ok=True, parents=True)
broker = start_broker(port=free_port(), log=out / "tansu.log")
NOW = time.time()
RUN_START = NOW - 8 * 3600 - 300

def msg(i, started):
    age = NOW - started
    dead_ch1 = age < 20 * 60
    drift = max(0.0, (3600 - age) / 3600) * 9.0 if age < 3600 else 0.0
    b = make_batch(i, seed=i % 97, quality=("good", "bad" if dead_ch1 else "good", "warning" if drift > 5 else "good", "good"),
                   reasons=("all 7 checks good", "rate 0.0 Hz below the 50 Hz band (chamber dead?)" if dead_ch1 else "all 7 checks good",
                            f"time box t0 {drift + 1.5:.1f} ± 0.4 ns, expected 0 ± 5 ns" if drift > 5 else "all 7 checks good",
                            "all 7 checks good"),
                   dead=((3, 40),), noisy=((2, 7),) if age < 1800 else (),
                   events=(("orbit_jump", "ORBIT_CNT 3389999871 -> 0 (counter reset), partition 0 offset 18211"),) if i % 180 == 0 else (),
                   started=started, run_started=RUN_START, t0_ns=1.5 + drift)
    m = b.message
    if dead_ch1:
        chambers = list(m.chambers)
        dead = {k: h.model_copy(update={"bin_counts": [0] * len(h.bin_counts)})  # a dead chamber: every histogram empty
                for k in ("occupancy", "multiplicity", "occupancy_scint", "drift_time")
                if (h := getattr(chambers[1], k)) is not None}
        chambers[1] = chambers[1].model_copy(update={"hits": 0, **dead})
        m = m.model_copy(update={"chambers": chambers})
    return m

stop = threading.Event()
try:
    KafkaClients(broker.address).ensure_topic("res", 1, timeout=30)
    starts = [NOW - 8 * 3600 + 60 * k for k in range(8 * 60 - 2)] + [NOW - 2 * (60 - k) for k in range(60)]
    msgs = [msg(i, t) for i, t in enumerate(starts)]
    for k in range(0, len(msgs), 100):
        publish_messages(broker.address, "res", msgs[k:k + 100])
    n = len(msgs)
    def feed():
        i = n
        while not stop.is_set():
            publish_messages(broker.address, "res", [msg(i, time.time())])
            i += 1
            stop.wait(2.0)
    threading.Thread(target=feed, daemon=True).start()
    with dashboard_server(broker.address, "res", out / "bokeh.log", DTMON_DASHBOARD_REFRESH_MS="300") as (url, server):
        with sync_playwright() as pw:
            b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            for size in os.environ.get("SIZES", "1280x720,1920x1080").split(","):
                w, h = (int(v) for v in size.split("x"))
                page = b.new_page(viewport={"width": w, "height": h})
                page.goto(url)
                page.wait_for_selector("[data-tile='chamber-1'][data-quality='bad']", timeout=90000)
                page.wait_for_timeout(1500)
                for tab in sys.argv[2].split(","):
                    page.locator(".bk-tab", has_text=tab).first.click()
                    from bench.page_timing import TAB_ATTACHED
                    page.wait_for_function(TAB_ATTACHED, timeout=60000)
                    page.wait_for_timeout(3000)
                    page.screenshot(path=str(out / f"{w}-{tab.replace(' ', '_')}.png"))
                if os.environ.get("STALE") and size == os.environ.get("SIZES", "1280x720,1920x1080").split(",")[-1]:
                    stop.set()
                    page.locator(".bk-tab", has_text="Overview").first.click()
                    page.wait_for_function("Bokeh.documents[0].get_model_by_name('stale').visible", timeout=30000)
                    page.wait_for_timeout(800)
                    page.screenshot(path=str(out / f"{w}-stale.png"))
                page.close()
            b.close()
finally:
    stop.set()
    broker.stop()
