"""mpkit: multiprocessing that works from Jupyter notebooks, and shows what it does.

    import mpkit
    results = mpkit.map(fn, items)          # warm, spawn-safe pool; errors with worker tracebacks

    %load_ext mpkit
    %%mp_pool items -n 4 -o results         # a cell's function mapped over items
"""
from ._api import Pipeline, Pool, imap, map, shutdown, use
from .engine import (Failure, MapInterrupted, MapStats, PipelineStats, Service, StageStats, RemoteError, RemoteTraceback,
                     ResultList, SerializationError, TaskTimeout, WorkerDied, WorkerInitError, MpkitWarning)

__version__ = "0.1.0"

__all__ = [
    "map", "imap", "shutdown", "use", "Pool", "MapStats", "Pipeline", "PipelineStats", "StageStats", "Service",
    "Failure", "ResultList", "RemoteTraceback", "RemoteError", "WorkerDied", "TaskTimeout",
    "SerializationError", "WorkerInitError", "MapInterrupted", "MpkitWarning",
]


def load_ipython_extension(ipython) -> None:
    """``%load_ext mpkit``: register the magics (imported only now, so ``import mpkit`` stays light)."""
    from .magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython) -> None:
    from .magics import unload_ipython_extension as unload

    unload(ipython)
