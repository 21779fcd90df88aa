"""Benchmarks: never collected by the default test run."""
