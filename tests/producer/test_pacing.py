"""Unit tests of producer.pacing with an injected fake clock (no real time passes)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from producer.pacing import MESSAGES_PER_SECOND, Pacer, chunk_rows


class FakeClock:
    """A clock that only moves when told to; ``sleep`` overshoots like a real OS sleep."""

    def __init__(self, rng: np.random.Generator | None = None, overshoot_s: float = 0.0):
        self.now = 1000.0
        self.rng = rng
        self.overshoot_s = overshoot_s

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        jitter = self.rng.uniform(0, self.overshoot_s) if self.rng is not None else self.overshoot_s
        self.now += seconds + jitter


def simulate(rate: float, seconds: float, rows_per_message: int = 10_000, work_s=lambda i: 0.0, seed: int = 1):
    """Drive a Pacer like the producer loop does; return (send times relative to start, rows per send)."""
    clock = FakeClock(np.random.default_rng(seed), overshoot_s=0.002)
    pacer = Pacer(rate, clock)
    n = chunk_rows(rate, rows_per_message)
    t0 = pacer.start()
    times, sizes = [], []
    i = 0
    while pacer.next_due(n) <= t0 + seconds:
        wait = pacer.delay()
        if wait > 0:
            clock.sleep(wait)
        times.append(clock() - t0)
        sizes.append(n)
        pacer.sent(n)
        clock.now += work_s(i)  # encoding + sending takes time
        i += 1
    return np.array(times), np.array(sizes)


def per_second(times: np.ndarray, sizes: np.ndarray, seconds: int, offset: float = 0.0) -> np.ndarray:
    """Rows sent in each 1-s bin [offset + k, offset + k + 1)."""
    counts, _ = np.histogram(times, bins=np.arange(offset, offset + seconds + 1e-9, 1.0), weights=sizes)
    return counts


@pytest.mark.parametrize("rate", [1_000, 10_000, 100_000])
@pytest.mark.parametrize("offset", [0.0, 0.5])
def test_rate_and_per_second_spread_over_60_s(rate, offset):
    rng = np.random.default_rng(7)
    work = rng.uniform(0.0005, 0.004, size=100_000)  # 0.5-4 ms per chunk of work
    times, sizes = simulate(rate, 60, work_s=lambda i: work[i])
    total = sizes[times < 60].sum()
    assert abs(total - rate * 60) <= 0.02 * rate * 60
    counts = per_second(times, sizes, 59, offset)  # whole seconds inside the run
    assert np.all(np.abs(counts - rate) <= 0.10 * rate), counts


def test_no_drift_when_each_chunk_costs_time():
    """A per-chunk sleep(n/rate) pacer would lose 20 chunks/s x 4 ms = 8 % here; the schedule loses nothing."""
    rate = 1_000
    times, sizes = simulate(rate, 60, work_s=lambda i: 0.004)
    n = chunk_rows(rate, 10_000)
    assert abs(sizes.sum() - rate * 60) <= n
    # the last chunk went out when its first row was due, within the 2 ms sleep overshoot
    assert times[-1] == pytest.approx((sizes.sum() - n) / rate, abs=0.003)


def test_late_chunks_are_caught_up():
    """At 1e6 rows/s (10 000-row chunks every 10 ms) sending takes 5-14 ms: late chunks must not be lost."""
    rate = 1_000_000
    work = np.random.default_rng(3).uniform(0.005, 0.014, size=100_000)
    times, sizes = simulate(rate, 60, work_s=lambda i: work[i])
    assert abs(sizes.sum() - rate * 60) <= 0.02 * rate * 60
    counts = per_second(times, sizes, 59)
    assert np.all(np.abs(counts - rate) <= 0.10 * rate), counts


def test_unlimited_rate_never_waits():
    clock = FakeClock()
    pacer = Pacer(0, clock)
    for _ in range(1000):
        assert pacer.delay() == 0.0
        pacer.sent(10_000)
    assert pacer.rows == 10_000_000


def test_stall_does_not_become_a_long_burst():
    rate, max_lag = 10_000, 0.5
    clock = FakeClock()
    pacer = Pacer(rate, clock, max_lag_s=max_lag)
    pacer.start()
    clock.now += 5.0  # a 5 s stall (slow S3 read) before anything was sent
    burst = 0
    while pacer.delay() == 0.0:
        pacer.sent(100)
        burst += 100
    assert burst <= rate * max_lag + 100
    assert pacer.forgiven_s == pytest.approx(5.0 - max_lag)


def test_delay_is_time_until_the_next_row_is_due():
    clock = FakeClock()
    pacer = Pacer(200, clock)
    assert pacer.delay() == 0.0  # the first chunk goes at once
    pacer.sent(50)
    assert pacer.delay() == pytest.approx(50 / 200)
    clock.now += 0.1
    assert pacer.delay() == pytest.approx(50 / 200 - 0.1)


@pytest.mark.parametrize("rate", [1, 7, 100, 999, 1_000, 10_000, 100_000, 1_000_000, 5_000_000])
def test_chunk_rows_gives_many_small_messages_at_low_rate_and_big_ones_at_high_rate(rate):
    rows_per_message = 10_000
    n = chunk_rows(rate, rows_per_message)
    assert 1 <= n <= rows_per_message
    assert n == math.ceil(rate / MESSAGES_PER_SECOND) or n in (1, rows_per_message)
    if rate >= 10 and n < rows_per_message:
        assert rate / n >= 10  # at least 10 messages per second
    if rate / MESSAGES_PER_SECOND >= rows_per_message:
        assert n == rows_per_message


def test_chunk_rows_unlimited_and_invalid():
    assert chunk_rows(0, 1234) == 1234
    with pytest.raises(ValueError):
        chunk_rows(-1, 10)
    with pytest.raises(ValueError):
        Pacer(-5, FakeClock())
