"""The streaming query: raw topic -> Spark micro-batches -> one results message per batch.

I/O only; the per-batch computation is ``processor.plan.aggregate_batch``, the message
``processor.message.build_message``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.streaming import StreamingQuery

from dtmon.kafka import KafkaClients, KafkaConfig, as_kafka_config, connection_watch
from dtmon.schema import RESULTS_SCHEMA_ID, RESULTS_VERSION, StreamEvent
from dtmon.settings import Settings
from dtmon.wire import CONTENT_TYPE_JSON, HEADER_CONTENT_TYPE, HEADER_QUERY_ID, HEADER_SCHEMA
from processor import checks, spark_kafka
from processor.kafka_source import SOURCE_NAME, kafka_options
from processor.message import build_message
from processor.plan import aggregate_batch, warm_up
from processor.quality import QualityMonitor
from processor.session import DriverStart, register_data_source
from processor.state import RunTracker

log = logging.getLogger("dtmon.processor")


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


PROGRESS_POLL_S = 0.2
"""s between two looks at the query's last progress report (``ProgressLog.poll``)."""


def progress_line(progress) -> str | None:
    """The log line of one micro-batch's progress report (Spark's ``StreamingQueryProgress``, or a
    dict with its keys), or None for a trigger without input.

    Format: ``micro-batch N: M messages, T ms (<durationMs parts>), R messages/s processed``;
    ``bench.metrics.PROGRESS_LINE`` reads it (M counts Kafka messages, not DAQ rows: the
    batch's rows are in the ``batch N: ...`` line that follows its results message).
    """
    if not progress or not progress["numInputRows"]:
        return None
    parts = ", ".join(f"{k} {v}" for k, v in sorted(progress["durationMs"].items()) if k != "triggerExecution")
    return (f"micro-batch {progress['batchId']}: {progress['numInputRows']} messages, {progress['batchDuration']:.0f} ms "
            f"({parts}), {progress['processedRowsPerSecond'] or 0.0:.0f} messages/s processed")


class ProgressLog:
    """Logs every micro-batch's Spark progress report (``progress_line``), read from the query.

    Not a ``StreamingQueryListener``: PySpark converts each event of a Python listener field by
    field through Py4J, whose reflection searched every jar of the class path on each call, ~2 CPU s a
    minute of the driver JVM at 1 M rows/s (docs/performance.md); ``StreamingQuery.lastProgress``
    is one call that returns the report as JSON. A report replaced before a poll saw it (micro-batches
    shorter than ``PROGRESS_POLL_S``) is read from ``recentProgress``.
    """

    def __init__(self, query: StreamingQuery):
        self.query = query
        self.last_seen: tuple[int, str] | None = None  # (batchId, trigger timestamp) of the last report read

    def poll(self) -> None:
        """Log the progress reports of the micro-batches completed since the last poll.

        A report is known by its batch id and trigger timestamp (a trigger without input reports the
        id of the micro-batch still to come)."""
        last = self.query.lastProgress
        if last is None or (last["batchId"], last["timestamp"]) == self.last_seen:
            return
        reports = [last]
        if self.last_seen is not None and last["batchId"] > self.last_seen[0] + 1:  # reports replaced between polls
            reports = [p for p in self.query.recentProgress if p["timestamp"] > self.last_seen[1]] or [last]
        for report in reports:
            line = progress_line(report)
            if line is not None:
                log.info("%s", line)
        self.last_seen = (last["batchId"], last["timestamp"])


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


def run_processor(settings: Settings, driver: DriverStart, monitor: QualityMonitor) -> int:
    """Run the processor until SIGINT/SIGTERM or a query failure; return an exit code.

    ``driver``: the checks before Spark (Java, broker, checkpoint; a checkpoint moved aside is
    reported in the first results message as a ``checkpoint_reset`` event) and the Spark session's
    start, begun by the caller as early as it could (``processor.cli``); ``monitor``: the
    data-quality checks, loaded before that. The session is stopped on every way out.
    """
    steps: list[tuple[str, float]] = [("", time.monotonic())]  # start-up steps, logged once the query runs

    def step(name: str) -> None:
        steps.append((name, time.monotonic()))

    threading.Thread(target=checks.load_scipy, name="load-scipy", daemon=True).start()  # while the JVM starts
    try:
        clients = KafkaClients(settings.kafka)
        reset = driver.checkpoint_reset
        spark = driver.session()
        register_data_source(spark)
        step("waiting for the spark session + data source")
        threading.Thread(target=warm_up_workers, args=(spark, monitor.binning_settings()), name="warm-up", daemon=True).start()
        publisher = ResultsPublisher(clients, settings.results_topic)
        publisher.grace_s = settings.broker_grace_s
        if reset:
            log.warning("%s", reset)
            publisher.record(StreamEvent(kind="checkpoint_reset", time=time.time(), detail=reset))
        publisher.clients.ensure_results_topic(settings.results_topic)  # one partition, before anything is published
        query = start_query(spark, settings, publisher, monitor)
        step("query start")
        log.info("query started: id=%s", query.id)
        progress = ProgressLog(query)
        stop = threading.Event()  # from here a SIGINT/SIGTERM stops the query between batches
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        log.info(
            "processor running: %s -> %s, trigger %.1f s, checkpoint %s, Kafka source %s",
            settings.raw_topic, settings.results_topic, settings.trigger_interval_s, settings.checkpoint_location,
            settings.kafka_source,
        )
        session = "spark session" + (" (class-data archive mapped)" if driver.archive_mapped else "") + f" {driver.seconds:.1f} s"
        log.info("start-up: %s; %s", session, ", ".join(f"{name} {t - steps[i][1]:.1f} s" for i, (name, t) in enumerate(steps[1:])))
        while not stop.is_set() and query.isActive:
            stop.wait(PROGRESS_POLL_S)
            progress.poll()
        failure = query.exception()
        stop_between_batches(query)
        progress.poll()
    finally:
        driver.stop()
    if failure is not None:
        log.error("streaming query failed: %s", failure_line(str(failure)))
        log.debug("streaming query failure: %s", failure)
        return 1
    log.info("processor stopped")
    return 0
