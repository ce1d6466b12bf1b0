"""The results message: one JSON document per micro-batch on the results topic.

This module is the single definition of that message. The JSON Schema in
``schemas/results-v<VERSION>.schema.json`` is generated from it (``dtmon schema``) and a test
checks the two agree. Outputs follow the MAPD-B course PDF section 5.2 (tasks 1-4);
histograms carry ``bin_edges`` + ``bin_counts`` as suggested in its section 5.3.
"""

from __future__ import annotations

import json

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dtmon.hits import CELLS_PER_CHAMBER, N_CHAMBERS, SCINT_CHAMBER_OFFSET_NS  # noqa: F401 - re-exported

RESULTS_SCHEMA_ID = "dtmon.results"
RESULTS_VERSION = 3
"""Version 2 adds the physics extras (PDF section 5.2.4), channel health and runs; version 3
adds data-quality verdicts (``quality``), time-box fits, how the scintillator channel was
chosen and stream events. Every older field is unchanged, and a version-1 or -2 message still
parses (new fields default)."""

QualityLevel = Literal["good", "warning", "bad", "null"]
"""Quality of a checked object, as ALICE QualityControl's Good / Medium / Bad / Null:
``null`` means not enough statistics (or no data) to judge."""

QUALITY_ORDER: dict[str, int] = {"null": 0, "good": 1, "warning": 2, "bad": 3}
"""Severity used to aggregate qualities: the worst non-null quality wins; all null gives null."""


class Histogram(BaseModel):
    """A 1-D histogram: ``len(bin_edges) == len(bin_counts) + 1``; bin i is [edge i, edge i+1)."""

    model_config = ConfigDict(frozen=True)

    bin_edges: list[float]
    bin_counts: list[int]

    @model_validator(mode="after")
    def _edges_match_counts(self) -> "Histogram":
        if len(self.bin_edges) != len(self.bin_counts) + 1:
            raise ValueError(f"{len(self.bin_edges)} edges for {len(self.bin_counts)} counts")
        return self


class ChamberHistograms(BaseModel):
    """Per-chamber outputs of one micro-batch."""

    model_config = ConfigDict(frozen=True)

    chamber: int = Field(ge=0, lt=N_CHAMBERS)
    hits: int = Field(ge=0, description="hits in this chamber (PDF 5.2 task 2)")
    occupancy: Histogram = Field(
        description="hits per local channel TDC_CHANNEL mod 64; 64 unit bins, edges 0..64 (task 3)"
    )
    multiplicity: Histogram = Field(
        description="orbits by number of distinct active channels k; 64 unit bins centred on k=1..64, "
        "edges 0.5..64.5; orbits without hits in this chamber are not counted (task 4)"
    )
    occupancy_scint: Histogram | None = Field(
        None, description="v2, extra E1: occupancy using only orbits with a scintillator hit; edges 0..64"
    )
    drift_time: Histogram | None = Field(
        None,
        description="v2, extra E2: DRIFTIME = t_hit - t_scint + offset[chamber] in ns, for hits in orbits with a "
        "scintillator hit (earliest one); should show the 0-390 ns time box",
    )


class ChannelRef(BaseModel):
    """One chamber channel (local channel 0-63 = TDC_CHANNEL mod 64)."""

    model_config = ConfigDict(frozen=True)

    chamber: int = Field(ge=0, lt=N_CHAMBERS)
    channel: int = Field(ge=0, lt=CELLS_PER_CHAMBER)


class ChannelHealth(BaseModel):
    """Dead and noisy channels of the check window, at most ``window_batches`` micro-batches (version 2).

    Since version 3 the lists are those of the quality report's ``dead_channels`` and
    ``noisy_channels`` checks (Poisson-aware dead channels; noisy above ``noisy_factor``
    times the chamber median, with hysteresis).
    """

    model_config = ConfigDict(frozen=True)

    window_batches: int = Field(ge=1)
    noisy_factor: float = Field(gt=1)
    dead: list[ChannelRef] = Field(default_factory=list)
    noisy: list[ChannelRef] = Field(default_factory=list)


class Scintillator(BaseModel):
    """The channel used as the external t0 (course PDF: FPGA 1, TDC_CHANNEL 128)."""

    model_config = ConfigDict(frozen=True)

    fpga: int = Field(ge=0, le=7)
    channel: int = Field(ge=0, le=511)
    source: Literal["configured", "detected", "default"] | None = Field(
        None, description="v3: how the channel was chosen: set by the user, found in the data, or the PDF default"
    )
    reason: str | None = Field(None, description="v3: one line saying why this channel was chosen")


class CheckResult(BaseModel):
    """The verdict of one check on one object (a chamber or the whole detector), version 3."""

    model_config = ConfigDict(frozen=True)

    check: str = Field(description="check name, e.g. rate, dead_channels, noisy_channels, time_box, "
                       "occupancy_shape, drift_time_shape, scintillator")
    quality: QualityLevel
    reason: str = Field(description="one line a shifter reads, with the numbers behind the verdict")
    values: dict[str, float | int | str | bool | None | list[int] | list[float]] = Field(
        default_factory=dict, description="the numbers behind the verdict (units in the key names: _hz, _ns, _um_per_ns)"
    )


class TimeBoxFit(BaseModel):
    """Time-box fit of one chamber's drift-time histogram (version 3).

    t0 at the rising edge, t_max at the falling edge; drift velocity = 21 mm / (t_max - t0)
    (half a 42 mm cell, course PDF section 4.2). Fields are None when the fit was not done.
    """

    model_config = ConfigDict(frozen=True)

    chamber: int = Field(ge=0, lt=N_CHAMBERS)
    tagged_hits: int = Field(ge=0, description="scintillator-tagged hits in the fitted histogram")
    t0_ns: float | None = None
    t0_err_ns: float | None = None
    t_max_ns: float | None = None
    t_max_err_ns: float | None = None
    v_drift_um_per_ns: float | None = None
    v_drift_err_um_per_ns: float | None = None


class ChamberQuality(BaseModel):
    """Quality of one chamber: the worst of its checks, with that check's reason (version 3)."""

    model_config = ConfigDict(frozen=True)

    chamber: int = Field(ge=0, lt=N_CHAMBERS)
    quality: QualityLevel
    reason: str
    checks: list[CheckResult] = Field(default_factory=list)
    dead_channels: list[int] = Field(default_factory=list, description="local channels 0-63 judged dead")
    noisy_channels: list[int] = Field(default_factory=list, description="local channels 0-63 judged noisy")


class QualityWindow(BaseModel):
    """What the checks judged: the last ``batches`` micro-batches (version 3)."""

    model_config = ConfigDict(frozen=True)

    batches: int = Field(ge=0)
    hits: int = Field(ge=0, description="chamber hits in the window")
    detector_time_s: float = Field(ge=0, description="detector (orbit counter) time the window spans, s")


class QualityReport(BaseModel):
    """Data-quality verdict of a window of micro-batches (version 3).

    ``quality`` is the worst of the chambers and the detector-wide checks, ``reason`` the
    reason of the object that set it (prefixed with the chamber).
    """

    model_config = ConfigDict(frozen=True)

    quality: QualityLevel
    reason: str
    window: QualityWindow
    chambers: list[ChamberQuality] = Field(min_length=N_CHAMBERS, max_length=N_CHAMBERS)
    detector: list[CheckResult] = Field(default_factory=list, description="detector-wide checks, e.g. scintillator")
    time_box: list[TimeBoxFit] = Field(default_factory=list)
    reference: str | None = Field(None, description="name of the reference run the shapes were compared with")


class StreamEvent(BaseModel):
    """Something that happened once, shown on the timeline, not as a lasting alarm (version 3).

    Kinds: ``orbit_jump`` (ORBIT_CNT reset or gap), ``checkpoint_reset`` (offsets refused
    and reset), ``rejected_message`` (a raw message failed validation), ``run_start``,
    ``run_end``.
    """

    model_config = ConfigDict(frozen=True)

    kind: str
    time: float = Field(description="wall-clock time the processor saw it (epoch s)")
    detail: str = Field(description="one line: what, where (topic/partition@offset), how many")


class ResultsMessage(BaseModel):
    """Everything dtmon computes for one micro-batch (schema ``dtmon.results``, version ``RESULTS_VERSION``).

    Times are Unix epoch seconds (float, UTC). ``produced_first``/``produced_last`` are
    the Kafka timestamps of the oldest and newest raw message read in the batch, so
    ``published - produced_first`` is the batch's worst end-to-end latency.
    """

    model_config = ConfigDict(frozen=True)

    schema_id: str = Field(RESULTS_SCHEMA_ID, alias="schema")
    version: int = RESULTS_VERSION
    batch_id: int = Field(ge=0, description="Spark micro-batch id")
    synthetic: bool = Field(False, description="true when the rows come from the synthetic generator")
    trigger_interval_s: float = Field(gt=0)
    batch_started: float = Field(description="wall-clock time the micro-batch started (epoch s)")
    published: float = Field(description="wall-clock time the message was built (epoch s)")
    produced_first: float | None = Field(None, description="oldest raw-message timestamp in the batch (epoch s)")
    produced_last: float | None = Field(None, description="newest raw-message timestamp in the batch (epoch s)")
    rows_read: int = Field(ge=0, description="DAQ rows read from the raw topic, every HEAD, malformed included")
    malformed_rows: int = Field(ge=0, description="rows that could not be decoded (counted, not used)")
    hits: int = Field(ge=0, description="rows with HEAD == 2 (PDF 5.2 task 1)")
    hits_outside_chambers: int = Field(ge=0, description="HEAD == 2 rows on channels > 127 (scintillator, trigger)")
    orbit_min: int | None = Field(None, description="lowest ORBIT_CNT among the hits")
    orbit_max: int | None = Field(None, description="highest ORBIT_CNT among the hits")
    orbits_with_hits: int = Field(0, ge=0, description="distinct ORBIT_CNT values among chamber hits")
    chambers: list[ChamberHistograms] = Field(min_length=N_CHAMBERS, max_length=N_CHAMBERS)

    # --- version 2 -------------------------------------------------------------
    detector_time_s: float | None = Field(
        None, ge=0, description="v2: detector (orbit counter) time the batch's hits span, in s; "
        "gaps longer than the processor's max orbit gap (counter resets, pauses) are left out"
    )
    orbit_jumps: int = Field(0, ge=0, description="v2: ORBIT_CNT gaps longer than the max orbit gap (e.g. a counter reset)")
    scintillator: Scintillator | None = Field(None, description="v2: the t0 channel used for E1/E2")
    orbits_with_scintillator: int = Field(0, ge=0, description="v2: distinct orbits with a scintillator hit")
    channel_health: ChannelHealth | None = Field(None, description="v2: dead and noisy channels")
    run: int | None = Field(None, ge=0, description="v2: run number from the producer (file name or flag)")
    run_state: Literal["running", "ended"] | None = Field(None, description="v2: ended once the run's end marker is read")
    run_started: float | None = Field(None, description="v2: wall-clock time the producer started the run (epoch s)")

    # --- version 3 -------------------------------------------------------------
    quality: QualityReport | None = Field(None, description="v3: data-quality verdict over the check window")
    events: list[StreamEvent] = Field(default_factory=list, description="v3: events seen in this micro-batch")
    rejected_messages: int = Field(0, ge=0, description="v3: raw messages that failed validation in this batch (skipped, logged)")

    @property
    def hits_per_chamber(self) -> list[int]:
        """Hits in chambers 0..3, shape (4,)."""
        return [c.hits for c in self.chambers]

    def to_json(self) -> bytes:
        """Serialise with the wire field names (``schema``, not ``schema_id``)."""
        return self.model_dump_json(by_alias=True).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> "ResultsMessage":
        """Parse and validate a results message.

        Raises:
            pydantic.ValidationError: the document is not a valid results message.
        """
        return cls.model_validate_json(data)


OCCUPANCY_EDGES: list[float] = [float(i) for i in range(CELLS_PER_CHAMBER + 1)]
MULTIPLICITY_EDGES: list[float] = [i + 0.5 for i in range(CELLS_PER_CHAMBER + 1)]


def json_schema() -> str:
    """The JSON Schema of ``ResultsMessage``, as stored in ``schemas/results-v<VERSION>.schema.json``."""
    schema = ResultsMessage.model_json_schema(by_alias=True)
    schema["$id"] = f"{RESULTS_SCHEMA_ID}/{RESULTS_VERSION}"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
