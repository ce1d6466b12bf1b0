"""A Kafka streaming source for Spark, written with Spark's Python Data Source API.

Spark's built-in ``kafka`` format needs the spark-sql-kafka connector jars, which cannot
be installed here (``../shared/docs/platform-notes.md``), so dtmon reads Kafka with
confluent-kafka inside a ``pyspark.sql.datasource.DataSourceStreamReader``. It behaves
like the built-in source where it matters:

* options ``kafka.bootstrap.servers``, ``subscribe`` (comma-separated topics),
  ``startingOffsets`` (``earliest``, ``latest`` or a JSON offset document),
  ``maxOffsetsPerTrigger`` and ``minPartitions``; any other ``kafka.<key>`` option is a
  librdkafka key passed to the clients (security settings, see ``kafka_options``);
* the stream offset is ``{"topic": {"partition": next_offset}}`` per partition, so a
  query restarted from its checkpoint resumes exactly where it stopped;
* partitions that appear later are read from their start.

Like the built-in source it yields **one row per Kafka message** (``MESSAGE_SCHEMA``):
topic, partition, offset, Kafka timestamp, the ``content-type``, ``dtmon-synthetic`` and
``dtmon-run`` headers (``dtmon.wire``), and the value bytes. The values are decoded in
the micro-batch's first Spark stage (``processor.decode``), so the JVM handles one row
per message, never one per hit. This module holds offsets, partitions and ``read`` only;
the log end of a partition comes from ``dtmon.kafka.KafkaClients.end_offsets``.

``dtmon.kafka`` (pydantic, pydantic-settings, confluent-kafka: ~0.2 s) is imported where a
Kafka client is made or an error reported, not with this module: Spark's workers that only
create the data source or plan its reads import this module on the start-up path and never
talk to Kafka (docs/performance.md, start-up).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql.datasource import DataSource, DataSourceStreamReader, InputPartition
from pyspark.sql.streaming.datasource import ReadAllAvailable, ReadLimit, ReadMaxRows

from dtmon.wire import HEADER_CONTENT_TYPE, HEADER_RUN, HEADER_SYNTHETIC, header_dict, parse_run
from processor.message_rows import MESSAGE_SCHEMA, SPARK_SCHEMA

if TYPE_CHECKING:  # imported on first use (module docstring)
    from dtmon.kafka import KafkaClients, KafkaConfig

log = logging.getLogger(__name__)

SOURCE_NAME = "dtmon-kafka"

Offsets = dict[str, dict[str, int]]


@dataclass(frozen=True)
class KafkaRange(InputPartition):
    """Offsets ``[start, end)`` of one topic partition, read by one Spark task.

    ``last_message``: where the end probe saw it, the offset of the last message a
    ``read_committed`` reader gets before ``end`` (``dtmon.kafka.EndProbe.tails``); the
    offsets after it are transaction markers, so the reader stops there instead of waiting
    for the end-of-partition event (which a broker answers only after a fetch wait, longer
    while the producer's next transaction is open).
    """

    topic: str
    partition: int
    start: int
    end: int
    last_message: int | None = None

    @property
    def stop(self) -> int:
        """Offset after the last one the reader needs: ``end``, or ``last_message + 1``."""
        return self.end if self.last_message is None else min(self.end, self.last_message + 1)


CONSUMER_GROUP = "dtmon-processor"
"""Consumer group the processed offsets are committed to (for consumer-lag monitoring only)."""

_READ_ROLE = {
    "enable.partition.eof": True,
    "auto.offset.reset": "error",  # never jump to another offset silently: planned offsets are exact
    "isolation.level": "read_committed",  # the producer writes in transactions (producer.position)
    "fetch.max.bytes": 64 << 20,
    "max.partition.fetch.bytes": 16 << 20,
    "socket.timeout.ms": 10000,
}
"""librdkafka keys of the source's consumers."""

MIN_SLICE_OFFSETS = 64
"""``minPartitions`` splits a partition's range only into slices of at least this many offsets:
each slice costs a Spark task a Python worker round trip (~60 ms measured here), which a small
micro-batch (run as one task: ``processor.plan``) pays in its latency; 64 messages are up to
640 000 DAQ rows, enough to share between cores."""

FIRST_BATCH_MAX_OFFSETS = 64
"""The first micro-batch with data after a (re)start reads at most this many offsets (up to
640 000 DAQ rows), so it runs as one small Spark task (``processor.app``: one stage) while the
JVM and the Python workers are still cold, and the first results appear seconds sooner; a
backlog is read by the next micro-batch."""

TAIL_PROBE_OFFSETS = 2
"""The end probe reads from this many offsets before the high watermark: a transactional
producer's last offset is a commit marker, the one before it the last message."""

SHORT_FETCH_WAIT_MS = 25
"""``fetch.wait.max.ms`` a reader starts with (the end-offset probe's, ``dtmon.kafka.END_PROBE_FETCH_WAIT_MS``).
A range that ends in transaction markers closes at the end-of-partition event, which comes with the
first empty fetch, and the broker holds an empty fetch this long: librdkafka's default (500 ms) added
~0.5 s to every micro-batch whose range ended in a commit marker."""

LONG_FETCH_WAIT_MS = 500
"""librdkafka's default ``fetch.wait.max.ms``: a reader falls back to it when a short-wait fetch
brought nothing for ``SHORT_WAIT_STALL_S`` (Tansu's S3 engine answers no fetch that short)."""

SHORT_WAIT_STALL_S = 3.0
"""s without a message, offsets still missing, before a reader gives up the short fetch wait."""

_fetch_wait_ms: dict[str, int] = {}
"""bootstrap servers -> the fetch wait this Python worker learned to use for them."""


def kafka_options(config: KafkaConfig) -> dict[str, str]:
    """Source options that carry ``config``: ``kafka.<librdkafka key>`` (as Spark's own Kafka source takes them)."""
    return {f"kafka.{k}": str(v) for k, v in config.as_librdkafka_dict().items()}


def config_from_options(options: dict[str, str]) -> KafkaConfig:
    """The ``KafkaConfig`` given by ``kafka.*`` source options (keys lower-case); servers default to 127.0.0.1:9092."""
    from dtmon.kafka import KafkaConfig

    keys = {k[len("kafka."):]: v for k, v in options.items() if k.startswith("kafka.")}
    servers = keys.pop("bootstrap.servers", None) or "127.0.0.1:9092"
    return KafkaConfig(bootstrap_servers=servers, extra=keys)


def plan_ranges(start: Offsets, end: Offsets, min_partitions: int = 1, min_slice: int = 1) -> list[KafkaRange]:
    """Split the offsets between two stream offsets into Spark input partitions.

    One range per topic partition with new data; when there are fewer ranges than
    ``min_partitions``, the largest are split into equal offset slices (as the built-in
    source's ``minPartitions`` does).

    Args:
        start, end: stream offsets ``{topic: {partition: offset}}``; a partition missing
            from ``start`` starts at 0.
        min_partitions: least number of ranges wanted.
        min_slice: a range is split only into slices of at least this many offsets.
    Returns:
        ranges with ``start < end``, in topic/partition order.
    """
    ranges = []
    for topic, ends in sorted(end.items()):
        for part, stop in sorted(ends.items(), key=lambda kv: int(kv[0])):
            first = start.get(topic, {}).get(part, 0)
            if stop > first:
                ranges.append(KafkaRange(topic, int(part), first, stop))
    while ranges and len(ranges) < min_partitions:
        biggest = max(ranges, key=lambda r: r.end - r.start)
        pieces = min(min_partitions - len(ranges) + 1, (biggest.end - biggest.start) // max(min_slice, 1))
        if pieces < 2:
            break
        bounds = np.linspace(biggest.start, biggest.end, pieces + 1).round().astype(int)
        ranges.remove(biggest)
        ranges += [KafkaRange(biggest.topic, biggest.partition, int(a), int(b)) for a, b in zip(bounds, bounds[1:])]
        ranges.sort(key=lambda r: (r.topic, r.partition, r.start))
    return ranges


def with_tails(ranges: list[KafkaRange], tails: dict[tuple[str, int], tuple[int, int]]) -> list[KafkaRange]:
    """``ranges`` with ``last_message`` set on each range that ends where an end probe found the
    partition's end (``tails``: (topic, partition) -> (end, last message before it))."""
    out = []
    for rng in ranges:
        tail = tails.get((rng.topic, rng.partition))
        out.append(replace(rng, last_message=tail[1]) if tail is not None and tail[0] == rng.end else rng)
    return out


def cap_offsets(start: Offsets, latest: Offsets, max_messages: int) -> Offsets:
    """Limit the step from ``start`` to ``latest`` to ``max_messages`` in total.

    The budget is shared between partitions in proportion to their backlog (like the
    built-in ``maxOffsetsPerTrigger``); every partition with a backlog advances by at
    least one message so none starves.
    """
    backlog = {
        (t, p): stop - start.get(t, {}).get(p, 0) for t, ends in latest.items() for p, stop in ends.items()
    }
    total = sum(max(b, 0) for b in backlog.values())
    if total <= max_messages:
        return latest
    capped: Offsets = {t: {} for t in latest}
    for (t, p), b in backlog.items():
        first = start.get(t, {}).get(p, 0)
        step = 0 if b <= 0 else max(1, int(b * max_messages / total))
        capped[t][p] = first + min(step, max(b, 0))
    return capped


def read_range(
    clients: KafkaClients, rng: KafkaRange, bytes_per_batch: int = 16 << 20, stall_timeout_s: float = 60.0
) -> Iterator[pa.RecordBatch]:
    """Read offsets ``[rng.start, rng.end)`` of one partition as record batches of messages (``MESSAGE_SCHEMA``).

    Stops after ``rng.last_message`` when the end probe saw it (the rest are transaction
    markers), else at the end-of-partition event or the first message at ``rng.end``.

    Messages are gathered until about ``bytes_per_batch`` of message values (or 10 000
    messages) are pending, so each yielded batch holds many DAQ rows.

    Raises:
        TimeoutError: no new message arrived for ``stall_timeout_s`` while offsets were
            still missing (Spark then retries the task).
        RuntimeError: a fatal consumer error.
    """
    from confluent_kafka import KafkaError, TopicPartition

    from dtmon.kafka import _rate_limited

    servers = clients.config.bootstrap_servers
    wait_ms = _fetch_wait_ms.get(servers, SHORT_FETCH_WAIT_MS)

    def reader_at(offset: int):
        consumer = clients.consumer(CONSUMER_GROUP, {**_READ_ROLE, "fetch.wait.max.ms": wait_ms})
        consumer.assign([TopicPartition(rng.topic, rng.partition, offset)])
        return consumer

    stop = rng.stop
    if stop <= rng.start:  # transaction markers only
        return
    consumer = reader_at(rng.start)
    columns: dict[str, list] = {name: [] for name in MESSAGE_SCHEMA.names}
    pending_bytes = 0
    next_offset = rng.start
    last_progress = time.monotonic()

    def flush() -> pa.RecordBatch:
        batch = pa.RecordBatch.from_pydict(columns, schema=MESSAGE_SCHEMA)
        for values in columns.values():
            values.clear()
        return batch

    try:
        while next_offset < stop:
            # what is fetched already, else wait for the next message: consume(n, timeout) returns only
            # with n messages or at its timeout, and a range's offsets include transaction markers
            messages = consumer.consume(min(stop - next_offset, 1000), timeout=0) or consumer.consume(1, timeout=1.0)
            for msg in messages:
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        if msg.offset() >= stop:  # the range ends in transaction markers: nothing left to read
                            next_offset = stop
                        continue
                    if err.fatal():
                        raise RuntimeError(f"Kafka error reading {rng}: {err}")
                    _rate_limited(log, logging.WARNING, f"Kafka error reading {rng.topic}/{rng.partition}: {err.str()}")
                    if err.code() in (KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE):
                        # a restarting broker may not know the offset yet: fetch it again (never another offset)
                        time.sleep(0.5)
                        consumer.assign([TopicPartition(rng.topic, rng.partition, next_offset)])
                    continue
                if msg.offset() >= stop:
                    next_offset = stop
                    break
                if msg.offset() < next_offset:  # never read an offset twice
                    continue
                next_offset = msg.offset() + 1
                headers = header_dict(msg.headers())
                value = msg.value() or b""
                columns["topic"].append(rng.topic)
                columns["partition"].append(rng.partition)
                columns["offset"].append(msg.offset())
                columns["produced_ms"].append(msg.timestamp()[1])
                columns["content_type"].append(headers.get(HEADER_CONTENT_TYPE))
                columns["synthetic"].append(headers.get(HEADER_SYNTHETIC) == "1")
                columns["run"].append(parse_run(headers.get(HEADER_RUN)))
                columns["value"].append(value)
                pending_bytes += len(value)
                last_progress = time.monotonic()
                if pending_bytes >= bytes_per_batch or len(columns["value"]) >= 10_000:
                    yield flush()
                    pending_bytes = 0
            if wait_ms < LONG_FETCH_WAIT_MS and time.monotonic() - last_progress > SHORT_WAIT_STALL_S:
                wait_ms = _fetch_wait_ms[servers] = LONG_FETCH_WAIT_MS
                log.warning("no message for %g s at offset %d of %s with %d-ms fetches: reading %s with "
                            "librdkafka's default fetch wait (%d ms) from now on", SHORT_WAIT_STALL_S, next_offset, rng,
                            SHORT_FETCH_WAIT_MS, servers, LONG_FETCH_WAIT_MS)  # fmt: skip
                consumer.close()
                consumer = reader_at(next_offset)
            if time.monotonic() - last_progress > stall_timeout_s:
                raise TimeoutError(f"no message for {stall_timeout_s} s at offset {next_offset} of {rng}")
        if columns["value"]:
            yield flush()
    finally:
        consumer.close()


def check_not_behind(start: Offsets, latest: Offsets) -> None:
    """Raise if a partition now ends before the query's position in it (the topic was deleted and
    recreated while the query ran): reading on would skip the new rows up to the old position.

    Raises:
        KafkaSetupError: one line naming the partition, both offsets and what to do.
    """
    for topic, parts in latest.items():
        for part, end in parts.items():
            at = start.get(topic, {}).get(part)
            if at is not None and end < at:
                from dtmon.kafka import KafkaSetupError

                raise KafkaSetupError(
                    f"raw topic {topic}/{part} now ends at offset {end:,}, before the query's position {at:,} "
                    "(the topic was recreated?): restart the processor with --reset-checkpoint"
                )


class KafkaStreamReader(DataSourceStreamReader):
    """Driver-side planning of micro-batches over Kafka partitions (see module docstring)."""

    clients_cls: type[KafkaClients] | None = None
    """Makes the Kafka clients (None: ``dtmon.kafka.KafkaClients``); tests put a subclass with doubles here
    (``tests/doubles``)."""

    def __init__(self, options: dict[str, str]):
        opts = {k.lower(): v for k, v in options.items()}
        self._options = opts
        self._clients: KafkaClients | None = None
        self.topics = [t.strip() for t in opts.get("subscribe", "").split(",") if t.strip()]
        if not self.topics:
            raise ValueError("option 'subscribe' (topic names) is required")
        self.starting = opts.get("startingoffsets", "latest")
        self.max_per_trigger = int(opts["maxoffsetspertrigger"]) if opts.get("maxoffsetspertrigger") else None
        self.min_partitions = int(opts.get("minpartitions", "1"))
        self.grace_s = float(opts.get("brokergraces", "60"))
        self._probe = None
        self._known_end: dict[tuple[str, int], int] = {}
        self._tails: dict[tuple[str, int], tuple[int, int]] = {}  # (end, last message before it), by the last probe
        self._first_batch = True  # the next micro-batch with data is this reader's first (FIRST_BATCH_MAX_OFFSETS)

    @property
    def clients(self) -> KafkaClients:
        """The Kafka clients of the ``kafka.*`` options, made on first use (``config_from_options``).

        Raises:
            pydantic.ValidationError: an option's value is not valid.
        """
        if self._clients is None:
            make = self.clients_cls
            if make is None:
                from dtmon.kafka import KafkaClients as make
            self._clients = make(config_from_options(self._options))
        return self._clients

    # -- Kafka look-ups (driver) ------------------------------------------------
    def _consumer(self):
        if self._probe is None:
            self._probe = self.clients.consumer(CONSUMER_GROUP, _READ_ROLE)
        return self._probe

    def _partitions(self) -> dict[str, list[int]]:
        metadata = self._consumer().list_topics(timeout=10)
        found = {}
        for topic in self.topics:
            meta = metadata.topics.get(topic)
            found[topic] = sorted(meta.partitions) if meta is not None and meta.error is None else []
        return found

    def _end_offsets(self, timeout_s: float = 10.0) -> Offsets:
        """True log end offset of every partition (``dtmon.kafka.KafkaClients.end_offsets``).

        Each probe uses a fresh consumer: librdkafka reports PARTITION_EOF only once per
        offset, so a long-lived consumer would wait out ``timeout_s`` whenever no message
        arrived since the previous call.
        """
        from confluent_kafka import TopicPartition

        consumer = self._consumer()
        positions, highs = {}, {}
        for topic, parts in self._partitions().items():
            for p in parts:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
                # from one before the last message (the last offset is usually a transaction marker), so the
                # probe also sees the last message before the end (``EndProbe.tails``)
                positions[(topic, p)] = max(low, high - TAIL_PROBE_OFFSETS, self._known_end.get((topic, p), 0))
                highs[(topic, p)] = max(high, 0)
        if not positions:
            return {t: {} for t in self.topics}
        ends, unanswered, tails = self.clients.end_offsets(positions, timeout_s, CONSUMER_GROUP)
        self._tails.update(tails)
        # no answer from beyond the high watermark (Tansu stays silent where Kafka says out of range): read the
        # end from the watermark; an end before the one seen earlier means the topic was recreated
        doubtful = {key: max(highs[key] - 1, 0) for key in unanswered if highs[key] < positions[key]}
        doubtful.update({key: max(highs[key] - 1, 0) for key in set(positions) - set(ends) - unanswered})
        if doubtful:
            rechecked = self.clients.end_offsets(doubtful, min(timeout_s, 3.0), CONSUMER_GROUP).ends
            for key, end in rechecked.items():
                if end < positions[key]:
                    from dtmon.kafka import KafkaSetupError

                    raise KafkaSetupError(
                        f"raw topic {key[0]}/{key[1]} now ends at offset {end:,}, before offset {positions[key]:,} seen "
                        "earlier (the topic was recreated?): restart the processor with --reset-checkpoint"
                    )
        for key, end in ends.items():
            self._known_end[key] = max(self._known_end.get(key, 0), end)
        for key in unanswered:  # no end-of-partition answer: the high watermark
            self._known_end[key] = max(self._known_end.get(key, 0), highs[key])
        if unanswered:
            log.warning("no end-of-partition answer for %s; using watermarks", sorted(unanswered))
        return {t: {str(p): self._known_end[(t, p)] for (tt, p) in self._known_end if tt == t} for t in self.topics}

    def _start_offsets(self) -> Offsets:
        from confluent_kafka import TopicPartition

        if self.starting == "latest":
            return self._end_offsets()
        if self.starting == "earliest":
            consumer = self._consumer()
            out: Offsets = {}
            for topic, parts in self._partitions().items():
                out[topic] = {}
                for p in parts:
                    low, _ = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
                    out[topic][str(p)] = max(low, 0)
            return out
        try:
            return {t: {str(p): int(o) for p, o in parts.items()} for t, parts in json.loads(self.starting).items()}
        except (ValueError, AttributeError) as exc:
            raise ValueError(f"startingOffsets must be earliest, latest or JSON, got {self.starting!r}") from exc

    # -- DataSourceStreamReader API ---------------------------------------------
    def initialOffset(self) -> dict:
        return self._start_offsets()

    def getDefaultReadLimit(self) -> ReadLimit:
        return ReadMaxRows(self.max_per_trigger) if self.max_per_trigger else ReadAllAvailable()

    def latestOffset(self, start: dict, limit: ReadLimit) -> dict:
        from confluent_kafka import KafkaException

        from dtmon.kafka import _CONNECTION_ERRORS, KafkaSetupError, _rate_limited, connection_watch

        try:
            latest = self._end_offsets()
        except KafkaException as exc:  # no new micro-batch until the broker (or the topic's metadata) is back
            err = exc.args[0]
            if err.name() not in _CONNECTION_ERRORS:  # e.g. a partition unknown while a topic is recreated
                _rate_limited(log, logging.WARNING, f"no offsets for {self.topics} yet: {err.str()}")
                return start
            watch = connection_watch(self.clients.config.bootstrap_servers)
            watch.lost(err.str())
            if watch.down_for() > self.grace_s:
                raise KafkaSetupError(
                    f"Kafka at {watch.where} unreachable for {watch.down_for():.0f} s "
                    f"(grace period broker_grace_s = {self.grace_s:g} s): stopping the query"
                ) from None
            return start
        check_not_behind(start, latest)
        for topic in latest:  # never step back behind the committed start
            for part, off in start.get(topic, {}).items():
                latest[topic][part] = max(latest[topic].get(part, off), off)
        if isinstance(limit, ReadMaxRows):
            latest = cap_offsets(start, latest, limit.max_rows)
        if self._first_batch and latest != start:  # a short first micro-batch: plotted sooner after a start
            self._first_batch = False
            latest = cap_offsets(start, latest, FIRST_BATCH_MAX_OFFSETS)
        return latest

    def reportLatestOffset(self) -> dict | None:
        return {t: {str(p): o for (tt, p), o in self._known_end.items() if tt == t} for t in self.topics}

    def partitions(self, start: dict, end: dict) -> list[KafkaRange]:
        return with_tails(plan_ranges(start, end, self.min_partitions, MIN_SLICE_OFFSETS), self._tails)

    def read(self, partition: KafkaRange) -> Iterator[pa.RecordBatch]:
        return read_range(self.clients, partition, stall_timeout_s=max(60.0, self.grace_s))

    def commit(self, end: dict) -> None:
        """Record the processed offsets in consumer group ``CONSUMER_GROUP`` so tools can show consumer lag."""
        from confluent_kafka import KafkaException, TopicPartition

        offsets = [TopicPartition(t, int(p), o) for t, parts in end.items() for p, o in parts.items()]
        if not offsets:
            return
        try:
            self._consumer().commit(offsets=offsets, asynchronous=True)  # for monitoring only: never wait
        except KafkaException as exc:
            log.info("could not commit offsets for consumer-lag monitoring: %s", exc)

    def stop(self) -> None:
        if self._probe is not None:
            self._probe.close()
            self._probe = None


class KafkaDataSource(DataSource):
    """``spark.readStream.format("dtmon-kafka")``: the raw Kafka topic, one row per message (``MESSAGE_SCHEMA``)."""

    @classmethod
    def name(cls) -> str:
        return SOURCE_NAME

    def schema(self) -> str:
        return SPARK_SCHEMA

    def streamReader(self, schema) -> KafkaStreamReader:
        return KafkaStreamReader(self.options)
