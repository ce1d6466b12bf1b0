"""The ``dtmon`` command: schema command, compose file, settings hand-over, and the embedded
broker and S3 server started and stopped for real (subprocess + SIGINT)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from dtmon.cli import child_env, stage_commands
from dtmon.schema import RESULTS_VERSION
from dtmon.services import free_port, s3_client
from dtmon.settings import Settings, load_settings
from dtmon.supervisor import descendants
from tests.dtmon.test_services import daq_dir
from dtmon.supervisor import running as alive

REPO = Path(__file__).resolve().parents[2]
DTMON = [sys.executable, "-m", "dtmon.cli"]


# ------------------------------------------------------------------ process helpers (also used by test_stack)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Output:
    """Collects a child's stdout lines in a thread, so a test can wait for a line with a deadline."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self.thread = threading.Thread(target=lambda: self.lines.extend(proc.stdout), daemon=True)
        self.thread.start()

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, needle: str, timeout: float) -> None:
        wait_until(lambda: needle in self.text or not self.thread.is_alive(), timeout, f"{needle!r} in the output")
        assert needle in self.text, self.text


def interrupt_and_wait(proc: subprocess.Popen, output: Output, timeout: float) -> str:
    """SIGINT ``proc`` (as Ctrl-C does) and return all its output once it exits."""
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout)
    output.thread.join(timeout)
    return output.text


def kill_tree(proc: subprocess.Popen, pids: set[int]) -> None:
    """Last-resort cleanup after a failed test: SIGKILL ``proc`` and the process groups of ``pids``
    and of ``proc``'s current descendants (a test that fails early has not collected them yet)."""
    if proc.poll() is None:
        pids = set(pids) | descendants(proc.pid)
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


# ------------------------------------------------------------------ dtmon schema


def test_schema_command_prints_the_committed_schema_file(tmp_path):
    printed = subprocess.run([*DTMON, "schema"], capture_output=True, text=True, timeout=60, check=True).stdout
    committed = (REPO / "schemas" / f"results-v{RESULTS_VERSION}.schema.json").read_text()
    assert printed == committed, "the committed JSON Schema is stale: run `dtmon schema --write`"

    out = tmp_path / "schema.json"
    subprocess.run([*DTMON, "schema", "--write", "--out", str(out)], capture_output=True, timeout=60, check=True)
    assert out.read_text() == printed


# ------------------------------------------------------------------ docker-compose.yml


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def test_compose_file_validates_and_wires_the_stack():
    exe = shutil.which("docker-compose")
    if exe is None:
        if _in_ci():
            pytest.fail("docker-compose is missing under CI (.ci/run installs Debian's docker-compose)")
        pytest.skip("docker-compose is not installed")
    compose = ["docker-compose", "-f", str(REPO / "docker-compose.yml")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DTMON_")}
    check = subprocess.run([*compose, "config", "-q"], capture_output=True, text=True, timeout=60, env=env)
    assert check.returncode == 0, check.stderr

    import yaml

    resolved = subprocess.run([*compose, "config"], capture_output=True, text=True, timeout=60, env=env, check=True)
    services = yaml.safe_load(resolved.stdout)["services"]
    assert {"kafka", "s3", "producer", "processor", "dashboard"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "broker,controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    for name in ("s3", "producer", "processor", "dashboard"):
        assert services[name]["build"]["context"] == str(REPO), name
    s3_cmd = services["s3"]["command"]
    assert s3_cmd[:2] == ["dtmon", "s3"] and s3_cmd[s3_cmd.index("--seed") + 1] == "/data"
    (volume,) = services["s3"]["volumes"]
    genuine = REPO / "../shared/data/minidt/merged__data_000000__rows0000-0998.csv"
    assert volume == f"{os.path.normpath(genuine)}:/data/data_000000.txt:ro"
    assert services["dashboard"]["ports"] == ["127.0.0.1:5006:5006/tcp"]
    assert services["producer"]["depends_on"]["s3"]["condition"] == "service_healthy"
    for name in ("producer", "processor", "dashboard"):
        assert services[name]["environment"]["DTMON_BOOTSTRAP_SERVERS"] == "kafka:9092", name


# ------------------------------------------------------------------ settings hand-over to children


def test_child_env_reproduces_the_settings_in_a_child(monkeypatch):
    settings = load_settings(rate=12.5, trigger_interval_s=1.5, bootstrap_servers="127.0.0.1:1", raw_partitions=3)
    env = child_env(settings, {"DTMON_S3_ENDPOINT_URL": "http://stale:1", "DTMON_EXTRA": "kept", "HOME": "/h"})

    assert "DTMON_S3_ENDPOINT_URL" not in env  # None in the settings: unset, not the stale value
    assert env["DTMON_EXTRA"] == "kept" and env["HOME"] == "/h"
    assert env["DTMON_RATE"] == "12.5" and env["DTMON_RAW_PARTITIONS"] == "3"
    for key in [k for k in os.environ if k.startswith("DTMON_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("DTMON_"):
            monkeypatch.setenv(key, value)
    assert Settings() == settings


def test_flags_override_environment_which_overrides_defaults(monkeypatch):
    monkeypatch.setenv("DTMON_RATE", "250")
    monkeypatch.setenv("DTMON_TRIGGER_INTERVAL_S", "3")
    settings = load_settings(rate=None, trigger_interval_s=1.0)  # what `dtmon up --trigger-interval-s 1` passes
    assert (settings.rate, settings.trigger_interval_s) == (250.0, 1.0)
    monkeypatch.delenv("DTMON_RATE")
    assert load_settings(rate=None).rate == Settings.model_fields["rate"].default


def test_stage_commands_follow_the_stage_contracts(tmp_path):
    settings = load_settings(source="s3://minidt-stream/", s3_endpoint_url="http://127.0.0.1:5999", rate=0,
                             trigger_interval_s=1.5)  # fmt: skip
    commands = stage_commands(settings, tmp_path / "checkpoint", 5123)
    assert list(commands) == ["producer", "processor", "dashboard"]
    producer, processor, dashboard = commands.values()
    assert Path(producer[0]).name == "producer"
    assert producer[1:] == ["--source", "s3://minidt-stream/", "--s3-endpoint-url", "http://127.0.0.1:5999",
                            "--loop", "--rate", "0"]  # fmt: skip
    assert Path(processor[0]).name == "processor"
    assert processor[1:] == ["--trigger-interval-s", "1.5", "--checkpoint-location", str(tmp_path / "checkpoint"),
                             "--starting-offsets", "earliest"]  # fmt: skip
    assert dashboard[1:4] == ["-m", "bokeh", "serve"] and (Path(dashboard[4]) / "main.py").is_file()
    assert dashboard[5:] == ["--port", "5123", "--address", "127.0.0.1", "--allow-websocket-origin",
                             "127.0.0.1:5123", "--allow-websocket-origin", "localhost:5123"]  # fmt: skip


def test_dashboard_command_takes_address_origins_and_login_from_the_settings(tmp_path):
    from dtmon.cli import dashboard_command

    settings = load_settings(dashboard_address="0.0.0.0", dashboard_allow_origins="mon.example:5123, localhost:5123",
                             dashboard_users_file=str(tmp_path / "users"))  # fmt: skip
    cmd = dashboard_command(settings, 5123)
    assert cmd[5:-2] == ["--port", "5123", "--address", "0.0.0.0",
                         "--allow-websocket-origin", "127.0.0.1:5123", "--allow-websocket-origin", "localhost:5123",
                         "--allow-websocket-origin", "mon.example:5123"]  # fmt: skip
    assert cmd[-2] == "--auth-module" and Path(cmd[-1]).name == "auth.py" and Path(cmd[-1]).is_file()
    assert "--auth-module" not in dashboard_command(load_settings(), 5123)


# ------------------------------------------------------------------ seeding plan and upload


# ------------------------------------------------------------------ dtmon broker / dtmon s3 / dtmon up (subprocess)


def _start(cmd: list[str]) -> tuple[subprocess.Popen, Output]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, Output(proc)


def test_broker_serves_kafka_until_interrupted(tmp_path):
    from dtmon.kafka import KafkaClients

    port = free_port()
    proc, output = _start([*DTMON, "broker", "--port", str(port), "--log", str(tmp_path / "broker.log")])
    children: set[int] = set()
    try:
        output.wait_for(f"Tansu broker on 127.0.0.1:{port}", 60)
        children = descendants(proc.pid)
        assert children, "dtmon broker should run the broker as a child process"
        clients = KafkaClients(f"127.0.0.1:{port}")
        topic = f"t-{uuid.uuid4().hex[:8]}"
        assert clients.ensure_topic(topic, 2, timeout=20) == 2
        assert len(clients.admin().list_topics(timeout=10).topics[topic].partitions) == 2
        out = interrupt_and_wait(proc, output, 30)
    finally:
        kill_tree(proc, children)
    assert proc.returncode == 0, out
    assert "stopping broker" in out
    assert not port_open(port)
    assert not [pid for pid in children if alive(pid)]


def test_interrupt_while_a_service_starts_leaves_nothing_running():
    port = free_port()
    proc, output = _start([*DTMON, "s3", "--port", str(port)])  # moto needs ~1 s to open its port
    children: set[int] = set()
    try:
        # interrupt as soon as the server process exists, while dtmon still waits for its port
        wait_until(lambda: descendants(proc.pid) or proc.poll() is not None, 60, "the S3 server process")
        children = descendants(proc.pid)
        out = interrupt_and_wait(proc, output, 30)
    finally:
        kill_tree(proc, children)
    assert proc.returncode == 0, out
    assert "interrupted" in out
    assert children and not [pid for pid in children if alive(pid)], out
    assert not port_open(port)


def test_s3_serves_the_seeded_daq_files_until_interrupted(tmp_path, genuine_csv):
    daq = daq_dir(tmp_path, genuine_csv)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    ready = tmp_path / "seeded"
    cmd = [*DTMON, "s3", "--port", str(port), "--seed", str(daq), "--seed", str(genuine_csv),
           "--bucket", "minidt-stream", "--ready-file", str(ready)]  # fmt: skip
    proc, output = _start(cmd)
    children: set[int] = set()
    try:
        wait_until(lambda: ready.exists() or proc.poll() is not None, 60, "the bucket to be seeded")
        assert proc.poll() is None, output.text
        children = descendants(proc.pid)
        client = s3_client(endpoint)
        listing = client.list_objects_v2(Bucket="minidt-stream")["Contents"]
        expected = {"data_000009.txt": daq / "data_000009.txt", "data_000010.txt": daq / "data_000010.txt",
                    genuine_csv.name: genuine_csv}  # fmt: skip
        assert sorted(o["Key"] for o in listing) == sorted(expected)
        for key, path in expected.items():
            obj = client.get_object(Bucket="minidt-stream", Key=key)
            assert obj["Body"].read() == path.read_bytes()
            assert obj["Metadata"] == {}  # genuine rows are not labelled synthetic
        out = interrupt_and_wait(proc, output, 30)
    finally:
        kill_tree(proc, children)
    assert proc.returncode == 0, out
    assert f"moto S3 server at {endpoint}" in out and "stopping s3" in out
    assert not port_open(port)
    assert not [pid for pid in children if alive(pid)]


def test_up_rejects_a_missing_source_before_starting_anything(tmp_path):
    ports = [str(free_port()) for _ in range(3)]
    cmd = [*DTMON, "up", "--source", str(tmp_path / "nope"), "--workdir", str(tmp_path / "up"),
           "--broker-port", ports[0], "--s3-port", ports[1], "--dashboard-port", ports[2]]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"no such file or directory: {tmp_path / 'nope'}" in result.stdout
    assert not any(port_open(int(p)) for p in ports)


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--broker", "kafka"], "--broker is tansu or apache, not 'kafka'"),
        (["--broker", "apache", "--persist"], "goes with neither --persist nor an external Kafka"),
        (["--broker", "apache", "--bootstrap-servers", "127.0.0.1:1"], "goes with neither --persist nor an external Kafka"),
    ],
)
def test_up_refuses_a_broker_choice_that_does_not_fit_before_starting_anything(tmp_path, flags, said):
    ports = [str(free_port()) for _ in range(3)]
    cmd = [*DTMON, "up", "--workdir", str(tmp_path / "up"), "--broker-port", ports[0], "--s3-port", ports[1],
           "--dashboard-port", ports[2], *flags]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert said in " ".join(result.stdout.split())
    assert not any(port_open(int(p)) for p in ports)
