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

from dtmon.kafka import KafkaConfig, KafkaSetupError, as_kafka_config, connection_watch, ensure_topic, watched

__all__ = ["BrokerLost", "DeliveryErrors", "KafkaSetupError", "KafkaSink", "TransactionError", "ensure_topic", "kafka_compression", "producer_config"]

log = logging.getLogger("producer")

MAX_ERRORS_KEPT = 5


class TransactionError(RuntimeError):
    """A Kafka transaction could not be committed: its messages are not part of the topic."""


class BrokerLost(KafkaSetupError):
    """The broker stayed unreachable for longer than the grace period."""


def _hint(err) -> str:
    unknown = err.code() in (confluent_kafka.KafkaError.UNKNOWN_PRODUCER_ID, confluent_kafka.KafkaError.INVALID_PRODUCER_ID_MAPPING)
    return " (the broker no longer knows this producer: it restarted without its data?)" if unknown else ""


def _reason(text: str) -> str:
    from dtmon.kafka import _short

    return _short(text)


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
            if self.count == 1:  # the rest are counted (and kept, the first few) for the summary
                log.error("delivery failed: %s (further failures are counted in the summary)", text)


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
        grace_s: s the broker may stay unreachable (``dtmon.kafka.ConnectionWatch``) before
            ``send``/``commit`` give up with ``BrokerLost``; while it is shorter they wait
            and retry (librdkafka reconnects with backoff).

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
        grace_s: float = 60.0,
    ):
        self.topic = topic
        self.partitions = partitions
        self.errors = DeliveryErrors()
        config = producer_config(kafka, compression, overrides=overrides)
        config["on_delivery"] = self.errors
        config["error_cb"] = self._on_error
        self.fatal = None  # the client's fatal error, if one happened: it sends nothing more
        self.watch = connection_watch(str(config.get("bootstrap.servers", "")))
        self.grace_s = grace_s
        self.transactional = transactional_id is not None
        self.in_transaction = False
        self.transaction_messages = 0  # messages sent in the open transaction
        self.transaction_started = 0.0  # time.monotonic() when it opened
        self.commits = 0
        self.lost_messages = 0  # messages of transactions that failed to commit (not in the topic)
        if self.transactional:
            config["transactional.id"] = transactional_id
        self.producer = (producer_cls or confluent_kafka.Producer)(watched(config))
        if self.transactional:
            try:
                self.producer.init_transactions(init_timeout_s)
            except confluent_kafka.KafkaException as exc:
                raise KafkaSetupError(f"cannot start a Kafka transaction (transactional.id {transactional_id}): {exc}") from exc

    def _on_error(self, err) -> None:
        """Client errors: a fatal one is kept (``check_broker`` raises it); connection errors go to the watch."""
        if err.fatal() and self.fatal is None:
            self.fatal = err

    def check_broker(self) -> None:
        """Raise ``BrokerLost`` if the broker has been unreachable for longer than the grace period, or
        ``KafkaSetupError`` after a fatal client error (e.g. an idempotent producer that a restarted,
        empty broker no longer knows)."""
        if self.fatal is not None:
            raise KafkaSetupError(f"the Kafka producer stopped on a fatal error: {_reason(self.fatal.str())}{_hint(self.fatal)}")
        down = self.watch.down_for()
        if down > self.grace_s:
            raise BrokerLost(
                f"Kafka at {self.watch.where} unreachable for {down:.0f} s (grace period broker_grace_s = {self.grace_s:g} s): "
                f"stopping; {self.watch.reason and _reason(self.watch.reason)}"
            )

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
            except BufferError:  # librdkafka's queue is full (e.g. the broker is away): wait, within the grace period
                self.producer.poll(0.05)
                self.check_broker()
            except confluent_kafka.KafkaException as exc:
                if exc.args[0].fatal():
                    self.fatal = self.fatal or exc.args[0]
                    self.check_broker()
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
            TransactionError: the commit failed (a retriable failure is retried for ``timeout``
                s, longer while the broker is away within the grace period); the transaction is then aborted and its
                messages are not part of the topic for read_committed readers (a
                restarted producer sends them again).
        """
        if not self.in_transaction:
            return
        started = time.monotonic()
        while True:
            try:
                self.producer.commit_transaction(min(timeout, 5.0))
                break
            except confluent_kafka.KafkaException as exc:
                failure = exc
                # a retriable failure (broker away): call again, while within ``timeout`` or the grace period
                waited = time.monotonic() - started
                if failure.args[0].retriable() and (waited < timeout or 0 < self.watch.down_for() <= self.grace_s):
                    continue
            self.in_transaction = False
            self.lost_messages += self.transaction_messages
            try:
                self.producer.abort_transaction(5.0)
            except confluent_kafka.KafkaException as exc:
                log.info("could not abort the failed transaction: %s", exc.args[0].str())
            raise TransactionError(
                f"Kafka transaction of {self.transaction_messages} message(s) not committed: {failure.args[0].str()}"
                + _hint(failure.args[0]) + "; "
                "restart the producer to resume after the last committed row"
            ) from failure
        self.in_transaction = False
        self.commits += 1

    def flush(self, timeout: float = 30.0) -> int:
        """Wait up to ``timeout`` s for every queued message; return how many are still undelivered.

        A transactional sink commits its open transaction and returns 0; if that fails, the
        transaction's messages are added to ``lost_messages``.
        """
        if self.transactional:
            try:
                self.commit(timeout)
            except TransactionError as exc:
                log.error("final transaction commit failed: %s", exc)
            return 0  # the failed transaction's messages are in ``lost_messages``
        if self.fatal is not None:  # the client purged its queue (each message a delivery error); flush would fail
            return 0
        try:
            return self.producer.flush(timeout)
        except (SystemError, confluent_kafka.KafkaException) as exc:  # a fatal error during the flush
            log.error("flush failed: %s", exc)
            return len(self.producer)
