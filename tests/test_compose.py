"""docker-compose.yml runs the processor on a Spark standalone cluster of official apache/spark images.

Static checks of docker-compose.yml and the Dockerfile (no Docker engine, no network):
spark-master runs the official ``apache/spark`` image the project image is built FROM, the
worker (project image) registers with that master, the processor's command -- parsed by the
real ``processor`` CLI -- submits to it, and the pip pyspark pin equals the image's Spark.
When a docker-compose binary is installed, ``docker-compose config`` must accept the file.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import typer
import yaml
from packaging.requirements import Requirement

from dtmon.settings import load_settings

REPO = Path(__file__).resolve().parents[1]
COMPOSE_TEXT = (REPO / "docker-compose.yml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES = COMPOSE["services"]
DOCKERFILE = (REPO / "Dockerfile").read_text()

OFFICIAL_SPARK = re.compile(r"^apache/spark:(?P<version>\d+\.\d+\.\d+)(?P<variant>-[\w.-]+)?$")


def _substitute(text: str, args: dict[str, str]) -> str:
    """Replace ``${NAME}`` / ``$NAME`` with Dockerfile ARG defaults; unknown names raise KeyError."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], text)


def dockerfile_base_and_pyspark_pin(text: str) -> tuple[str, str | None]:
    """The resolved image of the (single) FROM line and the resolved ``pyspark==`` pin of a Dockerfile."""
    args: dict[str, str] = {}
    base = None
    pin = None
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip()
        if line.startswith("#"):
            continue
        if m := re.match(r"ARG\s+(\w+)=(\S+)$", line):
            args[m.group(1)] = m.group(2).strip("\"'")
        elif m := re.match(r"FROM\s+(\S+)", line, re.I):
            assert base is None, "the project image has a single stage"
            base = _substitute(m.group(1), args)
        elif base is not None and (m := re.search(r"""["']?pyspark==([^\s"']+)""", line)):
            pin = _substitute(m.group(1), args)
    assert base is not None, "no FROM line"
    return base, pin


def command_args(service: dict) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def option(args: list[str], name: str) -> str:
    assert name in args, f"{name} missing from {args}"
    return args[args.index(name) + 1]


def built_from_dockerfile(service: dict) -> bool:
    build = service.get("build")
    context = build.get("context") if isinstance(build, dict) else build
    dockerfile = build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile"
    return context in (".", "./") and dockerfile == "Dockerfile"


def master_url() -> str:
    """spark://<master service>:<--port of its command> (7077 when not given: Spark's default)."""
    args = command_args(SERVICES["spark-master"])
    port = option(args, "--port") if "--port" in args else "7077"
    return f"spark://spark-master:{port}"


# ------------------------------------------------------------------ the images


def test_project_image_is_built_from_an_official_spark_python_image_with_the_same_pyspark():
    base, pin = dockerfile_base_and_pyspark_pin(DOCKERFILE)
    m = OFFICIAL_SPARK.match(base)
    assert m, f"Dockerfile FROM {base!r} is not an official apache/spark image"
    assert "python3" in (m.group("variant") or ""), "needs a python3 variant (the executors run Python)"
    assert pin == m.group("version"), f"pip pyspark=={pin} differs from the image's Spark {m.group('version')}"
    pyproject = (REPO / "pyproject.toml").read_text()
    (dep,) = [Requirement(d) for d in re.findall(r'"(pyspark[^"]*)"', pyproject)]
    assert dep.specifier.contains(pin), f"pyproject's {dep} excludes the image's Spark {pin}"


def test_parser_of_the_dockerfile_resolves_args_and_finds_the_pin():
    text = 'ARG V=9.8.7\nFROM apache/spark:${V}-python3\n# pyspark==0.0.1 in a comment\nARG V\nRUN pip install \\\n    "pyspark==${V}" .\n'
    assert dockerfile_base_and_pyspark_pin(text) == ("apache/spark:9.8.7-python3", "9.8.7")
    assert dockerfile_base_and_pyspark_pin("FROM python:3.11-slim\nRUN pip install .\n") == ("python:3.11-slim", None)


def test_spark_master_runs_the_official_image_the_project_image_is_built_from():
    master = SERVICES["spark-master"]
    base, _ = dockerfile_base_and_pyspark_pin(DOCKERFILE)
    assert "build" not in master, "the master runs the official image unchanged"
    assert master["image"] == base, "master and workers must run the same Spark"
    args = command_args(master)
    assert args[:2] == ["/opt/spark/bin/spark-class", "org.apache.spark.deploy.master.Master"]
    assert option(args, "--host") == "spark-master", "the master must answer to the name the others use"
    for port in master.get("ports", []):
        assert str(port).startswith("127.0.0.1:"), f"{port}: loopback only"


def test_spark_worker_runs_the_project_image_and_registers_with_the_master():
    worker = SERVICES["spark-worker"]
    processor = SERVICES["processor"]
    assert built_from_dockerfile(worker), "executors import dtmon: the worker needs the project image"
    assert worker.get("image") == processor.get("image"), "worker and driver must share one image"
    args = command_args(worker)
    assert args[:2] == ["/opt/spark/bin/spark-class", "org.apache.spark.deploy.worker.Worker"]
    assert args[-1] == master_url()
    cores, memory = int(option(args, "--cores")), option(args, "--memory")
    assert 1 <= cores <= 2 and re.fullmatch(r"[12]g", memory), "keep the worker small (2 cores, 2g)"
    assert "spark-master" in worker["depends_on"]


def test_processor_submits_to_the_master_and_is_reachable_by_executors():
    processor = SERVICES["processor"]
    args = command_args(processor)
    assert args[0] == "processor"
    from processor.cli import app

    # The real CLI parses the compose command (unknown or misspelt options would raise here).
    ctx = typer.main.get_command(app).make_context("processor", args[1:])
    assert ctx.params["spark_master"] == master_url()
    settings = load_settings(spark_master=ctx.params["spark_master"], checkpoint_location=ctx.params["checkpoint_location"])
    assert settings.spark_master == master_url()
    assert {"spark-master", "spark-worker"} <= set(processor["depends_on"])

    submit = shlex.split(processor["environment"]["PYSPARK_SUBMIT_ARGS"])
    assert submit[-1] == "pyspark-shell", "pyspark's gateway expects the primary resource last"
    confs = dict(c.split("=", 1) for c in submit[1:-1:2])
    assert submit[0:-1:2] == ["--conf"] * len(confs)
    assert confs["spark.driver.host"] in ("processor", processor.get("hostname")), "executors resolve it"
    assert confs["spark.driver.bindAddress"] == "0.0.0.0"
    checkpoint = ctx.params["checkpoint_location"]
    assert any(checkpoint.startswith(v.split(":")[1]) for v in processor["volumes"]), "checkpoint on a volume"


def test_healthchecks_of_project_image_services_use_python3():
    # The Ubuntu python3 variant of apache/spark has no `python` command.
    for name, service in SERVICES.items():
        test = service.get("healthcheck", {}).get("test", [])
        if built_from_dockerfile(service) and len(test) > 1:
            assert test[1] != "python", f"{name}: the image has python3 only"


def test_every_service_is_described_in_the_header():
    header = COMPOSE_TEXT.split("\nx-", 1)[0]
    missing = [name for name in SERVICES if not re.search(rf"^#\s+{re.escape(name)}\s", header, re.M)]
    assert not missing, f"services missing from the header comment: {missing}"


# ------------------------------------------------------------------ docker-compose itself


def compose_binary() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


def test_docker_compose_accepts_the_file_with_the_spark_services():
    binary = compose_binary()
    if binary is None:
        pytest.skip("neither docker-compose nor the docker compose plugin is installed")
    compose = [*binary, "-f", str(REPO / "docker-compose.yml")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DTMON_")}
    check = subprocess.run([*compose, "config", "-q"], capture_output=True, text=True, timeout=60, env=env)
    assert check.returncode == 0, check.stderr
    resolved = subprocess.run([*compose, "config"], capture_output=True, text=True, timeout=60, env=env, check=True)
    services = yaml.safe_load(resolved.stdout)["services"]
    assert services["spark-master"]["image"] == SERVICES["spark-master"]["image"]
    assert services["spark-worker"]["build"]["context"] == str(REPO)
    assert services["processor"]["command"][1:3] == ["--spark-master", master_url()]
    assert services["processor"]["environment"]["DTMON_BOOTSTRAP_SERVERS"] == "kafka:9092"
