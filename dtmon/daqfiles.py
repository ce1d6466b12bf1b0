"""DAQ files: which files of a folder are DAQ files, their order and names, the synthetic
marker, and the run number a file's path gives.

Which files of a directory (or S3 "directory") are DAQ files - the selection rule:

1. only regular files / objects whose name ends in ``.txt`` or ``.csv`` (any case), not
   hidden (no leading ``.``); the synthetic manifest ``dtmon-synthetic.json`` and
   anything else (``.dat``, ``.md``, ...) is never streamed;
2. if at least one name matches the DAQ naming ``data_*.txt``, only those files are
   streamed (so a ``notes.txt`` beside the DAQ files is left alone);
3. files are streamed in *natural* file-name order: digit runs compare as numbers, so
   ``data_2.txt`` < ``data_10.txt`` and zero-padded names keep their plain order.

Synthetic data marker: files in a directory (or S3 "directory") that holds
``dtmon-synthetic.json``, and S3 objects with object metadata ``dtmon-synthetic: 1``,
are synthetic; the producer labels their messages with the ``dtmon-synthetic: 1`` header.

Run number of a path or S3 key, first rule that applies:

1. the file name holds a run token ``run<digits>`` (``Run_50.txt``, ``run810_data_3.txt``;
   ``run``, then an optional ``_`` or ``-``, then digits; any case; not part of a longer
   word such as ``rerun5``) -> those digits;
2. the innermost directory named exactly like a run (``Run000810``, ``run_810``,
   ``RUN-810``) -> those digits;
3. the file name holds ``data_<digits>`` (``data_000003.txt``) -> those digits;
4. the last run of digits in the file name (``test_3.csv`` -> 3);
5. otherwise a ``ValueError``: pass ``--run``.

Run numbers are integers 0 .. 2**31 - 1 (the processor's int32 ``run`` column).
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path, PurePosixPath

from dtmon.wire import MAX_RUN

SYNTHETIC_MANIFEST = "dtmon-synthetic.json"
"""File beside synthetic DAQ files (generator version, seed, parameters)."""

SYNTHETIC_METADATA_KEY = "dtmon-synthetic"
"""S3 object metadata key set to ``1`` on synthetic objects."""
SYNTHETIC_METADATA = {SYNTHETIC_METADATA_KEY: "1"}
"""S3 object metadata that marks a synthetic DAQ file."""

DATA_SUFFIXES = (".txt", ".csv")
"""File suffixes of DAQ CSV files."""
DAQ_NAME_PATTERN = "data_*.txt"


class SourceError(ValueError):
    """The source cannot be listed or read (message says which and why)."""


def daq_file_name(index: int) -> str:
    """DAQ file name of file ``index``: ``data_000000.txt``, ``data_000001.txt``, ..."""
    return f"data_{index:06d}.txt"


def natural_key(name: str) -> tuple:
    """Sort key for natural file-name order (digit runs compared as integers)."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def select_daq_names(names: list[str]) -> list[str]:
    """Apply the selection rule of this module to bare file names.

    Args:
        names: file names (no directories).
    Returns:
        The DAQ file names in natural order (rule in the module docstring).
    """
    candidates = [
        n for n in names if not n.startswith(".") and n != SYNTHETIC_MANIFEST and n.lower().endswith(DATA_SUFFIXES)
    ]
    daq_named = [n for n in candidates if fnmatch.fnmatchcase(n.lower(), DAQ_NAME_PATTERN)]
    return sorted(daq_named or candidates, key=natural_key)


def daq_files(path: Path) -> list[Path]:
    """The DAQ files at local ``path``: the file itself, or the selected files of a directory, in order.

    Raises:
        SourceError: ``path`` does not exist, is not a file or directory, or the directory holds no DAQ file.
    """
    path = Path(path).expanduser()
    if path.is_file():
        return [path]
    if not path.exists():
        raise SourceError(f"no such file or directory: {path}")
    if not path.is_dir():
        raise SourceError(f"not a regular file or directory: {path}")
    names = select_daq_names([p.name for p in path.iterdir() if p.is_file()])
    if not names:
        raise SourceError(f"no DAQ files ({DAQ_NAME_PATTERN}, *.txt, *.csv) in directory {path}")
    return [path / name for name in names]


def synthetic_manifest(path: Path) -> Path | None:
    """The ``dtmon-synthetic.json`` manifest in directory ``path`` (or beside file ``path``), or None."""
    folder = path if path.is_dir() else path.parent
    manifest = folder / SYNTHETIC_MANIFEST
    return manifest if manifest.is_file() else None


def is_synthetic_metadata(metadata: dict[str, str] | None) -> bool:
    """True if S3 user metadata (as boto3 returns it, keys lower-cased) marks the object synthetic."""
    value = {k.lower(): v for k, v in (metadata or {}).items()}.get(SYNTHETIC_METADATA_KEY, "")
    return value.strip().lower() in ("1", "true", "yes")


_RUN_IN_NAME = re.compile(r"(?<![a-z0-9])run[_-]?(\d+)(?![0-9])", re.IGNORECASE)
_RUN_DIRECTORY = re.compile(r"run[_-]?(\d+)", re.IGNORECASE)
_DATA_IN_NAME = re.compile(r"(?<![a-z0-9])data_(\d+)(?![0-9])", re.IGNORECASE)
_DIGITS = re.compile(r"\d+")


def _checked(run: int, origin: str) -> int:
    if not 0 <= run <= MAX_RUN:
        raise ValueError(f"run number {run} of {origin} is outside 0 .. {MAX_RUN}")
    return run


def run_number(path_or_key: str, explicit: int | None = None) -> int:
    """The run number of a DAQ file (rules in the module docstring).

    Args:
        path_or_key: local path (``/data/Run000810/data_000003.txt``), S3 key
            (``minidt/data_000003.txt``) or ``s3://`` URL of the file.
        explicit: the run number asked for (``--run``, already advanced per pass);
            it wins over the path when given.
    Returns:
        Run number, 0 .. ``MAX_RUN``.
    Raises:
        ValueError: no rule gives a number, or the number is outside 0 .. ``MAX_RUN``.
    """
    if explicit is not None:
        return _checked(explicit, "--run")
    parts = [p for p in re.split(r"[/\\]", path_or_key) if p]
    if not parts:
        raise ValueError("no file name to take a run number from: pass --run N")
    name, directories = parts[-1], parts[:-1]
    stem = PurePosixPath(name).stem
    if found := _RUN_IN_NAME.findall(stem):
        return _checked(int(found[-1]), path_or_key)
    for directory in reversed(directories):
        if match := _RUN_DIRECTORY.fullmatch(directory):
            return _checked(int(match.group(1)), path_or_key)
    if found := _DATA_IN_NAME.findall(stem):
        return _checked(int(found[-1]), path_or_key)
    if found := _DIGITS.findall(stem):
        return _checked(int(found[-1]), path_or_key)
    raise ValueError(
        f"cannot tell the run number of {path_or_key!r}: no Run000810/run_810 directory and no number "
        "in the file name; pass --run N"
    )
