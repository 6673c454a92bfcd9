"""The engine: worker processes, the pool that drives them, and the errors that cross between.

No IPython and no widgets here; front-ends read :class:`MapStats` snapshots.
"""
from ._errors import (Failure, MapInterrupted, RemoteError, RemoteTraceback, ResultList,
                      SerializationError, TaskTimeout, WorkerDied, WorkerInitError, MpkitWarning)
from ._pool import Pool, default_start_method, default_workers
from ._run import MapStats

__all__ = [
    "Pool", "MapStats", "default_start_method", "default_workers",
    "Failure", "ResultList", "RemoteTraceback", "RemoteError", "WorkerDied", "TaskTimeout",
    "SerializationError", "WorkerInitError", "MapInterrupted", "MpkitWarning",
]
