"""The processor's Spark session: how its driver JVM is launched, and a start in a thread.

``spark_session`` builds the session (local master, Arrow batch size, redaction of Kafka secrets);
``DriverStart`` launches it in a thread once Java, the broker and the checkpoint are checked, so the
JVM and Spark start (~3-7 s) run while the processor imports the rest of its code. The JVM maps a
class-data archive (``processor.cds``) and runs from a Spark home whose Python workers import the
installed pyspark (``processor.spark_home``). This module imports little beyond pyspark.sql, so the
JVM starts early.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyspark.sql.datasource  # noqa: F401 - imported here, before the session's thread runs, not in both at once
import pyspark.sql.streaming  # noqa: F401
from pyspark.sql import SparkSession

from dtmon.apache_kafka import cache_root
from dtmon.kafka import KafkaClients
from dtmon.settings import Settings
from processor import cds, spark_home
from processor.preflight import check_checkpoint, check_java, find_java

log = logging.getLogger("dtmon.processor")

REDACTION_REGEX = r"(?i)secret|password|token|access[.]?key|jaas|keystore[.]key"
"""``spark.redaction.regex``: Spark's default (``secret|password|token|access[.]?key``) plus the
Kafka keys that carry a secret without saying so (``sasl.jaas.config``, ``ssl.keystore.key``);
``spark.sql.redaction.options.regex`` is it plus Spark's default ``url``."""


def spark_master(settings: Settings, environ: dict[str, str] | None = None) -> str | None:
    """The master the session sets: ``settings.spark_master`` if set; else None when a launcher
    chose one (under spark-submit, whose PythonRunner sets ``PYSPARK_GATEWAY_PORT``, or a
    ``--master`` in ``PYSPARK_SUBMIT_ARGS``), so its master stays; else ``local[*]``."""
    env = os.environ if environ is None else environ
    if settings.spark_master:
        return settings.spark_master
    if "PYSPARK_GATEWAY_PORT" in env or "--master" in env.get("PYSPARK_SUBMIT_ARGS", "").split():
        return None
    return "local[*]"


CHECKPOINT_FILE_MANAGER = "org.apache.spark.sql.execution.streaming.checkpointing.FileSystemBasedCheckpointFileManager"
"""Spark's checkpoint file manager over Hadoop ``FileSystem`` (write a temporary file, rename it):
atomic on a local disk and on HDFS; the default, over ``FileContext``, runs ``chmod`` and ``readlink``
as processes for every file on a local disk without Hadoop's native library."""


WORKER_ALLOCATOR_ENV = {
    "MIMALLOC_PURGE_DELAY": "-1",
    "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
    "NUMPY_MADVISE_HUGEPAGE": "0",
}
"""Memory allocators of the driver JVM and its Python workers (inherited from this process): keep the
memory a micro-batch freed for the next one instead of handing it back to the kernel.

* ``MIMALLOC_PURGE_DELAY=-1``: pyarrow's default pool (mimalloc) returned freed pages with
  ``madvise(MADV_DONTNEED)`` 10 ms after a free, so each batch's Arrow buffers were faulted in and zeroed
  again (a task worker purged ~110 MB/s at 1 M rows/s). With a 10-s delay mimalloc still purged about
  every 10 s and the batch after took ~1 s more (its workers in the kernel); -1 never purges: a worker
  keeps its largest batch's memory, as a long-running process with a steady load should.
* ``MALLOC_TRIM_THRESHOLD_`` (bytes, glibc): numpy's arrays come from the brk heap, which glibc shrank
  after every batch; 1 GiB of free top keeps it. ``MALLOC_MMAP_THRESHOLD_``: setting the trim
  threshold turns glibc's adaptive mmap threshold off, so it is set to that adaptive ceiling (32 MiB).
* ``NUMPY_MADVISE_HUGEPAGE=0``: numpy asks for transparent huge pages on arrays >= 4 MiB, each a
  2 MiB page zeroed on first touch.

Measured at 1 M rows/s for 150 s (2-core VM, Apache Kafka, no dashboard; docs/performance.md): processor
CPU 108-115 -> 64 s, batch p50 / p95 1.43-1.52 / 2.61-2.96 -> 0.82 / 1.03 s, the task workers' kernel
time 60 % of their CPU -> ~2 %; peak RSS of the processor tree 3.1 -> 4.3 GB (8.7 GB at 1.5 M rows/s,
where most batches run in two stages with more workers).
A variable set in the environment wins (``setdefault``)."""


def use_worker_allocator_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Set ``WORKER_ALLOCATOR_ENV`` in ``environ`` (default ``os.environ``) where a variable is unset, before
    the driver JVM is launched (its Python workers inherit its environment). Returns the values now in effect."""
    env = os.environ if environ is None else environ
    return {key: env.setdefault(key, value) for key, value in WORKER_ALLOCATOR_ENV.items()}


def spark_session(
    settings: Settings, app_name: str = "dtmon-processor", driver_java_options: str | None = None, data_source: bool = True
) -> SparkSession:
    """Start (or get) the Spark session, with the dtmon data source registered (``data_source``).

    Python workers run this interpreter (``PYSPARK_PYTHON``), so they see the same installed
    packages, and import its pyspark (``use_worker_spark_home``). ``driver_java_options``
    (``spark.driver.extraJavaOptions``) reach a driver JVM this call launches (e.g.
    ``processor.cds.java_options``), not one already running.
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    use_worker_spark_home()
    use_worker_allocator_env()
    master = spark_master(settings)
    builder = SparkSession.builder.appName(app_name)
    if master is not None:
        builder = builder.master(master)
    builder = (
        builder.config("spark.sql.shuffle.partitions", str(settings.shuffle_partitions))
        # one Spark job per micro-batch: adaptive execution would run the shuffle as a job of
        # its own and has nothing to coalesce in a few partitions
        .config("spark.sql.adaptive.enabled", "false")
        # checkpoint files through Hadoop's FileSystem API: the default FileContext manager started
        # ~20 chmod/readlink processes per micro-batch from the driver JVM on a local checkpoint
        .config("spark.sql.streaming.checkpointFileManagerClass", CHECKPOINT_FILE_MANAGER)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.streaming.stopGracefullyOnShutdown", "true")
        .config("spark.executorEnv.PYSPARK_PYTHON", sys.executable)
        # each partition's messages cross to the decoding mapInArrow in few, large Arrow batches
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "200000")
        # Kafka secrets reach Spark as source options (kafka.sasl.password, kafka.sasl.jaas.config,
        # kafka.ssl.keystore.key): hidden in logs, the environment page and explain output
        .config("spark.redaction.regex", REDACTION_REGEX)
        .config("spark.sql.redaction.options.regex", REDACTION_REGEX + "|url")
    )
    if settings.kafka_source == "spark":  # Spark's own Kafka source: the connector jars via spark.jars.packages
        from processor import spark_kafka

        for key, value in spark_kafka.session_config().items():
            builder = builder.config(key, value)
    if master is not None and master.startswith("local"):  # nothing outside this machine talks to a local driver
        builder = builder.config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
    if driver_java_options:
        builder = builder.config("spark.driver.extraJavaOptions", driver_java_options)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    if data_source:
        register_data_source(spark)
    return spark


def register_data_source(spark: SparkSession) -> None:
    """Register dtmon's Kafka source (``processor.kafka_source.KafkaDataSource``, format ``dtmon-kafka``)."""
    from processor.kafka_source import KafkaDataSource

    spark.dataSource.register(KafkaDataSource)


def launches_driver_jvm(environ: dict[str, str] | None = None) -> bool:
    """True if this process will launch the driver JVM itself (not run under spark-submit or a gateway)."""
    env = os.environ if environ is None else environ
    return "PYSPARK_GATEWAY_PORT" not in env and "java-options" not in env.get("PYSPARK_SUBMIT_ARGS", "")


def use_worker_spark_home(environ: dict[str, str] | None = None) -> Path | None:
    """Point ``SPARK_HOME`` at ``processor.spark_home.spark_home`` (Python workers import the installed
    pyspark, not the uncompiled zip) unless it is set or the JVM is not launched here; returns the
    home set, or None. A cache that cannot be written leaves the installed home (logged)."""
    env = os.environ if environ is None else environ
    if env.get("SPARK_HOME") or not launches_driver_jvm(env):
        return None
    import pyspark

    try:
        home = spark_home.spark_home(Path(pyspark.__file__).parent, cache_root())
    except OSError as e:
        log.warning("Spark home for the Python workers not built (%s): they import pyspark from its zip", e)
        return None
    env["SPARK_HOME"] = str(home)
    return home


def class_data_archive(settings: Settings, environ: dict[str, str] | None = None) -> Path | None:
    """The driver JVM's class-data archive (``processor.cds``) if this process launches the JVM
    (not under spark-submit) on this machine (a local master) and ``settings.spark_cds`` is on."""
    env = os.environ if environ is None else environ
    master = spark_master(settings, env)
    java = find_java(env)
    if not settings.spark_cds or master is None or not master.startswith("local") or java is None or not Path(java).exists():
        return None
    if not launches_driver_jvm(env):
        return None
    import pyspark

    home = Path(env.get("SPARK_HOME") or Path(pyspark.__file__).parent)
    return cds.archive_file(cache_root(), java, home / "jars", pyspark.__version__)


def stop_driver_jvm(timeout_s: float = 60.0) -> int | None:
    """End the driver JVM this process launched (after ``spark.stop()``): close the gateway and the
    JVM's stdin, on which it exits by itself; return its exit code, or None if it did not end within
    ``timeout_s`` s or was not launched here. Spark starts a new JVM for a later session."""
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    proc = getattr(gateway, "proc", None)
    if gateway is None or proc is None:
        return None
    try:
        gateway.shutdown()
    except Exception:  # noqa: BLE001 - the JVM may already be gone; its exit code says how it ended
        pass
    SparkContext._gateway = None
    SparkContext._jvm = None
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        return None


class DriverStart:
    """The processor's Spark session, started in a thread the moment this object is made.

    First, in the caller's thread (``processor.preflight``): Java 17+ is there, the broker answers,
    the checkpoint fits the raw topic (with ``reset_checkpoint`` one that does not is moved aside;
    ``checkpoint_reset`` then holds the one-line description, else None). So those errors come
    before Spark prints anything. ``session()`` waits for the session; ``stop()`` stops it (if it
    started) and, on the first run with a class-data archive to write, ends the JVM so it writes the
    archive and moves the file into place. ``seconds``: how long the start took (launch to
    session), once it ended.

    Raises (``__init__``):
        processor.preflight.PreflightError: Java missing or too old; a checkpoint refused.
        dtmon.kafka.KafkaSetupError: the broker did not answer.
    """

    def __init__(self, settings: Settings, reset_checkpoint: bool = False) -> None:
        check_java()
        ends = KafkaClients(settings.kafka).log_ends(settings.raw_topic)
        self.checkpoint_reset = check_checkpoint(settings.checkpoint_location, settings.raw_topic, ends, reset_checkpoint)
        use_worker_spark_home()  # before the archive's name, which holds the jars' path
        self.archive = class_data_archive(settings)
        options, self.archive_written = cds.java_options(self.archive) if self.archive is not None else ("", None)
        options = " ".join(o for o in (options, settings.spark_driver_java_options) if o)
        self.seconds: float | None = None
        self._spark: SparkSession | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._start, args=(settings, options or None),
                                        name="spark-session", daemon=True)  # fmt: skip
        self._thread.start()

    def _start(self, settings: Settings, java_options: str | None) -> None:
        t = time.monotonic()
        try:
            self._spark = spark_session(settings, driver_java_options=java_options, data_source=False)  # registered by the caller
        except BaseException as e:  # noqa: BLE001 - handed to the thread that waits in session()
            self._error = e
        self.seconds = time.monotonic() - t

    @property
    def archive_mapped(self) -> bool:
        """True if the JVM was launched with an existing class-data archive."""
        return self.archive is not None and self.archive_written is None

    def session(self) -> SparkSession:
        """The session, once started. Raises whatever the start raised (e.g. py4j's error when the JVM died)."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._spark is not None
        return self._spark

    def stop(self) -> None:
        """Stop the session (waiting for its start to end first), then adopt a class-data archive the JVM wrote."""
        self._thread.join()
        if self._spark is None:
            return
        self._spark.stop()
        if self.archive is not None and self.archive_written is not None:  # the first run: the JVM writes it as it exits
            if cds.adopt(self.archive_written, self.archive, stop_driver_jvm()):
                log.info("class-data archive of the driver JVM written: %s (later starts map it)", self.archive)
