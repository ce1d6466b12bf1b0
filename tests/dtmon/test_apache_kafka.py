"""The Apache Kafka launcher's pure parts: cache location, cluster id, server.properties.
(The launcher itself runs in every ``apache`` case of the integration suite.)"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from dtmon.apache_kafka import KAFKA_VERSION, cache_root, cluster_id, kafka_home, server_properties


def test_cache_is_outside_the_repository_and_movable(monkeypatch, tmp_path):
    repo = Path(__file__).resolve().parents[2]
    monkeypatch.delenv("DTMON_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert kafka_home("4.1.1") == tmp_path / "xdg" / "dtmon" / "apache-kafka-4.1.1"
    monkeypatch.setenv("DTMON_CACHE_DIR", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c" and kafka_home().name == f"apache-kafka-{KAFKA_VERSION}"
    monkeypatch.delenv("DTMON_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert repo not in cache_root().parents


def test_cluster_id_is_22_url_safe_characters_of_16_bytes():
    ids = {cluster_id() for _ in range(50)}
    assert len(ids) == 50
    for text in ids:
        assert len(text) == 22 and "=" not in text
        assert len(base64.urlsafe_b64decode(text + "==")) == 16


def test_server_properties_bind_loopback_one_node_kraft(tmp_path):
    props = server_properties("127.0.0.1", 19092, 19093, tmp_path / "data", {"num.partitions": "3"})
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert all("0.0.0.0" not in v for v in props.values())
    assert props["log.dirs"] == str(tmp_path / "data")
    assert props["offsets.topic.replication.factor"] == "1" and props["group.initial.rebalance.delay.ms"] == "0"
    assert props["num.partitions"] == "3"  # overrides win


def test_secured_listener_properties_sasl_ssl_scram(tmp_path):
    from dtmon.apache_kafka import BrokerSecurity

    security = BrokerSecurity("SASL_SSL", tmp_path / "ks.pem", tmp_path / "ca.pem", "SCRAM-SHA-512", {"broker": "b-pw", "alice": "a-pw"})
    props = security.server_properties("127.0.0.1", 9093, 9094)
    assert props["listeners"] == "SASL_SSL://127.0.0.1:9093,CONTROLLER://127.0.0.1:9094"
    assert props["inter.broker.listener.name"] == "SASL_SSL"
    assert props["listener.security.protocol.map"] == "CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL"  # no plaintext client port
    assert props["ssl.keystore.type"] == "PEM" and props["ssl.truststore.location"] == str(tmp_path / "ca.pem")
    assert 'username="broker" password="b-pw"' in props["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"]
    assert security.format_arguments() == ["--add-scram", "SCRAM-SHA-512=[name=broker,password=b-pw]",
                                           "--add-scram", "SCRAM-SHA-512=[name=alice,password=a-pw]"]  # fmt: skip
    assert security.client_config("alice") == {"security.protocol": "SASL_SSL", "ssl.ca.location": str(tmp_path / "ca.pem"),
                                               "sasl.mechanisms": "SCRAM-SHA-512", "sasl.username": "alice", "sasl.password": "a-pw"}  # fmt: skip
    assert "a-pw" not in repr(security)
    plain = BrokerSecurity("SASL_PLAINTEXT", users={"broker": "b-pw", "alice": "a-pw"})
    jaas = plain.server_properties("127.0.0.1", 1, 2)["listener.name.sasl_plaintext.plain.sasl.jaas.config"]
    assert 'user_alice="a-pw"' in jaas and plain.format_arguments() == []
    with pytest.raises(ValueError, match="keystore"):
        BrokerSecurity("SSL").server_properties("127.0.0.1", 1, 2)


def test_storage_format_accepts_a_cluster_id_that_starts_with_a_dash(tmp_path):
    """1 in 64 ids begins with '-'; passed as its own argument, kafka-storage took it for a flag (a CI failure)."""
    import subprocess

    from dtmon.apache_kafka import _java, fetch_jars, format_command

    libs = fetch_jars()
    config = tmp_path / "server.properties"
    props = server_properties("127.0.0.1", 19092, 19093, tmp_path / "data")
    config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    dash_id = "-" + cluster_id()[1:]
    java = [_java(), "-Xmx128m", "-cp", f"{libs}/*"]
    done = subprocess.run(format_command(java, config, dash_id), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-1500:] + done.stderr[-1500:]
    assert f"cluster.id={dash_id}" in (tmp_path / "data" / "meta.properties").read_text()
