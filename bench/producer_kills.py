"""Producer crash trial: ``kill -9`` the producer at random moments, restart it, count every row.

Everything is real and on loopback: a Tansu broker (``dtmon.services``), the ``producer``
console code as a child process (``python -m producer.cli``), and a read-back of the raw
topic with ``isolation.level=read_committed``.

One trial: make a SYNTHETIC source (the 999 genuine rows repeated, ``--files`` files
``data_00000k.txt`` of ``--rows`` rows: each file is its own run) and start the producer;
each time it has logged ``streaming``, wait a random ``--min-delay`` .. ``--max-delay`` s
(uniform), ``kill -9`` it and start it again; after ``--kills`` kills let it finish. Then
read the topic back and check:

* every (file, line) of the source appears exactly once (rows counted, duplicates,
  missing), with the values of that line;
* every run has exactly one run-start and one run-end on every partition, in order
  (start, its data, end);
* time to recover after each kill: from the kill to the Kafka timestamp of the first
  message the restarted producer wrote.

Usage: ``python -m bench.producer_kills [--kills 10] [--files 4] [--rows 50000] [--rate 10000]``;
prints a JSON summary. ``run_trial`` is also used by ``tests/producer/test_restarts.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from dtmon.hits import decode_csv, encode_csv
from dtmon.services import free_port, start_broker
from dtmon.settings import default_genuine_source
from dtmon.wire import CONTENT_TYPE_CONTROL, decode_message, header_dict


def make_source(directory: Path, files: int, rows: int) -> dict[str, pa.Table]:
    """Write ``files`` SYNTHETIC DAQ files of ``rows`` rows (the genuine rows repeated); return name -> table.

    Rows are told apart by (file, line), so repeated values do not matter here.
    """
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "dtmon-synthetic.json").write_text(json.dumps({"generator": "bench.producer_kills", "rows": rows}))
    genuine = decode_csv(Path(default_genuine_source()).read_bytes()).table
    table = pa.concat_tables([genuine] * -(-(rows * files) // genuine.num_rows)).combine_chunks()
    out = {}
    for k in range(files):
        name = f"data_{k:06d}.txt"
        part = table.slice(k * rows, rows)
        (directory / name).write_bytes(encode_csv(part))
        out[name] = part
    return out


class ChildLog:
    """Reads a child's stderr on a thread; remembers each line with its wall-clock time."""

    def __init__(self, process: subprocess.Popen):
        self.lines: list[tuple[float, str]] = []
        self.seen = threading.Condition()
        self.thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self.thread.start()

    def _read(self, process) -> None:
        for line in process.stderr:
            with self.seen:
                self.lines.append((time.time(), line.rstrip()))
                self.seen.notify_all()

    def wait_for(self, text: str, timeout: float) -> bool:
        """True once a line containing ``text`` was read (False after ``timeout`` s)."""
        deadline = time.monotonic() + timeout
        with self.seen:
            while not any(text in line for _, line in self.lines):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.seen.wait(left)
            return True


def read_back(bootstrap: str, topic: str, timeout: float = 60.0) -> list:
    """Every message of ``topic`` from the beginning, ``isolation.level=read_committed``."""
    from dtmon.kafka import KafkaClients

    return KafkaClients(bootstrap).read_all(topic, timeout, f"kills-{uuid.uuid4().hex[:8]}", isolation_level="read_committed")


def check_topic(messages: list, source: dict[str, pa.Table]) -> dict:
    """Count rows and run markers of the read-back messages against the source.

    Returns a dict: ``rows_in_source``, ``rows_counted`` (data rows read back),
    ``duplicates`` (rows read more than once, extra copies), ``missing`` (source rows
    never read), ``wrong_values`` (rows whose values differ from their source line),
    ``runs`` (run -> {"starts", "ends"} summed over partitions), ``framing_errors``
    (out-of-order markers or data outside a run, per partition), ``partitions``.
    """
    seen: Counter = Counter()
    wrong = 0
    runs: dict[int, dict[str, int]] = defaultdict(lambda: {"starts": 0, "ends": 0})
    framing: list[str] = []
    by_partition: dict[int, list] = defaultdict(list)
    for m in messages:
        by_partition[m.partition()].append(m)
    for partition, msgs in sorted(by_partition.items()):
        open_run = None
        for m in sorted(msgs, key=lambda m: m.offset()):
            h = header_dict(m.headers())
            if h.get("content-type") == CONTENT_TYPE_CONTROL:
                doc = json.loads(m.value())
                if doc["event"] == "run-start":
                    runs[doc["run"]]["starts"] += 1
                    if open_run is not None:
                        framing.append(f"p{partition}@{m.offset()}: run-start {doc['run']} while run {open_run} open")
                    open_run = doc["run"]
                else:
                    runs[doc["run"]]["ends"] += 1
                    if open_run != doc["run"]:
                        framing.append(f"p{partition}@{m.offset()}: run-end {doc['run']} while run {open_run} open")
                    open_run = None
                continue
            if open_run is None or str(open_run) != h.get("dtmon-run"):
                framing.append(f"p{partition}@{m.offset()}: data of run {h.get('dtmon-run')} while run {open_run} open")
            table = decode_message(m.value(), h["content-type"])
            name, first = h["dtmon-file"], int(h["dtmon-first-line"])
            lines = range(first, first + table.num_rows)
            seen.update((name, line) for line in lines)
            expected = source[name].slice(first - 2, table.num_rows)  # line 1 is the header
            if not expected.equals(table):
                wrong += table.num_rows
        if open_run is not None:
            framing.append(f"p{partition}: run {open_run} left open")
    wanted = {(name, line) for name, t in source.items() for line in range(2, t.num_rows + 2)}
    return {
        "rows_in_source": len(wanted),
        "rows_counted": sum(seen.values()),
        "duplicates": sum(c - 1 for c in seen.values() if c > 1),
        "missing": len(wanted - set(seen)),
        "unexpected": len(set(seen) - wanted),
        "wrong_values": wrong,
        "runs": {run: dict(v) for run, v in sorted(runs.items())},
        "framing_errors": framing[:20],
        "partitions": len(by_partition),
    }


@dataclass
class TrialResult:
    """Figures of one crash trial (times in s)."""

    kills: int
    kills_mid_stream: int  # kills after the killed producer had written at least one message
    restarts: int
    wall_s: float
    check: dict
    recover_s: list[float] = field(default_factory=list)  # kill -> first message of the next producer
    last_summary: str = ""


def _producer_cmd(bootstrap: str, topic: str, source: Path, rate: float, partitions: int, rows_per_message: int) -> list[str]:
    return [
        sys.executable, "-m", "producer.cli",
        "--source", str(source), "--bootstrap-servers", bootstrap, "--topic", topic,
        "--rate", str(rate), "--partitions", str(partitions), "--rows-per-message", str(rows_per_message),
        "--no-progress", "--log-level", "INFO",
    ]  # fmt: skip


def _timestamps(messages: list) -> np.ndarray:
    return np.sort(np.array([m.timestamp()[1] / 1000.0 for m in messages]))


def run_trial(
    bootstrap: str,
    topic: str,
    source_dir: Path,
    source: dict[str, pa.Table],
    kills: int,
    *,
    rate: float = 10_000,
    partitions: int = 1,
    rows_per_message: int = 2_000,
    min_delay_s: float = 0.0,
    max_delay_s: float = 1.5,
    seed: int = 1,
    finish_timeout_s: float = 300.0,
) -> TrialResult:
    """Run the producer on ``source_dir``, ``kill -9`` it ``kills`` times at random moments, let it finish, check the topic.

    Each kill comes a random ``min_delay_s`` .. ``max_delay_s`` s after the producer logged
    ``streaming`` (it has listed the source; it then reads its position, the first file
    and starts sending). A producer that finishes before its kill ends the trial early.

    Raises:
        RuntimeError: the last producer did not exit 0 within ``finish_timeout_s``.
    """
    rng = random.Random(seed)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = _producer_cmd(bootstrap, topic, source_dir, rate, partitions, rows_per_message)
    t0 = time.time()
    kill_times: list[float] = []
    done = killed = 0
    summary = ""
    while True:
        process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
        log = ChildLog(process)
        if killed < kills:
            log.wait_for("streaming", 60.0)
            time.sleep(rng.uniform(min_delay_s, max_delay_s))
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
                kill_times.append(time.time())
                process.wait()
                killed += 1
                continue
        try:
            out, _ = process.communicate(timeout=finish_timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise RuntimeError(f"producer did not finish within {finish_timeout_s} s") from None
        if process.returncode != 0:
            raise RuntimeError(f"producer exited {process.returncode}: {[l for _, l in log.lines][-10:]}")
        summary = out.strip().splitlines()[0] if out.strip() else ""
        done = 1
        break
    wall = time.time() - t0
    messages = read_back(bootstrap, topic)
    stamps = _timestamps(messages)
    recover, mid = [], 0
    for t_kill in kill_times:
        after = stamps[stamps > t_kill]
        if len(after):
            recover.append(round(float(after[0] - t_kill), 3))
        before = stamps[stamps <= t_kill]
        previous_kill = max([t for t in kill_times if t < t_kill], default=t0)
        mid += bool(len(before) and before[-1] > previous_kill)
    return TrialResult(
        kills=killed,
        kills_mid_stream=mid,
        restarts=killed + done - 1,
        wall_s=round(wall, 2),
        check=check_topic(messages, source),
        recover_s=recover,
        last_summary=summary,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--rows", type=int, default=50_000, help="rows per file")
    parser.add_argument("--rate", type=float, default=10_000, help="producer rate, rows/s")
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--rows-per-message", type=int, default=2_000)
    parser.add_argument("--min-delay", type=float, default=0.0, help="least s between 'streaming' and the kill")
    parser.add_argument("--max-delay", type=float, default=3.0, help="largest s between 'streaming' and the kill")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        broker = start_broker(port=free_port(), log=Path(tmp) / "tansu.log")
        try:
            source = make_source(Path(tmp) / "src", args.files, args.rows)
            result = run_trial(
                broker.address,
                f"kills-{uuid.uuid4().hex[:8]}",
                Path(tmp) / "src",
                source,
                args.kills,
                rate=args.rate,
                partitions=args.partitions,
                rows_per_message=args.rows_per_message,
                min_delay_s=args.min_delay,
                max_delay_s=args.max_delay,
                seed=args.seed,
            )
        finally:
            broker.stop()
    out = asdict(result)
    if result.recover_s:
        out["recover_s_median"] = float(np.median(result.recover_s))
        out["recover_s_max"] = max(result.recover_s)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
