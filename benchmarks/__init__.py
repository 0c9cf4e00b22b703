"""Benchmarks for issue 5: one script per figure, `make bench` runs them all (see BENCHMARKS.md)."""
