"""Doubles of confluent-kafka clients for unit tests of one function (no broker).

``FakeClients`` is a ``dtmon.kafka.KafkaClients`` whose ``_create_consumer`` /
``_create_producer`` return ``FakeConsumer`` / ``FakeProducer``; a test gives the
consumer's script: the partitions of each topic, their watermarks, and the events
``poll``/``consume`` return in order (``FakeMessage`` values, errors or ``None``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

from confluent_kafka import KafkaError

from dtmon.kafka import KafkaClients, KafkaConfig


@dataclass
class FakeError:
    """A ``KafkaError`` stand-in: ``code()``, ``fatal()``, ``str()``."""

    error_code: int
    is_fatal: bool = False

    def code(self) -> int:
        return self.error_code

    def fatal(self) -> bool:
        return self.is_fatal

    def str(self) -> str:
        return f"error {self.error_code}"


@dataclass
class FakeMessage:
    """A ``confluent_kafka.Message`` stand-in (an event when ``err`` is set)."""

    topic_name: str
    partition_id: int
    offset_value: int
    data: bytes | None = b""
    header_list: list[tuple[str, bytes]] | None = None
    timestamp_ms: int = 0
    key_bytes: bytes | None = None
    err: FakeError | None = None

    def topic(self):
        return self.topic_name

    def partition(self):
        return self.partition_id

    def offset(self):
        return self.offset_value

    def value(self):
        return self.data

    def headers(self):
        return self.header_list

    def timestamp(self):
        return (1, self.timestamp_ms)

    def key(self):
        return self.key_bytes

    def error(self):
        return self.err


def eof(topic: str, partition: int, offset: int) -> FakeMessage:
    """The end-of-partition event at ``offset``."""
    return FakeMessage(topic, partition, offset, None, err=FakeError(KafkaError._PARTITION_EOF))


@dataclass
class FakeConsumer:
    """Answers metadata and watermarks from ``partitions``/``watermarks`` and plays ``events``."""

    config: dict
    partitions: dict[str, list[int]] = field(default_factory=dict)
    watermarks: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    events: list = field(default_factory=list)
    assigned: list = field(default_factory=list)
    committed: list = field(default_factory=list)
    closed: bool = False
    overlong_waits: int = 0
    """blocking ``consume(n)`` calls with fewer than n messages at hand (librdkafka's waits for n or its timeout)"""

    def list_topics(self, topic=None, timeout=None):
        topics = {t: SimpleNamespace(partitions={p: None for p in ps}, error=None) for t, ps in self.partitions.items()}
        return SimpleNamespace(topics=topics)

    def get_watermark_offsets(self, tp, timeout=None, cached=False):
        return self.watermarks.get((tp.topic, tp.partition), (0, 0))

    def assign(self, positions):
        self.assigned = [(tp.topic, tp.partition, tp.offset) for tp in positions]

    def poll(self, timeout=None):
        return self.events.pop(0) if self.events else None

    def consume(self, num_messages=1, timeout=None):
        available = len(self.events) if None not in self.events else self.events.index(None)
        if timeout and num_messages > max(available, 1):  # librdkafka waits for all n (or the timeout)
            self.overlong_waits += 1
        out = []
        while self.events and len(out) < num_messages:
            event = self.events.pop(0)
            if event is None:
                break
            out.append(event)
        return out

    def commit(self, offsets=None, asynchronous=True):
        self.committed.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])

    def close(self):
        self.closed = True


@dataclass
class FakeProducer:
    """Records ``produce`` calls; ``flush`` returns ``undelivered``."""

    config: dict
    sent: list = field(default_factory=list)
    undelivered: int = 0

    def produce(self, topic, value=None, key=None, headers=None, partition=-1, on_delivery=None):
        self.sent.append({"topic": topic, "key": key, "value": value, "headers": headers, "partition": partition})

    def poll(self, timeout=0):
        return 0

    def flush(self, timeout=None):
        return self.undelivered


class FakeClients(KafkaClients):
    """``KafkaClients`` whose consumers are ``FakeConsumer`` built by ``script()`` (one call per consumer)."""

    def __init__(self, script=None, config: KafkaConfig | None = None) -> None:
        super().__init__(config or KafkaConfig(bootstrap_servers="fake:9092"))
        self.script = script or (lambda: {})
        self.consumers: list[FakeConsumer] = []
        self.producers: list[FakeProducer] = []

    def _create_consumer(self, conf):
        consumer = FakeConsumer(conf, **self.script())
        self.consumers.append(consumer)
        return consumer

    def _create_producer(self, conf):
        producer = FakeProducer(conf)
        self.producers.append(producer)
        return producer
