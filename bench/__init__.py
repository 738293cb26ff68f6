"""Benchmarks: a seeded social graph and load scenarios against the running stack."""
