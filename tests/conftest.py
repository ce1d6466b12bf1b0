"""Shared fixtures: the genuine rows, and real services (Kafka brokers, moto S3 server).

Services are started for real, once per test session, on free loopback ports. The Kafka
broker fixture is parametrized over two brokers, so every Kafka-facing test runs on both:
``tansu`` (the embedded default) and ``apache`` (Apache Kafka in KRaft mode, jars fetched
by Maven into ``~/.cache/dtmon``, see ``dtmon.apache_kafka``). ``DTMON_TEST_BROKERS``
(comma-separated) narrows the list, e.g. ``DTMON_TEST_BROKERS=tansu``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

from dtmon.apache_kafka import kafka_home, start_apache_kafka
from dtmon.services import Service, free_port, start_broker, start_s3
from dtmon.settings import default_genuine_source


@pytest.fixture(scope="session")
def genuine_csv() -> Path:
    """The 999 genuine rows of data_000000.txt in ../shared (never copied into the repo)."""
    source = default_genuine_source()
    assert source, "../shared/data/minidt is missing: the genuine rows are read from there"
    return Path(source)


BROKERS = [b.strip() for b in os.environ.get("DTMON_TEST_BROKERS", "tansu,apache").split(",") if b.strip()]


def start_test_broker(kind: str, port: int, log: Path) -> Service:
    """Start a broker of ``kind`` (``tansu``: in-memory Tansu; ``apache``: one-node KRaft Apache Kafka) on ``port``."""
    if kind == "apache":
        return start_apache_kafka(port=port, log=log)
    if kind == "tansu":
        return start_broker(port=port, log=log)
    raise ValueError(f"unknown broker kind {kind!r}: tansu or apache")


@pytest.fixture(scope="session", params=BROKERS)
def broker_kind(request) -> str:
    """Kind of Kafka broker the test runs against: ``tansu`` or ``apache``.

    Apache Kafka needs Maven (or jars cached by an earlier fetch); without them the
    ``apache`` cases are skipped locally and fail in CI.
    """
    kind = request.param
    if kind == "apache" and not shutil.which("mvn") and not (kafka_home() / "libs" / ".complete").is_file():
        if os.environ.get("CI"):
            pytest.fail("Apache Kafka tests need Maven (apt-get install maven)")
        pytest.skip("Apache Kafka: no mvn and no cached jars")
    return kind


@pytest.fixture(scope="session")
def kafka_bootstrap(broker_kind, tmp_path_factory) -> str:
    """bootstrap.servers of a real broker of ``broker_kind`` on a free loopback port (one per kind per session)."""
    log = tmp_path_factory.mktemp(f"broker-{broker_kind}") / f"{broker_kind}.log"
    service = start_test_broker(broker_kind, free_port(), log)
    yield service.address
    service.stop()


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory) -> str:
    """Endpoint URL of a real moto S3 server on a free loopback port."""
    log = tmp_path_factory.mktemp("s3") / "moto.log"
    service = start_s3(port=free_port(), log=log)
    yield service.address
    service.stop()


@pytest.fixture
def topic_name() -> str:
    """A topic name no other test uses."""
    return f"test-{uuid.uuid4().hex[:10]}"
