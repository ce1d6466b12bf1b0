"""Unit tests of run_producer's loop with a fake clock and a recording client (no broker)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from dtmon.settings import load_settings
from dtmon.wire import decode_message, header_dict
from producer.kafka import KafkaSink
from producer.pacing import chunk_rows
from producer.run import run_producer
from tests.producer.helpers import read_csv_independently


class RecordingProducer:
    """Stands in for confluent_kafka.Producer: records what would be sent, at which fake time."""

    clock = None

    def __init__(self, config):
        self.config = config
        self.sent: list[tuple[float, bytes, list]] = []
        self.flushed = False

    def produce(self, topic, value=None, headers=None):
        self.sent.append((self.clock(), value, headers))

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


def make(fake, **settings):
    RecordingProducer.clock = fake
    sink = KafkaSink("127.0.0.1:1", "t", producer_cls=RecordingProducer)
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
