"""Rate pacing of the producer: a pure schedule against an injected clock.

The schedule is absolute: row number ``k`` (0-based, counted since the start) is due at
``t0 + k / rate`` seconds, where ``t0`` is the clock reading when the first chunk is
asked for. A chunk of ``n`` rows goes out when its first row is due. Because every due
time is computed from ``t0`` and the total row count, sleep overshoot and the time spent
encoding and sending do not accumulate (no drift): after ``T`` seconds the producer has
sent ``rate * T`` rows, give or take one chunk.

If the producer falls behind (a slow S3 read, a pause, a CPU shared with Spark), it
catches up by sending the late chunks without waiting, so the long-run rate stays on
target; but never more than ``max_lag_s`` (default 2 s) of rows: older debt is forgiven
by moving ``t0`` forward, so a long stall never turns into a long burst.

No I/O and no sleeping here: the caller sleeps for ``Pacer.delay()`` seconds.
"""

from __future__ import annotations

import math
from typing import Callable

MESSAGES_PER_SECOND = 20.0
"""Target message frequency at low rates, in messages/s (at least 10)."""


def chunk_rows(rate: float, rows_per_message: int, messages_per_s: float = MESSAGES_PER_SECOND) -> int:
    """Rows per Kafka message for a target rate.

    ``ceil(rate / messages_per_s)`` clamped to ``1 .. rows_per_message``: at low rates
    messages go out ``messages_per_s`` times per second (smooth per-second rate), at
    high rates messages are as large as allowed (fewer, larger messages).

    Args:
        rate: target rate in rows/s; 0 = unlimited (then ``rows_per_message``).
        rows_per_message: largest rows per message, >= 1.
        messages_per_s: wanted message frequency in messages/s at low rates.
    Raises:
        ValueError: negative rate or rows_per_message < 1.
    """
    if rate < 0 or rows_per_message < 1:
        raise ValueError(f"need rate >= 0 and rows_per_message >= 1, got {rate}, {rows_per_message}")
    if rate == 0:
        return rows_per_message
    return max(1, min(rows_per_message, math.ceil(rate / messages_per_s)))


class Pacer:
    """Tells how long to wait before sending the next chunk of rows.

    Args:
        rate: target rate in rows/s; 0 = unlimited (``delay()`` is always 0).
        clock: monotonic clock in seconds (e.g. ``time.monotonic``), injected for tests.
        max_lag_s: the most the schedule may be behind, in s, before it is re-anchored.
    Raises:
        ValueError: negative rate or max_lag_s.

    Usage: ``wait = pacer.delay()``; sleep ``wait`` s; send ``n`` rows; ``pacer.sent(n)``.
    """

    def __init__(self, rate: float, clock: Callable[[], float], max_lag_s: float = 2.0):
        if rate < 0 or max_lag_s < 0:
            raise ValueError(f"need rate >= 0 and max_lag_s >= 0, got {rate}, {max_lag_s}")
        self.rate = float(rate)
        self.clock = clock
        self.max_lag_s = max_lag_s
        self.t0: float | None = None
        self.rows = 0  # rows sent since the start
        self.forgiven_s = 0.0  # total lag forgiven by re-anchoring, in s

    def start(self) -> float:
        """Anchor the schedule at the current clock reading (once) and return ``t0`` in s."""
        if self.t0 is None:
            self.t0 = self.clock()
        return self.t0

    def next_due(self, ahead: int = 0) -> float:
        """Clock time (s) at which row ``rows + ahead`` is due; ``now`` when unpaced.

        ``next_due()`` is when the next chunk may go out; ``next_due(n)`` is when a chunk
        of ``n`` rows sent now has been used up (e.g. to keep it inside a duration).
        """
        self.start()
        if self.rate == 0:
            return self.clock()
        return self.t0 + (self.rows + ahead) / self.rate

    def delay(self) -> float:
        """Seconds to wait before sending the next chunk (>= 0).

        Also re-anchors the schedule when it is more than ``max_lag_s`` behind.
        """
        if self.rate == 0:
            self.start()
            return 0.0
        now = self.clock()
        due = self.next_due()
        lag = now - due
        if lag > self.max_lag_s:
            shift = lag - self.max_lag_s
            self.t0 += shift
            self.forgiven_s += shift
            return 0.0
        return max(0.0, due - now)

    def sent(self, n: int) -> None:
        """Record that ``n`` rows went out."""
        self.start()
        self.rows += n
