"""The producer loop: DAQ files -> paced Kafka messages on the raw topic.

Flow: list the source's files (``producer.sources``) -> read and decode each file with
``dtmon.hits.decode_csv`` (the next file is read in a background thread while the
current one is sent) -> cut the rows into chunks (``producer.pacing.chunk_rows``) ->
encode each chunk -> wait for the chunk's due time (``producer.pacing.Pacer``) -> send
(``producer.kafka.KafkaSink``) -> repeat; with ``loop`` start again at the first file.

Wire format (``--wire``; the protocol is described in ``dtmon.wire``): ``arrow``
(default; one Arrow IPC stream of up to ``rows_per_message`` rows per message, Kafka-level
compression then off) or ``csv-line`` (one DAQ CSV line per message, for the benchmark
comparison).

Headers and run markers follow the raw-topic protocol (``dtmon.wire``); which file
belongs to which run: ``producer.runs``. The run markers go to EVERY partition of the raw
topic: data messages are spread over the partitions, so each partition then reads start,
its share of the run's data, end, in that order, and a reader of any partition (or a Spark
task reading one partition range) sees where the run begins and ends. ``rows`` at run-end
is the run's total over all partitions. A run cut short by a clean stop (Ctrl-C, SIGTERM,
``max_rows``, ``duration``) or by an error gets its run-end too; only a hard abort (a
second Ctrl-C) leaves it open. Control messages are not rows: they do not count in the
rows, the pacing or ``max_rows``.

Exactly once across restarts (``producer.position``): every message carries a
``dtmon-position`` header (source, sequence number, file, next row and line, the run in
progress). On start the producer reads the newest position of its source back from the
raw topic and continues after it: a producer killed at any moment and started again
sends every row once and each run gets one run-start and one run-end; ``from_start``
starts over at the first file. With ``settings.exactly_once`` the producer is
transactional (``transactional.id`` from topic and source): messages are committed every
``settings.producer_commit_interval_s`` s and at the end, and a restarted producer fences
the killed one. Readers of the raw topic use ``isolation.level=read_committed``.

Malformed lines travel in-band as all-null rows (so nothing is silently dropped); they
are counted in ``ProducerStats.malformed_rows`` and the first few are logged with file
and line number. Messages carry rows of one file only, in file order.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

from dtmon.settings import Settings
from dtmon.wire import RunEvent, encode_control
from producer.kafka import KafkaSetupError, KafkaSink, TransactionError, ensure_topic, kafka_compression
from producer.messages import WIRE_FORMATS, LoadedFile, arrow_message, csv_line_messages, load_file
from producer.pacing import Pacer, chunk_rows
from producer.position import (
    POSITION_HEADER,
    Position,
    advanced,
    encode_position,
    read_position,
    source_identity,
    transactional_id,
)
from producer.runs import RunMarkers, run_number
from producer.sources import DaqFile, SourceError, open_source

log = logging.getLogger("producer")

MALFORMED_LOGGED = 5
"""How many malformed lines are logged one by one (all are counted)."""

COMPRESSIONS = ("zstd", "lz4", "none")
"""Arrow IPC body codecs (``settings.compression``); for csv-line, the Kafka batch codec."""

CACHE_LIMIT_BYTES = 256 * 1024 * 1024
"""With ``loop``, sources up to this many bytes are decoded once and replayed from memory."""

PREFETCH_LEAD_S = 30.0
"""Start reading the next file when the current one has less than this many s of rows left."""

IDLE_COMMIT_S = 0.01
"""With ``settings.producer_commit_when_idle``, a pacer sleep at least this long (s) commits first."""

IDLE_COMMIT_MIN_INTERVAL_S = 0.05
"""An idle commit (``IDLE_COMMIT_S``) only if the last commit is at least this old (s): at most 20 per s.
Without the bound a rate just below one message per ``IDLE_COMMIT_S`` (800 000 rows/s in 10 000-row
messages) committed every message: 35 243 commits in 10 minutes against 2 307 at 1 M rows/s, twice the
broker CPU, and the processor's end-offset probe waiting up to 7.6 s for commits (docs/performance.md)."""


@dataclass
class ProducerStats:
    """What the producer did so far (updated live; final after ``run_producer`` returns).

    Attributes:
        target_rate: asked rate in rows/s (0 = unlimited).
        rows: DAQ rows sent (malformed rows included).
        messages: Kafka data messages sent (control messages not included).
        bytes: data message value bytes sent (headers excluded).
        control_messages: run-start / run-end messages sent (one per partition each).
        runs: runs begun (run-start sent).
        run: number of the latest run begun (None before the first).
        malformed_rows: all-null rows sent in place of malformed lines.
        delivery_errors: messages the broker did not acknowledge (delivery reports).
        undelivered: messages still queued when the final flush timed out.
        files: DAQ files begun, i.e. with rows sent (a file replayed by ``loop`` counts each time).
        passes: passes over the source begun (> 1 with ``loop``).
        elapsed_s: s from the first send until now / until the final flush ended.
        startup_s: s from the call until the first send (listing the source, creating
            the topic, reading and decoding the first file); not in ``elapsed_s``.
        malformed_examples: the first few malformed lines, ``file:line: reason``.
        resumed_from: where a restarted producer continued (``Position.describe``), or None.
        commits: Kafka transactions committed (transactional producer).
    """

    target_rate: float = 0.0
    rows: int = 0
    messages: int = 0
    bytes: int = 0
    control_messages: int = 0
    runs: int = 0
    run: int | None = None
    malformed_rows: int = 0
    delivery_errors: int = 0
    undelivered: int = 0
    files: int = 0
    passes: int = 0
    elapsed_s: float = 0.0
    startup_s: float = 0.0
    malformed_examples: list[str] = field(default_factory=list)
    resumed_from: str | None = None
    commits: int = 0

    @property
    def achieved_rate(self) -> float:
        """Achieved streaming rate in rows/s: ``rows / elapsed_s`` (0 before anything was timed)."""
        return self.rows / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def overall_rate(self) -> float:
        """Rate including the start-up, in rows/s: ``rows / (startup_s + elapsed_s)``."""
        total = self.startup_s + self.elapsed_s
        return self.rows / total if total > 0 else 0.0

    def as_json(self) -> str:
        """The stats as one JSON object (every attribute, plus ``achieved_rate`` and ``overall_rate``
        in rows/s), for tools: ``producer --stats-json PATH``."""
        return json.dumps({**asdict(self), "achieved_rate": self.achieved_rate, "overall_rate": self.overall_rate})

    def summary(self) -> str:
        """One line for humans: rows, rate vs target, messages, bytes, errors."""
        target = "max" if self.target_rate == 0 else f"{self.target_rate:,.0f}"
        return (
            f"sent {self.rows:,} rows in {self.messages:,} messages ({self.bytes / 1e6:,.1f} MB) "
            f"in {self.elapsed_s:,.2f} s: {self.achieved_rate:,.0f} rows/s (target {target}); "
            f"start-up {self.startup_s:,.2f} s, {self.overall_rate:,.0f} rows/s with it; "
            f"malformed rows {self.malformed_rows:,}; delivery errors {self.delivery_errors:,}"
            + (f"; undelivered {self.undelivered:,}" if self.undelivered else "")
            + f"; runs {self.runs:,}" + (f" (last {self.run})" if self.run is not None else "")
            + (f"; resumed at {self.resumed_from}" if self.resumed_from else "")
        )


def _file_sequence(files: list[DaqFile], loop: bool, first_pass: int = 1, first_file: int = 0) -> Iterator[tuple[int, DaqFile]]:
    """(pass number from 1, file) in order, from pass ``first_pass`` at file index ``first_file``; forever with ``loop``."""
    passes = first_pass - 1
    while True:
        passes += 1
        for f in files[first_file:]:
            yield passes, f
        first_file = 0
        if not loop:
            return


class FileReader:
    """Reads and decodes the source's files in order; the next one is read ahead in a thread.

    ``next()`` returns (pass number, ``DaqFile``, ``LoadedFile``) or None at the end;
    ``peek()`` tells which file comes next (pass number, ``DaqFile``) without reading it;
    ``prefetch()`` starts reading the file after the current one (the producer calls it
    when the current file has less than ``PREFETCH_LEAD_S`` of rows left, so a slow rate
    does not decode files long before they are needed). With ``loop`` and a source of at
    most ``cache_limit`` bytes, each file is read and decoded once and replayed from memory.

    Raises (from ``next``):
        SourceError: a file cannot be read.
    """

    def __init__(
        self,
        source,
        files: list[DaqFile],
        *,
        loop: bool,
        keep_text: bool,
        cache_limit: int = CACHE_LIMIT_BYTES,
        first_pass: int = 1,
        first_file: int = 0,
    ):
        self.source = source
        self.keep_text = keep_text
        self.cache: dict[str, LoadedFile] | None = {} if loop and sum(f.size for f in files) <= cache_limit else None
        self.sequence = _file_sequence(files, loop, first_pass, first_file)
        self.upcoming: tuple[int, DaqFile] | None = next(self.sequence, None)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="producer-read")
        self.pending: Future | None = None  # the read of ``upcoming``

    def _load(self, f: DaqFile) -> LoadedFile:
        if self.cache is not None and f.location in self.cache:
            return self.cache[f.location]
        loaded = load_file(self.source.read(f), self.keep_text)
        if self.cache is not None:
            self.cache[f.location] = loaded
        return loaded

    def peek(self) -> tuple[int, DaqFile] | None:
        """(pass number, file) of the file ``next()`` will return; None at the end."""
        return self.upcoming

    def prefetch(self) -> None:
        """Start reading the next file in the background (no-op if started or at the end)."""
        if self.pending is None and self.upcoming is not None:
            self.pending = self.pool.submit(self._load, self.upcoming[1])

    def next(self) -> tuple[int, DaqFile, LoadedFile] | None:
        """The next file, waiting for its read if needed; None when there is none."""
        self.prefetch()
        if self.upcoming is None:
            return None
        (passes, daq), future = self.upcoming, self.pending
        self.upcoming, self.pending = next(self.sequence, None), None
        return passes, daq, future.result()

    def close(self) -> None:
        """Drop a pending read (a read in progress finishes in its thread)."""
        self.pool.shutdown(wait=False, cancel_futures=True)


def _encode(f: LoadedFile, start: int, n: int, wire: str, compression: str, paced: bool, run: int) -> list[tuple[bytes, list]]:
    if wire == "arrow":
        return [arrow_message(f, start, n, compression, use_threads=not paced, run=run)]
    return csv_line_messages(f, start, n, run=run)


def run_producer(
    settings: Settings,
    *,
    source: str | None = None,
    loop: bool = False,
    max_rows: int | None = None,
    duration: float | None = None,
    wire: str = "arrow",
    run: int | None = None,
    stop_event: threading.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
    progress: Callable[[ProducerStats], None] | None = None,
    progress_interval_s: float = 0.5,
    sink: KafkaSink | None = None,
    sleep: Callable[[float], bool] | None = None,
    flush_timeout_s: float = 30.0,
    from_start: bool = False,
    resume: Position | None = None,
) -> ProducerStats:
    """Stream DAQ rows from ``source`` to the raw topic at ``settings.rate`` rows/s.

    Args:
        settings: bootstrap servers, raw topic and partitions, rate (rows/s, 0 = as fast
            as possible), rows_per_message, compression, s3_endpoint_url.
        source: file, directory or ``s3://bucket/prefix``; default ``settings.source``.
        loop: start again at the first file after the last one, until stopped.
        max_rows: stop after this many rows (None = no limit).
        duration: stop after this many s (None = no limit).
        wire: ``arrow`` or ``csv-line`` (module docstring).
        run: run number of the first pass over the source (``--run``); each pass is one
            run, ``run``, ``run + 1``, ... with ``loop``. None: run numbers from the file
            paths, consecutive files with the same number are one run (``producer.runs``).
        stop_event: set it (e.g. from a signal handler) to stop cleanly.
        clock: monotonic clock in s.
        progress: called with the live stats every ``progress_interval_s`` s and at the end.
        sink: a ``KafkaSink`` to use; default: a new one (the topic is created first with
            ``settings.raw_partitions`` partitions if missing).
        sleep: ``sleep(s) -> stop requested?``; default ``stop_event.wait``.
        flush_timeout_s: s to wait for outstanding deliveries at the end.
        from_start: start at the first file even if the raw topic holds a position of
            this source (sequence numbers still continue after it).
        resume: with a given ``sink``: the position to continue after (the newest one of
            the source, as ``producer.position.read_position`` finds it); without
            ``sink`` the position is read from the raw topic.
    Returns:
        The final ``ProducerStats``.
    Raises:
        ValueError: unknown ``wire`` or ``settings.compression``; no run number for a
            file (``producer.runs.run_number``) or one outside 0 .. 2**31 - 1.
        SourceError: the source cannot be listed or a file cannot be read; the
            position's file is no longer in the source.
        KafkaSetupError: the broker is unreachable or the topic cannot be created.
        TransactionError: a transaction could not be committed (restart to resume).
    """
    if wire not in WIRE_FORMATS:
        raise ValueError(f"wire must be one of {WIRE_FORMATS}, got {wire!r}")
    if settings.compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, got {settings.compression!r}")
    stop_event = stop_event or threading.Event()
    sleep = sleep or stop_event.wait
    t_call = clock()
    src = open_source(source or settings.source, settings.s3_endpoint_url)
    files = src.list_files()

    def run_of(passes: int, daq: DaqFile) -> int:
        return run_number(daq.location, None if run is None else run + passes - 1)

    for daq in files:  # a file without a run number is refused before anything is sent
        run_of(1, daq)
    log.info("streaming %d file(s) from %s to %s", len(files), src.url, settings.raw_topic)
    source_id = source_identity(src.url)
    if sink is None:
        kafka = settings.kafka
        partitions = ensure_topic(kafka, settings.raw_topic, settings.raw_partitions, config=settings.raw_topic_config())
        sink = KafkaSink(
            kafka,
            settings.raw_topic,
            kafka_compression(wire, settings.compression),
            partitions=partitions,
            transactional_id=transactional_id(settings.raw_topic, source_id) if settings.exactly_once else None,
            grace_s=settings.broker_grace_s,
        )
        if settings.exactly_once:  # read after init_transactions fenced an earlier producer of this source
            resume = read_position(kafka, settings.raw_topic, source_id)
    partitions = sink.partition_count()
    pos = Position(source_id) if resume is None else resume
    if from_start:
        pos = Position(source_id, seq=pos.seq)
    first_file = 0
    if pos.file:
        names = [f.name for f in files]
        if pos.file not in names:
            raise SourceError(f"the producer stopped in {pos.file}, which is no longer in {src.url}: pass --from-start")
        first_file = names.index(pos.file)
        log.info("resuming %s at %s", src.url, pos.describe())
    elif pos.seq >= 0:
        log.info("starting %s at the first file%s", src.url, " (--from-start)" if from_start else "")

    chunk = chunk_rows(settings.rate, settings.rows_per_message, settings.messages_per_s)
    pacer = Pacer(settings.rate, clock)
    stats = ProducerStats(target_rate=settings.rate, resumed_from=pos.describe() if pos.file else None)
    t_start = deadline = None  # set when the first chunk is ready, after the first file is read
    last_progress = 0.0

    def report(now: float) -> None:
        stats.elapsed_s = now - t_start if t_start is not None else 0.0
        stats.delivery_errors = sink.errors.count
        if progress is not None:
            progress(stats)

    def send_control(event: RunEvent, run_no: int, file_name: str, rows: int, first_partition: int = 0) -> None:
        nonlocal pos
        value, headers = encode_control(event, run_no, file_name, rows)
        if event == RunEvent.START:  # the run begins at the row about to be sent (``here``), maybe in a new file or pass
            after = {"run": run_no, "run_rows": 0, "run_file": file_name, **here}
        else:
            after = {"run": None, "run_rows": 0, "run_file": ""}
        for partition in range(first_partition, partitions):
            control = {"event": event.wire_name, "run": run_no, "file": file_name, "rows": rows, "sent": partition + 1, "of": partitions}
            pos = advanced(pos, control=control, **after)
            sink.send(value, [*headers, (POSITION_HEADER, encode_position(pos))], partition)
        stats.control_messages += partitions - first_partition
        if event == RunEvent.START:
            stats.runs += 1
            stats.run = run_no
        log.debug("%s %d (%s, %s rows)", event.wire_name, run_no, file_name, f"{rows:,}")

    here: dict = {}  # pass, file, next row and line of the data about to be sent (set before markers.data)
    markers = RunMarkers(send_control)
    if pos.run is not None:  # a run the stopped producer began: no second run-start, its run-end comes at its end
        markers.run, markers.rows, markers.file = pos.run, pos.run_rows, pos.run_file
    first_row = pos.next_row if pos.file else 0
    stopped = False
    reader = FileReader(src, files, loop=loop, keep_text=wire == "csv-line", first_pass=pos.passes, first_file=first_file)

    last_commit = [clock()]

    def commit_if_due(wait: float = 0.0) -> None:
        """Commit the open transaction when it reaches the commit interval, or (``producer_commit_when_idle``)
        when the pacer is about to sleep ``wait`` >= ``IDLE_COMMIT_S`` s and the last commit is at least
        ``IDLE_COMMIT_MIN_INTERVAL_S`` old: a row then waits less than two such intervals in an open transaction."""
        if not sink.in_transaction:
            return
        now = clock()
        idle = settings.producer_commit_when_idle and wait >= IDLE_COMMIT_S and now - last_commit[0] >= IDLE_COMMIT_MIN_INTERVAL_S
        if idle or sink.transaction_age() + wait >= settings.producer_commit_interval_s:
            sink.commit(flush_timeout_s)
            last_commit[0] = now

    try:
        pending = pos.control
        if pending is not None and pending["sent"] < min(pending["of"], partitions):  # a marker cut short by the stop
            event = RunEvent.from_wire(pending["event"])
            send_control(event, pending["run"], pending["file"], pending["rows"], pending["sent"])
        while not stopped and (max_rows is None or stats.rows < max_rows) and (item := reader.next()) is not None:
            passes, daq, f = item
            run_no = run_of(passes, daq)
            for bad in f.malformed:
                if len(stats.malformed_examples) < MALFORMED_LOGGED:
                    example = f"{f.name}:{bad.line}: {bad.reason}: {bad.text!r}"
                    stats.malformed_examples.append(example)
                    log.warning("malformed line %s", example)
            begin, first_row = first_row, 0
            for start in range(begin, f.num_rows, chunk):
                n = min(chunk, f.num_rows - start)
                if max_rows is not None:
                    n = min(n, max_rows - stats.rows)
                if n <= 0:
                    stopped = True
                    break
                messages = _encode(f, start, n, wire, settings.compression, settings.rate > 0, run_no)
                if t_start is None:
                    t_start = last_progress = pacer.start()
                    stats.startup_s = t_start - t_call
                    deadline = None if duration is None else t_start + duration
                if deadline is not None and pacer.next_due(n if settings.rate else 0) > deadline:
                    sleep(max(0.0, deadline - clock()))
                    stopped = True
                    break
                wait = pacer.delay()
                if wait > 0:
                    commit_if_due(wait)  # rows do not wait in an open transaction while the pacer sleeps
                    wait = pacer.delay()  # the commit took some of the wait
                if (wait > 0 and sleep(wait)) or stop_event.is_set():
                    stopped = True
                    break
                here = {"passes": passes, "file": f.name, "next_row": start, "next_line": f.lines.number(start)}
                markers.data(run_no, f.name)  # run-start first if this chunk begins a run
                per_message = n // len(messages)
                for i, (value, headers) in enumerate(messages, start=1):
                    row = start + i * per_message
                    pos = advanced(
                        pos,
                        passes=passes,
                        file=f.name,
                        next_row=row,
                        next_line=f.lines.number(row - 1) + 1,
                        rows=pos.rows + per_message,
                        run=run_no,
                        run_rows=markers.rows + i * per_message,
                        run_file=f.name,
                        control=None,
                    )
                    sink.send(value, [*headers, (POSITION_HEADER, encode_position(pos))])
                    stats.bytes += len(value)
                sink.poll(0)
                sink.check_broker()  # BrokerLost after the grace period
                pacer.sent(n)
                markers.sent(n)
                commit_if_due()
                if start == begin:
                    stats.files += 1
                    stats.passes = passes
                stats.rows += n
                stats.messages += len(messages)
                stats.malformed_rows += f.table.column("HEAD").slice(start, n).null_count
                if settings.rate == 0 or (f.num_rows - start - n) / settings.rate < PREFETCH_LEAD_S:
                    reader.prefetch()
                now = clock()
                if now - last_progress >= progress_interval_s:
                    last_progress = now
                    report(now)
            if stopped:
                break
            if f.num_rows == 0 and not stop_event.is_set():
                here = {"passes": passes, "file": f.name, "next_row": 0, "next_line": 0}
                markers.data(run_no, f.name)  # an empty file still marks its run
            following = reader.peek()
            if following is None or run_of(*following) != run_no:
                markers.end()  # the run's last file is done: end it now, not when the next run starts
        markers.end()  # a clean stop (stop event, max_rows, duration) ends the run in progress
    except TransactionError as exc:
        exc.stats = stats  # the caller prints the summary
        raise  # rows of the failed transaction are not in the topic: no run-end; a restart resumes before them
    except Exception as exc:
        exc.stats = stats
        if isinstance(exc, KafkaSetupError):
            raise  # the broker is gone: a run-end cannot be sent
        try:
            markers.end()  # an error ends the run in progress too; a hard abort (KeyboardInterrupt) does not
        except Exception:  # the first error is the one to report
            log.exception("could not send run-end after an error")
        raise
    finally:
        reader.close()
        stats.undelivered = sink.flush(5.0 if sink.watch.state == "lost" else flush_timeout_s) + sink.lost_messages
        stats.commits = sink.commits
        report(clock())
    return stats
