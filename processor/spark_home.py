"""A Spark home without ``python/lib``: Spark's Python workers import the installed pyspark, compiled once.

Spark puts ``$SPARK_HOME/python/lib/pyspark.zip`` first on every Python worker's ``PYTHONPATH``.
A pip-installed pyspark is its own Spark home and ships that zip, so each worker imported pyspark
from the zip, which holds sources only: Python compiled ~0.9 MB of pyspark again in every process
(``import pyspark.worker`` 0.9-1.0 s from the zip, 0.2-0.3 s from site-packages, same interpreter).
Starting a streaming query and its first micro-batch spawns nine such processes one after the
other (a worker daemon and worker for each of lookup, create and plan of the data source, the
streaming-source runner, the task workers' daemon and workers).

``spark_home`` builds ``<cache>/spark-home/<key>``: a directory with a symlink to every entry of
the installed Spark home except ``python``, so the launcher scripts and jars are the same files
and the workers' ``PYTHONPATH`` names a zip that is not there; they then import the pyspark of
``PYSPARK_PYTHON`` (this interpreter's site-packages, where the driver imports it from).

Measured on the 2-core machine (``python -m bench --only up --dashboard``, alternating, 2 runs
each, docs/performance.md): first batch plotted after 19.2 / 20.6 s with the installed home and
14.3 / 16.3 s with this one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

WORKER_ZIP = Path("python") / "lib" / "pyspark.zip"
"""The zip Spark puts first on its Python workers' path (relative to the Spark home)."""


def spark_home(installed: Path, cache: Path) -> Path:
    """The Spark home to launch the driver JVM with: ``<cache>/spark-home/<key>``, built on first use.

    ``installed``: the Spark home pyspark found (a pip install: the pyspark package directory).
    ``key`` hashes ``installed``'s real path, so another pyspark gets a home of its own. Entries:
    one symlink per entry of ``installed`` except ``python``. Built in a temporary directory and
    renamed into place, so processes starting together see a whole home or build their own.
    Returns ``installed`` itself when it has no worker zip (nothing to leave out).

    Raises:
        OSError: ``cache`` cannot be written.
    """
    installed = installed.resolve()
    if not (installed / WORKER_ZIP).is_file():
        return installed
    key = hashlib.sha256(str(installed).encode()).hexdigest()[:16]
    home = cache / "spark-home" / key
    if home.is_dir():
        return home
    home.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=home.parent))
    try:
        for entry in installed.iterdir():
            if entry.name != "python":
                (building / entry.name).symlink_to(entry)
        os.rename(building, home)
    except OSError:
        if not home.is_dir():  # not another process's home that won the race
            raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return home
