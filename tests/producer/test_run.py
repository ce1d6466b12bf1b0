"""Unit tests of run_producer's loop with a fake clock and a recording client (no broker):
pacing, stops, and the run-start / run-end markers around each run."""

from __future__ import annotations

import json
import re
import threading

import numpy as np
import pytest

from dtmon.settings import load_settings
from dtmon.wire import decode_message, header_dict
from producer.kafka import KafkaSink
from producer.pacing import chunk_rows
from producer.run import IDLE_COMMIT_MIN_INTERVAL_S, run_producer
from tests.producer.helpers import is_control, read_csv_independently


class RecordingProducer:
    """Stands in for confluent_kafka.Producer: records what would be sent, at which fake time."""

    clock = None

    def __init__(self, config):
        self.config = config
        self.sent: list[tuple[float, bytes, list]] = []  # data messages
        self.control: list[tuple[float, dict, int]] = []  # control messages: time, JSON value, partition
        self.order: list[str] = []  # "start:RUN", "data:RUN" or "end:RUN" in send order (control: partition 0 only)
        self.flushed = False

    def produce(self, topic, value=None, headers=None, partition=-1):
        h = header_dict(headers)
        if is_control(headers):
            doc = json.loads(value)
            self.control.append((self.clock(), doc, partition))
            assert h["dtmon-run"] == str(doc["run"]) and h["dtmon-file"] == doc["file"]
            if partition == 0:
                self.order.append(f"{doc['event'][4:]}:{doc['run']}")
        else:
            assert partition == -1  # data messages: the client's partitioner decides
            self.sent.append((self.clock(), value, headers))
            self.order.append(f"data:{h['dtmon-run']}")

    def poll(self, timeout=0):
        return 0

    def flush(self, timeout=None):
        self.flushed = True
        return 0


class FakeTime:
    def __init__(self):
        self.now = 50.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds + 0.001  # OS sleep overshoot
        return False


def grouped(order: list[str]) -> list[str]:
    """Send order with runs of data messages folded: ["start:0", "data:0", "data:0", "end:0"] -> ["start:0", "data:0*2", "end:0"]."""
    out: list[str] = []
    for item in order:
        if item.startswith("data:") and out and re.fullmatch(re.escape(item) + r"\*\d+", out[-1]):
            out[-1] = f"{item}*{int(out[-1].rsplit('*', 1)[1]) + 1}"
        else:
            out.append(f"{item}*1" if item.startswith("data:") else item)
    return out


def end_rows(producer) -> list[int]:
    """rows of each run-end, partition 0."""
    return [doc["rows"] for _, doc, p in producer.control if doc["event"] == "run-end" and p == 0]


def make(fake, partitions=1, **settings):
    RecordingProducer.clock = fake
    sink = KafkaSink("127.0.0.1:1", "t", producer_cls=RecordingProducer, partitions=partitions)
    return load_settings(**settings), sink


@pytest.mark.parametrize("rate", [1_000, 10_000])
def test_paced_loop_over_the_genuine_rows_for_20_s(genuine_csv, rate):
    fake = FakeTime()
    settings, sink = make(fake, rate=rate, source=str(genuine_csv))
    stats = run_producer(settings, loop=True, duration=20, clock=fake, sleep=fake.sleep, sink=sink)
    sent = sink.producer.sent
    times = np.array([t for t, _, _ in sent]) - sent[0][0]
    sizes = np.array([len(decode_message(v, header_dict(h)["content-type"])) for _, v, h in sent])
    assert stats.rows == sizes.sum()
    assert abs(stats.rows - rate * 20) <= 0.02 * rate * 20
    counts, _ = np.histogram(times, bins=np.arange(0, 21), weights=sizes)
    assert np.all(np.abs(counts - rate) <= 0.10 * rate), counts
    assert stats.passes == -(-stats.rows // 999)  # the 999-row file replayed
    assert stats.elapsed_s == pytest.approx(20, abs=0.01)
    assert sink.producer.flushed
    n = chunk_rows(rate, settings.rows_per_message)
    assert max(sizes) == min(n, 999)
    # one looped file is one run (run 0 from data_000000 in its name), ended by --duration
    assert grouped(sink.producer.order) == ["start:0", f"data:0*{stats.messages}", "end:0"]
    assert end_rows(sink.producer) == [stats.rows] and stats.runs == 1


def test_max_rows_stops_exactly_and_headers_follow_the_file(genuine_csv):
    fake = FakeTime()
    settings, sink = make(fake, rate=0, rows_per_message=300, source=str(genuine_csv))
    stats = run_producer(settings, loop=True, max_rows=2500, clock=fake, sleep=fake.sleep, sink=sink)
    expected = read_csv_independently(genuine_csv)
    assert stats.rows == 2500 and stats.passes == 3
    firsts = [int(header_dict(h)["dtmon-first-line"]) for _, _, h in sink.producer.sent]
    sizes = [len(decode_message(v, None)) for _, v, _ in sink.producer.sent]
    want_firsts, want_sizes, left = [], [], 2500
    while left:  # chunks of 300 rows, cut at the end of the 999-row file, the last one cut at max_rows
        for start in range(0, len(expected), 300):
            size = min(300, len(expected) - start, left)
            if size:
                want_firsts.append(start + 2)
                want_sizes.append(size)
            left -= size
    assert firsts == want_firsts and sizes == want_sizes
    last = decode_message(sink.producer.sent[-1][1], None).to_pandas()
    start = want_firsts[-1] - 2
    assert last["ORBIT_CNT"].tolist() == expected["ORBIT_CNT"].iloc[start : start + len(last)].tolist()


def test_stop_event_stops_the_loop(genuine_csv):
    fake = FakeTime()
    settings, sink = make(fake, rate=100, source=str(genuine_csv))
    stop = threading.Event()

    def sleep(seconds):
        fake.now += seconds
        if fake.now > 53.02:
            stop.set()
        return stop.is_set()

    stats = run_producer(settings, loop=True, clock=fake, sleep=sleep, sink=sink, stop_event=stop)
    n = chunk_rows(100, settings.rows_per_message)  # 5 rows every 0.05 s
    assert stats.rows == n * (int(3.02 / (n / 100)) + 1)  # chunks due up to the stop, the first at 0 s
    assert sink.producer.flushed
    assert grouped(sink.producer.order) == ["start:0", f"data:0*{stats.messages}", "end:0"]
    assert end_rows(sink.producer) == [stats.rows]


def test_unknown_wire_is_refused(genuine_csv):
    settings, sink = make(FakeTime(), source=str(genuine_csv))
    with pytest.raises(ValueError, match="wire"):
        run_producer(settings, wire="json", sink=sink)


def test_unknown_compression_is_refused(genuine_csv):
    settings, sink = make(FakeTime(), source=str(genuine_csv), compression="gzip")
    with pytest.raises(ValueError, match="compression"):
        run_producer(settings, sink=sink)


@pytest.mark.parametrize(
    "wire,body,kafka",
    [("arrow", "zstd", "none"), ("arrow", "lz4", "none"), ("arrow", "none", "none"), ("csv-line", "zstd", "zstd"), ("csv-line", "none", "none")],
)
def test_kafka_compresses_only_what_arrow_did_not(wire, body, kafka):
    from producer.kafka import kafka_compression, producer_config

    assert kafka_compression(wire, body) == kafka
    config = producer_config("127.0.0.1:1", kafka_compression(wire, body))
    assert config["acks"] == "all" and config["enable.idempotence"] is True and config["compression.type"] == kafka


def split_genuine(genuine_csv, directory, sizes: dict[str, int]) -> None:
    """Write the genuine rows into DAQ files of the given row counts (each with the header)."""
    lines = genuine_csv.read_text().splitlines()
    directory.mkdir(parents=True, exist_ok=True)
    at = 1
    for name, size in sizes.items():
        (directory / name).write_text("\n".join([lines[0], *lines[at : at + size]]) + "\n")
        at += size


def test_each_daq_file_is_a_run_framed_on_every_partition(genuine_csv, tmp_path):
    sizes = {"data_000004.txt": 300, "data_000005.txt": 400, "data_000009.txt": 299}
    split_genuine(genuine_csv, tmp_path, sizes)
    fake = FakeTime()
    settings, sink = make(fake, partitions=3, rate=0, rows_per_message=128, source=str(tmp_path))
    stats = run_producer(settings, loop=True, max_rows=999 + 200, clock=fake, sleep=fake.sleep, sink=sink)
    messages = {name: -(-size // 128) for name, size in sizes.items()}  # data messages per file
    assert grouped(sink.producer.order) == [
        "start:4", f"data:4*{messages['data_000004.txt']}", "end:4",
        "start:5", f"data:5*{messages['data_000005.txt']}", "end:5",
        "start:9", f"data:9*{messages['data_000009.txt']}", "end:9",
        "start:4", "data:4*2", "end:4",  # the replay: run 4 again, cut after 128 + 72 rows by max_rows
    ]  # fmt: skip
    control = sink.producer.control
    assert [p for _, _, p in control] == [0, 1, 2] * 8  # every marker on every partition, one after the other
    assert [doc for _, doc, _ in control][::3] == [
        {"event": event, "run": run, "file": name, "rows": rows if event == "run-end" else 0}
        for (name, rows), run in zip([*sizes.items(), ("data_000004.txt", 200)], (4, 5, 9, 4))
        for event in ("run-start", "run-end")
    ]
    assert stats.rows == 1199 and stats.messages == len(sink.producer.sent) == sum(messages.values()) + 2
    assert stats.control_messages == len(control) == 24 and stats.runs == 4 and stats.run == 4


def test_explicit_run_numbers_each_pass_and_control_rows_do_not_count(genuine_csv):
    fake = FakeTime()
    settings, sink = make(fake, rate=0, rows_per_message=300, source=str(genuine_csv))
    stats = run_producer(settings, loop=True, max_rows=2500, run=7, clock=fake, sleep=fake.sleep, sink=sink)
    assert grouped(sink.producer.order) == [
        "start:7", "data:7*4", "end:7", "start:8", "data:8*4", "end:8", "start:9", "data:9*2", "end:9"
    ]  # 999-row passes in messages of 300, 300, 300, 99; the third pass cut at 2500 rows
    assert end_rows(sink.producer) == [999, 999, 2500 - 2 * 999]
    assert stats.rows == 2500 and stats.messages == 10 and stats.runs == 3


def test_a_run_directory_makes_its_files_one_run_even_when_looped(genuine_csv, tmp_path):
    run_dir = tmp_path / "Run000810"
    split_genuine(genuine_csv, run_dir, {"data_000000.txt": 600, "data_000001.txt": 399})
    fake = FakeTime()
    settings, sink = make(fake, rate=0, rows_per_message=1000, source=str(run_dir))
    run_producer(settings, loop=True, max_rows=999 + 100, clock=fake, sleep=fake.sleep, sink=sink)
    assert grouped(sink.producer.order) == ["start:810", "data:810*3", "end:810"]
    ends = [(doc["file"], doc["rows"]) for _, doc, _ in sink.producer.control if doc["event"] == "run-end"]
    assert ends == [("data_000000.txt", 999 + 100)]  # the file of the run's last data


def test_a_source_without_run_numbers_is_refused_before_sending(genuine_csv, tmp_path):
    (tmp_path / "hits.csv").write_bytes(genuine_csv.read_bytes())
    settings, sink = make(FakeTime(), rate=0, source=str(tmp_path))
    with pytest.raises(ValueError, match="--run"):
        run_producer(settings, sink=sink)
    assert sink.producer.order == []
    stats = run_producer(settings, run=3, sink=sink)  # --run makes it streamable
    assert grouped(sink.producer.order) == ["start:3", "data:3*1", "end:3"] and stats.rows == 999


class FailingProducer(RecordingProducer):
    """Fails on the third data message with ``error`` (an exception instance)."""

    error: BaseException = RuntimeError("set me")

    def produce(self, topic, value=None, headers=None, partition=-1):
        if not is_control(headers) and len(self.sent) == 2:
            raise self.error
        super().produce(topic, value, headers, partition)


@pytest.mark.parametrize("hard", [False, True])
def test_an_error_ends_the_run_but_a_hard_abort_does_not(genuine_csv, hard):
    import confluent_kafka

    FailingProducer.clock = fake = FakeTime()
    too_large = confluent_kafka.KafkaException(confluent_kafka.KafkaError(confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE))
    FailingProducer.error = KeyboardInterrupt() if hard else too_large
    sink = KafkaSink("127.0.0.1:1", "t", producer_cls=FailingProducer, partitions=1)
    settings = load_settings(rate=0, rows_per_message=100, source=str(genuine_csv))
    with pytest.raises(KeyboardInterrupt if hard else ValueError):
        run_producer(settings, clock=fake, sleep=fake.sleep, sink=sink)
    assert grouped(sink.producer.order) == ["start:0", "data:0*2"] + ([] if hard else ["end:0"])
    assert end_rows(sink.producer) == ([] if hard else [200])
    assert sink.producer.flushed


class TransactionalRecordingProducer(RecordingProducer):
    """RecordingProducer with the transaction calls; ``commit_times`` records each commit's fake time."""

    def __init__(self, config):
        super().__init__(config)
        self.commit_times: list[float] = []

    def init_transactions(self, timeout=None):
        pass

    def begin_transaction(self):
        pass

    def commit_transaction(self, timeout=None):
        self.commit_times.append(self.clock())

    def abort_transaction(self, timeout=None):
        pass


def _paced_transactional_run(genuine_csv, rate: float, when_idle: bool):
    """5 s of fake time at ``rate`` rows/s into a transactional recording sink: (stats, sink)."""
    fake = FakeTime()
    RecordingProducer.clock = fake
    sink = KafkaSink("127.0.0.1:1", "t", producer_cls=TransactionalRecordingProducer, partitions=1,
                     transactional_id="test")  # fmt: skip
    settings = load_settings(rate=rate, source=str(genuine_csv), producer_commit_when_idle=when_idle)
    return run_producer(settings, loop=True, duration=5, clock=fake, sleep=fake.sleep, sink=sink), sink


@pytest.mark.parametrize("when_idle", [True, False])
def test_a_paced_producer_commits_before_it_sleeps(genuine_csv, when_idle):
    """At 1 000 rows/s (20 messages/s) the pacer sleeps ~50 ms after each message: with
    producer_commit_when_idle every message is committed before one of the next sleeps, within two
    IDLE_COMMIT_MIN_INTERVAL_S of its send, so no row waits for the commit interval; without
    it the interval (0.25 s, real time) rules and the fast fake-time run commits only at its end."""
    stats, sink = _paced_transactional_run(genuine_csv, 1_000, when_idle)
    commits = sink.producer.commit_times
    if when_idle:
        assert stats.messages >= len(commits) >= (stats.messages - 1) / 2 >= 45
        sends = [t for t, _, _ in sink.producer.sent]
        assert all(any(0 <= c - s <= 2 * IDLE_COMMIT_MIN_INTERVAL_S + 0.01 for c in commits) for s in sends[:-1])
    else:
        assert len(commits) <= 2


def test_idle_commits_are_bounded_per_second(genuine_csv):
    """At 40 000 rows/s in 999-row messages (~40 messages/s) the pacer sleeps >= IDLE_COMMIT_S after
    each message; idle commits still come at most once per IDLE_COMMIT_MIN_INTERVAL_S, so the broker
    sees at most ~20 transactions per second however the rate falls between the pacer's sleeps."""
    stats, sink = _paced_transactional_run(genuine_csv, 40_000, True)
    commits = sink.producer.commit_times
    assert stats.messages >= 150  # one message per file pass, ~25 ms apart
    assert 5 / 0.25 < len(commits) <= 5 / IDLE_COMMIT_MIN_INTERVAL_S + 2  # idle commits happen, bounded
    gaps = [b - a for a, b in zip(commits, commits[1:-1])]
    assert min(gaps) >= IDLE_COMMIT_MIN_INTERVAL_S - 1e-9
