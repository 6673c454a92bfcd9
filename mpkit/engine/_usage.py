"""CPU and memory of a pipeline's worker processes, for its snapshots.

    router, each snapshot ─► Usage.sample(now, {stage: stage.workers}) ─► {stage: (WorkerUsage, ...)}
                              reads psutil at most once every USAGE_INTERVAL s,
                              else hands back the last reading

CPU is measured by psutil between two readings of the same process (``cpu_percent(None)``), so a
worker's first reading is 0 % and the next ones are its share of one core over the last interval
(200 % = two cores' worth: a worker using threads). Memory is the resident set (RSS). A worker
gone between two readings is left out, and so is one whose pid is not known yet (0: a Dask worker
no task ran on); one psutil cannot read (another user's, a zombie) counts 0.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import psutil

#: Seconds between readings: /proc is read once per worker per interval (~30 µs each), so a
#: 64-worker pipeline costs ~2 ms of the router's time a second; a dashboard redraws CPU and
#: memory no faster than a person reads them.
USAGE_INTERVAL = 1.0


@dataclass(frozen=True)
class WorkerUsage:
    """One worker process at one reading."""

    id: int
    pid: int
    state: str            #: "busy" or "idle"
    cpu_percent: float    #: share of one core since the last reading (100.0 = one core)
    rss: int              #: resident memory, in bytes


class Usage:
    """Readings of every stage's workers, kept between snapshots (one per flow)."""

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}
        self._last: dict[str, tuple[WorkerUsage, ...]] = {}
        self._read_at: float | None = None

    def sample(self, now: float, workers: dict[str, Callable[[], list[tuple[int, int, str]]]]
               ) -> dict[str, tuple[WorkerUsage, ...]]:
        """``{stage name: its workers' usage}``; ``workers`` gives each stage's (id, pid, state)."""
        if self._read_at is not None and now - self._read_at < USAGE_INTERVAL:
            return self._last
        self._read_at = now
        seen: set[int] = set()
        out: dict[str, tuple[WorkerUsage, ...]] = {}
        for name, listing in workers.items():
            try:
                alive = listing()
            except Exception:  # noqa: BLE001 - a pool shutting down: no reading this time
                alive = []
            readings = []
            for wid, pid, state in alive:
                if not pid:
                    continue   # not known yet (a Dask worker no task ran on): no process to read
                seen.add(pid)
                cpu, rss = self._read(pid)
                readings.append(WorkerUsage(wid, pid, state, cpu, rss))
            out[name] = tuple(readings)
        for pid in [p for p in self._procs if p not in seen]:
            del self._procs[pid]
        self._last = out
        return out

    def _read(self, pid: int) -> tuple[float, int]:
        try:
            proc = self._procs.get(pid)
            if proc is None:
                proc = self._procs[pid] = psutil.Process(pid)
                proc.cpu_percent(None)  # the first call only starts the measure
                return 0.0, proc.memory_info().rss
            return proc.cpu_percent(None), proc.memory_info().rss
        except (psutil.Error, OSError):
            self._procs.pop(pid, None)
            return 0.0, 0
