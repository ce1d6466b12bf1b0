"""The long-shift soak: ``dtmon up`` at the detector's rate with two Chromium pages, for an hour or more.

What a shift needs and this scenario measures (input is SYNTHETIC):

* every micro-batch inside its trigger interval for the whole run (processor log / results);
* the resident memory of every process tree (broker, S3, producer, processor, dashboard,
  Chromium) sampled every ``SAMPLE_S`` s and reported as a least-squares slope in MB/h over
  the second half of the run (the first half includes warm-up: JIT, caches, the dashboard's
  history filling up), beside the slope over the whole run;
* the raw topic's size over time: (low, high) watermarks, and on Apache Kafka the bytes of
  the partition directories, so that the retention of ``Settings.raw_topic_config`` is seen
  deleting old segments (Tansu 0.6 applies no retention: its rows only grow).

The broker is started by the benchmark (``--broker tansu|apache``) and ``dtmon up
--bootstrap-servers`` runs everything else, as an operator with an existing cluster would.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from bench.inputs import synthetic_dir
from bench.metrics import stream_stats
from bench.procstats import tree_by_kind_mb
from bench.stack import ResultsReader, Stack, child_env
from dtmon.services import free_port, wait_for_port
from dtmon.supervisor import console_script

RAW, RESULTS = "minidt-hits", "minidt-results"
SAMPLE_S = 30.0
"""Seconds between two samples of RSS and of the raw topic's size."""
PAGES = 2
"""Chromium pages open on the dashboard (a shifter's two tabs)."""


def rss_slope_mb_per_h(series: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (time s, RSS MB) samples, in MB/h; None with fewer than 3 samples.

    ``series``: [(t_s, rss_mb), ...] in any order, shape (n, 2).
    """
    if len(series) < 3:
        return None
    t, mb = np.array(series, dtype=float).T
    if np.ptp(t) <= 0:
        return None
    return float(np.polyfit(t / 3600.0, mb, 1)[0])


def second_half(series: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The samples of ``series`` from the middle of its time span on."""
    if not series:
        return []
    middle = (series[0][0] + series[-1][0]) / 2
    return [s for s in series if s[0] >= middle]


def tree_rss_mb(pid: int) -> float | None:
    """Sum of VmRSS over ``pid`` and its descendants, in MB (10⁶ bytes); None if ``pid`` is gone."""
    from bench.procstats import read_process, tree
    from dtmon.supervisor import process_parents

    parents = process_parents()
    if pid not in parents:
        return None
    procs = [p for p in (read_process(q) for q in tree(pid, parents)) if p is not None]
    return sum(p.rss for p in procs) / 1e6 if procs else None


def dir_bytes(path: Path) -> int:
    """Bytes of the files below ``path`` (0 if it does not exist)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def raw_topic_bytes(stack: Stack) -> int | None:
    """Bytes of the raw topic's partition directories on an Apache Kafka broker; None on Tansu."""
    for service in stack.services:
        data_dir = getattr(service, "data_dir", None)
        if data_dir is not None:
            return sum(dir_bytes(p) for p in (Path(data_dir) / "data").glob(f"{RAW}-*"))
    return None


def watermarks(bootstrap: str) -> tuple[int, int] | None:
    """(low, high) of the raw topic's partition 0 as ListOffsets answers (Tansu: high = last batch start)."""
    from confluent_kafka import TopicPartition

    from dtmon.kafka import KafkaClients

    consumer = KafkaClients(bootstrap).consumer("bench-soak-watermarks")
    try:
        return consumer.get_watermark_offsets(TopicPartition(RAW, 0), timeout=10, cached=False)
    except Exception:  # noqa: BLE001 - a missed sample is shown as a gap
        return None
    finally:
        consumer.close()


def soak(opts) -> dict:
    """Floor (reliability issue, long shifts): ``dtmon up`` at ``opts.soak_rate`` rows/s with two pages for
    ``opts.soak_seconds``: every batch inside the trigger, no process's RSS growing in the second half
    (slope ≤ ``opts.soak_rss_slope_mb_h``), the raw topic bounded where the broker applies retention."""
    from bench.browser import Browser, playwright_driver_pid
    from bench.scenarios import _fmt, _stack, new_row

    rate, seconds, trigger_s = opts.soak_rate, opts.soak_seconds, opts.soak_trigger_s
    source = synthetic_dir(opts.workdir.parent / "input", 2, 1_310_720, opts.seed)
    stack = _stack(opts, f"soak-{opts.broker}")
    up_dir = stack.workdir / "up"
    state_file = up_dir / "stack.json"
    samples_file = stack.workdir / "soak-samples.jsonl"
    dashboard_port = free_port()
    rss: dict[str, list[tuple[float, float]]] = {}
    browser_mb: dict[str, list[tuple[float, float]]] = {}
    processor_mb: dict[str, list[tuple[float, float]]] = {}  # the processor tree per executable: java, python
    topic: list[dict] = []
    pids: dict[str, int] = {}
    restarts: dict[str, int] = {}
    reader = browser = None
    pages_live: list[bool] = []
    try:
        stack.start_broker()
        bootstrap = stack.bootstrap
        env = {"DTMON_RAW_RETENTION_S": f"{opts.soak_retention_s:g}", "DTMON_RAW_SEGMENT_S": f"{opts.soak_segment_s:g}",
               "DTMON_KAFKA_SOURCE": opts.kafka_source}
        cmd = console_script("dtmon") + [
            "up", "--source", str(source), "--bootstrap-servers", bootstrap, "--rate", f"{rate:g}",
            "--trigger-interval-s", f"{trigger_s:g}", "--dashboard-port", str(dashboard_port),
            "--workdir", str(up_dir),
        ]  # fmt: skip
        up = stack.spawn("dtmon-up", cmd, child_env(**env))
        wait_for_port("127.0.0.1", dashboard_port, 300, up.process)
        reader = ResultsReader(bootstrap, RESULTS)
        url = f"http://127.0.0.1:{dashboard_port}/dashboard"
        browser = Browser(url)
        pages = [browser.page]
        for _ in range(PAGES - 1):
            page = browser._browser.new_page(viewport={"width": 1260, "height": 900})
            page.goto(url, timeout=60_000)
            pages.append(page)
        if browser.wait_plotted(300) is None:
            raise RuntimeError(f"the dashboard plotted nothing within 300 s:\n{up.log_text()[-3000:]}")
        driver = playwright_driver_pid()
        cdp = [page.context.new_cdp_session(page) for page in pages]
        t0 = time.time()
        opts.log(f"  soak: {rate:,.0f} rows/s, trigger {trigger_s:g} s, {PAGES} pages, {seconds:g} s from now; samples: {samples_file}")
        next_report = time.monotonic() + 600
        while time.time() - t0 < seconds:
            if up.process.poll() is not None:
                raise RuntimeError(f"dtmon up exited ({up.process.returncode}):\n{up.log_text()[-3000:]}")
            now = time.time() - t0
            try:
                children = json.loads(state_file.read_text())["children"]
            except (OSError, ValueError, KeyError):
                children = []
            for c in children:
                pids[c["name"]] = c["pid"]
                restarts[c["name"]] = c.get("restarts", 0)
            trees = {name: pid for name, pid in pids.items() if name != "broker"}
            trees["broker"] = stack.children[0].process.pid
            if driver:
                trees["chromium"] = driver
            for name, pid in trees.items():
                mb = tree_rss_mb(pid)
                if mb is not None:
                    rss.setdefault(name, []).append((now, mb))
            if "processor" in trees:  # the driver JVM or its Python workers
                for kind, mb in tree_by_kind_mb(trees["processor"]).items():
                    processor_mb.setdefault(kind, []).append((now, mb))
            if driver:  # which browser process grows (its own heap or shared memory), and the pages' JS heaps and DOMs
                for kind, mb in tree_by_kind_mb(driver).items():
                    browser_mb.setdefault(kind, []).append((now, mb))
                for i, session in enumerate(cdp):
                    heap, dom = session.send("Runtime.getHeapUsage"), session.send("Memory.getDOMCounters")
                    browser_mb.setdefault(f"page {i} JS heap used", []).append((now, heap["usedSize"] / 1e6))
                    browser_mb.setdefault(f"page {i} DOM nodes (k)", []).append((now, dom["nodes"] / 1e3))
            with samples_file.open("a") as out:  # readable while the soak runs
                out.write(json.dumps({"t_s": now, "rss_mb": {n: v[-1][1] for n, v in rss.items()},
                                      "browser": {n: v[-1][1] for n, v in browser_mb.items()},
                                      "processor": {n: v[-1][1] for n, v in processor_mb.items()}}) + "\n")
            marks = watermarks(bootstrap)
            topic.append({"t_s": now, "low": marks[0] if marks else None, "high": marks[1] if marks else None,
                          "bytes": raw_topic_bytes(stack)})
            if time.monotonic() >= next_report:
                next_report += 600
                opts.log(f"  soak {now / 60:.0f} min: {len(reader.messages)} results messages; raw topic {topic[-1]}")
            time.sleep(SAMPLE_S)
        t_end = time.time()
        for page in pages:  # each page still follows the stream: its status line names a recent batch
            text = page.evaluate("() => Bokeh.documents[0].get_model_by_name('status').text")
            pages_live.append("last batch <b>" in text)
    finally:
        if browser is not None:
            browser.close()
        messages = reader.close() if reader is not None else []
        resources = stack.close()
    processor_log = up_dir / "logs" / "processor.log"
    log_text = processor_log.read_text(errors="replace") if processor_log.is_file() else ""
    stats = stream_stats(messages, log_text, trigger_s, warmup=2, since=t0, until=t_end)
    slopes = {name: {"whole_mb_h": rss_slope_mb_per_h(s), "second_half_mb_h": rss_slope_mb_per_h(second_half(s)),
                     "first_mb": s[0][1], "last_mb": s[-1][1], "peak_mb": max(v for _, v in s)}
              for name, s in rss.items() if s}  # fmt: skip
    def kind_slopes(series: dict[str, list[tuple[float, float]]]) -> dict[str, dict]:
        return {k: {"whole": rss_slope_mb_per_h(v), "second_half": rss_slope_mb_per_h(second_half(v))}
                for k, v in series.items()}  # fmt: skip

    browser_slopes, processor_slopes = kind_slopes(browser_mb), kind_slopes(processor_mb)
    growing = {n: v["second_half_mb_h"] for n, v in slopes.items()
               if v["second_half_mb_h"] is not None and v["second_half_mb_h"] > opts.soak_rss_slope_mb_h}
    sizes = [s["bytes"] for s in topic if s["bytes"] is not None]
    lows = [s["low"] for s in topic if s["low"] is not None]
    deleted = bool(lows) and lows[-1] > 0
    bounded = deleted if opts.broker == "apache" else None
    slope_text = ", ".join(f"{n} {_fmt(v['second_half_mb_h'], '+.0f')} ({_fmt(v['whole_mb_h'], '+.0f')})"
                           for n, v in sorted(slopes.items()))
    row = new_row(
        f"soak: dtmon up {rate:,.0f} rows/s, {PAGES} pages, {seconds / 60:.0f} min ({opts.broker})",
        target_rows_s=rate, processor_rows_s=stats.rows_per_s, batch_p50_s=stats.batch_p50, batch_p95_s=stats.batch_p95,
        latency_p50_s=stats.latency_oldest_p50, latency_p95_s=stats.latency_oldest_p95,
        floor=f"every batch < trigger; RSS slope (2nd half) <= {opts.soak_rss_slope_mb_h:g} MB/h; raw topic bounded",
        floor_met=(stats.over_trigger == 0 and stats.batches > 0 and not growing and all(pages_live) and len(pages_live) == PAGES
                   and bounded is not False and stats.synthetic),
        resources=resources,
    )  # fmt: skip
    row["notes"] = (
        f"trigger {trigger_s:g} s; {stats.batches} batches, {stats.over_trigger} longer than the trigger "
        f"(max {_fmt(stats.batch_max)} s); oldest-row latency growth {_fmt(stats.lag_growth_s, '+.2f')} s; "
        f"RSS slope MB/h second half (whole run): {slope_text}; pages following the stream at the end: "
        f"{sum(pages_live)}/{PAGES}; Chromium by process kind and page, slope per h second half: "
        + ", ".join(f"{k} {_fmt(v['second_half'], '+.1f')}" for k, v in sorted(browser_slopes.items()))
        + "; processor by executable, slope per h second half: "
        + ", ".join(f"{k} {_fmt(v['second_half'], '+.1f')}" for k, v in sorted(processor_slopes.items()))
        + f"; restarts: {restarts}; raw topic: low watermark {lows[-1] if lows else 'n/a'} "
        f"(retention {opts.soak_retention_s:g} s, segments {opts.soak_segment_s:g} s), "
        + (f"size first/max/last {sizes[0] / 1e6:.0f}/{max(sizes) / 1e6:.0f}/{sizes[-1] / 1e6:.0f} MB" if sizes
           else "size not visible (Tansu keeps every row in memory: see the broker's RSS)")
    )
    row["details"] = {"stream": stats.__dict__, "rss_series_mb": rss, "rss_slopes": slopes, "raw_topic": topic,
                      "browser_series": browser_mb,
                      "browser_slopes_per_h": browser_slopes,
                      "processor_series": processor_mb, "processor_slopes_per_h": processor_slopes,
                      "restarts": restarts, "pages_live": pages_live, "since_epoch": t0, "until_epoch": t_end}
    return row
