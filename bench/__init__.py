"""Benchmarks: they print figures and ratios against a baseline in the same run; they never assert."""
