"""The driver JVM's class-data archive (processor.cds): the pure helpers, and a real processor
that writes the archive as its JVM exits and maps it on its next start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from dtmon.services import free_port, start_broker
from dtmon.supervisor import descendants
from processor import cds


def _fake_spark(tmp_path: Path) -> tuple[Path, Path]:
    java = tmp_path / "jdk" / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_bytes(b"java 17")
    jars = tmp_path / "jars"
    jars.mkdir()
    (jars / "spark-core.jar").write_bytes(b"core")
    return java, jars


def test_the_archive_is_named_for_this_jdk_and_these_jars(tmp_path):
    java, jars = _fake_spark(tmp_path)
    first = cds.archive_file(tmp_path / "cache", str(java), jars, "4.2.0")
    assert first.parent == tmp_path / "cache" / "cds" and first.name.startswith("spark-4.2.0-") and first.suffix == ".jsa"
    assert cds.archive_file(tmp_path / "cache", str(java), jars, "4.2.0") == first
    (jars / "spark-sql.jar").write_bytes(b"sql")
    with_more_jars = cds.archive_file(tmp_path / "cache", str(java), jars, "4.2.0")
    java.write_bytes(b"java 21, another build")
    other_jdk = cds.archive_file(tmp_path / "cache", str(java), jars, "4.2.0")
    assert len({first, with_more_jars, other_jdk}) == 3


def test_options_write_the_archive_when_it_is_missing_and_map_it_when_it_is_there(tmp_path):
    archive = tmp_path / "cds" / "spark-4.2.0-abc.jsa"
    options, written = cds.java_options(archive, pid=4242)
    assert written == tmp_path / "cds" / "spark-4.2.0-abc.jsa.4242.tmp"
    assert f"-XX:ArchiveClassesAtExit={written}" in options.split() and "-Xlog:cds=off" in options.split()
    archive.write_bytes(b"archive")
    options, written = cds.java_options(archive, pid=4242)
    assert written is None
    assert f"-XX:SharedArchiveFile={archive}" in options.split() and "-Xshare:auto" in options.split()


def test_files_left_by_processes_that_are_gone_are_removed(tmp_path):
    archive = tmp_path / "cds" / "spark-4.2.0-abc.jsa"
    archive.parent.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    left = archive.with_name(f"{archive.name}.{gone.pid}.tmp")
    left.write_bytes(b"half")
    running = archive.with_name(f"{archive.name}.{os.getpid()}.tmp")
    running.write_bytes(b"being written")
    cds.java_options(archive, pid=1)
    assert not left.exists() and running.exists()


def test_only_an_archive_of_a_jvm_that_exited_by_itself_is_adopted(tmp_path):
    archive = tmp_path / "a.jsa"
    for code in (None, 1, -9, 143):
        written = tmp_path / f"a.jsa.{code}.tmp"
        written.write_bytes(b"x" * 10)
        assert not cds.adopt(written, archive, code)
        assert not written.exists() and not archive.exists()
    written = tmp_path / "a.jsa.7.tmp"
    written.write_bytes(b"")
    assert not cds.adopt(written, archive, 0) and not archive.exists()
    written.write_bytes(b"x" * 10)
    assert cds.adopt(written, archive, 0)
    assert archive.read_bytes() == b"x" * 10 and not written.exists()


def _run_processor_until_running(tmp_path: Path, env: dict[str, str], name: str) -> tuple[str, list[str], list[str]]:
    """Start the processor, wait for its query; return its log, the memory maps and the command line of its JVM,
    after a SIGTERM stop."""
    err = tmp_path / f"{name}.err"
    with open(err, "w") as out:
        processor = subprocess.Popen(["processor", "--checkpoint-location", str(tmp_path / f"ck-{name}")], stdout=subprocess.DEVNULL,
                                     stderr=out, env=env)
    maps: list[str] = []
    cmdline: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "start-up:" not in err.read_text() and processor.poll() is None:
            time.sleep(0.5)
        assert "start-up:" in err.read_text(), err.read_text()[-3000:]
        for pid in descendants(processor.pid):
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "java":
                    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
                    cmdline = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
            except OSError:
                pass
    finally:
        processor.send_signal(signal.SIGTERM)
        processor.wait(120)
    return err.read_text(), maps, cmdline


def test_a_processor_writes_the_archive_as_it_stops_and_the_next_one_maps_it(tmp_path):
    """Also: ``DTMON_SPARK_DRIVER_JAVA_OPTIONS`` reaches the driver JVM next to the archive's options."""
    port = free_port()
    broker = start_broker(port=port, log=tmp_path / "broker.log")
    env = {**os.environ, "DTMON_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}", "DTMON_CACHE_DIR": str(tmp_path / "cache"),
           "DTMON_SPARK_CDS": "true", "DTMON_RAW_TOPIC": "cds-hits", "DTMON_RESULTS_TOPIC": "cds-results"}
    try:
        first, first_maps, _ = _run_processor_until_running(tmp_path, env, "first")
        archives = list((tmp_path / "cache" / "cds").glob("*.jsa"))
        assert len(archives) == 1, (list((tmp_path / "cache" / "cds").iterdir()), first[-3000:])
        assert "class-data archive of the driver JVM written" in first
        assert not list((tmp_path / "cache" / "cds").glob("*.tmp"))
        assert first_maps and not any(str(archives[0]) in line for line in first_maps)
        # the operator's own driver options go with the archive's
        env["DTMON_SPARK_DRIVER_JAVA_OPTIONS"] = "-XX:TieredStopAtLevel=1"
        second, second_maps, second_cmdline = _run_processor_until_running(tmp_path, env, "second")
    finally:
        broker.stop()
    assert "spark session (class-data archive mapped)" in second
    assert f"-XX:SharedArchiveFile={archives[0]}" in second_cmdline and "-XX:TieredStopAtLevel=1" in second_cmdline
    # the JVM mapped the archive's regions: the file is in its memory maps
    assert any(line.endswith(str(archives[0])) for line in second_maps), [m for m in second_maps if ".jsa" in m]
    print(f"archive {archives[0].stat().st_size / 1e6:.0f} MB; start-up first run: "
          f"{[ln for ln in first.splitlines() if 'start-up:' in ln][0].split('start-up: ')[1]}; second run: "
          f"{[ln for ln in second.splitlines() if 'start-up:' in ln][0].split('start-up: ')[1]}")
