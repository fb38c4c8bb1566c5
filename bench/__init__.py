"""Benchmarks of a real Leoronic cluster on loopback."""
