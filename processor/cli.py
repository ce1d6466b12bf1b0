"""``processor``: the Spark Structured Streaming stage of dtmon.

Also runnable with spark-submit: ``spark-submit processor/__main__.py --help``.
"""

from __future__ import annotations

import logging
from typing import Optional

import typer

from dtmon.settings import load_settings

app = typer.Typer(add_completion=False, help=__doc__, rich_markup_mode=None)


@app.command()
def main(
    bootstrap_servers: Optional[str] = typer.Option(None, help="Kafka bootstrap servers [env DTMON_BOOTSTRAP_SERVERS]"),
    raw_topic: Optional[str] = typer.Option(None, help="raw DAQ topic [env DTMON_RAW_TOPIC]"),
    results_topic: Optional[str] = typer.Option(None, help="results topic [env DTMON_RESULTS_TOPIC]"),
    trigger_interval: Optional[float] = typer.Option(None, help="micro-batch trigger interval in s [env DTMON_TRIGGER_INTERVAL_S]"),
    checkpoint_location: Optional[str] = typer.Option(None, help="checkpoint directory [env DTMON_CHECKPOINT_LOCATION]"),
    starting_offsets: Optional[str] = typer.Option(None, help="earliest | latest, for a new checkpoint [env DTMON_STARTING_OFFSETS]"),
    master: Optional[str] = typer.Option(None, help="Spark master, e.g. local[*] or spark://host:7077 [env DTMON_SPARK_MASTER]"),
    max_offsets_per_trigger: Optional[int] = typer.Option(None, help="cap on raw messages per micro-batch"),
    kafka_source: Optional[str] = typer.Option(
        None, help="python (dtmon's data source) | spark (Spark's Kafka connector) [env DTMON_KAFKA_SOURCE]"
    ),
    shuffle_partitions: Optional[int] = typer.Option(None, help="spark.sql.shuffle.partitions"),
    scint_fpga: Optional[int] = typer.Option(None, help="FPGA of the scintillator t0 channel (PDF: 1) [env DTMON_SCINT_FPGA]"),
    scint_channel: Optional[int] = typer.Option(
        None, help="TDC_CHANNEL of the scintillator (PDF: 128; the genuine rows show 138) [env DTMON_SCINT_CHANNEL]"
    ),
) -> None:
    """Read the raw topic, histogram every micro-batch in Spark, publish one results message per batch."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings(
        bootstrap_servers=bootstrap_servers,
        raw_topic=raw_topic,
        results_topic=results_topic,
        trigger_interval_s=trigger_interval,
        checkpoint_location=checkpoint_location,
        starting_offsets=starting_offsets,
        spark_master=master,
        max_offsets_per_trigger=max_offsets_per_trigger,
        kafka_source=kafka_source,
        shuffle_partitions=shuffle_partitions,
        scint_fpga=scint_fpga,
        scint_channel=scint_channel,
    )
    from processor.app import run_processor

    raise typer.Exit(run_processor(settings))
