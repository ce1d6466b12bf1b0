"""Child supervision (dtmon.supervisor) with real processes: a death is reported, the rest stopped."""

from __future__ import annotations

import os
import signal
import sys

import pytest

from dtmon.supervisor import ChildDied, Stack, tail
from dtmon.supervisor import running as alive
from tests.dtmon.test_cli import wait_until


def test_stack_reports_the_child_that_died_and_stops_the_rest(tmp_path):
    env = dict(os.environ)
    stack = Stack()
    sleeper = stack.spawn("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "s.log", env)
    stubborn = stack.spawn(
        "stubborn",
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
         "print('ready', flush=True); time.sleep(60)"],
        tmp_path / "t.log",
        env,
    )  # fmt: skip
    # a child whose own child moves to a process group of its own, as Spark's Python worker daemon does
    spawner = stack.spawn(
        "spawner",
        [sys.executable, "-c", "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
         "'import os, time; os.setpgid(0, 0); print(os.getpid(), flush=True); time.sleep(60)']); time.sleep(60)"],
        tmp_path / "g.log",
        env,
    )  # fmt: skip
    dier = stack.spawn("dier", [sys.executable, "-c", "print('boom: bad input'); raise SystemExit(3)"],
                       tmp_path / "d.log", env)  # fmt: skip
    try:
        wait_until(lambda: tail(spawner.log).strip().isdigit(), 20, "the grandchild")
        grandchild = int(tail(spawner.log))
        assert os.getpgid(grandchild) == grandchild != spawner.process.pid
        wait_until(lambda: dier.process.poll() is not None, 20, "the failing child to exit")
        wait_until(lambda: "ready" in tail(stubborn.log), 20, "the stubborn child to ignore SIGTERM")
        with pytest.raises(ChildDied) as info:
            stack.check()
        assert info.value.child is dier and dier.process.returncode == 3
        assert tail(dier.log) == "boom: bad input"
    finally:
        stack.stop(timeout=2)
    assert sleeper.process.returncode == -signal.SIGTERM
    assert stubborn.process.returncode == -signal.SIGKILL
    assert not any(alive(c.process.pid) for c in stack.children)
    assert not alive(grandchild)
