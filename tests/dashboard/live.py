"""A live dashboard for browser tests and screenshots: real ``bokeh serve dashboard`` fed through a
real broker's results topic."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.browser import CHROMIUM, CHROMIUM_ARGS  # noqa: F401 - re-exported to the browser tests
from dtmon.kafka import KafkaClients

from dtmon.schema import ResultsMessage
from dtmon.services import free_port, stop_process, wait_for_port

REPO = Path(__file__).resolve().parents[2]


def publish(bootstrap: str, topic: str, values: list[bytes], keys: list[str]) -> None:
    """Produce ``values`` with ``keys`` to ``topic`` and wait until the broker has them."""
    producer = KafkaClients(bootstrap).producer(acks="all")
    for key, value in zip(keys, values):
        producer.produce(topic, key=key.encode(), value=value)
    assert producer.flush(10) == 0


def publish_messages(bootstrap: str, topic: str, messages: list[ResultsMessage]) -> None:
    """Publish results messages keyed by batch id, as the processor does."""
    publish(bootstrap, topic, [m.to_json() for m in messages], [str(m.batch_id) for m in messages])


@contextmanager
def dashboard_server(bootstrap: str, topic: str, log_path: Path, **env: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """``bokeh serve dashboard`` on a free port reading ``topic``; yields (page URL, process).
    ``env`` adds DTMON_* variables (e.g. DTMON_DASHBOARD_REFRESH_MS="200")."""
    port = free_port()
    full_env = dict(os.environ, DTMON_BOOTSTRAP_SERVERS=bootstrap, DTMON_RESULTS_TOPIC=topic, **env)
    cmd = [sys.executable, "-m", "bokeh", "serve", "dashboard", "--port", str(port), "--address", "127.0.0.1",
           "--allow-websocket-origin", f"127.0.0.1:{port}"]
    with open(log_path, "wb") as log:
        server = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        wait_for_port("127.0.0.1", port, 60, server)
        yield f"http://127.0.0.1:{port}/dashboard", server
    finally:
        stop_process(server)
