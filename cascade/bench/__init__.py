"""Benchmarks: each prints its figures and saves them as JSON in bench/results/."""

from cascade import results  # noqa: F401 - the load average before the run (results.LOAD_BEFORE)
