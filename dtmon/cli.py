"""The ``dtmon`` command: the whole stack in one command, or each embedded service on its own.

``dtmon up`` starts, as child processes in their own process groups, the Tansu broker,
a moto S3 server seeded with the DAQ files, the producer, the processor and the
dashboard; a child that dies is restarted (``dtmon.supervisor.RestartPolicy``: backoff,
bounded, one line each), and only Ctrl-C (or SIGTERM) stops them all, in reverse order.
With ``--persist`` the broker keeps its messages on the S3 server (Tansu's S3 storage
engine), so a broker restart loses nothing. ``dtmon broker`` and
``dtmon s3`` run one embedded service in the foreground, so the embedded parts can be
mixed with real ones. ``dtmon schema`` prints the results-message JSON Schema.

Settings precedence everywhere: command-line flag > ``DTMON_*`` environment variable >
default (``dtmon.settings``). Children get their settings as ``DTMON_*`` variables.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
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
from dtmon.kafka import KafkaClients, KafkaSetupError
from dtmon.schema import RESULTS_VERSION
from dtmon.services import (
    Service,
    Upload,
    ensure_bucket,
    free_port,
    plan_uploads,
    s3_client,
    s3_storage_env,
    seed,
    start_broker,
    start_s3,
    stop_process,
)
from dtmon.settings import Settings
from dtmon.supervisor import (
    Child,
    ChildDied,
    Stack,
    console,
    console_script,
    interruptible,
    report_death,
    run_until_interrupted,
    group_members,
    signals_ignored,
    terminate,
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
BROKER_BUCKET = "dtmon-broker"
"""Bucket of the embedded S3 server holding the broker's storage under ``dtmon up --persist``."""
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
    """Block until ``url`` answers HTTP 200, supervising the stack meanwhile (``Stack.supervise``).

    One request at a time, each allowed the time left: a Bokeh page builds a whole session
    document, which takes seconds on a busy machine; abandoning slow requests and asking
    again would only pile up sessions.

    Raises:
        TimeoutError: no answer after ``timeout`` s.
        ChildDied: a child that cannot be restarted exited, or one was given up on.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.supervise()
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
    return {"producer": producer, "processor": processor, "dashboard": dashboard_command(settings, dashboard_port)}


def dashboard_command(settings: Settings, port: int) -> list[str]:
    """``bokeh serve`` of the dashboard on ``settings.dashboard_address``:``port``.

    Pages from 127.0.0.1 and localhost at ``port`` and from ``settings.dashboard_allow_origins``
    may open its websocket; with ``settings.dashboard_users_file`` set, ``dashboard/auth.py``
    asks for a login (Bokeh's cookie secret comes from ``BOKEH_COOKIE_SECRET``, see ``up``).
    """
    origins = [f"127.0.0.1:{port}", f"localhost:{port}", *settings.dashboard_allow_origins]
    cmd = [sys.executable, "-m", "bokeh", "serve", str(dashboard_dir()),
           "--port", str(port), "--address", settings.dashboard_address]  # fmt: skip
    for origin in dict.fromkeys(origins):
        cmd += ["--allow-websocket-origin", origin]
    if settings.dashboard_users_file:
        cmd += ["--auth-module", str(dashboard_dir() / "auth.py")]
    return cmd



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
    """Record the children (name, pid, address, log, restarts) in ``path`` as JSON, for tools and tests."""
    children = [{"name": c.name, "pid": c.process.pid, "address": c.address, "log": str(c.log),
                 "restarts": len(c.restarts)} for c in stack.children]  # fmt: skip
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"started": started, "children": children}, indent=2) + "\n")
    tmp.replace(path)  # readers never see half a file


def start_embedded_s3(stack: Stack, port: int, logs: Path, timeout: float) -> Child:
    """Start the embedded moto S3 server on ``port`` as a restartable child of ``stack``."""
    ensure_port_free("127.0.0.1", port, "S3 server", "--s3-port")
    return stack.start_service(lambda: start_s3("127.0.0.1", port, logs / "s3.log", timeout), logs / "s3.log", restart=True)


PERSIST_PACING = {"messages_per_s": 1.0, "producer_commit_interval_s": 2.0, "producer_commit_when_idle": False}
"""Producer pacing under ``--persist`` unless set: Tansu 0.6's S3 engine answers fetches more slowly with
every record batch it stores (docs/reliability.md), so the producer writes ~1.5 batches/s instead of ~24."""


def persist_pacing(settings: Settings) -> Settings:
    """``settings`` with ``PERSIST_PACING`` for the fields the operator did not set."""
    update = {k: v for k, v in PERSIST_PACING.items() if k not in settings.model_fields_set}
    if update:
        console.print("--persist: the producer sends " + ", ".join(f"{k} = {v}" for k, v in update.items())
                      + " (fewer record batches for the broker's S3 storage)")  # fmt: skip
    return settings.model_copy(update=update)


def ensure_stack_topics(settings: Settings, timeout: float = 30.0) -> None:
    """Create the raw topic (``raw_partitions``, retention of ``Settings.raw_topic_config``) and the results topic (one partition) if missing.

    Raises:
        KafkaSetupError: the broker did not answer within ``timeout`` s or refused a topic.
    """
    clients = KafkaClients(settings.kafka)
    clients.ensure_topic(settings.raw_topic, settings.raw_partitions, timeout, settings.raw_topic_config())
    clients.ensure_results_topic(settings.results_topic, timeout)


@app.command()
def topics(
    bootstrap_servers: Annotated[str | None, setting_option("bootstrap_servers")] = None,
    kafka_config_file: Annotated[str | None, setting_option("kafka_config_file")] = None,
    raw_topic: Annotated[str | None, setting_option("raw_topic")] = None,
    results_topic: Annotated[str | None, setting_option("results_topic")] = None,
    raw_partitions: Annotated[int | None, setting_option("raw_partitions", min=1)] = None,
    raw_retention_s: Annotated[float | None, setting_option("raw_retention_s")] = None,
    raw_retention_mb: Annotated[float | None, setting_option("raw_retention_mb")] = None,
    timeout: Annotated[float, typer.Option(help="s to wait for the broker")] = 60.0,
) -> None:
    """Create the raw topic (with its retention) and the results topic (one partition) if missing, then exit."""
    settings = settings_from(locals(), console)
    try:
        ensure_stack_topics(settings, timeout)
    except KafkaSetupError as error:
        console.print(f"[bold red]error:[/] {error}")
        raise typer.Exit(1) from None
    retention = settings.raw_topic_config()
    console.print(f"topics ready on {settings.bootstrap_servers}: {settings.raw_topic} (retention.ms {retention['retention.ms']},"
                  f" retention.bytes {retention['retention.bytes']} per partition), {settings.results_topic}")  # fmt: skip


def _child(stack: Stack, name: str) -> Child | None:
    return next((c for c in stack.children if c.name == name), None)


def start_over(stack: Stack, checkpoint: Path, why: str) -> None:
    """Restart the producer from its source's start and the processor on a new checkpoint, because
    the raw topic lost its messages (``why``); not counted as deaths."""
    producer, processor = _child(stack, "producer"), _child(stack, "processor")
    if processor is not None:
        stop_process(processor.process, 10.0)
        terminate(group_members(processor.process.pid), 5.0)
        shutil.rmtree(checkpoint, ignore_errors=True)
        stack.restart(processor, reason=f"{why}: new query, checkpoint cleared", count=False)
    if producer is not None:
        stack.restart(producer, reason=f"{why}: sends its source again", count=False)


def broker_restarted(stack: Stack, settings: Settings, checkpoint: Path, persisted: bool) -> None:
    """After the embedded broker restarted: say what it kept, create missing topics, and with
    volatile storage start the producer and processor over (the topics are new and empty)."""
    if persisted:
        console.print("broker restarted on its durable storage: every message it had acknowledged is kept")
    else:
        console.print("[bold red]the in-memory broker's data was lost on restart: every message of "
                      f"{settings.raw_topic} and {settings.results_topic} is gone (dtmon up --persist keeps them)[/]")  # fmt: skip
    try:
        ensure_stack_topics(settings)
    except KafkaSetupError as error:
        console.print(f"[bold red]error:[/] {error}")
    if not persisted:
        start_over(stack, checkpoint, "the broker lost its data")


def s3_restarted(
    stack: Stack, s3: Child, bucket: str, uploads: list[Upload], settings: Settings, checkpoint: Path, persist: bool
) -> None:
    """After the embedded S3 server restarted (empty: moto keeps nothing): seed the DAQ files again;
    under ``--persist`` the broker's storage went with it, so the broker restarts empty too."""
    try:
        if uploads:
            seed(s3.address, bucket, uploads)
            console.print(f"S3 server restarted empty: {len(uploads)} file(s) seeded again")
        if persist:
            ensure_bucket(s3_client(s3.address), BROKER_BUCKET)
    except Exception as error:  # noqa: BLE001 - boto3/botocore errors: reported, the stack keeps running
        console.print(f"[bold red]error:[/] seeding the restarted S3 server failed: {type(error).__name__}: {error}")
        return
    broker = _child(stack, "broker")
    if persist and broker is not None:
        console.print("[bold red]the S3 server held the broker's storage: the broker's data was lost[/]")
        broker.after_restart = None
        try:
            stack.restart(broker, reason="its storage on the S3 server was lost", count=False)
        finally:
            broker.after_restart = lambda child: broker_restarted(stack, settings, checkpoint, persisted=True)
        broker_restarted(stack, settings, checkpoint, persisted=False)


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
    persist: Annotated[
        bool,
        typer.Option("--persist", help=f"keep the embedded broker's messages in s3://{BROKER_BUCKET}/ on the embedded "
                     "S3 server (Tansu's S3 storage engine), so a broker restart loses nothing; reads slow down as "
                     "it fills: short sessions only (docs/reliability.md)"),
    ] = False,
    broker_kind: Annotated[
        str,
        typer.Option("--broker", help="the embedded broker: tansu (in memory; what pip install alone starts) or apache "
                     "(Apache Kafka 4 storing on disk in WORKDIR/kafka: the raw topic's retention applies and a broker "
                     "restart keeps every message; needs Java 17 and Maven, jars fetched on first use)"),
    ] = "tansu",
    startup_timeout: Annotated[float, typer.Option(help="s to wait for each service to answer")] = 120.0,
    trigger_interval_s_alias: Annotated[float | None, alias_option("--trigger-interval")] = None,
    s3_endpoint_url_alias: Annotated[str | None, alias_option("--s3-endpoint")] = None,
    kafka_config_file_alias: Annotated[str | None, alias_option("--kafka-config")] = None,
) -> None:
    """Run the whole stack locally: broker, S3, producer, processor, dashboard. A child that dies is
    restarted (with backoff; given up after 5 restarts in 5 minutes); Ctrl-C stops it all."""
    started = time.time()
    t0 = time.monotonic()
    settings = settings_from(locals(), console)
    if settings.reference_file:  # one file for the processor's checks and the dashboard's overlay
        settings = settings.model_copy(update={"reference_file": str(Path(settings.reference_file).resolve())})
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
            if broker_kind not in ("tansu", "apache"):
                raise UsageError(f"--broker is tansu or apache, not {broker_kind!r}")
            if broker_kind == "apache" and (persist or external_kafka):
                raise UsageError("--broker apache starts an embedded Apache Kafka that keeps its messages on disk: "
                                 "it goes with neither --persist nor an external Kafka (--bootstrap-servers)")  # fmt: skip
            if checkpoint.exists() and not keep_checkpoint:
                shutil.rmtree(checkpoint)
            kafka_dir = workdir / "kafka"  # the embedded Apache Kafka's storage: kept with the checkpoint
            if kafka_dir.exists() and not keep_checkpoint:
                shutil.rmtree(kafka_dir)
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

            # S3 first when it holds the broker's storage, then the broker
            s3: Child | None = None
            if persist:
                if external_kafka:
                    raise UsageError("--persist keeps the embedded broker's messages: it does not apply to an "
                                     "external Kafka (--bootstrap-servers)")  # fmt: skip
                s3 = start_embedded_s3(stack, s3_port, logs, startup_timeout)
                ensure_bucket(s3_client(s3.address), BROKER_BUCKET)
                settings = persist_pacing(settings)
            if external_kafka:
                console.print(f"Kafka: external, {settings.bootstrap_servers}")
            elif broker_kind == "apache":
                from dtmon.apache_kafka import start_apache_kafka

                ensure_port_free("127.0.0.1", broker_port, "broker", "--broker-port or --bootstrap-servers")
                controller_port = free_port()  # the same on every restart
                broker = stack.start_service(
                    lambda: start_apache_kafka("127.0.0.1", broker_port, controller_port, logs / "broker.log",
                                               timeout=startup_timeout, data_dir=kafka_dir),
                    logs / "broker.log",
                    restart=True,
                )  # fmt: skip
                console.print(f"broker: Apache Kafka, storage {kafka_dir} (kept across broker restarts; "
                              "the raw topic's retention applies)")  # fmt: skip
                settings = settings.model_copy(update={"bootstrap_servers": broker.address})
            else:
                ensure_port_free("127.0.0.1", broker_port, "broker", "--broker-port or --bootstrap-servers")
                storage, broker_env = (f"s3://{BROKER_BUCKET}/", s3_storage_env(s3.address)) if s3 else ("memory://tansu/", None)
                broker = stack.start_service(
                    lambda: start_broker("127.0.0.1", broker_port, logs / "broker.log", startup_timeout, storage, broker_env),
                    logs / "broker.log",
                    restart=True,
                )
                console.print(f"broker storage: {storage}" + ("" if s3 else " (in memory: lost if the broker restarts; "
                                                                             "--persist keeps it)"))  # fmt: skip
                settings = settings.model_copy(update={"bootstrap_servers": broker.address})
            ensure_stack_topics(settings)
            ensure_port_free("127.0.0.1", dashboard_port, "dashboard", "--dashboard-port")
            url = f"http://127.0.0.1:{dashboard_port}/dashboard"
            addresses = {"producer": f"-> {settings.raw_topic}", "processor": f"-> {settings.results_topic}",
                         "dashboard": url}  # fmt: skip
            # the processor first: Spark starts while S3 is seeded (it reads the raw topic from its start)
            commands = stage_commands(settings, checkpoint, dashboard_port)
            stack.spawn("processor", commands["processor"], logs / "processor.log", child_env(settings, dict(os.environ)),
                        addresses["processor"], restart=True)  # fmt: skip
            if uploads:
                s3 = s3 or start_embedded_s3(stack, s3_port, logs, startup_timeout)
                seed(s3.address, bucket, uploads)
                settings = settings.model_copy(update={"source": f"s3://{bucket}/", "s3_endpoint_url": s3.address})
            write_state(state_file, stack, started)
            if not external_kafka:
                durable = persist or broker_kind == "apache"
                broker.after_restart = lambda child: broker_restarted(stack, settings, checkpoint, persisted=durable)
            if s3 is not None:
                s3.after_restart = lambda child: s3_restarted(stack, child, bucket, uploads, settings, checkpoint, persist)
            stack.on_restart = lambda child: write_state(state_file, stack, started)

            # then the producer and the dashboard
            env = child_env(settings, dict(os.environ))
            if settings.dashboard_users_file:  # signs the login cookie; a new one per start logs everyone out
                env.setdefault("BOKEH_COOKIE_SECRET", secrets.token_urlsafe(32))
            for name, cmd in stage_commands(settings, checkpoint, dashboard_port).items():
                if name != "processor":
                    stack.spawn(name, cmd, logs / f"{name}.log", env, addresses[name], restart=True)
            write_state(state_file, stack, started)
            wait_for_http(url, startup_timeout, stack)

            console.print(status_table(stack))
            console.print(f"logs: {logs}/<service>.log")
            console.print(f"dashboard answering after {time.monotonic() - t0:.1f} s")
            console.print(f"Dashboard: [bold green]{url}[/]   (a child that dies is restarted; Ctrl-C stops everything)")
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
