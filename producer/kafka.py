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

__all__ = ["DeliveryErrors", "KafkaSetupError", "KafkaSink", "ensure_topic", "kafka_compression", "producer_config"]

log = logging.getLogger("producer")

MAX_ERRORS_KEPT = 5


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
    """

    def __init__(
        self,
        kafka: KafkaConfig | str,
        topic: str,
        compression: str = "none",
        overrides: dict | None = None,
        producer_cls=None,
        partitions: int | None = None,
    ):
        self.topic = topic
        self.partitions = partitions
        self.errors = DeliveryErrors()
        config = producer_config(kafka, compression, overrides=overrides)
        config["on_delivery"] = self.errors
        config["error_cb"] = self._on_error
        self._last_error_log = 0.0
        self.producer = (producer_cls or confluent_kafka.Producer)(config)

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

    def flush(self, timeout: float = 30.0) -> int:
        """Wait up to ``timeout`` s for every queued message; return how many are still undelivered."""
        return self.producer.flush(timeout)
