"""A pipeline's stages on a Dask cluster: each lane a Dask pool whose chunks go to its own workers.

    Pipeline.run(cluster=c) ─► Lanes(c): the pools factory given to the Flow
        a connection to c that serves every lane: the default pool's if it runs on c (``_default``,
        leased: with ``mpkit.use(c)`` a LocalCluster stays warm from one run or map to the next),
        else a connection of its own, closed at the end (a LocalCluster per run for "local")
    pools(workers, spec) ─► LanePool: a Dask Pool on that connection (its own manager thread and
        event topic), its chunks pinned to ``workers`` Dask workers chosen by Lanes.place:
            kept while they live; else the live workers holding the fewest lanes (so two stages
            of one worker each run on two workers, as two local processes would)
        its run's function id is its own (``_task._stages``): a class stage's object is built once
        in each worker it runs on, the first time a chunk of that run comes, reused by the next
        chunks, and built again in a replacement worker
    every lane shut down ─► the stages' objects dropped on the workers (``_task.forget``), the
        lease released (or the connection of its own closed)

The router, channels, batching, counts and snapshots are the notebook's, as for local stages: a
Dask lane only decides where its chunks run. Chunks are pinned strictly (work stealing would move
loosely pinned ones anywhere); a chunk whose workers all died is cancelled and sent again to the
lane's workers now (``_manager.Manager._check_placement``).
"""
from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from typing import Any

from .. import _default
from . import _cluster
from ._cluster import Connection
from ._manager import POLL
from ._pool import Pool
from . import _task


class Lanes:
    """``pools(workers, spec)`` for a Flow on ``cluster`` (see the module doc)."""

    def __init__(self, cluster: Any):
        self.cluster = cluster
        self.leased = _default.lease_cluster(cluster)
        self.own = None if self.leased is not None else _cluster.connect(cluster)
        client = self.leased.client if self.leased is not None else self.own.client
        self.connection = Connection(client, None, owned=False)  # the lanes close nothing of it
        self._lock = threading.Lock()
        self._open: list[LanePool] = []
        self._placed: dict[LanePool, list[str]] = {}
        self._stage_ids: list[str] = []
        self._live: list[str] = []
        self._looked = float("-inf")  # the first call asks
        self._released = False

    def __call__(self, workers: int, spec) -> "LanePool":
        try:
            lane = LanePool(self, workers)
        except BaseException:
            with self._lock:
                last = not self._open
            if last:
                self._release()
            raise
        with self._lock:
            self._open.append(lane)
        return lane

    def place(self, lane: "LanePool") -> list[str]:
        """The Dask workers ``lane``'s chunks go to now (its manager thread asks at each submit)."""
        with self._lock:
            live = self._live_workers()
            want = min(lane.wanted, len(live))
            kept = [a for a in self._placed.get(lane, []) if a in live][:want]
            if len(kept) < want:
                load = Counter(a for other, placed in self._placed.items() if other is not lane for a in placed)
                for address in sorted((a for a in live if a not in kept), key=lambda a: (load[a], live.index(a))):
                    if len(kept) == want:
                        break
                    kept.append(address)
            self._placed[lane] = kept
            return list(kept)

    def live(self) -> frozenset[str]:
        """The cluster's workers as last seen (asked of the scheduler at most every POLL)."""
        with self._lock:
            return frozenset(self._live_workers())

    def placed(self, lane: "LanePool") -> list[str]:
        with self._lock:
            return list(self._placed.get(lane, []))

    def _live_workers(self) -> list[str]:
        """The cluster's workers, asked of the scheduler at most every POLL (a round trip)."""
        now = time.monotonic()
        if now - self._looked >= POLL:
            self._looked = now
            try:
                self._live = sorted(self.connection.client.scheduler_info(n_workers=-1).get("workers", {}))
            except Exception:  # the scheduler is gone: the manager says so
                pass
        return self._live

    def closed(self, lane: "LanePool") -> None:
        with self._lock:
            self._placed.pop(lane, None)
            if lane in self._open:
                self._open.remove(lane)
            self._stage_ids += lane.stage_ids
            last = not self._open
        if last:
            self._release()

    def _release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
            ids, self._stage_ids = self._stage_ids, []
        if ids and self.connection.client.status == "running":
            try:  # not waited for: a worker busy with a late task must not hold the pipeline's end
                self.connection.client.run(_task.forget, ids, wait=False, on_error="ignore")
            except Exception:
                pass
        if self.leased is not None:
            _default.release(self.leased)
        else:
            self.own.close()


class LanePool(Pool):
    """A lane's Dask pool: the pipeline's connection, its chunks on the workers Lanes places it on."""

    def __init__(self, lanes: Lanes, workers: int):
        self.lanes = lanes
        self.stage_ids: list[str] = []
        super().__init__(workers, cluster=lanes.cluster, _connection=lanes.connection)
        self._manager.lane = self

    def place(self) -> list[str]:
        """The Dask workers this lane's chunks go to now (its manager thread asks at each submit)."""
        return self.lanes.place(self)

    @property
    def wanted(self) -> int:
        """The Dask workers this lane runs on (``Pool``'s workers=, changed by ``resize``)."""
        return self._limit

    def live(self) -> frozenset[str]:
        """The cluster's workers now (as last seen): a chunk pinned to none of them is orphaned."""
        return self.lanes.live()

    def _new_run(self, *args, **kwargs):
        run = super()._new_run(*args, **kwargs)
        # Its own id, not the function's content hash: two runs of one stage class do not share
        # a built object (each local run builds its own too), and it stays until the run ends.
        run.fn_id = f"{run.fn_id}-{uuid.uuid4().hex[:8]}"
        self.stage_ids.append(run.fn_id)
        return run

    def workers(self) -> list[tuple[int, int, str]]:
        placed = set(self.lanes.placed(self))
        info = self.client.scheduler_info(n_workers=-1).get("workers", {})
        busy = {t.worker for t in list(self._manager._tasks.values()) if t.started is not None}
        return [(self._manager.worker_id(address), self._manager.pids.get(address, 0),
                 "busy" if address in busy else "idle") for address in sorted(info) if address in placed]

    def shutdown(self, wait: bool = True) -> None:
        if self._closed:
            return
        super().shutdown(wait)
        self.lanes.closed(self)
