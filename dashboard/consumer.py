"""Background Kafka consumer: results topic -> ``ResultsStore``.

One per Bokeh server process (started by ``app_hooks.on_server_loaded``). It uses
``assign()`` on every partition — no consumer group, so no slow group join and no
committed offsets — starting ``history`` messages before the end of each partition,
so a freshly opened page shows recent batches at once.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from dashboard.state import ResultsStore
from dtmon.kafka import KafkaClients, KafkaConfig, KafkaSetupError, as_kafka_config
from dtmon.settings import Settings

log = logging.getLogger(__name__)

#: librdkafka errors that mean "no broker answers".
UNREACHABLE = {KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT}

REPLAY_MARGIN = 10
"""Messages replayed beyond ``history`` (see ``start_offset``)."""


def start_offset(low: int, high: int, history: int) -> int:
    """First offset to read so about ``history`` messages before the end are replayed.

    ``low``/``high`` are the partition's watermarks. Tansu 0.6 answers ``high`` as the
    last record batch's base offset + 1 (below the true end), so this may replay a few
    more than ``history`` messages — harmless, the store keeps only the last ``history``.
    A margin of ``REPLAY_MARGIN`` messages covers messages that are not results (counted as
    invalid, skipped), so they do not take the place of a batch.
    Invalid (negative) watermarks give ``OFFSET_BEGINNING``.
    """
    if low < 0 or high < 0:
        return OFFSET_BEGINNING
    return max(low, high - history - REPLAY_MARGIN)


class ResultsConsumer:
    """Reads ``topic`` on a daemon thread and feeds parsed ``ResultsMessage`` objects to ``store``.

    Each message goes through ``store.ingest_json``: an invalid one (schema or meaning,
    ``dtmon.validation``) is counted, logged with topic/partition@offset and skipped (never fatal). Broker
    reachability goes to ``store.set_broker``: False on ``_ALL_BROKERS_DOWN``/``_TRANSPORT``
    errors, True after any answer (message, end-of-partition event, metadata). With
    ``create_topic`` the thread first creates a missing topic with one partition
    (``KafkaClients.ensure_results_topic``); a topic still missing is retried every ``retry_s`` s.
    """

    def __init__(
        self,
        store: ResultsStore,
        kafka: KafkaConfig | KafkaClients | str,
        topic: str,
        history: int,
        poll_timeout_s: float = 0.5,
        retry_s: float = 2.0,
        health_interval_s: float = 5.0,
        create_topic: bool = False,
    ) -> None:
        self.store = store
        self.topic = topic
        self.history = history
        self.poll_timeout_s = poll_timeout_s
        self.retry_s = retry_s
        self.health_interval_s = health_interval_s
        self.create_topic = create_topic
        self.clients = kafka if isinstance(kafka, KafkaClients) else KafkaClients(as_kafka_config(kafka))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dtmon-results-consumer", daemon=True)

    def start(self) -> None:
        """Start the background thread."""
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the thread to stop and wait up to ``timeout`` s for it (it closes the consumer)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _on_error(self, error: KafkaError) -> None:
        if error.code() in UNREACHABLE:
            self.store.set_broker(False, error.str())
        else:
            log.warning("kafka: %s", error)

    def _run(self) -> None:
        try:
            # the client insists on a group; never joined (assign only), nothing committed
            consumer = self.clients.consumer("dtmon-dashboard", enable_partition_eof=True, error_cb=self._on_error)
        except (KafkaException, ValueError) as exc:  # bad configuration: nothing to retry
            log.exception("results consumer")
            self.store.set_broker(False, f"consumer not created: {exc}")
            return
        try:
            if self.create_topic:
                try:
                    self.clients.ensure_results_topic(self.topic, timeout=10.0)
                except KafkaSetupError as exc:  # the broker is not there yet: the loop below retries
                    log.warning("results topic not created: %s", exc)
            while not self._stop.is_set():
                try:
                    if self._assign(consumer):
                        self._consume(consumer)
                    else:
                        self._stop.wait(self.retry_s)
                except Exception as exc:
                    log.exception("results consumer")
                    self.store.set_broker(False, f"{type(exc).__name__}: {exc}")
                    self._stop.wait(self.retry_s)
        finally:
            consumer.close()

    def _topic_partitions(self, consumer: Consumer, timeout: float) -> list[int] | None:
        """Partition ids of the topic, or None when it does not exist; KafkaException if no answer."""
        meta = consumer.list_topics(self.topic, timeout=timeout).topics.get(self.topic)
        if meta is None or meta.error is not None or not meta.partitions:
            self.store.set_broker(True, f"topic {self.topic} not found yet, retrying")
            return None
        self.store.set_broker(True)
        return sorted(meta.partitions)

    def _assign(self, consumer: Consumer) -> bool:
        try:
            partitions = self._topic_partitions(consumer, timeout=5.0)
        except KafkaException as exc:
            self.store.set_broker(False, _reason(exc))
            return False
        if partitions is None:
            return False
        assignment = []
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=5.0, cached=False)
            assignment.append(TopicPartition(self.topic, p, start_offset(low, high, self.history)))
        consumer.assign(assignment)
        log.info("results consumer assigned %s", [(tp.partition, tp.offset) for tp in assignment])
        return True

    def _consume(self, consumer: Consumer) -> None:
        """Poll until stopped or the topic disappears (then unassign and return to retry)."""
        last_answer = time.monotonic()
        while not self._stop.is_set():
            msg = consumer.poll(self.poll_timeout_s)
            if msg is None:
                if time.monotonic() - last_answer > self.health_interval_s:
                    last_answer = time.monotonic()
                    try:
                        if self._topic_partitions(consumer, timeout=2.0) is None:
                            break
                    except KafkaException as exc:
                        self.store.set_broker(False, _reason(exc))
                continue
            last_answer = time.monotonic()
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                    break
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("kafka: %s", error)
                    continue
                self.store.set_broker(True)
                continue
            self.store.set_broker(True)
            self.store.ingest_json(msg.value() or b"", f"{msg.topic()}/{msg.partition()}@{msg.offset()}")
        consumer.unassign()


def _reason(exc: KafkaException) -> str:
    error = exc.args[0] if exc.args else None
    return error.str() if isinstance(error, KafkaError) else str(exc)


@dataclass
class DashboardRuntime:
    """What one Bokeh server process shares with all its sessions."""

    settings: Settings
    store: ResultsStore
    consumer: ResultsConsumer


def replay_messages(settings: Settings) -> int:
    """Results messages to replay on start: enough for ``dashboard_trend_hours`` of shift trends at the
    trigger interval, and at least ``dashboard_history``."""
    return max(settings.dashboard_history, math.ceil(settings.dashboard_trend_hours * 3600 / settings.trigger_interval_s))


def start_runtime(settings: Settings) -> DashboardRuntime:
    """Create the store and start the results consumer thread for ``settings`` (it creates the
    results topic with one partition if it is missing)."""
    store = ResultsStore(settings.dashboard_history)
    consumer = ResultsConsumer(store, settings.kafka, settings.results_topic, replay_messages(settings), create_topic=True)
    consumer.start()
    return DashboardRuntime(settings, store, consumer)
