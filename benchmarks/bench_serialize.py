"""Benchmark: what mpkit's serializer costs next to plain pickle and cloudpickle, in one run.

    python benchmarks/bench_serialize.py

mpkit pickles items and results with a cloudpickle Pickler whose Python hook returns at once for
anything but classes, functions and modules, and whose reducer table is a plain dict
(``mpkit.engine._serialize.dumps``). This measures the promise "plain data costs what pickle
costs", and the price of data whose classes are defined in a cell (which plain pickle cannot send
to a worker at all).

Payloads (one chunk's worth each): 10,000 ints; 10,000 short strings; 1,000 small dicts; a list of
100 float64 arrays of 10,000 elements; 1,000 dataclass instances of a class defined in
``__main__``. Medians of 15 calls each, tools interleaved per round; ratios are to pickle.dumps.
"""
from __future__ import annotations

import pickle
import statistics
import sys
import time
import types
from datetime import datetime, timedelta

import cloudpickle
import numpy as np

from mpkit.engine import _serialize

ROUNDS = 15


def _cell_class():
    """A dataclass living in a module named __main__ that pickle cannot import by name elsewhere."""
    main = types.ModuleType("__main__")
    exec("from dataclasses import dataclass\n@dataclass\nclass Job:\n    n: int\n    path: str\n", vars(main))
    return main


def main() -> None:
    cell = _cell_class()
    payloads = {
        "10,000 ints": list(range(10_000)),
        "10,000 short strings": [f"file_{i:05d}.xlsx" for i in range(10_000)],
        "1,000 small dicts": [{"id": i, "name": f"n{i}", "score": i / 3} for i in range(1_000)],
        "100 arrays of 80 kB": [np.arange(10_000, dtype="float64") for _ in range(100)],
        "10,000 datetimes": [datetime(2026, 1, 1) + timedelta(minutes=i) for i in range(10_000)],
    }
    tools = {
        "pickle.dumps": lambda obj: pickle.dumps(obj, pickle.HIGHEST_PROTOCOL),
        "cloudpickle.dumps": lambda obj: cloudpickle.dumps(obj, pickle.HIGHEST_PROTOCOL),
        "mpkit dumps": _serialize.dumps,
    }
    rows = []
    real_main = sys.modules["__main__"]
    for name, obj in payloads.items():
        rows.append((name, _measure(tools, obj)))
    sys.modules["__main__"] = cell  # as in a kernel: the cell's namespace is __main__
    try:
        jobs = [cell.Job(i, f"file_{i}.xlsx") for i in range(1_000)]
        rows.append(("1,000 cell dataclass items", _measure(tools, jobs)))
    finally:
        sys.modules["__main__"] = real_main
    print("| payload | " + " | ".join(tools) + " |")
    print("| --- |" + " ---: |" * len(tools))
    for name, times in rows:
        base = times["pickle.dumps"]
        print(f"| {name} | " + " | ".join(f"{t * 1e6:,.0f} µs ({t / base:.2f}×)" for t in times.values()) + " |")
    print("\n(pickle.dumps of cell dataclass items names __main__.Job: a worker cannot load those bytes.)")


def _measure(tools, obj) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in tools}
    for _ in range(ROUNDS):
        for name, dumps in tools.items():
            start = time.perf_counter()
            dumps(obj)
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


if __name__ == "__main__":
    main()
