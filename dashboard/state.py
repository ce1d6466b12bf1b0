"""What the dashboard shows, as pure data (no Bokeh, no Kafka).

The Kafka consumer thread writes to one ``ResultsStore`` per server (``ingest``,
``record_invalid``, ``set_broker``); every browser session reads ``snapshot()`` from its
own periodic callback and picks its view with a ``ViewChoice``:

* **current** — the last micro-batch;
* **window** — the sum of the last N micro-batches of the current accumulation;
* **cumulative** — the store's running sum since the run started (or since the first
  batch this server saw of it), minus the session's own Reset baseline.

Reset is **per browser session** (like esslivedata): a session remembers the
cumulative sums at the moment its Reset was pressed and subtracts them; other
sessions and the store are untouched. The store restarts its cumulative sums (a new
*epoch*) when the run number changes or a histogram's bin edges change (processor
reconfigured); windows never mix epochs and a Reset baseline of an older epoch is void.
"""

from __future__ import annotations

import datetime
import html
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from dtmon.hits import CELLS_PER_CHAMBER, N_CHAMBERS, cell_of, daq_channel_of, layer_of
from dtmon.reference import Reference
from dtmon.validation import parse_results
from dtmon.schema import (
    MULTIPLICITY_EDGES,
    OCCUPANCY_EDGES,
    QUALITY_ORDER,
    ResultsMessage,
    StreamEvent,
)

log = logging.getLogger(__name__)

#: Per-chamber histogram kinds of a results message (``ChamberHistograms`` field names).
KINDS = ("occupancy", "occupancy_scint", "multiplicity", "drift_time")
#: Bins shown before any message carried the kind (drift_time has no fixed bins).
DEFAULT_EDGES = {"occupancy": OCCUPANCY_EDGES, "occupancy_scint": OCCUPANCY_EDGES, "multiplicity": MULTIPLICITY_EDGES}
MODES = ("current", "window", "cumulative")
CELL_WIDTH_MM = 42.0
LAYER_HEIGHT_MM = 13.0

#: Per-batch time-series columns, one value per kept batch, oldest first.
SERIES_COLUMNS = (
    "batch_id",
    "time_ms",  # batch_started, epoch ms (UTC), for a Bokeh datetime axis
    "duration_s",  # published - batch_started, s
    "total_hits",  # hits/batch
    *(f"hits_ch{c}" for c in range(N_CHAMBERS)),  # hits/batch per chamber
    *(f"rate_ch{c}" for c in range(N_CHAMBERS)),  # Hz of detector time per chamber, NaN without detector time
    "rows_read",
    "malformed_rows",
)


@dataclass(frozen=True)
class HistogramSet:
    """One histogram per chamber on shared bins: ``edges`` shape (n+1,), ``counts`` int64 shape (4, n)."""

    edges: list[float]
    counts: np.ndarray


def empty_histograms(edges: list[float]) -> HistogramSet:
    """Zero counts on ``edges``."""
    return HistogramSet(list(edges), np.zeros((N_CHAMBERS, len(edges) - 1), dtype=np.int64))


@dataclass(frozen=True)
class Totals:
    """Sums over a set of micro-batches of one accumulation epoch.

    ``hits`` shape (4,) hits per chamber; ``detector_hits`` (4,) the hits of the batches
    that carry ``detector_time_s`` (version 2), whose sum is ``detector_time_s`` (s);
    ``wall_time_s`` is the summed wall time of the batches (see ``wall_time_s``);
    ``hists`` holds only the kinds some batch carried.
    """

    batches: int = 0
    first_batch_id: int | None = None
    last_batch_id: int | None = None
    hits: np.ndarray = field(default_factory=lambda: np.zeros(N_CHAMBERS, dtype=np.int64))
    detector_hits: np.ndarray = field(default_factory=lambda: np.zeros(N_CHAMBERS, dtype=np.int64))
    detector_time_s: float = 0.0
    wall_time_s: float = 0.0
    orbits_with_hits: int = 0
    orbits_with_scintillator: int = 0
    hists: Mapping[str, HistogramSet] = field(default_factory=dict)

    def histograms(self, kind: str) -> HistogramSet | None:
        """The ``kind`` histograms, zeros on the default bins if absent, None for an absent drift_time."""
        if kind in self.hists:
            return self.hists[kind]
        return empty_histograms(DEFAULT_EDGES[kind]) if kind in DEFAULT_EDGES else None


def wall_time_s(message: ResultsMessage, previous: ResultsMessage | None) -> float:
    """Wall time a micro-batch covers, s: ``batch_started - previous.batch_started``.

    Falls back to the trigger interval for the first batch seen or when the clocks go
    backwards. Idle time between batches (no input, processor down) is included, so a
    wall-time rate is what a shifter saw on the clock.
    """
    if previous is not None and message.batch_started > previous.batch_started:
        return message.batch_started - previous.batch_started
    return message.trigger_interval_s


def batch_totals(message: ResultsMessage, wall_s: float) -> Totals:
    """``Totals`` of one micro-batch.

    Raises:
        ValueError: the four chambers of one kind do not share bin edges.
    """
    hists: dict[str, HistogramSet] = {}
    for kind in KINDS:
        per_chamber = [(ch.chamber, getattr(ch, kind)) for ch in message.chambers]
        present = [(c, h) for c, h in per_chamber if h is not None]
        if not present:
            continue
        edges = list(present[0][1].bin_edges)
        counts = np.zeros((N_CHAMBERS, len(edges) - 1), dtype=np.int64)
        for c, h in present:
            if list(h.bin_edges) != edges:
                raise ValueError(f"batch {message.batch_id} chamber {c}: {kind} bin edges differ")
            counts[c] += np.asarray(h.bin_counts, dtype=np.int64)
        hists[kind] = HistogramSet(edges, counts)
    hits = np.asarray(message.hits_per_chamber, dtype=np.int64)
    timed = message.detector_time_s is not None
    return Totals(
        batches=1,
        first_batch_id=message.batch_id,
        last_batch_id=message.batch_id,
        hits=hits,
        detector_hits=hits if timed else np.zeros(N_CHAMBERS, dtype=np.int64),
        detector_time_s=message.detector_time_s or 0.0,
        wall_time_s=wall_s,
        orbits_with_hits=message.orbits_with_hits,
        orbits_with_scintillator=message.orbits_with_scintillator,
        hists=hists,
    )


def add_totals(a: Totals, b: Totals) -> Totals:
    """``a + b`` (``b`` the later batches).

    Raises:
        ValueError: a kind present in both has different bin edges.
    """
    hists = dict(a.hists)
    for kind, h in b.hists.items():
        if kind not in hists:
            hists[kind] = h
        elif hists[kind].edges != h.edges:
            raise ValueError(f"{kind} bin edges differ")
        else:
            hists[kind] = HistogramSet(h.edges, hists[kind].counts + h.counts)
    if not b.batches:
        return replace(a, hists=hists)
    return Totals(
        batches=a.batches + b.batches,
        first_batch_id=a.first_batch_id if a.batches else b.first_batch_id,
        last_batch_id=b.last_batch_id,
        hits=a.hits + b.hits,
        detector_hits=a.detector_hits + b.detector_hits,
        detector_time_s=a.detector_time_s + b.detector_time_s,
        wall_time_s=a.wall_time_s + b.wall_time_s,
        orbits_with_hits=a.orbits_with_hits + b.orbits_with_hits,
        orbits_with_scintillator=a.orbits_with_scintillator + b.orbits_with_scintillator,
        hists=hists,
    )


def sum_totals(items: Iterable[Totals]) -> Totals:
    """Sum of ``items`` in order (empty ``Totals`` for none)."""
    total = Totals()
    for t in items:
        total = add_totals(total, t)
    return total


def subtract_totals(a: Totals, base: Totals) -> Totals:
    """``a - base`` where ``base`` is an earlier state of the same running sum ``a``.

    Counts are clipped at 0 (a replayed micro-batch may have replaced one inside
    ``base``); kinds absent from ``base`` or on other bins are kept whole.
    ``first_batch_id`` becomes None (not known from sums).
    """
    hists = {}
    for kind, h in a.hists.items():
        old = base.hists.get(kind)
        same = old is not None and old.edges == h.edges
        hists[kind] = HistogramSet(h.edges, np.maximum(h.counts - old.counts, 0)) if same else h
    batches = max(a.batches - base.batches, 0)
    return Totals(
        batches=batches,
        first_batch_id=None,
        last_batch_id=a.last_batch_id if batches else None,
        hits=np.maximum(a.hits - base.hits, 0),
        detector_hits=np.maximum(a.detector_hits - base.detector_hits, 0),
        detector_time_s=max(a.detector_time_s - base.detector_time_s, 0.0),
        wall_time_s=max(a.wall_time_s - base.wall_time_s, 0.0),
        orbits_with_hits=max(a.orbits_with_hits - base.orbits_with_hits, 0),
        orbits_with_scintillator=max(a.orbits_with_scintillator - base.orbits_with_scintillator, 0),
        hists=hists,
    )


def series_columns(messages: Iterable[ResultsMessage]) -> dict[str, list[float]]:
    """Time-series columns (``SERIES_COLUMNS``) of ``messages``, one row per message, in order."""
    cols: dict[str, list[float]] = {name: [] for name in SERIES_COLUMNS}
    for m in messages:
        cols["batch_id"].append(m.batch_id)
        cols["time_ms"].append(m.batch_started * 1000.0)
        cols["duration_s"].append(m.published - m.batch_started)
        cols["total_hits"].append(m.hits)
        for c, hits in enumerate(m.hits_per_chamber):
            cols[f"hits_ch{c}"].append(hits)
            det = m.detector_time_s
            cols[f"rate_ch{c}"].append(hits / det if det else math.nan)
        cols["rows_read"].append(m.rows_read)
        cols["malformed_rows"].append(m.malformed_rows)
    return cols



QUALITY_COLOURS = {"good": "#2ca02c", "warning": "#f0b400", "bad": "#d62728", "null": "#9e9e9e"}
"""Tile colour of each quality: green / yellow / red / grey."""
STALE_INTERVALS = 3
"""Results are stale when none arrived for this many trigger intervals."""
CLOCK_SLACK_S = 30.0
"""Allowed difference between the processor's and the dashboard's clocks when judging a message's age, s."""


@dataclass(frozen=True)
class Tile:
    """One tile of the summary strip: ``key`` ("detector" or "chamber-<c>"), ``label``,
    ``quality`` (good/warning/bad/null), one-line ``reason`` and ``detail`` (dead/noisy counts)."""

    key: str
    label: str
    quality: str
    reason: str
    detail: str = ""


def flagged_channels(message: ResultsMessage | None) -> tuple[list[list[int]], list[list[int]]]:
    """Dead and noisy local channels per chamber, each a list of 4 lists: from ``quality.chambers``
    (version 3) when present, else from ``channel_health`` (version 2), else empty."""
    dead: list[list[int]] = [[] for _ in range(N_CHAMBERS)]
    noisy: list[list[int]] = [[] for _ in range(N_CHAMBERS)]
    if message is None:
        return dead, noisy
    if message.quality is not None:
        for cq in message.quality.chambers:
            dead[cq.chamber] = sorted(cq.dead_channels)
            noisy[cq.chamber] = sorted(cq.noisy_channels)
    elif message.channel_health is not None:
        for ref in message.channel_health.dead:
            dead[ref.chamber].append(ref.channel)
        for ref in message.channel_health.noisy:
            noisy[ref.chamber].append(ref.channel)
    return dead, noisy


def quality_tiles(message: ResultsMessage | None) -> list[Tile]:
    """The summary strip: the detector tile then one per chamber (5 tiles).

    Without a message, or for a message without ``quality`` (version < 3), every tile is
    ``null`` with the reason "no verdict".
    """
    dead, noisy = flagged_channels(message)
    details = [f"dead {len(dead[c])} · noisy {len(noisy[c])}" for c in range(N_CHAMBERS)]
    if message is None or message.quality is None:
        why = "no results yet" if message is None else f"no verdict (version-{message.version} results carry no quality)"
        return [Tile("detector", "Detector", "null", why, "")] + [
            Tile(f"chamber-{c}", f"Chamber {c}", "null", why, details[c] if message is not None else "")
            for c in range(N_CHAMBERS)]
    q = message.quality
    tiles = [Tile("detector", "Detector", q.quality, q.reason,
                  f"window {q.window.batches} batches, {q.window.detector_time_s:.0f} s")]
    for cq in sorted(q.chambers, key=lambda cq: cq.chamber):
        tiles.append(Tile(f"chamber-{cq.chamber}", f"Chamber {cq.chamber}", cq.quality, cq.reason,
                          details[cq.chamber]))
    return tiles


@dataclass(frozen=True)
class Freshness:
    """Whether the shown results are current: ``stale`` with a one-line ``reason`` (empty when fresh);
    ``age_s`` since the last results message arrived (None before any); ``limit_s`` the stale limit."""

    stale: bool
    reason: str
    age_s: float | None
    limit_s: float


def freshness(snap: "Snapshot", now: float) -> Freshness:
    """Judge staleness at ``now`` (epoch s).

    Stale when the broker is unreachable, when no results message arrived for
    ``STALE_INTERVALS`` trigger intervals (of the newest message; 2 s before any), when
    the newest message was published longer ago than that plus ``CLOCK_SLACK_S`` (a
    dashboard restarted on an idle topic replays old messages), or before any message.
    """
    last = snap.last
    interval = last.trigger_interval_s if last is not None else 2.0
    limit = STALE_INTERVALS * interval
    age = None if snap.last_update is None else now - snap.last_update
    if snap.broker_reachable is False:
        detail = f": {snap.broker_detail}" if snap.broker_detail else ""
        return Freshness(True, f"broker unreachable{detail}", age, limit)
    if last is None or age is None:
        return Freshness(True, "no results message received yet", age, limit)
    if age > limit:
        return Freshness(True, f"no results for {age:.0f} s (more than {STALE_INTERVALS} trigger intervals = "
                               f"{limit:g} s): processor stopped or lagging", age, limit)
    data_age = now - last.published
    if data_age > limit + CLOCK_SLACK_S:
        return Freshness(True, f"newest results are {data_age:.0f} s old (published "
                               f"{_clock(last.published)} UTC): processor not publishing", age, limit)
    return Freshness(False, "", age, limit)


def _clock(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%H:%M:%S")


class ChannelFlags:
    """Dead/noisy channels currently flagged and the time each was first flagged (epoch s of the
    micro-batch start), updated from every results message in order. A channel no longer flagged
    in a message is dropped; flagged again later, it gets a new time."""

    def __init__(self) -> None:
        self._since: dict[tuple[int, int, str], float] = {}

    def update(self, message: ResultsMessage) -> None:
        """Apply the flags of ``message`` (``flagged_channels``)."""
        dead, noisy = flagged_channels(message)
        now = {(c, ch, status): message.batch_started
               for status, per in (("dead", dead), ("noisy", noisy)) for c in range(N_CHAMBERS) for ch in per[c]}
        self._since = {key: self._since.get(key, t) for key, t in now.items()}

    def rows(self) -> tuple[tuple[int, int, str, float], ...]:
        """(chamber, local channel, status, flagged since) sorted by chamber, status, channel."""
        return tuple(sorted(((c, ch, st, t) for (c, ch, st), t in self._since.items()),
                            key=lambda r: (r[0], r[2], r[1])))


def message_events(message: ResultsMessage) -> list[StreamEvent]:
    """The stream events of a message: its ``events`` (version 3); for a version-2 message
    without events, one ``orbit_jump`` event per batch with ORBIT_CNT jumps."""
    if message.events:
        return list(message.events)
    if message.orbit_jumps and message.version < 3:
        return [StreamEvent(kind="orbit_jump", time=message.batch_started,
                            detail=f"{message.orbit_jumps} ORBIT_CNT jump(s) in batch {message.batch_id}")]
    return []


@dataclass
class TrendBucket:
    """Sums over the micro-batches that started in [``start``, ``end``] (epoch s).

    ``hits``/``detector_time_s``: chamber hits (4,) and detector time of the batches that carry
    detector time; ``t0_sum``/``vd_sum`` with counts ``t0_n``/``vd_n`` (4,) sum the time-box fits
    (ns, µm/ns); ``worst`` (4,) the worst ``QUALITY_ORDER`` code seen per chamber (-1: no verdict).
    """

    start: float
    end: float
    batches: int = 0
    hits: np.ndarray = field(default_factory=lambda: np.zeros(N_CHAMBERS))
    detector_time_s: float = 0.0
    t0_sum: np.ndarray = field(default_factory=lambda: np.zeros(N_CHAMBERS))
    t0_n: np.ndarray = field(default_factory=lambda: np.zeros(N_CHAMBERS))
    vd_sum: np.ndarray = field(default_factory=lambda: np.zeros(N_CHAMBERS))
    vd_n: np.ndarray = field(default_factory=lambda: np.zeros(N_CHAMBERS))
    worst: np.ndarray = field(default_factory=lambda: np.full(N_CHAMBERS, -1))

    def merge(self, other: "TrendBucket") -> None:
        """Add ``other`` into this bucket."""
        self.start, self.end = min(self.start, other.start), max(self.end, other.end)
        self.batches += other.batches
        self.hits = self.hits + other.hits
        self.detector_time_s += other.detector_time_s
        self.t0_sum, self.t0_n = self.t0_sum + other.t0_sum, self.t0_n + other.t0_n
        self.vd_sum, self.vd_n = self.vd_sum + other.vd_sum, self.vd_n + other.vd_n
        self.worst = np.maximum(self.worst, other.worst)


def trend_bucket(message: ResultsMessage) -> TrendBucket:
    """The ``TrendBucket`` of one micro-batch."""
    b = TrendBucket(message.batch_started, message.batch_started, batches=1)
    if message.detector_time_s:
        b.hits = np.asarray(message.hits_per_chamber, dtype=float)
        b.detector_time_s = message.detector_time_s
    if message.quality is not None:
        for fit in message.quality.time_box:
            if fit.t0_ns is not None:
                b.t0_sum[fit.chamber] += fit.t0_ns
                b.t0_n[fit.chamber] += 1
            if fit.v_drift_um_per_ns is not None:
                b.vd_sum[fit.chamber] += fit.v_drift_um_per_ns
                b.vd_n[fit.chamber] += 1
        for cq in message.quality.chambers:
            b.worst[cq.chamber] = QUALITY_ORDER[cq.quality]
    return b


class TrendHistory:
    """Shift trends in bounded memory: at most ``max_buckets`` time buckets.

    Buckets start ``bucket_s`` wide; when there would be more than ``max_buckets``, the width
    doubles and neighbouring buckets merge (so 480 buckets cover 8 h at 60 s, 16 h at 120 s).
    Buckets that end more than ``horizon_s`` before the newest batch are dropped.
    """

    def __init__(self, max_buckets: int = 480, bucket_s: float = 2.0, horizon_s: float = 12 * 3600.0) -> None:
        if max_buckets < 2:
            raise ValueError(f"max_buckets must be >= 2, got {max_buckets}")
        self.max_buckets = max_buckets
        self.bucket_s = bucket_s
        self.horizon_s = horizon_s
        self.buckets: list[TrendBucket] = []

    def add(self, message: ResultsMessage) -> None:
        """Add one micro-batch to the bucket of its start time (one that arrives late joins its own
        bucket, not the newest)."""
        b = trend_bucket(message)
        slot = self._slot(b.start)
        i = len(self.buckets)
        while i > 0 and self._slot(self.buckets[i - 1].start) > slot:
            i -= 1
        if i > 0 and self._slot(self.buckets[i - 1].start) == slot:
            self.buckets[i - 1].merge(b)
        else:
            self.buckets.insert(i, b)
        newest = self.buckets[-1].end
        while self.buckets and self.buckets[0].end < newest - self.horizon_s:
            self.buckets.pop(0)
        while len(self.buckets) > self.max_buckets:
            self.bucket_s *= 2
            merged: list[TrendBucket] = []
            for bucket in self.buckets:
                if merged and self._slot(bucket.start) == self._slot(merged[-1].start):
                    merged[-1].merge(bucket)
                else:
                    merged.append(bucket)
            self.buckets = merged

    def _slot(self, t: float) -> int:
        return math.floor(t / self.bucket_s)

    def columns(self) -> dict[str, list]:
        """One row per bucket, oldest first: ``time_ms`` (bucket middle, epoch ms), ``start_ms``,
        ``end_ms``, ``batches``, per chamber c ``rate_ch{c}`` (Hz of detector time), ``t0_ch{c}`` (ns),
        ``vdrift_ch{c}`` (µm/ns) — NaN when not known — and ``quality_ch{c}`` (worst quality name)."""
        names = {v: k for k, v in QUALITY_ORDER.items()}
        cols: dict[str, list] = {k: [] for k in ("time_ms", "start_ms", "end_ms", "batches")}
        for c in range(N_CHAMBERS):
            for k in ("rate", "t0", "vdrift", "quality"):
                cols[f"{k}_ch{c}"] = []
        for b in self.buckets:
            cols["time_ms"].append((b.start + b.end) * 500.0)
            cols["start_ms"].append(b.start * 1000.0)
            cols["end_ms"].append(b.end * 1000.0)
            cols["batches"].append(b.batches)
            for c in range(N_CHAMBERS):
                cols[f"rate_ch{c}"].append(b.hits[c] / b.detector_time_s if b.detector_time_s > 0 else math.nan)
                cols[f"t0_ch{c}"].append(b.t0_sum[c] / b.t0_n[c] if b.t0_n[c] else math.nan)
                cols[f"vdrift_ch{c}"].append(b.vd_sum[c] / b.vd_n[c] if b.vd_n[c] else math.nan)
                cols[f"quality_ch{c}"].append(names.get(int(b.worst[c]), "null"))
        return cols


def trend_quality_columns(trend: Mapping[str, list]) -> dict[str, list]:
    """Rect columns of the quality-per-chamber strip: one row per (bucket, chamber) with ``x``
    (middle of the rect, epoch ms), ``width`` (ms: from the bucket's start to the next bucket's
    start, for the newest bucket its own span, at least 1 s), ``y`` (chamber), ``quality``, ``colour``."""
    cols: dict[str, list] = {k: [] for k in ("x", "width", "y", "quality", "colour")}
    starts = trend["start_ms"] if "start_ms" in trend else []
    for i, start in enumerate(starts):
        span = starts[i + 1] - start if i + 1 < len(starts) else trend["end_ms"][i] - start
        width = max(span, 1000.0)
        for c in range(N_CHAMBERS):
            q = trend[f"quality_ch{c}"][i]
            cols["x"].append(start + width / 2)
            cols["width"].append(width)
            cols["y"].append(c)
            cols["quality"].append(q)
            cols["colour"].append(QUALITY_COLOURS[q])
    return cols


@dataclass(frozen=True)
class Record:
    """One kept micro-batch: the message, its ``Totals`` and the accumulation epoch it belongs to."""

    message: ResultsMessage
    totals: Totals
    epoch: int


@dataclass(frozen=True)
class Snapshot:
    """Everything a session draws, copied out of the store at one ``version``.

    ``ingests`` counts the messages ingested so far (the histograms change only with it);
    ``records`` are the last ``history`` batches, oldest first; ``cumulative`` sums the
    batches of the current ``epoch`` (one run, same bins) since the store first saw it.
    ``last_update`` is the store clock's time (epoch s) of the last ingested message;
    ``broker_reachable`` is None until the consumer has learnt anything; ``trend`` holds the
    ``TrendHistory.columns`` of every message seen, ``flags`` the ``ChannelFlags.rows``,
    ``events`` the last stream events (oldest first) and ``rejected_messages`` the raw messages
    the processor rejected, summed over every results message seen.
    """

    version: int
    ingests: int
    series: dict[str, list[float]]
    records: tuple[Record, ...]
    cumulative: Totals
    epoch: int
    last_update: float | None
    broker_reachable: bool | None
    broker_detail: str
    invalid_messages: int
    last_invalid: str
    malformed_rows_kept: int
    trend: dict[str, list] = field(default_factory=dict)
    flags: tuple[tuple[int, int, str, float], ...] = ()
    events: tuple[StreamEvent, ...] = ()
    rejected_messages: int = 0

    @property
    def last(self) -> ResultsMessage | None:
        """The newest results message, or None."""
        return self.records[-1].message if self.records else None

    @property
    def last_batch_id(self) -> int | None:
        return self.records[-1].message.batch_id if self.records else None

    @property
    def synthetic(self) -> bool:
        return bool(self.records and self.records[-1].message.synthetic)


class ResultsStore:
    """The last ``history`` results messages, the running cumulative sums and consumer health,
    safe to share between threads.

    ``clock`` (epoch s) stamps ``last_update``; inject a fake one in tests.
    Every change bumps ``version`` by one. Shift trends (``TrendHistory``), channel flags and
    the last ``max_events`` stream events cover every message ingested, not only the kept ones.
    """

    def __init__(self, history: int, clock: Callable[[], float] = time.time, trend: TrendHistory | None = None,
                 max_events: int = 500) -> None:
        if history < 1:
            raise ValueError(f"history must be >= 1, got {history}")
        self._lock = threading.Lock()
        self._clock = clock
        self._records: deque[Record] = deque(maxlen=history)
        self._epoch = 0
        self._run: int | None = None
        self._cumulative = Totals()
        self._version = 0
        self._ingests = 0
        self._last_update: float | None = None
        self._broker: tuple[bool | None, str] = (None, "")
        self._invalid = 0
        self._last_invalid = ""
        self._cached: Snapshot | None = None
        self._trend = trend or TrendHistory()
        self._flags = ChannelFlags()
        self._events: deque[StreamEvent] = deque(maxlen=max_events)
        self._rejected = 0

    @property
    def version(self) -> int:
        """Increases by one on every change; a session redraws when it differs from what it drew."""
        with self._lock:
            return self._version

    def ingest(self, message: ResultsMessage) -> None:
        """Keep ``message`` in batch-id order (dropping the oldest beyond ``history``) and add it to
        the cumulative sums.

        A message with the same batch id as a kept one (a micro-batch Spark replayed after a
        restart) replaces it, in the time series and in the sums. A message with a lower batch
        id than the newest kept one that was also published earlier arrived late (a results
        topic with several partitions): it is placed in batch order (``_ingest_late``), so the
        newest record, hence the run state and "last batch", is always the highest batch id. A
        lower batch id published later is a new query (its checkpoint was cleared): it is newest.
        A new run number, or bin edges that differ from the running sums, start a new epoch.

        Raises:
            ValueError: the chambers' histograms of ``message`` do not share bin edges
                (nothing is kept; the caller counts it with ``record_invalid``).
        """
        with self._lock:
            records = self._records
            newest = records[-1].message if records else None
            if newest is not None and message.batch_id < newest.batch_id and message.published <= newest.published:
                self._ingest_late(message)
                return
            replacing = bool(records) and records[-1].message.batch_id == message.batch_id
            kept = len(records) - 1 if replacing else len(records)
            previous = records[kept - 1].message if kept > 0 else None
            totals = batch_totals(message, wall_time_s(message, previous))
            if replacing:
                old = records.pop()
                if old.epoch == self._epoch:
                    self._cumulative = subtract_totals(self._cumulative, old.totals)
            clash = any(k in self._cumulative.hists and self._cumulative.hists[k].edges != h.edges
                        for k, h in totals.hists.items())
            if message.run != self._run or clash:
                self._epoch += 1
                self._run = message.run
                self._cumulative = Totals()
            self._cumulative = add_totals(self._cumulative, totals)
            records.append(Record(message, totals, self._epoch))
            if not replacing:
                self._trend.add(message)
                self._events.extend(message_events(message))
                self._rejected += message.rejected_messages
            self._flags.update(message)
            self._last_update = self._clock()
            self._ingests += 1
            self._version += 1

    def _ingest_late(self, message: ResultsMessage) -> None:
        """``ingest`` of a message older than the newest kept one (lock held): inserted in batch-id
        order (or only summed when it is older than every kept batch and ``history`` is full).

        It joins the cumulative sums if it belongs to the current run; a batch of an earlier run
        keeps that run's epoch (or none), so it never restarts the accumulation.
        """
        records = self._records
        pos = len(records)
        while pos > 0 and records[pos - 1].message.batch_id > message.batch_id:
            pos -= 1
        previous = records[pos - 1] if pos > 0 else None
        if previous is not None and previous.message.batch_id == message.batch_id:  # a replayed batch
            before = records[pos - 2].message if pos > 1 else None
            totals = batch_totals(message, wall_time_s(message, before))
            if previous.epoch == self._epoch:
                self._cumulative = add_totals(subtract_totals(self._cumulative, previous.totals), totals)
            records[pos - 1] = Record(message, totals, previous.epoch)
        else:
            totals = batch_totals(message, wall_time_s(message, previous.message if previous else None))
            if message.run == self._run:
                epoch = self._epoch
                self._cumulative = add_totals(self._cumulative, totals)
            else:
                epoch = previous.epoch if previous is not None and previous.message.run == message.run else -1
            if pos > 0 or len(records) < (records.maxlen or 0):
                if len(records) == records.maxlen:
                    records.popleft()
                    pos -= 1
                records.insert(pos, Record(message, totals, epoch))
                if pos + 1 < len(records):  # the next batch's wall time now starts at this one
                    nxt = records[pos + 1]
                    redone = batch_totals(nxt.message, wall_time_s(nxt.message, message))
                    if nxt.epoch == self._epoch:
                        self._cumulative = add_totals(subtract_totals(self._cumulative, nxt.totals), redone)
                    records[pos + 1] = Record(nxt.message, redone, nxt.epoch)
            self._trend.add(message)
            self._events.extend(message_events(message))
            self._rejected += message.rejected_messages
        self._last_update = self._clock()  # channel flags stay those of the newest batch
        self._ingests += 1
        self._version += 1

    def ingest_json(self, data: bytes, where: str) -> bool:
        """Parse, check (``dtmon.validation.parse_results``) and ``ingest`` one results message.

        A message that fails the schema or a check of meaning, or that ``ingest`` refuses,
        is counted with ``record_invalid`` (reason prefixed with ``where``, e.g.
        ``minidt-results/0@17``), logged once, and skipped: the kept data is unchanged.

        Returns:
            True when the message was ingested.
        """
        message, problems = parse_results(data)
        if not problems:
            try:
                self.ingest(message)
                return True
            except (ValueError, OverflowError, TypeError) as exc:
                problems = [f"not ingested: {exc}"]
        extra = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        log.error("results message %s rejected: %s%s", where, problems[0], extra)
        self.record_invalid(f"{where}: {problems[0]}{extra}")
        return False

    def record_invalid(self, reason: str) -> None:
        """Count one results message that failed validation; ``reason`` is shown to the shifter."""
        with self._lock:
            self._invalid += 1
            self._last_invalid = reason
            self._version += 1

    def set_broker(self, reachable: bool, detail: str = "") -> None:
        """Record whether the broker answers; bumps ``version`` only when something changed."""
        with self._lock:
            if self._broker != (reachable, detail):
                self._broker = (reachable, detail)
                self._version += 1

    def snapshot(self) -> Snapshot:
        """A consistent copy of everything drawn (computed once per version)."""
        with self._lock:
            if self._cached is None or self._cached.version != self._version:
                self._cached = Snapshot(
                    version=self._version,
                    ingests=self._ingests,
                    series=series_columns(r.message for r in self._records),
                    records=tuple(self._records),
                    cumulative=self._cumulative,
                    epoch=self._epoch,
                    last_update=self._last_update,
                    broker_reachable=self._broker[0],
                    broker_detail=self._broker[1],
                    invalid_messages=self._invalid,
                    last_invalid=self._last_invalid,
                    malformed_rows_kept=sum(r.message.malformed_rows for r in self._records),
                    trend=self._trend.columns(),
                    flags=self._flags.rows(),
                    events=tuple(self._events),
                    rejected_messages=self._rejected,
                )
            return self._cached


@dataclass
class ViewChoice:
    """What one browser session shows: ``mode`` (one of ``MODES``), the window length N
    (batches) and the session's Reset baseline ``(epoch, cumulative at Reset, last batch id)``."""

    mode: str = "window"
    window: int = 30
    baseline: tuple[int, Totals, int | None] | None = None

    def reset(self, snap: Snapshot) -> None:
        """Restart this session's cumulative view at ``snap`` (other sessions are not affected)."""
        self.baseline = (snap.epoch, snap.cumulative, snap.last_batch_id)

    def select(self, snap: Snapshot) -> Totals:
        """The ``Totals`` to draw.

        Raises:
            ValueError: unknown ``mode``.
        """
        if self.mode == "current":
            return snap.records[-1].totals if snap.records else Totals()
        if self.mode == "window":
            same_epoch = [r.totals for r in snap.records if r.epoch == snap.epoch]
            return sum_totals(same_epoch[-max(self.window, 1):])
        if self.mode == "cumulative":
            if self.baseline is not None and self.baseline[0] == snap.epoch:
                return subtract_totals(snap.cumulative, self.baseline[1])
            return snap.cumulative
        raise ValueError(f"unknown view mode {self.mode!r}")

    def caption(self, snap: Snapshot, shown: Totals) -> str:
        """One line saying which batches the histograms sum (HTML)."""
        last = snap.last
        run = f"run {last.run}" if last is not None and last.run is not None else "no run number"
        span = f"batches {shown.first_batch_id}–{shown.last_batch_id}" if shown.first_batch_id is not None else ""
        if self.mode == "current":
            what = f"last micro-batch (batch {shown.last_batch_id})" if shown.batches else "last micro-batch (none yet)"
        elif self.mode == "window":
            what = f"last {self.window} micro-batches of {run}: {shown.batches} summed" + (f", {span}" if span else "")
        elif self.baseline is not None and self.baseline[0] == snap.epoch:
            what = (f"cumulative since <b>Reset</b> (after batch {self.baseline[2]}, this browser tab only): "
                    f"{shown.batches} batches")
        else:
            what = f"cumulative over {run} since the dashboard first saw it: {shown.batches} batches" + (
                f", {span}" if span else "")
        return f"Showing: {what}"


RATE_DEFINITION = ("Rate = hits ÷ detector time, in Hz: detector time is the orbit-counter span of the "
                   "micro-batches (25 ns × 3564 BX per orbit; ORBIT_CNT jumps left out)")
"""The one rate definition the dashboard uses, stated once on the page."""


def rate_columns(t: Totals) -> dict[str, list]:
    """Rates table, one row per chamber then "all": ``hits`` and ``rate_hz`` = detector_hits /
    detector_time_s (``RATE_DEFINITION``; NaN without version-2 detector time)."""
    rows = [(str(c), t.hits[c], t.detector_hits[c]) for c in range(N_CHAMBERS)]
    rows.append(("all", t.hits.sum(), t.detector_hits.sum()))
    return {
        "chamber": [r[0] for r in rows],
        "hits": [int(r[1]) for r in rows],
        "rate_hz": [float(r[2]) / t.detector_time_s if t.detector_time_s > 0 else math.nan for r in rows],
    }


def cell_layout() -> dict[str, np.ndarray]:
    """Where each local channel c = 0..63 sits in its chamber (domain notes §2, PDF p. 19).

    Returns arrays of shape (64,): ``channel``, ``layer`` (1 bottom .. 4 top),
    ``cell`` (c // 4), ``x``/``y`` cell centres in mm (cells 42 mm wide, layers 13 mm
    high, layers 1 and 3 shifted right by 21 mm).
    """
    channel = np.arange(CELLS_PER_CHAMBER)
    layer, cell = layer_of(channel), cell_of(channel)
    shift = np.where(layer % 2 == 1, CELL_WIDTH_MM / 2, 0.0)
    return {
        "channel": channel,
        "layer": layer,
        "cell": cell,
        "x": CELL_WIDTH_MM * cell + CELL_WIDTH_MM / 2 + shift,
        "y": LAYER_HEIGHT_MM * (layer - 1) + LAYER_HEIGHT_MM / 2,
    }


def channel_status(dead: list[list[int]], noisy: list[list[int]]) -> np.ndarray:
    """Status of every chamber channel, shape (4, 64): "dead", "noisy" or "" (from ``flagged_channels``)."""
    status = np.full((N_CHAMBERS, CELLS_PER_CHAMBER), "", dtype=object)
    for c in range(N_CHAMBERS):
        status[c, dead[c]] = "dead"
        status[c, noisy[c]] = "noisy"
    return status


def flags_html(flags: tuple[tuple[int, int, str, float], ...], has_health: bool) -> str:
    """Dead/noisy channels as per-chamber counts in a collapsible list (HTML ``<details>``); each
    entry ``chamber/channel`` with the UTC time it was first flagged."""
    if not has_health:
        return "Flagged channels: not in the results (version-1 processor)"
    if not flags:
        return "Flagged channels: none"
    counts = []
    for c in range(N_CHAMBERS):
        d = sum(1 for f in flags if f[0] == c and f[2] == "dead")
        n = sum(1 for f in flags if f[0] == c and f[2] == "noisy")
        if d or n:
            counts.append(f"ch{c}: {d} dead, {n} noisy")
    items = "".join(f"<li>ch{c}/{ch} {st} since {_clock(t)}</li>" for c, ch, st, t in flags)
    return (f"<details><summary>Flagged channels: {' · '.join(counts)} (click for the list)</summary>"
            f"<ul style='columns:4;margin:2px 0;font-size:12px'>{items}</ul></details>")


def health_rows(flags: tuple[tuple[int, int, str, float], ...], occupancy: HistogramSet | None) -> dict[str, list]:
    """Table of flagged channels: chamber, local channel, layer, cell, FPGA, TDC_CHANNEL, status,
    ``since`` (epoch ms it was first flagged) and hits in the selected view (``occupancy`` (4, 64))."""
    layout = cell_layout()
    cols: dict[str, list] = {k: [] for k in ("chamber", "channel", "layer", "cell", "fpga", "tdc_channel",
                                              "status", "since", "hits")}
    for c, ch, status, since in flags:
        cols["chamber"].append(c)
        cols["channel"].append(ch)
        cols["layer"].append(int(layout["layer"][ch]))
        cols["cell"].append(int(layout["cell"][ch]))
        fpga, tdc_channel = daq_channel_of(c, ch)
        cols["fpga"].append(int(fpga))
        cols["tdc_channel"].append(int(tdc_channel))
        cols["status"].append(status)
        cols["since"].append(since * 1000.0)
        cols["hits"].append(int(occupancy.counts[c, ch]) if occupancy is not None else 0)
    return cols


def scintillator_text(message: ResultsMessage | None) -> str:
    """The t0 channel used for E1/E2 and why, e.g. ``t0 = FPGA 1 ch 138 (detected: ...)``."""
    if message is None or message.scintillator is None:
        return "t0 channel: not in the results (version-1 processor)"
    s = message.scintillator
    why = ""
    if s.source is not None:
        reason = s.reason or ""
        why = f" ({reason})" if reason.startswith(s.source) else f" ({s.source}" + (f": {reason}" if reason else "") + ")"
    return f"t0 = FPGA {s.fpga} ch {s.channel}{why}"


def event_columns(events: Iterable[StreamEvent]) -> dict[str, list]:
    """Event table/timeline columns, newest first: ``time_ms`` (epoch ms), ``kind``, ``detail``, ``y``
    (row of the kind on the timeline, in order of first appearance)."""
    evs = sorted(events, key=lambda e: e.time, reverse=True)
    kinds: list[str] = []
    for e in reversed(evs):
        if e.kind not in kinds:
            kinds.append(e.kind)
    return {"time_ms": [e.time * 1000.0 for e in evs], "kind": [e.kind for e in evs],
            "detail": [e.detail for e in evs], "y": [kinds.index(e.kind) for e in evs]}


def _duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


def run_html(message: ResultsMessage | None, now: float, stale: bool = False) -> str:
    """Run number, state and elapsed time (``now - run_started`` while running, epoch s;
    start to last batch once ended). A running run shows "stale", not "running", while ``stale``."""
    if message is None or message.run is None:
        return "Run: <b>—</b> (no run number in the results)"
    if message.run_state == "ended":
        state = "<b style='color:#555'>ended</b>"
        elapsed = "" if message.run_started is None else f" · lasted ≥ <b>{_duration(message.published - message.run_started)}</b>"
    elif stale:
        state = "<b style='color:#b35900'>stale</b> (last seen running)"
        elapsed = ""
    else:
        state = "<b style='color:green'>running</b>" if message.run_state == "running" else "state unknown"
        elapsed = "" if message.run_started is None else f" · elapsed <b>{_duration(now - message.run_started)}</b>"
    return f"Run <b>{html.escape(str(message.run))}</b> · {state}{elapsed}"


def reference_histograms(reference: Reference) -> dict[str, HistogramSet]:
    """The occupancy (4, 64) and drift-time (4, D) histograms of a reference run
    (``dtmon.reference.Reference``), by kind, on the bins the results use."""
    return {"occupancy": HistogramSet(list(OCCUPANCY_EDGES), reference.occupancy()),
            "drift_time": HistogramSet(list(reference.drift_edges), reference.drift_time())}


def reference_messages(snap: Snapshot, baseline: tuple[int, Totals, int | None] | None = None) -> list[ResultsMessage]:
    """The kept results messages of the current accumulation epoch (one run, same bins), after the
    session's Reset ``baseline`` when it belongs to this epoch: what "use as reference" sums."""
    after = baseline[2] if baseline is not None and baseline[0] == snap.epoch and baseline[2] is not None else -1
    return [r.message for r in snap.records if r.epoch == snap.epoch and r.message.batch_id > after]


def normalised_reference(ref: HistogramSet | None, shown: HistogramSet | None) -> np.ndarray | None:
    """``ref`` counts scaled per chamber to the hits of ``shown`` (same shape (4, n), float), so the
    shapes compare; NaN for a chamber with no reference or no shown hits; None when either is
    missing or the bin edges differ."""
    if ref is None or shown is None or list(ref.edges) != list(shown.edges):
        return None
    ref_sum = ref.counts.sum(axis=1, keepdims=True)
    shown_sum = shown.counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.where((ref_sum > 0) & (shown_sum > 0), shown_sum / ref_sum, np.nan)
    return ref.counts * scale
