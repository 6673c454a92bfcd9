"""The engine: worker processes, the pool that drives them, and the errors that cross between.

No IPython and no widgets here; front-ends read :class:`MapStats` snapshots.
"""
from ._errors import (Failure, MapInterrupted, RemoteError, RemoteTraceback, ResultList,
                      SerializationError, TaskTimeout, WorkerDied, WorkerInitError, MpkitWarning)
from .process import Pool, default_start_method, default_workers
from ._run import MapStats
from ._pipeline import Pipeline
from ._pipeline_stats import PipelineStats, StageStats
from ._service import Service

__all__ = [
    "Pool", "MapStats", "Pipeline", "PipelineStats", "StageStats", "Service", "default_start_method", "default_workers",
    "Failure", "ResultList", "RemoteTraceback", "RemoteError", "WorkerDied", "TaskTimeout",
    "SerializationError", "WorkerInitError", "MapInterrupted", "MpkitWarning",
]
