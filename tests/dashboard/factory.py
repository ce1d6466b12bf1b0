"""Results messages with known random contents, for the dashboard tests."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dtmon.schema import (
    MULTIPLICITY_EDGES,
    OCCUPANCY_EDGES,
    ChamberHistograms,
    ChannelHealth,
    ChamberQuality,
    ChannelRef,
    CheckResult,
    Histogram,
    QualityReport,
    QualityWindow,
    ResultsMessage,
    Scintillator,
    StreamEvent,
    TimeBoxFit,
)

T0 = 1_790_000_000.0  # epoch s of batch 0
DRIFT_EDGES = [float(e) for e in range(-100, 510, 10)]  # 61 edges, 60 bins of 10 ns


@dataclass
class Batch:
    """A results message and the arrays it was built from, all shape (4, n): occupancy,
    multiplicity, occupancy_scint (E1) and drift (E2; zeros for version 1)."""

    message: ResultsMessage
    occupancy: np.ndarray
    multiplicity: np.ndarray
    occupancy_scint: np.ndarray
    drift: np.ndarray
    malformed: int
    extra_rows: int


def make_batch(batch_id: int, seed: int, *, malformed: int = 0, synthetic: bool = False, v2: bool = False,
               run: int | None = 7, run_state: str = "running", run_started: float = T0 - 60.0,
               detector_time_s: float = 1.5, dead: tuple[tuple[int, int], ...] = (),
               noisy: tuple[tuple[int, int], ...] = (), started: float | None = None,
               quality: tuple[str, str, str, str] | None = None, reasons: tuple[str, ...] | None = None,
               events: tuple[tuple[str, str], ...] = (), rejected: int = 0, reference: str | None = None,
               t0_ns: float = 1.5) -> Batch:
    """Batch ``batch_id`` started at ``started`` (default T0 + 2 s * batch_id), with random
    histograms drawn from ``seed``. ``v2`` adds E1, E2, detector time, scintillator FPGA 1 ch 138,
    channel health (``dead``/``noisy`` as (chamber, channel)) and the run fields. ``quality``
    (one level per chamber; implies ``v2``) makes a version-3 message with a quality report
    (``reasons`` per chamber, dead/noisy lists, time-box fits at ``t0_ns``), ``events``
    ((kind, detail) at the batch start), ``rejected`` messages and a ``reference`` name."""
    v2 = v2 or quality is not None
    rng = np.random.default_rng(seed)
    occupancy = rng.integers(0, 30, size=(4, 64))
    multiplicity = rng.integers(0, 8, size=(4, 64)) * (np.arange(1, 65) <= 4)  # k <= 4: sum of k x orbits <= hits
    extra_rows = int(rng.integers(0, 50))  # non-hit rows (HEAD != 2)
    for c, ch in dead:
        occupancy[c, ch] = 0
    for c, ch in noisy:
        occupancy[c, ch] *= 8
    occupancy_scint = rng.integers(0, occupancy + 1) if v2 else np.zeros((4, 64), dtype=int)
    centres = (np.array(DRIFT_EDGES[:-1]) + np.array(DRIFT_EDGES[1:])) / 2
    in_box = (centres > 0) & (centres < 390)  # a time box 0-390 ns over a flat background
    drift = rng.poisson(np.where(in_box, 12.0, 1.0), size=(4, len(centres))) if v2 else np.zeros((4, 60), dtype=int)
    chambers = [
        ChamberHistograms(
            chamber=c,
            hits=int(occupancy[c].sum()),
            occupancy=Histogram(bin_edges=OCCUPANCY_EDGES, bin_counts=occupancy[c].tolist()),
            multiplicity=Histogram(bin_edges=MULTIPLICITY_EDGES, bin_counts=multiplicity[c].tolist()),
            occupancy_scint=Histogram(bin_edges=OCCUPANCY_EDGES, bin_counts=occupancy_scint[c].tolist()) if v2 else None,
            drift_time=Histogram(bin_edges=DRIFT_EDGES, bin_counts=drift[c].tolist()) if v2 else None,
        )
        for c in range(4)
    ]
    hits = int(occupancy.sum())
    start = T0 + 2.0 * batch_id if started is None else started
    extras = {}
    if v2:
        def refs(pairs):
            return [ChannelRef(chamber=c, channel=ch) for c, ch in pairs]

        extras = {
            "detector_time_s": detector_time_s,
            "orbit_jumps": 0,
            "scintillator": Scintillator(fpga=1, channel=138),
            "orbits_with_scintillator": int(rng.integers(1, 20)),
            "channel_health": ChannelHealth(window_batches=30, noisy_factor=5.0, dead=refs(dead), noisy=refs(noisy)),
            "run": run,
            "run_state": run_state,
            "run_started": run_started,
        }
    if quality is not None:
        extras.update(v3_fields(quality, reasons, dead, noisy, events, rejected, reference, t0_ns, start))
    message = ResultsMessage(
        version=3 if quality is not None else 2 if v2 else 1,
        batch_id=batch_id,
        synthetic=synthetic,
        trigger_interval_s=2.0,
        batch_started=start,
        published=start + 0.25,
        rows_read=hits + extra_rows + malformed,
        malformed_rows=malformed,
        hits=hits,
        hits_outside_chambers=0,
        orbits_with_hits=int(rng.integers(100, 200)),
        chambers=chambers,
        **extras,
    )
    return Batch(message, occupancy, multiplicity, occupancy_scint, drift, malformed, extra_rows)


def v3_fields(levels: tuple[str, str, str, str], reasons: tuple[str, ...] | None, dead, noisy, events, rejected: int,
              reference: str | None, t0_ns: float, start: float) -> dict:
    """The version-3 fields of ``make_batch``: the detector quality is the worst chamber's."""
    from dtmon.schema import QUALITY_ORDER

    reasons = reasons or tuple(f"chamber {c} {q}" for c, q in enumerate(levels))
    chambers = [ChamberQuality(
        chamber=c, quality=q, reason=reasons[c],
        checks=[CheckResult(check="rate", quality=q, reason=reasons[c], values={"rate_hz": 100.0 + c})],
        dead_channels=[ch for cc, ch in dead if cc == c], noisy_channels=[ch for cc, ch in noisy if cc == c])
        for c, q in enumerate(levels)]
    worst = max(range(4), key=lambda c: QUALITY_ORDER[levels[c]])
    report = QualityReport(
        quality=levels[worst], reason=f"chamber {worst}: {reasons[worst]}",
        window=QualityWindow(batches=30, hits=12000, detector_time_s=45.0), chambers=chambers,
        time_box=[TimeBoxFit(chamber=c, tagged_hits=900, t0_ns=t0_ns + c, t0_err_ns=0.4, t_max_ns=391.0 + c,
                             t_max_err_ns=0.6, v_drift_um_per_ns=21000.0 / (391.0 - t0_ns), v_drift_err_um_per_ns=0.3)
                  for c in range(4)],
        reference=reference)
    return {"quality": report, "rejected_messages": rejected,
            "events": [StreamEvent(kind=k, time=start, detail=d) for k, d in events],
            "scintillator": Scintillator(fpga=1, channel=138, source="detected",
                                         reason="t0 channel 138 detected: 97% of tagged hits in a time box")}
