"""dtmon on a secured Kafka: a real Apache Kafka broker whose only client listener is SASL_SSL
(TLS with a throw-away CA, SCRAM-SHA-512 users), every stage configured by one Kafka config file.

* ``dtmon up --bootstrap-servers … --kafka-config kafka.toml``: producer -> raw topic ->
  processor (dtmon's Python Kafka source, or Spark's own) -> results topic -> dashboard, all over TLS + SASL; the
  results are read back over the same connection, by the dashboard's own consumer class and
  through the running dashboard's Bokeh session; the password appears in no log and no repr.
* A client without credentials, or with a wrong password, is refused with one clear line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from dtmon.kafka import KafkaClients, KafkaSetupError, load_kafka_config
from dtmon.schema import ResultsMessage
from dtmon.services import free_port
from dtmon.settings import default_genuine_source
from dtmon.supervisor import console_script
from tests.certs import make_tls_files

pytestmark = pytest.mark.integration

PASSWORD = "s3cret-Pw-for-alice"
BROKER_PASSWORD = "broker-Pw-7e1"
DTMON = [sys.executable, "-m", "dtmon.cli"]
FIRST_RESULT_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def secured_kafka(tmp_path_factory):
    """(broker, TLS files, config file) of a SASL_SSL / SCRAM-SHA-512 Apache Kafka broker."""
    from dtmon.apache_kafka import BrokerSecurity, start_apache_kafka

    root = tmp_path_factory.mktemp("secured")
    tls = make_tls_files(root / "tls")
    security = BrokerSecurity("SASL_SSL", tls.keystore, tls.ca, "SCRAM-SHA-512", {"broker": BROKER_PASSWORD, "alice": PASSWORD})
    broker = start_apache_kafka(port=free_port(), log=root / "apache-kafka.log", security=security)
    config = root / "kafka.toml"
    config.write_text(
        f'bootstrap_servers = "{broker.address}"\n'
        'security_protocol = "SASL_SSL"\n'
        'sasl_mechanism = "SCRAM-SHA-512"\n'
        'sasl_username = "alice"\n'
        f'sasl_password = "{PASSWORD}"\n'
        f'ssl_ca_location = "{tls.ca}"\n'
    )
    try:
        yield broker, tls, config
    finally:
        broker.stop()


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("DTMON_")}


def test_a_client_without_credentials_is_refused_with_one_line(secured_kafka, tmp_path):
    broker, tls, _ = secured_kafka
    # the Kafka chores of every stage (ensure_topic is the first call of dtmon up, producer, processor)
    for name, config in {
        "plaintext": load_kafka_config(bootstrap_servers=broker.address),
        "TLS, no login": load_kafka_config(bootstrap_servers=broker.address, security_protocol="SSL", ssl_ca_location=str(tls.ca)),
        "wrong password": load_kafka_config(
            bootstrap_servers=broker.address, security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
            sasl_username="alice", sasl_password="wrong", ssl_ca_location=str(tls.ca),
        ),
    }.items():  # fmt: skip
        t0 = time.monotonic()
        with pytest.raises(KafkaSetupError) as refused:
            KafkaClients(config).ensure_topic("intruder", timeout=5)
        message = str(refused.value)
        print(f"{name}: refused in {time.monotonic() - t0:.1f} s: {message}")
        assert broker.address in message and "\n" not in message
        if name == "wrong password":
            assert "SASL authentication error" in message
        assert f"({config.security_protocol})" in message
    # the producer CLI, no credentials: one line, no traceback, non-zero exit
    done = subprocess.run(
        [*console_script("producer"), "--bootstrap-servers", broker.address, "--source", str(default_genuine_source()), "--max-rows", "10"],
        capture_output=True, text=True, env=_clean_env(), timeout=120, cwd=tmp_path,
    )  # fmt: skip
    last = [line for line in done.stderr.splitlines() if not line.startswith("%")]
    print("producer without credentials: exit", done.returncode, "; its lines besides librdkafka's:", last)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and broker.address in done.stderr
    # the broker kept the intruder out: no topic was created by the refused clients
    topics = KafkaClients(load_kafka_config(secured_kafka[2])).admin().list_topics(timeout=10).topics
    assert "intruder" not in topics


@pytest.mark.parametrize("kafka_source", ["python", "spark"])
def test_dtmon_up_over_sasl_ssl_with_one_kafka_config_file(secured_kafka, tmp_path, kafka_source):
    """Every stage of ``dtmon up`` on the SASL_SSL broker, configured by ``--kafka-config``, with either Kafka
    source of the processor (Spark's own one gets the config as Java client properties); no password in any log."""
    from bokeh.client import pull_session

    from dashboard.consumer import ResultsConsumer
    from dashboard.state import ResultsStore
    from dtmon.supervisor import descendants
    from tests.dtmon.test_cli import kill_tree

    broker, _, config_file = secured_kafka
    config = load_kafka_config(config_file)
    s3_port, dashboard_port, broker_port = free_port(), free_port(), free_port()
    raw, results_topic = f"secured-raw-{kafka_source}", f"secured-results-{kafka_source}"
    workdir, out = tmp_path / "up", tmp_path / "up.out"
    cmd = [*DTMON, "up", "--bootstrap-servers", broker.address, "--kafka-config", str(config_file),
           "--rate", "1000", "--trigger-interval", "1", "--broker-port", str(broker_port), "--s3-port", str(s3_port),
           "--dashboard-port", str(dashboard_port), "--workdir", str(workdir)]  # fmt: skip
    store = ResultsStore(history=100)
    consumer = ResultsConsumer(store, config, results_topic, history=100, retry_s=0.5)
    env = {**_clean_env(), "DTMON_RAW_TOPIC": raw, "DTMON_RESULTS_TOPIC": results_topic, "DTMON_KAFKA_SOURCE": kafka_source}
    proc = subprocess.Popen(cmd, stdout=open(out, "wb"), stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    pids: set[int] = set()
    try:
        consumer.start()
        deadline = time.monotonic() + FIRST_RESULT_TIMEOUT_S
        while store.snapshot().last_batch_id is None:
            assert proc.poll() is None, out.read_text()
            assert time.monotonic() < deadline, "no results over SASL_SSL"
            time.sleep(0.5)
        snap = store.snapshot()
        assert snap.broker_reachable is True and snap.invalid_messages == 0
        tail = KafkaClients(config).read_tail(results_topic)
        results = ResultsMessage.from_json(tail[0].value())
        assert results.hits > 0 and results.rows_read > 0
        raw_tail = KafkaClients(config).read_tail(raw)
        assert raw_tail, "nothing on the raw topic"

        # the running dashboard's own consumer got the batches too (its Bokeh session, no browser)
        url = f"http://127.0.0.1:{dashboard_port}/dashboard"
        deadline = time.monotonic() + 60
        rows = 0
        while rows == 0 and time.monotonic() < deadline:
            with pull_session(url=url) as session:
                source = session.document.select_one({"name": "series-source"})
                rows = len(next(iter(source.data.values()), [])) if source is not None else 0
            time.sleep(1)
        assert rows > 0, "the dashboard shows no batch"
        print(f"dashboard session shows {rows} batches; results batch {results.batch_id}: {results.hits} hits")

        pids = descendants(proc.pid)
        proc.send_signal(signal.SIGINT)
        proc.wait(90)
    finally:
        consumer.stop()
        if proc.poll() is None:
            kill_tree(proc, pids)
    assert proc.returncode == 0, out.read_text()

    # secrets never logged: not the password, not in the reprs of the settings the stages use
    from dtmon.settings import Settings

    texts = {"dtmon up output": out.read_text(errors="replace")}
    texts |= {p.name: p.read_text(errors="replace") for p in (workdir / "logs").glob("*.log")}
    texts["repr(KafkaConfig)"] = repr(config)
    texts["repr(Settings)"] = repr(Settings(kafka_config_file=str(config_file)).kafka)
    assert "processor.log" in texts and "producer.log" in texts and "dashboard.log" in texts
    assert "batch" in texts["processor.log"] and f"Kafka source {kafka_source}" in texts["processor.log"]
    for name, text in texts.items():
        assert PASSWORD not in text, f"password in {name}"
        assert BROKER_PASSWORD not in text, f"broker password in {name}"


@pytest.mark.parametrize("case", ["SSL with client certificates", "SASL_PLAINTEXT with PLAIN"])
def test_clients_round_trip_and_refusal_on_other_secured_listeners(case, tmp_path):
    """Mutual TLS (``ssl.client.auth=required``, the client certificate of ``KafkaConfig``) and SASL PLAIN
    without TLS: 200 messages produced and read back through ``KafkaClients``; a client lacking the
    certificate / with a wrong password is refused."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    from dtmon.apache_kafka import BrokerSecurity, start_apache_kafka

    tls = make_tls_files(tmp_path / "tls")
    if case.startswith("SSL"):
        security = BrokerSecurity("SSL", tls.keystore, tls.ca, client_auth=True)
        good = {"security_protocol": "SSL", "ssl_ca_location": str(tls.ca),
                "ssl_certificate_location": str(tls.client_cert), "ssl_key_location": str(tls.client_key)}  # fmt: skip
        bad = {**good, "ssl_certificate_location": None, "ssl_key_location": None}
    else:
        security = BrokerSecurity("SASL_PLAINTEXT", sasl_mechanism="PLAIN", users={"broker": BROKER_PASSWORD, "alice": PASSWORD})
        good = {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_username": "alice", "sasl_password": PASSWORD}
        bad = {**good, "sasl_password": "wrong"}
    broker = start_apache_kafka(port=free_port(), log=tmp_path / "apache-kafka.log", security=security)
    try:
        clients = KafkaClients(load_kafka_config(bootstrap_servers=broker.address, **good))
        clients.ensure_topic("secured", 1, timeout=30)
        producer = clients.producer(acks="all")
        for i in range(200):
            producer.produce("secured", value=f"hit {i}".encode())
        assert producer.flush(30) == 0
        consumer = clients.consumer("secured-read", enable_partition_eof=True)
        consumer.assign([TopicPartition("secured", 0, OFFSET_BEGINNING)])
        values = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error() is None:
                values.append(msg.value())
            elif values:  # end of partition after the messages
                break
        consumer.close()
        assert values == [f"hit {i}".encode() for i in range(200)]

        with pytest.raises(KafkaSetupError) as refused:
            KafkaClients(load_kafka_config(bootstrap_servers=broker.address, **bad)).ensure_topic("intruder", timeout=5)
        print(f"{case}: refused: {refused.value}")
        assert "\n" not in str(refused.value)
        if case.startswith("SASL"):
            assert "SASL authentication error" in str(refused.value)
    finally:
        broker.stop()
    log = (tmp_path / "apache-kafka.log").read_text(errors="replace")
    assert PASSWORD not in log  # the broker's own JAAS config is logged [hidden]
