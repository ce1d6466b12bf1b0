"""The soak scenario's pure parts: RSS slopes in MB/h and the second half of a series."""

from __future__ import annotations

import os
import time

import pytest

from bench.soak import dir_bytes, rss_slope_mb_per_h, second_half


def test_slope_of_a_line_in_mb_per_hour():
    series = [(t, 500.0 + 12.0 * t / 3600) for t in range(0, 7200, 30)]  # 12 MB/h
    assert rss_slope_mb_per_h(series) == pytest.approx(12.0)
    assert rss_slope_mb_per_h([(t, 800.0) for t in range(0, 600, 30)]) == pytest.approx(0.0, abs=1e-9)


def test_slope_needs_three_samples_over_time():
    assert rss_slope_mb_per_h([(0, 1.0), (30, 2.0)]) is None
    assert rss_slope_mb_per_h([(5, 1.0), (5, 2.0), (5, 3.0)]) is None


def test_second_half_drops_the_warm_up():
    series = [(0, 100.0), (600, 400.0), (1800, 450.0), (3000, 450.0), (3600, 450.0)]
    assert second_half(series) == [(1800, 450.0), (3000, 450.0), (3600, 450.0)]
    assert rss_slope_mb_per_h(second_half(series)) == pytest.approx(0.0, abs=1e-9)
    assert rss_slope_mb_per_h(series) > 100  # the warm-up alone makes the whole-run slope steep
    assert second_half([]) == []


def test_dir_bytes_sums_files_below(tmp_path):
    assert dir_bytes(tmp_path / "absent") == 0
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "00.log").write_bytes(b"x" * 1000)
    (tmp_path / "b.index").write_bytes(b"y" * 24)
    assert dir_bytes(tmp_path) == 1024


def test_a_process_tree_is_summed_per_kind_of_process():
    import subprocess
    import sys

    from bench.procstats import process_kind, tree_by_kind_mb

    child = subprocess.Popen(["sleep", "30"])
    try:
        # Popen returns when the exec closes its error pipe, which the kernel does before it
        # sets up the new program's arguments: /proc/<pid>/cmdline can still be empty
        # (kind "unknown") for a moment. Give the exec up to 5 s to finish.
        deadline = time.monotonic() + 5.0
        while process_kind(child.pid) != "sleep" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert process_kind(child.pid) == "sleep"
        kinds = tree_by_kind_mb(os.getpid())
        me = process_kind(os.getpid())
        assert me == os.path.basename(sys.executable) or me.startswith("python")
        assert kinds[f"{me} rss"] > kinds.get("sleep rss", 0.0) > 0.0  # the child is in the tree, smaller
        assert 0.0 < kinds[f"{me} anon"] <= kinds[f"{me} rss"]
        assert kinds[f"{me} anon"] + kinds[f"{me} shmem"] <= kinds[f"{me} rss"]
    finally:
        child.kill()
        child.wait()
    assert process_kind(child.pid) == "gone"
