"""The page-timing benchmark publishes results messages the dashboard accepts (else it times out)."""

import time

import numpy as np

from bench.page_timing import results_message
from dtmon.validation import parse_results


def test_bench_messages_pass_the_dashboards_checks():
    rng = np.random.default_rng(0)
    for batch_id in range(20):
        message, problems = parse_results(results_message(batch_id, time.time(), rng).to_json())
        assert problems == [], problems
        assert message.version == 3 and message.quality is not None
