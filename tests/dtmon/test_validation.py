"""Poison input: dtmon.validation and its hooks (wire.decode_message, kafka_source.decode_records,
ResultsStore.ingest_json), with hand-made cases from the reliability table and hypothesis-generated inputs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dashboard.state import ResultsStore
from dtmon.hits import COLUMNS, HIT_SCHEMA, DecodeError, decode_csv
from dtmon.settings import load_settings
from dtmon.validation import (
    MessageLimits,
    MessageRejected,
    TOO_MANY_ROWS,
    check_arrow_message,
    check_rows,
    parse_results,
    validate_results,
)
from dtmon.wire import CONTENT_TYPE_ARROW, CONTENT_TYPE_CONTROL, CONTENT_TYPE_CSV, decode_message, encode_arrow
from processor.decode import decode_records
from processor.reduce import Binning, reduce_rows
from tests.dashboard.factory import make_batch

NOW = 1_790_000_100.0  # the factory's batches start at 1_790_000_000


@pytest.fixture(scope="module")
def genuine_rows(genuine_csv) -> pa.Table:
    return decode_csv(genuine_csv.read_bytes()).table


def test_the_genuine_rows_are_all_valid(genuine_rows):
    bad, reasons = check_rows(genuine_rows)
    assert not bad.any() and reasons == Counter()


# --- the reliability table's rows -----------------------------------------------------------

POISON = [  # (row, reason counted)
    ({"HEAD": 2, "FPGA": 0, "TDC_CHANNEL": 5, "ORBIT_CNT": None, "BX_COUNTER": 10, "TDC_MEAS": 3.0}, "null field"),
    ({"HEAD": 2, "FPGA": 0, "TDC_CHANNEL": 5, "ORBIT_CNT": -4_000_000_000, "BX_COUNTER": 10, "TDC_MEAS": 3.0}, "ORBIT_CNT outside 0..4294967295"),
    ({"HEAD": 2, "FPGA": 0, "TDC_CHANNEL": 5, "ORBIT_CNT": 620_000, "BX_COUNTER": 9_999, "TDC_MEAS": 3.0}, "BX_COUNTER outside 0..3563 on a hit word"),
    ({"HEAD": 2, "FPGA": 0, "TDC_CHANNEL": 5, "ORBIT_CNT": 620_000, "BX_COUNTER": 10, "TDC_MEAS": -7.0}, "TDC_MEAS not an integer 0..31 on a hit word"),
    ({"HEAD": 2, "FPGA": 0, "TDC_CHANNEL": 600, "ORBIT_CNT": 620_000, "BX_COUNTER": 10, "TDC_MEAS": 3.0}, "TDC_CHANNEL outside 0..511"),
    ({"HEAD": 2, "FPGA": -1, "TDC_CHANNEL": 5, "ORBIT_CNT": 620_000, "BX_COUNTER": 10, "TDC_MEAS": 3.0}, "FPGA outside 0..7"),
    ({"HEAD": 7, "FPGA": 0, "TDC_CHANNEL": 5, "ORBIT_CNT": 620_000, "BX_COUNTER": 10, "TDC_MEAS": 3.0}, "HEAD outside 0..5"),
    ({"HEAD": 4, "FPGA": 0, "TDC_CHANNEL": 5, "ORBIT_CNT": 620_000, "BX_COUNTER": 10, "TDC_MEAS": math.inf}, "TDC_MEAS not finite"),
    ({"HEAD": 2, "FPGA": 1, "TDC_CHANNEL": 5, "ORBIT_CNT": 1_250_000_000_000, "BX_COUNTER": 10, "TDC_MEAS": 3.0}, "ORBIT_CNT outside 0..4294967295"),
]  # fmt: skip


def test_raw_message_with_nulls_and_out_of_range_values_counts_no_hit_and_keeps_detector_time(genuine_rows):
    binning = Binning.from_settings(load_settings())
    clean = encode_arrow(genuine_rows)
    poisoned = encode_arrow(pa.concat_tables([genuine_rows, pa.Table.from_pylist([row for row, _ in POISON], HIT_SCHEMA)]))
    results = {}
    for name, value in (("clean", clean), ("poisoned", poisoned)):
        rejected: Counter = Counter()
        rows = decode_records([value], [CONTENT_TYPE_ARROW], [1_000], [False], [3], ["minidt-hits/0@9"], rejected)
        results[name] = (reduce_rows(pa.Table.from_batches([rows]), binning), rejected)
    (clean_agg, clean_rejected), (agg, rejected) = results["clean"], results["poisoned"]
    assert clean_rejected == Counter()
    assert rejected == Counter(reason for _, reason in POISON)
    assert (agg.rows_read, agg.malformed_rows) == (999 + len(POISON), len(POISON))
    assert agg.hits == clean_agg.hits == 499
    assert agg.detector_time_s == clean_agg.detector_time_s and agg.orbit_jumps == clean_agg.orbit_jumps
    assert agg.detector_time_s < 1.0  # the genuine 999 rows span well under a second
    np.testing.assert_array_equal(agg.occupancy, clean_agg.occupancy)


def test_negative_tdc_meas_on_hit_words_is_rejected_but_half_floats_of_head_4_5_are_kept():
    rows = pa.Table.from_pylist(
        [{"HEAD": 2, "FPGA": 0, "TDC_CHANNEL": 1, "ORBIT_CNT": 5, "BX_COUNTER": 5, "TDC_MEAS": -3.0},
         {"HEAD": 2, "FPGA": 0, "TDC_CHANNEL": 1, "ORBIT_CNT": 5, "BX_COUNTER": 5, "TDC_MEAS": 4.5},
         {"HEAD": 2, "FPGA": 0, "TDC_CHANNEL": 1, "ORBIT_CNT": 5, "BX_COUNTER": 5, "TDC_MEAS": 30.0},
         {"HEAD": 4, "FPGA": 0, "TDC_CHANNEL": 1, "ORBIT_CNT": 5, "BX_COUNTER": 5, "TDC_MEAS": -0.57373}],
        HIT_SCHEMA,
    )  # fmt: skip
    rejected: Counter = Counter()
    table = decode_message(encode_arrow(rows), CONTENT_TYPE_ARROW, rejected=rejected)
    assert table.column("HEAD").to_pylist() == [None, None, 2, 4]
    assert rejected == Counter({"TDC_MEAS not an integer 0..31 on a hit word": 2})
    csv = b"HEAD,FPGA,TDC_CHANNEL,ORBIT_CNT,BX_COUNTER,TDC_MEAS\n2,0,1,5,5,-3\n2,0,1,5,5,12\n"
    assert decode_message(csv, CONTENT_TYPE_CSV).column("HEAD").to_pylist() == [None, 2]


BOMB_SCRIPT = r"""
import sys, time
import pyarrow as pa
from dtmon.wire import decode_message
value = open(sys.argv[1], "rb").read()
pool = pa.default_memory_pool()
before = pool.max_memory()
t = time.perf_counter()
try:
    rows = decode_message(value, None, None if sys.argv[2] == "capped" else __import__("dtmon.validation").validation.MessageLimits(10**12, 10**9)).num_rows
except Exception as exc:
    rows = type(exc).__name__
elapsed = time.perf_counter() - t
print(rows, (pool.max_memory() - before) / 2**20, elapsed)
"""


def test_an_8_kb_message_that_expands_to_10_million_rows_is_refused_without_expanding_it(tmp_path):
    n = 10_000_000
    bomb = encode_arrow(pa.table([pa.array(np.zeros(n, dtype=f.type.to_pandas_dtype())) for f in HIT_SCHEMA], schema=HIT_SCHEMA))
    assert len(bomb) < 10_000  # ~8.3 KB of zstd for 240 MB of rows
    with pytest.raises(MessageRejected) as caught:
        check_arrow_message(bomb, MessageLimits())
    assert caught.value.reason == TOO_MANY_ROWS
    path = tmp_path / "bomb.arrow"
    path.write_bytes(bomb)
    measured = {}
    for mode in ("capped", "uncapped"):  # a fresh process each: peak Arrow memory-pool growth during the decode, MB
        out = subprocess.run([sys.executable, "-c", BOMB_SCRIPT, str(path), mode], capture_output=True, text=True, timeout=120, check=True)
        rows, grown_mb, seconds = out.stdout.split()
        measured[mode] = (rows, float(grown_mb), float(seconds))
    print("bomb decode (rows, peak Arrow allocation MB, s):", measured)
    assert measured["capped"][0] == "MessageRejected" and measured["capped"][1] < 20
    assert measured["uncapped"][0] == str(n) and measured["uncapped"][1] > 100  # what the cap saves: the ~240 MB expansion
    rejected: Counter = Counter()
    rows = decode_records([bomb], [CONTENT_TYPE_ARROW], [0], [False], None, ["minidt-hits/0@3"], rejected)
    assert rows.num_rows == 1 and rows.column("HEAD").null_count == 1  # one malformed row stands for it
    assert rejected == Counter({f"rejected message: {TOO_MANY_ROWS}": 1})


def test_absurd_results_are_refused_and_the_dashboard_keeps_the_real_data():
    store = ResultsStore(history=50, clock=lambda: NOW)
    real = [make_batch(i, seed=i).message for i in range(3)]
    for i, m in enumerate(real):
        assert store.ingest_json(m.to_json(), f"minidt-results/0@{i}")
    before = store.snapshot()
    good = json.loads(real[-1].to_json())
    absurd = []
    doc = json.loads(json.dumps(good)); doc["batch_id"] = 3; doc["hits"] = 10**30; absurd.append(doc)  # noqa: E702
    doc = json.loads(json.dumps(good)); doc["batch_id"] = 4  # noqa: E702
    doc["chambers"][1]["occupancy"] = {"bin_edges": [0, 1, 2, 3], "bin_counts": [1, 2, 3]}; absurd.append(doc)  # noqa: E702
    doc = json.loads(json.dumps(good)); doc["batch_id"] = 5; doc["run_started"] = -1e300; absurd.append(doc)  # noqa: E702
    doc = json.loads(json.dumps(good)); doc["batch_id"] = 6; doc["chambers"][0]["hits"] = 10**30; absurd.append(doc)  # noqa: E702
    for k, doc in enumerate(absurd):
        assert not store.ingest_json(json.dumps(doc).encode(), f"minidt-results/0@{3 + k}")
    snap = store.snapshot()
    assert snap.invalid_messages == 4 and snap.last_invalid.startswith("minidt-results/0@6: chamber 0: hits")
    assert snap.series == before.series and snap.last_batch_id == 2 and snap.ingests == 3
    np.testing.assert_array_equal(snap.cumulative.hits, before.cumulative.hits)
    problems = [validate_results(parse_results(json.dumps(d))[0] or real[0], now=NOW) for d in absurd[:3]]
    assert "hits = 1e+30 > 2**53" in problems[0]
    assert problems[1][0].startswith("chamber 1 occupancy: 3 bins on other edges")
    assert any(p.startswith("run_started -1e+300 is not between 2000-01-01") for p in problems[2])
    assert store.ingest_json(make_batch(7, seed=7).message.to_json(), "minidt-results/0@7")  # the rest keeps flowing
    assert store.snapshot().last_batch_id == 7


# --- property-based ---------------------------------------------------------------------------

SLOW = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

valid_hit = st.tuples(
    st.just(2), st.integers(0, 1), st.integers(0, 138), st.integers(0, 2**32 - 1), st.integers(0, 3563), st.integers(0, 31)
)
valid_other = st.tuples(
    st.sampled_from([0, 1, 3, 4, 5]), st.integers(0, 7), st.integers(0, 511), st.integers(0, 2**32 - 1),
    st.integers(0, 2**24 - 1), st.floats(-1e4, 1e4, allow_nan=False, width=16),
)  # fmt: skip


def _line(fields) -> str:
    return ",".join(str(f) for f in fields)


bad_line = st.one_of(
    st.tuples(valid_hit, st.integers(-5, 3).filter(bool)).map(
        lambda t: _line(t[0][: 6 + t[1]]) if t[1] < 0 else _line(t[0] + (1,) * t[1])
    ),  # wrong number of fields
    valid_hit.map(lambda f: _line((f[0], f[1], f[2], "x", f[4], f[5]))),  # not a number
    valid_hit.map(lambda f: _line((f[0], f[1], 512 + f[2], f[3], f[4], f[5]))),  # channel > 9 bits
    valid_hit.map(lambda f: _line((f[0], f[1], f[2], -1 - f[3], f[4], f[5]))),  # negative orbit
    valid_hit.map(lambda f: _line((f[0], f[1], f[2], f[3], f[4], "nan"))),
    valid_hit.map(lambda f: _line((f[0], f[1], f[2], f[3], f[4], ""))),  # empty field
)
"""CSV lines decode_csv itself must call malformed."""

rejected_line = st.one_of(
    valid_hit.map(lambda f: _line((f[0], f[1], f[2], f[3], 3564 + f[4] % 1000, f[5]))),  # hit BX >= 3564
    valid_hit.map(lambda f: _line((f[0], f[1], f[2], f[3], f[4], -1 - f[5]))),  # negative hit TDC
    valid_hit.map(lambda f: _line((6, f[1], f[2], f[3], f[4], f[5]))),  # unknown HEAD
)
"""CSV lines decode_csv accepts and the validation must reject."""


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.tuples(st.sampled_from(["good", "good", "bad", "rejected", "blank"]), st.data()), max_size=40), st.booleans(), st.booleans())
def test_decode_csv_and_decode_message_count_every_bad_line(kinds, header, crlf):
    lines, expected_null = [], []
    for kind, data in kinds:
        if kind == "good":
            lines.append(_line(data.draw(st.one_of(valid_hit, valid_other))))
        elif kind == "bad":
            lines.append(data.draw(bad_line))
        elif kind == "rejected":
            lines.append(data.draw(rejected_line))
        else:
            lines.append(" ")
        if kind != "blank":
            expected_null.append(kind != "good")
    text = ("\r\n" if crlf else "\n").join((["HEAD,FPGA,TDC_CHANNEL,ORBIT_CNT,BX_COUNTER,TDC_MEAS"] if header else []) + lines)
    decoded = decode_csv(text.encode())
    assert decoded.table.num_rows == len(expected_null)
    assert len(decoded.malformed) == sum(kind == "bad" for kind, _ in kinds)
    rejected: Counter = Counter()
    table = decode_message(text.encode(), CONTENT_TYPE_CSV, rejected=rejected)
    assert table.column("HEAD").is_null().to_pylist() == expected_null
    assert sum(rejected.values()) == sum(kind == "rejected" for kind, _ in kinds)


any_int = st.one_of(st.none(), st.integers(-(2**7), 2**7 - 1))
row_values = st.fixed_dictionaries(
    {
        "HEAD": st.one_of(st.none(), st.integers(-128, 127)),
        "FPGA": st.one_of(st.none(), st.integers(-128, 127)),
        "TDC_CHANNEL": st.one_of(st.none(), st.integers(-(2**15), 2**15 - 1)),
        "ORBIT_CNT": st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
        "BX_COUNTER": st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)),
        "TDC_MEAS": st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
    }
)
realistic_row = st.one_of(valid_hit, valid_other).map(lambda f: dict(zip(COLUMNS, f)))


def _oracle_bad(row: dict) -> bool:
    """Independent statement of the rules of dtmon.validation (module docstring), one row in plain Python."""
    values = [row[c] for c in COLUMNS]
    if all(v is None for v in values):
        return False  # a malformed CSV line: counted as malformed already, not as rejected
    if any(v is None for v in values):
        return True
    head, fpga, channel, orbit, bx, tdc = values
    if not (0 <= head <= 5 and 0 <= fpga <= 7 and 0 <= channel <= 511 and 0 <= orbit < 2**32 and 0 <= bx < 2**24):
        return True
    if not math.isfinite(tdc):
        return True
    return head == 2 and (bx > 3563 or not (0 <= tdc <= 31 and tdc == int(tdc)))


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.one_of(row_values, realistic_row, realistic_row), max_size=30), st.sampled_from(["zstd", "lz4", "none"]))
def test_decode_message_nulls_every_invalid_row_and_counts_it(rows, compression):
    table = pa.Table.from_pylist(rows, HIT_SCHEMA)
    rejected: Counter = Counter()
    out = decode_message(encode_arrow(table, compression), CONTENT_TYPE_ARROW, rejected=rejected)
    bad = [_oracle_bad(r) for r in rows]
    assert out.num_rows == len(rows) and sum(rejected.values()) == sum(bad)
    for row, is_bad, decoded in zip(rows, bad, out.to_pylist()):
        if is_bad or all(v is None for v in row.values()):
            assert all(v is None for v in decoded.values())
        else:
            assert decoded == row


@SLOW
@given(st.binary(max_size=600), st.integers(0, 2**31), st.sampled_from([CONTENT_TYPE_ARROW, None, CONTENT_TYPE_CSV, "x/y"]))
def test_decode_message_on_garbage_raises_decode_error_or_decodes(noise, seed, content_type):
    rng = np.random.default_rng(seed)
    base = bytearray(encode_arrow(pa.Table.from_pylist([dict(zip(COLUMNS, (2, 0, 1, 5, 5, 3.0)))] * 3, HIT_SCHEMA)))
    choice = seed % 3
    if choice == 0:
        value = bytes(noise)
    elif choice == 1:  # flip bytes of a good message
        for at in rng.integers(0, len(base), size=1 + seed % 8):
            base[at] = rng.integers(0, 256)
        value = bytes(base)
    else:  # truncate it
        value = bytes(base[: seed % len(base)])
    try:
        table = decode_message(value, content_type, MessageLimits(max_bytes=2**20, max_rows=10_000))
    except DecodeError:
        return
    assert table.schema.equals(HIT_SCHEMA) and table.num_rows <= 10_000
    assert not check_rows(table)[0].any()  # whatever came through is valid


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["arrow", "control", "csv", "garbage"]), st.integers(0, 2**31)), max_size=12))
def test_decode_records_never_fails_and_accounts_for_every_message(kinds):
    values, types, expected_rows = [], [], 0
    for kind, seed in kinds:
        if kind == "arrow":
            n = seed % 5
            values.append(encode_arrow(pa.Table.from_pylist([dict(zip(COLUMNS, (2, 0, seed % 700, 5, seed % 4000, 3.0)))] * n, HIT_SCHEMA)))
            types.append(CONTENT_TYPE_ARROW)
            expected_rows += n
        elif kind == "control":
            values.append(json.dumps({"event": "run-start", "run": seed % 10}).encode())
            types.append(CONTENT_TYPE_CONTROL)
            expected_rows += 1
        elif kind == "csv":
            values.append(f"2,0,{seed % 700},5,{seed % 4000},3".encode())
            types.append(CONTENT_TYPE_CSV)
            expected_rows += 1
        else:
            values.append(seed.to_bytes(8, "little"))
            types.append(CONTENT_TYPE_ARROW)
            expected_rows += 1
    rejected: Counter = Counter()
    out = decode_records(values, types, [0] * len(values), [False] * len(values), None, None, rejected)
    assert out.num_rows == expected_rows
    assert rejected["rejected message: undecodable"] == sum(k == "garbage" for k, _ in kinds)
    def bad(seed: int) -> bool:
        return seed % 700 > 511 or seed % 4000 > 3563

    bad_rows = sum((seed % 5 if kind == "arrow" else 1) for kind, seed in kinds if kind in ("arrow", "csv") and bad(seed))
    garbage = sum(k == "garbage" for k, _ in kinds)
    data_rows = pa.compute.equal(out.column("run_event"), 0)
    malformed = pa.compute.sum(pa.compute.and_(data_rows, out.column("HEAD").is_null())).as_py() or 0
    assert malformed == bad_rows + garbage  # every bad row and message ends as a counted malformed row
    # rows the validation rejected (decode_csv already calls a 10-bit channel malformed itself)
    validated = sum((seed % 5 if kind == "arrow" else seed % 700 <= 511) for kind, seed in kinds if kind in ("arrow", "csv") and bad(seed))
    assert sum(v for k, v in rejected.items() if not k.startswith("rejected message")) == validated


absurd_numbers = st.one_of(
    st.integers(-(10**40), 10**40), st.floats(allow_nan=True, allow_infinity=True), st.just(10**30), st.just(-1e300)
)
fields = ["hits", "rows_read", "malformed_rows", "batch_started", "published", "run_started", "produced_first",
          "detector_time_s", "orbit_min", "orbit_max", "trigger_interval_s", "batch_id", "orbits_with_hits"]  # fmt: skip


@settings(max_examples=1000, deadline=None)
@given(st.integers(0, 50), st.lists(st.tuples(st.sampled_from(fields + ["chamber_hits", "occupancy", "drift"]), absurd_numbers), max_size=4))
def test_results_parser_never_crashes_and_the_store_never_takes_an_insane_message(seed, mutations):
    doc = json.loads(make_batch(seed, seed=seed, v2=True).message.to_json())
    for name, value in mutations:
        if isinstance(value, float) and not math.isfinite(value):
            value = str(value)  # JSON has no NaN / Infinity: a string the schema must refuse
        if name == "chamber_hits":
            doc["chambers"][seed % 4]["hits"] = value
        elif name == "occupancy":
            doc["chambers"][seed % 4]["occupancy"]["bin_counts"][seed % 64] = value
        elif name == "drift":
            doc["chambers"][seed % 4]["drift_time"]["bin_counts"] = [value] * (seed % 5)
            doc["chambers"][seed % 4]["drift_time"]["bin_edges"] = [0.0] + [float(k + 1) for k in range(seed % 5)]
        else:
            doc[name] = value
    data = json.dumps(doc).encode()
    message, problems = parse_results(data, now=NOW)
    store = ResultsStore(history=10, clock=lambda: NOW)
    ingested = store.ingest_json(data, "minidt-results/0@0")
    assert ingested == (not problems)
    assert store.snapshot().invalid_messages == (0 if ingested else 1)
    if message is not None and not problems:  # a sane message: every number bounded, histograms on their bins
        assert 0 <= message.hits <= message.rows_read <= 2**53
        assert all(len(c.occupancy.bin_counts) == 64 and sum(c.occupancy.bin_counts) == c.hits for c in message.chambers)
        assert 946_684_800 <= message.batch_started <= NOW + 86_400
    if not mutations:
        assert problems == []  # the factory's own messages are sane
