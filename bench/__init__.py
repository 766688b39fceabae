"""Benchmarks: run apart from the test suite; they print numbers and assert nothing."""
