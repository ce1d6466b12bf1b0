"""Processor preflight: Java version, checkpoint checks (pure and against the real console script + Tansu)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from processor.preflight import (
    PreflightError,
    check_checkpoint,
    check_java,
    check_offsets,
    java_major,
    read_checkpoint_offsets,
)


def write_checkpoint(root: Path, offsets: dict, batch: int = 3) -> Path:
    (root / "offsets").mkdir(parents=True)
    (root / "metadata").write_text(json.dumps({"id": "q-1"}) + "\n")
    path = root / "offsets" / str(batch)
    path.write_text("v1\n" + json.dumps({"batchWatermarkMs": 0}) + "\n" + json.dumps(offsets) + "\n")
    return path


def fake_java(tmp_path: Path, version: str) -> dict[str, str]:
    home = tmp_path / "jdk"
    (home / "bin").mkdir(parents=True)
    java = home / "bin" / "java"
    java.write_text(f'#!/bin/sh\necho \'openjdk version "{version}" 2024-01-16\' >&2\n')
    java.chmod(0o755)
    return {"JAVA_HOME": str(home), "PATH": os.environ["PATH"]}


def test_java_major_reads_old_and_new_version_strings():
    assert java_major('openjdk version "17.0.15" 2025-04-15') == 17
    assert java_major('java version "1.8.0_402"') == 8
    assert java_major('openjdk version "21" 2023-09-19') == 21
    assert java_major("no java here") is None


def test_java_too_old_names_the_java_found_and_the_install_command(tmp_path):
    env = fake_java(tmp_path, "11.0.2")
    with pytest.raises(PreflightError) as info:
        check_java(env)
    text = str(info.value)
    assert "\n" not in text and "11.0.2" in text and env["JAVA_HOME"] in text
    assert "apt-get install openjdk-17-jre-headless" in text
    assert "17.0.1" in check_java(fake_java(tmp_path / "new", "17.0.1"))


def test_java_missing(tmp_path):
    with pytest.raises(PreflightError, match="none was found.*apt-get install openjdk-17-jre-headless"):
        check_java({"PATH": str(tmp_path)})


def test_checkpoint_of_another_topic_or_past_the_end_is_refused_naming_the_file(tmp_path):
    path = write_checkpoint(tmp_path / "ck", {"minidt-hits": {"0": 1200}})
    found = read_checkpoint_offsets(tmp_path / "ck")
    assert found.file == path and found.offsets == {"minidt-hits": {"0": 1200}}
    assert check_offsets(found, "minidt-hits", {0: 1200}) is None
    past = check_offsets(found, "minidt-hits", {0: 300})
    assert str(path) in past and "1,200" in past and "past the topic's end 300" in past
    other = check_offsets(found, "other-hits", {0: 5000})
    assert str(path) in other and "belongs to topic minidt-hits" in other


def test_corrupt_checkpoint_names_the_file_and_reset_moves_it_aside(tmp_path):
    path = write_checkpoint(tmp_path / "ck", {})
    path.write_text("v1\n{}\n{not json\n")
    with pytest.raises(PreflightError) as info:
        check_checkpoint(tmp_path / "ck", "minidt-hits", {0: 10}, reset=False)
    assert str(path) in str(info.value) and "--reset-checkpoint" in str(info.value) and "\n" not in str(info.value)
    detail = check_checkpoint(tmp_path / "ck", "minidt-hits", {0: 10}, reset=True)
    assert "corrupt" in detail and "moved to" in detail
    assert not (tmp_path / "ck").exists() and len(list(tmp_path.glob("ck.reset-*"))) == 1


@pytest.mark.integration
def test_processor_refuses_a_checkpoint_past_the_end_of_a_recreated_topic(tmp_path, kafka_bootstrap, topic_name):
    """The real console script against Tansu: a checkpoint at offset 77 000 of an empty (recreated) topic
    is refused with one line naming the file and --reset-checkpoint, before Spark starts."""
    from dtmon.kafka import ensure_topic

    ensure_topic(kafka_bootstrap, topic_name, 1)
    path = write_checkpoint(tmp_path / "ck", {topic_name: {"0": 77000}})
    result = subprocess.run(
        ["processor", "--bootstrap-servers", kafka_bootstrap, "--raw-topic", topic_name,
         "--checkpoint-location", str(tmp_path / "ck")],
        capture_output=True, text=True, timeout=120,
    )
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert result.returncode == 1, result.stderr
    assert len(errors) == 1 and str(path) in errors[0] and "--reset-checkpoint" in errors[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.integration
def test_processor_with_broker_down_is_one_line(tmp_path):
    from dtmon.services import free_port

    result = subprocess.run(
        ["processor", "--bootstrap-servers", f"127.0.0.1:{free_port()}", "--checkpoint-location", str(tmp_path / "ck")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) <= 2 and "cannot reach Kafka" in lines[-1], result.stderr


def test_processor_without_java_is_one_line(tmp_path):
    env = {**os.environ, **fake_java(tmp_path, "1.8.0_402")}
    result = subprocess.run(["processor", "--checkpoint-location", str(tmp_path / "ck")], capture_output=True, text=True,
                            timeout=60, env=env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: Java 17+ is needed for Spark, found {env['JAVA_HOME']}/bin/java: openjdk version \"1.8.0_402\" 2024-01-16: "
        "apt-get install openjdk-17-jre-headless (or set JAVA_HOME)"
    ]
