"""A pool whose workers are a Dask distributed cluster's: the same map/imap, one task per chunk.

    map()/imap() in the calling thread         Manager thread (_manager)         Dask cluster
    ──────────────────────────────────         ─────────────────────────         ────────────
    Run.feed(): items ─► pending chunks ─wake─► client.submit(run_chunk, bytes) ─► scheduler ─►
    _drive() ◄── done batches / failures ◄───── futures done, KilledWorker,        workers'
             ◄── OutputRelay (prints) ◄──────── "out" events (subscribe_topic) ◄── task threads

What differs from the process backend, and why (the rest is the shared driver, ``_pool.BasePool``):
- ``workers`` caps the chunks a map runs at once; the cluster's threads are its workers, counted
  when a map starts (a cluster that scales is followed from one map to the next).
- ``init=`` runs once in each Dask worker process (a worker plugin, so a nanny's replacement and a
  worker that joins later run it too), in a task thread, before its first mpkit chunk.
- ``timeout=``: items still travel in chunks; the task times each one and returns at the first
  late one with the results before it (the items after it are sent again). A Dask thread cannot
  be stopped, so the worker running a late item is restarted through its nanny (workers started
  without a nanny cannot be; the item fails all the same).
- A worker death: on the LocalCluster mpkit starts, Dask gives up at once (KilledWorker) and mpkit
  blames and retries as locally. On a cluster of your own, Dask first reschedules the task itself
  (``distributed.scheduler.allowed-failures``, 3 by default): an item can then run again after a
  death even with ``retries=0``.
- Workers on this machine in the notebook's process group (a LocalCluster started in the kernel)
  ignore SIGINT: Jupyter's interrupt reaches the whole group, and would kill them.
- The notebook's sys.path, cwd and environment variables are not sent (the workers may be other
  machines); what the function needs must be importable there. Only what a task prints from its
  own thread is captured, not file descriptors 1 and 2.
"""
from __future__ import annotations

import os
import socket
import uuid
import weakref
from typing import Any, Callable

from .. import _arguments, _serialize
from .._output import OutputRelay
from .._pool import BasePool
from . import _cluster, _task
from ._manager import Manager

_live_pools: "weakref.WeakSet[Pool]" = weakref.WeakSet()


class Pool(BasePool):
    """map/imap on a Dask cluster (:class:`mpkit.engine._pool.BasePool`).

    ``cluster``: a ``distributed.Client`` (yours, left open at shutdown), a scheduler address such
    as ``"tcp://127.0.0.1:8786"``, or ``"local"`` for a LocalCluster on this machine, one
    single-threaded worker process per CPU (both closed at shutdown). ``workers``: the most chunks
    a map runs at once (default: every thread of the cluster). ``init``: runs once in each Dask
    worker process before its first item.
    """

    #: Work per "auto" chunk: a Dask task costs a few ms of round trips (scheduler, worker, result
    #: fetch: ~2 ms each on loopback), so the process backend's 20 ms chunks lost 30-45% of the
    #: cluster to them (200 us tasks at 54% of the ideal where plain Dask over large chunks reached
    #: 95%); 0.25 s keeps that under 1%, and a map's tail still splits into TAIL_SPLIT per worker.
    chunk_seconds = 0.25
    #: Its task times each item of a chunk (``_task._TimedItems``): timeout= keeps chunks whole.
    timed_in_chunks = True

    def __init__(self, workers: int | None = None, *, cluster: Any = "local",
                 init: Callable[[], Any] | None = None, _connection: _cluster.Connection | None = None):
        super().__init__()
        _arguments.check_workers(workers)
        if init is not None:
            _arguments.check_init(init)
        self.cluster = cluster
        # a pipeline's lanes share their pipeline's connection (``_lanes``), checked once
        self._connection = _connection or _cluster.connect(cluster)
        self.client = self._connection.client
        self.init = init
        init_name = None
        try:
            if hasattr(os, "getpgid"):
                self.client.register_plugin(_task.InterruptShield(socket.gethostname(), os.getpgid(0)))
            if init is not None:
                init_name = f"mpkit-init-{uuid.uuid4().hex[:12]}"
                self.client.register_plugin(_task.InitPlugin(init_name, _serialize.dumps(init)), name=init_name)
            self.output = OutputRelay()
            self._manager = self._backend = Manager(self.client, self.output, init_name)
        except BaseException:
            self._connection.close()
            raise
        self._init_name = init_name
        self._limit = workers
        self.size = self._sized()
        _live_pools.add(self)

    def map(self, fn: Callable, items, *, max_tasks_per_child: int | None = None, **kwargs):
        """As :meth:`BasePool.map` (``max_tasks_per_child`` is refused: see ``_local_only``)."""
        __tracebackhide__ = True
        _local_only(max_tasks_per_child, self.where)
        return super().map(fn, items, **kwargs)

    def imap(self, fn: Callable, items, *, max_tasks_per_child: int | None = None, **kwargs):
        """As :meth:`BasePool.imap` (``max_tasks_per_child`` is refused: see ``_local_only``)."""
        __tracebackhide__ = True
        _local_only(max_tasks_per_child, self.where)
        return super().imap(fn, items, **kwargs)

    def _sized(self) -> int:
        threads = self._manager.threads()
        return min(threads, self._limit) if self._limit else threads

    def _new_run(self, *args, **kwargs):
        self.size = self._manager.size = self._sized()  # the cluster may have grown or shrunk
        return super()._new_run(*args, **kwargs)

    def shutdown(self, wait: bool = True) -> None:
        """Stop this pool's maps; close the client and cluster mpkit started (not yours)."""
        if self._closed:
            return
        super().shutdown(wait)
        _live_pools.discard(self)
        if self._init_name is not None and not self._connection.owned:
            try:  # a cluster that outlives the pool should not keep running its init on new workers
                self.client.unregister_worker_plugin(self._init_name)
            except Exception:
                pass
        self._connection.close()

    def resize(self, workers: int) -> None:
        """Run at most ``workers`` chunks at once from now on."""
        _arguments.check_workers(workers, optional=False)
        self._limit = workers
        self.size = self._sized()
        self._manager.resize(self.size)

    def workers(self) -> list[tuple[int, int, str]]:
        """``(worker id, pid, "busy" or "idle")`` for each Dask worker now (pid 0 until one of
        this pool's tasks ran there)."""
        info = self.client.scheduler_info(n_workers=-1).get("workers", {})
        busy = {t.worker for t in list(self._manager._tasks.values()) if t.started is not None}
        return [(self._manager.worker_id(address), self._manager.pids.get(address, 0),
                 "busy" if address in busy else "idle")
                for address in sorted(info)]

    @property
    def where(self) -> str:
        """The cluster, as messages show it: "local", an address, or the Client's scheduler."""
        return _cluster.describe(self.cluster)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.size} threads"
        return f"<mpkit.Pool on Dask {self.where}, {state}>"


def _local_only(max_tasks_per_child: int | None, where: str) -> None:
    """A Dask worker is not replaced after N items (its nanny restarts it only when it dies), so
    ``max_tasks_per_child`` would be silently ignored: refused instead."""
    if max_tasks_per_child is not None:
        raise ValueError(f"max_tasks_per_child={max_tasks_per_child!r} replaces local worker processes after "
                         f"that many items; a Dask worker (cluster {where}) is not replaced that way. Fix: leave "
                         "it out on a cluster (to bound a leak there, start the workers with dask's "
                         "--memory-limit, which restarts a worker past it), or run this map without cluster=.")


def live_pools() -> list[Pool]:
    """The Dask pools not yet shut down in this process."""
    return [pool for pool in list(_live_pools) if not pool.closed]
