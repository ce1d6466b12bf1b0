"""Reference runs: cumulative histograms of a good run, saved as a versioned JSON file.

A reference is built from results messages (``reference_from_messages``, pure), written and
read with ``save_reference`` / ``load_reference``; the processor compares the window's
occupancy and drift-time shapes and the chamber rates with it (setting ``reference_file``),
the dashboard overlays it. ``dtmon reference save`` (``app``, a Typer sub-app) takes one from
the results topic: the messages of one run, or the last N micro-batches.

File format (``schema`` ``dtmon.reference``, ``version`` 1): name, creation time, the run and
batch range it came from, detector time, scintillator channel, drift-time bin edges (ns) and
per chamber the hits, rate (Hz of detector time), occupancy (64 bins) and drift time
(scintillator-tagged, len(drift_edges) - 1 bins).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dtmon.hits import CELLS_PER_CHAMBER, N_CHAMBERS
from dtmon.schema import ResultsMessage, Scintillator

REFERENCE_SCHEMA_ID = "dtmon.reference"
REFERENCE_VERSION = 1


class ReferenceError(ValueError):
    """A reference file that cannot be read or validated, or no messages to build one from (one-line message)."""


class ReferenceChamber(BaseModel):
    """One chamber of a reference: hits, rate in Hz of detector time, occupancy (64,), drift time (D,)."""

    model_config = ConfigDict(frozen=True)

    chamber: int = Field(ge=0, lt=N_CHAMBERS)
    hits: int = Field(ge=0)
    rate_hz: float | None = Field(None, ge=0, description="hits / detector time, Hz; None without detector time")
    occupancy: list[int] = Field(min_length=CELLS_PER_CHAMBER, max_length=CELLS_PER_CHAMBER)
    drift_time: list[int] = Field(description="scintillator-tagged hits per DRIFTIME bin (Reference.drift_edges)")


class Reference(BaseModel):
    """Cumulative histograms of a good run (file schema ``dtmon.reference``, version 1)."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    schema_id: str = Field(REFERENCE_SCHEMA_ID, alias="schema")
    version: int = REFERENCE_VERSION
    name: str = Field(description="what the reference is, e.g. 'run 810' or 'batches 120-149'")
    created: float = Field(description="when the file was made (epoch s)")
    run: int | None = None
    first_batch: int = Field(ge=0)
    last_batch: int = Field(ge=0)
    batches: int = Field(ge=1)
    synthetic: bool = False
    detector_time_s: float = Field(ge=0)
    scintillator: Scintillator | None = None
    drift_edges: list[float]
    chambers: list[ReferenceChamber] = Field(min_length=N_CHAMBERS, max_length=N_CHAMBERS)

    @model_validator(mode="after")
    def _consistent(self) -> "Reference":
        if self.schema_id != REFERENCE_SCHEMA_ID or self.version != REFERENCE_VERSION:
            raise ValueError(f"not a {REFERENCE_SCHEMA_ID}/{REFERENCE_VERSION} file ({self.schema_id}/{self.version})")
        for c in self.chambers:
            if len(c.drift_time) != len(self.drift_edges) - 1:
                raise ValueError(f"chamber {c.chamber}: {len(c.drift_time)} drift-time bins for {len(self.drift_edges)} edges")
        return self

    def occupancy(self) -> np.ndarray:
        """int (4, 64) hits per chamber and local channel."""
        return np.array([c.occupancy for c in self.chambers], np.int64)

    def drift_time(self) -> np.ndarray:
        """int (4, D) tagged hits per drift-time bin (edges ``drift_edges``, ns)."""
        return np.array([c.drift_time for c in self.chambers], np.int64)

    def to_json(self) -> str:
        """The file's text (wire names: ``schema``)."""
        return self.model_dump_json(by_alias=True, indent=1)


def reference_from_messages(messages: Iterable[ResultsMessage], name: str | None = None,
                            now: float | None = None) -> Reference:
    """Sum the histograms of results messages into a reference (pure).

    Messages with a drift-time binning other than the newest message's are skipped.

    Raises:
        ReferenceError: no message with hits.
    """
    msgs = sorted((m for m in messages if m.hits > 0), key=lambda m: m.batch_id)
    if not msgs:
        raise ReferenceError("no results message with hits to build a reference from")
    edges = msgs[-1].chambers[0].drift_time.bin_edges if msgs[-1].chambers[0].drift_time else None
    occ = np.zeros((N_CHAMBERS, CELLS_PER_CHAMBER), np.int64)
    drift = np.zeros((N_CHAMBERS, len(edges) - 1 if edges else 0), np.int64)
    used, detector_time = [], 0.0
    for m in msgs:
        m_edges = m.chambers[0].drift_time.bin_edges if m.chambers[0].drift_time else None
        if m_edges != edges:
            continue
        used.append(m)
        detector_time += m.detector_time_s or 0.0
        for c in m.chambers:
            occ[c.chamber] += c.occupancy.bin_counts
            if c.drift_time is not None:
                drift[c.chamber] += c.drift_time.bin_counts
    runs = {m.run for m in used}
    run = runs.pop() if len(runs) == 1 else None
    first, last = used[0].batch_id, used[-1].batch_id
    chambers = [
        ReferenceChamber(chamber=c, hits=int(occ[c].sum()),
                         rate_hz=round(float(occ[c].sum()) / detector_time, 4) if detector_time > 0 else None,
                         occupancy=occ[c].tolist(), drift_time=drift[c].tolist())
        for c in range(N_CHAMBERS)
    ]
    return Reference(
        name=name or (f"run {run}, batches {first}-{last}" if run is not None else f"batches {first}-{last}"),
        created=time.time() if now is None else now, run=run, first_batch=first, last_batch=last, batches=len(used),
        synthetic=any(m.synthetic for m in used), detector_time_s=round(detector_time, 6),
        scintillator=used[-1].scintillator, drift_edges=list(edges or [0.0]), chambers=chambers,
    )


def save_reference(reference: Reference, path: str | Path) -> Path:
    """Write ``reference`` as JSON to ``path`` (atomically: a temporary file then a rename); returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(reference.to_json())
    tmp.replace(p)
    return p


def load_reference(path: str | Path) -> Reference:
    """Read a reference file.

    Raises:
        ReferenceError: missing, not JSON, or not a valid ``dtmon.reference`` v1 document
            (one line naming the file and the first bad field).
    """
    p = Path(path)
    try:
        return Reference.model_validate_json(p.read_text())
    except OSError as e:
        raise ReferenceError(f"{p}: cannot read reference: {e.strerror}") from None
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "(document)"
        raise ReferenceError(f"{p.name}: {where}: {first['msg']}") from None


# --- reading the results topic ----------------------------------------------------------------


def read_results(kafka, topic: str, *, last_batches: int | None = None, run: int | None = None,
                 timeout_s: float = 10.0) -> list[ResultsMessage]:
    """Results messages from the topic, up to its end (end-of-partition event) at the time of the call.

    Args:
        kafka: ``dtmon.kafka.KafkaConfig`` or bootstrap servers ``host:port``.
        last_batches: only the N messages with the highest batch ids.
        run: only messages of this run (the whole topic is read).
    Returns:
        Messages in batch-id order; unparsable messages are skipped and counted in the log.
    """
    import logging

    from confluent_kafka import KafkaError, TopicPartition

    from dtmon.kafka import KafkaClients

    clients = KafkaClients(kafka)
    consumer = clients.consumer("dtmon-reference", enable_partition_eof=True)
    bootstrap = clients.config.bootstrap_servers
    out: list[ResultsMessage] = []
    bad = 0
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise ReferenceError(f"results topic {topic} not found on {bootstrap}")
        starts, ends = [], set()
        for p in metadata.partitions:
            # the end is the end-of-partition event: some brokers (Tansu) answer a high watermark
            # below the log end, so the start only ever falls early (trimmed below); the margin
            # covers messages that are not results (skipped) among the last N
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s, cached=False)
            if high > low:
                start = max(low, high - 2 * last_batches - 100) if last_batches else low
                starts.append(TopicPartition(topic, p, start))
                ends.add(p)
        if not starts:
            return []
        consumer.assign(starts)
        deadline = time.monotonic() + timeout_s
        while ends and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error() is not None:
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    ends.discard(msg.partition())
                continue
            deadline = time.monotonic() + timeout_s
            try:
                m = ResultsMessage.from_json(msg.value())
            except ValidationError:
                bad += 1
                continue
            if run is None or m.run == run:
                out.append(m)
    finally:
        consumer.close()
    if bad:
        logging.getLogger("dtmon.reference").warning("%d unparsable results messages skipped", bad)
    out.sort(key=lambda m: m.batch_id)
    return out[-last_batches:] if last_batches else out


app = typer.Typer(help="Reference runs: cumulative histograms of a good run for the shape and rate checks.",
                  no_args_is_help=True)


@app.command("save")
def cli_save(
    out: Annotated[Path, typer.Option("--out", help="reference JSON file to write")],
    run: Annotated[Optional[int], typer.Option("--run", help="take every results message of this run")] = None,
    last_batches: Annotated[Optional[int], typer.Option("--last-batches", min=1, help="take the newest N results messages")] = None,
    name: Annotated[Optional[str], typer.Option(help="name stored in the file (default: run and batch range)")] = None,
    bootstrap_servers: Annotated[Optional[str], typer.Option(help="Kafka bootstrap servers [env DTMON_BOOTSTRAP_SERVERS]")] = None,
    results_topic: Annotated[Optional[str], typer.Option(help="results topic [env DTMON_RESULTS_TOPIC]")] = None,
) -> None:
    """Save a reference from the results topic: the messages of --run N, or the last N batches (--last-batches N)."""
    from dtmon.settings import load_settings

    if (run is None) == (last_batches is None):
        raise typer.BadParameter("give exactly one of --run N or --last-batches N")
    settings = load_settings(bootstrap_servers=bootstrap_servers, results_topic=results_topic)
    try:
        messages = read_results(settings.kafka, settings.results_topic, last_batches=last_batches, run=run)
        reference = reference_from_messages(messages, name)
    except ReferenceError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    save_reference(reference, out)
    hits = sum(c.hits for c in reference.chambers)
    typer.echo(f"reference '{reference.name}': {reference.batches} batches, {hits} hits, "
               f"{reference.detector_time_s:.2f} s of detector time -> {out}")
