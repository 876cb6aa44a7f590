"""Benchmarks: timing harness, machine roofline, suites for `seqmix bench`, KAN vs MLP."""
