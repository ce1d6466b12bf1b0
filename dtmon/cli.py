"""The ``dtmon`` command: the whole stack in one command, or each embedded service on its own.

``dtmon up`` starts, as child processes in their own process groups, the Tansu broker,
a moto S3 server seeded with the DAQ files, the producer, the processor and the
dashboard; Ctrl-C (or SIGTERM) stops them all in reverse order. ``dtmon broker`` and
``dtmon s3`` run one embedded service in the foreground, so the embedded parts can be
mixed with real ones. ``dtmon schema`` prints the results-message JSON Schema.

Settings precedence everywhere: command-line flag > ``DTMON_*`` environment variable >
default (``dtmon.settings``). Children get their settings as ``DTMON_*`` variables.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Annotated, Callable

import typer
from rich.panel import Panel
from rich.table import Table

from dtmon.cliopts import alias_option, setting_option, settings_from, version_option
from dtmon.daqfiles import SYNTHETIC_MANIFEST, SourceError
from dtmon.kafka import KafkaClients
from dtmon.schema import RESULTS_VERSION
from dtmon.services import Service, Upload, plan_uploads, seed, start_broker, start_s3
from dtmon.settings import Settings
from dtmon.supervisor import (
    ChildDied,
    Stack,
    console,
    console_script,
    interruptible,
    report_death,
    run_until_interrupted,
    signals_ignored,
)

app = typer.Typer(
    help="dtmon: live data-quality monitor for the MiniDT drift-tube telescope.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



@app.callback()
def _main(version: Annotated[bool | None, version_option()] = None) -> None:
    """dtmon: live data-quality monitor for the MiniDT drift-tube telescope."""


DEFAULT_BUCKET = "minidt-stream"
SCHEMA_FILE = Path(f"schemas/results-v{RESULTS_VERSION}.schema.json")
SYNTHETIC_ROWS = 200_000
"""Rows ``dtmon up`` generates when no genuine rows are at hand (~3 s; 200 s of replay at 1000 rows/s)."""


class UsageError(Exception):
    """Bad input from the operator: printed as a one-line error, exit code 2."""


def report_stop(error: BaseException) -> int:
    """Print why a command stops early and return its exit code: 0 for Ctrl-C/SIGTERM, 2 for
    bad input (``UsageError``, ``SourceError``), 1 for a dead child or any other error."""
    if isinstance(error, KeyboardInterrupt):
        console.print("interrupted: stopping")
        return 0
    if isinstance(error, ChildDied):
        report_death(error)
        return 1
    if isinstance(error, (UsageError, SourceError)):
        console.print(f"[bold red]error:[/] {error}")
        return 2
    console.print(f"[bold red]error:[/] {type(error).__name__}: {error}")
    return 1


def _connect_host(host: str) -> str:
    """Where to reach a server bound to ``host`` from this machine."""
    return "127.0.0.1" if host in ("", "0.0.0.0") else host


def ensure_port_free(host: str, port: int, what: str, hint: str) -> None:
    """Raises UsageError when something already listens on ``host:port``."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        busy = sock.connect_ex((_connect_host(host), port)) == 0
    if busy:
        raise UsageError(f"port {port} for the {what} is already in use (choose another with {hint})")


def serve(start: Callable[[], Service], ready: Callable[[], None]) -> None:
    """Run one embedded service in the foreground: start it, make it ready, wait for Ctrl-C, stop it."""
    stack = Stack()
    code = 0
    with interruptible():
        try:
            stack.start_service(start)
            ready()
            code = run_until_interrupted(stack)
        except (KeyboardInterrupt, Exception) as error:  # report, then stop what was started
            code = report_stop(error)
        finally:
            with signals_ignored():
                stack.stop()
    raise typer.Exit(code)


# ---------------------------------------------------------------- dtmon broker / s3 / schema / synth


@app.command()
def broker(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Kafka port")] = 9092,
    log: Annotated[Path | None, typer.Option(help="file for the broker's output (default: discarded)")] = None,
) -> None:
    """Run the embedded Tansu Kafka broker (in-memory storage) until Ctrl-C."""
    def start() -> Service:
        ensure_port_free(host, port, "broker", "--port")
        return start_broker(host, port, log)

    serve(
        start,
        lambda: console.print(f"Tansu broker on [bold]{host}:{port}[/] (in memory; Ctrl-C stops it)"),
    )


@app.command("s3")
def s3_server(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port")] = 5000,
    seed_paths: Annotated[
        list[Path] | None,
        typer.Option("--seed", help="DAQ file or directory to upload to the bucket (repeatable)"),
    ] = None,
    bucket: Annotated[str, typer.Option(help="bucket to create and seed")] = DEFAULT_BUCKET,
    prefix: Annotated[str, typer.Option(help="key prefix for the seeded files")] = "",
    log: Annotated[Path | None, typer.Option(help="file for the server's output (default: discarded)")] = None,
    ready_file: Annotated[
        Path | None, typer.Option(help="file created once the bucket is seeded (for container healthchecks)")
    ] = None,
) -> None:
    """Run a moto S3 server until Ctrl-C, optionally seeded with DAQ files."""
    try:
        uploads = plan_uploads(list(seed_paths or []), prefix)
    except (UsageError, SourceError) as error:
        console.print(f"[bold red]error:[/] {error}")
        raise typer.Exit(2) from None
    endpoint = f"http://{_connect_host(host)}:{port}"

    def start() -> Service:
        ensure_port_free(host, port, "S3 server", "--port")
        if ready_file is not None:
            ready_file.unlink(missing_ok=True)
        return start_s3(host, port, log)

    def ready() -> None:
        seed(endpoint, bucket, uploads)
        for upload in uploads:
            label = " (synthetic)" if upload.synthetic else ""
            console.print(f"  s3://{bucket}/{upload.key}  <- {upload.path}{label}")
        console.print(f"moto S3 server at [bold]{endpoint}[/], bucket [bold]{bucket}[/] (Ctrl-C stops it)")
        if ready_file is not None:
            ready_file.touch()

    serve(start, ready)


@app.command()
def schema(
    write: Annotated[bool, typer.Option("--write", help=f"write {SCHEMA_FILE} instead of printing")] = False,
    out: Annotated[Path, typer.Option(help="file written by --write")] = SCHEMA_FILE,
) -> None:
    """Print the JSON Schema of the results message (one per micro-batch on the results topic)."""
    from dtmon.schema import json_schema

    text = json_schema()
    if write:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        console.print(f"wrote {out}")
    else:
        sys.stdout.write(text)


def _register_synth() -> None:
    """Add ``dtmon synth`` from dtmon.synth; if that module cannot be imported, a stub that says why."""
    try:
        from dtmon.synth import cli_synth
    except Exception as error:  # noqa: BLE001 - the rest of the CLI must keep working
        reason = f"{type(error).__name__}: {error}"

        @app.command("synth", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
        def synth_unavailable() -> None:
            """Generate synthetic DAQ files (unavailable: dtmon.synth could not be imported)."""
            console.print(f"[bold red]error:[/] the synthetic generator is not available ({reason})")
            raise typer.Exit(1)

        return
    app.command("synth")(cli_synth)


_register_synth()
from dtmon.reference import app as reference_app  # noqa: E402
app.add_typer(reference_app, name="reference")


# ---------------------------------------------------------------- dtmon up


def settings_env(settings: Settings) -> dict[str, str | None]:
    """``DTMON_*`` variables that reproduce ``settings`` in a child (None = unset the variable).

    Strings are passed as-is, everything else as JSON (how pydantic-settings reads it).
    """
    env: dict[str, str | None] = {}
    for name, value in settings.model_dump().items():
        key = f"DTMON_{name.upper()}"
        env[key] = None if value is None else value if isinstance(value, str) else json.dumps(value)
    return env


def child_env(settings: Settings, base: dict[str, str]) -> dict[str, str]:
    """``base`` (the parent's environment) with the ``DTMON_*`` variables of ``settings`` applied."""
    env = dict(base)
    for key, value in settings_env(settings).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    return env


def dashboard_dir() -> Path:
    """Directory of the installed ``dashboard`` package (a Bokeh directory app).

    Raises:
        UsageError: the package is not installed.
    """
    spec = importlib.util.find_spec("dashboard")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError("the dashboard package is not installed (pip install -e .)")
    return Path(next(iter(spec.submodule_search_locations)))


def wait_for_http(url: str, timeout: float, stack: Stack) -> None:
    """Block until ``url`` answers HTTP 200, checking that no child died meanwhile.

    One request at a time, each allowed the time left: a Bokeh page builds a whole session
    document, which takes seconds on a busy machine; abandoning slow requests and asking
    again would only pile up sessions.

    Raises:
        TimeoutError: no answer after ``timeout`` s.
        ChildDied: a child exited while waiting.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.check()
        try:
            with urllib.request.urlopen(url, timeout=max(1.0, deadline - time.monotonic())) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def generate_synthetic(directory: Path, stack: Stack, env: dict[str, str], log: Path) -> str:
    """Say loudly that no genuine rows are at hand, then run ``dtmon synth`` into ``directory``.

    One file of ``SYNTHETIC_ROWS`` rows; the generator runs as a child, so Ctrl-C stops it too.

    Returns:
        ``directory``, as a source string.
    Raises:
        ChildDied: the generator failed.
    """
    shutil.rmtree(directory, ignore_errors=True)
    console.print(
        Panel(
            "No genuine MiniDT rows at hand (../shared/data/minidt is missing) and no --source given.\n"
            f"Streaming SYNTHETIC DAQ rows generated by `dtmon synth` into {directory}.\n"
            "The results and the dashboard are labelled synthetic.",
            title="SYNTHETIC DATA",
            border_style="bold red",
        )
    )
    cmd = [*console_script("dtmon"), "synth", "--out", str(directory), "--rows", str(SYNTHETIC_ROWS)]
    child = stack.spawn("synth", cmd, log, env)
    child.process.wait()
    if child.process.returncode != 0:
        raise ChildDied(child)
    stack.children.remove(child)
    return str(directory)


def stage_commands(settings: Settings, checkpoint: Path, dashboard_port: int) -> dict[str, list[str]]:
    """Command lines of producer, processor and dashboard (``up`` starts the processor first).

    The remaining settings reach them as ``DTMON_*`` variables (``child_env``); the
    processor starts a fresh query at the earliest offset, the dashboard binds loopback.
    """
    producer = [*console_script("producer"), "--source", settings.source]
    if settings.s3_endpoint_url and settings.source.startswith("s3://"):
        producer += ["--s3-endpoint-url", settings.s3_endpoint_url]
    producer += ["--loop", "--rate", f"{settings.rate:g}"]
    processor = [
        *console_script("processor"),
        "--trigger-interval-s", f"{settings.trigger_interval_s:g}",
        "--checkpoint-location", str(checkpoint),
        "--starting-offsets", "earliest",
    ]  # fmt: skip
    dashboard = [
        sys.executable, "-m", "bokeh", "serve", str(dashboard_dir()),
        "--port", str(dashboard_port), "--address", "127.0.0.1",
        "--allow-websocket-origin", f"127.0.0.1:{dashboard_port}",
        "--allow-websocket-origin", f"localhost:{dashboard_port}",
    ]  # fmt: skip
    return {"producer": producer, "processor": processor, "dashboard": dashboard}


def status_table(stack: Stack) -> Table:
    """One row per child: service, pid (and exit code once it exited), address."""
    table = Table(title="dtmon up", title_justify="left")
    for column in ("service", "pid", "address"):
        table.add_column(column)
    for child in stack.children:
        state = "" if child.process.poll() is None else f" (exited {child.process.returncode})"
        table.add_row(child.name, f"{child.process.pid}{state}", child.address)
    return table


def write_state(path: Path, stack: Stack, started: float) -> None:
    """Record the children (name, pid, address, log) in ``path`` as JSON, for tools and tests."""
    children = [{"name": c.name, "pid": c.process.pid, "address": c.address, "log": str(c.log)} for c in stack.children]
    path.write_text(json.dumps({"started": started, "children": children}, indent=2) + "\n")


@app.command()
def up(
    source: Annotated[
        str | None, setting_option("source", note="without one: the genuine rows in ../shared, or else synthetic files")
    ] = None,
    rate: Annotated[float | None, setting_option("rate")] = None,
    trigger_interval_s: Annotated[float | None, setting_option("trigger_interval_s")] = None,
    bootstrap_servers: Annotated[
        str | None, setting_option("bootstrap_servers", note="set (flag, environment or Kafka config): no Tansu is started")
    ] = None,
    kafka_config_file: Annotated[str | None, setting_option("kafka_config_file")] = None,
    s3_endpoint_url: Annotated[
        str | None, setting_option("s3_endpoint_url", note="for an s3:// --source, instead of moto")
    ] = None,
    broker_port: Annotated[int, typer.Option(help="port of the embedded Tansu broker")] = 9092,
    s3_port: Annotated[int, typer.Option(help="port of the embedded moto S3 server")] = 5000,
    dashboard_port: Annotated[int, typer.Option(help="port of the dashboard")] = 5006,
    bucket: Annotated[str, typer.Option(help="bucket of the embedded S3 server")] = DEFAULT_BUCKET,
    workdir: Annotated[Path, typer.Option(help="logs, checkpoint and generated files")] = Path("var/up"),
    keep_checkpoint: Annotated[
        bool,
        typer.Option("--keep-checkpoint", help="resume the previous run's query (external Kafka only: the "
                     "embedded broker starts empty)"),
    ] = False,
    startup_timeout: Annotated[float, typer.Option(help="s to wait for each service to answer")] = 120.0,
    trigger_interval_s_alias: Annotated[float | None, alias_option("--trigger-interval")] = None,
    s3_endpoint_url_alias: Annotated[str | None, alias_option("--s3-endpoint")] = None,
    kafka_config_file_alias: Annotated[str | None, alias_option("--kafka-config")] = None,
) -> None:
    """Run the whole stack locally: broker, S3, producer, processor, dashboard. Ctrl-C stops it all."""
    started = time.time()
    t0 = time.monotonic()
    settings = settings_from(locals(), console)
    external_kafka = "bootstrap_servers" in settings.model_fields_set  # a flag, DTMON_BOOTSTRAP_SERVERS or the Kafka config
    workdir = workdir.resolve()
    logs = workdir / "logs"
    checkpoint = workdir / "checkpoint"
    state_file = workdir / "stack.json"
    stack = Stack()
    code = 0
    with interruptible():
        try:
            logs.mkdir(parents=True, exist_ok=True)
            if checkpoint.exists() and not keep_checkpoint:
                shutil.rmtree(checkpoint)
            env = child_env(settings, dict(os.environ))

            # where the rows come from: an S3 prefix as is, or local files served by moto
            if settings.source.startswith("s3://"):
                uploads: list[Upload] = []
                console.print(f"source: {settings.source} (endpoint {settings.s3_endpoint_url or 'AWS'})")
            elif (s3_endpoint_url or s3_endpoint_url_alias) is not None:
                raise UsageError("--s3-endpoint-url needs an s3:// --source (local files are served by moto)")
            else:
                src = settings.source or generate_synthetic(workdir / "synthetic", stack, env, logs / "synth.log")
                uploads = plan_uploads([Path(src)])
                kind = "SYNTHETIC" if uploads[0].synthetic else "genuine"
                n_files = sum(1 for u in uploads if u.path.name != SYNTHETIC_MANIFEST)
                console.print(f"source: {src} ({kind}, {n_files} file(s)) -> s3://{bucket}/ on moto")

            # broker and S3
            if external_kafka:
                console.print(f"Kafka: external, {settings.bootstrap_servers}")
            else:
                ensure_port_free("127.0.0.1", broker_port, "broker", "--broker-port or --bootstrap-servers")
                broker = stack.start_service(
                    lambda: start_broker("127.0.0.1", broker_port, logs / "broker.log", startup_timeout),
                    logs / "broker.log",
                )
                settings = settings.model_copy(update={"bootstrap_servers": broker.address})
            KafkaClients(settings.kafka).ensure_topics({settings.raw_topic: settings.raw_partitions,
                                                        settings.results_topic: 1}, timeout=30.0)  # fmt: skip
            ensure_port_free("127.0.0.1", dashboard_port, "dashboard", "--dashboard-port")
            url = f"http://127.0.0.1:{dashboard_port}/dashboard"
            addresses = {"producer": f"-> {settings.raw_topic}", "processor": f"-> {settings.results_topic}",
                         "dashboard": url}  # fmt: skip
            # the processor first: Spark starts while S3 is seeded (it reads the raw topic from its start)
            commands = stage_commands(settings, checkpoint, dashboard_port)
            stack.spawn("processor", commands["processor"], logs / "processor.log", child_env(settings, dict(os.environ)),
                        addresses["processor"])  # fmt: skip
            if uploads:
                ensure_port_free("127.0.0.1", s3_port, "S3 server", "--s3-port")
                s3 = stack.start_service(lambda: start_s3("127.0.0.1", s3_port, logs / "s3.log", startup_timeout),
                                         logs / "s3.log")  # fmt: skip
                seed(s3.address, bucket, uploads)
                settings = settings.model_copy(update={"source": f"s3://{bucket}/", "s3_endpoint_url": s3.address})
            write_state(state_file, stack, started)

            # then the producer and the dashboard
            env = child_env(settings, dict(os.environ))
            for name, cmd in stage_commands(settings, checkpoint, dashboard_port).items():
                if name != "processor":
                    stack.spawn(name, cmd, logs / f"{name}.log", env, addresses[name])
            write_state(state_file, stack, started)
            wait_for_http(url, startup_timeout, stack)

            console.print(status_table(stack))
            console.print(f"logs: {logs}/<service>.log")
            console.print(f"dashboard answering after {time.monotonic() - t0:.1f} s")
            console.print(f"Dashboard: [bold green]{url}[/]   (Ctrl-C stops everything)")
            code = run_until_interrupted(stack)
        except (KeyboardInterrupt, Exception) as error:  # report, then stop what was started
            code = report_stop(error)
        finally:
            with signals_ignored():
                stack.stop()
                state_file.unlink(missing_ok=True)
            console.print("all dtmon children stopped")
    raise typer.Exit(code)


if __name__ == "__main__":
    app()
