"""Benchmarks: each prints its figures and saves them as JSON in bench/results/."""
