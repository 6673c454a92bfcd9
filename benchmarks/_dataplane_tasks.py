"""Stage and task functions for bench_dataplane.py and _direct_pipes.py.

They live in a module, not in the script, because processes started by forkserver or spawn import
them by name: the harness puts the repo root on sys.path and PYTHONPATH so that
``benchmarks._dataplane_tasks`` imports in every child. numpy is imported only by the functions
that need it, so that a worker moving bytes starts without it.
"""
from __future__ import annotations

MB = 2 ** 20


def identity(x):
    """The stages of (a), (b) and (f): no work, so only the transport is timed."""
    return x


def make_bytes(i: int, size: int) -> bytes:
    """Item ``i`` as ``size`` bytes whose first 8 bytes say ``i`` (the sink checks it)."""
    return i.to_bytes(8, "little") * (size // 8)


def make_array(i: int, size: int):
    """Item ``i`` as a float64 array of ``size`` bytes filled with ``i``."""
    import numpy as np

    return np.full(size // 8, float(i))


def make_item(kind: str, i: int, size: int):
    return make_bytes(i, size) if kind == "bytes" else make_array(i, size)


def item_index(kind: str, item) -> int:
    """The ``i`` an item was made from, read back cheaply (first element only)."""
    if kind == "bytes":
        return int.from_bytes(item[:8], "little")
    return int(item[0])


def items(kind: str, n: int, size: int):
    """The source of (a) and (b): a generator, so the source never holds the whole stream."""
    for i in range(n):
        yield make_item(kind, i, size)


def build_array(nbytes: int):
    """(d) as a result and (e): a float64 array of ``nbytes`` built in the worker from a small argument."""
    import numpy as np

    return np.ones(nbytes // 8)


def mpkit_file(_=None) -> str:
    """Where this worker's mpkit comes from: the harness checks it is the parent's."""
    import os

    import mpkit

    return os.path.realpath(mpkit.__file__)
