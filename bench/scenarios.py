"""The benchmark scenarios. Each starts its own fresh stack and returns table rows.

Every row is a dict with the keys of ``bench.report.COLUMNS`` plus ``details`` (all the
numbers behind it) and ``resources`` (``{process: {"cpu_s", "peak_rss_mb"}}``). Rows/s of
the producer come from its own summary line; rows/s, batch durations and latencies of the
processor from the results messages and its log (``bench.metrics``).
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.inputs import synthetic_dir, upload_to_s3
from bench.metrics import pacing_stats, stream_stats
from bench.soak import rss_slope_mb_per_h
from bench.stack import (
    ResultsReader,
    Stack,
    read_raw_topic,
)
from dtmon.kafka import KafkaClients
from dtmon.services import free_port, wait_for_port
from dtmon.supervisor import console_script

RAW, RESULTS = "minidt-hits", "minidt-results"
ARROW_ROWS_PER_MESSAGE = 10_000
"""The producer's default rows per message (``dtmon.settings.Settings.rows_per_message``)."""


@dataclass
class Options:
    """Sizes and durations of every scenario (the CLI fills them; defaults = quick run)."""

    workdir: Path
    input_dir: Path
    pacing_seconds: float = 10.0
    pacing_rates: list[float] = field(default_factory=lambda: [1_000, 10_000, 100_000])
    sustained_rate: float = 300_000
    sustained_seconds: float = 60.0
    sustained_warmup_s: float = 0.0
    latency_seconds: float = 30.0
    growth_seconds: float = 25.0
    growth_rates: list[float] = field(default_factory=lambda: [10_000, 100_000, 1_000_000])
    growth_partitions: list[int] = field(default_factory=lambda: [1, 2, 4])
    partitions_rate: float = 300_000
    peers_rows: int = 1_000_000
    peers_batch_rows: int = 200_000
    dashboard: bool = False
    up_rows: int = 100_000
    up_genuine: bool = False
    seed: int = 2026
    broker: str = "tansu"
    kafka_source: str = "python"
    driver_java_options: str = ""
    soak_rate: float = 10_000
    soak_seconds: float = 3600.0
    soak_trigger_s: float = 2.0
    soak_retention_s: float = 900.0
    soak_segment_s: float = 300.0
    soak_rss_slope_mb_h: float = 50.0
    log: object = print


def new_row(scenario: str, **values) -> dict:
    """A table row with every column present (None where the scenario has no number)."""
    row = {"scenario": scenario, "input": "SYNTHETIC arrow", "target_rows_s": None, "producer_rows_s": None,
           "processor_rows_s": None, "batch_p50_s": None, "batch_p95_s": None, "latency_p50_s": None,
           "latency_p95_s": None, "floor": "", "floor_met": None, "notes": "", "resources": {}, "details": {}}
    row.update(values)
    return row


def _stack(opts: Options, name: str) -> Stack:
    workdir = opts.workdir / name
    workdir.mkdir(parents=True, exist_ok=True)
    return Stack(workdir, broker_kind=opts.broker, kafka_source=opts.kafka_source, driver_java_options=opts.driver_java_options)


# ------------------------------------------------------------------ producer alone


def producer_max(opts: Options, where: str) -> dict:
    """Producer at ``--rate 0`` over every input file once, from the local directory or moto S3."""
    stack = _stack(opts, f"producer-{where}")
    try:
        stack.start_broker()
        stack.create_topic(RAW)
        source, endpoint = str(opts.input_dir), None
        if where == "s3":
            endpoint = stack.start_s3()
            source = upload_to_s3(endpoint, opts.input_dir)
        producer = stack.producer("producer", source, RAW, 0, endpoint_url=endpoint)
        code = stack.wait(producer, 900)
        wall = producer.ended - producer.started
        summary = stack.producer_summary(producer)
    finally:
        resources = stack.close()
    if summary is None:
        raise RuntimeError(f"producer gave no summary (exit {code}):\n{producer.log_text()[-2000:]}")
    rate = summary["rows_per_s"]
    return new_row(
        f"producer --rate 0, {where}", target_rows_s=0, producer_rows_s=rate,
        floor=">= 1,000,000 rows/s", floor_met=rate >= 1e6 and code == 0,
        notes=f"{summary['rows']:,} rows in {summary['messages']:,} msgs; {summary['rows'] / wall:,.0f} rows/s incl. "
              f"process start-up and first file read ({wall:.1f} s); exit {code}",
        resources=resources, details={"summary": summary, "wall_s": wall, "exit_code": code},
    )


def pacing(opts: Options, rate: float) -> dict:
    """Producer at ``--rate rate --loop --duration N``; the raw topic's message timestamps give the rate."""
    stack = _stack(opts, f"pacing-{rate:g}")
    try:
        stack.start_broker()
        stack.create_topic(RAW)
        producer = stack.producer("producer", str(opts.input_dir), RAW, rate, loop=True, duration=opts.pacing_seconds)
        code = stack.wait(producer, opts.pacing_seconds + 300)
        stamps = read_raw_topic(stack.bootstrap, RAW)
        summary = stack.producer_summary(producer)
    finally:
        resources = stack.close()
    stats = pacing_stats(stamps, rate)
    worst = max((v for v in (stats.worst_dev, stats.worst_dev_sliding) if v is not None), default=1.0)
    met = abs(stats.total_dev) <= 0.02 and worst <= 0.10
    short = opts.pacing_seconds < 60
    return new_row(
        f"pacing --rate {rate:,.0f}", target_rows_s=rate, producer_rows_s=stats.achieved,
        floor="+-2 % over 60 s, every second +-10 %", floor_met=None if short else (met and code == 0),
        notes=f"{opts.pacing_seconds:g} s run{' (floor needs 60 s: --long; tolerances ' + ('held' if met else 'NOT held') + ')' if short else ''}: "
              f"achieved {stats.total_dev:+.2%}, worst 1-s bin {stats.worst_dev:.1%} off "
              f"(min {min(stats.per_second):,} / max {max(stats.per_second):,} rows), worst sliding 1-s window "
              f"{_fmt(stats.worst_dev_sliding, '.1%')} off; rate from the raw messages' Kafka CreateTime",
        resources=resources, details={"pacing": dataclasses.asdict(stats), "summary": summary, "exit_code": code},
    )


# ------------------------------------------------------------------ processor on a live stream


WARMUP_ROWS = 20_000


def warmup_rows_for(rate: float, trigger_s: float) -> int:
    """Rows sent (at full speed) before a live scenario's clock starts: about three
    micro-batches' worth at ``rate`` (20 000 .. 2 000 000), so the JVM's JIT and the
    Python workers are warm as in a processor that has been running for a while."""
    return int(max(WARMUP_ROWS, min(3 * rate * trigger_s, 2_000_000)))
"""Rows sent (and processed) before a live measurement starts, so Spark's first-batch
warm-up (Python workers, imports, JIT: 10-30 s here) is not in the numbers."""


def live(opts: Options, scenario: str, rate: float, trigger_s: float, seconds: float, *, partitions: int = 1,
         wire: str = "arrow", floor: str = "", check=None, paced_warmup_s: float = 0.0) -> dict:
    """Processor (and dashboard when asked) running and warmed up, then the producer at ``rate`` for ``seconds`` s.

    Counted: batches that started while the producer ran (the warm-up batch before is not);
    processor rows/s = their rows / (last one's publish time - producer start). CPU seconds:
    from the producer's start until the processor caught up (or gave up catching up).
    ``check(stats, backlog_s) -> bool`` decides ``floor_met``. ``paced_warmup_s``: after the
    full-speed warm-up, the producer also runs at ``rate`` for this long (not counted), so the
    JIT has compiled the code paths of small micro-batches before the clock starts.
    """
    warmup_rows = warmup_rows_for(rate, trigger_s)
    stack = _stack(opts, scenario.replace(" ", "_").replace("/", "-").replace(",", ""))
    reader = browser = None
    t_plot = None
    cpu_since = cpu_until = None
    try:
        stack.start_broker()
        stack.create_topic(RAW, partitions)
        stack.create_topic(RESULTS)
        reader = ResultsReader(stack.bootstrap, RESULTS)
        processor = stack.processor(RAW, RESULTS, trigger_s)
        t_ready = stack.wait_for_query(processor, 300) - processor.started
        warm = stack.producer("warm-up", str(opts.input_dir), RAW, 0, max_rows=warmup_rows, partitions=partitions)
        stack.wait(warm, 300)
        if not reader.wait_rows(warmup_rows, 300, alive=processor):
            raise RuntimeError(f"processor did not process the warm-up rows:\n{processor.log_text()[-3000:]}")
        if paced_warmup_s:
            paced = int(rate * paced_warmup_s)
            warm = stack.producer("warm-up", str(opts.input_dir), RAW, rate, loop=True, max_rows=paced,
                                  partitions=partitions)  # looped: the input may hold fewer rows
            stack.wait(warm, paced_warmup_s + 300)
            warmup_rows += paced
            if not reader.wait_rows(warmup_rows, 300, alive=processor):
                raise RuntimeError(f"processor did not process the paced warm-up:\n{processor.log_text()[-3000:]}")
        t_warm = time.monotonic() - processor.started
        if opts.dashboard:
            browser = _open_dashboard(stack, opts)
            if browser is not None:
                t_plot = browser.wait_plotted(60)
        cpu_since = stack.sampler.cpu_now()
        producer = stack.producer("producer", str(opts.input_dir), RAW, rate, wire=wire, loop=True,
                                  duration=seconds, partitions=partitions)
        producer_start = time.time()
        code = stack.wait(producer, seconds + 300)
        producer_end = time.time()
        summary = stack.producer_summary(producer) or {"rows": 0, "rows_per_s": None}
        behind_rows = warmup_rows + summary["rows"] - reader.rows()
        caught_up = reader.wait_rows(warmup_rows + summary["rows"], max(60.0, min(120.0, seconds)), alive=processor)
        drain_s = time.time() - producer_end
        cpu_until = stack.sampler.cpu_now()
        rows_in_window = reader.rows() - warmup_rows
    finally:
        if browser is not None:
            browser.close()
        resources = stack.close(cpu_since, cpu_until)
        resources.pop("warm-up", None)
        messages = reader.close() if reader is not None else []
    # RSS slope of every process over the producer's run, MB/h (issue 12 asks for it)
    slopes = {name: rss_slope_mb_per_h(stack.sampler.rss_series(name, producer_start, producer_end))
              for name in resources}
    stats = stream_stats(messages, processor.log_text(), trigger_s, warmup=0, since=producer_start, until=producer_end)
    backlog_s = behind_rows / rate if rate else None
    row = new_row(
        scenario, input=f"SYNTHETIC {wire}", target_rows_s=rate, producer_rows_s=summary["rows_per_s"],
        processor_rows_s=stats.rows_per_s, batch_p50_s=stats.batch_p50, batch_p95_s=stats.batch_p95,
        latency_p50_s=stats.latency_oldest_p50, latency_p95_s=stats.latency_oldest_p95, floor=floor,
        resources=resources,
    )
    window = (producer_end - producer_start) + drain_s
    proc_cpu = resources.get("processor", {}).get("cpu_s")
    cpu_per_mrow = proc_cpu / rows_in_window * 1e6 if proc_cpu and rows_in_window > 0 else None
    row["notes"] = (
        f"trigger {trigger_s:g} s, {partitions} partition(s), {seconds:g} s; {stats.batches} batches counted, "
        f"{stats.over_trigger} longer than the trigger (max {_fmt(stats.batch_max)} s); "
        f"capacity {_fmt(stats.capacity_rows_per_s, ',.0f')} rows/s (rows / batch time); oldest-row latency "
        f"growth {_fmt(stats.lag_growth_s, '+.2f')} s from first to last third; not yet processed when the producer "
        f"stopped: {behind_rows:,} rows ({_fmt(backlog_s, '.1f')} s of input), "
        f"{'caught up' if caught_up else 'NOT caught up'} {drain_s:.0f} s later; CPU s over those {window:.0f} s, "
        f"processor {_fmt(cpu_per_mrow, ',.2f')} CPU s per million rows processed; "
        f"processor start {t_ready:.0f} s, warm-up batch done {t_warm:.0f} s after launch"
        + (f"; dashboard+Chromium running, plotted: {t_plot is not None}" if opts.dashboard else "")
        + "; RSS slope over the run, MB/h: "
        + ", ".join(f"{name} {_fmt(slope, '+,.0f')}" for name, slope in slopes.items())
    )
    if check is not None:
        row["floor_met"] = bool(check(stats, backlog_s)) and code == 0 and stats.synthetic
    row["details"] = {
        "stream": dataclasses.asdict(stats), "summary": summary, "behind_rows_at_producer_stop": behind_rows,
        "caught_up": caught_up, "drain_s": drain_s, "processor_ready_s": t_ready, "warm_s": t_warm,
        "producer_exit": code, "producer_started_epoch": producer_start, "producer_ended_epoch": producer_end,
        "cpu_window_s": window, "processor_cpu_s_per_million_rows": cpu_per_mrow, "rows_in_window": rows_in_window,
        "loadavg_end": os.getloadavg(), "partitions": partitions, "trigger_s": trigger_s, "dashboard": opts.dashboard,
        "rss_slope_mb_h": slopes, "batches": [_batch(m) for m in messages],
    }
    return row


def _batch(m) -> dict:
    return {"batch_id": m.batch_id, "rows": m.rows_read, "batch_started": m.batch_started, "published": m.published,
            "produced_first": m.produced_first, "produced_last": m.produced_last}


def _fmt(value, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def _open_dashboard(stack: Stack, opts: Options):
    """Start the dashboard and a Chromium page on it; the browser tree is sampled as ``browser``."""
    from bench.browser import Browser, playwright_driver_pid

    _child, url = stack.dashboard(RESULTS)
    try:
        browser = Browser(url)
    except Exception as exc:  # noqa: BLE001 - the benchmark runs on without a browser, and says so
        opts.log(f"  no browser on the dashboard: {exc}")
        return None
    pid = playwright_driver_pid()
    if pid:
        stack.sampler.add("browser", pid)
    return browser


def sustained(opts: Options) -> dict:
    """Floor at the run's rate and length: processor rows/s >= 98 % of the input, every batch inside the
    2 s trigger, oldest-row latency flat (< 2 s growth from the first to the last third). Issue 12's floor
    is this at 1 000 000 rows/s for 30 min (``--sustained-rate 1000000 --sustained-seconds 1800``).
    ``opts.sustained_warmup_s``: the producer first runs that long at the rate, not counted (the JIT
    compiles the two-stage paths in the first minute; default 0: the clock starts two batches after
    a cold start)."""
    rate, seconds = opts.sustained_rate, opts.sustained_seconds

    def check(stats, backlog_s):
        return (seconds >= 300 and stats.rows_per_s is not None and stats.rows_per_s >= rate * 0.98
                and stats.over_trigger == 0 and (stats.lag_growth_s or 0) < 2.0)

    row = live(opts, f"processor sustained {rate:,.0f} rows/s", rate, 2.0, seconds,
               floor=f">= 98 % of {rate:,.0f} rows/s for {seconds / 60:g} min, every batch < 2 s, latency flat",
               check=check, paced_warmup_s=opts.sustained_warmup_s)
    if opts.sustained_warmup_s:
        row["notes"] += f"; after {opts.sustained_warmup_s:g} s at the same rate, not counted (--sustained-warmup-s)"
    if seconds < 300:
        row["notes"] += f"; {seconds:g} s run (a floor needs >= 300 s: --long)"
    return row


LATENCY_WARMUP_S = 30.0
"""s the latency scenario's producer runs at 1 000 rows/s before its clock starts: the JIT compiles
the small-batch code paths in the first ~20 s (the processor JVM uses ~1 core then, ~0.5 later)."""


def latency(opts: Options) -> dict:
    """Floor (issue 12): at 1 000 rows/s and a 1 s trigger, p95 of (results published - oldest row produced) <= 1.5 s."""
    return live(opts, "latency 1,000 rows/s, 1 s trigger", 1_000, 1.0, opts.latency_seconds,
                floor="p95 latency <= 1.5 s", paced_warmup_s=LATENCY_WARMUP_S,
                check=lambda stats, _b: stats.latency_oldest_p95 is not None and stats.latency_oldest_p95 <= 1.5)


def growth_rate(opts: Options) -> list[dict]:
    """Throughput and batch duration at each input rate, 2 s trigger."""
    return [live(opts, f"growth rate {rate:,.0f} rows/s", rate, 2.0, opts.growth_seconds) for rate in opts.growth_rates]


def growth_partitions(opts: Options) -> list[dict]:
    """Throughput and batch duration with 1, 2, 4 raw-topic partitions at one input rate."""
    return [
        live(opts, f"growth {n} partition(s) {opts.partitions_rate:,.0f} rows/s", opts.partitions_rate, 2.0,
             opts.growth_seconds, partitions=n)
        for n in opts.growth_partitions
    ]


# ------------------------------------------------------------------ the peers' design, side by side


def drain(opts: Options, wire: str) -> dict:
    """Producer at ``--rate 0 --max-rows N`` with ``wire``, then the processor drains the topic in equal batches.

    Batches are capped at ``peers_batch_rows`` rows (``--max-offsets-per-trigger`` counts
    messages: rows / 10 000 for arrow, rows for csv-line) so both designs process the same
    rows per batch; the first batch (Spark warm-up) is left out.
    """
    rows = opts.peers_rows
    per_message = ARROW_ROWS_PER_MESSAGE if wire == "arrow" else 1
    stack = _stack(opts, f"drain-{wire}")
    reader = None
    try:
        stack.start_broker()
        stack.create_topic(RAW)
        stack.create_topic(RESULTS)
        producer = stack.producer("producer", str(opts.input_dir), RAW, 0, wire=wire, max_rows=rows)
        code = stack.wait(producer, 900)
        summary = stack.producer_summary(producer)
        reader = ResultsReader(stack.bootstrap, RESULTS)
        processor = stack.processor(RAW, RESULTS, 2.0, max_offsets_per_trigger=max(1, opts.peers_batch_rows // per_message))
        done = reader.wait_rows(rows, 600, alive=processor)
    finally:
        resources = stack.close()
        messages = reader.close() if reader is not None else []
    stats = stream_stats(messages, processor.log_text(), 2.0, warmup=1)
    return new_row(
        f"drain {rows:,} rows, {wire}", input=f"SYNTHETIC {wire}", target_rows_s=0,
        producer_rows_s=summary["rows_per_s"] if summary else None, processor_rows_s=stats.capacity_rows_per_s,
        batch_p50_s=stats.batch_p50, batch_p95_s=stats.batch_p95,
        notes=f"{'one CSV line per message (peers)' if wire != 'arrow' else f'{per_message:,} rows per message'}; "
              f"batches of {opts.peers_batch_rows:,} rows, processor rows/s = rows / batch time over "
              f"{stats.batches} steady batches; {'all' if done else 'NOT all'} rows processed; producer exit {code}",
        resources=resources,
        details={"stream": dataclasses.asdict(stats), "summary": summary, "all_processed": done,
                 "batches": [_batch(m) for m in messages]},
    )


def peers(opts: Options) -> list[dict]:
    """The same rows through both designs, and the ratio arrow / csv-line."""
    arrow, csv_line = drain(opts, "arrow"), drain(opts, "csv-line")

    def ratio(key):
        a, c = arrow[key], csv_line[key]
        return a / c if a and c else None

    def cpu_per_mrow(row, name):
        use = row["resources"].get(name, {}).get("cpu_s")
        return use / (opts.peers_rows / 1e6) if use is not None else None

    ratios = new_row(
        "ratio arrow / csv-line", input="same SYNTHETIC rows",
        producer_rows_s=ratio("producer_rows_s"), processor_rows_s=ratio("processor_rows_s"),
        batch_p50_s=(csv_line["batch_p50_s"] / arrow["batch_p50_s"]) if arrow["batch_p50_s"] and csv_line["batch_p50_s"] else None,
        notes="rows/s columns: arrow / csv-line (x faster); batch column: csv-line / arrow batch time for the same rows; "
              "CPU s per million rows: " + ", ".join(
                  f"{n} {_fmt(cpu_per_mrow(arrow, n), '.1f')} vs {_fmt(cpu_per_mrow(csv_line, n), '.1f')}"
                  for n in ("producer", "processor", "broker")),
    )
    ratios["is_ratio"] = True
    return [arrow, csv_line, ratios]


# ------------------------------------------------------------------ dtmon up


def up(opts: Options) -> dict:
    """``dtmon up`` on a small SYNTHETIC directory (or with ``up_genuine`` its embedded default, the genuine
    rows): s until the first results message and until the page plots it. Floor (issue 12): plotted <= 15 s."""
    stack = _stack(opts, "dtmon-up")
    ports = {"broker": free_port(), "s3": free_port(), "dashboard": free_port()}
    cmd = console_script("dtmon") + [
        "up", "--broker-port", str(ports["broker"]), "--s3-port", str(ports["s3"]),
        "--dashboard-port", str(ports["dashboard"]), "--workdir", str(stack.workdir / "up"),
    ]  # fmt: skip
    if opts.up_genuine:
        what = "genuine (dtmon up's default)"
    else:
        cmd += ["--source", str(synthetic_dir(opts.workdir.parent / "input", 1, opts.up_rows, opts.seed))]
        what = f"SYNTHETIC 1 file x {opts.up_rows:,} rows"
    reader = browser = None
    t_result = t_plot = None
    note = ""
    t0 = time.time()
    child = stack.spawn("dtmon-up", cmd)
    try:
        wait_for_port("127.0.0.1", ports["broker"], 120, child.process)
        bootstrap = f"127.0.0.1:{ports['broker']}"
        _wait_topic(bootstrap, RESULTS, 180, child)
        reader = ResultsReader(bootstrap, RESULTS)
        wait_for_port("127.0.0.1", ports["dashboard"], 180, child.process)
        try:
            from bench.browser import Browser

            browser = Browser(f"http://127.0.0.1:{ports['dashboard']}/dashboard")
            plotted = browser.wait_plotted(180)
            t_plot = None if plotted is None else time.time() - t0
        except Exception as exc:  # noqa: BLE001 - measured without the browser then
            note = f"browser failed: {exc}; "
        deadline = time.monotonic() + 180
        while not any(m.rows_read for m, _ in reader.messages) and time.monotonic() < deadline:
            time.sleep(0.1)
        first = next(((m, at) for m, at in reader.messages if m.rows_read), None)
        if first is not None:
            t_result = first[0].published - t0
    finally:
        if browser is not None:
            browser.close()
        if reader is not None:
            reader.close()
        resources = stack.close()
    return new_row(
        "dtmon up -> first plotted batch", input=what, target_rows_s=1000,
        floor="<= 15 s", floor_met=t_plot is not None and t_plot <= 15,
        notes=note + f"first results message published {_fmt(t_result, '.1f')} s after `dtmon up` started; "
              f"dashboard page shows it {_fmt(t_plot, '.1f')} s after start (Chromium via Playwright)",
        resources={"dtmon up (whole stack)": resources.get("dtmon-up", {})},
        details={"first_result_s": t_result, "first_plot_s": t_plot},
    )


def _wait_topic(bootstrap: str, topic: str, timeout_s: float, child) -> None:
    admin = KafkaClients(bootstrap).admin()
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise RuntimeError(f"dtmon up exited:\n{child.log_text()[-3000:]}")
        try:
            if topic in admin.list_topics(timeout=5).topics:
                return
        except Exception as exc:  # noqa: BLE001 - broker still starting: try again
            last = exc
        time.sleep(0.2)
    raise TimeoutError(f"topic {topic} not created after {timeout_s} s (last error: {last})")


def _soak(opts: Options) -> dict:
    from bench.soak import soak

    return soak(opts)


SCENARIOS = {
    "producer": lambda o: [producer_max(o, "local"), producer_max(o, "s3")],
    "pacing": lambda o: [pacing(o, r) for r in o.pacing_rates],
    "sustained": lambda o: [sustained(o)],
    "latency": lambda o: [latency(o)],
    "peers": peers,
    "growth-rate": growth_rate,
    "growth-partitions": growth_partitions,
    "up": lambda o: [up(o)],
    "soak": lambda o: [_soak(o)],
}
"""Scenario groups by name, in the order they run."""
