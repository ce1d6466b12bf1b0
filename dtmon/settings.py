"""One frozen settings model shared by every dtmon stage.

Every field can be set from the environment with the ``DTMON_`` prefix, e.g.
``DTMON_BOOTSTRAP_SERVERS=broker:9092`` or ``DTMON_TRIGGER_INTERVAL_S=1``.
Command-line flags override the environment (see each stage's ``--help``). How clients
reach Kafka beyond the servers (security, librdkafka keys) is ``dtmon.kafka.KafkaConfig``
(``DTMON_KAFKA_*``, or the file ``DTMON_KAFKA_CONFIG_FILE``); ``Settings.kafka`` joins the two.
"""

from __future__ import annotations

from pathlib import Path
import json
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from dtmon.hits import SCINT_FPGA
from dtmon.kafka import KafkaConfig, load_kafka_config


def find_shared_dir() -> Path | None:
    """Return the ``shared/`` folder that sits beside the checkout, or None.

    Looked up from the current directory first (``./../shared``), then from the
    source tree of this package (``<repo>/../shared``).
    """
    candidates = [Path.cwd().parent / "shared", Path(__file__).resolve().parents[2] / "shared"]
    for candidate in candidates:
        if (candidate / "data" / "minidt").is_dir():
            return candidate.resolve()
    return None


def default_genuine_source() -> str:
    """Path of the genuine MiniDT rows (first 999 rows of ``data_000000.txt``).

    Returns an empty string when ``../shared`` is not at hand.
    """
    shared = find_shared_dir()
    if shared is None:
        return ""
    return str(shared / "data" / "minidt" / "merged__data_000000__rows0000-0998.csv")


class Settings(BaseSettings):
    """Configuration of broker, topics, producer, processor and dashboard.

    Frozen: derive a changed copy with ``settings.model_copy(update={...})``.
    """

    model_config = SettingsConfigDict(env_prefix="DTMON_", frozen=True, extra="ignore")

    bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, host:port[,host:port]")
    kafka_config_file: str | None = Field(
        None, description="TOML or .env file with the Kafka client settings of dtmon.kafka.KafkaConfig (security, librdkafka keys)"
    )
    raw_topic: str = Field("minidt-hits", description="topic the producer writes DAQ rows to")
    results_topic: str = Field("minidt-results", description="topic with one results message per micro-batch")
    raw_partitions: int = Field(1, ge=1, le=256, description="partitions of the raw topic when dtmon creates it")
    raw_retention_s: float = Field(
        3600.0, description="time retention of the raw topic when dtmon creates it, s (retention.ms; < 0 keeps every row)"
    )
    raw_retention_mb: float = Field(
        2048.0, description="size retention per raw-topic partition when dtmon creates it, MB (retention.bytes; < 0 = no cap)"
    )
    raw_segment_s: float = Field(
        600.0, gt=0, description="the raw topic's segment roll time, s (segment.ms): retention deletes whole closed segments"
    )

    source: str = Field(
        default_factory=default_genuine_source,
        description="DAQ files to stream: a file, a directory or s3://bucket/prefix",
    )
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint for non-AWS S3 (CloudVeneto, moto), or None for AWS")
    rate: float = Field(1000.0, ge=0, description="producer target rate in rows/s; 0 = as fast as possible")
    rows_per_message: int = Field(
        10_000, ge=1, le=1_000_000, description="largest number of DAQ rows packed in one Kafka message"
    )
    messages_per_s: float = Field(
        20.0, gt=0, le=1000, description="Kafka messages per second the paced producer aims at (rows per message = "
        "rate / this, at most rows_per_message)"
    )
    compression: str = Field("zstd", description="Arrow IPC body compression: zstd, lz4 or none")
    exactly_once: bool = Field(
        True,
        description="transactional producer that resumes after the last row in the raw topic (producer.position); "
        "False: idempotent producer that starts at the first file every time",
    )
    producer_commit_interval_s: float = Field(
        0.25, gt=0, le=10, description="the transactional producer commits at least this often, s (adds up to this latency)"
    )
    producer_commit_when_idle: bool = Field(
        True, description="the transactional producer also commits whenever its pacer is about to sleep and its last "
        "commit is >= 50 ms old (no row waits long in an open transaction while the producer idles; off under --persist)"
    )
    max_message_bytes: int = Field(
        64 * 2**20, ge=2**16, description="largest decompressed raw message accepted by readers, bytes (dtmon.validation)"
    )
    max_message_rows: int = Field(
        1_000_000, ge=1, description="most DAQ rows accepted in one raw message by readers (dtmon.validation)"
    )

    broker_grace_s: float = Field(
        60.0, ge=0, le=86400,
        description="s the producer and processor wait for an unreachable broker (retrying, one log line per change) before stopping",
    )

    trigger_interval_s: float = Field(2.0, gt=0, le=60, description="micro-batch trigger interval in s (1-5 is sensible)")
    checkpoint_location: str = Field("var/checkpoint", description="Spark streaming checkpoint directory")
    starting_offsets: str = Field("latest", description="where a new query starts in the raw topic: earliest or latest")
    max_offsets_per_trigger: int | None = Field(None, ge=1, description="cap on Kafka messages read per micro-batch")
    kafka_source: Literal["python", "spark"] = Field(
        "python",
        description="how Spark reads the raw topic: python (dtmon's Python data source, needs only pip install) or "
        "spark (Spark's built-in Kafka source; the spark-sql-kafka connector is fetched with Maven)",
    )
    spark_master: str | None = Field(
        None, description="Spark master URL, e.g. local[*] or spark://host:7077; unset: spark-submit's --master, else local[*]"
    )
    spark_cds: bool = Field(
        True, description="map the driver JVM's classes from a class-data-sharing archive in the dtmon cache (written by "
        "the first run of a local processor as its JVM exits; processor.cds): a faster Spark start"
    )
    spark_driver_java_options: str = Field(
        "", description="more options for the driver JVM the processor launches (after the class-data ones), "
        "e.g. -XX:TieredStopAtLevel=1; under spark-submit use its --driver-java-options"
    )
    shuffle_partitions: int = Field(2, ge=1, description="spark.sql.shuffle.partitions for the per-batch aggregations")
    single_stage_rows: int = Field(
        3_000_000, ge=0, description="a micro-batch that follows one of fewer DAQ rows than this runs as one Spark stage "
        "without the shuffle (a third less processor CPU per row at 1 M rows/s, lower latency at low rates; "
        "docs/performance.md); larger batches in two, over all cores; 0: always two stages"
    )
    scint_fpga: int = Field(SCINT_FPGA, ge=0, le=7, description="FPGA of the scintillator (t0) channel (course PDF: 1)")
    scint_channel: int | None = Field(
        None, ge=0, le=511, description="TDC_CHANNEL of the scintillator (course PDF: 128; the genuine rows show 138); "
        "None: found in the data (processor.scint), SCINT_CHANNEL (128) until then"
    )
    drift_time_min_ns: float = Field(-200.0, description="lower edge of the drift-time histograms, ns")
    drift_time_max_ns: float = Field(600.0, description="upper edge of the drift-time histograms, ns (values outside are dropped)")
    drift_time_bin_ns: float = Field(5.0, gt=0, description="bin width of the drift-time histograms, ns")
    max_orbit_gap: int = Field(
        2**20, ge=1, description="ORBIT_CNT gaps longer than this (orbits; 2^20 = 93 s) are jumps, left out of detector time"
    )
    checks_file: str | None = Field(
        None, description="TOML file of data-quality thresholds merged over the shipped dtmon/checks.toml"
    )
    reference_file: str | None = Field(
        "var/reference.json", description="reference run (JSON: dtmon reference save, or the dashboard's 'use as "
        "reference') the processor compares shapes and rates with (re-read when it changes) and the dashboard "
        "overlays; a missing file: no reference"
    )

    dashboard_history: int = Field(300, ge=10, description="micro-batches kept for the time-series plots")
    dashboard_refresh_ms: int = Field(500, ge=50, description="how often each browser session looks for new results")
    dashboard_trend_hours: float = Field(
        8.0, gt=0, le=48, description="shift trends the dashboard refills from the results topic on start, hours"
    )
    dashboard_address: str = Field(
        "127.0.0.1", description="address the dashboard listens on (0.0.0.0: every interface, for other hosts)"
    )
    dashboard_allow_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="more host:port origins whose pages may open the dashboard's websocket, comma-separated "
        "(127.0.0.1 and localhost at the dashboard port are always allowed)",
    )
    dashboard_users_file: str | None = Field(
        None, description="users file (user:hash lines, python -m dashboard.auth hash): set, the dashboard asks for a login"
    )

    @field_validator("dashboard_allow_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        """``host:port,host:port`` (the environment variable), a JSON list, or a list."""
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("["):
                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="before")
    @classmethod
    def _servers_from_kafka_config(cls, data: Any) -> Any:
        """Without a flag or ``DTMON_BOOTSTRAP_SERVERS``, take the servers the Kafka config names, if any."""
        if isinstance(data, dict) and data.get("bootstrap_servers") is None:
            config = load_kafka_config(data.get("kafka_config_file"))
            if "bootstrap_servers" in config.model_fields_set:
                data = {**data, "bootstrap_servers": config.bootstrap_servers}
        return data

    @field_validator("raw_retention_s", "raw_retention_mb")
    @classmethod
    def _retention_not_zero(cls, value: float) -> float:
        if value == 0:
            raise ValueError("0 would delete rows before the processor reads them; use -1 to keep every row")
        return value

    def raw_topic_config(self) -> dict[str, str]:
        """Topic configuration the raw topic is created with: delete old rows by time and by size.

        ``retention.ms`` = ``raw_retention_s`` × 1000, ``retention.bytes`` = ``raw_retention_mb`` × 10⁶
        (per partition), ``segment.ms`` = ``raw_segment_s`` × 1000 and ``segment.bytes`` 128 MB: a
        broker deletes whole closed segments only, so the raw topic is bounded by about
        min(rate × bytes/row × (retention + segment roll), retention.bytes + one segment) per
        partition. Apache Kafka applies it; Tansu 0.6 stores it and keeps every row (docs/reliability.md).
        """
        retention_ms = -1 if self.raw_retention_s < 0 else round(self.raw_retention_s * 1000)
        retention_bytes = -1 if self.raw_retention_mb < 0 else round(self.raw_retention_mb * 1e6)
        return {
            "cleanup.policy": "delete",
            "retention.ms": str(retention_ms),
            "retention.bytes": str(retention_bytes),
            "segment.ms": str(round(self.raw_segment_s * 1000)),
            "segment.bytes": str(min(128_000_000, retention_bytes) if retention_bytes > 0 else 128_000_000),
        }

    @property
    def kafka(self) -> KafkaConfig:
        """The Kafka client configuration (``DTMON_KAFKA_*``, ``kafka_config_file``) with these settings' servers."""
        return load_kafka_config(self.kafka_config_file, bootstrap_servers=self.bootstrap_servers)


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with non-None ``overrides`` applied on top."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
