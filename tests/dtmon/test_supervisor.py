"""Child supervision (dtmon.supervisor) with real processes: a death is reported, the rest stopped."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from dtmon.supervisor import ChildDied, RestartPolicy, Stack, tail
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


# ------------------------------------------------------------------ restarts


def test_restart_policy_backs_off_exponentially_up_to_a_cap_and_counts_the_window():
    policy = RestartPolicy(first_delay_s=1.0, max_delay_s=10.0, max_restarts=3, window_s=60.0)
    assert [policy.delay_s(k) for k in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert policy.recent([0.0, 50.0, 100.0], now=105.0) == 2  # the one at t=0 is out of the window


def _dummy(code: int, sleep: float = 0.0) -> list[str]:
    return [sys.executable, "-c", f"import sys, time; print('line one'); print('boom {code}', flush=True); "
            f"time.sleep({sleep}); sys.exit({code})"]  # fmt: skip


def test_a_dying_child_is_restarted_with_backoff_logged_and_given_up_on(tmp_path, capsys):
    env = dict(os.environ)
    stack = Stack(policy=RestartPolicy(first_delay_s=0.2, max_delay_s=0.4, max_restarts=3, window_s=60.0))
    restarted = []
    stack.on_restart = restarted.append
    dier = stack.spawn("dier", _dummy(3), tmp_path / "d.log", env, restart=True)
    sleeper = stack.spawn("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "s.log", env,
                          restart=True)  # fmt: skip
    first_pid = sleeper.process.pid
    times = []
    try:
        os.kill(first_pid, signal.SIGKILL)
        with pytest.raises(ChildDied) as info:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                for child in stack.supervise():
                    times.append((child.name, time.monotonic()))
                time.sleep(0.02)
        assert info.value.child is dier and "gave up after 3 restarts within 60 s" in info.value.gave_up
        assert sleeper.process.poll() is None and sleeper.process.pid != first_pid  # back after kill -9
        assert len(sleeper.restarts) == 1
    finally:
        stack.stop(timeout=2)
    assert len(dier.restarts) == 3 and restarted.count(dier) == 3
    # backoff: 0.2 s, then 0.4 s (capped) between a death and the next start
    starts = [t for name, t in times if name == "dier"]
    assert all(b - a >= 0.4 for a, b in zip(starts, starts[1:])), starts
    out = capsys.readouterr().out
    assert "restart 1 of dier (exit code 3); last log lines: line one | boom 3" in out
    assert "restart 3 of dier" in out and "restart 4 of dier" not in out
    assert "restart 1 of sleeper (exit code -9 (SIGKILL))" in out
    log = (tmp_path / "d.log").read_text()
    assert log.splitlines().count("boom 3") == 4 and log.count("---- dtmon: restart") == 3  # output of every start kept


def test_backoff_waits_on_the_clock_and_a_child_without_start_stops_the_stack(tmp_path):
    clock = [100.0]
    stack = Stack(policy=RestartPolicy(first_delay_s=5.0, max_restarts=2, window_s=60.0))
    dier = stack.spawn("dier", _dummy(1), tmp_path / "d.log", dict(os.environ), restart=True)
    dier.process.wait(20)
    assert stack.supervise(now=lambda: clock[0]) == []  # death seen at t=100: wait 5 s
    clock[0] = 104.9
    assert stack.supervise(now=lambda: clock[0]) == []
    clock[0] = 105.0
    assert stack.supervise(now=lambda: clock[0]) == [dier]
    assert dier.restarts == [105.0]
    dier.process.wait(20)
    clock[0] = 106.0
    assert stack.supervise(now=lambda: clock[0]) == []  # second restart waits 10 s
    clock[0] = 116.0
    assert stack.supervise(now=lambda: clock[0]) == [dier]
    once = stack.spawn("once", _dummy(0), tmp_path / "o.log", dict(os.environ))
    once.process.wait(20)
    dier.process.wait(20)
    with pytest.raises(ChildDied) as info:
        stack.supervise(now=lambda: clock[0])
    assert info.value.child in (dier, once)
    stack.stop(timeout=2)


def test_a_restart_that_fails_to_start_is_counted_and_bounded(tmp_path, capsys):
    stack = Stack(policy=RestartPolicy(first_delay_s=0.0, max_restarts=2, window_s=60.0))
    child = stack.spawn("flaky", _dummy(2), tmp_path / "f.log", dict(os.environ), restart=True)
    child.start = lambda: (_ for _ in ()).throw(RuntimeError("port 1 busy"))
    child.process.wait(20)
    stack.supervise()
    stack.supervise()
    with pytest.raises(ChildDied, match="gave up after 2 restarts"):
        stack.supervise()
    assert "restart 1 of flaky (exit code 2); last log lines: line one | boom 2: it did not start again: port 1 busy" in (
        capsys.readouterr().out)
