"""bench.stack: children spawned, sampled and reaped (real short-lived processes, no broker)."""

from __future__ import annotations

import sys

from bench.stack import Stack


def test_a_child_is_spawned_sampled_waited_for_and_reported(tmp_path):
    stack = Stack(tmp_path)
    child = stack.spawn("burner", [sys.executable, "-c", "import time; t = time.process_time()\n"
                                   "while time.process_time() - t < 0.3: pass\nprint('done')"])
    assert stack.wait(child, 60) == 0
    assert child.log_text().strip() == "done" and child.ended is not None
    resources = stack.close()
    assert resources["burner"]["cpu_s"] >= 0.2  # the child's own CPU time, from its rusage


def test_the_sampler_keeps_an_rss_series_for_slopes(monkeypatch):
    """``TreeSampler.rss_series``: (epoch s, MB) points of a tree, RSS_SERIES_S apart, cut to a window."""
    import os
    import time

    from bench import procstats

    monkeypatch.setattr(procstats, "RSS_SERIES_S", 0.05)
    sampler = procstats.TreeSampler(interval_s=0.02)
    try:
        start = time.time()
        sampler.add("me", os.getpid())
        time.sleep(0.4)
        series = sampler.rss_series("me")
    finally:
        sampler.close()
    assert len(series) >= 3 and all(mb > 1 for _, mb in series)
    assert all(b[0] - a[0] >= 0.05 for a, b in zip(series, series[1:])) and series[0][0] >= start
    assert sampler.rss_series("me", since=series[-1][0]) == series[-1:] and sampler.rss_series("nobody") == []
