"""Checks the processor makes before it starts Spark: Java, the broker, the checkpoint.

Each failure is one line for the operator (``PreflightError``): what is wrong, where (the
file), and what to do. Pure except for running ``java -version`` and reading files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

JAVA_MIN = 17
"""Oldest Java major version Spark 4 runs on."""
JAVA_INSTALL = "apt-get install openjdk-17-jre-headless"


class PreflightError(RuntimeError):
    """The processor cannot start; the message is one line saying what to do."""


def java_major(version_output: str) -> int | None:
    """Java major version from ``java -version`` output (``"17.0.15"`` -> 17, ``"1.8.0_402"`` -> 8), or None."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def find_java(environ: dict[str, str] | None = None) -> str | None:
    """The ``java`` Spark would run: ``$JAVA_HOME/bin/java`` if ``JAVA_HOME`` is set, else ``java`` on PATH."""
    env = os.environ if environ is None else environ
    if env.get("JAVA_HOME"):
        return str(Path(env["JAVA_HOME"]) / "bin" / "java")
    return shutil.which("java", path=env.get("PATH"))


def check_java(environ: dict[str, str] | None = None, minimum: int = JAVA_MIN) -> str:
    """Check that a Java ``minimum``+ is there for Spark; return its first ``-version`` line.

    Raises:
        PreflightError: no java, it does not run, or it is older than ``minimum``
            (the message names the java found and the install command).
    """
    java = find_java(environ)
    if java is None or not Path(java).exists():
        where = f"JAVA_HOME={os.environ.get('JAVA_HOME') if environ is None else environ.get('JAVA_HOME')}" if java else "no java on PATH"
        raise PreflightError(f"Java {minimum}+ is needed for Spark and none was found ({where}): {JAVA_INSTALL}")
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PreflightError(f"{java} -version failed ({exc}); Java {minimum}+ is needed for Spark: {JAVA_INSTALL}") from None
    text = (out.stderr or out.stdout).strip()
    major = java_major(text)
    first = text.splitlines()[0] if text else "no output"
    if major is None or major < minimum:
        raise PreflightError(f"Java {minimum}+ is needed for Spark, found {java}: {first}: {JAVA_INSTALL} (or set JAVA_HOME)")
    return first


@dataclass(frozen=True)
class CheckpointOffsets:
    """The newest source offsets a Spark checkpoint recorded: ``{topic: {partition: next offset}}`` and its file."""

    file: Path
    offsets: dict[str, dict[str, int]]


def read_checkpoint_offsets(checkpoint: str | Path) -> CheckpointOffsets | None:
    """The newest ``offsets/<batch>`` file of a Spark streaming checkpoint, read as this source's offsets.

    Returns None when the checkpoint has no offsets yet (new query).

    Raises:
        PreflightError: a file of the checkpoint cannot be read or parsed (names the file).
    """
    root = Path(checkpoint)
    metadata = root / "metadata"
    if metadata.exists():
        try:
            json.loads(metadata.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError) as exc:
            raise _corrupt(root, metadata, exc) from None
    folder = root / "offsets"
    if not folder.is_dir():
        return None
    batches = sorted((int(p.name), p) for p in folder.iterdir() if p.name.isdigit())
    if not batches:
        return None
    path = batches[-1][1]
    try:
        lines = path.read_text().splitlines()
        if not lines or not lines[0].startswith("v"):
            raise ValueError("no version line")
        offsets = json.loads(lines[2])  # v1, batch metadata, then one line per source
        parsed = {str(t): {str(p): int(o) for p, o in parts.items()} for t, parts in offsets.items()}
    except (OSError, ValueError, IndexError, AttributeError, TypeError) as exc:
        raise _corrupt(root, path, exc) from None
    return CheckpointOffsets(path, parsed)


def _corrupt(root: Path, path: Path, exc: Exception) -> PreflightError:
    return PreflightError(
        f"checkpoint {root}: file {path} is corrupt ({type(exc).__name__}: {exc}); "
        "start with --reset-checkpoint to move the checkpoint aside and read the topic anew"
    )


def check_offsets(found: CheckpointOffsets, topic: str, ends: dict[int, int]) -> str | None:
    """Why a checkpoint's offsets do not fit the topic (None if they do).

    Args:
        found: the checkpoint's newest offsets.
        topic: the raw topic the processor reads.
        ends: partition -> log end offset of ``topic`` now.
    Returns:
        one line: another topic, or offsets past the end (a recreated topic), with the file.
    """
    if topic not in found.offsets:
        other = ", ".join(sorted(found.offsets)) or "no topic"
        return f"checkpoint file {found.file} belongs to topic {other}, not {topic}"
    past = [(int(p), o, ends.get(int(p), 0)) for p, o in found.offsets[topic].items() if o > ends.get(int(p), 0)]
    if past:
        p, o, end = past[0]
        return (
            f"checkpoint file {found.file} is at offset {o:,} of {topic}/{p}, past the topic's end {end:,} "
            "(the topic was recreated?)"
        )
    return None


def move_aside(checkpoint: str | Path, now: float | None = None) -> Path:
    """Rename the checkpoint directory to ``<dir>.reset-<UTC time>``; return the new path."""
    root = Path(checkpoint)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    target = root.with_name(f"{root.name}.reset-{stamp}")
    root.rename(target)
    return target


def check_checkpoint(checkpoint: str | Path, topic: str, ends: dict[int, int] | None, reset: bool) -> str | None:
    """Refuse, or with ``reset`` move aside, a checkpoint that does not fit ``topic``.

    Args:
        checkpoint: the query's checkpoint directory.
        topic: the raw topic.
        ends: partition -> log end offset of ``topic`` (None: the topic does not exist yet, end 0).
        reset: move a checkpoint that does not fit (or is corrupt) aside instead of refusing.
    Returns:
        None when the checkpoint fits (or there is none); with ``reset``, the one-line
        description of the reset (for the ``checkpoint_reset`` stream event).
    Raises:
        PreflightError: the checkpoint does not fit or is corrupt and ``reset`` is False.
    """
    if not Path(checkpoint).exists():
        return None
    try:
        found = read_checkpoint_offsets(checkpoint)
        why = None if found is None else check_offsets(found, topic, ends or {})
    except PreflightError as exc:
        if not reset:
            raise
        why = str(exc).split("; start with")[0]
    if why is None:
        return None
    if not reset:
        raise PreflightError(
            f"{why}: not resumed (rows would be skipped or read twice); start with --reset-checkpoint to move "
            f"{checkpoint} aside and start a new query, or pass another --checkpoint-location"
        )
    moved = move_aside(checkpoint)
    return f"{why}; checkpoint moved to {moved}, a new query starts"
