"""Shared fixtures: the genuine rows, and real services (Tansu broker, moto S3 server).

Services are started for real, once per test session, on free loopback ports.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from dtmon.services import free_port, start_broker, start_s3
from dtmon.settings import default_genuine_source


@pytest.fixture(autouse=True)
def _no_reference_file(monkeypatch):
    """No reference run unless a test names one: the default var/reference.json of a working copy
    (written by the dashboard's "Use as reference") must not change what unit tests judge.
    Stack tests start their children without DTMON_* variables, so they keep the default."""
    monkeypatch.setenv("DTMON_REFERENCE_FILE", "")


@pytest.fixture(scope="session")
def genuine_csv() -> Path:
    """The 999 genuine rows of data_000000.txt in ../shared (never copied into the repo)."""
    source = default_genuine_source()
    assert source, "../shared/data/minidt is missing: the genuine rows are read from there"
    return Path(source)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory) -> str:
    """bootstrap.servers of a real Tansu broker (in-memory storage) on a free loopback port."""
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    service = start_broker(port=free_port(), log=log)
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
