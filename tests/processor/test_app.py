"""The processor's session setup (pure parts, no Spark started)."""

from __future__ import annotations

from dtmon.settings import load_settings
from processor.app import spark_master


def test_the_master_of_spark_submit_is_kept_unless_one_is_configured():
    unset, set_ = load_settings(spark_master=None), load_settings(spark_master="spark://h:7077")
    assert spark_master(unset, {}) == "local[*]"  # plain `processor`: local
    assert spark_master(unset, {"PYSPARK_GATEWAY_PORT": "41234"}) is None  # spark-submit --master X: X stays
    assert spark_master(unset, {"PYSPARK_SUBMIT_ARGS": "--master spark://m:7077 pyspark-shell"}) is None
    assert spark_master(unset, {"PYSPARK_SUBMIT_ARGS": "--conf a=b pyspark-shell"}) == "local[*]"
    assert spark_master(set_, {"PYSPARK_GATEWAY_PORT": "41234"}) == "spark://h:7077"  # configured: it wins
