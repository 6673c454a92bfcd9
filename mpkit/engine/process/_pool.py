"""A warm pool of worker processes, driven by one manager thread.

    map()/imap() in the calling thread         Manager thread (_manager)        worker processes
    ──────────────────────────────────         ─────────────────────────        ────────────────
    Run.feed(): items ─► pending chunks ─wake─► dispatch, PREFETCH per worker ─► worker 1 ─┐ one
    _drive() ◄── done batches / failures ◄───── wait(pipes, sentinels) ◄───────── worker 2 ─┘ duplex
             ◄── OutputRelay (prints) ◄──────── "out" messages                             pipe each
    progress.update(MapStats) at most 10/s      a sentinel fires: the worker died, and what
                                                it held is split, retried or failed (_bury)

The pool stays alive between maps (warm workers: the next call starts at once); a worker idle for
``idle_timeout`` seconds exits on its own, and the pool starts workers again when work comes.
Stopping a map early (an error raised, an interrupt, an abandoned ``imap``) kills the workers busy
with its items, with every process their tasks started (``_proctree``), so nothing keeps running
that nobody waits for; idle workers stay warm.
"""
from __future__ import annotations

import atexit
import multiprocessing as mp
# Imported for its exit handler, which joins the live children: registered before ours, it runs
# after ours (the last registered runs first), once ours has stopped the workers.
import multiprocessing.util  # noqa: F401
import os
import pickle
import sys
import warnings
import weakref
from typing import Any, Callable

from .. import _arguments, _sigterm
from .._errors import MpkitWarning
from .._output import OutputRelay
from .._pool import BasePool, _check_max_tasks
from . import _worker
from ._manager import INIT_TIMEOUT, Manager

#: Seconds an idle worker waits for work before it exits. Long enough that cells run a few
#: minutes apart find the pool warm; short enough that a forgotten kernel frees its memory.
IDLE_TIMEOUT = 600.0

_live_pools: "weakref.WeakSet[Pool]" = weakref.WeakSet()


def default_start_method() -> str:
    """forkserver on Linux, spawn elsewhere: never fork a process that runs a Jupyter kernel.

    The environment variable ``MPKIT_START_METHOD`` overrides it for a whole session.

    A forked child inherits the kernel's threads' locks in whatever state they were (ZMQ, the
    output thread), which deadlocks at random. forkserver forks from a clean single-threaded
    server instead, and is Python 3.14's default on Linux.
    """
    chosen = os.environ.get("MPKIT_START_METHOD")
    if chosen:
        return chosen
    return "forkserver" if sys.platform.startswith("linux") else "spawn"


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


class Pool(BasePool):
    """Worker processes that stay warm between calls, with map/imap over them
    (:class:`mpkit.engine._pool.BasePool`).

    ``workers`` processes (default: the CPUs this process may use) are started with
    ``start_method`` (default :func:`default_start_method`). ``init``, if given, runs once in each
    new worker before any item: load a model or open a connection there; the globals it sets are
    those the mapped functions read. A worker still in ``init`` after ``init_timeout`` seconds is
    stopped and the map fails with ``WorkerInitError``. With ``max_tasks_per_child=N`` a worker is
    replaced by a fresh one after N items (a library that leaks memory). Use as a context manager,
    or call :meth:`shutdown`; pools still open at interpreter exit are shut down then.
    """

    def __init__(self, workers: int | None = None, *, start_method: str | None = None,
                 init: Callable[[], Any] | None = None, init_timeout: float = INIT_TIMEOUT,
                 idle_timeout: float = IDLE_TIMEOUT, max_tasks_per_child: int | None = None):
        super().__init__()
        _arguments.check_pool(workers, start_method, init, idle_timeout)
        _check_max_tasks(max_tasks_per_child)
        workers = default_workers() if workers is None else workers
        self.start_method = start_method or default_start_method()
        if self.start_method not in mp.get_all_start_methods():
            raise ValueError(f"start_method {self.start_method!r} is not available here; choose one of "
                             f"{', '.join(mp.get_all_start_methods())}")
        if self.start_method == "fork":
            warnings.warn("start_method='fork' copies this process with its threads' locks in whatever "
                          "state they are; in a Jupyter kernel (which runs threads) that can deadlock. "
                          "Use 'forkserver' or 'spawn' unless you know the process has no threads.",
                          MpkitWarning, stacklevel=2)
        _warn_if_many(workers)
        self.size = workers
        self.idle_timeout = idle_timeout
        self.init = init
        ctx = mp.get_context(self.start_method)
        if self.start_method == "forkserver":
            # '__main__' is multiprocessing's own default (a script is imported once, by the
            # server, not by every worker); the worker module spares each worker its imports.
            ctx.set_forkserver_preload(["__main__", "mpkit.engine.process._worker"])
        self.output = OutputRelay()
        self._manager = self._backend = Manager(ctx, workers, init, idle_timeout, self.output,
                                                max_tasks_per_child=max_tasks_per_child)
        self.set_init_timeout(init_timeout)
        _live_pools.add(self)
        _sigterm.chain(_shutdown_all)  # SIGTERM (Jupyter's, kill's) also ends what workers started

    def shutdown(self, wait: bool = True) -> None:
        """Stop every worker of this pool; running maps are cancelled. Safe to call twice."""
        super().shutdown(wait)
        _live_pools.discard(self)

    def pids(self) -> list[int]:
        """Process ids of the workers alive now."""
        return self._manager.pids()

    def workers(self) -> list[tuple[int, int, str]]:
        """``(worker id, pid, "busy" or "idle")`` for each worker alive now."""
        return [(w.id, w.pid, "busy" if w.in_flight else "idle")
                for w in list(self._manager.workers.values()) if w.process.is_alive()]

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._manager.pids())}/{self.size} workers alive"
        return f"<mpkit.Pool {self.start_method}, {state}>"

    def set_init_timeout(self, seconds: float) -> None:
        """Seconds a new worker may spend in ``init`` before it is stopped and reported."""
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
            raise ValueError(f"init_timeout must be a number of seconds > 0, not {seconds!r}")
        self._manager.init_timeout = float(seconds)

    def resize(self, workers: int) -> None:
        """Change how many workers the pool keeps; extra ones leave when idle work runs out."""
        _arguments.check_workers(workers, optional=False)
        if workers > self.size:
            _warn_if_many(workers)
        self.size = workers
        self._manager.resize(workers)

    def _function_message(self, fn_id: str, payload: bytes) -> bytes:
        return pickle.dumps((_worker.FN, fn_id, payload), _worker.PROTOCOL)



#: Workers per CPU above which a pool warns. Work that waits on I/O (downloads, a database)
#: gains from a few workers per CPU; past this, processes mostly cost memory (each holds its own
#: interpreter, imports and data) and switching time, and threads or asyncio serve I/O better.
MANY_WORKERS_PER_CPU = 4


def _warn_if_many(workers: int) -> None:
    cpus = default_workers()
    if workers > MANY_WORKERS_PER_CPU * cpus:
        warnings.warn(f"workers={workers} is more than {MANY_WORKERS_PER_CPU}x the {cpus} CPUs this "
                      f"process may use: each worker is a process with its own memory, started as the "
                      f"work needs it. For CPU-bound work use at most {cpus}; for work that waits on "
                      "I/O, threads (concurrent.futures.ThreadPoolExecutor) cost far less.",
                      MpkitWarning, stacklevel=_user_stacklevel())


def _user_stacklevel() -> int:
    """The stacklevel of the first frame outside mpkit: the user's call of map, imap, Pool..."""
    package = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # mpkit/
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        frame, level = frame.f_back, level + 1
    return level


def live_pools() -> list[Pool]:
    """The pools not yet shut down in this process."""
    return [pool for pool in list(_live_pools) if not pool.closed]


@atexit.register
def _shutdown_all() -> None:
    for pool in live_pools():
        pool.shutdown(wait=False)
