"""Settings.raw_topic_config: the retention the raw topic is created with."""

from __future__ import annotations

import pytest


def test_raw_topic_config_bounds_the_raw_topic_by_time_and_size(monkeypatch):
    from dtmon.settings import Settings

    config = Settings().raw_topic_config()
    assert config == {"cleanup.policy": "delete", "retention.ms": "3600000", "retention.bytes": "2048000000",
                      "segment.ms": "600000", "segment.bytes": "128000000"}  # fmt: skip
    monkeypatch.setenv("DTMON_RAW_RETENTION_S", "-1")
    monkeypatch.setenv("DTMON_RAW_RETENTION_MB", "50")
    config = Settings().raw_topic_config()
    assert config["retention.ms"] == "-1" and config["retention.bytes"] == "50000000"
    assert config["segment.bytes"] == "50000000"  # a segment never larger than the size cap


def test_zero_raw_retention_is_refused():
    import pydantic

    from dtmon.settings import Settings

    with pytest.raises(pydantic.ValidationError, match="use -1 to keep every row"):
        Settings(raw_retention_s=0)
