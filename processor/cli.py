"""``processor``: the Spark Structured Streaming stage of dtmon.

Also runnable with spark-submit: ``spark-submit --master URL processor/__main__.py``; the
master spark-submit was given is kept unless ``--spark-master`` / ``DTMON_SPARK_MASTER`` is set.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated, Optional

import typer

from dtmon.cliopts import alias_option, setting_option, settings_from, version_option

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    bootstrap_servers: Annotated[Optional[str], setting_option("bootstrap_servers")] = None,
    kafka_config_file: Annotated[Optional[str], setting_option("kafka_config_file")] = None,
    raw_topic: Annotated[Optional[str], setting_option("raw_topic")] = None,
    results_topic: Annotated[Optional[str], setting_option("results_topic")] = None,
    trigger_interval_s: Annotated[Optional[float], setting_option("trigger_interval_s")] = None,
    checkpoint_location: Annotated[Optional[str], setting_option("checkpoint_location")] = None,
    starting_offsets: Annotated[Optional[str], setting_option("starting_offsets")] = None,
    spark_master: Annotated[Optional[str], setting_option("spark_master")] = None,
    max_offsets_per_trigger: Annotated[Optional[int], setting_option("max_offsets_per_trigger")] = None,
    kafka_source: Annotated[Optional[str], setting_option("kafka_source")] = None,
    shuffle_partitions: Annotated[Optional[int], setting_option("shuffle_partitions")] = None,
    spark_driver_java_options: Annotated[Optional[str], setting_option("spark_driver_java_options")] = None,
    scint_fpga: Annotated[Optional[int], setting_option("scint_fpga")] = None,
    scint_channel: Annotated[Optional[int], setting_option("scint_channel")] = None,
    broker_grace_s: Annotated[Optional[float], setting_option("broker_grace_s")] = None,
    checks_file: Annotated[Optional[str], setting_option("checks_file")] = None,
    reference_file: Annotated[Optional[str], setting_option("reference_file")] = None,
    trigger_interval_s_alias: Annotated[Optional[float], alias_option("--trigger-interval")] = None,
    spark_master_alias: Annotated[Optional[str], alias_option("--master")] = None,
    kafka_config_file_alias: Annotated[Optional[str], alias_option("--kafka-config")] = None,
    reset_checkpoint: Annotated[
        bool,
        typer.Option(
            "--reset-checkpoint",
            help="a checkpoint that does not fit the raw topic (past its end, another topic, corrupt) is moved "
            "aside and a new query starts (recorded as a checkpoint_reset event); without it such a checkpoint is refused",
        ),
    ] = False,
    log_level: Annotated[str, typer.Option(help="logging level; DEBUG also shows the traceback of an error")] = "INFO",
    version: Annotated[Optional[bool], version_option()] = None,
) -> None:
    """Read the raw topic, histogram every micro-batch in Spark, publish one results message per batch.

    Exit codes: 0 stopped, 1 a failed start (Java, Kafka, checkpoint) or query, 2 a bad checks or reference file."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings_from(locals())
    from dtmon.kafka import KafkaSetupError
    from processor.preflight import PreflightError
    from processor.quality import QualityMonitor
    from processor.session import DriverStart

    try:
        monitor = QualityMonitor(settings)  # the checks and reference files, before anything starts
    except ValueError as exc:  # ChecksConfigError, ReferenceError: one line naming file and key
        logging.getLogger("dtmon.processor").error("%s", exc)
        raise typer.Exit(2) from None
    try:
        driver = DriverStart(settings, reset_checkpoint)  # Java, Kafka, checkpoint; then Spark starts while the rest imports
        from processor.app import run_processor

        code = run_processor(settings, driver, monitor)
    except (PreflightError, KafkaSetupError) as exc:
        if log_level.upper() == "DEBUG":
            raise
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    raise typer.Exit(code)
