"""Child processes of a dtmon command: start them in their own process groups, watch them,
and stop them all (newest first) on Ctrl-C, SIGTERM or SIGHUP, descendants included.

``Stack`` owns the children; ``run_until_interrupted`` blocks until an interrupt or a
child's death; ``interruptible`` / ``deferred_interrupts`` / ``signals_ignored`` decide
when a signal may cut in; ``descendants`` / ``terminate`` find and stop what a child left
behind (read from ``/proc``).
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
    """A child process exited while the stack was supposed to be running."""

    def __init__(self, child: "Child") -> None:
        super().__init__(f"{child.name} exited (code {child.process.returncode})")
        self.child = child


@dataclass
class Child:
    """A child process dtmon started, in its own process group, and where its output goes."""

    name: str
    process: subprocess.Popen
    address: str = ""
    log: Path | None = None


@dataclass
class Stack:
    """The child processes of one dtmon command, stopped in reverse start order."""

    children: list[Child] = field(default_factory=list)

    def start_service(self, start: Callable[[], Service], log: Path | None = None) -> Child:
        """Start a service with a ``dtmon.services.start_*`` call and track it.

        Ctrl-C/SIGTERM during the start is held until the service is tracked, so an
        interrupted start still stops it.
        """
        with deferred_interrupts():
            service = start()
            child = Child(service.name, service.process, service.address, log)
            self.children.append(child)
        return child

    def spawn(self, name: str, cmd: list[str], log: Path, env: dict[str, str], address: str = "") -> Child:
        """Start ``cmd`` with ``start_in_session`` and track it (an interrupt waits until it is tracked)."""
        with deferred_interrupts():
            child = Child(name, start_in_session(cmd, log, env), address, log)
            self.children.append(child)
        return child

    def first_dead(self) -> Child | None:
        """The first child that has exited, or None while all run."""
        return next((c for c in self.children if c.process.poll() is not None), None)

    def check(self) -> None:
        """Raises ChildDied if a child has exited."""
        dead = self.first_dead()
        if dead is not None:
            raise ChildDied(dead)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM each child's process group (newest first), SIGKILL after ``timeout`` s.

        Descendants that moved to a process group of their own (Spark's Python worker
        daemon does) and outlive their child are terminated too.
        """
        for child in reversed(self.children):
            if child.process.poll() is None:
                console.print(f"stopping {child.name} (pid {child.process.pid})")
            below = descendants(child.process.pid)
            stop_process(child.process, timeout)
            terminate(below, timeout)


def start_in_session(cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.Popen:
    """Start ``cmd`` in a new session (its own process group), stdout+stderr to ``log``, stdin closed."""
    with open(log, "wb") as out:
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


def report_death(error: ChildDied) -> None:
    """Print which child died, its exit code and the end of its log."""
    child = error.child
    code = child.process.returncode
    how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
    console.print(f"[bold red]{child.name} {how} unexpectedly[/]")
    text = tail(child.log)
    if text:
        console.print(Panel(text, title=f"last lines of {child.log}", border_style="red"), markup=False)


def run_until_interrupted(stack: Stack) -> int:
    """Block until Ctrl-C/SIGTERM (exit code 0) or until a child dies (reported, exit code 1)."""
    try:
        while True:
            stack.check()
            time.sleep(0.5)
    except KeyboardInterrupt:
        console.print("interrupted: stopping")
        return 0
    except ChildDied as error:
        report_death(error)
        return 1
