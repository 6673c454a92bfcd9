"""The Dask backend: map/imap and pipeline stages on a Dask distributed cluster, one task per chunk.

    Pool (_pool) ── Run chunks ──► Manager thread (_manager) ── client.submit ──► run_chunk (_task)
    cluster= (_cluster): a Client,  futures, KilledWorker,       on a Dask worker: init= once,
    an address or "local"           events (starts, prints)      fn from cloudpickle bytes
    Lanes (_lanes): a Pipeline's    a lane's chunks pinned to    a class stage built once per
    pools, one LanePool per lane    its workers                  worker for the run

Imported only when a map asks for ``cluster=`` (``import mpkit`` does not import Dask). Needs the
``dask`` extra: ``pip install "mpkit[dask]"``.
"""
from ._lanes import Lanes
from ._manager import ClusterLost
from ._pool import Pool, live_pools

__all__ = ["ClusterLost", "Lanes", "Pool", "live_pools"]
