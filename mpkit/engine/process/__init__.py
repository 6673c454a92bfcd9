"""The local backend: worker processes on this machine, driven by one manager thread per pool.

    Pool (_pool) ── Run chunks ──► Manager thread (_manager) ── one duplex pipe each ──► worker (_worker)
                                   watches sentinels, kills      process groups (_proctree),
                                   whole process trees           fd 1/2 capture (_capture)

What is not about processes (the ledger of a map, chunk sizing, errors, pipelines) lives one
folder up, in ``mpkit.engine``, and is shared with every backend.
"""
from ._pool import Pool, default_start_method, default_workers, live_pools

__all__ = ["Pool", "default_start_method", "default_workers", "live_pools"]
