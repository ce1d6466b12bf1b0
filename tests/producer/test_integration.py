"""The producer against real services: Kafka brokers (Tansu and Apache Kafka), moto S3 server, the console script."""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
import uuid

import pandas as pd
import pytest

from dtmon.hits import COLUMNS
from dtmon.services import free_port, seed_bucket
from dtmon.settings import load_settings
from dtmon.wire import CONTENT_TYPE_ARROW, CONTENT_TYPE_CSV, HITS_SCHEMA_ID, decode_message, header_dict
from producer.kafka import KafkaSink, ensure_topic
from producer.run import run_producer
from tests.producer.helpers import consume_all, data_messages, read_csv_independently, runs_by_partition

pytestmark = pytest.mark.integration


def rows_of(messages) -> pd.DataFrame:
    """All rows of the consumed data messages with their file and line, sorted by (file, line)."""
    frames = []
    for msg in data_messages(messages):
        h = header_dict(msg.headers())
        frame = decode_message(msg.value(), h["content-type"]).to_pandas()
        frame.insert(0, "line", range(int(h["dtmon-first-line"]), int(h["dtmon-first-line"]) + len(frame)))
        frame.insert(0, "file", h["dtmon-file"])
        frames.append(frame)
    return pd.concat(frames, ignore_index=True).sort_values(["file", "line"], kind="stable").reset_index(drop=True)


def wait_for_line(stream, text: str, timeout: float) -> None:
    """Read ``stream`` (a child's pipe) until a line containing ``text``; TimeoutError after ``timeout`` s."""
    selector = selectors.DefaultSelector()
    selector.register(stream, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        if selector.select(timeout=0.5):
            line = stream.readline()
            seen += line
            if text in line:
                return
            if not line:
                break
    raise TimeoutError(f"no line with {text!r} in {timeout} s; got: {seen}")


def typed(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[list(COLUMNS)].astype({c: "int64" for c in COLUMNS[:5]} | {"TDC_MEAS": "float64"}).reset_index(drop=True)


def test_genuine_rows_from_s3_arrive_once_each_and_equal_the_file(kafka_bootstrap, s3_endpoint, genuine_csv, topic_name, tmp_path):
    bucket = f"run-{uuid.uuid4().hex[:8]}"
    second = tmp_path / "data_000001.txt"
    second.write_bytes(genuine_csv.read_bytes().replace(b"\n", b"\r\n").split(b"\r\n", 1)[1])  # CRLF, no header
    first = tmp_path / "data_000000.txt"
    first.write_bytes(genuine_csv.read_bytes())
    seed_bucket(s3_endpoint, bucket, [second, first], prefix="minidt")
    settings = load_settings(
        bootstrap_servers=kafka_bootstrap,
        raw_topic=topic_name,
        raw_partitions=2,
        rate=0,
        rows_per_message=128,
        s3_endpoint_url=s3_endpoint,
    )
    stats = run_producer(settings, source=f"s3://{bucket}/minidt/")
    expected = read_csv_independently(genuine_csv)

    messages = data_messages(consume_all(kafka_bootstrap, topic_name))
    got = rows_of(messages)
    assert stats.rows == len(got) == 2 * len(expected)
    assert stats.messages == len(messages) and stats.delivery_errors == 0 and stats.malformed_rows == 0
    assert {m.partition() for m in messages} <= {0, 1}
    assert not got.duplicated(["file", "line"]).any()  # every row exactly once
    for name, first_line in (("data_000000.txt", 2), ("data_000001.txt", 1)):
        part = got[got["file"] == name]
        assert part["line"].tolist() == list(range(first_line, first_line + len(expected)))
        pd.testing.assert_frame_equal(typed(part), expected)
    for msg in messages:
        h = header_dict(msg.headers())
        assert h["content-type"] == CONTENT_TYPE_ARROW and h["dtmon-schema"] == HITS_SCHEMA_ID
        assert h["dtmon-synthetic"] == "0"


def test_malformed_lines_travel_as_null_rows_and_are_counted(kafka_bootstrap, genuine_csv, topic_name, tmp_path):
    lines = genuine_csv.read_text().splitlines()
    bad_at = {5: "2,0,75,xyz,2922,2", 400: "2,0,75", 900: "9,0,1,5,5,5"}  # not a number, too few fields, HEAD > 7
    out = [lines[0]]
    for i, line in enumerate(lines[1:]):
        if i in bad_at:
            out.append(bad_at[i])
        out.append(line)
    (tmp_path / "data_000000.txt").write_text("\n".join(out) + "\n")
    (tmp_path / "dtmon-synthetic.json").write_text("{}")
    settings = load_settings(bootstrap_servers=kafka_bootstrap, raw_topic=topic_name, rate=0, rows_per_message=100)
    stats = run_producer(settings, source=str(tmp_path))

    got = rows_of(consume_all(kafka_bootstrap, topic_name))
    bad_lines = [n + 1 for n, text in enumerate(out, start=1) if text in bad_at.values()]
    assert stats.malformed_rows == len(bad_at) and stats.rows == len(out) - 1 == len(got)
    assert [e.split(":")[1] for e in stats.malformed_examples] == [str(n - 1) for n in bad_lines]
    nulls = got[got["HEAD"].isna()]
    assert nulls["line"].tolist() == [n - 1 for n in bad_lines]  # line numbers of the bad lines
    assert nulls[list(COLUMNS)].isna().all().all()
    pd.testing.assert_frame_equal(typed(got[got["HEAD"].notna()]), read_csv_independently(genuine_csv))


def test_csv_line_wire_sends_one_message_per_row(kafka_bootstrap, genuine_csv, topic_name):
    settings = load_settings(bootstrap_servers=kafka_bootstrap, raw_topic=topic_name, rate=0)
    stats = run_producer(settings, source=str(genuine_csv), wire="csv-line")
    messages = data_messages(consume_all(kafka_bootstrap, topic_name))
    expected = read_csv_independently(genuine_csv)
    assert stats.messages == stats.rows == len(messages) == len(expected)
    assert all(header_dict(m.headers())["content-type"] == CONTENT_TYPE_CSV for m in messages)
    assert [m.value().decode() for m in messages] == genuine_csv.read_text().splitlines()[1:]
    pd.testing.assert_frame_equal(typed(rows_of(messages)), expected)


def test_delivery_errors_are_counted_when_the_broker_is_gone(genuine_csv):
    bootstrap = f"127.0.0.1:{free_port()}"  # nothing listens there
    sink = KafkaSink(bootstrap, "nowhere", overrides={"message.timeout.ms": 1500, "log_level": 0}, partitions=1)
    settings = load_settings(bootstrap_servers=bootstrap, rate=0, rows_per_message=100)
    stats = run_producer(settings, source=str(genuine_csv), sink=sink, flush_timeout_s=10)
    assert stats.messages == 10 and stats.control_messages == 2  # run-start and run-end, one partition
    assert stats.delivery_errors == stats.messages + stats.control_messages and stats.undelivered == 0
    assert len(sink.errors.first) == 5 and "MSG_TIMED_OUT" in sink.errors.first[0]


def test_two_files_are_two_runs_framed_on_every_partition(kafka_bootstrap, genuine_csv, topic_name, tmp_path):
    lines = genuine_csv.read_text().splitlines()
    header, rows = lines[0], lines[1:]
    sizes = {"data_000000.txt": 500, "data_000001.txt": len(rows) - 500}  # the genuine rows split in two files
    (tmp_path / "data_000000.txt").write_text("\n".join([header, *rows[:500]]) + "\n")
    (tmp_path / "data_000001.txt").write_text("\n".join([header, *rows[500:]]) + "\n")
    settings = load_settings(bootstrap_servers=kafka_bootstrap, raw_topic=topic_name, raw_partitions=2, rate=2000, rows_per_message=64)
    stats = run_producer(settings, source=str(tmp_path))  # 64-row messages 32 ms apart: spread over both partitions
    messages = consume_all(kafka_bootstrap, topic_name)

    per_partition = runs_by_partition(messages)
    assert len(per_partition) == 2 and all(runs for runs in per_partition)
    assert all(len(data_messages([m for m in messages if m.partition() == p])) > 0 for p in (0, 1))
    for runs in per_partition:  # each partition: start(0) data end(0) start(1) data end(1)
        assert [(r["run"], r["start"]["file"], r["end"]["file"]) for r in runs] == [
            (0, "data_000000.txt", "data_000000.txt"),
            (1, "data_000001.txt", "data_000001.txt"),
        ]
        assert [r["end"]["rows"] for r in runs] == list(sizes.values())
        assert all(r["files"] in ([], [r["start"]["file"]]) for r in runs)
    for i, size in enumerate(sizes.values()):  # run-end rows = the run's rows over all partitions
        assert sum(runs[i]["rows"] for runs in per_partition) == size
    assert stats.rows == len(rows) and stats.runs == 2 and stats.run == 1
    assert stats.control_messages == 2 * 2 * 2 == len(messages) - len(data_messages(messages))


def test_ensure_topic_creates_partitions_once(kafka_bootstrap, topic_name):
    assert ensure_topic(kafka_bootstrap, topic_name, 3) == 3
    assert ensure_topic(kafka_bootstrap, topic_name, 5) == 3  # an existing topic keeps its partitions


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_console_script_stops_cleanly_on_a_signal(kafka_bootstrap, genuine_csv, topic_name, signum, tmp_path):
    lines = genuine_csv.read_text().splitlines()
    source = tmp_path / "data_000000.txt"  # the genuine rows 20 times: 10 s at 2000 rows/s, so the signal cuts the run
    source.write_text("\n".join([lines[0], *lines[1:] * 20]) + "\n")
    cmd = [
        sys.executable, "-m", "producer.cli", "--source", str(source), "--bootstrap-servers", kafka_bootstrap,
        "--topic", topic_name, "--rate", "2000", "--loop", "--no-progress", "--run", "41",
    ]  # fmt: skip
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ | {"COLUMNS": "200"})
    try:
        wait_for_line(process.stderr, "streaming 1 file", timeout=60)  # started (imports are slow on a busy machine)
        time.sleep(2.5)
        process.send_signal(signum)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    match = re.search(r"sent ([\d,]+) rows in ([\d,]+) messages .* ([\d,]+) rows/s \(target 2,000\)", out)
    assert match, out
    rows = int(match.group(1).replace(",", ""))
    messages = consume_all(kafka_bootstrap, topic_name)
    got = rows_of(messages)
    assert len(got) == rows > 2000  # everything announced was delivered, after more than a second
    assert rows < 20 * 999  # ... and the signal came in the middle of the file
    (runs,) = runs_by_partition(messages)  # the run cut by the signal got its run-end (no run left open)
    assert [(r["run"], r["end"]["rows"], r["rows"]) for r in runs] == [(41, rows, rows)]  # --run 41
    assert "runs 1 (last 41)" in out
    assert abs(int(match.group(3).replace(",", "")) - 2000) <= 0.1 * 2000
    assert "delivery errors 0" in out


def test_console_script_reports_a_missing_source(kafka_bootstrap, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "producer.cli", "--source", str(tmp_path / "nope"), "--bootstrap-servers", kafka_bootstrap],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert "no such file or directory" in result.stderr

