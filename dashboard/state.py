"""Thread-safe store of the results the dashboard shows (no Bokeh, no Kafka).

The Kafka consumer thread writes (``ingest``, ``record_invalid``, ``set_broker``);
every browser session reads ``snapshot()`` from its own periodic callback and
redraws only when ``version`` moved. The store keeps the last ``history``
``ResultsMessage`` objects in arrival order, so other views of the same batches
(a moving window, cumulative since a reset — issue 4) are a different
``sum_histograms`` over the kept messages or an added accumulator, not a new store.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from dtmon.hits import N_CHAMBERS
from dtmon.schema import MULTIPLICITY_EDGES, OCCUPANCY_EDGES, ResultsMessage

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
    """One histogram per chamber on shared bins: ``edges`` shape (n+1,), ``counts`` shape (4, n)."""

    edges: list[float]
    counts: list[list[int]]


@dataclass(frozen=True)
class Snapshot:
    """Everything a session draws, copied out of the store at one ``version``.

    ``last_update`` is the store clock's time (epoch s) of the last ingested message;
    ``broker_reachable`` is None until the consumer has learnt anything.
    ``occupancy``/``multiplicity`` are the 'current' view (last batch).
    """

    version: int
    series: dict[str, list[float]]
    occupancy: HistogramSet
    multiplicity: HistogramSet
    last_batch_id: int | None
    last_update: float | None
    synthetic: bool
    broker_reachable: bool | None
    broker_detail: str
    invalid_messages: int
    last_invalid: str
    malformed_rows_kept: int


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


def sum_histograms(messages: Iterable[ResultsMessage], kind: str) -> HistogramSet:
    """Per-chamber sum of the ``kind`` histograms ("occupancy" or "multiplicity") of ``messages``.

    One message gives the 'current' view; all kept messages a moving window. No
    messages give the schema's default bins with zero counts.

    Raises:
        ValueError: ``kind`` is unknown, or two histograms have different bin edges.
    """
    defaults = {"occupancy": OCCUPANCY_EDGES, "multiplicity": MULTIPLICITY_EDGES}
    if kind not in defaults:
        raise ValueError(f"unknown histogram kind {kind!r}")
    edges: list[float] | None = None
    counts: list[list[int]] = []
    for m in messages:
        for chamber in m.chambers:
            hist = getattr(chamber, kind)
            if edges is None:
                edges = list(hist.bin_edges)
                counts = [[0] * len(hist.bin_counts) for _ in range(N_CHAMBERS)]
            elif list(hist.bin_edges) != edges:
                raise ValueError(f"batch {m.batch_id} chamber {chamber.chamber}: {kind} bin edges differ")
            row = counts[chamber.chamber]
            for i, n in enumerate(hist.bin_counts):
                row[i] += n
    if edges is None:
        edges = list(defaults[kind])
        counts = [[0] * (len(edges) - 1) for _ in range(N_CHAMBERS)]
    return HistogramSet(edges, counts)


class ResultsStore:
    """The last ``history`` results messages plus consumer health, safe to share between threads.

    ``clock`` (epoch s) stamps ``last_update``; inject a fake one in tests.
    Every change bumps ``version`` by one.
    """

    def __init__(self, history: int, clock: Callable[[], float] = time.time) -> None:
        if history < 1:
            raise ValueError(f"history must be >= 1, got {history}")
        self._lock = threading.Lock()
        self._clock = clock
        self._batches: deque[ResultsMessage] = deque(maxlen=history)
        self._version = 0
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
        """Keep ``message`` (dropping the oldest beyond ``history``).

        A message with the same batch id as the newest kept one (a micro-batch Spark
        replayed after a restart) replaces it instead of adding a point.

        Raises:
            ValueError: the chambers' histograms of ``message`` do not share bin edges
                (nothing is kept; the caller counts it with ``record_invalid``).
        """
        for kind in ("occupancy", "multiplicity"):
            sum_histograms([message], kind)
        with self._lock:
            if self._batches and self._batches[-1].batch_id == message.batch_id:
                self._batches[-1] = message
            else:
                self._batches.append(message)
            self._last_update = self._clock()
            self._bump()

    def record_invalid(self, reason: str) -> None:
        """Count one results message that failed validation; ``reason`` is shown to the shifter."""
        with self._lock:
            self._invalid += 1
            self._last_invalid = reason
            self._bump()

    def set_broker(self, reachable: bool, detail: str = "") -> None:
        """Record whether the broker answers; bumps ``version`` only when something changed."""
        with self._lock:
            if self._broker != (reachable, detail):
                self._broker = (reachable, detail)
                self._bump()

    def snapshot(self) -> Snapshot:
        """A consistent copy of everything drawn (computed once per version)."""
        with self._lock:
            if self._cached is None or self._cached.version != self._version:
                self._cached = self._build()
            return self._cached

    def _bump(self) -> None:
        self._version += 1

    def _build(self) -> Snapshot:
        last = self._batches[-1] if self._batches else None
        current = [last] if last is not None else []
        return Snapshot(
            version=self._version,
            series=series_columns(self._batches),
            occupancy=sum_histograms(current, "occupancy"),
            multiplicity=sum_histograms(current, "multiplicity"),
            last_batch_id=last.batch_id if last else None,
            last_update=self._last_update,
            synthetic=bool(last and last.synthetic),
            broker_reachable=self._broker[0],
            broker_detail=self._broker[1],
            invalid_messages=self._invalid,
            last_invalid=self._last_invalid,
            malformed_rows_kept=sum(m.malformed_rows for m in self._batches),
        )
