"""Exactly once across producer crashes, for real: Tansu broker, producer child processes, kill -9.

The trial itself is ``bench.producer_kills.run_trial`` (the benchmark runs it with ten
kills); here three kills keep it short. The raw topic is read back with
``isolation.level=read_committed``.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.producer_kills import check_topic, make_source, read_back, run_trial

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("partitions", [1, 2])
def test_kill_9_three_times_every_row_once_and_one_start_and_end_per_run(kafka_bootstrap, topic_name, tmp_path, partitions):
    source = make_source(tmp_path / "src", files=3, rows=12_000)
    result = run_trial(
        kafka_bootstrap, topic_name, tmp_path / "src", source, kills=3,
        rate=6_000, partitions=partitions, rows_per_message=500, min_delay_s=0.8, max_delay_s=1.6, seed=partitions,
    )  # fmt: skip
    check = result.check
    assert result.kills == 3 and result.kills_mid_stream >= 1, result
    assert (check["rows_in_source"], check["rows_counted"]) == (36_000, 36_000), check
    assert (check["duplicates"], check["missing"], check["unexpected"], check["wrong_values"]) == (0, 0, 0, 0), check
    assert check["runs"] == {run: {"starts": partitions, "ends": partitions} for run in (0, 1, 2)}, check
    assert check["framing_errors"] == [] and check["partitions"] == partitions, check
    assert "resumed at pass 1" in result.last_summary or result.kills_mid_stream < 3, result.last_summary


def test_a_finished_source_is_not_sent_again_unless_from_start(kafka_bootstrap, topic_name, tmp_path):
    source = make_source(tmp_path / "src", files=2, rows=3_000)
    cmd = [sys.executable, "-m", "producer.cli", "--source", str(tmp_path / "src"), "--bootstrap-servers", kafka_bootstrap,
           "--topic", topic_name, "--rate", "0", "--no-progress"]  # fmt: skip
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert first.returncode == again.returncode == 0, (first.stderr, again.stderr)
    assert "sent 6,000 rows" in first.stdout and "sent 0 rows" in again.stdout, (first.stdout, again.stdout)
    assert check_topic(read_back(kafka_bootstrap, topic_name), source)["duplicates"] == 0
    over = subprocess.run([*cmd, "--from-start"], capture_output=True, text=True, timeout=120)
    assert over.returncode == 0 and "sent 6,000 rows" in over.stdout, over.stdout + over.stderr
    check = check_topic(read_back(kafka_bootstrap, topic_name), source)
    assert (check["rows_counted"], check["duplicates"], check["missing"]) == (12_000, 6_000, 0)
    assert check["runs"] == {0: {"starts": 2, "ends": 2}, 1: {"starts": 2, "ends": 2}}
