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


@dataclass
class ApacheKafka(Service):
    """A running one-node Apache Kafka (KRaft) JVM; ``stop()`` also removes its data directory."""

    data_dir: Path | None = None
    start_s: float = 0.0
    """Seconds from formatting the storage directory to the broker being registered in the cluster metadata."""

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the JVM (SIGTERM: a controlled shutdown; SIGKILL after ``timeout`` s), then remove the data directory."""
        stop_process(self.process, timeout)
        if self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise FileNotFoundError("Apache Kafka needs Java 17+: apt-get install openjdk-17-jre-headless")
    return java


def _wait_registered(address: str, process: subprocess.Popen, deadline: float) -> None:
    """Block until the broker at ``address`` lists itself in a metadata response (it is unfenced)."""
    from confluent_kafka import KafkaException

    from dtmon.kafka import KafkaClients

    admin = KafkaClients(address).admin(log_level=0)
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
) -> ApacheKafka:
    """Format a temporary KRaft storage directory and start a one-node Apache Kafka on ``host:port``.

    Fetches the jars first if the cache lacks them (``fetch_jars``). The controller listens
    on ``controller_port`` (a free port when None). ``log`` receives the JVM's output. The
    storage directory is a new temporary directory (inside ``data_root`` if given).

    Raises:
        FileNotFoundError: no ``java`` or no ``mvn``.
        RuntimeError: formatting failed, or the JVM exited during startup.
        TimeoutError: the broker was not ready after ``timeout`` s.
    """
    from dtmon.services import free_port

    libs = fetch_jars(version)
    controller_port = controller_port or free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="dtmon-apache-kafka-", dir=data_root))
    props = server_properties(host, port, controller_port, data_dir / "data", overrides)
    config = data_dir / "server.properties"
    config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    (data_dir / "log4j2.properties").write_text(LOG4J2_PROPERTIES)
    java = [_java(), f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC",
            "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={data_dir / 'log4j2.properties'}",
            "-cp", f"{libs}/*"]  # fmt: skip
    t0 = time.monotonic()
    formatted = subprocess.run(
        [*java, "kafka.tools.StorageTool", "format", "-t", cluster_id(), "-c", str(config)],
        capture_output=True, text=True,
    )  # fmt: skip
    if formatted.returncode != 0:
        shutil.rmtree(data_dir, ignore_errors=True)
        raise RuntimeError(f"kafka-storage format failed:\n{formatted.stdout[-2000:]}{formatted.stderr[-2000:]}")
    out = open(log, "ab") if log else subprocess.DEVNULL
    process = subprocess.Popen([*java, "kafka.Kafka", str(config)], stdout=out, stderr=subprocess.STDOUT,
                               start_new_session=True, cwd=data_dir)  # fmt: skip
    service = ApacheKafka("broker", process, f"{host}:{port}", data_dir=data_dir)
    try:
        wait_for_port(host, port, timeout, process)
        _wait_registered(service.address, process, t0 + timeout)
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
