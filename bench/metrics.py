"""Pure functions that turn what a scenario recorded into its numbers.

Inputs are plain values: Kafka (timestamp ms, rows) pairs of the raw topic, results
messages (``dtmon.schema.ResultsMessage``), and the processor log text. Times are in
seconds unless a name ends in ``_ms``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from dtmon.schema import ResultsMessage

PROGRESS_LINE = re.compile(r"micro-batch (\d+): (\d+) (?:rows|messages), (\d+) ms")
"""The processor's per-batch progress line (``processor.app.progress_line``): Spark's own
``batchDuration`` (trigger start to batch end, offsets look-up included)."""


def percentile(values, q: float) -> float | None:
    """The ``q``-th percentile (0-100, linear interpolation) of ``values``; None when empty."""
    values = np.asarray(list(values), dtype=float)
    return float(np.percentile(values, q)) if values.size else None


def spark_batch_durations(log_text: str) -> dict[int, tuple[int, float]]:
    """``{batch_id: (input Kafka messages, duration s)}`` from the processor log's progress lines
    (input rows in logs of processors before v4)."""
    return {int(b): (int(rows), int(ms) / 1000.0) for b, rows, ms in PROGRESS_LINE.findall(log_text)}


@dataclass(frozen=True)
class PacingStats:
    """How closely a paced producer kept its target rate.

    ``achieved`` rows/s over the run = rows / (last - first message timestamp + one
    message period); ``per_second`` rows in each full 1-s bin from the first message;
    ``worst_dev`` the largest |bin / target - 1|; ``worst_dev_sliding`` the same over every
    1-s window starting at a message (bursts that straddle a bin edge show here);
    ``total_dev`` = achieved / target - 1.
    """

    rows: int
    span_s: float
    achieved: float
    per_second: list[int]
    total_dev: float
    worst_dev: float | None
    worst_dev_sliding: float | None


def pacing_stats(stamps: list[tuple[int, int]], target: float) -> PacingStats:
    """Pacing of the messages ``stamps`` = [(Kafka timestamp ms, rows), ...] against ``target`` rows/s.

    Raises:
        ValueError: fewer than two messages.
    """
    if len(stamps) < 2:
        raise ValueError("need at least two messages to measure a rate")
    stamps = sorted(stamps)
    ts = np.array([t for t, _ in stamps], dtype=float) / 1000.0
    rows = np.array([r for _, r in stamps])
    period = float(np.median(np.diff(ts))) if len(ts) > 1 else 0.0
    span = float(ts[-1] - ts[0]) + period
    achieved = rows.sum() / span
    n_bins = int(np.floor(ts[-1] - ts[0]))
    per_second = np.bincount(np.floor(ts - ts[0]).astype(int), weights=rows)[:n_bins].astype(int).tolist()
    worst = max((abs(b / target - 1.0) for b in per_second), default=None)
    # every 1-s window that starts at a message and ends before the last one
    cum = np.concatenate([[0], np.cumsum(rows)])
    starts = np.nonzero(ts + 1.0 <= ts[-1])[0]
    ends = np.searchsorted(ts, ts[starts] + 1.0, side="left")
    sliding = (cum[ends] - cum[starts]) / target - 1.0
    worst_sliding = float(np.abs(sliding).max()) if len(sliding) else None
    return PacingStats(int(rows.sum()), span, float(achieved), per_second, float(achieved / target - 1.0), worst,
                       worst_sliding)


@dataclass(frozen=True)
class StreamStats:
    """What the processor did on a live stream, from its results messages and log.

    Batches with rows only; the first ``warmup`` of them (Spark's first-batch warm-up)
    are left out of every statistic except ``first_batch_s`` (the first batch counted).

    Attributes:
        batches: steady batches counted.
        rows: rows in those batches.
        rows_per_s: rows / (published of the last - published of the last warm-up batch), or
            with ``warmup=0`` and ``since``: rows / (published of the last - ``since``).
        capacity_rows_per_s: rows / sum of batch durations (what the processor could do flat out).
        batch_p50, batch_p95: Spark batch duration, s (``published - batch_started`` if the
            log has no progress lines).
        over_trigger: steady batches whose duration exceeded the trigger interval.
        latency_oldest_p50/p95: ``published - produced_first`` (the batch's oldest row), s.
        latency_newest_p50/p95: ``published - produced_last`` (the batch's newest row), s.
        lag_growth_s: mean oldest-row latency of the last third of the steady batches minus
            that of the first third (a growing backlog makes it grow).
        first_batch_s: duration of the first batch with rows.
        synthetic: every batch says ``synthetic: true``.
    """

    batches: int
    rows: int
    rows_per_s: float | None
    capacity_rows_per_s: float | None
    batch_p50: float | None
    batch_p95: float | None
    batch_max: float | None
    over_trigger: int
    latency_oldest_p50: float | None
    latency_oldest_p95: float | None
    latency_newest_p50: float | None
    latency_newest_p95: float | None
    lag_growth_s: float | None
    first_batch_s: float | None
    duration_source: str
    synthetic: bool


def stream_stats(messages: list[ResultsMessage], log_text: str, trigger_s: float, warmup: int = 2,
                 since: float | None = None, until: float | None = None) -> StreamStats:
    """Statistics of a processor run (see ``StreamStats``).

    Only batches that started in [``since``, ``until``] (epoch s) count, when given.
    """
    with_rows = sorted((m for m in messages if m.rows_read > 0), key=lambda m: m.batch_id)
    with_rows = [m for m in with_rows if (since is None or m.batch_started >= since)
                 and (until is None or m.batch_started <= until)]
    spark = spark_batch_durations(log_text)
    source = "spark batchDuration (processor log)" if spark else "published - batch_started (results)"

    def duration(m: ResultsMessage) -> float:
        return spark[m.batch_id][1] if m.batch_id in spark else m.published - m.batch_started

    steady = with_rows[warmup:]
    durations = [duration(m) for m in steady]
    oldest = [m.published - m.produced_first for m in steady if m.produced_first is not None]
    newest = [m.published - m.produced_last for m in steady if m.produced_last is not None]
    rows = sum(m.rows_read for m in steady)
    rate = None
    if steady and since is not None and warmup == 0:
        span = steady[-1].published - since
        rate = rows / span if span > 0 else None
    elif steady and len(with_rows) > warmup and warmup > 0:
        span = steady[-1].published - with_rows[warmup - 1].published
        rate = rows / span if span > 0 else None
    elif len(steady) > 1:
        span = steady[-1].published - steady[0].published
        rate = (rows - steady[0].rows_read) / span if span > 0 else None
    growth = None
    if len(oldest) >= 6:
        third = len(oldest) // 3
        growth = float(np.mean(oldest[-third:]) - np.mean(oldest[:third]))
    return StreamStats(
        batches=len(steady),
        rows=rows,
        rows_per_s=rate,
        capacity_rows_per_s=rows / sum(durations) if durations and sum(durations) > 0 else None,
        batch_p50=percentile(durations, 50),
        batch_p95=percentile(durations, 95),
        batch_max=max(durations, default=None),
        over_trigger=sum(d > trigger_s for d in durations),
        latency_oldest_p50=percentile(oldest, 50),
        latency_oldest_p95=percentile(oldest, 95),
        latency_newest_p50=percentile(newest, 50),
        latency_newest_p95=percentile(newest, 95),
        lag_growth_s=growth,
        first_batch_s=duration(with_rows[0]) if with_rows else None,
        duration_source=source,
        synthetic=bool(with_rows) and all(m.synthetic for m in with_rows),
    )


def summed_results(messages: list[ResultsMessage]) -> dict:
    """Totals over batches: rows, hits, per-chamber hits (4,), occupancy and multiplicity (4, 64) as lists."""
    occupancy = np.zeros((4, 64), dtype=np.int64)
    multiplicity = np.zeros((4, 64), dtype=np.int64)
    chamber_hits = np.zeros(4, dtype=np.int64)
    for m in messages:
        for c in m.chambers:
            chamber_hits[c.chamber] += c.hits
            occupancy[c.chamber] += c.occupancy.bin_counts
            multiplicity[c.chamber] += c.multiplicity.bin_counts
    return {
        "rows": sum(m.rows_read for m in messages),
        "malformed": sum(m.malformed_rows for m in messages),
        "hits": sum(m.hits for m in messages),
        "hits_per_chamber": chamber_hits.tolist(),
        "occupancy": occupancy.tolist(),
        "multiplicity": multiplicity.tolist(),
    }
