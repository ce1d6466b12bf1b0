"""dtmon benchmarks (issue 3): ``python -m bench --help``. Input is always SYNTHETIC (``dtmon.synth``)."""
