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
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from dtmon.hits import CELLS_PER_CHAMBER, N_CHAMBERS, cell_of, daq_channel_of, layer_of
from dtmon.schema import (
    MULTIPLICITY_EDGES,
    OCCUPANCY_EDGES,
    ChannelHealth,
    ResultsMessage,
)

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
        cols["rows_read"].append(m.rows_read)
        cols["malformed_rows"].append(m.malformed_rows)
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
    ``broker_reachable`` is None until the consumer has learnt anything.
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
    Every change bumps ``version`` by one.
    """

    def __init__(self, history: int, clock: Callable[[], float] = time.time) -> None:
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

    @property
    def version(self) -> int:
        """Increases by one on every change; a session redraws when it differs from what it drew."""
        with self._lock:
            return self._version

    def ingest(self, message: ResultsMessage) -> None:
        """Keep ``message`` (dropping the oldest beyond ``history``) and add it to the cumulative sums.

        A message with the same batch id as the newest kept one (a micro-batch Spark
        replayed after a restart) replaces it, in the time series and in the sums.
        A new run number, or bin edges that differ from the running sums, start a new epoch.

        Raises:
            ValueError: the chambers' histograms of ``message`` do not share bin edges
                (nothing is kept; the caller counts it with ``record_invalid``).
        """
        with self._lock:
            records = self._records
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
            self._last_update = self._clock()
            self._ingests += 1
            self._version += 1

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
                )
            return self._cached


@dataclass
class ViewChoice:
    """What one browser session shows: ``mode`` (one of ``MODES``), the window length N
    (batches) and the session's Reset baseline ``(epoch, cumulative at Reset, last batch id)``."""

    mode: str = "current"
    window: int = 10
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


def rate_columns(t: Totals) -> dict[str, list]:
    """Rates table, one row per chamber then "all": ``hits``, ``detector_hz`` = detector_hits /
    detector_time_s (hits/s of detector time, NaN without v2 detector time) and ``wall_hz`` =
    hits / wall_time_s (hits/s of wall time, NaN for no batches)."""
    def ratio(n: float, d: float) -> float:
        return n / d if d > 0 else math.nan

    rows = [(str(c), t.hits[c], t.detector_hits[c]) for c in range(N_CHAMBERS)]
    rows.append(("all", t.hits.sum(), t.detector_hits.sum()))
    return {
        "chamber": [r[0] for r in rows],
        "hits": [int(r[1]) for r in rows],
        "detector_hz": [ratio(float(r[2]), t.detector_time_s) for r in rows],
        "wall_hz": [ratio(float(r[1]), t.wall_time_s) for r in rows],
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


def channel_status(health: ChannelHealth | None) -> np.ndarray:
    """Status of every chamber channel, shape (4, 64): "dead", "noisy" or ""."""
    status = np.full((N_CHAMBERS, CELLS_PER_CHAMBER), "", dtype=object)
    if health is not None:
        for ref in health.dead:
            status[ref.chamber, ref.channel] = "dead"
        for ref in health.noisy:
            status[ref.chamber, ref.channel] = "noisy"
    return status


def health_html(health: ChannelHealth | None) -> str:
    """The shifter's one-line channel list, e.g. ``Dead: ch0/12, ch3/5 · Noisy: ch1/7``
    (chamber/local channel), with the window and the noisy factor."""
    if health is None:
        return "Channel health: not in the results (version-1 processor)"

    def names(refs) -> str:
        return ", ".join(f"ch{r.chamber}/{r.channel}" for r in refs) or "none"

    dead = f"<b style='color:#d62728'>Dead: {names(health.dead)}</b>" if health.dead else "Dead: none"
    noisy = f"<b>Noisy: {names(health.noisy)}</b>" if health.noisy else "Noisy: none"
    return (f"{dead} · {noisy} <span style='color:#666'>(last {health.window_batches} batches; noisy = above "
            f"{health.noisy_factor:g}× chamber median; dead = no hit while the chamber had hits)</span>")


def health_rows(health: ChannelHealth | None, occupancy: HistogramSet | None) -> dict[str, list]:
    """Table of flagged channels: chamber, local channel, layer, cell, FPGA, TDC_CHANNEL,
    status and hits in the selected view (from ``occupancy``, counts shape (4, 64))."""
    layout = cell_layout()
    cols: dict[str, list] = {k: [] for k in ("chamber", "channel", "layer", "cell", "fpga", "tdc_channel",
                                              "status", "hits")}
    if health is None:
        return cols
    for status, refs in (("dead", health.dead), ("noisy", health.noisy)):
        for r in refs:
            cols["chamber"].append(r.chamber)
            cols["channel"].append(r.channel)
            cols["layer"].append(int(layout["layer"][r.channel]))
            cols["cell"].append(int(layout["cell"][r.channel]))
            fpga, tdc_channel = daq_channel_of(r.chamber, r.channel)
            cols["fpga"].append(int(fpga))
            cols["tdc_channel"].append(int(tdc_channel))
            cols["status"].append(status)
            cols["hits"].append(int(occupancy.counts[r.chamber, r.channel]) if occupancy is not None else 0)
    return cols


def scintillator_text(message: ResultsMessage | None) -> str:
    """The t0 channel used for E1/E2, e.g. ``t0 = FPGA 1 ch 138``."""
    if message is None or message.scintillator is None:
        return "t0 channel: not in the results (version-1 processor)"
    return f"t0 = FPGA {message.scintillator.fpga} ch {message.scintillator.channel}"


def _duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


def run_html(message: ResultsMessage | None, now: float) -> str:
    """Run number, state and elapsed time (``now - run_started`` while running, epoch s;
    start to last batch once ended)."""
    if message is None or message.run is None:
        return "Run: <b>—</b> (no run number in the results)"
    if message.run_state == "ended":
        state = "<b style='color:#555'>ended</b>"
        elapsed = "" if message.run_started is None else f" · lasted ≥ <b>{_duration(message.published - message.run_started)}</b>"
    else:
        state = "<b style='color:green'>running</b>" if message.run_state == "running" else "state unknown"
        elapsed = "" if message.run_started is None else f" · elapsed <b>{_duration(now - message.run_started)}</b>"
    return f"Run <b>{html.escape(str(message.run))}</b> · {state}{elapsed}"
