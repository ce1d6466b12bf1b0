"""Fixtures for the processor: one local Spark session, and helpers to fill a raw topic."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from dtmon.hits import HIT_SCHEMA, decode_csv
from dtmon.kafka import KafkaClients
from dtmon.settings import load_settings
from dtmon.wire import CONTENT_TYPE_ARROW, CONTENT_TYPE_CONTROL, RunEvent, encode_arrow
from processor.decode import OUTPUT_SCHEMA
from processor.message_rows import MESSAGE_SCHEMA, SPARK_SCHEMA


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """A real local Spark session (2 cores) with both Kafka sources: dtmon's Python data source
    registered and Spark's Kafka connector loaded (``kafka_source="spark"``)."""
    from processor.session import spark_session

    settings = load_settings(spark_master="local[2]", shuffle_partitions=2, kafka_source="spark")
    session = spark_session(settings, app_name="dtmon-tests")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def genuine_table(genuine_csv) -> pa.Table:
    """The genuine rows decoded with dtmon.hits (999 rows)."""
    return decode_csv(genuine_csv.read_bytes()).table


def create_topic(bootstrap: str, topic: str, partitions: int = 1) -> None:
    """Create ``topic`` on the broker and wait for it."""
    KafkaClients(bootstrap).ensure_topic(topic, partitions, timeout=30)


def produce_table(
    bootstrap: str, topic: str, table: pa.Table, rows_per_message: int, partitions: int = 1, run: int | None = None
) -> int:
    """Send ``table`` as Arrow messages, round-robin over partitions; return the message count.

    With ``run``, every message carries header ``dtmon-run``.
    """
    producer = KafkaClients(bootstrap).producer(acks="all", enable_idempotence=True, linger_ms=5)
    headers = [("content-type", CONTENT_TYPE_ARROW.encode())] + ([("dtmon-run", str(run).encode())] if run is not None else [])
    count = 0
    for start in range(0, table.num_rows, rows_per_message):
        producer.produce(
            topic,
            value=encode_arrow(table.slice(start, rows_per_message)),
            partition=count % partitions,
            headers=headers,
        )
        count += 1
    assert producer.flush(30) == 0
    return count


def expected_outputs(frame: pd.DataFrame) -> dict:
    """Task 1-4 outputs computed independently with pandas from DAQ rows (PDF section 5.2).

    Returns hits, hits per chamber (4,), occupancy (4, 64) and multiplicity (4, 64).
    """
    hits = frame[frame.HEAD == 2]
    cells = hits[(hits.TDC_CHANNEL <= 127) & hits.FPGA.isin([0, 1])].copy()
    cells["chamber"] = cells.FPGA.astype(int) * 2 + (cells.TDC_CHANNEL >= 64).astype(int)
    cells["channel"] = cells.TDC_CHANNEL.astype(int) % 64
    occupancy = np.zeros((4, 64), dtype=int)
    for (chamber, channel), n in cells.groupby(["chamber", "channel"]).size().items():
        occupancy[chamber, channel] = n
    multiplicity = np.zeros((4, 64), dtype=int)
    per_orbit = cells.groupby(["chamber", "ORBIT_CNT"]).channel.nunique()
    for (chamber, _orbit), k in per_orbit.items():
        multiplicity[chamber, k - 1] += 1
    return {
        "hits": len(hits),
        "hits_outside_chambers": len(hits) - len(cells),
        "hits_per_chamber": occupancy.sum(axis=1),
        "occupancy": occupancy,
        "multiplicity": multiplicity,
    }


def with_source_columns(
    table: pa.Table, produced_ms: int = 1_700_000_000_000, run: int | None = None, rows_per_message: int = 1
) -> pa.Table:
    """Add the columns decoding adds to DAQ rows (``OUTPUT_SCHEMA``): Kafka timestamp (ms,
    increasing by 1 per ``rows_per_message`` rows), synthetic flag, run (``run`` or null)
    and run event 0 (data rows)."""
    n = table.num_rows
    return pa.Table.from_arrays(
        list(table.columns)
        + [
            pa.array(np.arange(n, dtype=np.int64) // rows_per_message + produced_ms),
            pa.array(np.zeros(n, bool)),
            pa.array([run] * n, pa.int32()),
            pa.array(np.zeros(n, np.int8)),
        ],
        schema=OUTPUT_SCHEMA,
    )


def as_messages(rows: pa.Table) -> pa.Table:
    """The source rows (``MESSAGE_SCHEMA``) that decode to ``rows`` (``OUTPUT_SCHEMA``).

    Consecutive data rows with the same Kafka time, synthetic flag and run become one
    Arrow message; a control row (run_event 1/2) becomes a control message.
    """
    meta = rows.select(["produced_ms", "synthetic", "run", "run_event"]).to_pylist()
    messages, start = [], 0
    for i in range(1, len(meta) + 1):
        if i < len(meta) and meta[i] == meta[start] and meta[i]["run_event"] == RunEvent.DATA:
            continue
        m = meta[start]
        if m["run_event"] == RunEvent.DATA:
            ctype, value = CONTENT_TYPE_ARROW, encode_arrow(rows.slice(start, i - start).select(HIT_SCHEMA.names))
        else:
            event = RunEvent(m["run_event"]).wire_name
            ctype, value = CONTENT_TYPE_CONTROL, json.dumps({"event": event, "run": m["run"]}).encode()
        messages.append({"topic": "test", "partition": 0, "offset": len(messages), "produced_ms": m["produced_ms"],
                         "content_type": ctype, "synthetic": m["synthetic"], "run": m["run"], "value": value})
        start = i
    return pa.Table.from_pylist(messages, MESSAGE_SCHEMA)


def message_frame(spark, rows: pa.Table):
    """A Spark DataFrame of source rows (``SPARK_SCHEMA``) that decode to ``rows`` (``as_messages``)."""
    return spark.createDataFrame(as_messages(rows), schema=SPARK_SCHEMA)


def edges_of(settings) -> np.ndarray:
    """Drift-time bin edges from the settings' range and width (the test's own arithmetic)."""
    n = int(np.ceil((settings.drift_time_max_ns - settings.drift_time_min_ns) / settings.drift_time_bin_ns))
    return settings.drift_time_min_ns + settings.drift_time_bin_ns * np.arange(n + 1)


# Per-chamber scintillator offsets in ns, from the domain notes section 4 (course PDF 4.2.4).
OFFSETS_NS = np.array([95.0 - 1.1, 95.0 + 6.4, 95.0 + 0.5, 95.0 - 2.6])


def expected_extras(frame: pd.DataFrame, scint: tuple[int, int], edges: np.ndarray, max_gap: int) -> dict:
    """Version-2 outputs computed independently with pandas from DAQ rows.

    E1: occupancy (4, 64) of chamber hits in orbits that hold a hit on FPGA/channel
    ``scint``. E2: per chamber, np.histogram of DRIFTIME = t_hit - min t_scint of the orbit
    + offset[chamber], t = 25 (ORBIT_CNT 3564 + BX_COUNTER + TDC_MEAS / 30) ns, over
    ``edges``. Detector time: distinct HEAD 2 orbits, sorted; gaps > ``max_gap`` are jumps;
    span = kept gaps + one orbit per segment, 89.1 us per orbit.
    """
    hits = frame[frame.HEAD == 2].copy()
    hits["t"] = 25.0 * (hits.ORBIT_CNT * 3564 + hits.BX_COUNTER + hits.TDC_MEAS / 30)
    t_scint = hits[(hits.FPGA == scint[0]) & (hits.TDC_CHANNEL == scint[1])].groupby("ORBIT_CNT").t.min()
    cells = hits[(hits.TDC_CHANNEL <= 127) & hits.FPGA.isin([0, 1])].copy()
    cells["chamber"] = cells.FPGA.astype(int) * 2 + (cells.TDC_CHANNEL >= 64).astype(int)
    tagged = cells[cells.ORBIT_CNT.isin(t_scint.index)].copy()
    tagged["drift"] = tagged.t - t_scint.loc[tagged.ORBIT_CNT].to_numpy() + OFFSETS_NS[tagged.chamber.to_numpy()]
    occupancy_scint = np.zeros((4, 64), dtype=int)
    np.add.at(occupancy_scint, (tagged.chamber.to_numpy(), tagged.TDC_CHANNEL.to_numpy() % 64), 1)
    drift = np.array([np.histogram(tagged.drift[tagged.chamber == c], bins=edges)[0] for c in range(4)])
    orbits = np.unique(hits.ORBIT_CNT.to_numpy())
    gaps = np.diff(orbits)
    jumps = int((gaps > max_gap).sum())
    span = int(gaps[gaps <= max_gap].sum()) + jumps + 1 if len(orbits) else 0
    return {
        "occupancy_scint": occupancy_scint,
        "drift_time": drift,
        "drift_values": tagged.drift.to_numpy(),
        "orbits_with_scintillator": len(t_scint),
        "detector_orbits": span,
        "detector_time_s": span * 3564 * 25e-9 if span else None,
        "orbit_jumps": jumps,
    }
