"""Thin wrapper on confluent_kafka: the raw-topic producer (topics: ``dtmon.kafka.ensure_topic``).

Holds as little logic as possible: configuration, a delivery-error counter, a retry when
librdkafka's local queue is full, flush. Delivery reports are requested for failed
messages only (``delivery.report.only.error``), so a healthy stream costs no Python
callback per message.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import confluent_kafka

from dtmon.kafka import KafkaConfig, KafkaSetupError, as_kafka_config, ensure_topic

__all__ = ["DeliveryErrors", "KafkaSetupError", "KafkaSink", "TransactionError", "ensure_topic", "kafka_compression", "producer_config"]

log = logging.getLogger("producer")

MAX_ERRORS_KEPT = 5


class TransactionError(RuntimeError):
    """A Kafka transaction could not be committed: its messages are not part of the topic."""


def kafka_compression(wire: str, body_compression: str) -> str:
    """Kafka batch compression (``compression.type``) for a wire format.

    Arrow bodies are already compressed by Arrow (zstd/lz4), so Kafka compresses nothing
    more; uncompressed payloads (``--compression none`` Arrow, or CSV lines) get the
    requested codec at Kafka level unless it is ``none``.
    """
    body = (body_compression or "none").lower()
    if wire == "arrow" and body != "none":
        return "none"
    return body


def producer_config(
    kafka: KafkaConfig | str, compression: str = "none", linger_ms: float = 5.0, overrides: dict | None = None
) -> dict:
    """librdkafka configuration of the raw-topic producer.

    acks=all with idempotence (no duplicates on retry, order kept per partition),
    a small ``linger.ms`` (ms), ``compression.type`` as given, librdkafka's default
    ``message.max.bytes`` (1 MB, what brokers accept by default). ``overrides`` are
    more librdkafka settings by their own names (e.g. ``{"message.timeout.ms": 5000}``).
    """
    return as_kafka_config(kafka).as_librdkafka_dict(
        overrides,
        acks="all",
        enable_idempotence=True,
        linger_ms=linger_ms,
        compression_type=compression,
        delivery_report_only_error=True,
    )


@dataclass
class DeliveryErrors:
    """Counts failed deliveries; keeps the first few error texts."""

    count: int = 0
    first: list[str] = field(default_factory=list)

    def __call__(self, err, msg) -> None:
        """librdkafka delivery callback (called from ``poll``/``flush``)."""
        if err is None:
            return
        self.count += 1
        if len(self.first) < MAX_ERRORS_KEPT:
            text = f"{err.name()}: {err.str()} (topic {msg.topic()}, {len(msg.value() or b'')} bytes)"
            self.first.append(text)
            log.error("delivery failed: %s", text)


class KafkaSink:
    """Sends raw-topic messages with confluent_kafka.

    Args:
        kafka: the Kafka client configuration (or a bootstrap-servers string).
        topic: raw topic name.
        compression: Kafka ``compression.type`` (see ``kafka_compression``).
        overrides: more librdkafka settings by their own names.
        producer_cls: the client class; tests may pass a subclass of
            ``confluent_kafka.Producer`` as a double.
        partitions: the topic's partition count if known (e.g. from ``ensure_topic``);
            else ``partition_count()`` asks the broker.
        transactional_id: Kafka ``transactional.id``; when given the sink is
            transactional: ``init_transactions`` fences an earlier producer with the same
            id (its open transaction is aborted), ``send`` opens a transaction when none
            is open, ``commit`` commits it.
        init_timeout_s: s allowed for ``init_transactions``.

    Raises:
        KafkaSetupError: ``init_transactions`` failed or timed out.
    """

    def __init__(
        self,
        kafka: KafkaConfig | str,
        topic: str,
        compression: str = "none",
        overrides: dict | None = None,
        producer_cls=None,
        partitions: int | None = None,
        transactional_id: str | None = None,
        init_timeout_s: float = 30.0,
    ):
        self.topic = topic
        self.partitions = partitions
        self.errors = DeliveryErrors()
        config = producer_config(kafka, compression, overrides=overrides)
        config["on_delivery"] = self.errors
        config["error_cb"] = self._on_error
        self._last_error_log = 0.0
        self.transactional = transactional_id is not None
        self.in_transaction = False
        self.transaction_messages = 0  # messages sent in the open transaction
        self.transaction_started = 0.0  # time.monotonic() when it opened
        self.commits = 0
        if self.transactional:
            config["transactional.id"] = transactional_id
        self.producer = (producer_cls or confluent_kafka.Producer)(config)
        if self.transactional:
            try:
                self.producer.init_transactions(init_timeout_s)
            except confluent_kafka.KafkaException as exc:
                raise KafkaSetupError(f"cannot start a Kafka transaction (transactional.id {transactional_id}): {exc}") from exc

    def _on_error(self, err) -> None:
        """Client-level errors (broker down, ...): logged at most every 5 s."""
        now = time.monotonic()
        if now - self._last_error_log > 5.0 or err.fatal():
            self._last_error_log = now
            log.warning("kafka: %s", err.str())

    def partition_count(self, timeout: float = 10.0) -> int:
        """Partitions of the topic: as given to the constructor, else from the broker's metadata.

        Raises:
            KafkaSetupError: no metadata for the topic within ``timeout`` s.
        """
        if self.partitions is None:
            try:
                topic = self.producer.list_topics(self.topic, timeout=timeout).topics.get(self.topic)
            except confluent_kafka.KafkaException as exc:
                raise KafkaSetupError(f"no metadata for topic {self.topic!r} within {timeout} s: {exc}") from exc
            if topic is None or topic.error is not None or not topic.partitions:
                raise KafkaSetupError(f"topic {self.topic!r} has no partitions: {topic.error if topic else 'unknown topic'}")
            self.partitions = len(topic.partitions)
        return self.partitions

    def send(self, value: bytes, headers: list[tuple[str, bytes]], partition: int | None = None) -> None:
        """Queue one message (to ``partition``, or where the client's partitioner puts it);
        waits (serving callbacks) while the local queue is full.

        Raises:
            ValueError: the message is larger than ``message.max.bytes``.
        """
        where = {} if partition is None else {"partition": partition}
        if self.transactional and not self.in_transaction:
            self.producer.begin_transaction()
            self.in_transaction, self.transaction_messages, self.transaction_started = True, 0, time.monotonic()
        self.transaction_messages += 1
        while True:
            try:
                self.producer.produce(self.topic, value=value, headers=headers, **where)
                return
            except BufferError:
                self.producer.poll(0.05)
            except confluent_kafka.KafkaException as exc:
                if exc.args[0].code() == confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE:
                    raise ValueError(
                        f"a message of {len(value):,} bytes is larger than message.max.bytes: lower --rows-per-message"
                    ) from exc
                raise

    def poll(self, timeout: float = 0.0) -> None:
        """Serve delivery callbacks for up to ``timeout`` s."""
        self.producer.poll(timeout)

    def transaction_age(self) -> float:
        """s since the open transaction began; 0 when none is open."""
        return time.monotonic() - self.transaction_started if self.in_transaction else 0.0

    def commit(self, timeout: float = 30.0) -> None:
        """Commit the open transaction, if any (waits for its messages to be delivered).

        Raises:
            TransactionError: the commit failed; the transaction is then aborted and its
                messages are not part of the topic for read_committed readers (a
                restarted producer sends them again).
        """
        if not self.in_transaction:
            return
        try:
            self.producer.commit_transaction(timeout)
        except confluent_kafka.KafkaException as failure:
            self.in_transaction = False
            try:
                self.producer.abort_transaction(timeout)
            except confluent_kafka.KafkaException as exc:
                log.error("could not abort the transaction after a failed commit: %s", exc)
            raise TransactionError(
                f"Kafka transaction of {self.transaction_messages} message(s) not committed: {failure}; "
                "restart the producer to resume after the last committed row"
            ) from failure
        self.in_transaction = False
        self.commits += 1

    def flush(self, timeout: float = 30.0) -> int:
        """Wait up to ``timeout`` s for every queued message; return how many are still undelivered.

        A transactional sink commits its open transaction; if that fails, every message
        of the transaction counts as undelivered.
        """
        if self.transactional:
            pending = self.transaction_messages if self.in_transaction else 0
            try:
                self.commit(timeout)
            except TransactionError as exc:
                log.error("final transaction commit failed (%d messages not written): %s", pending, exc)
                return pending
            return 0
        return self.producer.flush(timeout)
