"""Where the producer stands in its source, kept in the raw topic itself.

Every message the producer sends (data and run markers) carries a header
``dtmon-position``: a small JSON document with the source it reads, a sequence number
``seq`` (one per message, increasing across restarts) and the state *after* that message:
pass over the source, file, next row and line of that file, rows sent, the run in
progress and, for a run marker, how many of its per-partition copies are out.

On start the producer reads the tail of every raw-topic partition (``read_position``)
and continues after the newest message of its source, the one with the highest
``seq``; so a producer killed with ``kill -9`` resumes after the last row that reached
the topic, sends no second run-start for a run it had begun, and ends that run when it
finishes. Like Kafka Connect's source offsets, only the log decides: the position is
read with the same isolation the consumers use (``read_committed``), after the new
producer has fenced the old one (``init_transactions``), so what the producer believes
was sent is exactly what the consumers read:

* on Kafka, data and positions are written in transactions: a killed producer's open
  transaction is aborted, its messages are hidden from read_committed readers, and the
  restarted producer (which does not see them either) sends those rows again;
* on Tansu 0.6 (measured): ``init_transactions`` aborts the open transaction but
  fetches still return its messages to every reader; the restarted producer sees them
  too and continues after them.

Pure parts (``Position``, ``encode_position``, ``decode_position``) are separate from the
one I/O function ``read_position``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass, replace

from dtmon.kafka import KafkaClients, KafkaConfig

log = logging.getLogger("producer")

POSITION_HEADER = "dtmon-position"
"""Kafka header with the producer's position after the message (JSON, ``encode_position``)."""

TAIL_MESSAGES = 64
"""Messages read back from the end of each partition first (doubled until a position is found)."""

SCAN_LIMIT = 20_000
"""Most messages read back per partition looking for a position; beyond, the source is taken as new."""


@dataclass(frozen=True)
class Position:
    """The producer's state after one message (all counts in DAQ rows).

    Attributes:
        source: identity of the source (``source_identity``).
        seq: sequence number of the message that carries it (0, 1, ...; per source).
        passes: pass over the source, from 1 (> 1 with ``--loop``).
        file: name of the file of the latest data row sent ("" before any).
        next_row: 0-based data row of ``file`` to send next (= rows of it sent).
        next_line: 1-based line of the next row in ``file`` (for people; 0 when unknown).
        rows: DAQ rows sent since the producer (re)started from the first file.
        run: run in progress (begun, not ended), or None.
        run_rows: rows sent in ``run`` so far.
        run_file: file of ``run``'s latest data (the run-end marker's ``file``).
        control: for a run marker: ``{"event", "run", "file", "rows", "sent", "of"}``
            (``sent`` of ``of`` partition copies out); None for data messages.
    """

    source: str
    seq: int = -1
    passes: int = 1
    file: str = ""
    next_row: int = 0
    next_line: int = 0
    rows: int = 0
    run: int | None = None
    run_rows: int = 0
    run_file: str = ""
    control: dict | None = None

    def describe(self) -> str:
        """One line for the log: file, line, run."""
        where = f"{self.file} row {self.next_row:,} (line {self.next_line:,})" if self.file else "the first file"
        run = f"run {self.run} open ({self.run_rows:,} rows)" if self.run is not None else "no run open"
        return f"pass {self.passes}, after {where}, {self.rows:,} rows sent, {run}"


def source_identity(source_url: str) -> str:
    """The identity of a source in positions: its URL or absolute path, as listed."""
    return source_url


def transactional_id(topic: str, source: str) -> str:
    """Kafka ``transactional.id`` of the producer of ``source`` on ``topic``.

    Stable across restarts (a restarted producer fences the one it replaces); different
    for another source or topic. ``dtmon-producer-<16 hex digits of sha1(topic, source)>``.
    """
    digest = hashlib.sha1(f"{topic}\0{source}".encode()).hexdigest()[:16]
    return f"dtmon-producer-{digest}"


def encode_position(position: Position) -> bytes:
    """The ``dtmon-position`` header value: compact JSON of every ``Position`` field."""
    return json.dumps(asdict(position), separators=(",", ":")).encode()


def decode_position(value: bytes | str | None) -> Position | None:
    """A ``Position`` from a header value; None if missing or not a position document."""
    if value is None:
        return None
    try:
        doc = json.loads(value)
        position = Position(**doc)
    except (ValueError, TypeError):
        return None
    if not isinstance(position.seq, int) or not isinstance(position.next_row, int) or position.next_row < 0:
        return None
    return position


def newest(positions, source: str) -> Position | None:
    """The position of ``source`` with the highest ``seq`` among ``positions`` (Nones skipped)."""
    best = None
    for p in positions:
        if p is not None and p.source == source and (best is None or p.seq > best.seq):
            best = p
    return best


def advanced(position: Position, **changes) -> Position:
    """``position`` with ``changes`` applied and ``seq`` + 1 (the next message's position)."""
    return replace(position, seq=position.seq + 1, **changes)


def _read_tails(consumer, topic: str, starts: dict[int, int], timeout_s: float) -> dict[int, list]:
    """``dtmon-position`` header values of partitions ``starts`` (partition -> first offset) up to their ends.

    Raises:
        TimeoutError: a partition gave no end-of-partition event within ``timeout_s``.
    """
    from confluent_kafka import KafkaError, TopicPartition

    consumer.assign([TopicPartition(topic, p, offset) for p, offset in starts.items()])
    found: dict[int, list] = {p: [] for p in starts}
    waiting = set(starts)
    deadline = time.monotonic() + timeout_s
    while waiting:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no end of {topic} partitions {sorted(waiting)} within {timeout_s} s while reading the producer position")
        msg = consumer.poll(0.2)
        if msg is None:
            continue
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                waiting.discard(msg.partition())
            elif err.fatal():
                raise RuntimeError(f"reading {topic}/{msg.partition()}: {err}")
            continue
        found[msg.partition()].extend(value for key, value in msg.headers() or [] if key == POSITION_HEADER)
    consumer.unassign()
    return found


def read_position(kafka: KafkaConfig | str, topic: str, source: str, timeout_s: float = 30.0) -> Position | None:
    """The newest position of ``source`` in ``topic``, read back from each partition's end.

    Reads the last ``TAIL_MESSAGES`` messages of each partition with
    ``isolation.level=read_committed``, doubling the stretch until a position of
    ``source`` turns up, the partition's start is reached or ``SCAN_LIMIT`` messages
    were read; all partitions are read at once. The end is found with end-of-partition events (Tansu's ListOffsets answer
    may stop short of it).

    Args:
        kafka: the Kafka client configuration (or a bootstrap-servers string).
        topic: the raw topic.
        source: ``source_identity`` of the source.
        timeout_s: s allowed per partition stretch.
    Returns:
        The position with the highest ``seq``, or None when the topic holds none of ``source``.
    Raises:
        TimeoutError: a partition did not answer its end within ``timeout_s``.
    """
    from confluent_kafka import TopicPartition

    consumer = KafkaClients(kafka).consumer(
        f"dtmon-producer-position-{uuid.uuid4().hex[:8]}",  # never joined: assign() only
        {
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
            "fetch.wait.max.ms": 10,  # the tail is short: do not wait for more data at the end
        },
    )
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if meta is None or meta.error is not None:
            return None
        bounds = {}
        for partition in sorted(meta.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s, cached=False)
            bounds[partition] = (max(low, 0), max(high, 0))
        candidates = []
        window = TAIL_MESSAGES
        pending = set(bounds)
        while pending:
            starts = {p: max(bounds[p][0], bounds[p][1] - window) for p in pending}
            for partition, values in _read_tails(consumer, topic, starts, timeout_s).items():
                best = newest((decode_position(v) for v in values), source)
                if best is not None or starts[partition] <= bounds[partition][0]:
                    pending.discard(partition)
                    candidates += [best] if best is not None else []
            if pending and window >= SCAN_LIMIT:
                log.warning("no position of %s in the last %d messages of %s partitions %s: taken as not sent there",
                            source, window, topic, sorted(pending))
                break
            window *= 2
        return newest(candidates, source)
    finally:
        consumer.close()
