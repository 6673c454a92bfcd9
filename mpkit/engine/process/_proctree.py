"""A worker's whole process tree: what a task starts (a subprocess, a multiprocessing child) ends
with the worker that ran it.

    worker process, at start                       pool manager thread
    ────────────────────────                       ───────────────────
    lead_group(): its own process group            Trees.watch(busy worker pids), every
    (pgid = its pid), and a child subreaper:       SNAPSHOT_SECONDS: who descends from each
    orphans of its descendants stay below it       Trees.end(pid): at a timeout, a cancel, an
                                                   interrupt, a shutdown, and when a worker has
                                                   ended on its own: SIGKILL to its group, to
                                                   every descendant alive now and to those seen
                                                   in the last snapshot (they left the group and
                                                   were re-parented when the worker died)

A task's children stay in the worker's group unless they ask for a session of their own
(``start_new_session=True``, a daemon), so a signal to the group reaches nearly all of them at
once, also after the worker itself died (a group outlives its leader while it has members, and
its id is not given to a new process meanwhile). The ones that left the group are found while
the worker lives, as its descendants (the subreaper keeps double-forked daemons below it), and
after it died from the last snapshot. Orphans it adopted and that ended stay its zombies: a worker
with MAX_ZOMBIES of them is replaced like one past max_tasks_per_child. A group of its own also means a terminal's Ctrl-C does not
reach the workers or their children: the notebook decides what an interrupt stops.

Linux only (process groups and psutil work elsewhere on POSIX too; the subreaper is Linux's).
"""
from __future__ import annotations

import os
import signal
import sys
import time

import psutil

#: How often the manager notes the descendants of busy workers, for the children that left the
#: worker's group and must still be found if the worker dies from outside (OOM killer, kill -9).
#: One snapshot reads every process's parent (a few ms for a few hundred processes); once a
#: second keeps that under 1% of a core, and a child started since the last one is missed only
#: if it also left the group.
SNAPSHOT_SECONDS = 1.0
#: Exited orphans a worker may hold as zombies before it is replaced. As a subreaper it adopts
#: its tasks' orphans, and reaping them itself would steal exit codes that a task's own
#: subprocess.Popen waits for; a new process starts clean (the old one's zombies go to init).
MAX_ZOMBIES = 64

_PR_SET_CHILD_SUBREAPER = 36


def lead_group() -> None:
    """In a new worker: lead a process group of its own, and adopt orphaned descendants."""
    try:
        os.setpgid(0, 0)
    except OSError:
        pass  # already a group or session leader (a worker started by hand): nothing to do
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # the group and the snapshots still find the task's children


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _zombie_child(proc: psutil.Process, parent: int) -> bool:
    try:
        return proc.ppid() == parent and proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _kill(procs) -> None:
    for proc in procs:
        try:
            proc.kill()  # psutil checks that the pid was not reused by another process
        except psutil.Error:
            pass


def _kill_group(pgid: int) -> None:
    """SIGKILL the group led by a worker. A pid that never led a group names no group (ESRCH)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def end_descendants() -> None:
    """In a worker that leaves on its own: kill what its tasks started and left running."""
    _kill(_descendants(os.getpid()))


class Trees:
    """The process trees of one pool's workers (the manager thread; close() before it ends it)."""

    def __init__(self) -> None:
        self._seen: dict[int, list[psutil.Process]] = {}  # worker pid -> descendants last seen
        self._zombies: dict[int, int] = {}               # worker pid -> its zombie children then
        self._last = 0.0

    def watch(self, pids: list[int], now: bool = False) -> None:
        """Note the descendants of these (busy) workers, at most every SNAPSHOT_SECONDS unless ``now``."""
        moment = time.monotonic()
        if not pids or (not now and moment - self._last < SNAPSHOT_SECONDS):
            return
        self._last = moment
        for pid in pids:
            self._seen[pid] = _descendants(pid)
            self._zombies[pid] = sum(1 for p in self._seen[pid] if _zombie_child(p, pid))

    def crowded(self, pid: int) -> bool:
        """True if worker ``pid`` held MAX_ZOMBIES exited orphans at the last snapshot."""
        return self._zombies.get(pid, 0) >= MAX_ZOMBIES

    def known(self, pid: int) -> list[int]:
        """Pids of the descendants of worker ``pid`` in the last snapshot."""
        return [p.pid for p in self._seen.get(pid, [])]

    def end(self, pid: int, process=None) -> None:
        """Kill the worker ``pid`` (``process``: its multiprocessing handle) with its whole tree.

        Safe to call for a worker that already ended, and more than once."""
        alive = process is not None and process.is_alive()
        tree = _descendants(pid) if alive else []  # a dead worker's pid may name another process
        _kill_group(pid)
        if alive:
            process.kill()
        _kill(tree + self._seen.pop(pid, []))
        self._zombies.pop(pid, None)
