"""A Kafka streaming source for Spark, written with Spark's Python Data Source API.

Spark's built-in ``kafka`` format needs the spark-sql-kafka connector jars, which cannot
be installed here (``../shared/docs/platform-notes.md``), so dtmon reads Kafka with
confluent-kafka inside a ``pyspark.sql.datasource.DataSourceStreamReader``. It behaves
like the built-in source where it matters:

* options ``kafka.bootstrap.servers``, ``subscribe`` (comma-separated topics),
  ``startingOffsets`` (``earliest``, ``latest`` or a JSON offset document),
  ``maxOffsetsPerTrigger`` and ``minPartitions``;
* the stream offset is ``{"topic": {"partition": next_offset}}`` per partition, so a
  query restarted from its checkpoint resumes exactly where it stopped;
* partitions that appear later are read from their start.

Like the built-in source it yields **one row per Kafka message** (``MESSAGE_SCHEMA``):
topic, partition, offset, Kafka timestamp, the ``content-type``, ``dtmon-synthetic`` and
``dtmon-run`` headers, and the value bytes. The value is decoded downstream
(``decode_messages``, called by ``processor.histograms`` inside the micro-batch's first
Spark stage) straight into Arrow record batches of DAQ rows (``OUTPUT_SCHEMA``): a
message carries ~10 000 DAQ rows, so the JVM handles one row per message, never one per
hit. A message that cannot be decoded becomes one all-null DAQ row (a malformed row,
counted downstream), never a failed task.

Run markers: at each run start and end the producer sends a control message (header
``content-type: application/vnd.dtmon.control+json``, header ``dtmon-run``, value
``{"event": "run-start"|"run-end", "run": N, "file": ..., "rows": n}``). ``decode_records``
turns it into one row with every DAQ column null, ``run`` = N and ``run_event`` = 1
(start) or 2 (end); data rows have ``run_event`` = 0. A malformed row is one with HEAD
null and run_event 0.

Log end offsets: on real Kafka, ListOffsets(latest) is the log end. Tansu 0.6 answers the
last record batch's base offset + 1 instead, so the end is confirmed by reading from
there to the PARTITION_EOF event, which is cheap (at most one record batch) and also
correct on real Kafka.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql.datasource import DataSource, DataSourceStreamReader, InputPartition
from pyspark.sql.streaming.datasource import ReadAllAvailable, ReadLimit, ReadMaxRows

from dtmon.hits import HIT_SCHEMA, DecodeError, decode_csv
from dtmon.validation import MessageRejected, sanitize_rows
from dtmon.wire import CONTENT_TYPE_CONTROL, CONTENT_TYPE_CSV, decode_message, header_dict

log = logging.getLogger(__name__)

SOURCE_NAME = "dtmon-kafka"

MESSAGE_SCHEMA = pa.schema(
    [
        pa.field("topic", pa.string()),
        pa.field("partition", pa.int32()),
        pa.field("offset", pa.int64()),
        pa.field("produced_ms", pa.int64()),
        pa.field("content_type", pa.string()),
        pa.field("synthetic", pa.bool_()),
        pa.field("run", pa.int32()),
        pa.field("value", pa.binary()),
    ]
)
"""Rows the source yields, one per Kafka message: where it sits, its Kafka timestamp in ms
since the epoch, its ``content-type`` header, whether it holds synthetic rows
(``dtmon-synthetic: 1``), its run (``dtmon-run``, null without the header or when it is
not an integer >= 0) and the value bytes."""

SPARK_SCHEMA = (
    "topic string, partition int, offset bigint, produced_ms bigint, content_type string, synthetic boolean, "
    "run int, value binary"
)
"""``MESSAGE_SCHEMA`` as a Spark DDL string (the source's schema)."""

OUTPUT_SCHEMA = pa.schema(
    list(HIT_SCHEMA)
    + [
        pa.field("produced_ms", pa.int64()),
        pa.field("synthetic", pa.bool_()),
        pa.field("run", pa.int32()),
        pa.field("run_event", pa.int8()),
    ]
)
"""DAQ rows decoded from messages (``decode_records``): the DAQ columns
(``dtmon.hits.HIT_SCHEMA``), the Kafka timestamp of the message each row came in (ms since
the epoch), the synthetic flag, the run and the run event (``RUN_DATA``, ``RUN_START``,
``RUN_END``)."""

RUN_DATA, RUN_START, RUN_END = 0, 1, 2
RUN_EVENTS = {"run-start": RUN_START, "run-end": RUN_END}

Offsets = dict[str, dict[str, int]]


@dataclass(frozen=True)
class KafkaRange(InputPartition):
    """Offsets ``[start, end)`` of one topic partition, read by one Spark task."""

    topic: str
    partition: int
    start: int
    end: int


def _consumer_config(bootstrap: str, group: str = "dtmon-processor") -> dict:
    return {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "error",  # never jump to another offset silently: planned offsets are exact
        "isolation.level": "read_committed",  # the producer writes in transactions (producer.position)
        "fetch.max.bytes": 64 << 20,
        "max.partition.fetch.bytes": 16 << 20,
        "socket.timeout.ms": 10000,
    }


def plan_ranges(start: Offsets, end: Offsets, min_partitions: int = 1) -> list[KafkaRange]:
    """Split the offsets between two stream offsets into Spark input partitions.

    One range per topic partition with new data; when there are fewer ranges than
    ``min_partitions``, the largest are split into equal offset slices (as the built-in
    source's ``minPartitions`` does).

    Args:
        start, end: stream offsets ``{topic: {partition: offset}}``; a partition missing
            from ``start`` starts at 0.
        min_partitions: least number of ranges wanted.
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
        if biggest.end - biggest.start < 2:
            break
        pieces = min(min_partitions - len(ranges) + 1, biggest.end - biggest.start)
        bounds = np.linspace(biggest.start, biggest.end, pieces + 1).round().astype(int)
        ranges.remove(biggest)
        ranges += [KafkaRange(biggest.topic, biggest.partition, int(a), int(b)) for a, b in zip(bounds, bounds[1:])]
        ranges.sort(key=lambda r: (r.topic, r.partition, r.start))
    return ranges


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


def parse_run(header: str | None) -> int | None:
    """The run number of a ``dtmon-run`` header value; None if missing or not an integer >= 0."""
    if header is None:
        return None
    try:
        run = int(header)
    except ValueError:
        log.error("dtmon-run header %r is not an integer: rows get no run", header)
        return None
    return run if 0 <= run < 2**31 else None


def parse_control(value: bytes, header_run: int | None) -> tuple[int | None, int]:
    """Run number and event code (``RUN_START``/``RUN_END``) of a control message.

    The run comes from the JSON ``run`` field, else from the ``dtmon-run`` header.

    Raises:
        DecodeError: the value is not a JSON object with ``event`` run-start or run-end,
            or its run is not an integer >= 0.
    """
    try:
        doc = json.loads(value)
        event = RUN_EVENTS[doc["event"]]
        run = doc.get("run", header_run)
    except (ValueError, TypeError, KeyError) as exc:
        raise DecodeError(f"bad control message {value[:200]!r}: {exc!r}") from exc
    if run is not None and (not isinstance(run, int) or isinstance(run, bool) or not 0 <= run < 2**31):
        raise DecodeError(f"bad run {run!r} in control message")
    return run, event


def decode_records(
    values: list[bytes],
    content_types: list[str | None],
    timestamps_ms: list[int],
    synthetic: list[bool],
    runs: list[int | None] | None = None,
    origins: list[str] | None = None,
    rejected: Counter | None = None,
) -> pa.RecordBatch:
    """Decode raw-topic message values into one record batch with ``OUTPUT_SCHEMA``.

    Consecutive ``text/csv`` messages (one CSV line each, the peers' design) are decoded
    together. A message that cannot be decoded gives one all-null row (malformed); a
    control message gives one all-null row with ``run`` and ``run_event`` set.

    Args:
        values, content_types, timestamps_ms, synthetic: per message, length M.
        runs: per message, the ``dtmon-run`` header as an int (None: no header); default all None.
        origins: per message, where it came from (e.g. ``topic/partition@offset``), for the log.
        rejected: if given, gets the rows rejected per reason (``dtmon.validation``: they
            become malformed rows) and ``rejected message: <reason>`` per refused message.
    Returns:
        record batch of N rows (N = rows in all messages, + 1 per undecodable or control message).
    """
    no_run = -1  # stands for null until the Arrow column is built
    runs = [no_run] * len(values) if runs is None else [no_run if r is None else r for r in runs]
    tables: list[pa.Table] = []
    extra: list[tuple] = []  # per table: produced_ms, synthetic, run, run_event (scalars or per-row lists)

    def add(table: pa.Table, ts, syn, run, event: int = RUN_DATA) -> None:
        tables.append(table)
        extra.append((ts, syn, run, event))

    i = 0
    while i < len(values):
        if content_types[i] == CONTENT_TYPE_CSV:
            j = i
            while j < len(values) and content_types[j] == CONTENT_TYPE_CSV:
                j += 1
            chunk = [v if v.endswith(b"\n") else v + b"\n" for v in values[i:j]]
            table, reasons = sanitize_rows(decode_csv(b"".join(chunk)).table)
            _count_rejected(reasons, rejected, origins[i] if origins else f"#{i} of the batch")
            if table.num_rows == j - i:
                add(table, timestamps_ms[i:j], synthetic[i:j], runs[i:j])
            else:  # multi-line CSV messages: the block's first message stamps every row
                add(table, timestamps_ms[i], synthetic[i], runs[i])
            i = j
            continue
        try:
            if content_types[i] == CONTENT_TYPE_CONTROL:
                run, event = parse_control(values[i], None if runs[i] == no_run else runs[i])
                add(_null_row(), timestamps_ms[i], synthetic[i], no_run if run is None else run, event)
            else:
                reasons: Counter = Counter()
                add(decode_message(values[i], content_types[i], rejected=reasons), timestamps_ms[i], synthetic[i], runs[i])
                _count_rejected(reasons, rejected, origins[i] if origins else f"#{i} of the batch")
        except DecodeError as exc:
            where = origins[i] if origins else f"#{i} of the batch"
            if rejected is not None:
                rejected[f"rejected message: {exc.reason if isinstance(exc, MessageRejected) else 'undecodable'}"] += 1
            log.error("undecodable raw message %s (%s): counted as one malformed row", where, exc)
            add(_null_row(), timestamps_ms[i], synthetic[i], runs[i])
        i += 1
    if not tables:
        return pa.RecordBatch.from_pylist([], OUTPUT_SCHEMA)
    rows = pa.concat_tables(tables).combine_chunks()
    sizes = [t.num_rows for t in tables]

    def column(k: int, dtype) -> np.ndarray:
        return np.concatenate([np.broadcast_to(np.asarray(e[k], dtype), (n,)) for e, n in zip(extra, sizes)])

    run = column(2, np.int64)
    columns = [c.combine_chunks() for c in rows.columns] + [
        pa.array(column(0, np.int64)),
        pa.array(column(1, bool)),
        pa.array(run, type=pa.int32(), mask=run == no_run),
        pa.array(column(3, np.int8)),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=OUTPUT_SCHEMA)


def _count_rejected(reasons: Counter, rejected: Counter | None, where: str) -> None:
    """Log the rows of one message that failed validation (one line) and add them to ``rejected``."""
    if reasons:
        log.error("raw message %s: %d row(s) rejected, counted as malformed: %s", where, sum(reasons.values()), dict(reasons))
        if rejected is not None:
            rejected.update(reasons)


def _null_row() -> pa.Table:
    return pa.Table.from_pylist([{}], HIT_SCHEMA)


def decode_messages(messages: pa.RecordBatch | pa.Table) -> pa.RecordBatch:
    """Decode a batch of source rows (``MESSAGE_SCHEMA``) into DAQ rows (``OUTPUT_SCHEMA``).

    ``decode_records`` on the message columns; an undecodable message is logged with its
    topic, partition and offset and becomes one malformed row.
    """
    cols = {name: messages.column(name).to_pylist() for name in MESSAGE_SCHEMA.names}
    return decode_records(
        [v or b"" for v in cols["value"]],
        cols["content_type"],
        [0 if t is None else t for t in cols["produced_ms"]],
        [bool(x) for x in cols["synthetic"]],
        cols["run"],
        [f"{t}/{p}@{o}" for t, p, o in zip(cols["topic"], cols["partition"], cols["offset"])],
    )


def read_range(
    bootstrap: str, rng: KafkaRange, bytes_per_batch: int = 16 << 20, stall_timeout_s: float = 60.0
) -> Iterator[pa.RecordBatch]:
    """Read offsets ``[rng.start, rng.end)`` of one partition as record batches of messages (``MESSAGE_SCHEMA``).

    Messages are gathered until about ``bytes_per_batch`` of message values (or 10 000
    messages) are pending, so each yielded batch holds many DAQ rows.

    Raises:
        TimeoutError: no new message arrived for ``stall_timeout_s`` while offsets were
            still missing (Spark then retries the task).
        RuntimeError: a fatal consumer error.
    """
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    consumer = Consumer(_consumer_config(bootstrap))
    consumer.assign([TopicPartition(rng.topic, rng.partition, rng.start)])
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
        while next_offset < rng.end:
            messages = consumer.consume(min(rng.end - next_offset, 1000), timeout=1.0)
            for msg in messages:
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        if msg.offset() >= rng.end:  # the range ends in transaction markers: nothing left to read
                            next_offset = rng.end
                        continue
                    if err.fatal():
                        raise RuntimeError(f"Kafka error reading {rng}: {err}")
                    log.warning("Kafka error reading %s: %s", rng, err)
                    continue
                if msg.offset() >= rng.end:
                    next_offset = rng.end
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
                columns["content_type"].append(headers.get("content-type"))
                columns["synthetic"].append(headers.get("dtmon-synthetic") == "1")
                columns["run"].append(parse_run(headers.get("dtmon-run")))
                columns["value"].append(value)
                pending_bytes += len(value)
                last_progress = time.monotonic()
                if pending_bytes >= bytes_per_batch or len(columns["value"]) >= 10_000:
                    yield flush()
                    pending_bytes = 0
            if time.monotonic() - last_progress > stall_timeout_s:
                raise TimeoutError(f"no message for {stall_timeout_s} s at offset {next_offset} of {rng}")
        if columns["value"]:
            yield flush()
    finally:
        consumer.close()


class KafkaStreamReader(DataSourceStreamReader):
    """Driver-side planning of micro-batches over Kafka partitions (see module docstring)."""

    def __init__(self, options: dict[str, str]):
        opts = {k.lower(): v for k, v in options.items()}
        self.bootstrap = opts.get("kafka.bootstrap.servers") or "127.0.0.1:9092"
        self.topics = [t.strip() for t in opts.get("subscribe", "").split(",") if t.strip()]
        if not self.topics:
            raise ValueError("option 'subscribe' (topic names) is required")
        self.starting = opts.get("startingoffsets", "latest")
        self.max_per_trigger = int(opts["maxoffsetspertrigger"]) if opts.get("maxoffsetspertrigger") else None
        self.min_partitions = int(opts.get("minpartitions", "1"))
        self._probe = None
        self._known_end: dict[tuple[str, int], int] = {}

    # -- Kafka look-ups (driver) ------------------------------------------------
    def _consumer(self):
        if self._probe is None:
            from confluent_kafka import Consumer

            self._probe = Consumer(_consumer_config(self.bootstrap))
        return self._probe

    def _partitions(self, consumer=None) -> dict[str, list[int]]:
        metadata = (consumer or self._consumer()).list_topics(timeout=10)
        found = {}
        for topic in self.topics:
            meta = metadata.topics.get(topic)
            found[topic] = sorted(meta.partitions) if meta is not None and meta.error is None else []
        return found

    def _end_offsets(self, timeout_s: float = 10.0) -> Offsets:
        """True log end offset of every partition (see module docstring).

        Each call uses a fresh consumer: librdkafka reports PARTITION_EOF only once per
        offset, so a long-lived consumer would wait out ``timeout_s`` whenever no message
        arrived since the previous call.
        """
        from confluent_kafka import Consumer, KafkaError, TopicPartition

        # the broker answers a fetch at the log end after fetch.wait.max.ms (default 500 ms)
        consumer = Consumer({**_consumer_config(self.bootstrap), "fetch.wait.max.ms": 5})
        try:
            positions = []
            for topic, parts in self._partitions(consumer).items():
                for p in parts:
                    low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
                    start = max(low, high - 1, self._known_end.get((topic, p), 0))
                    positions.append(TopicPartition(topic, p, start))
                    self._known_end[(topic, p)] = max(self._known_end.get((topic, p), 0), high if high >= 0 else 0)
            if not positions:
                return {t: {} for t in self.topics}
            consumer.assign(positions)
            waiting = {(tp.topic, tp.partition) for tp in positions}
            deadline = time.monotonic() + timeout_s
            starts = {(tp.topic, tp.partition): tp.offset for tp in positions}
            while waiting and time.monotonic() < deadline:
                msg = consumer.poll(0.5)  # one event at a time: consume(n) would wait out its timeout
                if msg is None:
                    continue
                key = (msg.topic(), msg.partition())
                err = msg.error()
                if err is None:
                    self._known_end[key] = max(self._known_end.get(key, 0), msg.offset() + 1)
                elif err.code() == KafkaError._PARTITION_EOF:
                    self._known_end[key] = max(self._known_end.get(key, 0), msg.offset())
                    waiting.discard(key)
                elif err.code() in (KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE) and key in waiting:
                    # the broker has no offset ``start``: nothing was written there yet
                    log.warning("end-offset probe: %s at offset %s is out of range (%s)", key, starts[key], err)
                    waiting.discard(key)
            if waiting:
                log.warning("no end-of-partition answer for %s; using watermarks", sorted(waiting))
        finally:
            consumer.close()
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
        latest = self._end_offsets()
        for topic in latest:  # never step back behind the committed start
            for part, off in start.get(topic, {}).items():
                latest[topic][part] = max(latest[topic].get(part, off), off)
        if isinstance(limit, ReadMaxRows):
            return cap_offsets(start, latest, limit.max_rows)
        return latest

    def reportLatestOffset(self) -> dict | None:
        return {t: {str(p): o for (tt, p), o in self._known_end.items() if tt == t} for t in self.topics}

    def partitions(self, start: dict, end: dict) -> list[KafkaRange]:
        return plan_ranges(start, end, self.min_partitions)

    def read(self, partition: KafkaRange) -> Iterator[pa.RecordBatch]:
        return read_range(self.bootstrap, partition)

    def commit(self, end: dict) -> None:
        """Record the processed offsets in consumer group ``dtmon-processor`` so tools can show consumer lag."""
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
