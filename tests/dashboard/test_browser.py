"""Browser test: real broker (Tansu and Apache Kafka), `bokeh serve dashboard`, Debian chromium via Playwright.

Starts the dashboard before its results topic exists (the consumer must retry), publishes
version-1, -2 and -3 results messages and checks, by reading the plotted data back from
BokehJS tab by tab (only the visible tab is drawn), that every view (moving window, last
batch, last N, cumulative, Reset, new run) shows exactly what was published; that a chamber
judged bad turns its tile red in the page and that the stale banner appears when messages
stop. Saves one screenshot per tab to artifacts/dashboard-*.png.
"""

from __future__ import annotations

import time

import pytest

from bench.page_timing import TAB_ATTACHED
from dtmon.kafka import KafkaClients
from tests.dashboard.factory import Batch, make_batch
from tests.dashboard.live import CHROMIUM, CHROMIUM_ARGS, REPO, dashboard_server, publish, publish_messages

DIVS = ["status", "run", "flags", "view-caption", "scintillator", "summary", "stale"]
TABS = ["Overview", "Occupancy", "Time box", "Chamber maps", "Channel health", "Trends", "Events"]
TAB_SOURCES = {  # tab -> the sources drawn on it
    "Overview": ["series-source", "rates-source"],
    "Occupancy": ["occupancy-source", "occupancy_scint-source", "multiplicity-source"],
    "Time box": ["drift_time-source"],
    "Chamber maps": [f"map-{c}-source" for c in range(4)],
    "Channel health": ["health-source"],
    "Trends": ["trend-source", "trend-quality-source"],
    "Events": ["events-source"],
}

# Reads the plotted values back from BokehJS (data may be a Map or a plain object).
READ_PAGE = """([sources, divs]) => {
  const doc = Bokeh.documents[0];
  const cols = (name) => {
    const model = doc.get_model_by_name(name);  // null until its tab was first shown
    if (model === null) return {};
    const d = model.data;
    const get = (k) => Array.from(d instanceof Map ? d.get(k) : d[k]);
    const keys = d instanceof Map ? [...d.keys()] : Object.keys(d);
    return Object.fromEntries(keys.map((k) => [k, get(k)]));
  };
  const out = {synthetic: doc.get_model_by_name("synthetic").visible,
               stale_visible: doc.get_model_by_name("stale").visible};
  for (const s of sources) out[s] = cols(s);
  for (const d of divs) out[d] = doc.get_model_by_name(d).text;
  return out;
}"""

DIV_HAS = """([name, text]) => {
  if (!window.Bokeh || Bokeh.documents.length === 0) return false;
  const div = Bokeh.documents[0].get_model_by_name(name);
  return div !== null && div.text.includes(text);
}"""



def publish_batches(bootstrap: str, topic: str, batches: list[Batch]) -> None:
    publish_messages(bootstrap, topic, [b.message for b in batches])


def read(page, sources: list[str] = ()) -> dict:
    return page.evaluate(READ_PAGE, [list(sources), DIVS])


def wait_div(page, name: str, text: str) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(DIV_HAS, arg=[name, text], timeout=20_000)
    except PlaywrightTimeout:
        shown = page.evaluate("(n) => Bokeh.documents[0].get_model_by_name(n).text", name)
        raise AssertionError(f"{name} never showed {text!r}; it shows {shown!r}") from None


def show_tab(page, tab: str) -> None:
    page.locator(".bk-tab", has_text=tab).first.click()


def expect_on_tabs(page, check, tabs: list[str], timeout_s: float = 20.0) -> dict:
    """Show each tab in turn and poll its sources until ``check(data, tab)`` passes (the server
    draws a tab when it becomes visible); the last AssertionError if it never does."""
    data: dict = {}
    for tab in tabs:
        show_tab(page, tab)
        deadline = time.monotonic() + timeout_s
        while True:
            data.update(read(page, TAB_SOURCES[tab]))
            try:
                check(data, tab)
                break
            except (AssertionError, KeyError):  # KeyError: a source never drawn yet has no columns
                if time.monotonic() > deadline:
                    raise
                page.wait_for_timeout(150)
    return data


def histograms_are(summed: list[Batch]):
    """A check: every histogram and map on the page is the element-wise sum of ``summed``."""
    expected = {name: sum(getattr(b, name) for b in summed)
                for name in ("occupancy", "occupancy_scint", "multiplicity", "drift")}
    hits = expected["occupancy"].sum(axis=1)

    def check(data: dict, tab: str) -> None:
        for c in range(4):
            if tab == "Occupancy":
                assert data["occupancy-source"][f"ch{c}"] == expected["occupancy"][c].tolist()
                assert data["occupancy_scint-source"][f"ch{c}"] == expected["occupancy_scint"][c].tolist()
                assert data["multiplicity-source"][f"ch{c}"] == expected["multiplicity"][c].tolist()
            elif tab == "Time box":
                assert data["drift_time-source"][f"ch{c}"] == expected["drift"][c].tolist()
            elif tab == "Chamber maps":
                assert data[f"map-{c}-source"]["hits"] == expected["occupancy"][c].tolist()
        if tab == "Overview":
            assert data["rates-source"]["hits"] == [*hits.tolist(), int(hits.sum())]
            assert data["rates-source"]["rate_hz"][:4] == pytest.approx((hits / (1.5 * len(summed))).tolist())

    return check


def zero(data: dict, tab: str) -> None:
    for c in range(4):
        for name in TAB_SOURCES[tab]:
            if name.endswith("-source") and name != "rates-source" and f"ch{c}" in data[name]:
                assert not any(data[name][f"ch{c}"]), name
    if tab == "Overview":
        assert data["rates-source"]["hits"] == [0] * 5


HIST_TABS = ["Occupancy", "Time box", "Chamber maps", "Overview"]


@pytest.mark.integration
def test_dashboard_follows_results_topic(kafka_bootstrap, topic_name, tmp_path):
    from playwright.sync_api import sync_playwright

    health = {"dead": ((0, 12), (3, 5)), "noisy": ((1, 7),)}
    log_path = tmp_path / "bokeh.log"
    shots = REPO / "artifacts"
    shots.mkdir(exist_ok=True)
    with dashboard_server(kafka_bootstrap, topic_name, log_path, DTMON_DASHBOARD_HISTORY="50",
                          DTMON_DASHBOARD_REFRESH_MS="200") as (url, server):
        # The topic appears only now: the dashboard's consumer has to retry.
        KafkaClients(kafka_bootstrap).ensure_topic(topic_name, 1, timeout=30)
        now = time.time()  # batch times close to now, so the screenshots show a live run
        v1 = make_batch(0, seed=10, malformed=1, started=now - 24)  # a version-1 message (run None) still displays
        run7 = [make_batch(i, seed=10 + i, malformed=i, v2=True, started=now - 24 + 2 * i, run_started=now - 30,
                           **health) for i in range(1, 4)]
        publish_batches(kafka_bootstrap, topic_name, [v1, *run7])
        publish(kafka_bootstrap, topic_name, [b'{"schema": "dtmon.results", "batch_id": -1}'], ["bad"])

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 720})
                page.goto(url, timeout=30_000)
                wait_div(page, "status", "last batch <b>3</b>")
                page.locator("canvas").first.wait_for(timeout=30_000)  # Overview plots rendered
                data = read(page, TAB_SOURCES["Overview"])
                assert data["series-source"]["batch_id"] == [0, 1, 2, 3]
                assert data["series-source"]["total_hits"] == [int(b.occupancy.sum()) for b in [v1, *run7]]
                assert "invalid messages: 1" in data["status"] and "UNREACHABLE" not in data["status"]
                assert "Run <b>7</b>" in data["run"]
                assert "ch0: 1 dead, 0 noisy · ch1: 0 dead, 1 noisy · ch3: 1 dead, 0 noisy" in data["flags"]
                assert "t0 = FPGA 1 ch 138" in data["scintillator"]
                assert "data-quality='null'" in data["summary"] and "no verdict" in data["summary"]  # v2: grey
                assert data["synthetic"] is False
                # default view: the moving window (30 batches) of run 7; the v1 batch is another accumulation
                expect_on_tabs(page, histograms_are(run7), HIST_TABS)
                def flagged(data: dict, tab: str) -> None:
                    assert data["health-source"]["tdc_channel"] == [12, 71, 69]

                expect_on_tabs(page, flagged, ["Channel health"])

                page.get_by_role("button", name="Last batch", exact=True).click()
                wait_div(page, "view-caption", "last micro-batch (batch 3)")
                expect_on_tabs(page, histograms_are(run7[-1:]), HIST_TABS)

                page.get_by_role("button", name="Cumulative", exact=True).click()
                wait_div(page, "view-caption", "cumulative over run 7")
                expect_on_tabs(page, histograms_are(run7), HIST_TABS)

                page.get_by_role("button", name="Last N batches").click()
                spinner = page.locator("input.bk-input").first
                spinner.fill("2")
                spinner.press("Enter")
                wait_div(page, "view-caption", "last 2 micro-batches")
                expect_on_tabs(page, histograms_are(run7[-2:]), HIST_TABS)

                page.get_by_role("button", name="Cumulative", exact=True).click()
                wait_div(page, "view-caption", "cumulative over run 7")
                page.get_by_role("button", name="Reset cumulative (this tab)").click()
                wait_div(page, "view-caption", "since <b>Reset</b> (after batch 3")
                expect_on_tabs(page, zero, HIST_TABS)
                more7 = [make_batch(i, seed=10 + i, v2=True, started=now - 24 + 2 * i, run_started=now - 30,
                                    **health) for i in (4, 5)]
                publish_batches(kafka_bootstrap, topic_name, more7)
                wait_div(page, "status", "last batch <b>5</b>")
                wait_div(page, "view-caption", ": 2 batches")
                expect_on_tabs(page, histograms_are(more7), HIST_TABS)

                run8 = [make_batch(i, seed=10 + i, v2=True, run=8, started=now - 24 + 2 * i, run_started=now - 13,
                                   synthetic=True, **health) for i in range(6, 12)]
                publish_batches(kafka_bootstrap, topic_name, run8)
                wait_div(page, "status", "last batch <b>11</b>")
                wait_div(page, "view-caption", "cumulative over run 8")
                # a new run restarts the cumulative view (and voids the Reset)
                after = expect_on_tabs(page, histograms_are(run8), HIST_TABS)
                assert "Run <b>8</b>" in after["run"]
                assert after["synthetic"] is True
                assert after["series-source"]["batch_id"] == list(range(12))
                assert "malformed rows: 0 in last batch, 7 in last 12 batches" in after["status"]
                first_row = page.locator(".slick-row").first.inner_text()  # the rates table repaints too
                assert f"{int(sum(b.occupancy[0].sum() for b in run8)):,}" in first_row, first_row

                # A live version-3 stream in which chamber 2 is judged bad: its tile turns red.
                live_start = time.time()
                judged = [make_batch(i, seed=10 + i, run=8, started=live_start - 2 * (15 - i), run_started=now - 13,
                                     quality=("good", "good", "bad", "good"),
                                     reasons=("ok", "ok", "rate 0.0 Hz below 50 Hz", "ok"),
                                     events=(("orbit_jump", "ORBIT_CNT 3390000000 -> 12"),) if i == 13 else ())
                          for i in range(12, 16)]
                publish_batches(kafka_bootstrap, topic_name, judged)
                tile = page.locator("[data-tile='chamber-2']")
                page.wait_for_selector("[data-tile='chamber-2'][data-quality='bad']", timeout=20_000)
                assert tile.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(214, 39, 40)"
                assert "rate 0.0 Hz below 50 Hz" in tile.inner_text()
                assert "rate 0.0 Hz below 50 Hz" in tile.get_attribute("title")
                for good in ("detector", "chamber-0", "chamber-1", "chamber-3"):
                    expected = "bad" if good == "detector" else "good"
                    assert page.locator(f"[data-tile='{good}']").get_attribute("data-quality") == expected
                fresh = read(page)
                assert fresh["stale_visible"] is False and "running" in fresh["run"], fresh["run"]
                page.screenshot(path=str(shots / "dashboard-bad-chamber.png"))

                # No message for 3 trigger intervals (6 s): the stale banner shows, the run is not "running".
                page.wait_for_function("Bokeh.documents[0].get_model_by_name('stale').visible", timeout=20_000)
                stale = read(page)
                # either wording of a stale verdict: nothing arrived lately, or what arrived is old
                assert ("no results for" in stale["stale"] or "newest results are" in stale["stale"]) and "stale" in stale["run"]
                assert "data-quality='bad'" in stale["summary"]  # the last verdict stays, dimmed
                assert page.locator("[data-tile='chamber-2']").evaluate("e => getComputedStyle(e).opacity") != "1"
                def one_orbit_jump(data: dict, tab: str) -> None:
                    assert data["events-source"]["kind"] == ["orbit_jump"]
                    assert "3390000000" in data["events-source"]["detail"][0]

                expect_on_tabs(page, one_orbit_jump, ["Events"])

                for tab in TABS:
                    show_tab(page, tab)
                    page.wait_for_function(TAB_ATTACHED, timeout=20_000)
                    page.wait_for_timeout(700)  # let the tab lay out and paint
                    assert not page.get_by_text("loading…").is_visible(), f"{tab} not rendered"
                    name = tab.lower().replace(" ", "-")
                    page.screenshot(path=str(shots / f"dashboard-{name}.png"))
                    widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
                    assert widths[0] <= widths[1], f"{tab}: sideways scroll at 1280 px {widths}"
            finally:
                browser.close()
        assert server.poll() is None, log_path.read_text()
    assert "Traceback" not in log_path.read_text(), log_path.read_text()
    assert all((shots / f"dashboard-{t.lower().replace(' ', '-')}.png").stat().st_size > 0 for t in TABS)
