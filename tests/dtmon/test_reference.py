"""Reference runs (dtmon.reference): built from results messages, saved and loaded, and
`dtmon reference save` reading a real Tansu broker's results topic; the processor's checks use it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from dtmon.kafka import KafkaClients
from typer.testing import CliRunner

from dtmon.cli import app
from dtmon.reference import ReferenceError, load_reference, reference_from_messages, save_reference
from dtmon.settings import load_settings
from dtmon.synth import SynthParams, generate
from processor.message import build_message
from processor.reduce import Binning, reduce_rows
from processor.quality import QualityMonitor
from tests.dashboard.factory import make_batch
from tests.processor.conftest import create_topic, with_source_columns


def messages(n: int, run: int = 7, first: int = 0):
    return [make_batch(first + i, seed=first + i, v2=True, run=run).message for i in range(n)]


def test_reference_sums_the_messages_histograms_and_round_trips(tmp_path):
    msgs = messages(5)
    ref = reference_from_messages(msgs, now=123.0)
    occupancy = np.sum([[c.occupancy.bin_counts for c in m.chambers] for m in msgs], axis=0)
    drift = np.sum([[c.drift_time.bin_counts for c in m.chambers] for m in msgs], axis=0)
    np.testing.assert_array_equal(ref.occupancy(), occupancy)
    np.testing.assert_array_equal(ref.drift_time(), drift)
    assert (ref.run, ref.first_batch, ref.last_batch, ref.batches) == (7, 0, 4, 5)
    assert ref.detector_time_s == pytest.approx(sum(m.detector_time_s for m in msgs))
    assert ref.chambers[2].rate_hz == pytest.approx(occupancy[2].sum() / ref.detector_time_s, rel=1e-4)
    path = save_reference(ref, tmp_path / "ref.json")
    assert json.loads(path.read_text())["schema"] == "dtmon.reference"
    assert load_reference(path) == ref


def test_bad_reference_files(tmp_path):
    with pytest.raises(ReferenceError, match="no results message"):
        reference_from_messages([])
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "dtmon.reference", "version": 1}')
    with pytest.raises(ReferenceError, match=r"^bad.json: name: Field required"):
        load_reference(bad)
    with pytest.raises(ReferenceError, match="cannot read reference"):
        load_reference(tmp_path / "missing.json")
    doc = json.loads(reference_from_messages(messages(1)).to_json())
    doc["version"] = 9
    bad.write_text(json.dumps(doc))
    with pytest.raises(ReferenceError, match="not a dtmon.reference/1 file"):
        load_reference(bad)


def synthetic_message(batch_id: int, seed: int, params: SynthParams, monitor: QualityMonitor | None = None):
    rows = with_source_columns(generate(200_000, seed=seed, params=params), run=1)
    settings = load_settings(scint_channel=128)
    agg = reduce_rows(rows, Binning.from_settings(settings))
    return agg, build_message(batch_id, agg, trigger_interval_s=2.0, batch_started=0.0, published=0.0)


def test_processor_compares_shapes_and_rates_with_a_reference(tmp_path):
    """A reference of healthy SYNTHETIC data: healthy data matches it, a slower drift velocity does not."""
    healthy = SynthParams(hot_channels=())
    ref = reference_from_messages([synthetic_message(i, 100 + i, healthy)[1] for i in range(3)], name="good run")
    path = save_reference(ref, tmp_path / "ref.json")
    settings = load_settings(scint_channel=128, reference_file=str(path))
    monitor = QualityMonitor(settings)
    agg, _ = synthetic_message(0, 7, healthy)
    report = monitor.update(0, agg).quality
    assert report.reference == "good run" and report.quality == "good", report.reason
    checks = {r.check: r for r in report.chambers[1].checks}
    assert checks["occupancy_shape"].quality == "good" and checks["drift_time_shape"].quality == "good"
    assert checks["rate"].values["reference_hz"] == pytest.approx(ref.chambers[1].rate_hz)

    slow = QualityMonitor(settings)
    agg, _ = synthetic_message(0, 8, SynthParams(hot_channels=(), drift_velocity_um_per_ns=47.0))
    checks = {r.check: r for r in slow.update(0, agg).quality.chambers[0].checks}
    assert checks["drift_time_shape"].quality in ("warning", "bad"), checks["drift_time_shape"].reason
    assert checks["drift_time_shape"].values["chi2_ndf"] > 3.0
    assert checks["occupancy_shape"].quality == "good"  # the occupancy does not depend on the drift velocity
    assert checks["time_box"].quality == "bad"


@pytest.mark.integration
def test_reference_save_reads_the_results_topic(kafka_bootstrap, topic_name, tmp_path, monkeypatch):
    create_topic(kafka_bootstrap, topic_name)
    producer = KafkaClients(kafka_bootstrap).producer()
    sent = messages(4, run=7) + messages(3, run=8, first=4)
    for m in sent:
        producer.produce(topic_name, key=str(m.batch_id).encode(), value=m.to_json())
    producer.produce(topic_name, key=b"x", value=b"not json")  # skipped, not fatal
    assert producer.flush(10) == 0
    del producer
    monkeypatch.setenv("DTMON_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("DTMON_RESULTS_TOPIC", topic_name)
    runner = CliRunner()

    result = runner.invoke(app, ["reference", "save", "--run", "7", "--out", str(tmp_path / "run7.json")])
    assert result.exit_code == 0, result.output
    ref = load_reference(tmp_path / "run7.json")
    assert (ref.run, ref.batches, ref.first_batch, ref.last_batch) == (7, 4, 0, 3)
    np.testing.assert_array_equal(ref.occupancy(), reference_from_messages(sent[:4]).occupancy())

    result = runner.invoke(app, ["reference", "save", "--last-batches", "2", "--out", str(tmp_path / "last.json")])
    assert result.exit_code == 0, result.output
    assert (load_reference(tmp_path / "last.json").first_batch, load_reference(tmp_path / "last.json").last_batch) == (5, 6)

    result = runner.invoke(app, ["reference", "save", "--run", "99", "--out", str(tmp_path / "none.json")])
    assert result.exit_code == 1 and "no results message" in result.output
    result = runner.invoke(app, ["reference", "save", "--out", str(tmp_path / "x.json")])
    assert result.exit_code != 0 and "exactly one of --run N or --last-batches N" in result.output
