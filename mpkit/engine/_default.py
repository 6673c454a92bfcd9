"""The pool behind ``mpkit.map``: one per process, started on first use and kept warm.

A call that asks for another start method or another ``init`` gets a fresh pool (the old one is
shut down: its workers ran the other init); a call that asks for more workers grows it.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

import cloudpickle

from ._pool import Pool, default_start_method, live_pools

_lock = threading.Lock()
_pool: Pool | None = None
_pool_key: tuple | None = None


def get_pool(workers: int | None = None, init: Callable[[], Any] | None = None,
             start_method: str | None = None) -> Pool:
    """The warm default pool, (re)started to fit ``workers``, ``init`` and ``start_method``."""
    global _pool, _pool_key
    key = (start_method or default_start_method(), cloudpickle.dumps(init) if init is not None else None)
    with _lock:
        if _pool is not None and (_pool.closed or _pool_key != key):
            _pool.shutdown()
            _pool = None
        if _pool is None:
            _pool = Pool(workers, start_method=key[0], init=init)
            _pool_key = key
        elif workers is not None and workers > _pool.size:
            _pool.resize(workers)
        return _pool


def shutdown() -> None:
    """Stop every worker mpkit started: the default pool's and those of every open ``Pool``.

    The next ``mpkit.map`` starts a new default pool; a ``Pool`` that was shut down stays closed.
    """
    global _pool
    with _lock:
        for pool in live_pools():  # the default pool among them: listed before it is let go
            pool.shutdown()
        _pool = None
