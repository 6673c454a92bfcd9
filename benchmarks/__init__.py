"""Benchmarks for mpkit (not part of the installed package). Run: python benchmarks/bench_pool.py"""
