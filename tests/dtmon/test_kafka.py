"""dtmon.kafka: the typed client configuration, and the end-of-partition probe / tail read on client doubles."""

from __future__ import annotations

import json

import pytest
from confluent_kafka import KafkaError
from pydantic import ValidationError

from dtmon.kafka import KafkaClients, KafkaConfig, load_kafka_config
from dtmon.settings import load_settings
from tests.doubles.kafka import FakeClients, FakeError, FakeMessage, eof

SECRET = "s3cr3t-pw"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    import os

    for key in list(os.environ):
        if key.startswith("DTMON_KAFKA_") or key == "DTMON_BOOTSTRAP_SERVERS":
            monkeypatch.delenv(key)


def test_librdkafka_dict_has_the_set_keys_then_extra_then_the_role():
    config = KafkaConfig(
        bootstrap_servers="b1:9093,b2:9093", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
        sasl_username="dq", sasl_password=SECRET, ssl_ca_location="/ca.pem",
        ssl_endpoint_identification_algorithm="https", extra={"client.id": "dtmon", "socket.timeout.ms": "5000"},
    )
    conf = config.as_librdkafka_dict({"message.timeout.ms": 100}, group_id="g", enable_partition_eof=True, log_level=0)
    assert conf == {
        "bootstrap.servers": "b1:9093,b2:9093", "security.protocol": "SASL_SSL", "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": "dq", "sasl.password": SECRET, "ssl.ca.location": "/ca.pem",
        "ssl.endpoint.identification.algorithm": "https", "client.id": "dtmon", "socket.timeout.ms": "5000",
        "group.id": "g", "enable.partition.eof": True, "log_level": 0, "message.timeout.ms": 100,
    }
    assert "ssl.key.password" not in conf and "ssl.certificate.location" not in conf  # unset keys left out


def test_secrets_never_show_in_repr_str_or_dumps():
    config = KafkaConfig(sasl_password=SECRET, ssl_key_password=SECRET, extra={"sasl.oauthbearer.client.secret": SECRET})
    for text in (repr(config), str(config), config.model_dump_json(exclude={"extra"}), f"{config!r}"):
        assert SECRET not in text
    assert config.as_librdkafka_dict()["sasl.password"] == SECRET


def test_unknown_security_protocol_is_refused():
    with pytest.raises(ValidationError, match="security_protocol"):
        KafkaConfig(security_protocol="TLS")


def test_environment_wins_over_the_config_file_and_arguments_win_over_both(tmp_path, monkeypatch):
    toml = tmp_path / "kafka.toml"
    toml.write_text('bootstrap_servers = "file:1"\nsecurity_protocol = "SSL"\nsasl_username = "from-file"\n'
                    '[extra]\n"client.id" = "from-file"\n')
    monkeypatch.setenv("DTMON_KAFKA_SASL_USERNAME", "from-env")
    config = load_kafka_config(toml, ssl_ca_location="/arg.pem")
    assert (config.bootstrap_servers, config.security_protocol, config.sasl_username) == ("file:1", "SSL", "from-env")
    assert config.extra == {"client.id": "from-file"} and config.ssl_ca_location == "/arg.pem"

    dotenv = tmp_path / "kafka.env"
    dotenv.write_text(f"DTMON_KAFKA_SASL_PASSWORD={SECRET}\nDTMON_KAFKA_EXTRA={json.dumps({'a.b': 'c'})}\n")
    monkeypatch.setenv("DTMON_KAFKA_CONFIG_FILE", str(dotenv))
    config = load_kafka_config()
    assert config.sasl_password.get_secret_value() == SECRET and config.extra == {"a.b": "c"}

    with pytest.raises(FileNotFoundError):
        load_kafka_config(tmp_path / "missing.toml")


def test_settings_servers_win_over_the_kafka_config_and_fill_in_without_it(tmp_path, monkeypatch):
    monkeypatch.setenv("DTMON_KAFKA_BOOTSTRAP_SERVERS", "kafka-env:1")
    monkeypatch.setenv("DTMON_KAFKA_SECURITY_PROTOCOL", "SSL")
    assert load_settings().bootstrap_servers == "kafka-env:1"
    assert load_settings().kafka.security_protocol == "SSL"
    settings = load_settings(bootstrap_servers="flag:2")
    assert settings.kafka.bootstrap_servers == "flag:2" and settings.kafka.security_protocol == "SSL"
    monkeypatch.setenv("DTMON_BOOTSTRAP_SERVERS", "env:3")
    assert load_settings().kafka.bootstrap_servers == "env:3"


def test_clients_are_made_through_the_seam_with_the_role_keys():
    clients = FakeClients(config=KafkaConfig(bootstrap_servers="x:1", security_protocol="SSL"))
    consumer = clients.consumer("grp", enable_partition_eof=True)
    producer = clients.producer(acks="all")
    assert consumer.config == {"bootstrap.servers": "x:1", "security.protocol": "SSL", "group.id": "grp",
                               "enable.auto.commit": False, "enable.partition.eof": True}
    assert producer.config["acks"] == "all" and producer.config["security.protocol"] == "SSL"
    assert isinstance(KafkaClients("host:1").config, KafkaConfig)


def test_end_offsets_follow_messages_to_the_end_of_partition_event():
    events = [FakeMessage("t", 0, 41), FakeMessage("t", 0, 42), eof("t", 0, 43), eof("t", 1, 7),
              FakeMessage("t", 2, 5, err=FakeError(KafkaError.OFFSET_OUT_OF_RANGE))]
    clients = FakeClients(lambda: {"events": list(events)})
    ends, unanswered, tails = clients.end_offsets({("t", 0): 41, ("t", 1): 7, ("t", 2): 5, ("t", 3): 0}, timeout_s=1.0)
    assert ends == {("t", 0): 43, ("t", 1): 7}  # partition 2: nothing written at 5 yet; partition 3: no answer
    assert unanswered == {("t", 3)}
    assert tails == {("t", 0): (43, 42)}  # partition 1 answered without a message: no tail
    consumer = clients.consumers[0]
    assert consumer.closed and consumer.config["auto.offset.reset"] == "error" and consumer.config["enable.partition.eof"]
    assert sorted(consumer.assigned) == [("t", 0, 41), ("t", 1, 7), ("t", 2, 5), ("t", 3, 0)]


def test_read_tail_gives_the_newest_message_of_each_partition():
    events = [FakeMessage("r", 0, 9, b"a", key_bytes=b"9"), eof("r", 0, 10), FakeMessage("r", 1, 3, b"b"),
              FakeMessage("r", 1, 4, b"c"), eof("r", 1, 5)]
    clients = FakeClients(lambda: {"partitions": {"r": [0, 1, 2]}, "events": list(events),
                                   "watermarks": {("r", 0): (0, 10), ("r", 1): (0, 4), ("r", 2): (0, 0)}})
    newest = clients.read_tail("r", timeout_s=1.0)
    assert {p: m.value() for p, m in newest.items()} == {0: b"a", 1: b"c"}
    assert sorted(clients.consumers[0].assigned) == [("r", 0, 9), ("r", 1, 3), ("r", 2, 0)]
    assert clients.read_tail("missing", timeout_s=0.1) is None


def test_java_properties_carry_the_same_connection_for_spark_s_kafka_source(tmp_path):
    from processor.spark_kafka import kafka_options

    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    cert.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    key.write_text("-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n")
    config = KafkaConfig(
        bootstrap_servers="b1:9093", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
        sasl_username="dq", sasl_password='pw "quoted" \\ end', ssl_ca_location="/ca.pem",
        ssl_certificate_location=str(cert), ssl_key_location=str(key), ssl_endpoint_identification_algorithm="none",
        extra={"client.id": "librdkafka-only"}, java_extra={"client.dns.lookup": "use_all_dns_ips"},
    )  # fmt: skip
    props = config.as_java_properties()
    assert props == {
        "bootstrap.servers": "b1:9093", "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.jaas.config": 'org.apache.kafka.common.security.scram.ScramLoginModule required username="dq" '
                            'password="pw \\"quoted\\" \\\\ end";',
        "ssl.truststore.type": "PEM", "ssl.truststore.location": "/ca.pem",
        "ssl.keystore.type": "PEM", "ssl.keystore.certificate.chain": cert.read_text(), "ssl.keystore.key": key.read_text(),
        "ssl.endpoint.identification.algorithm": "", "client.dns.lookup": "use_all_dns_ips",
    }  # fmt: skip
    assert kafka_options(config)["kafka.sasl.jaas.config"] == props["sasl.jaas.config"]
    plain = KafkaConfig(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="u", sasl_password="p")
    assert plain.as_java_properties()["sasl.jaas.config"].startswith("org.apache.kafka.common.security.plain.PlainLoginModule required")
    assert KafkaConfig().as_java_properties() == {"bootstrap.servers": "127.0.0.1:9092", "security.protocol": "PLAINTEXT"}
    with pytest.raises(ValueError, match="GSSAPI"):
        KafkaConfig(security_protocol="SASL_SSL", sasl_mechanism="GSSAPI").as_java_properties()
    hidden = repr(KafkaConfig(java_extra={"sasl.jaas.config": "x password=p"}))
    assert "x password=p" not in hidden


def test_refusal_reason_prefers_the_login_or_tls_error():
    from dtmon.kafka import refusal_reason

    auth = KafkaError(KafkaError._AUTHENTICATION, "SASL authentication error: invalid credentials")
    down = KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down")
    transport = KafkaError(KafkaError._TRANSPORT, "Disconnected while requesting ApiVersion")
    assert refusal_reason(Exception("metadata"), [transport, auth, down]) == "SASL authentication error: invalid credentials"
    assert refusal_reason(Exception("metadata"), [transport, down]) == "Disconnected while requesting ApiVersion"
    assert refusal_reason(Exception("metadata"), []) == "metadata"
