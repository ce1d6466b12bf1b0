"""Spark's own Kafka source (``format("kafka")``) as the processor's input, mapped to the message-row schema.

``Settings.kafka_source`` chooses the source of the streaming query (``DTMON_KAFKA_SOURCE``):

* ``python`` (default): dtmon's Python data source (``processor.kafka_source``, format
  ``dtmon-kafka``), which needs nothing beyond ``pip install``;
* ``spark``: Spark's built-in Kafka source from the ``spark-sql-kafka-0-10`` connector.
  Spark fetches the connector and its dependencies (``kafka-clients``, ``commons-pool2``,
  the token provider) through ``spark.jars.packages`` into an Ivy cache outside the
  repository (``<dtmon cache>/ivy``, see ``dtmon.apache_kafka.cache_root``); the connector
  version is the installed pyspark's, so pyspark must be a version whose connector is
  published.

Both give one row per Kafka message with ``processor.message_rows.MESSAGE_SCHEMA``, so the
micro-batch computation (``processor.plan.aggregate_batch``) is the same for both:
``message_rows`` maps the built-in source's columns (topic, partition, offset, timestamp,
headers array, value) with Spark SQL expressions. Header semantics follow
``dtmon.wire.header_dict`` and ``processor.kafka_source.parse_run``: the last value of a
repeated header wins, ``dtmon-synthetic`` is true only for ``1``, ``dtmon-run`` becomes an
int in 0 .. 2^31-1 or null.

The built-in source does not commit offsets to a consumer group (its progress is in the
checkpoint only), so consumer-lag tools do not see a ``dtmon-processor`` group with it.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from dtmon.kafka import KafkaConfig
from dtmon.settings import Settings
from processor.message_rows import MESSAGE_SCHEMA

CONNECTOR = "org.apache.spark:spark-sql-kafka-0-10_2.13"
"""Maven coordinates (without version) of Spark's Kafka connector for Scala 2.13."""


def connector_package(spark_version: str | None = None) -> str:
    """``group:artifact:version`` of the Kafka connector matching ``spark_version`` (default: the installed pyspark)."""
    if spark_version is None:
        import pyspark

        spark_version = pyspark.__version__
    return f"{CONNECTOR}:{spark_version}"


def session_config() -> dict[str, str]:
    """Spark session settings that load the connector: ``spark.jars.packages`` and an Ivy cache outside the repository."""
    from dtmon.apache_kafka import cache_root

    return {"spark.jars.packages": connector_package(), "spark.jars.ivy": str(cache_root() / "ivy")}


def kafka_options(config: KafkaConfig) -> dict[str, str]:
    """``kafka.<key>`` options of Spark's Kafka source carrying ``config`` (``KafkaConfig.as_java_properties``)."""
    return {f"kafka.{k}": v for k, v in config.as_java_properties().items()}


def _header(name: str) -> Column:
    """The last value of header ``name`` as a UTF-8 string, or null when the message lacks it."""
    values = F.filter(F.col("headers"), lambda h: h["key"] == F.lit(name))
    return F.when(F.size(values) > 0, F.decode(F.element_at(values, -1)["value"], "UTF-8"))


def message_rows(kafka: DataFrame) -> DataFrame:
    """Rows of the built-in Kafka source (with ``includeHeaders``) as message rows (``MESSAGE_SCHEMA``).

    Columns in: topic string, partition int, offset bigint, timestamp timestamp (the Kafka
    timestamp), headers array<struct<key string, value binary>>, value binary.
    Columns out: topic, partition, offset, produced_ms (ms since the epoch),
    content_type, synthetic, run, value (``processor.message_rows.SPARK_SCHEMA``).
    """
    run = F.expr("try_cast(trim(run_header) AS INT)")
    return (
        kafka.select(
            "topic", "partition", "offset",
            F.unix_millis("timestamp").alias("produced_ms"),
            _header("content-type").alias("content_type"),
            F.coalesce(_header("dtmon-synthetic") == F.lit("1"), F.lit(False)).alias("synthetic"),
            _header("dtmon-run").alias("run_header"),
            "value",
        )  # fmt: skip
        .withColumn("run", F.when(run >= 0, run).cast("int"))
        .select(*MESSAGE_SCHEMA.names)
    )


def read_stream(spark: SparkSession, settings: Settings) -> DataFrame:
    """The raw topic as a stream of message rows, read with ``spark.readStream.format("kafka")``.

    The connection (servers, TLS, SASL) is ``settings.kafka`` as Java client properties
    (``kafka_options``). Same options as the Python source: topic, starting offsets (new
    queries only), ``maxOffsetsPerTrigger`` and ``minPartitions`` (the default parallelism).
    A query that finds its planned offsets deleted by retention fails (``failOnDataLoss``),
    as the Python source does: nothing is skipped silently.
    """
    reader = (
        spark.readStream.format("kafka")
        .options(**kafka_options(settings.kafka))
        .option("subscribe", settings.raw_topic)
        .option("startingOffsets", settings.starting_offsets)
        .option("includeHeaders", "true")
        .option("minPartitions", str(spark.sparkContext.defaultParallelism))
        .option("failOnDataLoss", "true")
    )
    if settings.max_offsets_per_trigger:
        reader = reader.option("maxOffsetsPerTrigger", str(settings.max_offsets_per_trigger))
    return message_rows(reader.load())


def fetch_connector() -> str:
    """Resolve the connector into the Ivy cache by starting (and stopping) a local Spark session; return the package.

    Raises:
        Exception: Spark could not resolve the package (no network, or no connector for this pyspark).
    """
    builder = SparkSession.builder.master("local[1]").appName("dtmon-fetch-connector").config("spark.ui.enabled", "false")
    for key, value in session_config().items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    try:
        spark.sparkContext._jvm.java.lang.Class.forName(  # noqa: SLF001 - fails if the jar is not on the classpath
            "org.apache.spark.sql.kafka010.KafkaSourceProvider", True, spark.sparkContext._jvm.Thread.currentThread().getContextClassLoader()
        )
    finally:
        spark.stop()
    return connector_package()


if __name__ == "__main__":
    import time

    t0 = time.monotonic()
    package = fetch_connector()
    print(f"{package} resolved into {session_config()['spark.jars.ivy']} ({time.monotonic() - t0:.1f} s)")
