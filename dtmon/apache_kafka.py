"""Apache Kafka as a local test broker: fetch the server jars with Maven, run one KRaft node on loopback.

Apache Kafka is not a pip package: its server jars (``org.apache.kafka:kafka_2.13`` and
their runtime dependencies) are copied by Maven (``mvn dependency:copy-dependencies`` on a
generated pom) into a cache outside the repository, by default
``~/.cache/dtmon/apache-kafka-<version>/libs`` (``DTMON_CACHE_DIR`` moves the cache root).
``start_apache_kafka`` formats a one-node KRaft storage directory (controller and broker in
one JVM, ``process.roles=broker,controller``) in a temporary directory, starts it with
``java -cp <libs>/* kafka.Kafka`` bound to 127.0.0.1 on two ports (client listener and
controller listener), waits until the broker is registered in the cluster metadata, and its
``stop()`` ends the JVM and removes the directory.

``BrokerSecurity`` secures the client listener: TLS with a PEM keystore and truststore
(``ssl.keystore.type=PEM``, Kafka 2.7+), SASL (PLAIN, or SCRAM-SHA-512 with the users
written into the storage directory at format time), or both (``SASL_SSL``). The listener
is then named after its protocol and also carries the broker's own inter-broker traffic,
so no plaintext client port is left open; only the controller listener stays plaintext.

The settings keep startup fast and the footprint small on a 2-core machine: a 512 MiB heap,
replication factor 1 for the internal topics, no initial group rebalance delay, and a 1 s
retention check interval (so ``retention.ms`` on a topic is applied within seconds).

Command line (used by ``.ci/run``)::

    python -m dtmon.apache_kafka fetch            # jars into the cache; prints the directory and the time
    python -m dtmon.apache_kafka broker --port 9092
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dtmon.services import Service, stop_process, wait_for_port

KAFKA_VERSION = "4.1.1"
"""Apache Kafka server version the launcher fetches by default (KRaft only, Java 17+)."""

SCALA_VERSION = "2.13"
LOG4J_VERSION = "2.24.3"  # the log4j2 of Kafka 4.1; its SLF4J 1.7 binding makes the broker log

POM_TEMPLATE = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dtmon.local</groupId>
  <artifactId>apache-kafka-server</artifactId>
  <version>{version}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_{scala}</artifactId>
      <version>{version}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""

LOG4J2_PROPERTIES = """status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = out
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
"""


def cache_root() -> Path:
    """Root of dtmon's download cache: ``$DTMON_CACHE_DIR``, else ``$XDG_CACHE_HOME/dtmon``, else ``~/.cache/dtmon``."""
    if os.environ.get("DTMON_CACHE_DIR"):
        return Path(os.environ["DTMON_CACHE_DIR"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "dtmon"


def kafka_home(version: str = KAFKA_VERSION) -> Path:
    """Cache directory of one Kafka version: ``<cache_root>/apache-kafka-<version>`` (jars in ``libs/``)."""
    return cache_root() / f"apache-kafka-{version}"


def fetch_jars(version: str = KAFKA_VERSION, quiet: bool = True) -> Path:
    """Copy the Kafka server jars and their runtime dependencies into the cache; return the ``libs`` directory.

    Nothing is fetched when a previous fetch completed (marker file ``libs/.complete``).
    Maven downloads through its local repository (``~/.m2``), so a second version or a
    re-fetch reuses what it already has.

    Raises:
        FileNotFoundError: ``mvn`` is not installed (Debian package ``maven``).
        RuntimeError: Maven failed (its output is in the message).
    """
    libs = kafka_home(version) / "libs"
    if (libs / ".complete").is_file():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise FileNotFoundError("Apache Kafka jars are fetched with Maven: install it (apt-get install maven)")
    libs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dtmon-kafka-pom-") as tmp:
        pom = Path(tmp) / "pom.xml"
        pom.write_text(POM_TEMPLATE.format(version=version, scala=SCALA_VERSION, log4j=LOG4J_VERSION))
        cmd = [mvn, "-B", "-f", str(pom), "dependency:copy-dependencies", "-DincludeScope=runtime",
               f"-DoutputDirectory={libs}"]  # fmt: skip
        if quiet:
            cmd.insert(1, "-q")
        done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"mvn could not fetch Apache Kafka {version}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    if not list(libs.glob(f"kafka_{SCALA_VERSION}-{version}.jar")):
        raise RuntimeError(f"mvn finished but {libs} holds no kafka_{SCALA_VERSION}-{version}.jar")
    (libs / ".complete").write_text(version + "\n")
    return libs


def cluster_id() -> str:
    """A new KRaft cluster id: 16 random bytes, URL-safe base64 without padding (22 characters), as Kafka's own."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def format_command(java: list[str], config: Path, cluster: str, security: BrokerSecurity | None = None) -> list[str]:
    """The ``kafka-storage format`` command line for ``config`` with KRaft cluster id ``cluster``.

    The id is passed as one ``--cluster-id=…`` token: a URL-safe base64 id may start with
    ``-`` (1 in 64), which the tool's argument parser would otherwise read as a flag.
    """
    return [*java, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster}", "--config", str(config),
            *(security.format_arguments() if security else [])]  # fmt: skip


def server_properties(
    host: str, port: int, controller_port: int, log_dir: Path, overrides: dict[str, str] | None = None
) -> dict[str, str]:
    """``server.properties`` of a one-node KRaft cluster (broker and controller, node id 1) bound to ``host``.

    Clients connect to ``host:port`` (listener PLAINTEXT); the controller quorum is this node
    alone on ``host:controller_port``. ``overrides`` replace or add entries.
    """
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{host}:{controller_port}",
        "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{host}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(log_dir),
        "num.partitions": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "log.retention.check.interval.ms": "1000",
        "log.segment.delete.delay.ms": "1000",
        "auto.create.topics.enable": "true",
        "num.network.threads": "2",
        "num.io.threads": "4",
    }
    props.update(overrides or {})
    return props


@dataclass(frozen=True)
class BrokerSecurity:
    """Security of the broker's client listener.

    ``protocol``: SSL, SASL_SSL or SASL_PLAINTEXT. ``keystore``: PEM file with the broker's
    PKCS#8 private key (unencrypted) and certificate chain; ``truststore``: PEM file with the
    CA certificates the broker trusts (its own connections to itself check the keystore
    against it). ``users``: SASL username -> password; the first user is the broker's own
    (inter-broker) login. Passwords stay out of ``repr``.
    """

    protocol: Literal["SSL", "SASL_SSL", "SASL_PLAINTEXT"]
    keystore: Path | None = None
    truststore: Path | None = None
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-512"] = "PLAIN"
    users: dict[str, str] | None = None
    client_auth: bool = False
    """TLS: clients must present a certificate signed by a CA of the truststore (``ssl.client.auth=required``)."""

    def __repr__(self) -> str:
        return (f"BrokerSecurity(protocol={self.protocol!r}, keystore={self.keystore}, truststore={self.truststore}, "
                f"sasl_mechanism={self.sasl_mechanism!r}, users={sorted(self.users or {})}, client_auth={self.client_auth})")

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL")

    def server_properties(self, host: str, port: int, controller_port: int) -> dict[str, str]:
        """``server.properties`` entries of the secured client listener (named ``self.protocol``).

        Raises:
            ValueError: TLS without keystore/truststore, or SASL without users.
        """
        name = self.protocol
        prefix = f"listener.name.{name.lower()}."
        props = {
            "listeners": f"{name}://{host}:{port},CONTROLLER://{host}:{controller_port}",
            "advertised.listeners": f"{name}://{host}:{port}",
            "inter.broker.listener.name": name,
            "listener.security.protocol.map": f"CONTROLLER:PLAINTEXT,{name}:{name}",
        }
        if self.tls:
            if self.keystore is None or self.truststore is None:
                raise ValueError(f"{name} needs a PEM keystore and truststore")
            props.update({
                "ssl.keystore.type": "PEM", "ssl.keystore.location": str(self.keystore),
                "ssl.truststore.type": "PEM", "ssl.truststore.location": str(self.truststore),
                "ssl.client.auth": "required" if self.client_auth else "none",
            })  # fmt: skip
        if self.sasl:
            if not self.users:
                raise ValueError(f"{name} needs at least one SASL user (the broker's own)")
            user, password = next(iter(self.users.items()))
            mech = self.sasl_mechanism
            props.update({"sasl.enabled.mechanisms": mech, "sasl.mechanism.inter.broker.protocol": mech})
            if mech == "PLAIN":
                accounts = " ".join(f'user_{u}="{p}"' for u, p in self.users.items())
                props[prefix + "plain.sasl.jaas.config"] = (
                    "org.apache.kafka.common.security.plain.PlainLoginModule required "
                    f'username="{user}" password="{password}" {accounts};'
                )
            else:
                props[prefix + "scram-sha-512.sasl.jaas.config"] = (
                    f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{user}" password="{password}";'
                )
        return props

    def format_arguments(self) -> list[str]:
        """Extra ``kafka-storage format`` arguments: the SCRAM users (none for PLAIN or TLS only)."""
        if not self.sasl or self.sasl_mechanism == "PLAIN":
            return []
        args = []
        for user, password in (self.users or {}).items():
            args += ["--add-scram", f"SCRAM-SHA-512=[name={user},password={password}]"]
        return args

    def client_config(self, user: str | None = None) -> dict[str, str]:
        """librdkafka keys of a client logging in as ``user`` (default: the broker's own user)."""
        config: dict[str, str] = {"security.protocol": self.protocol}
        if self.tls:
            config["ssl.ca.location"] = str(self.truststore)
            if self.client_auth:  # the broker's own certificate serves as the probe's client certificate
                config.update({"ssl.certificate.location": str(self.keystore), "ssl.key.location": str(self.keystore)})
        if self.sasl:
            user = user or next(iter(self.users or {}))
            config.update({"sasl.mechanisms": self.sasl_mechanism, "sasl.username": user,
                           "sasl.password": (self.users or {})[user]})  # fmt: skip
        return config


@dataclass
class ApacheKafka(Service):
    """A running one-node Apache Kafka (KRaft) JVM; ``stop()`` also removes its data directory."""

    data_dir: Path | None = None
    start_s: float = 0.0
    """Seconds from formatting the storage directory to the broker being registered in the cluster metadata."""
    security: BrokerSecurity | None = None
    """Security of the client listener (None: PLAINTEXT)."""
    keep_data: bool = False
    """A durable storage directory (``start_apache_kafka(data_dir=…)``): ``stop()`` keeps it."""

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the JVM (SIGTERM: a controlled shutdown; SIGKILL after ``timeout`` s), then remove a temporary data directory."""
        stop_process(self.process, timeout)
        if self.data_dir is not None and not self.keep_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise FileNotFoundError("Apache Kafka needs Java 17+: apt-get install openjdk-17-jre-headless")
    return java


def _wait_registered(address: str, process: subprocess.Popen, deadline: float, client: dict[str, str] | None = None) -> None:
    """Block until the broker at ``address`` lists itself in a metadata response (it is unfenced).

    ``client``: more librdkafka keys of the probing client (the secured listener's login).
    """
    from confluent_kafka import KafkaException

    from dtmon.kafka import KafkaClients, KafkaConfig

    config = KafkaConfig(bootstrap_servers=address, extra={k: v for k, v in (client or {}).items()})
    admin = KafkaClients(config).admin(log_level=0)
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Apache Kafka exited with code {process.returncode} during startup")
        try:
            if admin.list_topics(timeout=2).brokers:
                return
        except KafkaException:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"Apache Kafka at {address} not registered before the deadline")


def start_apache_kafka(
    host: str = "127.0.0.1",
    port: int = 9092,
    controller_port: int | None = None,
    log: Path | None = None,
    version: str = KAFKA_VERSION,
    heap: str = "512m",
    overrides: dict[str, str] | None = None,
    timeout: float = 120.0,
    data_root: Path | None = None,
    security: BrokerSecurity | None = None,
    data_dir: Path | None = None,
) -> ApacheKafka:
    """Format a temporary KRaft storage directory and start a one-node Apache Kafka on ``host:port``.

    Fetches the jars first if the cache lacks them (``fetch_jars``). The controller listens
    on ``controller_port`` (a free port when None). ``log`` receives the JVM's output. The
    storage directory is a new temporary directory (inside ``data_root`` if given).
    ``security``: TLS and/or SASL on the client listener (default PLAINTEXT). ``data_dir``: a
    durable storage directory instead: formatted on first use only, reused by the next start
    (a restarted broker keeps every acknowledged message) and kept by ``stop()``.

    Raises:
        FileNotFoundError: no ``java`` or no ``mvn``.
        RuntimeError: formatting failed, or the JVM exited during startup.
        TimeoutError: the broker was not ready after ``timeout`` s.
    """
    from dtmon.services import free_port

    libs = fetch_jars(version)
    controller_port = controller_port or free_port()
    durable = data_dir is not None
    if data_dir is None:
        data_dir = Path(tempfile.mkdtemp(prefix="dtmon-apache-kafka-", dir=data_root))
    data_dir.mkdir(parents=True, exist_ok=True)
    secured = security.server_properties(host, port, controller_port) if security else {}
    props = server_properties(host, port, controller_port, data_dir / "data", {**secured, **(overrides or {})})
    config = data_dir / "server.properties"
    config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    (data_dir / "log4j2.properties").write_text(LOG4J2_PROPERTIES)
    java = [_java(), f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC",
            "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={data_dir / 'log4j2.properties'}",
            "-cp", f"{libs}/*"]  # fmt: skip
    t0 = time.monotonic()
    if not (durable and (data_dir / "data" / "meta.properties").is_file()):
        formatted = subprocess.run(format_command(java, config, cluster_id(), security), capture_output=True, text=True)
        if formatted.returncode != 0:
            if not durable:
                shutil.rmtree(data_dir, ignore_errors=True)
            raise RuntimeError(f"kafka-storage format failed:\n{formatted.stdout[-2000:]}{formatted.stderr[-2000:]}")
    out = open(log, "ab") if log else subprocess.DEVNULL
    process = subprocess.Popen([*java, "kafka.Kafka", str(config)], stdout=out, stderr=subprocess.STDOUT,
                               start_new_session=True, cwd=data_dir)  # fmt: skip
    service = ApacheKafka("broker", process, f"{host}:{port}", data_dir=data_dir, security=security, keep_data=durable)
    try:
        wait_for_port(host, port, timeout, process)
        _wait_registered(service.address, process, t0 + timeout, security.client_config() if security else None)
    except BaseException:
        service.stop()
        raise
    service.start_s = time.monotonic() - t0
    return service


def main(argv: list[str] | None = None) -> int:
    """``fetch`` (jars into the cache) or ``broker`` (run one node until Ctrl-C)."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(prog="python -m dtmon.apache_kafka", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["fetch", "broker"])
    parser.add_argument("--version", default=KAFKA_VERSION)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9092)
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    libs = fetch_jars(args.version)
    print(f"Apache Kafka {args.version} jars in {libs} ({len(list(libs.glob('*.jar')))} jars, {time.monotonic() - t0:.1f} s)")
    if args.command == "broker":
        broker = start_apache_kafka(args.host, args.port, version=args.version)
        print(f"Apache Kafka {args.version} on {broker.address} (ready in {broker.start_s:.1f} s; Ctrl-C stops it)")
        stopped = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stopped.append(1))
        while not stopped and broker.process.poll() is None:
            time.sleep(0.5)
        broker.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
