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
