"""The Apache Kafka launcher's pure parts: cache location, cluster id, server.properties.
(The launcher itself runs in every ``apache`` case of the integration suite.)"""

from __future__ import annotations

import base64
from pathlib import Path

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
