"""Benchmarks behind ``mba bench``: timings with CUDA events (triton.testing.do_bench), JSON + markdown reports."""
