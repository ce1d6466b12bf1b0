"""Per-batch aggregation in Spark against an independent pandas computation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from dtmon.hits import HIT_SCHEMA
from dtmon.schema import ResultsMessage
from processor.message import build_message
from dtmon.settings import load_settings
from processor.plan import aggregate_batch
from processor.reduce import BatchAggregates
from tests.processor.conftest import expected_outputs, message_frame, with_source_columns


def as_frame(spark, table: pa.Table):
    """A Spark DataFrame of source rows, one Kafka message per DAQ row (nulls stay nulls)."""
    return message_frame(spark, with_source_columns(table))


def test_aggregate_genuine_rows_matches_pandas(spark, genuine_table):
    frame = genuine_table.to_pandas()
    expected = expected_outputs(frame)
    agg = aggregate_batch(as_frame(spark, genuine_table))

    assert agg.rows_read == len(frame)
    assert agg.malformed_rows == 0
    assert agg.hits == expected["hits"]
    assert agg.hits_outside_chambers == expected["hits_outside_chambers"]
    np.testing.assert_array_equal(agg.occupancy, expected["occupancy"])
    np.testing.assert_array_equal(agg.multiplicity, expected["multiplicity"])
    hits = frame[frame.HEAD == 2]
    assert (agg.orbit_min, agg.orbit_max) == (hits.ORBIT_CNT.min(), hits.ORBIT_CNT.max())
    assert agg.produced_first_ms == 1_700_000_000_000
    assert agg.produced_last_ms == 1_700_000_000_000 + len(frame) - 1


def test_known_counts_on_genuine_rows(spark, genuine_table):
    """Hits per chamber of the 999 genuine rows as counted in shared/data/minidt/SOURCES.md."""
    agg = aggregate_batch(as_frame(spark, genuine_table))
    assert agg.occupancy.sum(axis=1).tolist() == [80, 171, 103, 143]
    assert agg.hits == 499


def test_malformed_rows_are_counted_not_used(spark, genuine_table):
    nulls = pa.Table.from_pylist([{}, {}, {}], genuine_table.schema)
    table = pa.concat_tables([genuine_table.slice(0, 100), nulls])
    agg = aggregate_batch(as_frame(spark, table))
    assert agg.rows_read == 103
    assert agg.malformed_rows == 3
    assert agg.hits == int((genuine_table.slice(0, 100).column("HEAD").to_numpy() == 2).sum())


def test_multiplicity_counts_distinct_channels_per_orbit(spark):
    # orbit 10: chamber 0 channels 1, 1 (repeat), 2 -> k=2; orbit 11: chamber 0 channel 5 -> k=1;
    # orbit 10: chamber 3 (FPGA 1, ch 64+7) -> k=1; HEAD 0 row and channel 138 ignored.
    rows = pd.DataFrame(
        {
            "HEAD": [2, 2, 2, 2, 2, 0, 2],
            "FPGA": [0, 0, 0, 0, 1, 0, 1],
            "TDC_CHANNEL": [1, 1, 2, 5, 71, 3, 138],
            "ORBIT_CNT": [10, 10, 10, 11, 10, 10, 10],
            "BX_COUNTER": [1] * 7,
            "TDC_MEAS": [1.0] * 7,
        }
    )
    table = pa.Table.from_pandas(rows, schema=HIT_SCHEMA, preserve_index=False)
    agg = aggregate_batch(as_frame(spark, table))
    assert agg.multiplicity[0, :3].tolist() == [1, 1, 0]
    assert agg.multiplicity[3, 0] == 1
    assert agg.multiplicity.sum() == 3
    assert agg.occupancy[0, 1] == 2 and agg.occupancy[3, 7] == 1
    assert agg.hits == 6 and agg.hits_outside_chambers == 1
    assert agg.orbits_with_hits == 2


def test_build_message_round_trips_and_validates():
    agg = BatchAggregates(rows_read=10, hits=4, orbit_min=5, orbit_max=9, produced_first_ms=1000, produced_last_ms=3000)
    agg.occupancy[2, 63] = 4
    agg.multiplicity[2, 3] = 1
    message = build_message(7, agg, trigger_interval_s=2.0, batch_started=100.0, published=101.5)
    parsed = ResultsMessage.from_json(message.to_json())
    assert parsed.batch_id == 7
    assert parsed.hits_per_chamber == [0, 0, 4, 0]
    assert parsed.chambers[2].occupancy.bin_counts[63] == 4
    assert parsed.chambers[2].multiplicity.bin_counts[3] == 1
    assert parsed.chambers[2].multiplicity.bin_edges[3:5] == [3.5, 4.5]
    assert (parsed.produced_first, parsed.produced_last) == (1.0, 3.0)


def test_message_rejects_wrong_histogram_shape():
    agg = BatchAggregates()
    message = build_message(0, agg, trigger_interval_s=1.0, batch_started=0.0, published=0.0)
    document = message.model_dump(by_alias=True)
    document["chambers"][0]["occupancy"]["bin_counts"] = [1, 2]
    with pytest.raises(ValueError):
        ResultsMessage.model_validate(document)


def test_poisoned_raw_message_is_counted_and_the_rest_of_the_batch_kept(spark, genuine_table):
    """A raw message over the row cap (``Settings.max_message_rows``) is refused whole: one rejected
    message with its topic/partition@offset in the results, one malformed row; every other row counted."""
    from dtmon.settings import Settings
    from dtmon.wire import CONTENT_TYPE_ARROW, encode_arrow
    from processor.message_rows import MESSAGE_SCHEMA, SPARK_SCHEMA
    from tests.processor.conftest import as_messages

    good = as_messages(with_source_columns(genuine_table, rows_per_message=100))
    bomb = pa.concat_tables([genuine_table] * 2)  # 1998 rows > the cap of 1500
    poisoned = pa.Table.from_pylist([{"topic": "test", "partition": 0, "offset": 9999, "produced_ms": 1_700_000_000_000,
                                      "content_type": CONTENT_TYPE_ARROW, "synthetic": False, "run": None,
                                      "value": encode_arrow(bomb)}], MESSAGE_SCHEMA)
    frame = spark.createDataFrame(pa.concat_tables([good, poisoned]), schema=SPARK_SCHEMA)
    settings = Settings(max_message_rows=1500)
    agg = aggregate_batch(frame, settings)
    expected = expected_outputs(genuine_table.to_pandas())

    assert agg.rejected_messages == 1
    assert agg.rejected_details == ["test/0@9999: " + agg.rejected_details[0].split(": ", 1)[1]]
    assert agg.rows_read == genuine_table.num_rows + 1 and agg.malformed_rows == 1
    assert agg.hits == expected["hits"]
    message = build_message(3, agg, trigger_interval_s=2.0, batch_started=1.0, published=2.0)
    assert message.rejected_messages == 1
    assert [e.kind for e in message.events] == ["rejected_message"] and "test/0@9999" in message.events[0].detail


def test_the_warm_up_job_reads_no_rows_and_counts_nothing_malformed(spark):
    from processor.plan import warm_up

    agg = warm_up(spark, load_settings(shuffle_partitions=2))
    assert agg.rows_read == 0 and agg.malformed_rows == 0 and agg.hits == 0
    assert not agg.run_events and agg.rejected_messages == 0 and agg.produced_first_ms is None


def test_the_task_workers_functions_import_neither_pydantic_nor_the_kafka_client(tmp_path):
    """Spark pickles each stage's function and every task worker imports what unpickling it
    needs; the decoding and reducing workers need numpy, pyarrow and dtmon's pure modules only."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from pyspark import cloudpickle

    import processor
    from dtmon.settings import Settings
    from processor.plan import decode_partition, decode_reduce_partition, reduce_partition
    from processor.reduce import Binning

    binning = Binning.from_settings(Settings())
    pickled = tmp_path / "functions.pkl"
    pickled.write_bytes(cloudpickle.dumps([decode_reduce_partition(binning), decode_partition(binning, 4), reduce_partition(binning)]))
    heavy = ["pydantic", "pydantic_settings", "confluent_kafka", "processor.kafka_source", "pyspark.sql.datasource"]
    probe = (f"import pickle, sys; functions = pickle.loads(open({str(pickled)!r}, 'rb').read()); "
             f"print(len(functions), [m for m in {heavy!r} if m in sys.modules])")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(processor.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env).stdout.strip().split(maxsplit=1)
    assert out == ["3", "[]"]


def test_the_source_module_and_its_data_source_import_no_kafka_client_until_one_is_used():
    """Spark's create-data-source and plan-read workers import ``processor.kafka_source`` and make a
    reader on the start-up path without talking to Kafka: ``dtmon.kafka`` (pydantic, confluent-kafka)
    waits for the first client."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import processor
    from dtmon.kafka import END_PROBE_FETCH_WAIT_MS
    from processor import kafka_source

    assert kafka_source.SHORT_FETCH_WAIT_MS == END_PROBE_FETCH_WAIT_MS
    heavy = ["pydantic", "confluent_kafka", "dtmon.kafka"]
    probe = ("import sys; from processor.kafka_source import KafkaDataSource; "
             "reader = KafkaDataSource({'subscribe': 't', 'kafka.bootstrap.servers': 'h:1'}).streamReader(None); "
             f"before = [m for m in {heavy!r} if m in sys.modules]; servers = reader.clients.config.bootstrap_servers; "
             f"print(before, servers, [m for m in {heavy!r} if m in sys.modules])")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(processor.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env).stdout.strip()
    assert out.startswith("[] h:1 [") and "'dtmon.kafka'" in out.split(" h:1 ")[1], out  # made on first use
