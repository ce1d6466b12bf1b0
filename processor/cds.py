"""Class-data sharing (AppCDS) for the processor's driver JVM: a faster Spark start.

The driver JVM loads ~17 000 classes from Spark's ~280 jars while the session starts and the
first micro-batch runs. A dynamic CDS archive (JDK 13+, JEP 350) holds ~12 600 of them already
parsed and verified, mapped into memory at start. The first processor run without an archive
writes one when its JVM exits (``-XX:ArchiveClassesAtExit``, ~140 MB); later runs map it
(``-XX:SharedArchiveFile``). A JVM that cannot use the archive (another JDK build, other jars)
starts as it would without it (``-Xshare:auto``); its CDS log lines are off either way.

Measured on the 2-core machine (docs/performance.md, "Where the time goes now"): ``SparkSession`` 5.9 -> 3.3 s
and the first Spark job 2.6 -> 1.5 s (5 runs each, alternating).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from dtmon.supervisor import running

LOG_OFF = "-Xlog:cds=off -Xlog:cds+dynamic=off"
"""JVM options that keep CDS warnings (classes it skips, an archive it cannot use) out of the log."""


def archive_file(cache: Path, java: str, spark_jars: Path, spark_version: str) -> Path:
    """Where the archive of this JDK and these Spark jars lives: ``<cache>/cds/spark-<version>-<key>.jsa``.

    ``key`` hashes the java binary (real path, size, mtime), the path of ``spark_jars`` (the JVM's
    class path, which the archive records) and the names and sizes of its jars, so a new JDK,
    another Spark or the same jars reached by another path gets an archive of its own.
    """
    java_path = Path(java).resolve()
    st = java_path.stat()
    parts = [str(java_path), str(st.st_size), str(st.st_mtime_ns), str(spark_jars)]
    parts += [f"{p.name}:{p.stat().st_size}" for p in sorted(spark_jars.glob("*.jar"))]
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
    return cache / "cds" / f"spark-{spark_version}-{key}.jsa"


def java_options(archive: Path, pid: int | None = None) -> tuple[str, Path | None]:
    """The driver's ``spark.driver.extraJavaOptions`` for ``archive`` and the file the JVM will write.

    Returns ``(options, None)`` when ``archive`` exists (it is mapped), else ``(options, written)``:
    the JVM writes ``written`` (``<archive>.<pid>.tmp``, ``pid`` = this process) at its exit, and
    ``adopt`` moves it into place. Files left by a process that no longer runs (killed while its JVM
    wrote) are removed on the way.
    """
    if archive.is_file():
        return f"-XX:SharedArchiveFile={archive} -Xshare:auto {LOG_OFF}", None
    archive.parent.mkdir(parents=True, exist_ok=True)
    for old in archive.parent.glob(f"{archive.name}.*.tmp"):
        writer = old.name[len(archive.name) + 1 : -len(".tmp")]
        if not writer.isdigit() or not running(int(writer)):
            old.unlink(missing_ok=True)
    written = archive.with_name(f"{archive.name}.{os.getpid() if pid is None else pid}.tmp")
    return f"-XX:ArchiveClassesAtExit={written} {LOG_OFF}", written


def adopt(written: Path, archive: Path, jvm_exit_code: int | None) -> bool:
    """Move the archive the JVM wrote at exit into place; True if it did.

    Only a JVM that exited on its own (code 0) has written the whole file; otherwise (killed,
    still running: ``None``) the file is removed.
    """
    if jvm_exit_code == 0 and written.is_file() and written.stat().st_size > 0:
        os.replace(written, archive)
        return True
    written.unlink(missing_ok=True)
    return False
