"""dtmon benchmarks: ``python -m bench --help``. Input is always SYNTHETIC (``dtmon.synth``)."""
