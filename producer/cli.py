"""``producer`` console script: stream DAQ rows from files or S3 to the raw Kafka topic.

Defaults come from ``dtmon.settings`` (environment variables ``DTMON_*``); flags win.
Ctrl-C or SIGTERM stops cleanly: the run in progress gets its run-end marker, queued
messages are flushed, a summary is printed and the exit code is 0 (1 if messages were
lost or the source/broker failed; a second Ctrl-C aborts at once).

Runs: every data message carries its run number (header ``dtmon-run``) and each run is
framed by run-start / run-end control messages on every partition. Without ``--run``
each DAQ file is its own run, numbered from its name (``data_000003.txt`` -> 3) or from
a run directory (all files under ``Run000810/`` or ``run_810/`` -> one run 810);
consecutive files with the same number are one run, so one looped file stays one run.
With ``--run N`` one pass over the whole source is run N, and with ``--loop`` the
replays are runs N+1, N+2, ... (rules: ``producer.runs``).

Restarts: the producer continues after the last row of its source found in the raw
topic (``producer.position``), also after ``kill -9``: every row once, one run-start and
one run-end per run. ``--from-start`` starts again at the first file.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from enum import Enum
from pathlib import Path

from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.logging import RichHandler
from rich.table import Table

from dtmon.cliopts import alias_option, setting_option, settings_from, version_option
from producer.kafka import KafkaSetupError, TransactionError
from producer.run import ProducerStats, run_producer
from producer.runs import MAX_RUN
from producer.sources import SourceError

app = typer.Typer(add_completion=False, help=__doc__)


class Wire(str, Enum):
    """Raw-topic wire format (see producer.run)."""

    arrow = "arrow"
    csv_line = "csv-line"


class Compression(str, Enum):
    """Arrow IPC body compression."""

    zstd = "zstd"
    lz4 = "lz4"
    none = "none"


def render(stats: ProducerStats) -> Table:
    """Live progress table: rows sent, achieved rate vs target, malformed rows, delivery errors."""
    table = Table(show_header=False, box=None, padding=(0, 2))
    target = "max" if stats.target_rate == 0 else f"{stats.target_rate:,.0f}"
    table.add_row("rows sent", f"{stats.rows:,}")
    table.add_row("rate (rows/s)", f"{stats.achieved_rate:,.0f} achieved / {target} target")
    table.add_row("messages", f"{stats.messages:,} ({stats.bytes / 1e6:,.1f} MB)")
    table.add_row("files / pass", f"{stats.files:,} / {stats.passes:,}")
    table.add_row("run", "-" if stats.run is None else f"{stats.run} ({stats.runs:,} begun)")
    table.add_row("malformed rows", f"{stats.malformed_rows:,}")
    table.add_row("delivery errors", f"{stats.delivery_errors:,}")
    table.add_row("elapsed (s)", f"{stats.elapsed_s:,.1f}")
    return table


def _install_stop_handlers(stop: threading.Event) -> None:
    """SIGINT/SIGTERM set ``stop``; a second SIGINT raises KeyboardInterrupt (hard stop)."""

    def handler(signum, frame):
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


@app.command()
def main(
    source: Annotated[Optional[str], setting_option("source")] = None,
    s3_endpoint_url: Annotated[Optional[str], setting_option("s3_endpoint_url")] = None,
    rate: Annotated[Optional[float], setting_option("rate", min=0)] = None,
    loop: Annotated[bool, typer.Option("--loop/--no-loop", help="replay the files forever")] = False,
    bootstrap_servers: Annotated[Optional[str], setting_option("bootstrap_servers")] = None,
    kafka_config_file: Annotated[Optional[str], setting_option("kafka_config_file")] = None,
    raw_topic: Annotated[Optional[str], setting_option("raw_topic")] = None,
    rows_per_message: Annotated[Optional[int], setting_option("rows_per_message", min=1)] = None,
    compression: Annotated[Optional[Compression], setting_option("compression")] = None,
    wire: Annotated[Wire, typer.Option(help="arrow: many rows per message; csv-line: one CSV line per message")] = Wire.arrow,
    raw_partitions: Annotated[Optional[int], setting_option("raw_partitions", min=1)] = None,
    broker_grace_s: Annotated[Optional[float], setting_option("broker_grace_s")] = None,
    max_rows: Annotated[Optional[int], typer.Option(min=0, help="stop after this many rows")] = None,
    duration: Annotated[Optional[float], typer.Option(min=0, help="stop after this many seconds")] = None,
    run: Annotated[
        Optional[int],
        typer.Option(
            min=0,
            max=MAX_RUN,
            help="run number of the whole source (each --loop replay: the next number); default: each file is a "
            "run numbered from its name (data_000003.txt -> 3) or its Run000810/run_810 directory",
        ),
    ] = None,
    from_start: Annotated[
        bool,
        typer.Option(
            "--from-start", help="start at the first file even if the raw topic shows where a previous producer of this source stopped"
        ),
    ] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="live progress display on stderr")] = True,
    log_level: Annotated[str, typer.Option(help="logging level")] = "INFO",
    stats_json: Annotated[
        Optional[Path], typer.Option(help="write the final statistics to this file as JSON (for tools)")
    ] = None,
    s3_endpoint_url_alias: Annotated[Optional[str], alias_option("--endpoint-url")] = None,
    raw_topic_alias: Annotated[Optional[str], alias_option("--topic")] = None,
    raw_partitions_alias: Annotated[Optional[int], alias_option("--partitions")] = None,
    kafka_config_file_alias: Annotated[Optional[str], alias_option("--kafka-config")] = None,
    version: Annotated[Optional[bool], version_option()] = None,
) -> None:
    """Stream DAQ rows (HEAD,FPGA,TDC_CHANNEL,ORBIT_CNT,BX_COUNTER,TDC_MEAS) to the raw Kafka topic."""
    console = Console(stderr=True)
    logging.basicConfig(level=log_level.upper(), format="%(message)s", handlers=[RichHandler(console=console, show_path=False)])
    settings = settings_from(locals(), console)

    stop = threading.Event()
    _install_stop_handlers(stop)
    try:
        live = Live(render(ProducerStats(target_rate=settings.rate)), console=console, refresh_per_second=4)
        with live if progress else contextlib.nullcontext():
            show = (lambda s: live.update(render(s))) if progress else None
            stats = run_producer(
                settings,
                loop=loop,
                max_rows=max_rows,
                duration=duration,
                wire=wire.value,
                run=run,
                stop_event=stop,
                progress=show,
                from_start=from_start,
            )
    except (SourceError, KafkaSetupError, TransactionError, ValueError, TimeoutError) as exc:
        if log_level.upper() == "DEBUG":
            raise
        console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True, highlight=False)
        stats = getattr(exc, "stats", None)
        if stats is not None:  # what was sent before the stop, and what was not delivered
            print(f"producer: {stats.summary()}", file=sys.stdout, flush=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        console.print("[red]aborted[/red] (second Ctrl-C): queued messages may be lost")
        raise typer.Exit(130) from None

    if stats_json is not None:
        stats_json.write_text(stats.as_json() + "\n")
    print(f"producer: {stats.summary()}", file=sys.stdout, flush=True)
    for example in stats.malformed_examples:
        print(f"producer: malformed line {example}", file=sys.stdout)
    lost = stats.delivery_errors + stats.undelivered
    if lost:
        console.print(f"[red]{lost:,} message(s) were not delivered[/red]")
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
