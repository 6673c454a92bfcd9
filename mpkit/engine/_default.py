"""The pools behind ``mpkit.map``: started on first use and kept warm.

    map(fn, items, init=a)  ──lease──► pool for (start method, a)   ◄──lease── imap(...) from an earlier cell
    map(fn, items, init=b)  ──lease──► pool for (start method, b)       (still running: untouched)

One pool per start method and ``init``: a call that asks for another gets a pool of its own, and
the pool it replaces as the default is shut down only once no call holds it any more (a map in
another thread, an ``imap`` left open in an earlier cell), never under a running map. A call that
asks for more workers grows the pool.

``cluster=`` (or ``use(cluster)``, or the environment variable ``MPKIT_CLUSTER``) makes the default
pool a Dask one (``dask.Pool``, imported only then); the key then holds the cluster instead of the
start method, so moving between the two starts the other pool.
"""
from __future__ import annotations

import os
import sys
import threading
from typing import Any, Callable

from . import _serialize
from .process._pool import Pool, default_start_method, live_pools

_lock = threading.Lock()
_pool: Pool | None = None          # the current default pool
_pool_key: tuple | None = None
_leases: dict[Pool, int] = {}      # calls holding a pool now
_retired: list[Pool] = []          # former default pools, shut down when no call holds them
_cluster: Any = None               # set by use(): the cluster= of calls that give none


def use(cluster: Any) -> None:
    """Run ``mpkit.map`` / ``imap`` / ``Pool`` on ``cluster`` (a Client, an address, "local") when
    a call gives no ``cluster=``; ``use(None)`` goes back to local processes (or MPKIT_CLUSTER)."""
    from ._arguments import check_cluster

    global _cluster
    check_cluster(cluster)
    _cluster = cluster


def cluster_for(cluster: Any = None) -> Any:
    """The cluster a call runs on: its own ``cluster=``, else ``use()``'s, else MPKIT_CLUSTER's, else None."""
    if cluster is not None:
        return cluster
    if _cluster is not None:
        return _cluster
    return os.environ.get("MPKIT_CLUSTER") or None


def get_pool(workers: int | None = None, init: Callable[[], Any] | None = None,
             start_method: str | None = None) -> Pool:
    """The warm default pool, (re)started to fit ``workers``, ``init`` and ``start_method``."""
    with _lock:
        return _current(workers, init, start_method)


def acquire(workers: int | None = None, init: Callable[[], Any] | None = None,
            start_method: str | None = None, cluster: Any = None) -> Pool:
    """The default pool, held by a call until it ``release``s it: no other call shuts it down."""
    with _lock:
        return _lease(_current(workers, init, start_method, cluster))


def lease_cluster(cluster: Any) -> Pool | None:
    """The default pool, held as ``acquire`` holds it, if it runs on ``cluster`` (whatever its
    ``init``); else None, and the default pool is left as it is (a pipeline on a cluster does not
    shut down the local pool of the notebook's maps). A pipeline's Dask lanes share its connection."""
    with _lock:
        if _pool is None or _pool.closed or _pool_key is None or _pool_key[0] != ("dask", cluster):
            return None
        return _lease(_pool)


def _lease(pool: Pool) -> Pool:
    """Count one more holder of ``pool`` (under _lock): ``release`` counts it off."""
    _leases[pool] = _leases.get(pool, 0) + 1
    return pool


def release(pool: Pool) -> None:
    with _lock:
        left = _leases.get(pool, 0) - 1
        if left > 0:
            _leases[pool] = left
        else:
            _leases.pop(pool, None)
        idle = [p for p in _retired if p not in _leases]
        for p in idle:
            _retired.remove(p)
    for p in idle:
        p.shutdown()


def _current(workers, init, start_method, cluster=None) -> Pool:
    global _pool, _pool_key
    cluster = cluster_for(cluster)
    key = (("dask", cluster) if cluster is not None else start_method or default_start_method(),
           _serialize.dumps(init) if init is not None else None)
    if _pool is not None and (_pool.closed or _pool_key != key):
        if _pool.closed or _pool not in _leases:
            _pool.shutdown()
        else:
            _retired.append(_pool)
        _pool = None
    if _pool is None and cluster is not None:
        _pool = dask_backend().Pool(cluster=cluster, init=init)
        _pool_key = key
    elif _pool is None:
        _pool = Pool(workers, start_method=key[0], init=init)
        _pool_key = key
    elif workers is not None and workers > _pool.size:
        _pool.resize(workers)
    return _pool


def default_pool() -> Pool | None:
    """The pool behind ``mpkit.map`` and ``mpkit.imap`` if one is running, without starting one
    (``None`` before the first map and after ``mpkit.shutdown()``)."""
    return _pool


def shutdown() -> None:
    """Stop every worker mpkit started: the default pool's and those of every open ``Pool``.

    The next ``mpkit.map`` starts a new default pool; a ``Pool`` that was shut down stays closed.
    """
    global _pool
    with _lock:
        for pool in live_pools() + dask_pools():  # the default pool among them: listed before it is let go
            pool.shutdown()
        _pool = None
        _retired.clear()
        _leases.clear()


def dask_backend():
    """``mpkit.engine.dask``, imported now, or an ImportError that says how to install it."""
    try:
        from . import dask
    except ImportError as exc:
        raise ImportError(f"cluster= runs mpkit on Dask, which is not installed here ({exc}). Fix: pip "
                          "install \"mpkit[dask]\" (or distributed), or leave out cluster= and unset "
                          "MPKIT_CLUSTER to use worker processes on this machine.") from exc
    return dask


def dask_pools() -> list:
    """The Dask pools open now (none, and no Dask import, if no call asked for a cluster)."""
    dask_backend = sys.modules.get(__package__ + ".dask")
    return dask_backend.live_pools() if dask_backend is not None else []
