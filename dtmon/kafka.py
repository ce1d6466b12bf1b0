"""One typed Kafka client configuration, and the Kafka chores every stage shares.

``KafkaConfig`` holds how to reach the cluster (servers, security, any librdkafka key) and
builds every client's librdkafka dictionary (``as_librdkafka_dict``, the role's own keys
on top), as quix-streams' ``ConnectionConfig`` does. Its fields are read, highest first,
from keyword arguments, ``DTMON_KAFKA_<FIELD>`` environment variables, then a config file
(TOML, or ``KEY=value`` lines with the ``DTMON_KAFKA_`` names) named by
``DTMON_KAFKA_CONFIG_FILE`` or ``--kafka-config``. Secrets are ``SecretStr``: never in
``repr`` or logs.

``KafkaClients`` creates the confluent-kafka clients through one overridable method per
kind (``_create_consumer``, ``_create_producer``, ``_create_admin``), the seam where tests
put doubles (``tests/doubles``). On it: ``ensure_topic`` (create a topic if missing),
``ensure_results_topic`` (one partition, a warning for more),
``end_offsets`` (true log end of partitions) and ``read_tail`` (the newest message of
every partition of a topic).

Log end offsets: on real Kafka, ListOffsets(latest) is the log end. Tansu 0.6 answers the
last record batch's base offset + 1 instead, so the end is confirmed by reading from there
to the PARTITION_EOF event, which is cheap (at most one record batch) and also correct on
real Kafka (``../shared/docs/platform-notes.md``).
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

log = logging.getLogger(__name__)

CONFIG_FILE_ENV = "DTMON_KAFKA_CONFIG_FILE"
"""Environment variable naming the Kafka config file (TOML or ``.env`` lines)."""

_config_file: contextvars.ContextVar[str | None] = contextvars.ContextVar("dtmon_kafka_config_file", default=None)

# KafkaConfig field -> librdkafka key
_LIBRDKAFKA_KEYS = {
    "bootstrap_servers": "bootstrap.servers",
    "security_protocol": "security.protocol",
    "sasl_mechanism": "sasl.mechanisms",
    "sasl_username": "sasl.username",
    "sasl_password": "sasl.password",
    "ssl_ca_location": "ssl.ca.location",
    "ssl_certificate_location": "ssl.certificate.location",
    "ssl_key_location": "ssl.key.location",
    "ssl_key_password": "ssl.key.password",
    "ssl_endpoint_identification_algorithm": "ssl.endpoint.identification.algorithm",
}


_CLIENT_KEYS = {"error_cb", "on_delivery", "stats_cb", "throttle_cb", "oauth_cb", "logger", "log_level", "on_commit"}
"""confluent-kafka keys whose name has an underscore of its own."""


def _secret_key(key: str) -> bool:
    return any(word in key.lower() for word in ("password", "secret", "token", "jaas", "keystore.key"))


_JAAS_LOGIN_MODULES = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
}
"""SASL mechanism -> the Java login module that logs in with a username and password."""


def _jaas_quote(value: str) -> str:
    """``value`` as a quoted JAAS option value (backslash and double quote escaped)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class KafkaSetupError(RuntimeError):
    """The broker cannot be reached or a topic cannot be created."""


class KafkaConfig(BaseSettings):
    """How every dtmon client reaches Kafka: servers, security, and librdkafka pass-through keys.

    Frozen; ``model_copy(update={...})`` derives a changed copy. Secrets (``sasl_password``,
    ``ssl_key_password``) are ``SecretStr``: ``repr``/``str``/``model_dump`` show ``**********``.
    """

    model_config = SettingsConfigDict(env_prefix="DTMON_KAFKA_", frozen=True, extra="ignore")

    bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, host:port[,host:port]")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="librdkafka security.protocol"
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI", "OAUTHBEARER"] | None = Field(
        None, description="librdkafka sasl.mechanisms"
    )
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = Field(None, description="CA certificate file (PEM)")
    ssl_certificate_location: str | None = Field(None, description="client certificate file (PEM)")
    ssl_key_location: str | None = Field(None, description="client private key file (PEM)")
    ssl_key_password: SecretStr | None = None
    ssl_endpoint_identification_algorithm: Literal["https", "none"] | None = Field(
        None, description="check the broker's host name against its certificate (https) or not (none)"
    )
    extra: dict[str, str] = Field(default_factory=dict, description="more librdkafka settings by their own names")
    java_extra: dict[str, str] = Field(
        default_factory=dict,
        description="more Java Kafka client settings by their own names, for Spark's own Kafka source (kafka.<key> options)",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments > ``DTMON_KAFKA_*`` environment > config file > defaults."""
        import os

        path = _config_file.get() or os.environ.get(CONFIG_FILE_ENV)
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path:
            if not Path(path).is_file():
                raise FileNotFoundError(f"Kafka config file {path} does not exist")
            if path.endswith(".toml"):
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
            else:
                sources.append(DotEnvSettingsSource(settings_cls, env_file=path, env_prefix="DTMON_KAFKA_"))
        return tuple(sources)

    def as_librdkafka_dict(self, overrides: dict[str, Any] | None = None, /, **role: Any) -> dict[str, Any]:
        """The librdkafka configuration of one client.

        The connection keys of this config (unset ones left out, secrets revealed), then
        ``extra``, then the role's keys: ``role`` keyword arguments name a librdkafka key
        with ``_`` for ``.`` (``group_id="x"`` -> ``group.id``; the client's own keys such as
        ``error_cb``, ``on_delivery``, ``log_level`` keep their name), and ``overrides``
        gives keys by their exact names (``{"message.timeout.ms": 5000}``), applied last.
        """
        config: dict[str, Any] = {}
        for name, key in _LIBRDKAFKA_KEYS.items():
            value = getattr(self, name)
            if value is None:
                continue
            config[key] = value.get_secret_value() if isinstance(value, SecretStr) else value
        config.update(self.extra)
        for name, value in role.items():
            config[name if name in _CLIENT_KEYS else name.replace("_", ".")] = value
        config.update(overrides or {})
        return config

    def as_java_properties(self) -> dict[str, str]:
        """The same connection as Java Kafka client properties (Spark's own Kafka source takes them as ``kafka.<key>``).

        ``security.protocol`` as is; SASL PLAIN / SCRAM-SHA-256 / SCRAM-SHA-512 become
        ``sasl.mechanism`` and a ``sasl.jaas.config`` login with the username and password;
        ``ssl_ca_location`` becomes a PEM truststore (``ssl.truststore.type=PEM``, Kafka 2.7+
        Java clients) and a client certificate + key a PEM keystore given inline
        (``ssl.keystore.certificate.chain``, ``ssl.keystore.key``); an endpoint identification
        of ``none`` is Java's empty value. ``java_extra`` is applied last; librdkafka's
        ``extra`` keys are not carried over (their names differ).

        Raises:
            ValueError: a SASL mechanism without a username/password login (GSSAPI,
                OAUTHBEARER) and no ``sasl.jaas.config`` in ``java_extra``.
            OSError: the client certificate or key file cannot be read.
        """
        props = {"bootstrap.servers": self.bootstrap_servers, "security.protocol": self.security_protocol}
        if self.sasl_mechanism is not None:
            props["sasl.mechanism"] = self.sasl_mechanism
            module = _JAAS_LOGIN_MODULES.get(self.sasl_mechanism)
            if module is not None and self.sasl_username is not None:
                password = self.sasl_password.get_secret_value() if self.sasl_password else ""
                props["sasl.jaas.config"] = (
                    f"{module} required username={_jaas_quote(self.sasl_username)} password={_jaas_quote(password)};"
                )
            elif "sasl.jaas.config" not in self.java_extra:
                raise ValueError(f"SASL {self.sasl_mechanism} for Java clients needs sasl.jaas.config in java_extra")
        if self.ssl_ca_location:
            props.update({"ssl.truststore.type": "PEM", "ssl.truststore.location": self.ssl_ca_location})
        if self.ssl_certificate_location and self.ssl_key_location:
            props.update({
                "ssl.keystore.type": "PEM",
                "ssl.keystore.certificate.chain": Path(self.ssl_certificate_location).read_text(),
                "ssl.keystore.key": Path(self.ssl_key_location).read_text(),
            })  # fmt: skip
            if self.ssl_key_password is not None:
                props["ssl.key.password"] = self.ssl_key_password.get_secret_value()
        if self.ssl_endpoint_identification_algorithm is not None:
            props["ssl.endpoint.identification.algorithm"] = (
                "" if self.ssl_endpoint_identification_algorithm == "none" else "https"
            )
        props.update(self.java_extra)
        return props

    def __repr_args__(self):
        # SecretStr already hides the secrets; ``extra`` and ``java_extra`` may hold a password too
        for name, value in super().__repr_args__():
            hide = name in ("extra", "java_extra")
            yield name, ({k: "**********" if _secret_key(k) else v for k, v in value.items()} if hide else value)


def as_kafka_config(kafka: KafkaConfig | str) -> KafkaConfig:
    """``kafka`` itself, or for a bootstrap-servers string the config of the environment with those servers."""
    return kafka if isinstance(kafka, KafkaConfig) else load_kafka_config(bootstrap_servers=kafka)


def load_kafka_config(config_file: str | Path | None = None, **overrides: Any) -> KafkaConfig:
    """``KafkaConfig`` from ``config_file`` (else ``DTMON_KAFKA_CONFIG_FILE``), the environment and non-None ``overrides``.

    Raises:
        FileNotFoundError: the config file does not exist.
        pydantic.ValidationError: a value is not allowed (e.g. an unknown security protocol).
    """
    token = _config_file.set(str(config_file) if config_file else None)
    try:
        return KafkaConfig(**{k: v for k, v in overrides.items() if v is not None})
    finally:
        _config_file.reset(token)


END_PROBE_FETCH_WAIT_MS = 25
"""``fetch.wait.max.ms`` of the end-offset probe (``KafkaClients.end_offsets``): the broker answers a
fetch at the log end after this long. Tansu 0.6's S3 engine answered no 5-ms probe."""

_CONNECTION_ERRORS = ("_TRANSPORT", "_ALL_BROKERS_DOWN", "_RESOLVE", "_TIMED_OUT")
"""librdkafka error names that mean the broker cannot be reached (``error_cb``)."""


class ConnectionWatch:
    """The state of this process's connection to one Kafka cluster, fed by every client's callbacks.

    States: ``connecting`` (no broker answered yet), ``up``, ``lost``. The ``error_cb`` of
    every client (``on_error``) moves it to ``lost`` on a connection error (``_TRANSPORT``,
    ``_ALL_BROKERS_DOWN``, ...); its ``stats_cb`` (``on_stats``, librdkafka statistics every
    ``STATS_INTERVAL_MS``) moves it to ``up`` when a broker is UP. One log line per state
    change (``lost``: warning with the reason; back ``up``: info with the outage's length),
    never one per attempt; librdkafka's own log lines go through ``librdkafka_logger``.

    Times are ``time.monotonic()`` s.
    """

    STATS_INTERVAL_MS = 1000

    def __init__(self, where: str, logger: logging.Logger | None = None, clock=time.monotonic) -> None:
        self.where = where
        self.log = logger or log
        self.clock = clock
        self.state = "connecting"
        self.since = clock()
        self.outages = 0
        self.reason = ""
        self._lock = threading.Lock()

    def on_error(self, err) -> None:
        """librdkafka ``error_cb``: a connection error marks the cluster lost; other errors are logged
        once per kind per ``LOG_EVERY_S``."""
        if err.name() in _CONNECTION_ERRORS and not err.fatal():
            self.lost(err.str())
        else:
            _rate_limited(self.log, logging.ERROR if err.fatal() else logging.WARNING, f"kafka {self.where}: {err.name()}: {err.str()}")

    def on_stats(self, stats_json: str) -> None:
        """librdkafka ``stats_cb``: any broker in state UP marks the cluster up."""
        import json

        try:
            brokers = json.loads(stats_json).get("brokers", {})
        except ValueError:
            return
        if any(b.get("state") == "UP" for b in brokers.values()):
            self.up()

    def lost(self, reason: str) -> None:
        """Mark the cluster unreachable (logs one warning on the change)."""
        with self._lock:
            if self.state == "lost":
                return
            self.state, self.since, self.reason = "lost", self.clock(), reason
            self.outages += 1
        self.log.warning("Kafka at %s unreachable (%s); retrying", self.where, _short(reason))

    def up(self) -> None:
        """Mark the cluster reachable (logs one line when it comes back after an outage)."""
        with self._lock:
            if self.state == "up":
                return
            was, since = self.state, self.since
            self.state, self.since = "up", self.clock()
        if was == "lost":
            self.log.warning("Kafka at %s reachable again after %.1f s", self.where, self.since - since)

    def down_for(self) -> float:
        """s since the cluster was lost (0 while it is up or connecting)."""
        return self.clock() - self.since if self.state == "lost" else 0.0


LOG_EVERY_S = 60.0
"""A librdkafka log line (or non-connection error) of the same shape is repeated at most this often."""

_last_logged: dict[str, float] = {}
_suppressed: dict[str, int] = {}


def _short(text: str) -> str:
    """A librdkafka message without its thread/broker prefixes (``[thrd:...]: host/id: ``)."""
    import re

    return re.sub(r"^(\[thrd:[^\]]*\]: )?(\S+/(bootstrap|\d+): )?", "", text)


def _rate_limited(logger: logging.Logger, level: int, text: str, now: float | None = None) -> bool:
    """Log ``text`` unless a line of the same shape (digits ignored) was logged in the last ``LOG_EVERY_S`` s;
    returns whether it was logged. The next logged line says how many were left out."""
    import re

    shape = re.sub(r"\d+", "#", text)
    now = time.monotonic() if now is None else now
    last = _last_logged.get(shape)
    if last is not None and now - last < LOG_EVERY_S:
        _suppressed[shape] = _suppressed.get(shape, 0) + 1
        return False
    _last_logged[shape] = now
    skipped = _suppressed.pop(shape, 0)
    logger.log(level, "%s%s", text, f" ({skipped} more like it in {LOG_EVERY_S:.0f} s)" if skipped else "")
    return True


class _LibrdkafkaLogger(logging.Logger):
    """The ``logger`` of every client: librdkafka's log lines, connection failures left to ``ConnectionWatch``
    (which logs one line per state change), the rest rate-limited (``LOG_EVERY_S``)."""

    def __init__(self, watch: ConnectionWatch) -> None:
        super().__init__("librdkafka")
        self.watch = watch
        self.target = logging.getLogger("dtmon.kafka.librdkafka")

    def log(self, level, msg, *args, **kwargs):  # confluent-kafka calls log(level, "%s [%s] %s", fac, name, text)
        text = msg % args if args else str(msg)
        fac = str(args[0]) if args else ""
        if fac in ("FAIL", "ERROR") and any(w in text for w in ("Connect", "Connection", "Disconnected", "brokers are down")):
            return  # the client's error_cb reports the same event to the watch
        _rate_limited(self.target, min(level, logging.WARNING), text)


_watches: dict[str, ConnectionWatch] = {}
_watches_lock = threading.Lock()


def connection_watch(bootstrap_servers: str) -> ConnectionWatch:
    """The process's ``ConnectionWatch`` of the cluster at ``bootstrap_servers`` (one per cluster, shared by its clients)."""
    with _watches_lock:
        if bootstrap_servers not in _watches:
            _watches[bootstrap_servers] = ConnectionWatch(bootstrap_servers)
        return _watches[bootstrap_servers]


def watched(conf: dict[str, Any]) -> dict[str, Any]:
    """``conf`` with the callbacks that feed the cluster's ``ConnectionWatch`` and rate-limit librdkafka's log.

    Adds ``logger``, ``error_cb`` and ``stats_cb`` (+ ``statistics.interval.ms``); an
    ``error_cb``/``stats_cb`` already in ``conf`` is still called after the watch's, a
    ``logger`` or ``log_level`` already there is kept.
    """
    watch = connection_watch(str(conf.get("bootstrap.servers", "")))
    out = dict(conf)
    own_error, own_stats = conf.get("error_cb"), conf.get("stats_cb")

    def on_error(err):
        watch.on_error(err)
        if own_error is not None:
            own_error(err)

    def on_stats(stats):
        watch.on_stats(stats)
        if own_stats is not None:
            own_stats(stats)

    out["error_cb"] = on_error
    out["stats_cb"] = on_stats
    out.setdefault("statistics.interval.ms", ConnectionWatch.STATS_INTERVAL_MS)
    out.setdefault("logger", _LibrdkafkaLogger(watch))
    return out


class EndProbe(NamedTuple):
    """What ``KafkaClients.end_offsets`` found, per (topic, partition)."""

    ends: dict[tuple[str, int], int]
    """log end offset (offset after the last message, transaction markers included) of the partitions that answered"""
    unanswered: set[tuple[str, int]]
    """partitions that gave no end-of-partition answer in time"""
    tails: dict[tuple[str, int], tuple[int, int]]
    """(end, offset of the last message a ``read_committed`` reader gets before that end), where the probe read a
    message before the end-of-partition event: the offsets between the two hold transaction markers only (or
    aborted records), now and later, so a reader of a range up to ``end`` may stop after that message instead of
    waiting for the end-of-partition event (``processor.kafka_source.read_range``)"""


class KafkaClients:
    """Creates confluent-kafka clients from one ``KafkaConfig``.

    Every client is made by ``_create_consumer``, ``_create_producer`` or
    ``_create_admin``; a test subclass returns doubles there (``tests/doubles``).
    """

    def __init__(self, config: KafkaConfig | str | None = None) -> None:
        self.config = load_kafka_config() if config is None else as_kafka_config(config)

    def _create_consumer(self, conf: dict[str, Any]):
        from confluent_kafka import Consumer

        return Consumer(watched(conf))

    def _create_producer(self, conf: dict[str, Any]):
        from confluent_kafka import Producer

        return Producer(watched(conf))

    def _create_admin(self, conf: dict[str, Any]):
        from confluent_kafka.admin import AdminClient

        return AdminClient(watched(conf))

    def consumer(self, group_id: str, overrides: dict[str, Any] | None = None, /, **role: Any):
        """A consumer in group ``group_id`` (used with ``assign``; offsets never auto-committed).

        ``overrides``/``role``: more librdkafka keys, as in ``KafkaConfig.as_librdkafka_dict``.
        """
        return self._create_consumer(
            self.config.as_librdkafka_dict(overrides, group_id=group_id, enable_auto_commit=False, **role)
        )

    def producer(self, overrides: dict[str, Any] | None = None, /, **role: Any):
        """A producer with this config and the role's librdkafka keys."""
        return self._create_producer(self.config.as_librdkafka_dict(overrides, **role))

    def admin(self, overrides: dict[str, Any] | None = None, /, **role: Any):
        """An admin client with this config."""
        return self._create_admin(self.config.as_librdkafka_dict(overrides, **role))

    # -- shared chores -------------------------------------------------------------
    def ensure_topic(self, topic: str, partitions: int = 1, timeout: float = 10.0, config: dict[str, str] | None = None) -> int:
        """Create ``topic`` with ``partitions`` partitions and topic ``config`` (e.g. retention) if it does not exist.

        An existing topic keeps its partitions and its configuration.

        Returns:
            The topic's partition count (an existing topic keeps its own).
        Raises:
            KafkaSetupError: the broker did not answer within ``timeout`` s or refused the topic.
        """
        from confluent_kafka import KafkaError, KafkaException
        from confluent_kafka.admin import NewTopic

        where = self.config.bootstrap_servers
        errors: list = []
        admin = self.admin(error_cb=errors.append)
        try:
            metadata = admin.list_topics(timeout=timeout)
        except KafkaException as exc:
            admin.poll(0)  # serve the queued error_cb calls
            raise KafkaSetupError(
                f"cannot reach Kafka at {where} ({self.config.security_protocol}) within {timeout:g} s: {_short(refusal_reason(exc, errors))}"
            ) from exc
        existing = metadata.topics.get(topic)
        if existing is not None and existing.error is None:
            if len(existing.partitions) < partitions:
                log.warning("topic %s exists with %d partitions (< %d asked); keeping it", topic, len(existing.partitions), partitions)
            return len(existing.partitions)
        future = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=-1, config=config or {})])[topic]
        try:
            future.result(timeout)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise KafkaSetupError(f"cannot create topic {topic!r} on {where}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - concurrent.futures.TimeoutError and friends
            raise KafkaSetupError(f"cannot create topic {topic!r} on {where}: {exc!r}") from exc
        return partitions

    def ensure_results_topic(self, topic: str, timeout: float = 10.0) -> int:
        """Create the results topic with exactly one partition if it does not exist.

        One partition keeps the results messages in batch order for every reader; a topic a
        broker auto-created (Tansu makes 4 partitions) is kept, with a warning (the dashboard
        orders by batch id whatever the partitioning).

        Returns:
            The topic's partition count.
        Raises:
            KafkaSetupError: the broker did not answer within ``timeout`` s or refused the topic.
        """
        partitions = self.ensure_topic(topic, 1, timeout)
        if partitions > 1:
            log.warning("results topic %s has %d partitions, not 1: results may arrive out of batch order "
                        "(recreate it with one partition)", topic, partitions)  # fmt: skip
        return partitions

    def log_ends(self, topic: str, timeout_s: float = 10.0) -> dict[int, int] | None:
        """Log end offset of every partition of ``topic`` (partition -> offset), None if the topic does not exist.

        Raises:
            KafkaSetupError: the broker did not answer within ``timeout_s``.
        """
        from confluent_kafka import KafkaException, TopicPartition

        consumer = self.consumer("dtmon-end-probe")
        try:
            try:
                meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
            except KafkaException as exc:
                raise KafkaSetupError(
                    f"cannot reach Kafka at {self.config.bootstrap_servers} within {timeout_s:g} s: {_short(exc.args[0].str())}"
                ) from exc
            if meta is None or meta.error is not None:
                return None
            positions, highs = {}, {}
            for p in meta.partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s, cached=False)
                positions[(topic, p)], highs[p] = max(low, high - 1, 0), max(high, 0)
        finally:
            consumer.close()
        ends = self.end_offsets(positions, timeout_s).ends
        return {p: max(ends.get((topic, p), 0), high) for p, high in highs.items()}

    def ensure_topics(self, partitions: dict[str, int], timeout: float = 30.0) -> dict[str, int]:
        """``ensure_topic`` for each topic name -> partitions; returns name -> partition count."""
        return {name: self.ensure_topic(name, n, timeout) for name, n in partitions.items()}

    def end_offsets(
        self,
        positions: dict[tuple[str, int], int],
        timeout_s: float = 10.0,
        group_id: str = "dtmon-end-probe",
    ) -> EndProbe:
        """True log end offset of partitions, read from ``positions`` to the end-of-partition event.

        Args:
            positions: (topic, partition) -> offset to read from (at or below the end,
                e.g. the high watermark - 1).
            timeout_s: s to wait for every partition's answer.
        Returns:
            ``EndProbe``: ends of the partitions that answered (offset after the last
            message read, or the start), the partitions that gave no end in time, and the
            last readable message before each end where the probe read one.
        """
        from confluent_kafka import KafkaError, TopicPartition

        # a fetch at the log end is answered after fetch.wait.max.ms (default 500 ms); an offset
        # the broker does not have is reported, never silently replaced. Tansu 0.6 on its S3
        # storage engine answers no fetch within 5 ms (every probe timed out); 25 ms works on both engines.
        consumer = self.consumer(group_id, enable_partition_eof=True, fetch_wait_max_ms=END_PROBE_FETCH_WAIT_MS, auto_offset_reset="error")
        ends: dict[tuple[str, int], int] = {}
        last: dict[tuple[str, int], int] = {}  # last message read before the end-of-partition event
        tails: dict[tuple[str, int], tuple[int, int]] = {}
        try:
            if not positions:
                return EndProbe(ends, set(), tails)
            consumer.assign([TopicPartition(t, p, o) for (t, p), o in positions.items()])
            waiting = set(positions)
            deadline = time.monotonic() + timeout_s
            while waiting and time.monotonic() < deadline:
                msg = consumer.poll(0.5)  # one event at a time: consume(n) would wait out its timeout
                if msg is None:
                    continue
                key = (msg.topic(), msg.partition())
                err = msg.error()
                if err is None:
                    ends[key] = max(ends.get(key, 0), msg.offset() + 1)
                    if key in waiting:
                        last[key] = msg.offset()
                elif err.code() == KafkaError._PARTITION_EOF:
                    ends[key] = max(ends.get(key, 0), msg.offset())
                    if key in waiting and key in last:
                        tails[key] = (msg.offset(), last[key])
                    waiting.discard(key)
                elif err.code() in (KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE) and key in waiting:
                    # the broker has no offset there: nothing was written yet
                    log.warning("end-offset probe: %s at offset %s is out of range (%s)", key, positions[key], err)
                    waiting.discard(key)
            return EndProbe(ends, waiting, tails)
        finally:
            consumer.close()

    def read_all(self, topic: str, timeout_s: float = 30.0, group_id: str = "dtmon-read-all", **role: Any) -> list:
        """Every message of ``topic``, all partitions from the beginning to the end-of-partition event.

        The end is the PARTITION_EOF event, not ListOffsets (Tansu's "latest" answer is short).
        ``role``: more librdkafka keys, e.g. ``isolation_level="read_committed"``.

        Returns:
            confluent_kafka messages, each partition's in offset order.
        Raises:
            TimeoutError: the end of every partition was not reached within ``timeout_s``.
            RuntimeError: a fatal Kafka error.
        """
        from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

        consumer = self.consumer(group_id, enable_partition_eof=True, **role)
        try:
            partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
            at_end: set[int] = set()
            messages = []
            deadline = time.monotonic() + timeout_s
            while len(at_end) < len(partitions):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{topic}: {len(messages)} messages read, partitions at end {sorted(at_end)}")
                msg = consumer.poll(0.5)
                if msg is None:
                    continue
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        at_end.add(msg.partition())
                    elif msg.error().fatal():
                        raise RuntimeError(f"reading {topic}: {msg.error()}")
                    continue
                at_end.discard(msg.partition())
                messages.append(msg)
            return messages
        finally:
            consumer.close()

    def read_tail(self, topic: str, timeout_s: float = 10.0, group_id: str = "dtmon-tail") -> dict[int, Any] | None:
        """The newest message of every partition of ``topic`` (partition -> confluent-kafka Message).

        Reads from the high watermark - 1 to the end-of-partition event, so Tansu's low
        ListOffsets answer costs at most one record batch. Returns None if the topic does
        not exist; partitions with no message are left out.
        """
        from confluent_kafka import KafkaError, TopicPartition

        consumer = self.consumer(group_id, enable_partition_eof=True)
        try:
            metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
            if metadata is None or metadata.error is not None:
                return None
            positions = []
            for p in metadata.partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s, cached=False)
                positions.append(TopicPartition(topic, p, max(low, high - 1, 0)))
            consumer.assign(positions)
            newest: dict[int, Any] = {}
            waiting = {tp.partition for tp in positions}
            deadline = time.monotonic() + timeout_s
            while waiting and time.monotonic() < deadline:
                msg = consumer.poll(0.5)
                if msg is None:
                    continue
                if msg.error() is not None:
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        waiting.discard(msg.partition())
                    continue
                newest[msg.partition()] = msg
            return newest
        finally:
            consumer.close()


def refusal_reason(exc: Exception, errors: list) -> str:
    """Why a client got no answer: the authentication or TLS error among the client's ``error_cb`` errors
    (``errors``, confluent-kafka ``KafkaError``), else the last of them that names a broker, else ``exc``.

    librdkafka reports a refused login or certificate only to ``error_cb``; the failed call
    itself says "Broker transport failure".
    """
    from confluent_kafka import KafkaError

    security = [e for e in errors if e.code() in (KafkaError._AUTHENTICATION, KafkaError._SSL)]
    specific = [e for e in errors if e.code() != KafkaError._ALL_BROKERS_DOWN]  # "1/1 brokers are down" says no more
    chosen = (security or specific or errors or [None])[-1]
    return chosen.str() if chosen is not None else str(exc)


def ensure_topic(
    kafka: KafkaConfig | str, topic: str, partitions: int = 1, timeout: float = 10.0, config: dict[str, str] | None = None
) -> int:
    """``KafkaClients(kafka).ensure_topic(topic, partitions, timeout, config)``: create ``topic`` if missing.

    Returns:
        The topic's partition count (an existing topic keeps its own).
    Raises:
        KafkaSetupError: the broker did not answer within ``timeout`` s or refused the topic.
    """
    return KafkaClients(kafka).ensure_topic(topic, partitions, timeout, config)
