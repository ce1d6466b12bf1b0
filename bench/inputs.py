"""SYNTHETIC benchmark input: DAQ files from ``dtmon.synth``, cached between runs, and their S3 copy."""

from __future__ import annotations

import json
from pathlib import Path

from dtmon.daqfiles import SYNTHETIC_MANIFEST as MANIFEST
from dtmon.services import plan_uploads, seed


def synthetic_dir(cache: Path, files: int, rows: int, seed: int) -> Path:
    """A directory with ``files`` SYNTHETIC DAQ files of ``rows`` rows each (generated once, then reused).

    The directory holds the generator's ``dtmon-synthetic.json`` manifest, so the producer
    labels every message ``dtmon-synthetic: 1``.
    """
    from dtmon.synth import write_files

    out = cache / f"synth-{files}x{rows}-seed{seed}"
    manifest = out / MANIFEST
    if manifest.is_file():
        doc = json.loads(manifest.read_text())
        names = [f["name"] for f in doc.get("files", [])]
        if len(names) == files and all((out / n).is_file() for n in names):
            return out
    write_files(out, files, rows, seed=seed)
    return out


def total_rows(directory: Path) -> int:
    """Rows of all files of a synthetic directory, from its manifest."""
    return sum(f["rows"] for f in json.loads((directory / MANIFEST).read_text())["files"])


def upload_to_s3(endpoint: str, directory: Path, bucket: str = "minidt-bench", prefix: str = "synthetic") -> str:
    """Upload the DAQ files and the manifest of ``directory`` to ``bucket/prefix`` (objects marked
    ``dtmon-synthetic: 1``); returns the ``s3://bucket/prefix/`` source address."""
    seed(endpoint, bucket, plan_uploads([directory], prefix))
    return f"s3://{bucket}/{prefix}/"
