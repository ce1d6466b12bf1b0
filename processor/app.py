"""The streaming query: raw topic -> Spark micro-batches -> one results message per batch.

I/O only; the per-batch computation is ``processor.plan.aggregate_batch``, the message
``processor.message.build_message``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.streaming import StreamingQuery, StreamingQueryListener

from dtmon.apache_kafka import cache_root
from dtmon.kafka import KafkaClients, KafkaConfig, as_kafka_config, connection_watch
from dtmon.schema import RESULTS_SCHEMA_ID, RESULTS_VERSION, StreamEvent
from dtmon.settings import Settings
from dtmon.wire import CONTENT_TYPE_JSON, HEADER_CONTENT_TYPE, HEADER_QUERY_ID, HEADER_SCHEMA
from processor import cds, checks, spark_home, spark_kafka
from processor.kafka_source import SOURCE_NAME, KafkaDataSource, kafka_options
from processor.message import build_message
from processor.plan import aggregate_batch, warm_up
from processor.preflight import check_checkpoint, check_java, find_java
from processor.quality import QualityMonitor
from processor.state import RunTracker

log = logging.getLogger("dtmon.processor")

REDACTION_REGEX = r"(?i)secret|password|token|access[.]?key|jaas|keystore[.]key"
"""``spark.redaction.regex``: Spark's default (``secret|password|token|access[.]?key``) plus the
Kafka keys that carry a secret without saying so (``sasl.jaas.config``, ``ssl.keystore.key``);
``spark.sql.redaction.options.regex`` is it plus Spark's default ``url``."""


def spark_master(settings: Settings, environ: dict[str, str] | None = None) -> str | None:
    """The master the session sets: ``settings.spark_master`` if set; else None when a launcher
    chose one (under spark-submit, whose PythonRunner sets ``PYSPARK_GATEWAY_PORT``, or a
    ``--master`` in ``PYSPARK_SUBMIT_ARGS``), so its master stays; else ``local[*]``."""
    env = os.environ if environ is None else environ
    if settings.spark_master:
        return settings.spark_master
    if "PYSPARK_GATEWAY_PORT" in env or "--master" in env.get("PYSPARK_SUBMIT_ARGS", "").split():
        return None
    return "local[*]"


def spark_session(settings: Settings, app_name: str = "dtmon-processor", driver_java_options: str | None = None) -> SparkSession:
    """Start (or get) the Spark session with the dtmon data source registered.

    Python workers run this interpreter (``PYSPARK_PYTHON``), so they see the same
    installed packages, and import its pyspark (``use_worker_spark_home``). ``driver_java_options`` (``spark.driver.extraJavaOptions``) reach a
    driver JVM this call launches (e.g. ``processor.cds.java_options``), not one already running.
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    use_worker_spark_home()
    master = spark_master(settings)
    builder = SparkSession.builder.appName(app_name)
    if master is not None:
        builder = builder.master(master)
    builder = (
        builder.config("spark.sql.shuffle.partitions", str(settings.shuffle_partitions))
        # one Spark job per micro-batch: adaptive execution would run the shuffle as a job of
        # its own and has nothing to coalesce in a few partitions
        .config("spark.sql.adaptive.enabled", "false")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.streaming.stopGracefullyOnShutdown", "true")
        .config("spark.executorEnv.PYSPARK_PYTHON", sys.executable)
        # each partition's messages cross to the decoding mapInArrow in few, large Arrow batches
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "200000")
        # Kafka secrets reach Spark as source options (kafka.sasl.password, kafka.sasl.jaas.config,
        # kafka.ssl.keystore.key): hidden in logs, the environment page and explain output
        .config("spark.redaction.regex", REDACTION_REGEX)
        .config("spark.sql.redaction.options.regex", REDACTION_REGEX + "|url")
    )
    if settings.kafka_source == "spark":  # Spark's own Kafka source: the connector jars via spark.jars.packages
        for key, value in spark_kafka.session_config().items():
            builder = builder.config(key, value)
    if master is not None and master.startswith("local"):  # nothing outside this machine talks to a local driver
        builder = builder.config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
    if driver_java_options:
        builder = builder.config("spark.driver.extraJavaOptions", driver_java_options)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    spark.dataSource.register(KafkaDataSource)
    return spark


def last_published_batch(kafka: KafkaConfig | KafkaClients | str, topic: str, query_id: str, timeout_s: float = 10.0) -> int | None:
    """Batch id of the newest results message that query ``query_id`` published, if it is the newest in the topic.

    Reads the tail of the results topic (``dtmon.kafka.KafkaClients.read_tail``).
    """
    clients = kafka if isinstance(kafka, KafkaClients) else KafkaClients(kafka)
    newest = clients.read_tail(topic, timeout_s, group_id="dtmon-processor-tail")
    if not newest:
        return None
    last = max(newest.values(), key=lambda msg: msg.timestamp()[1])
    if dict(last.headers() or []).get(HEADER_QUERY_ID, b"").decode() != query_id:
        return None
    return int(last.key())


class ResultsPublisher:
    """Publishes results messages to Kafka; one per micro-batch, keyed by batch id.

    Spark may run a micro-batch again after a restart (at-least-once ``foreachBatch``);
    ``publish`` skips batch ids this query already published, so the results topic gets
    each batch once.
    """

    def __init__(self, kafka: KafkaConfig | KafkaClients | str, topic: str, producer=None):
        self.clients = kafka if isinstance(kafka, KafkaClients) else KafkaClients(as_kafka_config(kafka))
        self.topic = topic
        self.errors = 0
        self.query_id = ""
        self.last_batch: int | None = None
        self.events: list[StreamEvent] = []
        self.grace_s = 60.0  # s a publish waits for an unreachable broker (Settings.broker_grace_s)
        self._producer = producer or self.clients.producer(acks="all", enable_idempotence=True, linger_ms=0)

    def _on_delivery(self, err, msg) -> None:
        if err is not None:
            self.errors += 1
            log.error("results message for batch %s not delivered: %s", msg.key(), err)

    def record(self, event: StreamEvent) -> None:
        """Keep ``event`` for the next results message (``take_events``)."""
        self.events.append(event)

    def take_events(self) -> list[StreamEvent]:
        """The events kept for the next results message (then forgotten)."""
        events, self.events = self.events, []
        return events

    def attach(self, query_id: str) -> None:
        """Bind to a query (its id survives checkpoint restarts) and learn what it already published."""
        self.query_id = query_id
        self.last_batch = last_published_batch(self.clients, self.topic, query_id)
        if self.last_batch is not None:
            log.info("query %s already published up to batch %d", query_id, self.last_batch)

    def already_published(self, batch_id: int) -> bool:
        """True if this query published ``batch_id`` before (a replayed micro-batch)."""
        return self.last_batch is not None and batch_id <= self.last_batch

    def publish(self, batch_id: int, value: bytes, timeout_s: float = 30.0) -> None:
        """Send one message and wait for its delivery report.

        Raises:
            RuntimeError: the message was not acknowledged within ``timeout_s`` (longer while
                the broker is unreachable for at most ``grace_s``).
        """
        headers = [
            (HEADER_CONTENT_TYPE, CONTENT_TYPE_JSON.encode()),
            (HEADER_SCHEMA, f"{RESULTS_SCHEMA_ID}/{RESULTS_VERSION}".encode()),
            (HEADER_QUERY_ID, self.query_id.encode()),
        ]
        self._producer.produce(self.topic, key=str(batch_id).encode(), value=value, headers=headers, on_delivery=self._on_delivery)
        started = time.monotonic()
        watch = connection_watch(self.clients.config.bootstrap_servers)
        while self._producer.flush(1.0) > 0:  # while the broker is away (within the grace period) keep waiting
            if time.monotonic() - started > timeout_s and not 0 < watch.down_for() <= self.grace_s:
                raise RuntimeError(f"results message for batch {batch_id} not acknowledged after {time.monotonic() - started:.0f} s")
        self.last_batch = batch_id


class ProgressLogger(StreamingQueryListener):
    """Logs every micro-batch's duration, input Kafka messages and rates (Spark's own progress report;
    the batch's DAQ rows are in the ``batch N: ...`` line that follows its results message)."""

    def onQueryStarted(self, event) -> None:
        log.info("query started: id=%s", event.id)

    def onQueryProgress(self, event) -> None:
        p = event.progress
        if p.numInputRows:
            log.info(
                "micro-batch %d: %d messages, %.0f ms (%s), %.0f messages/s processed",
                p.batchId, p.numInputRows, p.batchDuration,
                ", ".join(f"{k} {v}" for k, v in sorted(p.durationMs.items()) if k != "triggerExecution"),
                p.processedRowsPerSecond or 0.0,
            )

    def onQueryIdle(self, event) -> None:
        pass

    def onQueryTerminated(self, event) -> None:
        log.info("query terminated: %s", event.exception or "stopped")


def start_query(spark: SparkSession, settings: Settings, publisher: ResultsPublisher,
                monitor: QualityMonitor | None = None) -> StreamingQuery:
    """Start the streaming query reading ``settings.raw_topic`` (source: ``settings.kafka_source``) and publishing results
    (data quality judged by ``monitor``, default ``QualityMonitor(settings)``)."""
    reader = (
        spark.readStream.format(SOURCE_NAME)
        .options(**kafka_options(settings.kafka))
        .option("subscribe", settings.raw_topic)
        .option("startingOffsets", settings.starting_offsets)
        .option("brokerGraceS", str(settings.broker_grace_s))
        .option("minPartitions", str(spark.sparkContext.defaultParallelism))
    )
    if settings.max_offsets_per_trigger:
        reader = reader.option("maxOffsetsPerTrigger", str(settings.max_offsets_per_trigger))
    rows = reader.load() if settings.kafka_source == "python" else spark_kafka.read_stream(spark, settings)
    monitor = monitor or QualityMonitor(settings)
    runs = RunTracker()
    # DAQ rows of the previous batch: the plan of the next (a rate changes slowly); the first batch is one
    # stage with dtmon's source, which caps it (kafka_source.FIRST_BATCH_MAX_OFFSETS)
    last_rows = [1 if settings.kafka_source == "python" else 0]

    def process(batch: DataFrame, batch_id: int) -> None:
        if publisher.already_published(batch_id):
            log.info("batch %d was published before the restart: not sent again", batch_id)
            return
        started = time.time()
        single_stage = 0 < last_rows[0] < settings.single_stage_rows
        agg = aggregate_batch(batch, monitor.binning_settings(), single_stage)
        last_rows[0] = agg.rows_read
        if agg.rows_read == 0 and not agg.run_events:
            return
        aggregated = time.time()
        dq = monitor.update(batch_id, agg)
        message = build_message(
            batch_id,
            agg,
            trigger_interval_s=settings.trigger_interval_s,
            batch_started=started,
            published=time.time(),
            health=dq.channel_health,
            run=runs.update(agg.run, agg.run_events),
            quality=dq.quality,
            scintillator=dq.scintillator,
            events=[*publisher.take_events(), *dq.events],
        )
        checked = time.time()
        publisher.publish(batch_id, message.to_json())
        done = time.time()
        log.info(
            "batch %d: run %s (%s), %d rows, %d hits, %d malformed, chambers %s, %d scintillator orbits, quality %s (%s), "
            "%.2f s (Spark %s %.2f, checks + message %.2f, publish %.2f)",
            batch_id, message.run, message.run_state, agg.rows_read, agg.hits, agg.malformed_rows,
            message.hits_per_chamber, agg.orbits_with_scintillator, dq.quality.quality, dq.quality.reason,
            done - started, "1 stage" if single_stage else "2 stages", aggregated - started, checked - aggregated,
            done - checked,
        )

    writer = (
        rows.writeStream.foreachBatch(process)
        .trigger(processingTime=f"{settings.trigger_interval_s} seconds")
        .option("checkpointLocation", settings.checkpoint_location)
        .queryName("dtmon")
    )
    query_id = read_query_id(settings.checkpoint_location)
    if query_id:
        publisher.attach(query_id)
    query = writer.start()
    if not query_id:
        publisher.attach(query.id)
    return query


def failure_line(text: str) -> str:
    """The one line that says why a streaming query failed: the dtmon error inside Spark's report
    (``KafkaSetupError: ...``) if there is one, else the report's first line."""
    import re

    found = re.findall(r"(?:KafkaSetupError|PreflightError|RuntimeError|TimeoutError): ([^\n]+)", text)
    return found[-1].strip() if found else (text.strip().splitlines() or ["unknown"])[0]


def read_query_id(checkpoint_location: str) -> str | None:
    """The id Spark stored in a checkpoint's ``metadata`` file, or None for a new checkpoint."""
    import json
    from pathlib import Path

    metadata = Path(checkpoint_location) / "metadata"
    if not metadata.is_file():
        return None
    return json.loads(metadata.read_text().splitlines()[0]).get("id")


def stop_between_batches(query: StreamingQuery, timeout_s: float = 10.0) -> None:
    """Stop ``query`` when no micro-batch is running, or after ``timeout_s`` s.

    A stop during a micro-batch cancels its Spark job, and the cancellation surfaces as an
    error in the batch function (a traceback in the log for a normal stop); a stopped batch
    is not lost, the restarted query runs it again from the checkpoint.
    """
    deadline = time.monotonic() + timeout_s
    while query.isActive and query.status.get("isTriggerActive") and time.monotonic() < deadline:
        time.sleep(0.05)
    if query.isActive:
        query.stop()


def launches_driver_jvm(environ: dict[str, str] | None = None) -> bool:
    """True if this process will launch the driver JVM itself (not run under spark-submit or a gateway)."""
    env = os.environ if environ is None else environ
    return "PYSPARK_GATEWAY_PORT" not in env and "java-options" not in env.get("PYSPARK_SUBMIT_ARGS", "")


def use_worker_spark_home(environ: dict[str, str] | None = None) -> Path | None:
    """Point ``SPARK_HOME`` at ``processor.spark_home.spark_home`` (Python workers import the installed
    pyspark, not the uncompiled zip) unless it is set or the JVM is not launched here; returns the
    home set, or None. A cache that cannot be written leaves the installed home (logged)."""
    env = os.environ if environ is None else environ
    if env.get("SPARK_HOME") or not launches_driver_jvm(env):
        return None
    import pyspark

    try:
        home = spark_home.spark_home(Path(pyspark.__file__).parent, cache_root())
    except OSError as e:
        log.warning("Spark home for the Python workers not built (%s): they import pyspark from its zip", e)
        return None
    env["SPARK_HOME"] = str(home)
    return home


def warm_up_workers(spark: SparkSession, settings: Settings) -> None:
    """``processor.plan.warm_up`` while the query starts (a thread): its time is logged, a failure
    only logged (the first micro-batch then starts the workers itself)."""
    t = time.monotonic()
    try:
        warm_up(spark, settings)
    except Exception as e:  # noqa: BLE001 - an optimisation: the query runs without it
        log.warning("warm-up job failed (the first micro-batch starts Spark's Python workers): %s", failure_line(str(e)))
        return
    log.info("warm-up job (Python workers, mapInArrow plan): %.1f s", time.monotonic() - t)


def class_data_archive(settings: Settings, environ: dict[str, str] | None = None) -> Path | None:
    """The driver JVM's class-data archive (``processor.cds``) if this process launches the JVM
    (not under spark-submit) on this machine (a local master) and ``settings.spark_cds`` is on."""
    env = os.environ if environ is None else environ
    master = spark_master(settings, env)
    java = find_java(env)
    if not settings.spark_cds or master is None or not master.startswith("local") or java is None or not Path(java).exists():
        return None
    if not launches_driver_jvm(env):
        return None
    import pyspark

    spark_home = Path(env.get("SPARK_HOME") or Path(pyspark.__file__).parent)
    return cds.archive_file(cache_root(), java, spark_home / "jars", pyspark.__version__)


def stop_driver_jvm(timeout_s: float = 60.0) -> int | None:
    """End the driver JVM this process launched (after ``spark.stop()``): close the gateway and the
    JVM's stdin, on which it exits by itself; return its exit code, or None if it did not end within
    ``timeout_s`` s or was not launched here. Spark starts a new JVM for a later session."""
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    proc = getattr(gateway, "proc", None)
    if gateway is None or proc is None:
        return None
    try:
        gateway.shutdown()
    except Exception:  # noqa: BLE001 - the JVM may already be gone; its exit code says how it ended
        pass
    SparkContext._gateway = None
    SparkContext._jvm = None
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        return None


def run_processor(settings: Settings, reset_checkpoint: bool = False) -> int:
    """Run the processor until SIGINT/SIGTERM or a query failure; return an exit code (2: bad checks or reference file).

    Before Spark starts: Java 17+ is there, the broker answers, the checkpoint fits the raw
    topic (``processor.preflight``; with ``reset_checkpoint`` one that does not is moved aside and
    the first results message carries a ``checkpoint_reset`` event).

    Raises:
        processor.preflight.PreflightError: Java missing or too old; a checkpoint refused.
        dtmon.kafka.KafkaSetupError: the broker did not answer.
    """
    steps: list[tuple[str, float]] = [("", time.monotonic())]  # start-up steps, logged once the query runs

    def step(name: str) -> None:
        steps.append((name, time.monotonic()))

    try:
        monitor = QualityMonitor(settings)
    except ValueError as e:  # ChecksConfigError, ReferenceError: one line naming file and key
        log.error("%s", e)
        return 2
    step("checks")
    check_java()
    step("java check")
    clients = KafkaClients(settings.kafka)
    reset = check_checkpoint(
        settings.checkpoint_location, settings.raw_topic, clients.log_ends(settings.raw_topic), reset_checkpoint
    )
    step("kafka + checkpoint")
    use_worker_spark_home()  # before the archive's name, which holds the jars' path
    threading.Thread(target=checks.load_scipy, name="load-scipy", daemon=True).start()  # while the JVM starts
    archive = class_data_archive(settings)
    java_options, archive_written = cds.java_options(archive) if archive is not None else ("", None)
    java_options = " ".join(o for o in (java_options, settings.spark_driver_java_options) if o)
    spark = spark_session(settings, driver_java_options=java_options or None)
    step("spark session" + (" (class-data archive mapped)" if archive is not None and archive_written is None else ""))
    spark.streams.addListener(ProgressLogger())
    threading.Thread(target=warm_up_workers, args=(spark, monitor.binning_settings()), name="warm-up", daemon=True).start()
    publisher = ResultsPublisher(clients, settings.results_topic)
    publisher.grace_s = settings.broker_grace_s
    if reset:
        log.warning("%s", reset)
        publisher.record(StreamEvent(kind="checkpoint_reset", time=time.time(), detail=reset))
    publisher.clients.ensure_results_topic(settings.results_topic)  # one partition, before anything is published
    query = start_query(spark, settings, publisher, monitor)
    step("query start")
    stop = threading.Event()  # from here a SIGINT/SIGTERM stops the query between batches
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    log.info(
        "processor running: %s -> %s, trigger %.1f s, checkpoint %s, Kafka source %s",
        settings.raw_topic, settings.results_topic, settings.trigger_interval_s, settings.checkpoint_location,
        settings.kafka_source,
    )
    log.info("start-up: %s", ", ".join(f"{name} {t - steps[i][1]:.1f} s" for i, (name, t) in enumerate(steps[1:])))
    while not stop.is_set() and query.isActive:
        stop.wait(0.5)
    failure = query.exception()
    stop_between_batches(query)
    spark.stop()
    if archive is not None and archive_written is not None:  # the first run: the JVM writes the archive as it exits
        if cds.adopt(archive_written, archive, stop_driver_jvm()):
            log.info("class-data archive of the driver JVM written: %s (later starts map it)", archive)
    if failure is not None:
        log.error("streaming query failed: %s", failure_line(str(failure)))
        log.debug("streaming query failure: %s", failure)
        return 1
    log.info("processor stopped")
    return 0
