"""Resident memory of this process and all its worker processes, sampled by a thread.

"Total" = RSS of this process (the kernel, in a notebook) + RSS of every descendant, except the
shared multiprocessing helpers (the forkserver process and the resource tracker) that outlive any
one run. Under forkserver every worker is a child of the forkserver, so the walk is recursive.
RSS counts pages shared between processes once per process (forkserver children share the
server's pages): the sum over-states the machine's use but is stable, which is what a flatness
check needs. psutil is imported only here, never in a worker.

The sampler also keeps the last CPU time seen for each process whose parent is neither this
process nor the shared forkserver: such processes (a worker's own children, and the forkserver a
worker starts for them) are reaped by a parent that is not watched, so their CPU time never adds
up in a counter that this process can read at the end (``unreaped_cpu``).
"""
from __future__ import annotations

import threading
import time


def _helper_pids() -> set[int]:
    """The forkserver's and the resource tracker's pids, those of the two that are running."""
    pids = set()
    try:
        from multiprocessing import forkserver
    except ImportError:  # no forkserver on this platform
        forkserver = None
    from multiprocessing import resource_tracker

    for pid in (getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None),
                getattr(resource_tracker._resource_tracker, "_pid", None)):
        if pid:
            pids.add(pid)
    return pids


def total_rss(cpu_seen: dict | None = None) -> tuple[int, int]:
    """(bytes, number of processes counted) for this process and its workers, right now.

    With ``cpu_seen``, also record there the CPU time of each process whose parent is neither this
    process nor a helper (see the module docstring)."""
    import psutil

    me = psutil.Process()
    total, count = me.memory_info().rss, 1
    helpers = _helper_pids()
    watched = helpers | {me.pid}
    for child in me.children(recursive=True):
        if child.pid in helpers:
            continue
        try:
            with child.oneshot():
                total += child.memory_info().rss
                count += 1
                if cpu_seen is not None and child.ppid() not in watched:
                    cpu = child.cpu_times()
                    cpu_seen[child.pid] = cpu.user + cpu.system
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return total, count


class RssSampler:
    """``with RssSampler(0.1) as s: ...`` then ``s.samples``: [(seconds since start, bytes, processes)]."""

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        self.samples: list[tuple[float, int, int]] = []
        self.cpu_seen: dict[int, float] = {}  # pid -> user + system seconds, last sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while True:
            rss, count = total_rss(self.cpu_seen)
            self.samples.append((time.perf_counter() - self._start, rss, count))
            if self._stop.wait(self.interval):
                return

    def __enter__(self):
        self._start = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        rss, count = total_rss(self.cpu_seen)  # one last sample, after the run
        self.samples.append((time.perf_counter() - self._start, rss, count))

    @property
    def unreaped_cpu(self) -> float:
        """CPU seconds of the processes whose parent is not watched, as last seen."""
        return sum(self.cpu_seen.values())

    @property
    def peak(self) -> int:
        return max((rss for _, rss, _ in self.samples), default=0)
