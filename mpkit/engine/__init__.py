"""The engine: worker processes, the pool that drives them, and the errors that cross between.

No IPython and no widgets here: front-ends plug in through the observer interface
(:class:`MapObserver`, :class:`PipelineObserver`) and read frozen snapshots (:class:`MapStats`,
:class:`PipelineStats`). The engine's pools and pipelines show nothing unless given one;
``mpkit.Pool``, ``mpkit.Pipeline`` and ``mpkit.map`` choose one for where they run.
"""
from ._errors import (Failure, MapInterrupted, RemoteError, RemoteTraceback, ResultList,
                      SerializationError, TaskTimeout, WorkerDied, WorkerInitError, MpkitWarning)
from .process import Pool, default_start_method, default_workers, live_pools
from ._default import default_pool
from ._observe import (MapFrontEnd, MapObserver, MapObserverFactory, PipelineFrontEnd, PipelineObserver)
from ._run import MapStats
from ._pipeline import Pipeline, StageSpec, live_pipelines
from ._pipeline_stats import PipelineStats, StageStats
from ._service import Service

__all__ = [
    "Pool", "MapStats", "Pipeline", "PipelineStats", "StageStats", "StageSpec", "Service",
    "default_start_method", "default_workers", "default_pool", "live_pools", "live_pipelines",
    "MapObserver", "MapObserverFactory", "MapFrontEnd", "PipelineObserver", "PipelineFrontEnd",
    "Failure", "ResultList", "RemoteTraceback", "RemoteError", "WorkerDied", "TaskTimeout",
    "SerializationError", "WorkerInitError", "MapInterrupted", "MpkitWarning",
]
