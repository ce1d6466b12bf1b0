"""Child processes of a dtmon command: start them in their own process groups, watch them,
restart the ones that die, and stop them all (newest first) on Ctrl-C, SIGTERM or SIGHUP,
descendants included.

``Stack`` owns the children; ``Stack.supervise`` restarts a dead child that knows how to
start again (``Child.start``) after a backoff (``RestartPolicy``: 1 s, 2 s, 4 s ... capped;
it gives up after ``max_restarts`` restarts within ``window_s``), one log line per restart;
``run_until_interrupted`` supervises until an interrupt, or until a child that cannot be
restarted dies or one is given up on. ``interruptible`` / ``deferred_interrupts`` /
``signals_ignored`` decide when a signal may cut in; ``descendants`` / ``terminate`` /
``group_members`` find and stop what a child left behind (read from ``/proc``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from rich.console import Console
from rich.panel import Panel

from dtmon.services import Service, stop_process

console = Console(highlight=False, soft_wrap=True)
"""Where the supervisor reports (stderr of the dtmon command)."""


class ChildDied(Exception):
    """A child process exited while the stack was supposed to be running (``gave_up``: after
    the restarts its ``RestartPolicy`` allows)."""

    def __init__(self, child: "Child", gave_up: str = "") -> None:
        super().__init__(f"{child.name} exited (code {child.process.returncode})" + (f"; {gave_up}" if gave_up else ""))
        self.child = child
        self.gave_up = gave_up


@dataclass(frozen=True)
class RestartPolicy:
    """Bounded restarts with exponential backoff.

    The k-th restart within ``window_s`` s (k = 0, 1, ...) waits ``min(first_delay_s * 2**k,
    max_delay_s)`` s after the death was seen; once ``max_restarts`` restarts fall within the
    last ``window_s`` s, the next death is final.
    """

    first_delay_s: float = 1.0
    max_delay_s: float = 30.0
    max_restarts: int = 5
    window_s: float = 300.0

    def recent(self, restarts: list[float], now: float) -> int:
        """Restarts (monotonic times, s) within the last ``window_s`` s of ``now``."""
        return sum(1 for t in restarts if now - t < self.window_s)

    def delay_s(self, recent: int) -> float:
        """Backoff before the next restart when ``recent`` restarts fall within the window, s."""
        return min(self.first_delay_s * 2**recent, self.max_delay_s)


@dataclass
class Child:
    """A child process dtmon started, in its own process group, and where its output goes.

    ``start`` (None: not restartable) starts the child again and returns the new process;
    ``after_restart`` runs once it is back (e.g. create topics on a restarted broker).
    ``restarts`` holds the monotonic times of its restarts; ``died_at`` when its death was
    first seen (None while it runs).
    """

    name: str
    process: subprocess.Popen
    address: str = ""
    log: Path | None = None
    start: Callable[[], subprocess.Popen] | None = None
    after_restart: Callable[["Child"], None] | None = None
    restarts: list[float] = field(default_factory=list)
    died_at: float | None = None


@dataclass
class Stack:
    """The child processes of one dtmon command, stopped in reverse start order."""

    children: list[Child] = field(default_factory=list)
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    on_restart: Callable[[Child], None] | None = None
    """Called after every restart (e.g. to record the new pids)."""

    def start_service(self, start: Callable[[], Service], log: Path | None = None, restart: bool = False) -> Child:
        """Start a service with a ``dtmon.services.start_*`` call and track it; with ``restart``,
        ``supervise`` starts it again the same way when it dies.

        Ctrl-C/SIGTERM during the start is held until the service is tracked, so an
        interrupted start still stops it.
        """
        with deferred_interrupts():
            service = start()
            child = Child(service.name, service.process, service.address, log,
                          start=(lambda: start().process) if restart else None)  # fmt: skip
            self.children.append(child)
        return child

    def spawn(
        self, name: str, cmd: list[str], log: Path, env: dict[str, str], address: str = "", restart: bool = False
    ) -> Child:
        """Start ``cmd`` with ``start_in_session`` and track it (an interrupt waits until it is tracked);
        with ``restart``, ``supervise`` starts it again (output appended to ``log``) when it dies."""
        with deferred_interrupts():
            child = Child(name, start_in_session(cmd, log, env), address, log,
                          start=(lambda: start_in_session(cmd, log, env, append=True)) if restart else None)  # fmt: skip
            self.children.append(child)
        return child

    def supervise(self, now: Callable[[], float] = time.monotonic) -> list[Child]:
        """Restart the children that died and whose backoff has passed; returns those restarted.

        A death is logged (``restart_line``) when the child starts again; the process group
        the dead child leaves behind is stopped first.

        Raises:
            ChildDied: a child without ``start`` died, or one died again after
                ``policy.max_restarts`` restarts within ``policy.window_s`` s.
        """
        restarted = []
        for child in self.children:
            if child.process.poll() is None:
                continue
            t = now()
            if child.died_at is None:
                child.died_at = t
            if child.start is None:
                raise ChildDied(child)
            recent = self.policy.recent(child.restarts, t)
            if recent >= self.policy.max_restarts:
                raise ChildDied(child, f"gave up after {recent} restarts within {self.policy.window_s:g} s")
            if t - child.died_at < self.policy.delay_s(recent):
                continue
            self.restart(child, t)
            restarted.append(child)
        return restarted

    def restart(self, child: Child, t: float | None = None, reason: str = "", count: bool = True) -> None:
        """Stop what is left of ``child`` (its process group), start it again and log one line.

        ``count``: the restart counts against ``policy`` (False for a restart dtmon itself asks
        for, e.g. a processor whose input was lost); ``reason`` replaces the exit code in the line.
        """
        if child.start is None:
            raise ValueError(f"{child.name} cannot be restarted")
        t = time.monotonic() if t is None else t
        old = child.process
        stop_process(old, timeout=5.0)
        terminate(group_members(old.pid), timeout=5.0)
        n = len(child.restarts) + 1
        line = restart_line(child, n, reason)
        if child.log is not None:
            with open(child.log, "ab") as out:
                out.write(f"\n{RESTART_MARK} {line}\n".encode())
        if count:
            child.restarts.append(t)
        try:
            with deferred_interrupts():
                child.process = child.start()
        except (OSError, RuntimeError, TimeoutError) as exc:  # counted: the policy bounds the attempts
            console.print(f"[bold red]{line}: it did not start again: {exc}[/]")
            child.died_at = t
            return
        child.died_at = None
        console.print(f"[bold yellow]{line}[/] (new pid {child.process.pid})")
        if child.after_restart is not None:
            child.after_restart(child)
        if self.on_restart is not None:
            self.on_restart(child)

    def first_dead(self) -> Child | None:
        """The first child that has exited, or None while all run."""
        return next((c for c in self.children if c.process.poll() is not None), None)

    def check(self) -> None:
        """Raises ChildDied if a child has exited."""
        dead = self.first_dead()
        if dead is not None:
            raise ChildDied(dead)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM each child's process group (newest first), SIGKILL after ``timeout`` s.

        The processor may need most of ``timeout``: it finishes a running micro-batch (up to
        10 s) before it stops Spark, which takes longer on a loaded machine.

        Descendants that moved to a process group of their own (Spark's Python worker
        daemon does) and outlive their child are terminated too.
        """
        for child in reversed(self.children):
            if child.process.poll() is None:
                console.print(f"stopping {child.name} (pid {child.process.pid})")
            below = descendants(child.process.pid)
            stop_process(child.process, timeout)
            terminate(below, timeout)


def start_in_session(
    cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None, append: bool = False
) -> subprocess.Popen:
    """Start ``cmd`` in a new session (its own process group), stdout+stderr to ``log`` (appended
    to with ``append``, else truncated), stdin closed."""
    with open(log, "ab" if append else "wb") as out:
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=cwd, start_new_session=True
        )


def console_script(name: str, module: str | None = None) -> list[str]:
    """Command that runs console script ``name`` of this environment (``<module>:app`` if it is
    missing; module default ``<name>.cli``)."""
    script = Path(sys.executable).parent / name
    if script.is_file():
        return [str(script)]
    module = module or f"{name}.cli"
    return [sys.executable, "-c", f"import sys; sys.argv[0] = {name!r}; from {module} import app; app()"]


def _proc_state(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of a process from /proc/<pid>/stat, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def group_members(pgid: int) -> set[int]:
    """Pids of the running processes in process group ``pgid`` (read from /proc)."""
    members = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.add(int(entry.name))
    return members


def process_parents() -> dict[int, int]:
    """pid -> parent pid of every process on the machine, read from /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        state = _proc_state(int(entry.name)) if entry.name.isdigit() else None
        if state is not None:
            parents[int(entry.name)] = state[1]
    return parents


def descendants(pid: int, parents: dict[int, int] | None = None) -> set[int]:
    """Pids of all processes below ``pid`` (children, grandchildren, ...) in ``parents``
    (pid -> parent pid; default ``process_parents()``)."""
    parents = process_parents() if parents is None else parents
    found: set[int] = set()
    level = {pid}
    while level:
        level = {p for p, parent in parents.items() if parent in level} - found
        found |= level
    return found


def running(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    state = _proc_state(pid)
    return state is not None and state[0] != "Z"


def terminate(pids: set[int], timeout: float) -> None:
    """SIGTERM the processes of ``pids`` still running, SIGKILL those left after ``timeout`` s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        left = [p for p in pids if running(p)]
        for pid in left:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = [p for p in left if running(p)]
        if not left:
            return


def tail(path: Path | None, lines: int = 25) -> str:
    """The last ``lines`` lines of a log file ('' if there is none)."""
    if path is None or not path.is_file():
        return ""
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        fh.seek(max(0, fh.tell() - 64_000))
        text = fh.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def _interrupt(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt


@contextmanager
def interruptible() -> Iterator[None]:
    """Turn SIGINT, SIGTERM and SIGHUP into KeyboardInterrupt while the block runs.

    SIGINT is handled even when the shell started us with it ignored (``cmd &`` in a
    script); SIGHUP is left alone when ignored (``nohup``).
    """
    wanted = [signal.SIGINT, signal.SIGTERM]
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        wanted.append(signal.SIGHUP)
    old = {s: signal.signal(s, _interrupt) for s in wanted}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold Ctrl-C/SIGTERM/SIGHUP while the block runs; raise KeyboardInterrupt at its end if one came.

    Used around "start a child and record it", so no interrupt can fall in between.
    """
    pending: list[int] = []
    watched = [signal.SIGINT, signal.SIGTERM]
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        watched.append(signal.SIGHUP)
    old = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in watched}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    if pending:
        raise KeyboardInterrupt


@contextmanager
def signals_ignored() -> Iterator[None]:
    """Ignore Ctrl-C/SIGTERM/SIGHUP so a second Ctrl-C cannot cut the shutdown short."""
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def exit_text(code: int | None) -> str:
    """How a process ended, e.g. ``exit code 3`` or ``exit code -9 (SIGKILL)``."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"exit code {code} ({signal.Signals(-code).name})"
        except ValueError:
            pass
    return f"exit code {code}"


RESTART_MARK = "---- dtmon:"
"""Start of the line written into a child's log before it is started again."""


def restart_line(child: Child, n: int, reason: str = "", lines: int = 3, width: int = 300) -> str:
    """One line for the ``n``-th restart of ``child``: name, exit code (or ``reason``) and the
    last ``lines`` lines of its log joined by `` | `` (at most ``width`` characters)."""
    text = tail(child.log, 25).splitlines()
    marks = [i for i, line in enumerate(text) if line.startswith(RESTART_MARK)]
    own = [line.strip() for line in text[marks[-1] + 1 if marks else 0 :] if line.strip()]  # this start's output only
    last = " | ".join(own[-lines:])
    if len(last) > width:
        last = "..." + last[-width:]
    why = reason or exit_text(child.process.returncode)
    return f"restart {n} of {child.name} ({why})" + (f"; last log lines: {last}" if last else "")


def report_death(error: ChildDied) -> None:
    """Print which child died, its exit code and the end of its log (and why it was given up on)."""
    child = error.child
    code = child.process.returncode
    how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
    if error.gave_up:
        console.print(f"[bold red]{child.name} {how}; {error.gave_up}: stopping everything[/]")
    else:
        console.print(f"[bold red]{child.name} {how} unexpectedly[/]")
    text = tail(child.log)
    if text:
        console.print(Panel(text, title=f"last lines of {child.log}", border_style="red"), markup=False)


def run_until_interrupted(stack: Stack, poll_s: float = 0.5) -> int:
    """Supervise ``stack`` (``Stack.supervise``: restart dead children) until Ctrl-C/SIGTERM (exit
    code 0), or until a child that cannot be restarted dies or is given up on (reported, exit code 1)."""
    try:
        while True:
            stack.supervise()
            time.sleep(poll_s)
    except KeyboardInterrupt:
        console.print("interrupted: stopping")
        return 0
    except ChildDied as error:
        report_death(error)
        return 1
