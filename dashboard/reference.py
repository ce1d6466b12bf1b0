"""Reference files for the dashboard: save the cumulative histograms, find the one the results name.

The document format is ``dashboard.state.reference_document`` (``{"schema": "dtmon.reference",
"version": 1, ...}``); this module only does the file I/O.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from dashboard.state import HistogramSet, Totals, reference_document, reference_from_document
from dtmon.schema import ResultsMessage

_cache: dict[Path, tuple[float, dict[str, HistogramSet]]] = {}


def save_reference(directory: Path, totals: Totals, message: ResultsMessage | None, now: float | None = None) -> Path:
    """Write ``totals`` as a reference JSON file in ``directory`` (created if missing) and return its path,
    ``reference-run<run>-<UTC yyyymmddThhmmss>.json``.

    Raises:
        OSError: the file cannot be written.
    """
    now = time.time() if now is None else now
    run = "none" if message is None or message.run is None else str(message.run)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"reference-run{run}-{stamp}.json"
    path.write_text(json.dumps(reference_document(totals, message, now)) + "\n")
    return path


def load_reference(path: Path) -> dict[str, HistogramSet]:
    """The histograms of the reference file ``path``, cached until the file changes.

    Raises:
        OSError: the file cannot be read.
        ValueError: it is not JSON or not a ``dtmon.reference`` version-1 document (message names the key).
    """
    mtime = path.stat().st_mtime
    cached = _cache.get(path)
    if cached is not None and cached[0] == mtime:
        return cached[1]
    hists = reference_from_document(json.loads(path.read_text()))
    _cache[path] = (mtime, hists)
    return hists


def resolve_reference(name: str | None, directory: Path) -> Path | None:
    """The file a results message's ``quality.reference`` names: the path itself, or ``directory/name``
    or ``directory/name.json``; None when there is no such file."""
    if not name:
        return None
    for candidate in (Path(name), directory / name, directory / f"{name}.json"):
        if candidate.is_file():
            return candidate
    return None


def reference_histograms(message: ResultsMessage | None, directory: Path) -> dict[str, HistogramSet]:
    """The reference histograms the results point to (``quality.reference``), by kind; empty when
    the message names none or the file is not found.

    Raises:
        OSError, ValueError: the named file exists but cannot be read or parsed.
    """
    name = message.quality.reference if message is not None and message.quality is not None else None
    path = resolve_reference(name, directory)
    return {} if path is None else load_reference(path)
