"""Benchmarks (not part of the bot). See bench/RESULTS.md."""
