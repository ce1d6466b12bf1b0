"""The results message: one JSON document per micro-batch on the results topic.

This module is the single definition of that message. The JSON Schema in
``schemas/results-v1.schema.json`` is generated from it (``dtmon schema``) and a test
checks the two agree. Outputs follow the MAPD-B course PDF section 5.2 (tasks 1-4);
histograms carry ``bin_edges`` + ``bin_counts`` as suggested in its section 5.3.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dtmon.hits import CELLS_PER_CHAMBER, N_CHAMBERS

RESULTS_SCHEMA_ID = "dtmon.results"
RESULTS_VERSION = 1


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


class ResultsMessage(BaseModel):
    """Everything dtmon computes for one micro-batch (schema ``dtmon.results`` version 1).

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
            pydantic.ValidationError: the document is not a valid version-1 message.
        """
        return cls.model_validate_json(data)


OCCUPANCY_EDGES: list[float] = [float(i) for i in range(CELLS_PER_CHAMBER + 1)]
MULTIPLICITY_EDGES: list[float] = [i + 0.5 for i in range(CELLS_PER_CHAMBER + 1)]


def json_schema() -> str:
    """The JSON Schema of ``ResultsMessage``, as stored in ``schemas/results-v1.schema.json``."""
    schema = ResultsMessage.model_json_schema(by_alias=True)
    schema["$id"] = f"{RESULTS_SCHEMA_ID}/{RESULTS_VERSION}"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
