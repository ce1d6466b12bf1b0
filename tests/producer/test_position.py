"""The producer's position (producer.position) and resuming from it, without a broker.

A recording client stands in for Kafka; a "kill" is a KeyboardInterrupt raised by the
client on its N-th message (nothing after it is sent, no run-end). The resumed producer
gets the newest position among the messages that were sent, exactly as read_position
would find it in the topic.
"""

from __future__ import annotations

import json

import pytest

from dtmon.settings import load_settings
from dtmon.wire import decode_message, header_dict
from producer.kafka import KafkaSink
from producer.position import (
    POSITION_HEADER,
    Position,
    advanced,
    decode_position,
    encode_position,
    newest,
    transactional_id,
)
from producer.run import run_producer
from tests.producer.helpers import is_control
from tests.producer.test_run import FakeTime, RecordingProducer, split_genuine


def test_position_header_round_trip_and_garbage():
    p = Position("/data", seq=41, passes=2, file="data_000001.txt", next_row=300, next_line=302, rows=1299, run=1,
                 run_rows=300, run_file="data_000001.txt", control={"event": "run-start", "run": 1, "sent": 1, "of": 3})  # fmt: skip
    assert decode_position(encode_position(p)) == p
    assert advanced(p, next_row=301).seq == 42
    for garbage in (None, b"", b"{", b"[]", b'{"source": "x", "unknown": 1}', b'{"source": "x", "next_row": -1}'):
        assert decode_position(garbage) is None
    a, b, c = Position("s", seq=3), Position("s", seq=9), Position("other", seq=99)
    assert newest([a, None, c, b], "s") == b and newest([c], "s") is None


def test_transactional_id_is_stable_per_topic_and_source():
    assert transactional_id("t", "/a") == transactional_id("t", "/a")
    assert len({transactional_id("t", "/a"), transactional_id("t", "/b"), transactional_id("u", "/a")}) == 3


class KilledProducer(RecordingProducer):
    """Records like RecordingProducer; the ``kill_at``-th message (0-based) raises KeyboardInterrupt instead."""

    kill_at = -1

    def __init__(self, config):
        super().__init__(config)
        self.calls = 0
        self.log: list[tuple[int, bytes, list]] = []  # partition (-1 = partitioner), value, headers: what reached the topic

    def produce(self, topic, value=None, headers=None, partition=-1):
        if self.calls == self.kill_at:
            raise KeyboardInterrupt
        self.calls += 1
        super().produce(topic, value, headers, partition)
        self.log.append((partition, value, headers))


def _newest(log, source) -> Position | None:
    return newest((decode_position(header_dict(h).get(POSITION_HEADER)) for _, _, h in log), source)


def _run(settings, fake, partitions, kill_at=-1, resume=None):
    KilledProducer.clock, KilledProducer.kill_at = fake, kill_at
    sink = KafkaSink("127.0.0.1:1", "t", producer_cls=KilledProducer, partitions=partitions)
    try:
        run_producer(settings, clock=fake, sleep=fake.sleep, sink=sink, resume=resume)
    except KeyboardInterrupt:
        pass
    return sink.producer.log


def _messages_per_run(genuine_csv, tmp_path, partitions):
    split_genuine(genuine_csv, tmp_path, {"data_000001.txt": 400, "data_000002.txt": 599})
    settings = load_settings(rate=0, rows_per_message=128, source=str(tmp_path))
    return settings, _run(settings, FakeTime(), partitions)


@pytest.mark.parametrize("partitions", [1, 3])
def test_a_producer_killed_after_any_message_and_resumed_sends_every_row_once(genuine_csv, tmp_path, partitions):
    settings, whole = _messages_per_run(genuine_csv, tmp_path, partitions)
    source = decode_position(header_dict(whole[0][2])[POSITION_HEADER]).source
    reference = [(p, v) for p, v, _ in whole]
    for kill_at in range(len(whole) + 1):
        fake = FakeTime()
        first = _run(settings, fake, partitions, kill_at)
        assert len(first) == min(kill_at, len(whole))
        second = _run(settings, fake, partitions, resume=_newest(first, source))
        combined = first + second
        # the two producers together sent exactly what one uninterrupted producer sends, in the same order
        assert [(p, v) for p, v, _ in combined] == reference, f"killed after {kill_at} messages"
        seqs = [decode_position(header_dict(h)[POSITION_HEADER]).seq for _, _, h in combined]
        assert seqs == list(range(len(combined)))


def test_the_newest_position_says_where_the_killed_producer_stood(genuine_csv, tmp_path):
    settings, whole = _messages_per_run(genuine_csv, tmp_path, 2)
    # messages: start:1 x2, data 128 x4 (400 rows: 128, 128, 128, 16), end:1 x2, start:2 x2, ...
    first = _run(settings, FakeTime(), 2, kill_at=2 + 3)
    p = _newest(first, decode_position(header_dict(first[0][2])[POSITION_HEADER]).source)
    assert (p.file, p.next_row, p.next_line, p.rows, p.run, p.run_rows, p.control) == (
        "data_000001.txt", 384, 386, 384, 1, 384, None)  # fmt: skip
    first = _run(settings, FakeTime(), 2, kill_at=2 + 4 + 1)  # after the first copy of run-end 1
    p = _newest(first, p.source)
    assert p.run is None and p.control == {"event": "run-end", "run": 1, "file": "data_000001.txt", "rows": 400, "sent": 1, "of": 2}
    assert p.describe().startswith("pass 1, after data_000001.txt row 400 (line 402), 400 rows sent, no run open")


def test_a_resumed_producer_that_finished_sends_nothing_and_from_start_starts_over(genuine_csv, tmp_path):
    settings, whole = _messages_per_run(genuine_csv, tmp_path, 1)
    source = decode_position(header_dict(whole[0][2])[POSITION_HEADER]).source
    done = _newest(whole, source)
    assert _run(settings, FakeTime(), 1, resume=done) == []
    KilledProducer.clock, KilledProducer.kill_at = FakeTime(), -1
    sink = KafkaSink("127.0.0.1:1", "t", producer_cls=KilledProducer, partitions=1)
    stats = run_producer(settings, clock=KilledProducer.clock, sleep=KilledProducer.clock.sleep, sink=sink, resume=done, from_start=True)
    again = sink.producer.log
    assert [(p, v) for p, v, _ in again] == [(p, v) for p, v, _ in whole] and stats.rows == 999
    assert decode_position(header_dict(again[0][2])[POSITION_HEADER]).seq == done.seq + 1  # sequence continues
    first_data = next(h for _, _, h in again if not is_control(h))
    assert len(decode_message(next(v for _, v, h in again if not is_control(h)), header_dict(first_data)["content-type"])) == 128
    starts = [json.loads(v) for _, v, h in again if is_control(h) and json.loads(v)["event"] == "run-start"]
    assert [s["run"] for s in starts] == [1, 2]
