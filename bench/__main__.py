"""``python -m bench``: the benchmarks on this machine, every stage for real.

Starts, per scenario, a fresh broker (Tansu, or Apache Kafka with ``--broker apache``) (and moto S3 server where needed) and the
``producer`` / ``processor`` / ``bokeh serve dashboard`` / ``dtmon up`` console scripts as
child processes, streams SYNTHETIC DAQ files from ``dtmon.synth`` through them, and prints
ONE Markdown table (plus a numbered note per row). Every number also goes to
``artifacts/bench-<timestamp>.json``. Default durations make a quick run (~15 min on 2
cores); ``--long`` runs the floors' full durations (60 s pacing, 5 min sustained).

Examples::

    python -m bench                         # every scenario, quick
    python -m bench --only producer,pacing  # some scenario groups
    python -m bench --only sustained --long --dashboard
    python -m bench --only sustained --broker apache --kafka-source spark
"""

from __future__ import annotations

import shlex
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from bench.inputs import synthetic_dir, total_rows
from bench.report import markdown_table, notes, write_json
from bench.scenarios import SCENARIOS, Options, new_row

app = typer.Typer(add_completion=False, help=__doc__, pretty_exceptions_enable=False)
console = Console(stderr=True, highlight=False)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


@app.command()
def main(
    only: Annotated[str, typer.Option(help=f"comma-separated scenario groups: {', '.join(SCENARIOS)} (soak only when named)")] = ",".join(g for g in SCENARIOS if g != "soak"),
    long: Annotated[bool, typer.Option("--long", help="the floors' durations: pacing 60 s, sustained 300 s, latency 60 s")] = False,
    dashboard: Annotated[bool, typer.Option("--dashboard", help="also run the dashboard and a Chromium page in live scenarios")] = False,
    files: Annotated[int, typer.Option(help="SYNTHETIC input files")] = 4,
    rows_per_file: Annotated[int, typer.Option(help="rows per SYNTHETIC file (a genuine file has ~1.31 M)")] = 1_310_720,
    seed: Annotated[int, typer.Option(help="generator seed")] = 2026,
    pacing_seconds: Annotated[float | None, typer.Option(help="s per pacing run [10; --long 60]")] = None,
    pacing_rates: Annotated[str, typer.Option(help="pacing targets, rows/s")] = "1000,10000,100000",
    sustained_rate: Annotated[float, typer.Option(help="producer rate of the sustained run, rows/s")] = 300_000,
    sustained_seconds: Annotated[float | None, typer.Option(help="s of the sustained run [60; --long 300]")] = None,
    sustained_warmup_s: Annotated[float, typer.Option(help="s the sustained run's producer runs at its rate before "
                                                      "the clock starts (not counted)")] = 0.0,
    latency_seconds: Annotated[float | None, typer.Option(help="s of the latency run [30; --long 60]")] = None,
    growth_seconds: Annotated[float, typer.Option(help="s per growth run")] = 25.0,
    growth_rates: Annotated[str, typer.Option(help="input rates of the growth runs, rows/s")] = "10000,100000,1000000",
    partitions: Annotated[str, typer.Option(help="raw-topic partitions of the growth runs")] = "1,2,4",
    partitions_rate: Annotated[float, typer.Option(help="input rate of the partition growth runs, rows/s")] = 300_000,
    peers_rows: Annotated[int, typer.Option(help="rows through each design in the side-by-side run")] = 1_000_000,
    peers_batch_rows: Annotated[int, typer.Option(help="rows per micro-batch in the side-by-side run")] = 200_000,
    up_rows: Annotated[int, typer.Option(help="rows of the SYNTHETIC file `dtmon up` streams")] = 100_000,
    up_genuine: Annotated[bool, typer.Option("--up-genuine", help="`dtmon up` on its embedded default (the genuine rows) instead")] = False,
    soak_rate: Annotated[float, typer.Option(help="rows/s of the soak (`dtmon up`, two pages)")] = 10_000,
    soak_seconds: Annotated[float, typer.Option(help="s of the soak (the floor: 3600)")] = 3600.0,
    soak_retention_s: Annotated[float, typer.Option(help="raw-topic retention during the soak, s")] = 900.0,
    soak_segment_s: Annotated[float, typer.Option(help="raw-topic segment roll during the soak, s")] = 300.0,
    broker: Annotated[str, typer.Option(help="Kafka broker of every scenario: tansu | apache (Apache Kafka, jars via Maven)")] = "tansu",
    kafka_source: Annotated[str, typer.Option(help="the processor's Kafka source: python | spark (Spark's connector)")] = "python",
    driver_java_options: Annotated[str, typer.Option(help="the processor's --spark-driver-java-options, e.g. -XX:TieredStopAtLevel=1")] = "",
    workdir: Annotated[Path, typer.Option(help="logs, checkpoints, cached input")] = Path("var/bench"),
    out: Annotated[Path, typer.Option(help="directory for bench-*.json")] = Path("artifacts"),
) -> None:
    """Run the benchmark scenarios and print one table (input is SYNTHETIC)."""
    started = time.time()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # so every scenario's `finally` stops its children
        signal.signal(sig, _interrupt)
    if broker not in ("tansu", "apache") or kafka_source not in ("python", "spark"):
        console.print("[red]--broker is tansu or apache, --kafka-source is python or spark[/]")
        raise typer.Exit(2)
    groups = [g.strip() for g in only.split(",") if g.strip()]
    unknown = [g for g in groups if g not in SCENARIOS]
    if unknown:
        console.print(f"[red]unknown scenario group(s): {', '.join(unknown)}[/] (choose from {', '.join(SCENARIOS)})")
        raise typer.Exit(2)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = (workdir / f"run-{stamp}").resolve()
    console.print(f"[bold]SYNTHETIC input[/]: {files} file(s) x {rows_per_file:,} rows from dtmon.synth (seed {seed})")
    input_dir = synthetic_dir(workdir.resolve() / "input", files, rows_per_file, seed)
    opts = Options(
        workdir=run_dir, input_dir=input_dir,
        pacing_seconds=pacing_seconds or (60.0 if long else 10.0), pacing_rates=_floats(pacing_rates),
        sustained_rate=sustained_rate, sustained_seconds=sustained_seconds or (300.0 if long else 60.0),
        sustained_warmup_s=sustained_warmup_s,
        latency_seconds=latency_seconds or (60.0 if long else 30.0), growth_seconds=growth_seconds,
        growth_rates=_floats(growth_rates), growth_partitions=[int(v) for v in _floats(partitions)],
        partitions_rate=partitions_rate, peers_rows=peers_rows, peers_batch_rows=peers_batch_rows,
        dashboard=dashboard, up_rows=up_rows, up_genuine=up_genuine, seed=seed, broker=broker, kafka_source=kafka_source, driver_java_options=driver_java_options, log=console.print,
        soak_rate=soak_rate, soak_seconds=soak_seconds, soak_retention_s=soak_retention_s, soak_segment_s=soak_segment_s,
    )
    rows: list[dict] = []
    json_path = out / f"bench-{stamp}.json"
    command = "python -m bench " + shlex.join(sys.argv[1:])
    options = {k: str(v) for k, v in vars(opts).items() if k != "log"} | {"input_rows": total_rows(input_dir)}
    for group in groups:
        console.print(f"[bold]== {group}[/] (logs in {run_dir})")
        t0 = time.monotonic()
        try:
            new = SCENARIOS[group](opts)
        except KeyboardInterrupt:
            console.print("[red]interrupted[/]: children stopped; partial results are in the JSON")
            write_json(json_path, rows, command, started, options)
            raise typer.Exit(130) from None
        except Exception as exc:  # noqa: BLE001 - one failed scenario must not hide the others' numbers
            console.print(f"[red]{group} failed:[/] {exc}")
            traceback.print_exc()
            new = [new_row(group, error=f"{type(exc).__name__}: {exc}")]
        rows += new
        for r in new:
            console.print(f"  {r['scenario']}: {r.get('notes') or r.get('error')}")
        console.print(f"  ({time.monotonic() - t0:.0f} s)")
        write_json(json_path, rows, command, started, options)  # partial results survive an interrupted run
    print(f"\nBenchmark on this machine, SYNTHETIC input ({total_rows(input_dir):,} rows from dtmon.synth). {command}\n")
    print(markdown_table(rows))
    print("\nNotes (CPU s and peak RSS are per process tree: prod = producer, proc = processor JVM + Python "
          "workers, brk = Kafka broker; latency = results `published` - `produced_first`, i.e. the batch's "
          "oldest row):")
    print(notes(rows))
    print(f"\nJSON: {json_path}")


if __name__ == "__main__":
    app()
