"""Task functions for the benchmarks.

They live in a module, not in the benchmark script, because forkserver, spawn and loky workers
import task functions by name: the harness puts the repo root on sys.path and PYTHONPATH so that
``benchmarks._tasks`` imports in every child.
"""
import time


def inc(x):
    """Workload (a) and (c): as little work as possible, so only the tool's overhead is left."""
    return x + 1


def spin(n):
    """Workload (b): ``n`` iterations of pure-Python arithmetic (the GIL held throughout)."""
    total = 0
    for i in range(n):
        total += i * i
    return total & 0xFFFF


def nap(seconds):
    """Warm-up: long enough per item that every worker of a pool gets one and is started."""
    time.sleep(seconds)
    return seconds


def inc_chunk(data: bytes) -> bytes:
    """bench_dask: (a) for plain Dask, a chunk of items in and out as one pickled bytes each."""
    import pickle

    return pickle.dumps([x + 1 for x in pickle.loads(data)], pickle.HIGHEST_PROTOCOL)


def spin_chunk(data: bytes) -> bytes:
    """bench_dask: (b) for plain Dask, a chunk of loop lengths in, their spin() results out."""
    import pickle

    return pickle.dumps([spin(n) for n in pickle.loads(data)], pickle.HIGHEST_PROTOCOL)


_embedder = None


def embed_batch(texts: list) -> list:
    """Workload (d) for plain Dask: one batch through the NumpyEmbedder this worker built once."""
    global _embedder
    if _embedder is None:
        from mpkit.recipes.inference import NumpyEmbedder

        _embedder = NumpyEmbedder()
    return _embedder(texts)
