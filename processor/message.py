"""The results message of one micro-batch, built from its aggregates (pure)."""

from __future__ import annotations

from dtmon.hits import N_CHAMBERS
from dtmon.schema import (
    MULTIPLICITY_EDGES,
    OCCUPANCY_EDGES,
    ChamberHistograms,
    ChannelHealth,
    Histogram,
    QualityReport,
    ResultsMessage,
    Scintillator,
    StreamEvent,
)
from processor.reduce import BatchAggregates
from processor.state import RunStatus


def build_message(
    batch_id: int,
    agg: BatchAggregates,
    *,
    trigger_interval_s: float,
    batch_started: float,
    published: float,
    health: ChannelHealth | None = None,
    run: RunStatus | None = None,
    quality: QualityReport | None = None,
    scintillator: Scintillator | None = None,
    events: list[StreamEvent] | None = None,
) -> ResultsMessage:
    """The results message (version ``dtmon.schema.RESULTS_VERSION``) of one micro-batch (pure).

    Args:
        batch_id: Spark micro-batch id.
        agg: the batch's aggregates.
        trigger_interval_s: the query's trigger interval in s.
        batch_started, published: wall-clock times in epoch s.
        health: dead/noisy channels (``processor.quality.QualityMonitor.update``).
        run: the run fields from ``processor.state.RunTracker``.
        quality, scintillator, events: from ``processor.quality.QualityMonitor.update``
            (default: no quality, ``agg.scintillator`` without source, no events); the
            batch's rejected raw messages are added as ``rejected_message`` events (``rejected_events``).
    """
    run = run or RunStatus()
    chambers = [
        ChamberHistograms(
            chamber=c,
            hits=int(agg.occupancy[c].sum()),
            occupancy=Histogram(bin_edges=OCCUPANCY_EDGES, bin_counts=agg.occupancy[c].tolist()),
            multiplicity=Histogram(bin_edges=MULTIPLICITY_EDGES, bin_counts=agg.multiplicity[c].tolist()),
            occupancy_scint=Histogram(bin_edges=OCCUPANCY_EDGES, bin_counts=agg.occupancy_scint[c].tolist()),
            drift_time=Histogram(bin_edges=agg.drift_edges, bin_counts=agg.drift_time[c].tolist()),
        )
        for c in range(N_CHAMBERS)
    ]
    ms = lambda v: None if v is None else v / 1000.0  # noqa: E731
    return ResultsMessage(
        batch_id=batch_id,
        synthetic=agg.synthetic,
        trigger_interval_s=trigger_interval_s,
        batch_started=batch_started,
        published=published,
        produced_first=ms(agg.produced_first_ms),
        produced_last=ms(agg.produced_last_ms),
        rows_read=agg.rows_read,
        malformed_rows=agg.malformed_rows,
        hits=agg.hits,
        hits_outside_chambers=agg.hits_outside_chambers,
        orbit_min=agg.orbit_min,
        orbit_max=agg.orbit_max,
        orbits_with_hits=agg.orbits_with_hits,
        chambers=chambers,
        detector_time_s=agg.detector_time_s,
        orbit_jumps=agg.orbit_jumps,
        scintillator=scintillator or Scintillator(fpga=agg.scintillator[0], channel=agg.scintillator[1]),
        orbits_with_scintillator=agg.orbits_with_scintillator,
        channel_health=health,
        run=run.run,
        run_state=run.state,
        run_started=run.started,
        quality=quality,
        events=[*(events or []), *rejected_events(agg, published)],
        rejected_messages=agg.rejected_messages,
    )


def rejected_events(agg: BatchAggregates, seen: float) -> list[StreamEvent]:
    """One ``rejected_message`` event per rejected raw message the batch kept a line of
    (``topic/partition@offset: reason``), and one saying how many more were left out."""
    events = [StreamEvent(kind="rejected_message", time=seen, detail=d) for d in agg.rejected_details]
    more = agg.rejected_messages - len(agg.rejected_details)
    if more > 0:
        events.append(StreamEvent(kind="rejected_message", time=seen, detail=f"{more} more raw message(s) rejected"))
    return events
