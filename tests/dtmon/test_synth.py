"""Synthetic DAQ generator: determinism, DAQ format, calibration against the genuine rows,
telescope physics (chamber map, rotated chamber 1, drift-time box), files, S3 and CLI.

Expected values are computed here independently (pandas / numpy from the domain notes),
never copied from the generator.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import typer
from typer.testing import CliRunner

from dtmon import synth
from dtmon.hits import HIT_SCHEMA, decode_csv, encode_csv
from dtmon.services import s3_client

# Domain notes (minidt-domain.md) numbers, restated here so the test does not trust synth.py.
OFFSETS_NS = np.array([93.9, 101.4, 95.5, 92.4])
CHAMBER_Z = np.array([219.8, 977.3, 1035.6, 1819.8])
MAX_DRIFT_NS = 21.0 / 0.0538  # half a cell at 53.8 um/ns = 390.3 ns
HEADER = b"HEAD,FPGA,TDC_CHANNEL,ORBIT_CNT,BX_COUNTER,TDC_MEAS\n"


@pytest.fixture(scope="module")
def sample() -> synth.SynthOutput:
    """600 000 synthetic rows (~0.6 s), shared by the physics and calibration tests."""
    return synth.generate_with_truth(600_000, seed=11)


@pytest.fixture(scope="module")
def genuine(genuine_csv) -> pd.DataFrame:
    decoded = decode_csv(genuine_csv.read_bytes())
    assert not decoded.malformed
    return decoded.table.to_pandas()


def _frame(out: synth.SynthOutput) -> pd.DataFrame:
    df = out.table.to_pandas()
    df["kind"], df["true_drift"], df["muon"] = out.kind, out.drift_ns, out.muon
    return df


def _chamber(df: pd.DataFrame) -> pd.Series:
    """Chamber per the PDF table: FPGA 0 ch 0-63 -> 0, 64-127 -> 1, FPGA 1 -> 2, 3."""
    return df.FPGA.astype(int) * 2 + (df.TDC_CHANNEL >= 64).astype(int)


# ---- determinism and format --------------------------------------------------------------
def test_same_seed_same_rows_other_seed_other_rows():
    a = synth.generate(20_000, seed=5)
    assert a.equals(synth.generate(20_000, seed=5))
    assert not a.equals(synth.generate(20_000, seed=6))


def test_schema_and_hit_value_ranges(sample):
    table = sample.table
    assert table.schema.equals(HIT_SCHEMA)
    assert table.schema.field("ORBIT_CNT").type == pa.int64()
    df = table.to_pandas()
    assert df.notna().all().all()
    hits = df[df.HEAD == 2]
    assert hits.BX_COUNTER.between(0, 3563).all()
    tdc = hits.TDC_MEAS.to_numpy()
    assert np.array_equal(tdc, np.round(tdc)) and tdc.min() >= 1 and tdc.max() <= 30  # genuine range 1-30
    assert set(hits.FPGA.unique()) == {0, 1}
    assert hits.TDC_CHANNEL.between(0, 127).sum() + (hits.TDC_CHANNEL == 128).sum() == len(hits)
    assert ((hits.TDC_CHANNEL == 128) == (sample.kind[df.HEAD == 2] == synth.KIND_SCINT)).all()
    assert (hits[hits.TDC_CHANNEL == 128].FPGA == 1).all()
    assert df.ORBIT_CNT.between(0, 2**32 - 1).all()


def test_ancillary_words_follow_genuine_layout(sample, genuine):
    """Per-HEAD column usage of the genuine rows (SOURCES.md table), checked on both."""
    for name, df in (("genuine", genuine), ("synthetic", sample.table.to_pandas())):
        by = {h: df[df.HEAD == h] for h in (0, 1, 3, 4, 5)}
        assert by[0].TDC_CHANNEL.between(0, 31).all(), name
        assert by[0].BX_COUNTER.between(0, 3563).all(), name
        assert (by[1][["TDC_CHANNEL", "BX_COUNTER"]] == 0).all().all(), name
        assert by[1].TDC_MEAS.between(0, 255).all() and (by[1].TDC_MEAS % 1 == 0).all(), name
        assert (by[3][["TDC_CHANNEL", "TDC_MEAS"]] == 0).all().all(), name
        assert by[3].BX_COUNTER.between(1, 0xFFFF).all(), name
        for h in (4, 5):
            assert (by[h][["TDC_CHANNEL", "BX_COUNTER"]] == 0).all().all(), name
            assert (by[h].TDC_MEAS.astype(np.float16).astype(float) - by[h].TDC_MEAS).abs().max() < 1e-6, name
        assert by[4].TDC_MEAS.abs().max() < 2.0 and by[5].TDC_MEAS.abs().max() < 100, name
    syn = sample.table.to_pandas()
    g4, s4 = genuine[genuine.HEAD == 4].TDC_MEAS, syn[syn.HEAD == 4].TDC_MEAS
    assert abs(s4.std() - g4.std()) < 0.15
    g5, s5 = genuine[genuine.HEAD == 5].TDC_MEAS, syn[syn.HEAD == 5].TDC_MEAS
    assert abs(s5.median() - g5.median()) < 15


def test_words_come_in_blocks_of_four_and_orbits_are_locally_unsorted(sample, genuine):
    for name, df in (("genuine", genuine), ("synthetic", sample.table.to_pandas())):
        n = len(df) // 4 * 4
        is_hit = (df.HEAD.to_numpy()[:n] == 2).reshape(-1, 4)
        fpga = df.FPGA.to_numpy()[:n].reshape(-1, 4)
        assert (is_hit.all(1) | ~is_hit.any(1)).all(), name  # a block is all hits or all ancillary
        assert (fpga.min(1) == fpga.max(1)).all(), name  # one FPGA per block
        assert abs(is_hit.mean() - 0.5) < 0.01, name
    hits = lambda df: df[(df.HEAD == 2) & (df.ORBIT_CNT < 5e8)].ORBIT_CNT.to_numpy()  # noqa: E731
    g, s = hits(genuine), hits(sample.table.to_pandas())
    frac = lambda o: (np.diff(o) < 0).mean()  # noqa: E731
    assert 0.5 * frac(g) < frac(s) < 1.5 * frac(g)  # genuine: 42 decreases in 335 hits
    lag = np.maximum.accumulate(s) - s
    assert lag.max() < 1_000  # out of order only within a few blocks (< 0.1 s)


def test_ticks_to_counters_carries_into_next_orbit():
    start = 1_000
    per_orbit = 3564 * 30
    ticks = np.array([1, 30, 31, per_orbit, per_orbit + 1, 5 * per_orbit + 7])
    orbit, bx, tdc = synth.ticks_to_counters(ticks, start)
    assert orbit.tolist() == [1000, 1000, 1000, 1000, 1001, 1005]
    assert bx.tolist() == [0, 0, 1, 3563, 0, 0]
    assert tdc.tolist() == [1, 30, 1, 30, 1, 7]
    t = 25.0 * ((orbit - start) * 3564 + bx + tdc / 30)  # PDF 4.2.4 formula
    assert np.allclose(t, ticks * 25 / 30)
    with pytest.raises(ValueError):
        synth.ticks_to_counters(np.array([0]), start)


def test_bad_arguments_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError):
        synth.generate(-1, seed=0)
    with pytest.raises(ValueError):
        synth.write_files(tmp_path, 0)
    with pytest.raises(ValueError):
        synth.SynthParams(hit_efficiency=1.5)
    with pytest.raises(ValueError):
        synth.SynthParams(hot_channels=((0, 130, 5.0),))
    with pytest.raises(ValueError, match="32-bit"):
        synth.generate(1_000, seed=0, start_orbit=2**32 - 2)


# ---- calibration against the genuine rows -----------------------------------------------
def _head_mix(df: pd.DataFrame) -> pd.Series:
    return df.HEAD.value_counts(normalize=True).reindex(range(6), fill_value=0.0)


def _hits_per_orbit(df: pd.DataFrame) -> float:
    hits = df[df.HEAD == 2]
    return len(hits) / hits.ORBIT_CNT.nunique()


def _channels_hit(df: pd.DataFrame) -> np.ndarray:
    """Distinct channels with at least one hit, per chamber 0-3."""
    cells = df[(df.HEAD == 2) & (df.TDC_CHANNEL <= 127)]
    return cells.groupby(_chamber(cells)).TDC_CHANNEL.nunique().reindex(range(4), fill_value=0).to_numpy()


def test_calibration_matches_genuine_rows(sample, genuine):
    syn = sample.table.to_pandas()
    # HEAD mix (genuine 101/101/499/99/100/99 of 999)
    assert (_head_mix(syn) - _head_mix(genuine)).abs().max() < 0.02
    # hits per orbit with hits (genuine 1.78)
    assert _hits_per_orbit(syn) == pytest.approx(_hits_per_orbit(genuine), rel=0.08)
    # hits per chamber (channels > 127 are not chamber cells)
    def share(df: pd.DataFrame) -> pd.Series:
        return _chamber(df[(df.HEAD == 2) & (df.TDC_CHANNEL <= 127)]).value_counts(normalize=True).sort_index()

    assert (share(syn) - share(genuine)).abs().max() < 0.04
    # channel spread: share of the three busiest channels (the genuine hot channels)
    def top3(df: pd.DataFrame) -> pd.Series:
        return df[(df.HEAD == 2) & (df.TDC_CHANNEL <= 127)].groupby(["FPGA", "TDC_CHANNEL"]).size().nlargest(3)

    g3, s3 = top3(genuine), top3(syn)
    n_g = ((genuine.HEAD == 2) & (genuine.TDC_CHANNEL <= 127)).sum()
    n_s = ((syn.HEAD == 2) & (syn.TDC_CHANNEL <= 127)).sum()
    assert s3.sum() / n_s == pytest.approx(g3.sum() / n_g, abs=0.04)
    assert set(s3.index) == set(g3.index)
    # channel spread at equal sample size: distinct channels hit per chamber in 999-row windows
    starts = range(0, len(syn) - len(genuine), 60_000)
    windows = np.mean([_channels_hit(syn.iloc[i : i + len(genuine)]) for i in starts], axis=0)
    assert np.abs(windows - _channels_hit(genuine)).max() <= 8
    # calibration_report agrees with these independent numbers
    rep_s = synth.calibration_report(sample.table)
    genuine_table = pa.Table.from_pandas(genuine, schema=HIT_SCHEMA, preserve_index=False)
    rep_g = synth.calibration_report(genuine_table, scint_channel=138)
    assert rep_s["hits_per_orbit"] == pytest.approx(_hits_per_orbit(syn))
    assert rep_g["hits_per_orbit"] == pytest.approx(_hits_per_orbit(genuine))
    assert rep_g["head_fraction"][2] == pytest.approx(_head_mix(genuine)[2])
    assert rep_s["chamber_fraction"] == pytest.approx(share(syn).tolist())
    assert rep_g["scint_hits"] == 2
    assert rep_s["single_hit_orbit_fraction"] == pytest.approx(rep_g["single_hit_orbit_fraction"], abs=0.1)
    assert rep_s["hit_rate_hz"] == pytest.approx(rep_g["hit_rate_hz"], rel=0.3)


# ---- physics -----------------------------------------------------------------------------------
def test_muon_hits_map_to_the_chamber_and_layer_they_were_placed_in(sample):
    df = _frame(sample)
    is_mu = sample.kind == synth.KIND_MUON
    mu = df[is_mu]
    local = mu.TDC_CHANNEL % 64
    layer = local.mod(4).map({0: 4, 2: 3, 1: 2, 3: 1})  # PDF figure p. 19
    assert (_chamber(mu).to_numpy() == sample.chamber[is_mu]).all()
    assert (layer.to_numpy() == sample.layer[is_mu]).all()
    per_chamber = np.bincount(sample.chamber[is_mu], minlength=4)
    assert (per_chamber > 0.1 * per_chamber.sum()).all()
    # a muon gives at most one hit per cell; hits of one muon lie in one or two adjacent orbits
    assert not mu.duplicated(["muon", "FPGA", "TDC_CHANNEL"]).any()
    spread = mu.groupby("muon").ORBIT_CNT.agg(lambda o: o.max() - o.min())
    assert spread.max() <= 1


def test_chamber_1_measures_the_orthogonal_coordinate(sample):
    """Tracks are straight: the measured coordinate at chamber 2 is the interpolation of
    chambers 0 and 3 (same view); chamber 1 (rotated 90 deg) does not follow it."""
    mu = _frame(sample)[sample.kind == synth.KIND_MUON].copy()
    local = mu.TDC_CHANNEL % 64
    layer = local.mod(4).map({0: 4, 2: 3, 1: 2, 3: 1})
    mu["u"] = 42.0 * (local // 4) + 21.0 + np.where(layer.isin([1, 3]), 21.0, 0.0)
    mu["z"] = CHAMBER_Z[_chamber(mu)] + 13.0 * (layer - 1) + 6.5
    mu["chamber"] = _chamber(mu)
    mean = mu.groupby(["muon", "chamber"])[["u", "z"]].mean().unstack("chamber").dropna()
    assert len(mean) > 200
    u, z = mean["u"], mean["z"]
    slope = (u[3] - u[0]) / (z[3] - z[0])
    r2 = (u[0] + slope * (z[2] - z[0]) - u[2]).abs()
    r1 = (u[0] + slope * (z[1] - z[0]) - u[1]).abs()
    assert r2.median() < 20.0  # same view: within half a cell
    assert r1.median() > 5 * r2.median()  # orthogonal view: no relation


def _drift_times(df: pd.DataFrame, scint_channel: int = 128) -> pd.DataFrame:
    """DRIFTIME as the course defines it, for chamber hits in orbits with a scintillator hit."""
    hits = df[df.HEAD == 2].copy()
    hits["t"] = 25.0 * (hits.ORBIT_CNT * 3564 + hits.BX_COUNTER + hits.TDC_MEAS / 30)
    scint = hits[(hits.FPGA == 1) & (hits.TDC_CHANNEL == scint_channel)]
    t_scint = scint.groupby("ORBIT_CNT").t.min()  # earliest scintillator hit
    cells = hits[(hits.TDC_CHANNEL <= 127) & hits.ORBIT_CNT.isin(t_scint.index)].copy()
    cells["chamber"] = _chamber(cells)
    cells["DRIFTIME"] = cells.t - cells.ORBIT_CNT.map(t_scint) + OFFSETS_NS[cells.chamber]
    return cells


def _edges(values: np.ndarray, width: float = 5.0) -> tuple[float, float, float, float]:
    """Rising (10 %, 50 %) and falling (50 %, 10 %) positions of a box histogram, in ns."""
    counts, edges = np.histogram(values, bins=np.arange(-100.0, 500.0 + width, width))
    centre = 0.5 * (edges[1:] + edges[:-1])
    plateau = np.median(counts[(centre > 50) & (centre < 340)])
    above = np.flatnonzero(counts > 0.5 * plateau)
    first, last = above[0], above[-1]
    rise10 = centre[np.flatnonzero(counts[:first] < 0.1 * plateau)[-1]]
    fall10 = centre[last + 1 + np.flatnonzero(counts[last + 1 :] < 0.1 * plateau)[0]]
    return rise10, centre[first], centre[last], fall10


def test_drift_time_box_has_sharp_edges_at_0_and_390_ns(sample):
    cells = _drift_times(_frame(sample))
    muon = cells[cells.kind == synth.KIND_MUON]
    assert len(muon) > 10_000
    inside = muon.DRIFTIME.between(0, 390)
    assert inside.mean() >= 0.95
    for k in range(4):
        assert muon[muon.chamber == k].DRIFTIME.between(0, 390).mean() >= 0.95, k
    # DRIFTIME recovers the true drift time within a few ns (jitter + TDC step)
    err = (muon.DRIFTIME - muon.true_drift).abs()
    assert err.quantile(0.95) < 6.0
    # the histogram of every tagged hit (what the processor sees, noise included) is a box
    rise10, rise50, fall50, fall10 = _edges(cells.DRIFTIME.to_numpy())
    assert -10 <= rise50 <= 15 and rise50 - rise10 <= 20
    assert MAX_DRIFT_NS - 25 <= fall50 <= MAX_DRIFT_NS + 10 and fall10 - fall50 <= 20


def test_scintillator_channel_is_configurable():
    params = synth.SynthParams(scint_channel=138)
    df = synth.generate(100_000, seed=2, params=params).to_pandas()
    hits = df[df.HEAD == 2]
    assert (hits.TDC_CHANNEL == 128).sum() == 0
    assert ((hits.FPGA == 1) & (hits.TDC_CHANNEL == 138)).sum() > 50
    assert len(_drift_times(df, scint_channel=138)) > 500


def test_muon_rate_drives_the_number_of_muon_hits():
    low = synth.generate_with_truth(100_000, seed=3, params=synth.SynthParams(muon_rate_hz=50))
    high = synth.generate_with_truth(100_000, seed=3, params=synth.SynthParams(muon_rate_hz=400))
    frac = lambda o: (o.kind == synth.KIND_MUON).mean() / (o.kind == synth.KIND_NOISE).mean()  # noqa: E731
    assert frac(high) > 4 * frac(low)


# ---- CSV writer, files, S3, CLI ---------------------------------------------------------------
def test_fast_writer_reproduces_the_genuine_bytes_and_round_trips(genuine_csv, sample):
    raw = genuine_csv.read_bytes()
    assert encode_csv(decode_csv(raw).table) == raw
    part = sample.table.slice(0, 40_000)
    body = encode_csv(part)
    assert body.startswith(HEADER)
    assert decode_csv(body).table.equals(part)


def test_files_continue_the_orbit_counter_and_carry_a_manifest(tmp_path):
    params = synth.SynthParams()
    doc = synth.write_files(tmp_path, n_files=3, rows_per_file=30_000, seed=4, params=params)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["data_000000.txt", "data_000001.txt", "data_000002.txt", synth.MANIFEST_NAME]
    last_max = None
    for i in range(3):
        body = (tmp_path / synth.file_name(i)).read_bytes()
        assert body.startswith(HEADER)
        decoded = decode_csv(body)
        assert decoded.malformed == [] and decoded.table.num_rows == 30_000
        orbits = decoded.table.filter(pa.compute.equal(decoded.table.column("HEAD"), 2)).column("ORBIT_CNT").to_numpy()
        if last_max is None:
            assert 0 <= orbits.min() - params.start_orbit <= 50
        else:
            assert 0 < orbits.min() - last_max <= 50  # continues where the previous file stopped
        last_max = orbits.max()
        entry = doc["files"][i]
        assert entry["seed"] == synth.file_seed(4, i)
        assert decoded.table.equals(synth.generate(30_000, entry["seed"], params, start_orbit=entry["start_orbit"]))
    manifest = json.loads((tmp_path / synth.MANIFEST_NAME).read_text())
    assert manifest["synthetic"] is True
    assert manifest["generator"] == "dtmon.synth" and manifest["version"] == synth.GENERATOR_VERSION
    assert manifest["seed"] == 4 and manifest["rows_per_file"] == 30_000
    assert manifest["params"] == json.loads(params.model_dump_json())
    assert [f["name"] for f in manifest["files"]] == names[:3]


def test_one_full_size_file_is_written_in_well_under_10_s(tmp_path):
    start = time.perf_counter()
    synth.write_files(tmp_path, n_files=1, seed=9)
    elapsed = time.perf_counter() - start
    lines = (tmp_path / "data_000000.txt").read_bytes().count(b"\n")
    assert lines == 1 + 1_310_720
    print(f"synthetic file: {1_310_720 / elapsed:,.0f} rows/s ({elapsed:.2f} s)")
    assert elapsed < 10.0


@pytest.mark.integration
def test_s3_objects_carry_the_synthetic_marker(s3_endpoint):
    dest = "s3://synth-test/run-7"
    synth.write_files(dest, n_files=2, rows_per_file=8_000, seed=1, endpoint_url=s3_endpoint)
    client = s3_client(s3_endpoint)
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket="synth-test", Prefix="run-7/")["Contents"])
    assert keys == ["run-7/data_000000.txt", "run-7/data_000001.txt", f"run-7/{synth.MANIFEST_NAME}"]
    for key in keys:
        assert client.head_object(Bucket="synth-test", Key=key)["Metadata"].get("dtmon-synthetic") == "1"
    body = client.get_object(Bucket="synth-test", Key="run-7/data_000001.txt")["Body"].read()
    decoded = decode_csv(body)
    assert decoded.malformed == [] and decoded.table.num_rows == 8_000
    manifest = json.loads(client.get_object(Bucket="synth-test", Key=f"run-7/{synth.MANIFEST_NAME}")["Body"].read())
    assert manifest["synthetic"] is True and manifest["seed"] == 1


def test_cli_command_writes_files(tmp_path):
    app = typer.Typer()
    app.command("synth")(synth.cli_synth)
    app.command("noop")(lambda: None)  # two commands: typer keeps the sub-command name
    args = ["--files", "2", "--rows", "4000", "--seed", "3", "--muon-rate-hz", "120", "--scint-channel", "138"]
    result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out" / synth.MANIFEST_NAME).read_text())
    assert manifest["params"]["muon_rate_hz"] == 120 and manifest["params"]["scint_channel"] == 138
    assert (tmp_path / "out" / "data_000001.txt").read_bytes().count(b"\n") == 4001
    again = CliRunner().invoke(app, ["synth", "--dest", str(tmp_path / "again"), *args])
    assert again.exit_code == 0, again.output
    assert (tmp_path / "again" / "data_000001.txt").read_bytes() == (tmp_path / "out" / "data_000001.txt").read_bytes()
    bad = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "x"), "--files", "0"])
    assert bad.exit_code != 0 and not (tmp_path / "x").exists()
