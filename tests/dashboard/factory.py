"""Results messages with known random contents, for the dashboard tests."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dtmon.schema import MULTIPLICITY_EDGES, OCCUPANCY_EDGES, ChamberHistograms, Histogram, ResultsMessage

T0 = 1_790_000_000.0  # epoch s of batch 0


@dataclass
class Batch:
    """A results message and the arrays it was built from: occupancy and multiplicity (4, 64)."""

    message: ResultsMessage
    occupancy: np.ndarray
    multiplicity: np.ndarray
    malformed: int
    extra_rows: int


def make_batch(batch_id: int, seed: int, *, malformed: int = 0, synthetic: bool = False) -> Batch:
    """Batch ``batch_id`` started at T0 + 2 s * batch_id, with random histograms drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    occupancy = rng.integers(0, 30, size=(4, 64))
    multiplicity = rng.integers(0, 8, size=(4, 64))
    extra_rows = int(rng.integers(0, 50))  # non-hit rows (HEAD != 2)
    chambers = [
        ChamberHistograms(
            chamber=c,
            hits=int(occupancy[c].sum()),
            occupancy=Histogram(bin_edges=OCCUPANCY_EDGES, bin_counts=occupancy[c].tolist()),
            multiplicity=Histogram(bin_edges=MULTIPLICITY_EDGES, bin_counts=multiplicity[c].tolist()),
        )
        for c in range(4)
    ]
    hits = int(occupancy.sum())
    message = ResultsMessage(
        batch_id=batch_id,
        synthetic=synthetic,
        trigger_interval_s=2.0,
        batch_started=T0 + 2.0 * batch_id,
        published=T0 + 2.0 * batch_id + 0.25,
        rows_read=hits + extra_rows + malformed,
        malformed_rows=malformed,
        hits=hits,
        hits_outside_chambers=0,
        chambers=chambers,
    )
    return Batch(message, occupancy, multiplicity, malformed, extra_rows)
