"""Helpers shared by the producer tests: read a topic back, tell control from data, read a CSV independently."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import pandas as pd

from dtmon.hits import COLUMNS
from dtmon.kafka import KafkaClients
from dtmon.wire import CONTENT_TYPE_CONTROL, header_dict


def is_control(headers) -> bool:
    """True for a run-start / run-end control message (by its content-type header)."""
    return header_dict(headers).get("content-type") == CONTENT_TYPE_CONTROL


def data_messages(messages: list) -> list:
    """The confluent_kafka messages that carry DAQ rows (control messages left out)."""
    return [m for m in messages if not is_control(m.headers())]


def control_events(messages: list) -> list[dict]:
    """The JSON values of the control messages, in the order given."""
    return [json.loads(m.value()) for m in messages if is_control(m.headers())]


def consume_all(bootstrap: str, topic: str, timeout: float = 30.0) -> list:
    """Every message of ``topic`` (all partitions, from the beginning), read with assign().

    Uses enable.partition.eof to know where each partition ends (Tansu's ListOffsets
    "latest" is off, platform notes). Raises TimeoutError after ``timeout`` s.
    """
    return KafkaClients(bootstrap).read_all(topic, timeout, f"test-{uuid.uuid4().hex[:8]}")


def read_csv_independently(path: Path | bytes, has_header: bool = True) -> pd.DataFrame:
    """The DAQ rows of a CSV file with pandas (not dtmon code), int64/float64 columns."""
    source = io.BytesIO(path) if isinstance(path, bytes) else path
    frame = pd.read_csv(
        source, header=0 if has_header else None, names=list(COLUMNS), dtype={c: "int64" for c in COLUMNS[:5]}
    )
    frame["TDC_MEAS"] = frame["TDC_MEAS"].astype("float64")
    return frame


def runs_by_partition(messages: list) -> list[list[dict]]:
    """Check the run framing of each partition and return its runs, partitions in order.

    Walks each partition in offset order and asserts: run-start (rows 0), data messages
    whose ``dtmon-run`` header is that run, run-end of the same run; no data outside a
    run, no run left open; control headers agree with the JSON value. Each run is
    ``{"run", "start", "end", "rows", "files"}`` with ``rows`` = DAQ rows of the run's data
    messages in that partition (decoded here) and ``files`` their ``dtmon-file`` headers.
    """
    from dtmon.wire import decode_message

    out = []
    for partition in sorted({m.partition() for m in messages}):
        runs, current = [], None
        for m in sorted((m for m in messages if m.partition() == partition), key=lambda m: m.offset()):
            h = header_dict(m.headers())
            if is_control(m.headers()):
                doc = json.loads(m.value())
                assert set(doc) == {"event", "run", "file", "rows"}, doc
                assert h["dtmon-run"] == str(doc["run"]) and h["dtmon-file"] == doc["file"], (h, doc)
                if doc["event"] == "run-start":
                    assert current is None and doc["rows"] == 0, (current, doc)
                    current = {"run": doc["run"], "start": doc, "rows": 0, "files": []}
                else:
                    assert doc["event"] == "run-end" and current is not None and doc["run"] == current["run"], (current, doc)
                    current["end"] = doc
                    runs.append(current)
                    current = None
            else:
                assert current is not None, f"data outside a run at partition {partition} offset {m.offset()}"
                assert h["dtmon-run"] == str(current["run"]), (h, current["run"])
                current["rows"] += len(decode_message(m.value(), h["content-type"]))
                if not current["files"] or current["files"][-1] != h["dtmon-file"]:
                    current["files"].append(h["dtmon-file"])
        assert current is None, f"run {current and current['run']} left open in partition {partition}"
        out.append(runs)
    return out
