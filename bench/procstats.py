"""CPU seconds and peak RSS of process trees, read from ``/proc`` (psutil is not needed).

A *tree* is a root process and all its descendants (e.g. the processor's JVM and its
Python workers). ``TreeSampler`` reads ``/proc/<pid>/stat`` and ``/proc/<pid>/status``
every ``interval_s`` seconds in a thread:

* CPU seconds of a tree = sum over its live processes of utime + stime + cutime + cstime
  (``cutime``/``cstime`` hold the children a process has already reaped, so processes
  that ended inside the tree are counted too), divided by ``SC_CLK_TCK``;
* peak RSS of a tree = the largest of (sum of ``VmRSS`` over the tree at one sample) and
  (the largest single ``VmHWM``), in bytes.

When the root is reaped with ``os.wait4`` (``reap``), the kernel's CPU total
(``ru_utime + ru_stime``, reaped descendants included) is folded in, so the last moments
after the final sample are not lost. ``ru_maxrss`` is NOT used: on Linux a child's value
starts from its parent's RSS at fork time, so it would report the benchmark's own size.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from dtmon.supervisor import descendants, process_parents

CLK_TCK = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")
RSS_SERIES_S = 5.0
"""s between two points of a tree's RSS series."""


@dataclass(frozen=True)
class ProcSample:
    """One process at one moment: parent pid, CPU seconds (own + reaped children), RSS and HWM in bytes."""

    pid: int
    ppid: int
    cpu_s: float
    rss: int
    hwm: int


def parse_stat(text: str) -> tuple[int, float]:
    """(ppid, utime+stime+cutime+cstime in s) from the text of ``/proc/<pid>/stat``.

    The command name (field 2) is in parentheses and may hold spaces, so fields are
    counted after the last ``)``: field 4 = ppid, 14-17 = utime, stime, cutime, cstime
    (clock ticks; proc(5)).
    """
    rest = text[text.rindex(")") + 2 :].split()
    ppid = int(rest[1])
    ticks = sum(int(v) for v in rest[11:15])
    return ppid, ticks / CLK_TCK


def parse_status_kb(text: str, key: str) -> int:
    """Value in bytes of a ``kB`` line of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``); 0 if absent."""
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def read_process(pid: int) -> ProcSample | None:
    """Sample one process; None if it is gone."""
    try:
        ppid, cpu = parse_stat((PROC / str(pid) / "stat").read_text())
        status = (PROC / str(pid) / "status").read_text()
    except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
        return None
    return ProcSample(pid, ppid, cpu, parse_status_kb(status, "VmRSS"), parse_status_kb(status, "VmHWM"))


def tree(root: int, parents: dict[int, int]) -> list[int]:
    """``root`` and every process below it in ``parents`` (pid -> ppid, ``dtmon.supervisor.process_parents``), root first."""
    return [root, *sorted(descendants(root, parents))]


@dataclass
class TreeUsage:
    """Running totals of one tree: CPU s and peak RSS in bytes; ``rss_mb``: (epoch s, tree RSS MB)
    every ``RSS_SERIES_S`` s, for a slope over a run (``bench.soak.rss_slope_mb_per_h``)."""

    cpu_s: float = 0.0
    peak_rss: int = 0
    rss_mb: list[tuple[float, float]] = field(default_factory=list)


class TreeSampler:
    """Samples the trees of registered root pids every ``interval_s`` s until ``close()``."""

    def __init__(self, interval_s: float = 0.25):
        self.interval_s = interval_s
        self.roots: dict[str, int] = {}
        self.usage: dict[str, TreeUsage] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-proc-sampler", daemon=True)
        self._thread.start()

    def add(self, name: str, pid: int) -> None:
        """Follow the tree of ``pid`` under ``name`` (a name added again restarts its totals)."""
        with self._lock:
            self.roots[name] = pid
            self.usage[name] = TreeUsage()

    def sample(self) -> None:
        """Take one sample of every registered tree whose root is alive."""
        with self._lock:
            roots = dict(self.roots)
        if not roots:
            return
        parents = process_parents()
        for name, root in roots.items():
            if root not in parents:
                continue
            procs = [p for p in (read_process(pid) for pid in tree(root, parents)) if p is not None]
            if not procs or procs[0].pid != root:
                continue
            with self._lock:
                usage = self.usage[name]
                usage.cpu_s = max(usage.cpu_s, sum(p.cpu_s for p in procs))
                usage.peak_rss = max(usage.peak_rss, sum(p.rss for p in procs), max(p.hwm for p in procs))
                now = time.time()
                if not usage.rss_mb or now - usage.rss_mb[-1][0] >= RSS_SERIES_S:
                    usage.rss_mb.append((now, sum(p.rss for p in procs) / 1e6))

    def reap(self, name: str, rusage) -> None:
        """Fold in the kernel's totals from ``os.wait4`` for the root of ``name`` and stop following it."""
        with self._lock:
            usage = self.usage.setdefault(name, TreeUsage())
            if rusage is not None:
                usage.cpu_s = max(usage.cpu_s, rusage.ru_utime + rusage.ru_stime)
            self.roots.pop(name, None)

    def forget(self, name: str) -> None:
        """Stop following ``name`` (keeps its totals)."""
        with self._lock:
            self.roots.pop(name, None)

    def rss_series(self, name: str, since: float = 0.0, until: float = float("inf")) -> list[tuple[float, float]]:
        """(epoch s, RSS MB) samples of tree ``name`` taken between ``since`` and ``until`` (epoch s)."""
        with self._lock:
            usage = self.usage.get(name)
            return [s for s in usage.rss_mb if since <= s[0] <= until] if usage else []

    def cpu_now(self) -> dict[str, float]:
        """Take a sample now and return CPU seconds so far per tree (to measure a window)."""
        self.sample()
        with self._lock:
            return {n: u.cpu_s for n, u in self.usage.items()}

    def result(self, cpu_since: dict[str, float] | None = None, cpu_until: dict[str, float] | None = None
               ) -> dict[str, dict[str, float]]:
        """``{name: {"cpu_s": s, "peak_rss_mb": MB}}`` for every tree seen.

        With ``cpu_since``/``cpu_until`` (from ``cpu_now``), CPU seconds are those spent
        between the two; peak RSS is always over the whole life.
        """
        since, until = cpu_since or {}, cpu_until or {}
        with self._lock:
            return {
                n: {"cpu_s": round(until.get(n, u.cpu_s) - since.get(n, 0.0), 1), "peak_rss_mb": round(u.peak_rss / 1e6)}
                for n, u in self.usage.items()
            }

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
            except Exception:  # noqa: BLE001, S112 - a sampling hiccup must not end the benchmark
                continue

    def close(self) -> None:
        """Stop the sampling thread."""
        self._stop.set()
        self._thread.join(5)


def wait_reap(pid: int, timeout_s: float):
    """Wait for child ``pid`` with ``os.wait4``; return (rusage, wait status), or None on timeout / not our child."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            done, status, rusage = os.wait4(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if done == pid:
            return rusage, status
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


def process_kind(pid: int) -> str:
    """What a browser process is, from its command line: Chromium's ``--type`` (``renderer``,
    ``gpu-process``, ``utility``, ``zygote``; ``browser`` for Chromium's main process), else the
    executable's name (``node`` for the Playwright driver); ``gone`` if the process ended."""
    try:
        args = (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").split()
    except OSError:
        return "gone"
    kind = next((a.split("=", 1)[1] for a in args if a.startswith("--type=")), None)
    if kind is not None:
        return kind
    name = Path(args[0]).name if args else ""
    return "browser" if "chrom" in name else name or "unknown"


def tree_by_kind_mb(root: int) -> dict[str, float]:
    """Memory of the tree under ``root`` summed per ``process_kind``, in MB (10⁶ bytes):
    ``"<kind> rss"`` (VmRSS), ``"<kind> anon"`` (RssAnon: the process's own heap pages) and
    ``"<kind> shmem"`` (RssShmem: shared memory, which every process mapping it counts again in
    its RSS, so a tree's RSS sum overstates it); empty if ``root`` is gone. Not PSS: it divides
    shared library pages among all processes mapping them, so it moves whenever another Chromium
    starts or stops on the machine."""
    parents = process_parents()
    if root not in parents:
        return {}
    out: dict[str, float] = {}
    for pid in tree(root, parents):
        try:
            status = (PROC / str(pid) / "status").read_text()
        except OSError:
            continue
        kind = process_kind(pid)
        for key, label in (("VmRSS", "rss"), ("RssAnon", "anon"), ("RssShmem", "shmem")):
            name = f"{kind} {label}"
            out[name] = out.get(name, 0.0) + parse_status_kb(status, key) / 1e6
    return out
